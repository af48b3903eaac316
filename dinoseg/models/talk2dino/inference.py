"""Open-vocabulary segmentation with Talk2DINO, as the reference evaluates it.

Per image (RGB uint8, H0 x W0):

1. `resize_short_side`: keep the aspect ratio, short side 448, long side at most 2048
   (mmseg `Resize(img_scale=(2048, 448), keep_ratio=True)`: scale = min(2048 / long, 448 / short),
   size = int(side * scale + 0.5)), bilinear with half-pixel centres, rounded to uint8 (cv2).
2. `window_boxes`: mmseg `slide_inference` windows, crop 448, stride 224: per axis
   `max(L - 448 + 223, 0) // 224 + 1` windows starting at multiples of 224, the last ones
   clamped to end at the border (a window is smaller than 448 only if the side is).
3. `window_scores` (one jitted call for all windows of an image, no per-window loop):
   - windows not 448 x 448 are resized to 448 x 448 (bilinear; only happens when a side is < 448);
   - x / 255, ImageNet mean / std; DINOv2 -> patch tokens (32 x 32) and the last block's raw
     CLS -> patch logits;
   - masks = sigmoid(<normalize(patch, eps 1e-6), text>) (no temperature);
   - optional background cleaning (`background.clean_background`);
   - bilinear upsampling to the window size with align_corners=True;
   - optional PAMR (10 iterations, dilations 1, 2, 4, 8, 12, 24) guided by the window's RGB
     pixels (0..255);
   - with a background class: a constant channel `bg_thresh` is prepended.
4. `stitch_windows`: window scores summed into the resized image and divided by the
   per-pixel window count.
5. bilinear resize (align_corners=False) to H0 x W0 and argmax over classes (the reference's
   softmax before the argmax is monotonic and left out).

Steps 4-5 run in a second jitted function on padded canvases (sizes rounded up to
`CANVAS_MULTIPLE`) with dynamic window offsets and image sizes, so images of different sizes
reuse the same compilation; step 3 compiles once per (number of windows, window size).
"""
import dataclasses
import functools
import math
import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.models.talk2dino.background import LAMBDA_BG, clean_background
from dinoseg.models.talk2dino.model import ImageFeatures, Talk2Dino, normalize_images
from dinoseg.models.talk2dino.pamr import DEFAULT_DILATIONS, DEFAULT_ITERATIONS, pamr
from dinoseg.models.talk2dino.projection import normalize
from dinoseg.ops import interpolate

