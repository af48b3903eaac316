"""A host-side interactive session around `SegNext`: embed once, predict per interaction.

`SegNextPredictor` holds the params and two jitted functions:
- `embed` (`SegNext.embed_image`), compiled once per image canvas bucket;
- `predict` (`SegNext.predict`), the only jitted function on the click path, compiled once per
  (number of prompt sets, click slots, canvas bucket).
Images are placed top-left on a canvas whose sides are rounded up to a bucket (128 * {1, 1.5}
* 2^k), so any image size reuses a handful of compiled shapes; click slots are padded to
`min_points` (then doubled), which changes nothing in the output (padding rows are ignored).
The jitted functions are shared by every predictor of the same model and compiler options
(`jitted_functions`), so a second predictor (a reloaded demo, another test) compiles nothing.
`CPU_FAST_COMPILE` trades run time for compile time on CPU (tests, quick smoke runs).

    predictor = SegNextPredictor(model, params)
    state = predictor.set_image(image_uint8)                 # (H, W, 3)
    prob = predictor.predict(state, clicks=[Click(True, (y, x), 0)])
    prob = predictor.predict(state, clicks=..., prev_prob=prob)
"""
import functools
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.models.segnext import prompts as prompt_lib
from dinoseg.models.segnext.clicker import Click, clicks_to_points
from dinoseg.models.segnext.model import SegNext
from dinoseg.ops import pixels
from dinoseg.structures import pad_image


# XLA CPU options that cut compile time about 3-5x for SegNext (LLVM optimization level 0, the
# classic loop emitters) at the cost of 2-3x slower execution; numerically the same computation
# (no fast-math). For tests and smoke runs on CPU; other backends ignore them.
CPU_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


@functools.lru_cache(maxsize=16)
def jitted_functions(model: SegNext, compiler_options: tuple = ()) -> tuple:
  """(embed, predict) jitted once per (model, options); `compiler_options` as sorted (key, value) pairs.

  embed(params, images_u8 (B, Hc, Wc, 3) uint8, image_hw (B, 2)) -> (B, g, g, D) features;
  predict(params, features, prompts, prev_mask (P, Hc, Wc), original_hw (P, 2)) -> (P, Hc, Wc) logits.
  """
  options = dict(compiler_options) or None

  def embed(params, images_u8, image_hw):
    images = pixels.to_unit_range(images_u8)  # torchvision ToTensor
    return model.apply({"params": params}, images, image_hw, method=SegNext.embed_image)

  def predict(params, features, prompts, prev_mask, original_hw):
    return model.apply({"params": params}, features, prompts, prev_mask, original_hw, method=SegNext.predict)

  return jax.jit(embed, compiler_options=options), jax.jit(predict, compiler_options=options)


