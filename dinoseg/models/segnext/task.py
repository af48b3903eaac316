"""SegNext as a `dinoseg.train` task ("segnext"): `dinoseg train` / `dinoseg eval` plug in here.

Config (configs/segnext/vitb_sax2.py): `model` (SegNext fields + converter `name`), `init`
(pretrained weights: `checkpoint`, `backbone`), `data` (a data-pipelines config: task "interactive",
the "segnext" prompt sampler), `segnext` (iterative training: max_rounds, loss_alpha, loss_gamma,
edt_row_chunk), `train` / `optimizer` (trainer groups), `eval` (datasets, protocol settings).

- `init_variables(rng)`: random init. The trainer then applies `config.init` (dinoseg.convert.init):
  `init.checkpoint` a full SegNext checkpoint (converter "task": `variables_from_weights` through
  `weights_converter`, e.g. the
  COCO+LVIS sax2 for the HQSeg fine-tune), `init.backbone` MAE ViT weights (converter "backbone" on
  `backbone_module()`: the position grid resized bicubically as the reference's
  `interpolate_pos_embed`; partial as the reference's `strict=False`: cls_token / norm unused,
  fc_norm stays random).
- `loss_fn`: `iterative.iterative_loss` (0-3 no-grad click rounds, normalized focal loss).
- `train_iterator`: the data pipelines' grain iterator (`config.data`).
- Evaluation: `eval_iterator` reads `config.eval.datasets` (prepared directories) at original
  resolution (`data.InteractiveEvalBatches`); `predict_fn` runs the whole click protocol on device
  (`protocol.click_protocol`, the same clicks as the host simulator) plus the one-round box and
  scribble evaluations; `SegNextEvaluator` computes NoC@85/90/95, NoF, mIoU@k per dataset and writes
  the per-click IoU curves (JSON + PNG) to `config.eval.output_dir` when set.
- Weights (`dinoseg eval --weights`, `dinoseg.load`): `weights_converter` reads the released .pth
  (`Task.variables_from_weights` checks it against the configured architecture).
"""
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.models.segnext import prompts as prompt_lib
from dinoseg.models.segnext import protocol
from dinoseg.models.segnext.iterative import iterative_loss
from dinoseg.models.segnext.model import SegNext, build_segnext
from dinoseg.models.segnext.sampler import PromptSampler, PromptSamplerConfig
from dinoseg.ops import pixels
from dinoseg.train import task as task_lib


def sampler_config(options: Mapping[str, Any]) -> PromptSamplerConfig:
  fields = set(PromptSamplerConfig.__dataclass_fields__)
  return PromptSamplerConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(options).items()
                                if k in fields})


class SegNextEvaluator:
  """Accumulates the device protocol's outputs per dataset; `result()` gives the metrics."""

  def __init__(self, eval_config, labels: list[str]):
    self.config = eval_config
    self.labels = labels
    self.curves: dict[str, list[np.ndarray]] = {label: [] for label in labels}
    self.box: dict[str, list[float]] = {label: [] for label in labels}
    self.scribble: dict[str, list[float]] = {label: [] for label in labels}

  def update(self, batch, predictions) -> None:
    label = self.labels[int(np.asarray(batch["dataset_index"]).reshape(-1)[0])]
    for j, valid in enumerate(np.asarray(batch["valid"])):
      if valid:
        self.curves[label].append(np.asarray(predictions["ious"][j], np.float32))
        if "box_iou" in predictions:
          self.box[label].append(float(predictions["box_iou"][j]))
        if "scribble_iou" in predictions:
          self.scribble[label].append(float(predictions["scribble_iou"][j]))

  def result(self) -> dict:
    from dinoseg.evaluation import interactive  # noqa: PLC0415
    c = self.config
    out, per_label = {}, {}
    for label in self.labels:
      if not self.curves[label]:
        continue
      metrics = interactive.summarize(self.curves[label], max_clicks=int(c.max_clicks),
                                      thresholds=tuple(c.noc_thresholds),
                                      miou_at=tuple(k for k in (1, 5) if k <= int(c.max_clicks)))
      if self.box[label]:
        metrics["box_mIoU"] = float(np.mean(self.box[label]))
      if self.scribble[label]:
        metrics["scribble_mIoU"] = float(np.mean(self.scribble[label]))
      per_label[label] = metrics
      out.update({f"{label}/{k}": v for k, v in metrics.items()})
    if c.output_dir and per_label and jax.process_index() == 0:  # <output_dir>/iou_curves.{json,png}
      interactive.save_curves(c.output_dir, {k: self.curves[k] for k in per_label}, per_label)
    return out


