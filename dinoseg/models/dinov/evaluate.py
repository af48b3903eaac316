"""DINOv generic (open-set) evaluation through a prompt bank: COCO panoptic PQ, mask AP, box AP.

The reference protocol (`--eval_visual_openset`, `INFERENCE_EXAMPLE=16`; shared/reference/dinov.md section 6):
per category, average 16 stored example embeddings drawn with replacement; decode every val image with the
K class prompts (`[300 generic | K prompts]`, generic task); post-process the similarity logits as Mask
DINO does (panoptic temperature 0.06, object-mask threshold 0.25, overlap 0.8; instance top-k; semantic).

Here:
- the draw is reproducible: category `c` draws its `num_examples` indices with
  `numpy.random.default_rng([seed, c]).integers(0, n_c, num_examples)` (with replacement, as the reference;
  the reference indexes into `os.listdir` order with an unseeded RNG, so its numbers vary run to run);
  the same seed gives the same prompts whatever the category order or the other categories;
- K = the dataset's categories in contiguous order (label i = the i-th sorted category id), one static
  prompt budget; the reference uses K = largest id + 1 with zero vectors for ids without examples;
- a category without examples: its prompt slot is invalid (`prompt_valid` False) and its logits are set
  to `MISSING_LOGIT` (sigmoid 0) before post-processing, so it never scores in instance, panoptic or
  semantic results (the reference zeroes such scores in instance inference only). `evaluate_generic`
  reports these categories (`categories_without_examples`) and logs a warning;
- post-processing is dinoseg.models.maskdino.postprocess (the same computation as the reference's
  `instance_inference` / `panoptic_inference` / `semantic_inference` on the similarity logits), scoring by
  Mask DINO's evaluator (dinoseg.models.maskdino.task.MaskDINOEvaluator: pycocotools AP, PQ, mIoU) against
  the prepared dataset at original resolution. Instance top-k is `test.detections_per_image` (the reference
  hard-codes 300).

Several processes (jax.distributed; `dinoseg eval` and training-time evaluation): the bank build splits the
bank split's images over the processes and merges the per-process banks (bank.build_bank: the one-process
bank); the generic evaluation runs each process's slice of the eval batches (the data pipeline's
`build_eval_iterator(process_index, process_count)`), gathers every step's predictions over the processes,
puts them back in the one-process batch order (`interleave_process_rows`) and scores them on every process
(each computes the same numbers). VOS (vos.evaluate_vos) is not split: every process runs every video.

During training (`train.eval_every_steps` > 0): `ProtocolEvaluator` (task.DINOvTask.evaluator) runs
`run_protocols` with the current parameters and keeps its jitted functions (bank encoder, generic prediction
per dataset, VOS segmenter) from one evaluation to the next, so each compiles once per run.
"""
import logging
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dinoseg.errors import UserValueError
from dinoseg.models.dinov.bank import Bank

logger = logging.getLogger(__name__)

MISSING_LOGIT = -1e4  # logits of prompt slots without examples (sigmoid -> 0)


