"""One way in: `dinoseg.load(config, weights)` -> a predictor; `predictor.predict(image, **prompts)` -> a
`dinoseg.structures.Segmentation` (masks, scores, labels, names, boxes where the system has them, plus the
system's maps). `dinoseg predict` uses the same objects, and overlay drawing for it lives here.

    import dinoseg
    predictor = dinoseg.load("configs/maskdino/coco_instance_r50_3s_d1_2048.py", "maskdino_r50.pth")
    result = predictor.predict("cat.jpg", score_threshold=0.5)   # result.masks (N, H, W), result.names, ...

Predictors are registered per config `task` in `PREDICTORS` (a `dinoseg.registry.Registry`: "module:class"
of `factory(config, variables, **options) -> Predictor`): Mask DINO's is defined here, SegNext's and
Talk2DINO's in their `models/<system>/predict.py`. A predictor keeps its weights on the device, jits once per
input size bucket, and has `predict(image, **prompts) -> Segmentation`, `write(result, image, out_dir, name,
score_threshold) -> [paths]` and `finish(out_dir)` (`Predictor` is the base class). Weights come from the
task (`Task.variables_from_weights`: the one route from a file to variables) or, without a file, from the
config's `init` entries.

Output names (`dinoseg predict`): every output of an input image starts with the input's full file name
(`output_name`), so `x.png` and `x.jpg` never share an output and no output is named like its own
input: `x.jpg` -> `x.jpg.png` (overlay), `x.jpg_panoptic.png`, `x.jpg_semantic.png`,
`panoptic/x.jpg.png` + `.json`, `semantic/x.jpg.png`, `x.jpg_labels.png` (Talk2DINO's label map);
`predictions.json` holds every instance with `"file_name": "x.jpg"` (`output_paths`).
`check_outputs` refuses an output directory where one of these paths is an input image.
"""
import colorsys
import json
import logging
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.registry import Registry
from dinoseg.structures import Segmentation, pad_image, segments_from_label_map

logger = logging.getLogger(__name__)

# config.task -> "module:factory"; factory(config, variables, **options) -> Predictor.
PREDICTORS = Registry("predictor", hint=" (config.task)", entries={
    "maskdino": "dinoseg.predict:MaskDINOPredictor",
    "segnext": "dinoseg.models.segnext.predict:SegNextImagePredictor",
    "talk2dino": "dinoseg.models.talk2dino.predict:Talk2DinoPredictor",
    "dinov": "dinoseg.models.dinov.predict:DINOvPredictor",
    "ov2seg": "dinoseg.models.ov2seg.predict:OV2SegVideoPredictor",  # videos (input_kind = "video")
})
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
    score = None if scores is None or np.isnan(scores[i]) else float(scores[i])
    text = _label_text(int(labels[i]), score, class_names)
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


# ----------------------------------------------------------------------------- images

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
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserFileNotFoundError(f"no such image file: {path}")
  try:
    return schema.decode_image(path.read_bytes())
  except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
    raise UnreadableImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def as_image(image: Any) -> np.ndarray:
  """(H, W, 3) uint8 RGB from a path (`read_image`: EXIF orientation applied), a PIL image (EXIF orientation
  applied, converted to RGB) or an (H, W, 3) uint8 array (used as it is)."""
  if isinstance(image, (str, os.PathLike)):
    return read_image(image)
  if hasattr(image, "getexif") and hasattr(image, "convert"):  # a PIL image
    from PIL import ImageOps  # noqa: PLC0415
    if image.getexif().get(0x0112, 1) != 1:
      image = ImageOps.exif_transpose(image)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
  array = np.asarray(image)
  if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8 or 0 in array.shape:
    raise UserValueError(f"an image must be a file path, a PIL image or an (H, W, 3) uint8 RGB array; got an "
                         f"array of shape {array.shape} and dtype {array.dtype}")
  return array


def class_names(config, num_classes: int) -> tuple[str, ...]:
  """The name of each label: `config.dataset.class_names`, else "class_<i>"."""
  names = tuple(str(n) for n in (config.get("dataset", {}).get("class_names", ()) or ()))
  return names if len(names) >= num_classes else names + tuple(f"class_{i}" for i in range(len(names), num_classes))


# ----------------------------------------------------------------------------- loading