def canvas_bucket(n: int, minimum: int = 128) -> int:
  """Smallest value of {128, 192, 256, 384, 512, 768, ...} (128 * {1, 1.5} * 2^k) that is >= n."""
  if n <= 0:
    raise ValueError(f"image side must be positive, got {n}")
  size = minimum
  while True:
    for candidate in (size, size * 3 // 2):
      if candidate >= n:
        return candidate
    size *= 2


@flax.struct.dataclass
class ImageState:
  """Per-image state: features (1, g, g, D) and the image size (H, W)."""
  features: jax.Array
  image_hw: tuple[int, int] = flax.struct.field(pytree_node=False)
  canvas_hw: tuple[int, int] = flax.struct.field(pytree_node=False)


class SegNextPredictor:
  """Interactive SegNext inference (see the module docstring).

  Args:
    model: a `SegNext` module.
    params: its params.
    min_points: click slots per polarity to pad to (grown by doubling when exceeded).
    num_scribbles, scribble_length: scribble slots (S) and vertices (K) of the prompts.
    compiler_options: XLA compile options of the jitted functions (e.g. `CPU_FAST_COMPILE`).
  """

  def __init__(self, model: SegNext, params: Any, *, min_points: int = 24, num_scribbles: int = 4,
               scribble_length: int = 32, compiler_options: dict | None = None):
    self.model = model
    self.params = params
    self.min_points = min_points
    self.num_scribbles = num_scribbles
    self.scribble_length = scribble_length
    self._embed, self._predict = jitted_functions(model, tuple(sorted((compiler_options or {}).items())))

  def set_image(self, image: np.ndarray) -> ImageState:
    """Embeds one (H, W, 3) uint8 RGB image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    h, w = image.shape[:2]
    canvas = (canvas_bucket(h), canvas_bucket(w))
    padded = pad_image(image, canvas)
    features = self._embed(self.params, jnp.asarray(padded)[None], jnp.asarray([[h, w]], jnp.int32))
    return ImageState(features=features, image_hw=(h, w), canvas_hw=canvas)

  def _num_points(self, needed: int) -> int:
    n = self.min_points
    while n < needed:
      n *= 2
    return n

  def build_prompts(self, click_lists: Sequence[Sequence[Click]], boxes: Sequence | None = None,
                    scribbles: Sequence[Sequence[tuple]] | None = None) -> prompt_lib.Prompts:
    """Padded `Prompts` for P prompt sets (clicks -> reference points; boxes xyxy; scribbles)."""
    counts = [max(sum(c.is_positive for c in cl), sum(not c.is_positive for c in cl)) for cl in click_lists]
    n = self._num_points(max(counts, default=0))
    points = clicks_to_points([list(cl) for cl in click_lists], n)
    rest = prompt_lib.make_prompts([[]] * len(click_lists), boxes=boxes, scribbles=scribbles, num_points=1,
                                   num_scribbles=self.num_scribbles, scribble_length=self.scribble_length)
    return rest.replace(points=jnp.asarray(points))

  def predict_batch(self, state: ImageState, prompts: prompt_lib.Prompts,
                    prev_probs: np.ndarray | None = None) -> np.ndarray:
    """Probabilities (P, H, W) float32 for P prompt sets on one image.

    Args:
      state: from `set_image`.
      prompts: P prompt sets (e.g. from `build_prompts`).
      prev_probs: (P, H, W) previous probability maps (None: zeros).
    """
    p = prompts.batch_size
    h, w = state.image_hw
    prev = np.zeros((p,) + state.canvas_hw, np.float32)
    if prev_probs is not None:
      prev_probs = np.asarray(prev_probs, np.float32)
      if prev_probs.shape != (p, h, w):
        raise ValueError(f"prev_probs must have shape {(p, h, w)}, got {prev_probs.shape}")
      prev[:, :h, :w] = prev_probs
    logits = self._predict(self.params, state.features, prompts, jnp.asarray(prev),
                           jnp.asarray(np.tile([[h, w]], (p, 1)), jnp.int32))
    return np.asarray(jax.nn.sigmoid(logits[:, :h, :w]))

  def predict(self, state: ImageState, clicks: Sequence[Click] = (), box: Sequence[float] | None = None,
              scribbles: Sequence[tuple] = (), prev_prob: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float32 probability for one prompt set (the reference `BasePredictor.predict`)."""
    prompts = self.build_prompts([clicks], boxes=[box], scribbles=[list(scribbles)])
    prev = None if prev_prob is None else np.asarray(prev_prob, np.float32)[None]
    return self.predict_batch(state, prompts, prev)[0]

  def click_fn(self, state: ImageState):
    """`predict(clicks, prev_prob) -> prob` for `dinoseg.evaluation.interactive.evaluate_sample`."""
    return functools.partial(_click_predict, self, state)


def _click_predict(predictor: SegNextPredictor, state: ImageState, clicks, prev_prob):
  return predictor.predict(state, clicks=clicks, prev_prob=prev_prob)


def sat_grid_clicks(points_per_side: int, image_hw: tuple[int, int], size: int = 1024) -> list[list[Click]]:
  """The SAT latency protocol's 16x16 grid of single positive clicks (reference `predict_sat`).

  The reference places clicks at the cell centres of the model frame, (step // 2 + step * i),
  step = size // points_per_side, bypassing the coordinate mapping; here they are given in the
  original frame (scaled by H / size, W / size and rounded), which maps back to within one
  model-frame pixel of those centres. The workload (one click per prompt set) is the same.
  """
  step = size // points_per_side
  h, w = image_hw
  centres = [step // 2 + step * i for i in range(points_per_side)]
  return [[Click(True, (min(h - 1, round(cy * h / size)), min(w - 1, round(cx * w / size))), 0)]
          for cy in centres for cx in centres]