def class_prompts(bank: Bank, category_ids: Sequence[int], num_examples: int = 16, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Per category the mean of `num_examples` bank embeddings drawn with replacement (module docstring).

  Returns: prompts (K, d) float32 (zeros for categories without examples), valid (K,) bool.
  """
  if num_examples < 1:
    raise UserValueError(f"num_examples must be >= 1, got {num_examples}")
  prompts = np.zeros((len(category_ids), bank.dim), np.float32)
  valid = np.zeros(len(category_ids), bool)
  for k, cat in enumerate(category_ids):
    n = bank.count(int(cat))
    if n == 0:
      continue
    draw = np.random.default_rng([int(seed), int(cat)]).integers(0, n, int(num_examples))
    prompts[k] = bank.embeddings[int(cat)][draw].astype(np.float64).mean(0)
    valid[k] = True
  return prompts, valid


def masked_logits(logits: jax.Array, prompt_valid: jax.Array) -> jax.Array:
  """(B, Q, K) logits with the columns of invalid prompts set to MISSING_LOGIT; prompt_valid (B, K)."""
  return jnp.where(prompt_valid[:, None, :], logits.astype(jnp.float32), MISSING_LOGIT)


def generic_predict_fn(model, config, thing_classes: Sequence[int]):
  """`predict(variables, batch, prompts (B, K, d), prompt_valid (B, K))` -> Mask DINO's evaluator dict
  (inst_* / pano_* / sem_labels / output_hw) for eval batches of the data pipeline (jitted by the caller)."""
  from dinoseg.models.maskdino import postprocess as pp  # noqa: PLC0415
  from dinoseg.models.maskdino.task import fit_output_hw  # noqa: PLC0415
  t = config.test

  def predict(variables, batch, prompts, prompt_valid):
    images = batch["image"].astype(jnp.float32)
    padded_hw = tuple(images.shape[1:3])
    canvas = tuple(t.get("eval_output_hw", padded_hw))
    valid_hw = batch["valid_hw"].astype(jnp.int32)
    out_hw = fit_output_hw(batch["original_hw"].astype(jnp.int32), canvas)
    out = model.apply(variables, images, valid_hw, prompts=prompts, prompt_valid=prompt_valid)
    logits = masked_logits(out.logits[-1], prompt_valid)
    boxes, masks = out.boxes[-1], out.masks[-1]
    pred = {"output_hw": out_hw}
    if t.instance_on:
      r = pp.instance_inference(logits, boxes, masks, padded_hw=padded_hw, valid_hw=valid_hw, output_hw=out_hw,
                                canvas_hw=canvas, top_k=min(int(t.detections_per_image),
                                                            logits.shape[1] * logits.shape[2]),
                                thing_classes=thing_classes if t.panoptic_on else None)
      pred.update(inst_scores=r.scores, inst_labels=r.labels, inst_boxes=r.boxes, inst_masks=r.masks,
                  inst_valid=r.valid & (r.scores > 0))
    if t.panoptic_on:
      r = pp.panoptic_inference(logits, masks, padded_hw=padded_hw, valid_hw=valid_hw, output_hw=out_hw,
                                canvas_hw=canvas, thing_classes=thing_classes,
                                object_mask_threshold=t.object_mask_threshold, overlap_threshold=t.overlap_threshold,
                                transform_eval=t.transform_eval, temperature=t.pano_temperature)
      pred.update(pano_seg=r.segmentation, pano_segment_id=r.segment_id, pano_category=r.category,
                  pano_is_new=r.is_new)
    if t.semantic_on:
      before = t.sem_seg_postprocess_before_inference or t.instance_on or t.panoptic_on

      def one(args):
        lg, mk, v, o = args
        sem = pp.semantic_inference(lg[None], mk[None], padded_hw=padded_hw, valid_hw=v[None], output_hw=o[None],
                                    canvas_hw=canvas, semantic_ce_loss=False, transform_eval=t.transform_eval,
                                    temperature=t.pano_temperature, postprocess_before_inference=before)
        return jnp.argmax(sem[0], axis=0).astype(jnp.int32)
      pred["sem_labels"] = jax.lax.map(one, (logits, masks, valid_hw, out_hw))
    return pred
  return predict


def interleave_process_rows(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """One eval step of every process ({name: (L, ...)} each, process order) -> the one-process batch
  ({name: (P * L, ...)}): the pipeline gives process p rows p, p + P, ... of the global order, so row j of
  process p is global row j * P + p."""
  if not parts:
    raise ValueError("no process batches to interleave")
  return {k: np.stack([np.asarray(part[k]) for part in parts], axis=1).reshape(-1, *np.shape(parts[0][k])[1:])
          for k in parts[0]}


EVAL_BATCH_KEYS = ("image_id", "original_hw", "example_valid")  # what MaskDINOEvaluator.update reads of a batch


def evaluate_generic(model, variables: Mapping, config, bank: Bank, *, data: ml_collections.ConfigDict | None = None,
                     num_examples: int | None = None, seed: int = 0, max_batches: int = 0,
                     results_json: str | None = None, process_index: int = 0, process_count: int = 1,
                     cache: dict | None = None) -> dict[str, Any]:
  """Scores the generic task on `data` (default `config.data.coco`: a prepared panoptic / instance dataset,
  its `eval_split`) with class prompts from `bank`.

  Args:
    num_examples: examples averaged per category (default `config.prompts.inference_example`).
    max_batches: stop after this many eval batches (0: all).
    results_json: also write the COCO instance results (with the dataset's category ids) there (process 0).
    process_index, process_count: this process's slice of the eval batches (module docstring); with
      process_count > 1 a collective: every process calls it.
    cache: a dict kept between calls (ProtocolEvaluator) that holds the jitted prediction per dataset.
  Returns:
    the evaluator's metrics (PQ / segm/AP / bbox/AP / mIoU ...), plus `categories_without_examples`,
    `num_examples` and `seed`.
  """
  from dinoseg.data_pipelines import build_eval_iterator, open_dataset  # noqa: PLC0415
  from dinoseg.models.dinov.bank import gather_over_processes  # noqa: PLC0415
  from dinoseg.models.maskdino.task import MaskDINOEvaluator, thing_classes  # noqa: PLC0415
  data = data if data is not None else config.data.coco
  if not data.get("path"):
    raise UserValueError("no evaluation data: set config.data.coco.path (or --data) to a prepared dataset")
  dataset = open_dataset(data.path)
  num_examples = int(num_examples or config.prompts.inference_example)
  category_ids = dataset.category_ids
  prompts, valid = class_prompts(bank, category_ids, num_examples, seed)
  missing = [c for c, v in zip(category_ids, valid) if not v]
  if missing:
    logger.warning("%d of %d categories have no examples in the bank (their scores are zero): %s", len(missing),
                   len(category_ids), ", ".join(str(c) for c in missing[:20]))
  if not valid.any():
    raise UserValueError("the bank has no examples of any category of the evaluation dataset")
  shim = ml_collections.ConfigDict({"test": config.test.to_dict(), "data": data.to_dict(),
                                    "model": {"num_classes": len(category_ids)}})
  shim.test.thing_classes = ()
  things = thing_classes(shim, dataset)
  evaluator = MaskDINOEvaluator(shim, dataset, data.eval_split)
  key = ("generic_predict", str(data.path), tuple(things), len(category_ids))
  predict = cache.get(key) if cache is not None else None
  if predict is None:
    predict = jax.jit(generic_predict_fn(model, shim, things))
    if cache is not None:
      cache[key] = predict
  variables = jax.device_put(dict(variables))
  for i, batch in enumerate(build_eval_iterator(data, process_index, process_count)):
    if max_batches and i >= max_batches:  # every process yields as many batches: all stop at the same step
      break
    b = len(batch["image_id"])
    p = jnp.broadcast_to(jnp.asarray(prompts)[None], (b, *prompts.shape))
    v = jnp.broadcast_to(jnp.asarray(valid)[None], (b, len(valid)))
    inputs = {k: batch[k] for k in ("image", "valid_hw", "original_hw")}
    pred = jax.device_get(predict(variables, inputs, p, v))
    if process_count > 1:
      local = {**{f"batch.{k}": np.asarray(batch[k]) for k in EVAL_BATCH_KEYS if k in batch},
               **{f"pred.{k}": np.asarray(x) for k, x in pred.items()}}
      merged = interleave_process_rows(gather_over_processes(local))
      batch = {k[len("batch."):]: x for k, x in merged.items() if k.startswith("batch.")}
      pred = {k[len("pred."):]: x for k, x in merged.items() if k.startswith("pred.")}
    evaluator.update(batch, pred)
  if results_json is not None and evaluator.instance is not None and process_index == 0:  # one writer
    evaluator.instance.write_results(results_json)
  out = dict(evaluator.result())
  out.update(categories_without_examples=[int(c) for c in missing], num_examples=num_examples, seed=int(seed))
  return out


def check_protocol_config(config) -> None:
  """Raises UserValueError when `config.evaluation` names no protocol, or the generic one without
  `data.coco.path` (checked before a training run starts, as well as by `run_protocols`)."""
  e = config.evaluation
  if not e.generic and not e.vos_path:
    raise UserValueError("nothing to evaluate: config.evaluation.generic is False and config.evaluation.vos_path "
                         "is empty")
  if e.generic and not config.data.coco.get("path"):
    raise UserValueError("the generic protocol needs config.data.coco.path (a prepared COCO panoptic / instance "
                         "dataset; or set config.evaluation.generic=False)")


def run_protocols(model, variables: Mapping, config, *, cache: dict | None = None) -> dict[str, Any]:
  """`dinoseg eval` of DINOv (task.DINOvTask.evaluate): the protocols `config.evaluation` names.

  - generic (`evaluation.generic`): the prompt bank `evaluation.bank`, or one built with these variables from
    `data.coco` split `evaluation.bank_split` (default its train split; its first `evaluation.bank_max_images`
    images, 0: all), then `evaluate_generic` on `data.coco.eval_split` with `evaluation.num_examples` seeded
    draws per category; its metrics at the top level (PQ, segm/AP, bbox/AP, mIoU, ..., as Mask DINO's), plus
    `bank_source`;
  - VOS, when `evaluation.vos_path` names a DAVIS-2017 root or a prepared video dataset
    (`vos.evaluate_vos`, split `evaluation.vos_split`): its metrics as `vos/<name>` (vos/J&F-Mean, ...).
  Under jax.distributed the bank and the generic evaluation are split over the processes (module docstring);
  every process returns the same metrics. `cache`: a dict kept between calls (ProtocolEvaluator) holding the
  jitted functions, so repeated evaluations (training) compile once.
  """
  from dinoseg.models.dinov import bank as bank_lib, vos  # noqa: PLC0415
  check_protocol_config(config)
  e = config.evaluation
  out: dict[str, Any] = {}
  process_index, process_count = jax.process_index(), jax.process_count()
  if e.generic:
    data = config.data.coco
    if e.bank:
      bank = bank_lib.read_bank(e.bank, int(config.model.decoder.hidden_dim))
      source = str(e.bank)
    else:
      split = e.bank_split or data.train_split
      limit = int(e.get("bank_max_images", 0))
      logger.info("building the prompt bank from %s split %s%s", data.path, split,
                  f" (its first {limit} images)" if limit else "")
      examples, names = bank_lib.examples_from_prepared(data.path, split)
      encoder = cache.get("bank_encoder") if cache is not None else None
      if encoder is None:
        encoder = bank_lib.PromptBankEncoder(model, variables, config, slots=int(e.bank_slots))
        if cache is not None:
          cache["bank_encoder"] = encoder
      else:
        encoder.variables = jax.device_put(dict(variables))
      source = f"{data.path}:{split}" + (f"[:{limit}]" if limit else "")
      bank = bank_lib.build_bank(encoder, examples, names, source=source, process_index=process_index,
                                 process_count=process_count, max_examples=limit)
    out.update(evaluate_generic(model, variables, config, bank, data=data, num_examples=int(e.num_examples),
                                seed=int(e.seed), max_batches=int(e.max_batches), process_index=process_index,
                                process_count=process_count, cache=cache))
    out["bank_source"] = source
  if e.vos_path:
    segmenter = cache.get("vos_segmenter") if cache is not None else None
    if segmenter is None:
      segmenter = vos.VideoObjectSegmenter(model, variables, config)
      if cache is not None:
        cache["vos_segmenter"] = segmenter
    else:
      segmenter.variables = jax.device_put(dict(variables))
    result = vos.evaluate_vos(segmenter, str(e.vos_path), str(e.vos_split), max_videos=int(e.max_videos))
    out.update({f"vos/{k}": v for k, v in result.items()})
  return out


def host_variables(variables: Mapping) -> dict:
  """Flax variables as NumPy on this host: leaves of global arrays spread over several processes (a
  multi-process run's parameters) are gathered (a collective over the processes), the others fetched."""
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils  # noqa: PLC0415
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(fetch, dict(variables))


class ProtocolEvaluator:
  """The DINOv protocols as the trainer's evaluation (task.DINOvTask.evaluator / evaluate): `evaluate(variables)`
  runs `run_protocols` with a float32 model and a cache of its jitted functions that lives as long as this
  object, so a training run compiles them once; `result()` is the last evaluation's metrics.

  The protocols score whole datasets of their own (a bank split, an evaluation split, videos) rather than the
  trainer's eval batches, so `update` refuses batches: the trainer reaches this evaluator through
  `Task.evaluate` (dinoseg/train/task.py), never through its batch loop.
  """

  def __init__(self, config):
    from dinoseg.models.dinov.model import build_model  # noqa: PLC0415
    check_protocol_config(config)
    self.config = config
    self.model = build_model(config.model)  # fp32 evaluation, whatever the training compute dtype
    self.cache: dict = {}
    self.last: dict[str, Any] | None = None
    self.count = 0

  def evaluate(self, variables: Mapping) -> dict[str, Any]:
    """Metrics of the model's variables {"params": ..., <other collections>} (global or host arrays)."""
    self.last = run_protocols(self.model, host_variables(variables), self.config, cache=self.cache)
    self.count += 1
    return self.last

  def update(self, batch: Mapping[str, Any], predictions: Any) -> None:
    raise TypeError("the DINOv protocols do not take the trainer's eval batches; they run through "
                    "DINOvTask.evaluate (ProtocolEvaluator.evaluate)")

  def result(self) -> dict[str, Any]:
    if self.last is None:
      raise ValueError("no DINOv evaluation has run yet (ProtocolEvaluator.evaluate)")
    return dict(self.last)


__all__ = ["run_protocols", "check_protocol_config", "ProtocolEvaluator", "host_variables", "interleave_process_rows",
           "class_prompts",
           "masked_logits", "generic_predict_fn", "evaluate_generic", "MISSING_LOGIT", "EVAL_BATCH_KEYS"]