CANVAS_MULTIPLE = 128


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
  """Open-vocabulary inference settings (defaults: the reference's evaluation).

  Attributes:
    short_side / max_long_side: test-time resize (mmseg img_scale=(2048, 448), keep ratio).
    crop_size / stride: sliding windows.
    input_size: every window enters DINOv2 at input_size x input_size (reference `resize_dim`).
    with_background: prepend a constant background channel.
    bg_thresh: its value (0.55 ViT-B, 0.54 ViT-L).
    bg_clean: run the background-cleaning step.
    lambda_bg: its mixing weight.
    pamr / pamr_iters / pamr_dilations: PAMR refinement.
  """
  short_side: int = 448
  max_long_side: int = 2048
  crop_size: int = 448
  stride: int = 224
  input_size: int = 448
  with_background: bool = False
  bg_thresh: float = 0.55
  bg_clean: bool = False
  lambda_bg: float = LAMBDA_BG
  pamr: bool = True
  pamr_iters: int = DEFAULT_ITERATIONS
  pamr_dilations: tuple[int, ...] = DEFAULT_DILATIONS

  def __post_init__(self):
    for name in ("short_side", "max_long_side", "crop_size", "stride", "input_size"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
    if self.pamr_iters < 0:
      raise ValueError(f"pamr_iters must be >= 0, got {self.pamr_iters}")
    object.__setattr__(self, "pamr_dilations", tuple(int(d) for d in self.pamr_dilations))


# --------------------------------------------------------------------------- host-side geometry


def resized_hw(height: int, width: int, short_side: int = 448, max_long_side: int = 2048) -> tuple[int, int]:
  """mmcv `imrescale` size: scale = min(long_max / long, short_max / short); int(side * scale + 0.5)."""
  if height <= 0 or width <= 0:
    raise ValueError(f"image size must be positive, got {height}x{width}")
  scale = min(max_long_side / max(height, width), short_side / min(height, width))
  return int(height * float(scale) + 0.5), int(width * float(scale) + 0.5)


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Half-pixel bilinear source indices (i0, i1) and weight of i1, clamped at the borders."""
  scale = np.float32(n_in) / np.float32(n_out)
  src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  lam = np.clip(src - i0, 0, 1).astype(np.float32)
  return i0, np.minimum(i0 + 1, n_in - 1), lam


def resize_short_side(image: np.ndarray, short_side: int = 448, max_long_side: int = 2048) -> np.ndarray:
  """Test-time resize of an RGB uint8 image (H, W, 3) -> uint8 (h, w, 3), aspect kept.

  Bilinear with half-pixel centres and edge clamping (OpenCV INTER_LINEAR, no antialiasing),
  rounded half up to uint8. OpenCV's fixed-point arithmetic can differ by one grey level at
  some pixels.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
  h, w = resized_hw(image.shape[0], image.shape[1], short_side, max_long_side)
  if (h, w) == image.shape[:2]:
    return image.astype(np.uint8)
  x = image.astype(np.float32)
  r0, r1, rl = _bilinear_taps(image.shape[0], h)
  x = x[r0] * (1 - rl)[:, None, None] + x[r1] * rl[:, None, None]
  c0, c1, cl = _bilinear_taps(image.shape[1], w)
  x = x[:, c0] * (1 - cl)[None, :, None] + x[:, c1] * cl[None, :, None]
  return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def window_boxes(height: int, width: int, crop_size: int = 448, stride: int = 224) -> np.ndarray:
  """mmseg `slide_inference` windows, row-major.

  Returns:
    (n, 4) int64 rows (y1, y2, x1, x2).
  """
  if height <= 0 or width <= 0:
    raise ValueError(f"image size must be positive, got {height}x{width}")
  rows = max(height - crop_size + stride - 1, 0) // stride + 1
  cols = max(width - crop_size + stride - 1, 0) // stride + 1
  boxes = []
  for r in range(rows):
    for c in range(cols):
      y2, x2 = min(r * stride + crop_size, height), min(c * stride + crop_size, width)
      boxes.append((max(y2 - crop_size, 0), y2, max(x2 - crop_size, 0), x2))
  return np.asarray(boxes, np.int64)


def extract_windows(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """image (h, w, 3) -> (n, wh, ww, 3) stacked windows (all windows of an image share one size)."""
  sizes = {(y2 - y1, x2 - x1) for y1, y2, x1, x2 in boxes}
  if len(sizes) != 1:
    raise ValueError(f"windows of one image must share one size, got {sorted(sizes)}")
  return np.stack([image[y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])


def window_counts(height: int, width: int, boxes: np.ndarray) -> np.ndarray:
  """(height, width) float32 number of windows covering each pixel (`count_mat`)."""
  count = np.zeros((height, width), np.float32)
  for y1, y2, x1, x2 in boxes:
    count[y1:y2, x1:x2] += 1
  if (count == 0).any():
    raise ValueError("the windows do not cover the image")
  return count


# --------------------------------------------------------------------------- device-side steps


def patch_text_masks(patch_tokens: jax.Array, text_embeds: jax.Array) -> jax.Array:
  """sigmoid(cosine) between patches and class embeddings (DINOTextMasker.forward_seg).

  Args:
    patch_tokens: (B, h, w, D) raw patch tokens (normalized here with eps 1e-6).
    text_embeds: (N, D) L2-normalized class embeddings (used as they are).
  Returns:
    (B, N, h, w) float32 in (0, 1).
  """
  feats = normalize(patch_tokens.astype(jnp.float32), axis=-1, eps=1e-6)
  return jax.nn.sigmoid(jnp.einsum("bhwd,nd->bnhw", feats, text_embeds.astype(jnp.float32)))


def window_scores_from_features(features: ImageFeatures, windows: jax.Array, text_embeds: jax.Array,
                                settings: InferenceSettings) -> jax.Array:
  """Per-window class scores at the window resolution, from DINOv2 features.

  Args:
    features: ImageFeatures of the (resized, normalized) windows: patch tokens (B, h, w, D)
      and CLS -> patch logits (B, H, h*w).
    windows: (B, wh, ww, 3) the windows' RGB pixels (0..255), PAMR's guide image.
    text_embeds: (N, D) L2-normalized class embeddings.
    settings: InferenceSettings.
  Returns:
    (B, C, wh, ww) with C = N (+ 1 background channel first when `with_background`).
  """
  masks = patch_text_masks(features.patch_tokens, text_embeds)  # (B, N, h, w)
  if settings.bg_clean:
    masks = jax.vmap(clean_background, in_axes=(0, 0, 0, None, None))(
        masks, features.patch_tokens, features.cls_logits, text_embeds.astype(jnp.float32), settings.lambda_bg)
  wh, ww = windows.shape[1:3]
  masks = interpolate(masks, (wh, ww), mode="bilinear", align_corners=True, axes=(-2, -1))
  if settings.pamr:
    guide = windows.astype(jnp.float32)
    masks = jax.vmap(lambda g, m: pamr(g, m, settings.pamr_iters, settings.pamr_dilations))(guide, masks)
  if settings.with_background:
    bg = jnp.full((masks.shape[0], 1, wh, ww), settings.bg_thresh, jnp.float32)
    masks = jnp.concatenate([bg, masks], axis=1)
  return masks


def window_scores(model: Talk2Dino, params, windows: jax.Array, text_embeds: jax.Array,
                  settings: InferenceSettings) -> jax.Array:
  """All windows of an image through DINOv2 as one batch, then `window_scores_from_features`.

  Args:
    model: Talk2Dino.
    params: its parameters (only `params["dinov2"]` is read).
    windows: (B, wh, ww, 3) RGB windows in 0..255 (float or uint8).
    text_embeds: (N, D) normalized class embeddings.
  Returns:
    (B, C, wh, ww) float32 scores.
  """
  if windows.ndim != 4 or windows.shape[-1] != 3:
    raise ValueError(f"windows must be (B, h, w, 3), got shape {windows.shape}")
  x = windows.astype(jnp.float32)
  size = settings.input_size
  if x.shape[1:3] != (size, size):
    x = interpolate(x, (size, size), mode="bilinear", align_corners=False)
  features = model.apply({"params": params}, normalize_images(x), method=Talk2Dino.encode_image)
  return window_scores_from_features(features, windows, text_embeds, settings)


# One compilation cache for every segmenter: the model and settings are hashable static arguments.
_window_scores_jit = jax.jit(window_scores, static_argnums=0, static_argnames="settings")


def stitch_windows(scores: jax.Array, offsets: jax.Array, counts: jax.Array) -> jax.Array:
  """Sums window scores into a canvas (in window order) and divides by the window counts.

  Args:
    scores: (n, C, wh, ww) window scores.
    offsets: (n, 2) int32 (y1, x1) window positions (dynamic).
    counts: (Hc, Wc) float32 windows per pixel (1 outside the image, to stay finite).
  Returns:
    (C, Hc, Wc) averaged scores.
  """
  n, c, wh, ww = scores.shape
  canvas = jnp.zeros((c,) + counts.shape, jnp.float32)

  def add(i, canvas):
    y, x = offsets[i, 0], offsets[i, 1]
    current = jax.lax.dynamic_slice(canvas, (0, y, x), (c, wh, ww))
    return jax.lax.dynamic_update_slice(canvas, current + scores[i].astype(jnp.float32), (0, y, x))

  canvas = jax.lax.fori_loop(0, n, add, canvas)
  return canvas / counts


def _resize_axis_dynamic(x: jax.Array, axis: int, n_in: jax.Array, n_out: jax.Array, out_len: int) -> jax.Array:
  """Bilinear (align_corners=False) resize of the first `n_in` entries of `axis` to `n_out`
  entries (traced sizes), written into `out_len` slots (PyTorch's float32 index arithmetic)."""
  from dinoseg.ops.resample import crop_resize_taps  # noqa: PLC0415
  i0, i1, lam = crop_resize_taps(x.shape[axis], n_in, n_out, out_len)
  shape = [1] * x.ndim
  shape[axis] = out_len
  lam = lam.reshape(shape)
  return jnp.take(x, i0, axis=axis) * (1 - lam) + jnp.take(x, i1, axis=axis) * lam


def resize_scores(canvas: jax.Array, in_hw: jax.Array, out_hw: jax.Array, out_canvas_hw: tuple[int, int]) -> jax.Array:
  """`F.interpolate(canvas[:, :h, :w], (H0, W0), mode="bilinear", align_corners=False)` with traced sizes.

  Args:
    canvas: (C, Hc, Wc) scores whose top-left (h, w) = `in_hw` is valid.
    in_hw: (2,) int32 valid input size.
    out_hw: (2,) int32 output size (H0, W0).
    out_canvas_hw: static padded output size (>= H0, W0); entries beyond (H0, W0) are meaningless.
  Returns:
    (C, Ho_c, Wo_c).
  """
  x = _resize_axis_dynamic(canvas, 1, in_hw[0], out_hw[0], out_canvas_hw[0])
  return _resize_axis_dynamic(x, 2, in_hw[1], out_hw[1], out_canvas_hw[1])


@functools.partial(jax.jit, static_argnames=("out_canvas_hw",))
def labels_from_windows(scores: jax.Array, offsets: jax.Array, counts: jax.Array, resized_hw_: jax.Array,
                        original_hw: jax.Array, out_canvas_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
  """Stitches windows, resizes to the original size and takes the argmax.

  Args:
    scores: (n, C, wh, ww) window scores.
    offsets: (n, 2) int32 window positions.
    counts: (Hc, Wc) window counts on the padded resized canvas.
    resized_hw_: (2,) int32 resized image size (h, w) inside the canvas.
    original_hw: (2,) int32 original image size (H0, W0).
    out_canvas_hw: static padded output size (>= H0, W0).
  Returns:
    labels (Ho_c, Wo_c) int32 (valid in the top-left H0 x W0) and the winning score
    (Ho_c, Wo_c) float32.
  """
  x = resize_scores(stitch_windows(scores, offsets, counts), resized_hw_, original_hw, out_canvas_hw)
  return jnp.argmax(x, axis=0).astype(jnp.int32), jnp.max(x, axis=0)


def round_up(n: int, multiple: int = CANVAS_MULTIPLE) -> int:
  return int(math.ceil(n / multiple) * multiple)


@dataclasses.dataclass(frozen=True)
class PreparedImage:
  """Host-side geometry of one image: what `window_scores` and `labels_from_windows` need."""
  windows: np.ndarray       # (n, wh, ww, 3) uint8
  boxes: np.ndarray         # (n, 4) (y1, y2, x1, x2) in the resized image
  counts: np.ndarray        # (Hc, Wc) float32 on the padded canvas
  resized_hw: tuple[int, int]
  original_hw: tuple[int, int]


def prepare_resized(resized: np.ndarray, original_hw: tuple[int, int], settings: InferenceSettings) -> PreparedImage:
  """Windows and window counts of an already resized image (h, w, 3)."""
  h, w = resized.shape[:2]
  boxes = window_boxes(h, w, settings.crop_size, settings.stride)
  counts = np.ones((round_up(h), round_up(w)), np.float32)
  counts[:h, :w] = window_counts(h, w, boxes)
  return PreparedImage(extract_windows(resized, boxes), boxes, counts, (h, w),
                       (int(original_hw[0]), int(original_hw[1])))


def prepare_image(image: np.ndarray, settings: InferenceSettings) -> PreparedImage:
  """Resize (short side), cut windows and count them, on the host (numpy)."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
  if image.dtype != np.uint8:
    raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
  resized = resize_short_side(image, settings.short_side, settings.max_long_side)
  return prepare_resized(resized, image.shape[:2], settings)


class Talk2DinoSegmenter:
  """Open-vocabulary segmenter: class names in, label maps out.

  Usage:
    seg = Talk2DinoSegmenter(model, params, settings)
    seg.set_text_embeddings(class_embeddings(...))   # (N, D) normalized
    labels = seg(image_uint8)                        # (H0, W0) int32 in [0, C)
  """

  def __init__(self, model: Talk2Dino, params, settings: InferenceSettings):
    self.model = model
    self.params = params
    self.settings = settings
    self.text_embeds = None

  def set_text_embeddings(self, text_embeds) -> None:
    """(N, D) L2-normalized class embeddings (from `text.class_embeddings`)."""
    text_embeds = jnp.asarray(text_embeds, jnp.float32)
    if text_embeds.ndim != 2:
      raise ValueError(f"text_embeds must be (N, D), got shape {text_embeds.shape}")
    self.text_embeds = text_embeds

  @property
  def num_outputs(self) -> int:
    """Number of output classes C (background included when `with_background`)."""
    return self.text_embeds.shape[0] + int(self.settings.with_background)

  def window_scores(self, prepared: PreparedImage) -> jax.Array:
    if self.text_embeds is None:
      raise ValueError("call set_text_embeddings() before segmenting")
    return _window_scores_jit(self.model, {"dinov2": self.params["dinov2"]}, jnp.asarray(prepared.windows),
                              self.text_embeds, settings=self.settings)

  def segment(self, image: np.ndarray, return_scores: bool = False):
    """image: (H0, W0, 3) RGB uint8 -> labels (H0, W0) int32 (and the winning score if asked)."""
    return self.segment_prepared(prepare_image(image, self.settings), return_scores)

  def segment_prepared(self, prepared: PreparedImage, return_scores: bool = False):
    """Labels (H0, W0) int32 of a `prepare_image` / `prepare_resized` result."""
    scores = self.window_scores(prepared)
    out_canvas = (round_up(prepared.original_hw[0]), round_up(prepared.original_hw[1]))
    labels, best = labels_from_windows(
        scores, jnp.asarray(prepared.boxes[:, [0, 2]], jnp.int32), jnp.asarray(prepared.counts),
        jnp.asarray(prepared.resized_hw, jnp.int32), jnp.asarray(prepared.original_hw, jnp.int32), out_canvas)
    h0, w0 = prepared.original_hw
    labels = np.asarray(labels)[:h0, :w0]
    if return_scores:
      return labels, np.asarray(best)[:h0, :w0]
    return labels

  __call__ = segment


def settings_for(benchmark, backbone_size: str = "vitb", **overrides) -> InferenceSettings:
  """InferenceSettings of a `classnames.Benchmark` (background, threshold, cleaning)."""
  from dinoseg.models.talk2dino.classnames import BG_THRESH  # noqa: PLC0415
  if backbone_size not in BG_THRESH:
    raise ValueError(f"backbone_size must be one of {sorted(BG_THRESH)}, got {backbone_size!r}")
  kwargs = dict(with_background=benchmark.with_background, bg_thresh=BG_THRESH[backbone_size],
                bg_clean=benchmark.bg_clean)
  kwargs.update(overrides)
  return InferenceSettings(**kwargs)


__all__ = ["InferenceSettings", "Talk2DinoSegmenter", "PreparedImage", "prepare_image", "prepare_resized",
           "resized_hw", "resize_scores",
           "resize_short_side", "window_boxes", "extract_windows", "window_counts", "patch_text_masks",
           "window_scores", "window_scores_from_features", "stitch_windows", "labels_from_windows",
           "settings_for", "CANVAS_MULTIPLE"]
