"""Predictors (image -> results) and overlay visualization, for `dinoseg predict` and the Python API.

A predictor is registered per config `task` in `PREDICTORS` ("module:attribute" of a factory
`factory(config, variables) -> predictor`); a predictor has `predict(image) -> dict` and
`write(result, image, out_dir, name) -> list[paths]` (+ optional `finish(out_dir)`). Mask DINO's
predictor is defined here; other systems add one line to PREDICTORS.

Output names: every output of an input image starts with the input's full file name
(`output_name`), so `x.png` and `x.jpg` never share an output and no output is named like its own
input: `x.jpg` -> `x.jpg.png` (overlay), `x.jpg_panoptic.png`, `x.jpg_semantic.png`,
`panoptic/x.jpg.png` + `.json`, `semantic/x.jpg.png`, `x.jpg_labels.png` (Talk2DINO's label map);
`predictions.json` holds every instance with `"file_name": "x.jpg"` (`output_paths`).
`check_outputs` refuses an output directory where one of these paths is an input image.

Usage:
  from dinoseg import predict
  p = predict.build_predictor(config, "maskdino_r50.pth")   # .pth/.pkl/.safetensors or an Orbax dir
  result = p.predict(np.asarray(PIL.Image.open("x.jpg").convert("RGB")))
  predict.draw_instances(image, result["masks"], result["boxes"], result["labels"], result["scores"]).save("x.png")
"""
import colorsys
import importlib
import json
import math
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dinoseg.errors import UserFileNotFoundError, UserValueError

