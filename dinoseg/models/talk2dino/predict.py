"""Talk2DINO prediction for `dinoseg predict`: free-form class names in, a colour-coded PNG out.

The image goes through the evaluation pipeline (short side 448, 448/224 sliding windows,
PAMR); `with_background` adds the background-cleaning step and the constant background
channel (`config.predict.bg_thresh`, 0.55 for ViT-B), as the reference demo's
`--with_background`. (The reference demo instead resizes the whole image to 448 x 448 and,
through a channel flip of an RGB input, feeds BGR pixels to DINOv2; neither is reproduced.)

Outputs: the label map (H, W) int32 (0 = background when `with_background`, else class i),
a colour rendering blended over the image with a legend, and the raw map as a 16-bit PNG.
"""
import dataclasses
import pathlib
from typing import Sequence

import jax
import numpy as np

from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.models.talk2dino.classnames import BACKGROUND, Benchmark

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


@dataclasses.dataclass
class Prediction:
  labels: np.ndarray          # (H, W) int32
  names: list[str]            # class name of each label value
  colours: np.ndarray         # (C, 3) uint8


class Talk2DinoPredictor:
  """Open-vocabulary prediction with a loaded Talk2DINO model (see the module doc).

  Args:
    config: a Talk2DINO config.
    weights: projection weights (file or training workdir) overriding `config.init.projection.file`.
    projection_params: already loaded projection params (then `weights` is not read).
  `predictor(image, classes, with_background)` -> Prediction. For `dinoseg predict` (the shared
  command) `predict(image)` / `write(...)` use `config.predict.classes` / `with_background`.
  """

  def __init__(self, config, weights: str | None = None, projection_params=None):
    from dinoseg.models.talk2dino.evaluate import load_for_inference  # noqa: PLC0415
    self.config = config
    if projection_params is not None:  # the backbones from config.init, the projection given here
      self.model, self.params = load_for_inference(config, None, without=("projection",))
      from dinoseg.models.talk2dino.weights import check_tree  # noqa: PLC0415
      projection_params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), dict(projection_params))
      check_tree("projection", projection_params, self.params["projection"])
      self.params = dict(self.params, projection=projection_params)
    else:
      self.model, self.params = load_for_inference(config, weights)

  def __call__(self, image: np.ndarray, classes: Sequence[str], with_background: bool = False) -> Prediction:
    from dinoseg.models.talk2dino.evaluate import inference_settings  # noqa: PLC0415
    from dinoseg.models.talk2dino.inference import Talk2DinoSegmenter  # noqa: PLC0415
    from dinoseg.models.talk2dino.templates import get_templates  # noqa: PLC0415
    from dinoseg.models.talk2dino.text import class_embeddings  # noqa: PLC0415
    classes = list(classes)
    names = ([BACKGROUND] if with_background else []) + classes
    benchmark = Benchmark("predict", "predict", tuple(names), with_background, "")
    settings = inference_settings(self.config, benchmark)
    settings = dataclasses.replace(settings, bg_thresh=float(self.config.predict.bg_thresh))
    segmenter = Talk2DinoSegmenter(self.model, self.params, settings)
    segmenter.set_text_embeddings(class_embeddings(self.model, self.params, classes,
                                                   get_templates(self.config.predict.template_set)))
    labels = segmenter(np.asarray(image))
    return Prediction(labels=labels, names=names, colours=palette(len(names), with_background))

  # --- the `dinoseg predict` predictor protocol (dinoseg/predict.py) ---

  def predict(self, image: np.ndarray) -> dict:
    """Uses config.predict.classes ("cat,dog") and config.predict.with_background."""
    classes = parse_classes(self.config.predict.get("classes", ""))
    p = self(image, classes, bool(self.config.predict.get("with_background", False)))
    return {"semantic": p.labels, "names": p.names, "colours": p.colours}

  def write(self, result: dict, image: np.ndarray, out_dir, stem: str, **unused) -> list[pathlib.Path]:
    paths = save_prediction(image, Prediction(result["semantic"], result["names"], result["colours"]),
                            pathlib.Path(out_dir) / f"{stem}.png")
    return [pathlib.Path(paths["visualization"]), pathlib.Path(paths["labels"])]


def make_predictor(config, variables) -> Talk2DinoPredictor:
  """`dinoseg predict` factory: `variables["params"]` is the projection (a `dinoseg train` checkpoint
  or a `dinoseg convert --model talk2dino_vit*_mlp_infonce --to DIR` output), or a full Talk2Dino
  tree with "projection"; the backbones come from config.init."""
  params = dict(variables.get("params", variables))
  if "projection" in params:
    params = params["projection"]
  return Talk2DinoPredictor(config, projection_params=params)


def load_variables(config, weights) -> dict:
  """`dinoseg predict --weights`: {"params": projection params} from a projection file (.pth /
  .safetensors / .npz / .msgpack) or a training workdir; the backbones come from config.init."""
  from dinoseg.models.talk2dino.convert import projection_to_flax  # noqa: PLC0415
  from dinoseg.models.talk2dino.weights import load_flax_params, read_state_dict, resolve_projection_path  # noqa: PLC0415
  path = resolve_projection_path(weights)
  if path.endswith(".msgpack"):
    return {"params": load_flax_params(path)}
  from dinoseg.models.talk2dino.task import _text_dim, build_projection  # noqa: PLC0415
  projection = build_projection(config)
  return {"params": projection_to_flax(read_state_dict(path), int(projection.embed_dim), _text_dim(config))}


def read_image(path: str | pathlib.Path) -> np.ndarray:
  """RGB uint8 (H, W, 3) from an image file (dinoseg.predict.read_image: EXIF orientation applied;
  UnreadableImageError for a corrupt file)."""
  from dinoseg import predict  # noqa: PLC0415
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserFileNotFoundError(f"input image {path} not found")
  return predict.read_image(path)


def save_prediction(image: np.ndarray, prediction: Prediction, output: str | pathlib.Path) -> dict[str, str]:
  """Writes `output` (colour PNG with legend) and `<stem>_labels.png` (uint16 raw label map)."""
  from PIL import Image  # noqa: PLC0415
  output = pathlib.Path(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  render(image, prediction.labels, prediction.names, prediction.colours).save(output)
  raw = output.with_name(output.stem + "_labels.png")
  Image.fromarray(prediction.labels.astype(np.uint16)).save(raw)
  return {"visualization": str(output), "labels": str(raw)}


__all__ = ["Talk2DinoPredictor", "Prediction", "make_predictor", "parse_classes", "palette", "render", "read_image",
           "save_prediction"]