@task_lib.register("segnext")
class SegNextTask(task_lib.Task):
  """SegNext training (iterative click simulation) and click-protocol evaluation."""

  def __init__(self, config):
    super().__init__(config)
    self.model: SegNext = build_segnext(config.model)
    self.sampler = PromptSampler(sampler_config(config.data.get("prompt_sampler_options") or {}))

  # ------------------------------------------------------------------ params
  def init_variables(self, rng):
    """Random params; pretrained weights come from `config.init` (checkpoint / backbone), applied by the trainer."""
    s = self.model.image_size
    return {"params": self.model.init(rng, jnp.zeros((1, s, s, 3)), jnp.asarray([[s, s]], jnp.int32),
                                      prompt_lib.empty_prompts(1), jnp.zeros((1, s, s)))["params"]}

  def backbone_module(self):
    """The ViT image encoder (params under "backbone"): `config.init.backbone` reads MAE ViT weights through
    its key map, the position grid resized to the model's (14 -> 64 for MAE ViT-B at 1024 px)."""
    return self.model.make_backbone(parent=None)  # a standalone module (not a child of the unbound model)

  def weights_converter(self):
    """The released layout (.pth `{"state_dict", "config"}`, strict; architecture read from the shapes)
    with the extra prompt kernel (zeros) when the configured model has one."""
    from dinoseg.convert.registry import ModelConverter  # noqa: PLC0415
    from dinoseg.models.segnext import convert  # noqa: PLC0415
    extra = bool(self.model.extra_prompts)
    return ModelConverter(name=f"{self.config.model.name} (from the config)",
                          to_flax=lambda state: convert.segnext_to_flax(state, extra_prompts=extra),
                          to_torch=convert.segnext_to_torch, description="SegNext with the config's model settings")

  # -------------------------------------------------------------- training
  def _prompts(self, batch) -> prompt_lib.Prompts:
    return prompt_lib.Prompts(points=batch["points"].astype(jnp.float32), boxes=batch["boxes"].astype(jnp.float32),
                              scribbles=batch["scribbles"].astype(jnp.float32),
                              scribble_labels=batch["scribble_labels"].astype(jnp.int32))

  def loss_fn(self, params, model_state, batch, rng, *, train=True):
    c = self.config.segnext
    images = pixels.to_unit_range(batch["image"])
    gt = batch["gt_mask"].astype(jnp.float32)
    loss, aux = iterative_loss(self.model, params, images, gt, self._prompts(batch), rng,
                               max_rounds=int(c.max_rounds) if train else 0, loss_alpha=float(c.loss_alpha),
                               loss_gamma=float(c.loss_gamma), row_chunk=int(c.edt_row_chunk) or None,
                               sample_valid=batch.get("example_valid"))
    pred = jax.nn.sigmoid(aux["logits"]) > 0.49
    obj = gt > 0.5
    inter = jnp.sum(pred & obj, axis=(1, 2))
    union = jnp.sum(pred | obj, axis=(1, 2))
    iou = jnp.mean(jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0))
    return loss, {"normalized_focal_loss": loss, "iou": iou, "click_rounds": aux["num_rounds"].astype(jnp.float32)}

  def train_iterator(self, process_index, process_count):
    from dinoseg.data_pipelines import pipeline  # noqa: PLC0415
    return pipeline.build_train_iterator(self.config.data, process_index, process_count)

  # ------------------------------------------------------------ evaluation
  def predict_fn(self, params, model_state, batch):
    e = self.config.eval
    out = protocol.click_protocol(self.model, params, batch["image"], batch["image_hw"], batch["gt"],
                                  max_clicks=int(e.max_clicks), threshold=float(e.pred_threshold),
                                  row_chunk=int(self.config.segnext.edt_row_chunk) or None)
    b = batch["gt"].shape[0]
    types = tuple(e.prompt_types)
    if "box" in types:
      prompts = prompt_lib.empty_prompts(b).replace(boxes=batch["box"].astype(jnp.float32))
      out["box_iou"] = protocol.one_round(self.model, params, batch["image"], batch["image_hw"], batch["gt"],
                                          prompts, float(e.pred_threshold))
    if "scribble" in types:
      base = prompt_lib.empty_prompts(b, num_scribbles=1, scribble_length=batch["scribble"].shape[1])
      prompts = base.replace(scribbles=batch["scribble"][:, None].astype(jnp.float32),
                             scribble_labels=jnp.ones((b, 1), jnp.int32))
      out["scribble_iou"] = protocol.one_round(self.model, params, batch["image"], batch["image_hw"], batch["gt"],
                                               prompts, float(e.pred_threshold))
    return out

  def _datasets(self) -> list[tuple[str, str, str]]:
    """[(label, path, split)] from config.eval.datasets entries "label=path[:split]"."""
    out = []
    for entry in self.config.eval.datasets:
      label, _, rest = str(entry).partition("=")
      if not rest:
        raise UserValueError(f"eval.datasets entries must be 'label=path[:split]', got {entry!r}")
      path, _, split = rest.partition(":")
      out.append((label, path, split or "val"))
    return out

  def eval_iterator(self, process_index, process_count):
    from dinoseg.models.segnext.data import InteractiveEvalBatches  # noqa: PLC0415
    datasets = self._datasets()
    if not datasets:
      return None
    e = self.config.eval

    def batches():
      for index, (label, path, split) in enumerate(datasets):
        if not pathlib.Path(path).is_dir():
          raise UserFileNotFoundError(f"eval dataset {label!r}: no prepared dataset at {path}")
        reader = InteractiveEvalBatches(path, split, int(e.batch_size), self.sampler, process_index, process_count,
                                        max_examples=int(e.max_examples), seed=int(self.config.seed))
        for batch in reader:
          batch["dataset_index"] = np.full((len(batch["valid"]),), index, np.int32)
          yield batch
    return batches()

  def evaluator(self):
    labels = [label for label, _, _ in self._datasets()]
    return SegNextEvaluator(self.config.eval, labels) if labels else None


__all__ = ["SegNextTask", "SegNextEvaluator", "sampler_config"]
