"""Talk2DINO prediction for `dinoseg.load` / `dinoseg predict`: free-form class names in, a label map out.

    predictor = dinoseg.load("configs/talk2dino/vitb_mlp_infonce.py", "vitb_mlp_infonce.pth")
    result = predictor.predict("cat.jpg", class_names=["cat", "dog", "grass"], with_background=True)

The image goes through the evaluation pipeline (short side 448, 448/224 sliding windows,
PAMR); `with_background` adds the background-cleaning step and the constant background
channel (`config.predict.bg_thresh`, 0.55 for ViT-B), as the reference demo's
`--with_background`. (The reference demo instead resizes the whole image to 448 x 448 and,
through a channel flip of an RGB input, feeds BGR pixels to DINOv2; neither is reproduced.)

Outputs (`write`): a colour rendering blended over the image with a legend (`<name>.png`) and the raw
label map as a 16-bit PNG (`<name>_labels.png`).
"""
import dataclasses
import pathlib
from typing import Mapping, Sequence

import jax
import numpy as np
from PIL import Image

from dinoseg.errors import UserValueError
from dinoseg.models.talk2dino.classnames import BACKGROUND, Benchmark
from dinoseg.predict import Predictor, as_image, output_paths
from dinoseg.structures import Segmentation, segments_from_label_map

# Fixed, distinguishable colours (background black); more classes cycle with a hue shift.
_PALETTE = np.asarray([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128)],
    np.uint8)


def palette(num_classes: int, with_background: bool) -> np.ndarray:
  """(num_classes, 3) uint8 colours; class 0 is black when `with_background`."""
  reps = -(-num_classes // len(_PALETTE))
  colours = np.concatenate([np.roll(_PALETTE, 3 * r, axis=1) if r % 2 else _PALETTE for r in range(reps + 1)])
  if with_background:
    return np.concatenate([np.zeros((1, 3), np.uint8), colours[:num_classes - 1]])
  return colours[:num_classes]


def parse_classes(text: str) -> list[str]:
  """"cat,dog,traffic_sign" -> ["cat", "dog", "traffic sign"] (underscores become spaces, as in the demo)."""
  names = [c.strip().replace("_", " ") for c in str(text).split(",")]
  names = [c for c in names if c]
  if not names:
    raise UserValueError(f"--classes must list at least one class name, got {text!r}")
  if len(set(names)) != len(names):
    raise UserValueError(f"--classes has duplicates: {names}")
  return names


def render(image: np.ndarray, labels: np.ndarray, names: Sequence[str], colours: np.ndarray,
           alpha: float = 0.6):
  """The label colours blended over the image, with a legend strip on the right (a PIL image)."""
  from PIL import Image, ImageDraw  # noqa: PLC0415
  image = np.asarray(image, np.uint8)
  blend = (1 - alpha) * image.astype(np.float32) + alpha * colours[labels].astype(np.float32)
  seg = Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8))
  present = [i for i in range(len(names)) if (labels == i).any()]
  row, width = 18, 12 + 9 * max([len(names[i]) for i in present] + [4]) + 30
  canvas = Image.new("RGB", (seg.width + width, max(seg.height, row * len(present) + 8)), (255, 255, 255))
  canvas.paste(seg, (0, 0))
  draw = ImageDraw.Draw(canvas)
  for k, i in enumerate(present):
    y = 4 + k * row
    draw.rectangle([seg.width + 6, y, seg.width + 20, y + 12], fill=tuple(int(c) for c in colours[i]),
                   outline=(0, 0, 0))
    draw.text((seg.width + 26, y), names[i], fill=(0, 0, 0))
  return canvas


def check_classes(names: Sequence[str]) -> list[str]:
  """The class names as a list (at least one, no duplicates); UserValueError otherwise."""
  names = [str(n).strip() for n in ([names] if isinstance(names, str) else names)]
  if not names or not all(names):
    raise UserValueError(f"class_names must be at least one non-empty name, got {names!r}")
  if len(set(names)) != len(names):
    raise UserValueError(f"class_names has duplicates: {names}")
  return names


