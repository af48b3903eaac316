"""SegNext behind `dinoseg.load`: an image and prompts (clicks, a box, scribbles) in, the object's mask out.

    predictor = dinoseg.load("configs/segnext/vitb_sax2.py", "vitb_sa2_cocolvis_epoch_90.pth")
    r = predictor.predict("cat.jpg", clicks=[(120, 80, True)])              # (x, y, positive) in pixels
    r = predictor.predict("cat.jpg", clicks=[(120, 80, True), (40, 60, False)], prev_mask=r.probability)
    r = predictor.predict(image, box=(10, 20, 200, 180), scribbles=[([(30, 40), (60, 45)], True)])

The image embedding (`SegNext.embed_image`, the expensive part) is computed once per image and kept: later
calls on the same image (equal pixels) run only the jitted prompt path (`predictor.SegNextPredictor`, which
the browser demo uses directly as `session`). Coordinates are pixels of the image as given (x right, y
down); the prompt layouts are those of `prompts.make_prompts`.
"""
import hashlib
from typing import Any, Mapping, Sequence

import numpy as np

from dinoseg.errors import UserValueError
from dinoseg.models.segnext.clicker import Click
from dinoseg.predict import Predictor, as_image
from dinoseg.structures import Segmentation


def _click(click: Any, index: int, image_hw: tuple[int, int]) -> Click:
  """A `Click` from (x, y, positive) pixels (or a `Click`, (y, x) as the clicker's), checked to be inside."""
  if isinstance(click, Click):
    y, x = click.coords
    positive = click.is_positive
  else:
    try:
      x, y, positive = click
    except (TypeError, ValueError):
      raise UserValueError(f"clicks[{index}] must be (x, y, positive), got {click!r}") from None
  h, w = image_hw
  if not (0 <= x < w and 0 <= y < h):
    raise UserValueError(f"clicks[{index}] = (x={x}, y={y}) is outside the {w} x {h} image")
  return Click(bool(positive), (int(round(y)), int(round(x))), index)


class SegNextImagePredictor(Predictor):
  """Interactive SegNext for `dinoseg.load` (module docstring); one object per `predict` call.

  Args:
    config: a SegNext config (`model`, `eval.pred_threshold`).
    variables: {"params": ...} of `Task.variables_from_weights` (placed on the device here).
    compiler_options: XLA options of the jitted functions (e.g. `predictor.CPU_FAST_COMPILE`).
    min_points: click slots per polarity to pad to (more clicks double it: one more compilation).
  """

  def __init__(self, config, variables: Mapping, *, compiler_options: dict | None = None, min_points: int = 24):
    import jax  # noqa: PLC0415

    from dinoseg.models.segnext.model import build_segnext  # noqa: PLC0415
    from dinoseg.models.segnext.predictor import SegNextPredictor  # noqa: PLC0415
    super().__init__(config, 1)
    self.class_names = ("object",)
    self.threshold = float(config.get("eval", {}).get("pred_threshold", 0.49))
    self.session = SegNextPredictor(build_segnext(config.model), jax.device_put(dict(variables)["params"]),
                                    min_points=min_points, compiler_options=compiler_options)
    self._image_key, self._image_state = None, None

  def embed(self, image: np.ndarray):
    """The image's `ImageState` (features), computed once and reused while the image stays the same."""
    key = (image.shape, hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest())
    if key != self._image_key:
      self._image_state, self._image_key = self.session.set_image(image), key
    return self._image_state

  def predict(self, image, *, clicks: Sequence = (), box: Sequence[float] | None = None,
              scribbles: Sequence = (), prev_mask: np.ndarray | None = None) -> Segmentation:
    """The object selected by the prompts.

    Args:
      image: a path, a PIL image or (H, W, 3) uint8.
      clicks: [(x, y, positive), ...] in click order (or `clicker.Click`s).
      box: (x0, y0, x1, y1) inclusive pixel corners.
      scribbles: [([(x, y), ...], positive), ...] polylines (at most `session.num_scribbles`).
      prev_mask: (H, W) previous probability (or mask) of this object, e.g. the last `result.probability`.
    Returns:
      Segmentation with one segment ("object"): masks (1, H, W) (probability > eval.pred_threshold),
      scores (1,) the mean probability inside the mask (0 when empty), and `probability` (H, W) float32.
    """
    image = as_image(image)
    h, w = image.shape[:2]
    if not clicks and box is None and not scribbles:
      raise UserValueError("SegNext needs prompts: clicks=[(x, y, positive), ...], box=(x0, y0, x1, y1) or "
                           "scribbles=[([(x, y), ...], positive), ...] (the browser demo: dinoseg demo segnext)")
    parsed = [_click(c, i, (h, w)) for i, c in enumerate(clicks)]
    if box is not None:
      box = tuple(float(v) for v in box)
      if len(box) != 4 or box[2] < box[0] or box[3] < box[1]:
        raise UserValueError(f"box must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {box}")
    if len(scribbles) > self.session.num_scribbles:
      raise UserValueError(f"at most {self.session.num_scribbles} scribbles, got {len(scribbles)}")
    try:
      strokes = [([(float(y), float(x)) for x, y in points], bool(positive)) for points, positive in scribbles]
    except (TypeError, ValueError):
      raise UserValueError("scribbles must be [([(x, y), ...], positive), ...]") from None
    if prev_mask is not None and np.shape(prev_mask) != (h, w):
      raise UserValueError(f"prev_mask must have the image's shape {(h, w)}, got {np.shape(prev_mask)}")
    prob = self.session.predict(self.embed(image), clicks=parsed, box=box, scribbles=strokes,
                                prev_prob=None if prev_mask is None else np.asarray(prev_mask, np.float32))
    mask = prob > self.threshold
    score = float(prob[mask].mean()) if mask.any() else 0.0
    return Segmentation(masks=mask[None], scores=np.asarray([score], np.float32), labels=np.zeros(1, np.int32),
                        names=self.class_names, class_names=self.class_names, probability=prob)


__all__ = ["SegNextImagePredictor"]
