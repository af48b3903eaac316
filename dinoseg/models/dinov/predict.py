"""DINOv behind `dinoseg.load` / `dinoseg predict`: segment every object that resembles the examples.

    predictor = dinoseg.load("configs/dinov/swint_sam_coco.py", "dinov_swint.pth", examples="examples/")
    result = predictor.predict("street.jpg")                      # result.masks (N, H, W), result.names, ...
    result = predictor.predict(image, examples=[(cat_image, {"cat": cat_mask}), (dog_image, {"dog": dog_masks})])
    result = predictor.predict(image, examples=bank)              # a dinoseg.models.dinov.bank.Bank or its directory

Examples (`examples=` at load time or per call; kept until replaced):
- a directory of images + mask PNGs `<image file name>__<category>[__<n>].png` (bank.examples_from_mask_dir),
  a directory with one COCO JSON, or a COCO .json file (bank.examples_from_coco_json);
- a prompt-bank directory (`dinoseg dinov bank` output: it holds index.json) or a `Bank`;
- a list of (image, masks) pairs: image a path / PIL image / (H, W, 3) uint8; masks {category name: (H, W)
  or (N, H, W)} or an (H, W) / (N, H, W) array (category "object").
Each category's prompt is the mean of its examples' embeddings (a bank: `num_examples` (default
`prompts.inference_example`) drawn with replacement, seeded: dinoseg.models.dinov.evaluate.class_prompts;
user examples: all of them). A bank category without examples is reported and never predicted.

Inference follows Mask DINO's predictor (resize to `test.min_size` / `max_size`, pad to 32, post-processing of
dinoseg.models.maskdino.postprocess on the similarity logits; `write` / `finish` are MaskDINOPredictor's:
overlays, panoptic PNG + JSON, predictions.json with the example category ids) with the K example categories
as classes, every one a "thing": `predict` gives the instances (the top `test.detections_per_image` with a
score > 0, boxes, "name score") and the panoptic segments when `test.panoptic_on`. The model compiles once
per padded input shape, output-size bucket (multiples of 64) and category count.

`dinoseg.load`, `dinoseg predict` and `dinoseg dinov` read the weights through the trainer task "dinov"
(`Task.variables_from_weights`; `load_variables`).
"""
import logging
import os
from typing import Any, Mapping

import numpy as np

from dinoseg.errors import UserValueError
from dinoseg.predict import MaskDINOPredictor, Predictor, as_image
from dinoseg.structures import Segmentation

logger = logging.getLogger(__name__)


def load_variables(config, weights: str | os.PathLike | None = None, allow_random: bool = False) -> dict:
  """DINOv variables through the trainer task "dinov", the one route from a weights file to variables
  (`Task.variables_from_weights`: a released .pth, a .msgpack or a dinoseg checkpoint directory); without
  weights, the config's `init` entries over a random init, which must cover everything unless `allow_random`
  (smoke tests): `dinoseg.predict.initial_variables`."""
  from dinoseg import predict  # noqa: PLC0415
  from dinoseg.train import task as task_lib  # noqa: PLC0415
  task = task_lib.build(config)
  if weights is None:
    return predict.initial_variables(task, allow_random)
  return task.variables_from_weights(weights)


def _pair_masks(masks: Any, image_hw: tuple[int, int], index: int) -> list[tuple[str, np.ndarray]]:
  items = masks.items() if isinstance(masks, Mapping) else [("object", masks)]
  out = []
  for name, m in items:
    m = np.asarray(m)
    m = m[None] if m.ndim == 2 else m
    if m.ndim != 3 or m.shape[1:] != tuple(image_hw):
      raise UserValueError(f"examples[{index}]: masks of {name!r} must be (H, W) or (N, H, W) with the image's size "
                           f"{tuple(image_hw)}, got {np.shape(m)}")
    out.extend((str(name), x.astype(bool)) for x in m)
  return out