def resolve_config(config, overrides: Sequence[str] = ()):
  """A ConfigDict from a config path (`FILE.py[:variant]`, found as `--config=` finds it, the packaged
  `dinoseg/configs` included) or a ConfigDict (copied when `overrides` apply: "a.b=value" strings)."""
  from dinoseg.config import ConfigDict, apply_overrides, load_config  # noqa: PLC0415
  if isinstance(config, (str, os.PathLike)):
    return load_config(str(config), list(overrides))
  if not isinstance(config, ConfigDict):
    raise UserValueError(f"config must be a config file path (FILE.py[:variant]) or a ConfigDict, got "
                         f"{type(config).__name__}")
  return apply_overrides(config.copy_and_resolve_references(), list(overrides)) if overrides else config


def initial_variables(task, allow_random: bool = False) -> dict:
  """The task's variables without a weights file: the `config.init` entries over a random init (as a fresh
  training run starts). Every variable must come from a file unless `allow_random`."""
  import flax.linen as nn  # noqa: PLC0415
  import jax  # noqa: PLC0415

  from dinoseg.convert import init as init_lib  # noqa: PLC0415
  from dinoseg.convert.keymap import flatten_variables  # noqa: PLC0415
  abstract = task.abstract_variables()
  entries = task.init_entries(init_lib.entries(task.config.get("init")))
  arrays, reports = init_lib.load(entries, abstract, task.init_converters())
  for report in reports:
    logger.info(init_lib.describe(report))
  random = [p for p in flatten_variables(abstract) if p not in arrays]
  if random and not allow_random:
    raise UserValueError(
        f"no weights: {len(random)} of {len(flatten_variables(abstract))} variables of config.task="
        f"{task.config.get('task')!r} would stay random (e.g. {'/'.join(random[0])}); pass a weights file, set the "
        "config's init.<entry>.file, or allow_random=True (--random-init) for a smoke test")
  if random:
    logger.warning("%d variables start random (allow_random=True)", len(random))
    seed = jax.random.key(int(task.config.get("seed", 0)))
    variables = jax.device_get(nn.meta.unbox(jax.jit(task.init_variables)(seed)))
  else:
    variables = {}
  return init_lib.apply(variables, arrays)


def build_predictor(config, weights: str | os.PathLike | None = None, variables: Mapping | None = None, *,
                    allow_random: bool = False, **options):
  """The registered predictor of `config.task` (a ConfigDict) with weights from a file or directory (read by
  `Task.variables_from_weights`), given `variables`, or neither (`initial_variables`). `options` go to the
  predictor (e.g. SegNext's `compiler_options`). `dinoseg predict`, `dinoseg.load` and the demos use this."""
  from dinoseg.train import task as task_lib  # noqa: PLC0415
  import inspect  # noqa: PLC0415
  factory = PREDICTORS.get(str(config.get("task")))
  parameters = inspect.signature(factory).parameters
  if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
    unknown = sorted(set(options) - set(parameters))
    if unknown:  # e.g. `dinoseg predict --examples` with a Mask DINO config
      raise UserValueError(f"the predictor of config.task={config.get('task')!r} takes no "
                           f"{', '.join(unknown)} (it takes: {', '.join(list(parameters)[2:]) or 'no options'})")
  if variables is None:
    task = task_lib.build(config)
    variables = task.variables_from_weights(weights) if weights is not None else initial_variables(task, allow_random)
  return factory(config, variables, **options)


def load(config, weights: str | os.PathLike | None = None, *, overrides: Sequence[str] = (),
         allow_random: bool = False, **options):
  """A predictor for `config` with `weights`: `dinoseg.load(config, weights).predict(image, **prompts)`.

  Args:
    config: a config file (`FILE.py[:variant]`, looked up like `--config=`, the packaged configs included) or a
      ConfigDict.
    weights: a released checkpoint (.pth/.pkl/.safetensors, converted strictly), a Flax .msgpack, or a dinoseg
      checkpoint directory (a training workdir, `<workdir>/checkpoints/<step>`, `dinoseg convert --to` output).
      None: the config's `init` entries (e.g. Talk2DINO's projection file) give the weights.
    overrides: config overrides, "a.b=value" (as `--config.a.b=value`).
    allow_random: without weights, let variables no file gives start random (smoke tests).
    options: for the predictor (e.g. `compiler_options` of SegNext).
  Returns:
    The predictor registered for `config.task` (`PREDICTORS`).
  Raises:
    UserError: a bad config, missing or unreadable weights, weights that do not fit the model.
  """
  return build_predictor(resolve_config(config, overrides), weights, allow_random=allow_random, **options)


