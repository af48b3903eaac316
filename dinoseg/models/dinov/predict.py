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

Interactive use (the browser demo, `dinoseg demo dinov`): `image_features(image)` runs the backbone and the pixel
decoder once per image and `predict_features(features)` the decoder and post-processing with the current
prompts, which together give `predict`'s result; `set_prompts(names, prompts)` sets class prompts from
embeddings (e.g. the means of `encoder.encode` outputs).
"""
import dataclasses
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
    k = len(self.class_names)
    key = (padded_hw, canvas_hw, k)
    if key not in self._fns:
      model, test = self.model, self.test

      def run(variables, images, valid_hw, output_hw, prompts, prompt_valid):
        out = model.apply(variables, images, valid_hw, prompts=prompts, prompt_valid=prompt_valid)
        return _postprocess(out, prompt_valid, test, k, padded_hw=padded_hw, valid_hw=valid_hw, output_hw=output_hw,
                            canvas_hw=canvas_hw, panoptic=bool(test.panoptic_on))
      self._fns[key] = jax.jit(run)
    return self._fns[key]

  def _model_input(self, image):
    """image (a path, a PIL image or (H, W, 3) uint8) -> (H, W, the resized image padded to multiples of 32
    (1, Hp, Wp, 3) float32, valid_hw (1, 2) int32: the resized size), as the test-time input of the model."""
    from PIL import Image  # noqa: PLC0415

    from dinoseg.predict import resize_shortest_edge  # noqa: PLC0415
    from dinoseg.structures import pad_image  # noqa: PLC0415
    image = as_image(image)
    h, w = image.shape[:2]
    nh, nw = resize_shortest_edge(h, w, int(self.test.min_size), int(self.test.max_size))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
    return h, w, pad_image(resized, (_round_up(nh, 32), _round_up(nw, 32)))[None], np.asarray([[nh, nw]], np.int32)

  def predict(self, image, examples: Any = None, score_threshold: float | None = None) -> Segmentation:
    """Instances of `image` (a path, a PIL image or (H, W, 3) uint8) resembling the examples (given here or
    before): masks (N, H, W), scores, labels / names (the example categories), boxes xyxy; plus `panoptic` /
    `segments` when `test.panoptic_on`."""
    if examples is not None:
      self.set_examples(examples)
    if self.prompts is None:
      raise UserValueError("DINOv needs examples: predict(image, examples=...) or --examples=DIR (images with "
                           "<image file name>__<category>.png masks, a COCO JSON or a prompt bank)")
    h, w, padded, valid_hw = self._model_input(image)
    padded_hw, canvas_hw = tuple(padded.shape[1:3]), (_round_up(h, 64), _round_up(w, 64))
    res = self._run(padded_hw, canvas_hw)(self.variables, padded, valid_hw, np.asarray([[h, w]], np.int32),
                                          self.prompts[None], self.prompt_valid[None])
    result = _segmentation(res, h, w, self.class_names)
    return result if score_threshold is None else result.select(result.scores >= score_threshold)

  # -- interactive use (the browser demo, dinoseg/demo/dinov): an image's features are computed once, the
  # decoder runs again for every new set of prompts. `image_features` + `predict_features` give what
  # `predict` gives (the same model and post-processing, split at the pixel decoder's output).
  def set_prompts(self, names, prompts: np.ndarray) -> None:
    """Sets the K class prompts directly: names (K,) str, prompts (K, d) float (e.g. the means of
    `self.encoder.encode` embeddings per category, as `set_examples` makes them); category ids 1..K."""
    names = tuple(str(n) for n in names)
    prompts = np.asarray(prompts, np.float32)
    if not names or prompts.shape != (len(names), self.encoder.dim) or not np.isfinite(prompts).all():
      raise UserValueError(f"prompts must be ({len(names)}, {self.encoder.dim}) finite floats for {len(names)} "
                           f"name(s) (at least one), got {prompts.shape}")
    self.class_names = names
    self.category_ids = list(range(1, len(names) + 1))
    self.prompts, self.prompt_valid = prompts, np.ones(len(names), bool)
    self.missing = ()

  def image_features(self, image) -> "ImageFeatures":
    """The test-time input of `image` (a path, a PIL image or (H, W, 3) uint8; resized and padded as `predict`
    does) through the backbone and the pixel decoder, kept on the device (`ImageFeatures`)."""
    import jax  # noqa: PLC0415
    h, w, padded, valid_hw = self._model_input(image)
    padded_hw = tuple(padded.shape[1:3])
    if "features" not in self._fns:
      model = self.model
      self._fns["features"] = jax.jit(
          lambda variables, images, valid_hw: model.apply(variables, images, valid_hw, method=model.features))
    mask_features, multi_scale = self._fns["features"](self.variables, padded, valid_hw)
    return ImageFeatures(image_hw=(h, w), padded_hw=padded_hw, canvas_hw=(_round_up(h, 64), _round_up(w, 64)),
                         valid_hw=valid_hw, mask_features=mask_features, multi_scale=tuple(multi_scale))

  def _decode_features(self, padded_hw, canvas_hw, panoptic: bool):
    """The jitted decoder + post-processing (as `_run`, from the pixel decoder's output) for K prompts."""
    import jax  # noqa: PLC0415
    key = ("decode", padded_hw, canvas_hw, len(self.class_names), panoptic)
    if key not in self._fns:
      model, test, k = self.model, self.test, len(self.class_names)

      def run(variables, multi_scale, mask_features, valid_hw, output_hw, prompts, prompt_valid):
        out = model.apply(variables, multi_scale, mask_features, prompts, prompt_valid, method=_decode_prompts)
        return _postprocess(out, prompt_valid, test, k, padded_hw=padded_hw, valid_hw=valid_hw, output_hw=output_hw,
                            canvas_hw=canvas_hw, panoptic=panoptic)
      self._fns[key] = jax.jit(run)
    return self._fns[key]

  def predict_features(self, features: "ImageFeatures", score_threshold: float | None = None,
                       panoptic: bool | None = None) -> Segmentation:
    """`predict` of the image behind `features` (`image_features`) with the current prompts (`set_examples`,
    `set_prompts`): only the decoder and the post-processing run. `panoptic` (default `test.panoptic_on`):
    whether to add the panoptic segments."""
    if self.prompts is None:
      raise UserValueError("DINOv needs examples: set_examples(...) or set_prompts(...) before predict_features")
    panoptic = bool(self.test.panoptic_on if panoptic is None else panoptic)
    h, w = features.image_hw
    res = self._decode_features(features.padded_hw, features.canvas_hw, panoptic)(
        self.variables, features.multi_scale, features.mask_features, features.valid_hw,
        np.asarray([[h, w]], np.int32), self.prompts[None], self.prompt_valid[None])
    result = _segmentation(res, h, w, self.class_names)
    return result if score_threshold is None else result.select(result.scores >= score_threshold)


def _round_up(x: int, m: int) -> int:
  return -(-int(x) // m) * m


@dataclasses.dataclass(frozen=True)
class ImageFeatures:
  """One image's pixel-decoder output for `DINOvPredictor.predict_features`.

  Attributes:
    image_hw: (H, W) of the image; padded_hw: the model's input canvas (multiples of 32); canvas_hw: the
      output bucket (multiples of 64); valid_hw: (1, 2) int32 size of the resized image in the canvas;
    mask_features: (1, Hp/4, Wp/4, mask_dim); multi_scale: the encoder levels, each (1, h_l, w_l, d).
  """
  image_hw: tuple[int, int]
  padded_hw: tuple[int, int]
  canvas_hw: tuple[int, int]
  valid_hw: np.ndarray
  mask_features: Any
  multi_scale: tuple


def _decode_prompts(model, multi_scale, mask_features, prompts, prompt_valid):
  """`DINOv` method: the generic task of its predictor on given encoder levels and mask features."""
  return model.predictor(multi_scale, mask_features, prompts=prompts, prompt_valid=prompt_valid)


def _postprocess(out, prompt_valid, test, k: int, *, padded_hw, valid_hw, output_hw, canvas_hw, panoptic: bool):
  """Post-processing of the generic task's outputs (B = 1): the instances (score > 0) and, with `panoptic`,
  the panoptic segmentation, as `DINOvPredictor._run` computes them."""
  from dinoseg.models.dinov.evaluate import masked_logits  # noqa: PLC0415
  from dinoseg.models.maskdino import postprocess as pp  # noqa: PLC0415
  logits = masked_logits(out.logits[-1], prompt_valid)
  boxes, masks = out.boxes[-1], out.masks[-1]
  r = pp.instance_inference(logits, boxes, masks, padded_hw=padded_hw, valid_hw=valid_hw, output_hw=output_hw,
                            canvas_hw=canvas_hw, top_k=min(int(test.detections_per_image),
                                                           logits.shape[1] * logits.shape[2]))
  res = {"instances": r.replace(valid=r.valid & (r.scores > 0))}
  if panoptic:
    res["panoptic"] = pp.panoptic_inference(
        logits, masks, padded_hw=padded_hw, valid_hw=valid_hw, output_hw=output_hw, canvas_hw=canvas_hw,
        thing_classes=tuple(range(k)), object_mask_threshold=test.object_mask_threshold,
        overlap_threshold=test.overlap_threshold, transform_eval=test.transform_eval,
        temperature=test.pano_temperature)
  return res


def _segmentation(res, h: int, w: int, class_names) -> Segmentation:
  """The `Segmentation` of `_postprocess` results (batch entry 0) at the image's size (H, W)."""
  from dinoseg.models.maskdino import postprocess as pp  # noqa: PLC0415
  extras: dict[str, Any] = {}
  if "panoptic" in res:
    extras["panoptic"] = np.asarray(res["panoptic"].segmentation[0])[:h, :w].astype(np.int32)
    extras["segments"] = tuple(pp.panoptic_segments_info(res["panoptic"], 0))
  r = res["instances"]
  keep = np.asarray(r.valid[0])
  labels = np.asarray(r.labels[0])[keep].astype(np.int32)
  return Segmentation(masks=np.asarray(r.masks[0])[keep][:, :h, :w].astype(bool),
                      scores=np.asarray(r.scores[0])[keep].astype(np.float32), labels=labels,
                      names=tuple(class_names[i] for i in labels), class_names=tuple(class_names),
                      boxes=np.asarray(r.boxes[0])[keep].astype(np.float32), **extras)


__all__ = ["DINOvPredictor", "ImageFeatures", "load_variables"]