class DINOvPredictor(MaskDINOPredictor):
  """Visual in-context prompting (module docstring).

  Args:
    config: a DINOv config; variables: its variables.
    examples: see the module docstring (None: give them to `predict` or `set_examples`).
    num_examples: examples averaged per bank category (default `config.prompts.inference_example`).
    seed: the seed of the bank draw.
  """

  def __init__(self, config, variables: Mapping, *, examples: Any = None, num_examples: int | None = None,
               seed: int = 0):
    import jax  # noqa: PLC0415

    from dinoseg.models.dinov.bank import PromptBankEncoder  # noqa: PLC0415
    from dinoseg.models.dinov.model import build_model  # noqa: PLC0415
    Predictor.__init__(self, config, 0)
    self.test = config.test
    self.model = build_model(config.model)
    self.variables = jax.device_put(dict(variables))
    self.encoder = PromptBankEncoder(self.model, self.variables, config)
    self.num_examples = int(num_examples or config.prompts.inference_example)
    self.seed = int(seed)
    self.category_ids = None
    self.prompts = self.prompt_valid = None
    self._fns, self._results, self._num_images = {}, [], 0
    if examples is not None:
      self.set_examples(examples)

  @classmethod
  def load_variables(cls, config, weights=None, allow_random: bool = False) -> dict:
    return load_variables(config, weights, allow_random)

  # -- examples
  def set_examples(self, examples: Any) -> None:
    """Sets the class prompts from `examples` (module docstring)."""
    import pathlib  # noqa: PLC0415

    from dinoseg.models.dinov import bank as bank_lib  # noqa: PLC0415
    from dinoseg.models.dinov.evaluate import class_prompts  # noqa: PLC0415
    if isinstance(examples, (str, os.PathLike)) and (pathlib.Path(examples) / bank_lib.INDEX).is_file():
      examples = bank_lib.read_bank(examples, self.encoder.dim)
    if isinstance(examples, bank_lib.Bank):
      bank = examples
      if bank.dim != self.encoder.dim:
        raise UserValueError(f"the bank's embeddings are {bank.dim}-d, this model's {self.encoder.dim}-d")
      ids = bank.category_ids
      prompts, valid = class_prompts(bank, ids, self.num_examples, self.seed)
      names = [bank.names[c] for c in ids]
    else:
      if isinstance(examples, (str, os.PathLike)):
        found, cat_names = bank_lib.examples_from_path(examples)
        pairs = [(ex.image, {}) for ex in found]
        for (_, d), ex in zip(pairs, found):
          for m, c in zip(ex.masks, ex.category_ids):
            d.setdefault(cat_names[int(c)], []).append(m)
      else:
        try:
          pairs = list(examples)
        except TypeError:
          raise UserValueError("examples must be a directory, a COCO JSON, a bank or a list of (image, masks) "
                               "pairs") from None
      sums: dict[str, np.ndarray] = {}
      counts: dict[str, int] = {}
      for i, pair in enumerate(pairs):
        try:
          image, masks = pair
        except (TypeError, ValueError):
          raise UserValueError(f"examples[{i}] must be an (image, masks) pair") from None
        image = as_image(image)
        named = _pair_masks({k: np.stack(v) if isinstance(v, list) else v for k, v in masks.items()}
                            if isinstance(masks, Mapping) else masks, image.shape[:2], i)
        emb, kept = self.encoder.encode(image, np.stack([m for _, m in named]))
        dropped = [n for (n, _), k in zip(named, kept) if not k]
        if dropped:
          logger.warning("examples[%d]: %d empty mask(s) ignored (%s)", i, len(dropped), ", ".join(dropped))
        for (name, _), e in zip([x for x, k in zip(named, kept) if k], emb):
          sums[name] = sums.get(name, 0.0) + e.astype(np.float64)
          counts[name] = counts.get(name, 0) + 1
      if not sums:
        raise UserValueError("the examples hold no non-empty mask")
      names = list(sums)
      prompts = np.stack([sums[n] / counts[n] for n in names]).astype(np.float32)
      valid = np.ones(len(names), bool)
      ids = list(range(1, len(names) + 1))
    missing = [n for n, v in zip(names, valid) if not v]
    if missing:
      logger.warning("%d categor%s without examples will not be predicted: %s", len(missing),
                     "y" if len(missing) == 1 else "ies", ", ".join(missing[:20]))
    if not valid.any():
      raise UserValueError("no category has an example")
    self.class_names = tuple(names)
    self.category_ids = [int(c) for c in ids]
    self.prompts, self.prompt_valid = prompts, valid
    self.missing = tuple(missing)

  # -- inference (`write` / `finish`: MaskDINOPredictor's overlays, panoptic PNGs and predictions.json)
  def _run(self, padded_hw, canvas_hw):
    """The jitted model + post-processing for a padded input shape, an output bucket and K prompts."""
    import jax  # noqa: PLC0415

    from dinoseg.models.dinov.evaluate import masked_logits  # noqa: PLC0415
    from dinoseg.models.maskdino import postprocess as pp  # noqa: PLC0415
    k = len(self.class_names)
    key = (padded_hw, canvas_hw, k)
    if key not in self._fns:
      t = self.test
      things = tuple(range(k))

      def run(variables, images, valid_hw, output_hw, prompts, prompt_valid):
        out = self.model.apply(variables, images, valid_hw, prompts=prompts, prompt_valid=prompt_valid)
        logits = masked_logits(out.logits[-1], prompt_valid)
        boxes, masks = out.boxes[-1], out.masks[-1]
        r = pp.instance_inference(logits, boxes, masks, padded_hw=padded_hw, valid_hw=valid_hw, output_hw=output_hw,
                                  canvas_hw=canvas_hw, top_k=min(int(t.detections_per_image),
                                                                 logits.shape[1] * logits.shape[2]))
        res = {"instances": r.replace(valid=r.valid & (r.scores > 0))}
        if t.panoptic_on:
          res["panoptic"] = pp.panoptic_inference(
              logits, masks, padded_hw=padded_hw, valid_hw=valid_hw, output_hw=output_hw, canvas_hw=canvas_hw,
              thing_classes=things, object_mask_threshold=t.object_mask_threshold,
              overlap_threshold=t.overlap_threshold, transform_eval=t.transform_eval, temperature=t.pano_temperature)
        return res
      self._fns[key] = jax.jit(run)
    return self._fns[key]

  def predict(self, image, examples: Any = None, score_threshold: float | None = None) -> Segmentation:
    """Instances of `image` (a path, a PIL image or (H, W, 3) uint8) resembling the examples (given here or
    before): masks (N, H, W), scores, labels / names (the example categories), boxes xyxy; plus `panoptic` /
    `segments` when `test.panoptic_on`."""
    from PIL import Image  # noqa: PLC0415

    from dinoseg.models.maskdino import postprocess as pp  # noqa: PLC0415
    from dinoseg.predict import resize_shortest_edge  # noqa: PLC0415
    from dinoseg.structures import pad_image  # noqa: PLC0415
    if examples is not None:
      self.set_examples(examples)
    if self.prompts is None:
      raise UserValueError("DINOv needs examples: predict(image, examples=...) or --examples=DIR (images with "
                           "<image file name>__<category>.png masks, a COCO JSON or a prompt bank)")
    image = as_image(image)
    h, w = image.shape[:2]
    nh, nw = resize_shortest_edge(h, w, int(self.test.min_size), int(self.test.max_size))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
    padded_hw = (_round_up(nh, 32), _round_up(nw, 32))
    canvas_hw = (_round_up(h, 64), _round_up(w, 64))
    res = self._run(padded_hw, canvas_hw)(self.variables, pad_image(resized, padded_hw)[None],
                                          np.asarray([[nh, nw]], np.int32), np.asarray([[h, w]], np.int32),
                                          self.prompts[None], self.prompt_valid[None])
    extras: dict[str, Any] = {}
    if "panoptic" in res:
      extras["panoptic"] = np.asarray(res["panoptic"].segmentation[0])[:h, :w].astype(np.int32)
      extras["segments"] = tuple(pp.panoptic_segments_info(res["panoptic"], 0))
    r = res["instances"]
    keep = np.asarray(r.valid[0])
    labels = np.asarray(r.labels[0])[keep].astype(np.int32)
    result = Segmentation(masks=np.asarray(r.masks[0])[keep][:, :h, :w].astype(bool),
                          scores=np.asarray(r.scores[0])[keep].astype(np.float32), labels=labels,
                          names=tuple(self.class_names[i] for i in labels), class_names=self.class_names,
                          boxes=np.asarray(r.boxes[0])[keep].astype(np.float32), **extras)
    return result if score_threshold is None else result.select(result.scores >= score_threshold)


def _round_up(x: int, m: int) -> int:
  return -(-int(x) // m) * m


__all__ = ["DINOvPredictor", "load_variables"]