# ----------------------------------------------------------------------------- predictors

class Predictor:
  """The base of every predictor: the config, the class names and the `dinoseg predict` protocol.

  Subclasses implement `predict(image, **prompts) -> Segmentation`; `write` draws the segments (masks, boxes
  where there are boxes, "name score" labels) scoring >= the threshold into `<name>.png`.
  """

  def __init__(self, config, num_classes: int):
    self.config = config
    self.class_names = class_names(config, num_classes)

  def predict(self, image, **prompts) -> Segmentation:
    raise NotImplementedError

  def write(self, result: Segmentation, image: np.ndarray, out_dir: str | os.PathLike, name: str,
            score_threshold: float = 0.5) -> list[pathlib.Path]:
    keep = ~(result.scores < score_threshold)  # NaN scores (no confidence) are drawn
    r = result.select(keep)
    path = output_paths(out_dir, name)["overlay"]
    draw_instances(image, r.masks, r.boxes, r.labels, r.scores, self.class_names).save(path)
    return [path]

  def finish(self, out_dir: str | os.PathLike) -> pathlib.Path | None:
    """Writes what covers every image (e.g. predictions.json); None when there is nothing."""
    del out_dir
    return None


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


class MaskDINOPredictor(Predictor):
  """Single-image Mask DINO inference: resize (shortest edge), pad to 32, model, postprocess at the
  original size. Weights live on the device; the model compiles once per padded input shape, the (small)
  postprocessing once per padded input shape and output-size bucket (multiples of 64).

  `predict(image, score_threshold=None)` -> Segmentation: the instances (test.instance_on; boxes xyxy, the
  top `test.detections_per_image`, those >= `score_threshold` when given), else the panoptic segments, else
  the classes present; plus `panoptic` / `segments` (test.panoptic_on) and `semantic` (C, H, W) scores with
  their argmax `label_map` (test.semantic_on).
  """

  def __init__(self, config, variables: Mapping):
    import jax  # noqa: PLC0415

    from dinoseg.models.maskdino.model import build_model  # noqa: PLC0415
    super().__init__(config, int(config.model.num_classes))
    self.test = config.test
    self.model = build_model(config.model)
    self.variables = jax.device_put(dict(variables))
    self.category_ids = list(config.get("dataset", {}).get("category_ids", ()) or ()) or None
    self._forwards = {}  # padded input shape -> jitted model
    self._postprocessors = {}  # (padded shape, output bucket) -> jitted postprocessing
    self._results = []
    self._num_images = 0

  def _forward(self, padded_hw):
    """The jitted model on a (1, *padded_hw, 3) canvas -> (last logits, boxes, masks): compiled once per padded
    input shape, whatever the output size."""
    import jax  # noqa: PLC0415
    if padded_hw not in self._forwards:
      def forward(variables, images, valid_hw):
        out = self.model.apply(variables, images, valid_hw)
        return out.logits[-1], out.boxes[-1], out.masks[-1]
      self._forwards[padded_hw] = jax.jit(forward)
    return self._forwards[padded_hw]

  def _postprocess(self, padded_hw, canvas_hw):
    """The jitted postprocessing of one forward's outputs at an output-size bucket (multiples of 64)."""
    import jax  # noqa: PLC0415

    from dinoseg.models.maskdino import postprocess as pp  # noqa: PLC0415
    key = (padded_hw, canvas_hw)
    if key in self._postprocessors:
      return self._postprocessors[key]
    t, m = self.test, self.config.model
    things = tuple(t.thing_classes) or tuple(range(m.num_classes))

    def run(logits, boxes, masks, valid_hw, output_hw):
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

    self._postprocessors[key] = jax.jit(run)
    return self._postprocessors[key]

  def predict(self, image, score_threshold: float | None = None) -> Segmentation:
    """Segmentation of `image` (a path, a PIL image or (H, W, 3) uint8); see the class docstring."""
    import jax  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from dinoseg.models.maskdino import postprocess as pp  # noqa: PLC0415
    image = as_image(image)
    h, w = image.shape[:2]
    nh, nw = resize_shortest_edge(h, w, self.test.min_size, self.test.max_size)
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
    padded_hw = (_round_up(nh, 32), _round_up(nw, 32))
    canvas = pad_image(resized, padded_hw)[None]
    canvas_hw = (_round_up(h, 64), _round_up(w, 64))
    valid_hw = np.asarray([[nh, nw]], np.int32)
    outputs = self._forward(padded_hw)(self.variables, canvas, valid_hw)
    res = self._postprocess(padded_hw, canvas_hw)(*outputs, valid_hw, np.asarray([[h, w]], np.int32))
    res = jax.device_get(res)  # indexed on the host (indexing device arrays compiles a program per shape)
    extras: dict[str, Any] = {}
    if "panoptic" in res:
      extras["panoptic"] = np.asarray(res["panoptic"].segmentation[0])[:h, :w].astype(np.int32)
      extras["segments"] = tuple(pp.panoptic_segments_info(res["panoptic"], 0))
    if "semantic" in res:
      extras["semantic"] = np.asarray(res["semantic"][0])[:, :h, :w]
      extras["label_map"] = extras["semantic"].argmax(0).astype(np.int32)
    if "instances" in res:
      r = res["instances"]
      keep = np.asarray(r.valid[0])
      labels = np.asarray(r.labels[0])[keep].astype(np.int32)
      result = Segmentation(masks=np.asarray(r.masks[0])[keep][:, :h, :w].astype(bool),
                            scores=np.asarray(r.scores[0])[keep].astype(np.float32), labels=labels,
                            names=tuple(self.class_names[i] for i in labels), class_names=self.class_names,
                            boxes=np.asarray(r.boxes[0])[keep].astype(np.float32), **extras)
    elif "panoptic" in res:
      ids = [s["id"] for s in extras["segments"]]
      labels = np.asarray([s["category_id"] for s in extras["segments"]], np.int32)
      result = Segmentation(masks=np.stack([extras["panoptic"] == i for i in ids]) if ids else
                            np.zeros((0, h, w), bool), scores=np.full(len(ids), np.nan, np.float32), labels=labels,
                            names=tuple(self.class_names[i] for i in labels), class_names=self.class_names, **extras)
    else:
      fields = segments_from_label_map(extras["label_map"], self.class_names, extras["semantic"].max(0))
      result = Segmentation(**fields, **extras)
    return result if score_threshold is None else result.select(result.scores >= score_threshold)

  def write(self, result: Segmentation, image: np.ndarray, out_dir: str | os.PathLike, name: str,
            score_threshold: float = 0.5) -> list[pathlib.Path]:
    """Writes the overlay PNG(s) of the input named `name` (`output_name`; files as `output_paths`) and
    collects its COCO-format instance results (see `finish`)."""
    from dinoseg.evaluation.coco import instances_to_coco_json  # noqa: PLC0415
    from dinoseg.evaluation.panoptic import id2rgb  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415
    out = output_paths(out_dir, name)
    paths = []
    if self.test.instance_on:
      for entry in instances_to_coco_json(self._num_images, result.scores, result.labels, boxes_xyxy=result.boxes,
                                          masks=result.masks, category_ids=self.category_ids):
        entry["file_name"] = name
        self._results.append(entry)
      paths += super().write(result, image, out_dir, name, score_threshold)
    if result.panoptic is not None:
      info = list(result.segments)
      out["panoptic"].parent.mkdir(exist_ok=True)
      Image.fromarray(id2rgb(result.panoptic)).save(out["panoptic"])
      with open(out["panoptic_json"], "w") as f:  # dataset category ids, as predictions.json
        json.dump([dict(s, category_id=self.category_ids[s["category_id"]]) for s in info] if self.category_ids
                  else info, f)
      paths.append(out["panoptic_overlay"])
      draw_panoptic(image, result.panoptic, info, self.class_names).save(paths[-1])
    if result.label_map is not None:
      label_map = result.label_map
      out["semantic"].parent.mkdir(exist_ok=True)
      Image.fromarray(label_map.astype(np.uint16 if label_map.max() > 255 else np.uint8)).save(out["semantic"])
      paths.append(out["semantic_overlay"])
      draw_semantic(image, label_map, self.class_names).save(paths[-1])
    self._num_images += 1
    return paths

  def finish(self, out_dir: str | os.PathLike) -> pathlib.Path | None:
    """Writes predictions.json (COCO results with an extra "file_name") when there were instances."""
    if not self.test.instance_on:
      return None
    path = pathlib.Path(out_dir) / PREDICTIONS_FILE
    with open(path, "w") as f:
      json.dump(self._results, f)
    return path