# task -> "module:factory". A factory takes (config, variables) and returns a predictor.
PREDICTORS: dict[str, str] = {
    "maskdino": "dinoseg.predict:MaskDINOPredictor",
    "talk2dino": "dinoseg.models.talk2dino.predict:make_predictor",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PREDICTIONS_FILE = "predictions.json"


# ----------------------------------------------------------------------------- output names

def output_name(image_path: str | os.PathLike) -> str:
  """The name every output of `image_path` starts with: its full file name ("x.jpg")."""
  return pathlib.Path(image_path).name


def output_paths(out_dir: str | os.PathLike, name: str) -> dict[str, pathlib.Path]:
  """Every file a predictor may write for the input named `name` (module docstring), by kind."""
  out_dir = pathlib.Path(out_dir)
  return {"overlay": out_dir / f"{name}.png", "panoptic_overlay": out_dir / f"{name}_panoptic.png",
          "semantic_overlay": out_dir / f"{name}_semantic.png", "labels": out_dir / f"{name}_labels.png",
          "panoptic": out_dir / "panoptic" / f"{name}.png", "panoptic_json": out_dir / "panoptic" / f"{name}.json",
          "semantic": out_dir / "semantic" / f"{name}.png"}


def check_outputs(images: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> None:
  """Raises UserError when writing the outputs of `images` into `out_dir` would overwrite one of them.

  Output names cannot collide with each other (they start with distinct file names), so an input is
  the only thing an output could clobber besides an earlier run's output of the same name.
  """
  inputs = {pathlib.Path(p).resolve(): pathlib.Path(p) for p in images}
  for image in images:
    planned = [*output_paths(out_dir, output_name(image)).values(), pathlib.Path(out_dir) / PREDICTIONS_FILE]
    for path in planned:
      clash = inputs.get(path.resolve())
      if clash is not None:
        raise UserValueError(f"--output={out_dir} would overwrite the input image {clash} (with an output of "
                        f"{pathlib.Path(image).name}); choose another --output directory")


# ----------------------------------------------------------------------------- visualization

def color(i: int) -> tuple[int, int, int]:
  """A distinct, deterministic RGB color for index i (golden-ratio hues)."""
  h = (i * 0.6180339887498949) % 1.0
  r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
  return int(r * 255), int(g * 255), int(b * 255)


def _label_text(label: int, score: float | None, class_names: Sequence[str] | None) -> str:
  name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)
  return name if score is None else f"{name} {score:.2f}"


def draw_instances(image: np.ndarray, masks: np.ndarray | None, boxes: np.ndarray | None, labels: np.ndarray,
                   scores: np.ndarray | None = None, class_names: Sequence[str] | None = None,
                   alpha: float = 0.5):
  """Overlay of instance masks (colored, `alpha`), boxes and "label score" texts on an RGB image.

  Args:
    image: (H, W, 3) uint8 RGB.
    masks: (K, H, W) bool or None; boxes: (K, 4) xyxy pixels or None; labels (K,); scores (K,) or None.
  Returns:
    a PIL.Image (RGB).
  """
  from PIL import Image, ImageDraw  # noqa: PLC0415
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be (H, W, 3), got {image.shape}")
  out = image.astype(np.float32)
  k = len(labels)
  if masks is not None:
    masks = np.asarray(masks, bool)
    if masks.shape != (k,) + image.shape[:2]:
      raise ValueError(f"masks must have shape {(k,) + image.shape[:2]}, got {masks.shape}")
    for i in range(k):
      out[masks[i]] = (1 - alpha) * out[masks[i]] + alpha * np.asarray(color(i), np.float32)
  pil = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(pil)
  for i in range(k):
    c = color(i)
    text = _label_text(int(labels[i]), None if scores is None else float(scores[i]), class_names)
    if boxes is not None:
      x0, y0, x1, y1 = (float(v) for v in boxes[i])
      draw.rectangle([x0, y0, x1, y1], outline=c, width=2)
      anchor = (x0 + 2, y0 + 1)
    elif masks is not None and masks[i].any():
      ys, xs = np.nonzero(masks[i])
      anchor = (float(xs.min()), float(ys.min()))
    else:
      continue
    tw = draw.textlength(text)
    draw.rectangle([anchor[0] - 1, anchor[1], anchor[0] + tw + 1, anchor[1] + 11], fill=(0, 0, 0))
    draw.text(anchor, text, fill=c)
  return pil


def draw_semantic(image: np.ndarray, label_map: np.ndarray, class_names: Sequence[str] | None = None,
                  alpha: float = 0.5, ignore: int | None = None):
  """Overlay of an (H, W) class map; each present class labelled at its largest pixel row's centre."""
  classes = [int(c) for c in np.unique(label_map) if ignore is None or c != ignore]
  masks = np.stack([label_map == c for c in classes]) if classes else np.zeros((0,) + label_map.shape, bool)
  pil = draw_instances(image, masks, None, np.asarray(classes), None, class_names, alpha)
  return pil


def draw_panoptic(image: np.ndarray, segmentation: np.ndarray, segments_info: Sequence[Mapping],
                  class_names: Sequence[str] | None = None, alpha: float = 0.5):
  """Overlay of a panoptic id map with its segments_info ({"id", "category_id"})."""
  masks = np.stack([segmentation == s["id"] for s in segments_info]) if segments_info else \
      np.zeros((0,) + segmentation.shape, bool)
  labels = np.asarray([s["category_id"] for s in segments_info], np.int64)
  return draw_instances(image, masks, None, labels, None, class_names, alpha)


# ----------------------------------------------------------------------------- weights and registry

def load_maskdino_variables(config, weights: str | os.PathLike) -> dict:
  """Mask DINO variables from a reference checkpoint (.pth/.pkl/.safetensors, converted strictly) or an
  Orbax directory (dinoseg's own checkpoints: {"params": ..., ...} possibly under "state")."""
  from dinoseg.convert import readers  # noqa: PLC0415
  tree = readers.read_checkpoint(weights)
  if pathlib.Path(weights).is_dir():
    for key in ("state", "model"):
      if isinstance(tree, Mapping) and key in tree and isinstance(tree[key], Mapping) and "params" in tree[key]:
        tree = tree[key]
    if not (isinstance(tree, Mapping) and "params" in tree):
      raise UserValueError(f"{weights}: an Orbax checkpoint with a 'params' entry is expected")
    return {k: v for k, v in tree.items() if k in ("params", "frozen_bn")}
  from dinoseg.models.maskdino import convert  # noqa: PLC0415
  return convert.to_flax(tree, config.model)


# config.task -> "module:function(config, weights) -> Flax variables" for `dinoseg predict --weights`.
VARIABLE_LOADERS: dict[str, str] = {
    "maskdino": "dinoseg.predict:load_maskdino_variables",
    "talk2dino": "dinoseg.models.talk2dino.predict:load_variables",
}


def load_variables(config, weights: str | os.PathLike) -> dict:
  """Flax variables for `config` from a weights file or directory, read by the task's loader."""
  task = config.get("task", "maskdino")
  if task not in VARIABLE_LOADERS:
    raise UserValueError(f"no weights loader registered for task {task!r}; known: {', '.join(sorted(VARIABLE_LOADERS))}")
  return _resolve(VARIABLE_LOADERS[task])(config, weights)


def _resolve(spec: str) -> Callable:
  module, _, attr = spec.partition(":")
  return getattr(importlib.import_module(module), attr)


def build_predictor(config, weights: str | os.PathLike | None, variables: Mapping | None = None):
  """The registered predictor of `config.task`, with weights from a file/dir or given variables."""
  task = config.get("task", None)
  if task not in PREDICTORS:
    raise UserValueError(f"no predictor registered for task {task!r}; known: {', '.join(sorted(PREDICTORS))}")
  factory = _resolve(PREDICTORS[task])
  if variables is None:
    if weights is None:
      raise ValueError("weights are required (a checkpoint file or an Orbax directory)")
    variables = load_variables(config, weights)
  return factory(config, variables)


def list_images(path: str | os.PathLike) -> list[pathlib.Path]:
  """An image file, or the images of a directory (sorted)."""
  path = pathlib.Path(path)
  if path.is_file():
    return [path]
  if path.is_dir():
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
      raise UserValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return files
  raise UserFileNotFoundError(f"--input: no such file or directory: {path}")


class UnreadableImageError(UserValueError):
  """An input file that is not a decodable image (corrupt, truncated, or another format)."""


def read_image(path: str | os.PathLike) -> np.ndarray:
  """(H, W, 3) uint8 RGB of an image file, EXIF orientation applied (the decoder of the training data,
  dinoseg.data_pipelines.schema.decode_image, as detectron2 reads). Raises FileNotFoundError for a
  missing file and UnreadableImageError for a corrupt, truncated or non-image one."""
  from dinoseg.data_pipelines import schema  # noqa: PLC0415
  data = pathlib.Path(path).read_bytes()
  try:
    return schema.decode_image(data)
  except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
    raise UnreadableImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------- Mask DINO

def resize_shortest_edge(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
  """detectron2 ResizeShortestEdge output size (short side `short`, long side <= max_size), at least 1
  pixel per side: an extreme aspect ratio (e.g. 10 x 10000) would round its short side to 0."""
  scale = short / min(h, w)
  if max(h, w) * scale > max_size:
    scale = max_size / max(h, w)
  return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def _round_up(x: int, m: int) -> int:
  return int(math.ceil(x / m) * m)


class MaskDINOPredictor:
  """Single-image Mask DINO inference: resize (shortest edge), pad to 32, model, postprocess at the
  original size. Compiles once per padded input shape and output-size bucket (multiples of 64).

  `predict(image)` returns {"instances": {scores, labels, boxes (xyxy), masks}, "panoptic": (seg,
  segments_info) and/or "semantic": (C, H, W) scores}, following config.test's *_on switches.
  """

  def __init__(self, config, variables: Mapping):
    import jax  # noqa: PLC0415

    from dinoseg.models.maskdino.model import build_model  # noqa: PLC0415
    self.config = config
    self.test = config.test
    self.model = build_model(config.model)
    self.variables = jax.tree.map(np.asarray, dict(variables))
    self.class_names = list(config.get("dataset", {}).get("class_names", ()) or ()) or None
    self.category_ids = list(config.get("dataset", {}).get("category_ids", ()) or ()) or None
    self._fns = {}
    self._results = []
    self._num_images = 0

  def _fn(self, padded_hw, canvas_hw):
    import jax  # noqa: PLC0415

    from dinoseg.models.maskdino import postprocess as pp  # noqa: PLC0415
    key = (padded_hw, canvas_hw)
    if key in self._fns:
      return self._fns[key]
    t, m = self.test, self.config.model
    things = tuple(t.thing_classes) or tuple(range(m.num_classes))

    def run(variables, images, valid_hw, output_hw):
      out = self.model.apply(variables, images, valid_hw)
      logits, boxes, masks = out.logits[-1], out.boxes[-1], out.masks[-1]
      res = {}
      if t.instance_on:
        res["instances"] = pp.instance_inference(
            logits, boxes, masks, padded_hw=padded_hw, valid_hw=valid_hw, output_hw=output_hw, canvas_hw=canvas_hw,
            top_k=min(t.detections_per_image, logits.shape[1] * logits.shape[2]),
            thing_classes=things if t.panoptic_on else None)
      if t.panoptic_on:
        res["panoptic"] = pp.panoptic_inference(
            logits, masks, padded_hw=padded_hw, valid_hw=valid_hw, output_hw=output_hw, canvas_hw=canvas_hw,
            thing_classes=things, object_mask_threshold=t.object_mask_threshold,
            overlap_threshold=t.overlap_threshold, transform_eval=t.transform_eval, temperature=t.pano_temperature)
      if t.semantic_on:
        res["semantic"] = pp.semantic_inference(
            logits, masks, padded_hw=padded_hw, valid_hw=valid_hw, output_hw=output_hw, canvas_hw=canvas_hw,
            semantic_ce_loss=m.semantic_ce_loss, transform_eval=t.transform_eval, temperature=t.pano_temperature,
            postprocess_before_inference=t.sem_seg_postprocess_before_inference or t.instance_on or t.panoptic_on)
      return res

    self._fns[key] = jax.jit(run)
    return self._fns[key]

  def predict(self, image: np.ndarray) -> dict:
    from PIL import Image  # noqa: PLC0415

    from dinoseg.models.maskdino import postprocess as pp  # noqa: PLC0415
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    h, w = image.shape[:2]
    nh, nw = resize_shortest_edge(h, w, self.test.min_size, self.test.max_size)
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
    padded_hw = (_round_up(nh, 32), _round_up(nw, 32))
    canvas = np.zeros((1, *padded_hw, 3), np.float32)
    canvas[0, :nh, :nw] = resized
    canvas_hw = (_round_up(h, 64), _round_up(w, 64))
    res = self._fn(padded_hw, canvas_hw)(self.variables, canvas, np.asarray([[nh, nw]], np.int32),
                                         np.asarray([[h, w]], np.int32))
    out = {}
    if "instances" in res:
      r = res["instances"]
      keep = np.asarray(r.valid[0])
      out["instances"] = {"scores": np.asarray(r.scores[0])[keep], "labels": np.asarray(r.labels[0])[keep],
                          "boxes": np.asarray(r.boxes[0])[keep], "masks": np.asarray(r.masks[0])[keep][:, :h, :w]}
    if "panoptic" in res:
      out["panoptic"] = (np.asarray(res["panoptic"].segmentation[0])[:h, :w],
                         pp.panoptic_segments_info(res["panoptic"], 0))
    if "semantic" in res:
      out["semantic"] = np.asarray(res["semantic"][0])[:, :h, :w]
    return out

  def write(self, result: dict, image: np.ndarray, out_dir: str | os.PathLike, name: str,
            score_threshold: float = 0.5) -> list[pathlib.Path]:
    """Writes the overlay PNG(s) of the input named `name` (`output_name`; files as `output_paths`) and
    collects its COCO-format instance results (see `finish`)."""
    from dinoseg.evaluation.coco import instances_to_coco_json  # noqa: PLC0415
    from dinoseg.evaluation.panoptic import id2rgb  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415
    out = output_paths(out_dir, name)
    paths = []
    if "instances" in result:
      r = result["instances"]
      image_id = self._num_images
      for entry in instances_to_coco_json(image_id, r["scores"], r["labels"], boxes_xyxy=r["boxes"], masks=r["masks"],
                                          category_ids=self.category_ids):
        entry["file_name"] = name
        self._results.append(entry)
      keep = r["scores"] >= score_threshold
      pil = draw_instances(image, r["masks"][keep], r["boxes"][keep], r["labels"][keep], r["scores"][keep],
                           self.class_names)
      paths.append(out["overlay"])
      pil.save(paths[-1])
    if "panoptic" in result:
      seg, info = result["panoptic"]
      out["panoptic"].parent.mkdir(exist_ok=True)
      Image.fromarray(id2rgb(seg)).save(out["panoptic"])
      with open(out["panoptic_json"], "w") as f:  # dataset category ids, as predictions.json
        json.dump([dict(s, category_id=self.category_ids[s["category_id"]]) for s in info] if self.category_ids
                  else info, f)
      paths.append(out["panoptic_overlay"])
      draw_panoptic(image, seg, info, self.class_names).save(paths[-1])
    if "semantic" in result:
      label_map = result["semantic"].argmax(0)
      out["semantic"].parent.mkdir(exist_ok=True)
      Image.fromarray(label_map.astype(np.uint16 if label_map.max() > 255 else np.uint8)).save(out["semantic"])
      paths.append(out["semantic_overlay"])
      draw_semantic(image, label_map, self.class_names).save(paths[-1])
    self._num_images += 1
    return paths

  def finish(self, out_dir: str | os.PathLike) -> pathlib.Path | None:
    """Writes predictions.json (COCO results with an extra "file_name") when there were instances."""
    if not self.config.test.instance_on:
      return None
    path = pathlib.Path(out_dir) / PREDICTIONS_FILE
    with open(path, "w") as f:
      json.dump(self._results, f)
    return path


def summarize(result: dict, score_threshold: float = 0.5) -> str:
  """What an image's outputs show, for the console: instances drawn (and why none), segments, classes."""
  parts = []
  if "instances" in result:
    scores = np.asarray(result["instances"]["scores"])
    drawn = int((scores >= score_threshold).sum())
    if not len(scores):
      parts.append("no instances predicted")
    elif drawn:
      parts.append(f"{drawn} of {len(scores)} instances drawn (score >= {score_threshold:g})")
    else:
      parts.append(f"0 of {len(scores)} instances drawn: the best score {scores.max():.3f} is below "
                   f"--score-threshold {score_threshold:g}")
  if "panoptic" in result:
    parts.append(f"{len(result['panoptic'][1])} panoptic segments")
  if "semantic" in result:
    semantic = np.asarray(result["semantic"])
    labels = np.unique(semantic.argmax(0) if semantic.ndim == 3 else semantic)
    names = result.get("names")
    shown = [str(names[i]) if names is not None and 0 <= i < len(names) else str(i) for i in labels.tolist()]
    parts.append(f"{len(shown)} classes: {', '.join(shown[:8])}{', ...' if len(shown) > 8 else ''}")
  return "; ".join(parts)


__all__ = ["PREDICTORS", "PREDICTIONS_FILE", "UnreadableImageError", "build_predictor", "load_variables",
           "draw_instances", "draw_semantic", "draw_panoptic", "MaskDINOPredictor", "list_images", "read_image",
           "resize_shortest_edge", "color", "output_name", "output_paths", "check_outputs", "summarize"]