class Talk2DinoPredictor(Predictor):
  """Open-vocabulary prediction with Talk2DINO (see the module doc).

  Args:
    config: a Talk2DINO config; DINOv2 and CLIP text come from its `init` entries.
    variables: {"params": projection params} (the task's variables: `Task.variables_from_weights`), or a
      whole Talk2Dino tree holding "projection".
  `predict(image, class_names=None, with_background=None)` -> Segmentation; the defaults are
  `config.predict.classes` ("cat,dog") and `config.predict.with_background` (what `dinoseg predict
  --classes / --with-background` set). Weights stay on the device; text embeddings are cached per class list.
  """

  def __init__(self, config, variables: Mapping):
    from dinoseg.models.talk2dino.evaluate import load_for_inference  # noqa: PLC0415
    from dinoseg.models.talk2dino.weights import check_tree  # noqa: PLC0415
    super().__init__(config, 0)
    params = dict(variables).get("params", variables)
    projection = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32),
                                        dict(params["projection"] if "projection" in params else params))
    self.model, backbones = load_for_inference(config, None, without=("projection",))
    check_tree("projection", projection, backbones["projection"])
    self.params = jax.device_put(dict(backbones, projection=projection))
    self._text_embeddings = {}

  def text_embeddings(self, classes: Sequence[str]) -> jax.Array:
    """(N, D) normalized class embeddings of `classes` (config.predict.template_set), cached."""
    from dinoseg.models.talk2dino.templates import get_templates  # noqa: PLC0415
    from dinoseg.models.talk2dino.text import class_embeddings  # noqa: PLC0415
    key = tuple(classes)
    if key not in self._text_embeddings:
      self._text_embeddings[key] = class_embeddings(self.model, self.params, list(key),
                                                    get_templates(self.config.predict.template_set))
    return self._text_embeddings[key]

  def predict(self, image, class_names: Sequence[str] | None = None,
              with_background: bool | None = None) -> Segmentation:
    """Segmentation of `image` (a path, a PIL image or (H, W, 3) uint8) into `class_names`.

    Returns:
      Segmentation: `label_map` (H, W) int32 (0 = background when `with_background`, else class i), one
      segment per class present (background excluded), its score the mean winning score over the segment;
      `class_names` = ("background",) + the classes with a background.
    """
    from dinoseg.models.talk2dino.evaluate import inference_settings  # noqa: PLC0415
    from dinoseg.models.talk2dino.inference import Talk2DinoSegmenter  # noqa: PLC0415
    p = self.config.predict
    if class_names is None and not p.get("classes", ""):
      raise UserValueError("Talk2DINO needs class names: predict(image, class_names=[...]) (dinoseg predict: --classes)")
    classes = check_classes(class_names) if class_names is not None else parse_classes(p.classes)
    with_background = bool(p.get("with_background", False) if with_background is None else with_background)
    names = ([BACKGROUND] if with_background else []) + classes
    settings = inference_settings(self.config, Benchmark("predict", "predict", tuple(names), with_background, ""))
    settings = dataclasses.replace(settings, bg_thresh=float(p.bg_thresh))
    segmenter = Talk2DinoSegmenter(self.model, self.params, settings)
    segmenter.set_text_embeddings(self.text_embeddings(classes))
    labels, best = segmenter.segment(as_image(image), return_scores=True)
    fields = segments_from_label_map(labels, names, best, ignore=(0,) if with_background else ())
    return Segmentation(**fields, label_map=labels.astype(np.int32))

  def write(self, result: Segmentation, image: np.ndarray, out_dir, name: str, **unused) -> list[pathlib.Path]:
    """`<name>.png` (colours blended over the image, with a legend) and `<name>_labels.png` (uint16 label map)."""
    out = output_paths(out_dir, name)
    out["overlay"].parent.mkdir(parents=True, exist_ok=True)
    colours = palette(len(result.class_names), result.class_names[:1] == (BACKGROUND,))
    render(image, result.label_map, result.class_names, colours).save(out["overlay"])
    Image.fromarray(result.label_map.astype(np.uint16)).save(out["labels"])
    return [out["overlay"], out["labels"]]


__all__ = ["Talk2DinoPredictor", "parse_classes", "check_classes", "palette", "render"]