def image_ids_from_annotations(annotations: str | os.PathLike, images: Sequence[str | os.PathLike]
                               ) -> tuple[dict[str, int], set[int]]:
  """The dataset's image id of every input image, from a COCO-format annotation JSON.

  Images are matched by file name (the base name of each `images[*].file_name` entry), so the results
  of `dinoseg predict --annotations=instances_val2017.json` score directly against that file.

  Returns:
    ({input file name: image id}, {the JSON's category ids}).
  Raises:
    UserFileNotFoundError / UserValueError: no such file, not JSON, no `images` list, a base name held by two
      entries, or an input image the JSON does not list (the first few are named).
  """
  from dinoseg.errors import UserFileNotFoundError  # noqa: PLC0415
  path = pathlib.Path(annotations)
  if not path.is_file():
    raise UserFileNotFoundError(f"--annotations {path}: no such file")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserValueError(f"--annotations {path}: not a readable JSON file ({type(e).__name__}: {e})") from None
  entries = data.get("images") if isinstance(data, dict) else None
  if not isinstance(entries, list) or not all(isinstance(e, dict) and "file_name" in e and "id" in e
                                              for e in entries):
    raise UserValueError(f"--annotations {path}: not a COCO-format file (needs an 'images' list of entries "
                         "with 'file_name' and 'id')")
  by_name: dict[str, int] = {}
  for entry in entries:
    name = pathlib.PurePosixPath(str(entry["file_name"]).replace("\\", "/")).name
    if name in by_name and by_name[name] != entry["id"]:
      raise UserValueError(f"--annotations {path}: the file name {name!r} belongs to two images "
                           f"(ids {by_name[name]} and {entry['id']})")
    by_name[name] = entry["id"]
  missing = [pathlib.Path(i).name for i in images if pathlib.Path(i).name not in by_name]
  if missing:
    raise UserValueError(f"--annotations {path}: {len(missing)} input image(s) are not in its 'images' list "
                         f"(e.g. {', '.join(missing[:3])})")
  categories = {c["id"] for c in data.get("categories", []) if isinstance(c, dict) and "id" in c}
  return {pathlib.Path(i).name: by_name[pathlib.Path(i).name] for i in images}, categories


def set_image_ids(results_path: str | os.PathLike, image_ids: Mapping[str, int],
                  categories: set[int] | None = None) -> int:
  """Rewrites a predictions.json written by `dinoseg predict` with the dataset's image ids (by each entry's
  "file_name"); returns the number of entries whose category id is not among `categories` (0 when not given)."""
  path = pathlib.Path(results_path)
  with open(path, encoding="utf-8") as f:
    entries = json.load(f)
  unknown = 0
  for entry in entries:
    entry["image_id"] = image_ids[entry["file_name"]]
    unknown += bool(categories) and entry.get("category_id") not in categories
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(entries, f)
  os.replace(tmp, path)
  return int(unknown)


def summarize(result: Segmentation, score_threshold: float = 0.5) -> str:
  """What an image's outputs show, for the console: instances drawn (and why none), segments, classes."""
  parts = []
  if result.boxes is not None:  # instances
    drawn = int((result.scores >= score_threshold).sum())
    if not len(result):
      parts.append("no instances predicted")
    elif drawn:
      parts.append(f"{drawn} of {len(result)} instances drawn (score >= {score_threshold:g})")
    else:
      parts.append(f"0 of {len(result)} instances drawn: the best score {result.scores.max():.3f} is below "
                   f"--score-threshold {score_threshold:g}")
  if result.panoptic is not None:
    parts.append(f"{len(result.segments)} panoptic segments")
  if result.label_map is not None:
    labels = np.unique(result.label_map).tolist()
    shown = [result.class_names[i] if 0 <= i < len(result.class_names) else str(i) for i in labels]
    parts.append(f"{len(shown)} classes: {', '.join(shown[:8])}{', ...' if len(shown) > 8 else ''}")
  if result.probability is not None:
    parts.append(f"object: {int(result.masks.sum())} pixels")
  return "; ".join(parts)


__all__ = ["PREDICTORS", "PREDICTIONS_FILE", "Predictor", "MaskDINOPredictor", "UnreadableImageError", "load",
           "build_predictor", "initial_variables", "resolve_config", "as_image", "class_names", "draw_instances",
           "draw_semantic", "draw_panoptic", "list_images", "read_image", "resize_shortest_edge", "color",
           "output_name", "output_paths", "check_outputs", "summarize", "image_ids_from_annotations", "set_image_ids"]
