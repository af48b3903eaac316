"""Host-side (NumPy/PIL) transforms: geometry sampling, image/mask/label warping, fixed-shape targets,
video clip sampling, and the prompt-sampler hooks.

Every geometric augmentation is a `Geometry`: flip the input horizontally (optional), resize it to
`resized_hw`, take the window starting at `crop_yx` of at most `canvas_hw`, and place that window at
the top-left of a `canvas_hw` canvas. The same Geometry warps the image (bilinear, PIL, as
detectron2), instance masks and label maps (nearest), so boxes and masks stay consistent. Random
choices take an explicit `np.random.Generator` (grain hands each example its own, derived from the
pipeline seed and the example's position), so batches do not depend on worker count or resumption.

Samplers:
- `lsj_geometry`: Mask DINO's large-scale jitter = RandomFlip -> ResizeScale(min_scale..max_scale of
  the target size) -> FixedSizeCrop(target) (detectron2 order and random draws: one uniform for the
  scale, one for the crop offset fraction, shared by both axes).
- `resize_shortest_edge_geometry`: detectron2's test-time ResizeShortestEdge(short, max_size).
- `resize_crop_geometry`: MaskFormer's semantic training: ResizeShortestEdge(choice of short sizes,
  max_size) -> random crop (optionally with the single-category area constraint) -> flip.
- `longest_side_geometry`: resize so the longest side fits the canvas (interactive models), with an
  optional scale jitter and flip.
"""
import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from dinoseg.registry import Registry
from dinoseg.structures import pad_instances

IGNORE_LABEL = 255


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Flip -> resize to `resized_hw` -> window at `crop_yx` -> top-left of a `canvas_hw` canvas."""
  input_hw: tuple[int, int]
  resized_hw: tuple[int, int]
  canvas_hw: tuple[int, int]
  crop_yx: tuple[int, int] = (0, 0)
  flip: bool = False

  @property
  def content_hw(self) -> tuple[int, int]:
    """Size of the warped image inside the canvas."""
    return (max(0, min(self.resized_hw[0] - self.crop_yx[0], self.canvas_hw[0])),
            max(0, min(self.resized_hw[1] - self.crop_yx[1], self.canvas_hw[1])))

  def source_indices(self) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour source row / column of every content pixel (pixel-centre mapping)."""
    (h, w), (rh, rw), (ch, cw) = self.input_hw, self.resized_hw, self.content_hw
    y0, x0 = self.crop_yx
    rows = np.minimum(((np.arange(y0, y0 + ch) + 0.5) * (h / rh)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(x0, x0 + cw) + 0.5) * (w / rw)).astype(np.int64), w - 1)
    if self.flip:
      cols = w - 1 - cols
    return rows, cols


def _check_hw(name: str, hw) -> tuple[int, int]:
  hw = tuple(int(v) for v in hw)
  if len(hw) != 2 or min(hw) <= 0:
    raise ValueError(f"{name} must be two positive ints (height, width), got {hw}")
  return hw


def lsj_geometry(rng: np.random.Generator, input_hw, target_hw, min_scale: float = 0.1, max_scale: float = 2.0,
                 flip_prob: float = 0.5) -> Geometry:
  """Large-scale jitter (module docstring); the canvas is `target_hw`."""
  h, w = _check_hw("input_hw", input_hw)
  th, tw = _check_hw("target_hw", target_hw)
  if not 0 < min_scale <= max_scale:
    raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
  flip = bool(rng.random() < flip_prob)
  scale = rng.uniform(min_scale, max_scale)
  out_scale = min(th * scale / h, tw * scale / w)
  rh, rw = max(1, int(round(h * out_scale))), max(1, int(round(w * out_scale)))
  u = rng.uniform(0.0, 1.0)
  crop = (int(round(max(rh - th, 0) * u)), int(round(max(rw - tw, 0) * u)))
  return Geometry((h, w), (rh, rw), (th, tw), crop, flip)


def shortest_edge_size(input_hw, short: int, max_size: int) -> tuple[int, int]:
  """detectron2 ResizeShortestEdge output size (rounding as detectron2: int(x + 0.5))."""
  h, w = input_hw
  scale = short / min(h, w)
  nh, nw = (short, scale * w) if h < w else (scale * h, short)
  if max(nh, nw) > max_size:
    s = max_size / max(nh, nw)
    nh, nw = nh * s, nw * s
  return int(nh + 0.5), int(nw + 0.5)


def resize_shortest_edge_geometry(input_hw, short: int, max_size: int, canvas_hw) -> Geometry:
  """Test-time resize; if the result does not fit `canvas_hw` it is shrunk (aspect kept) until it does."""
  h, w = _check_hw("input_hw", input_hw)
  ch, cw = _check_hw("canvas_hw", canvas_hw)
  rh, rw = shortest_edge_size((h, w), short, max_size)
  if rh > ch or rw > cw:
    s = min(ch / rh, cw / rw)
    rh, rw = min(ch, max(1, int(rh * s + 0.5))), min(cw, max(1, int(rw * s + 0.5)))
  return Geometry((h, w), (rh, rw), (ch, cw))


def resize_crop_geometry(rng: np.random.Generator, input_hw, short_sizes: Sequence[int], max_size: int, crop_hw,
                         canvas_hw, flip_prob: float = 0.5, labels: np.ndarray | None = None,
                         single_category_max_area: float = 1.0, ignore_label: int = IGNORE_LABEL) -> Geometry:
  """Semantic-segmentation training geometry (module docstring).

  With `single_category_max_area` < 1 and `labels` (the (h, w) train-id map) given, up to 10 crops
  are drawn until no single class covers more than that fraction of the crop's labelled pixels.
  """
  h, w = _check_hw("input_hw", input_hw)
  short = int(short_sizes[int(rng.integers(len(short_sizes)))])
  rh, rw = shortest_edge_size((h, w), short, max_size)
  ch, cw = min(crop_hw[0], rh), min(crop_hw[1], rw)
  flip = bool(rng.random() < flip_prob)
  for _ in range(10):
    crop = (int(rng.integers(rh - ch + 1)), int(rng.integers(rw - cw + 1)))
    if labels is None or single_category_max_area >= 1.0:
      break
    g = Geometry((h, w), (rh, rw), (ch, cw), crop, flip)
    counts = np.bincount(warp_labels(labels, g, ignore_label).ravel(), minlength=256)[:ignore_label]
    if counts.sum() and (counts > 0).sum() > 1 and counts.max() / counts.sum() < single_category_max_area:
      break
  return Geometry((h, w), (rh, rw), _check_hw("canvas_hw", canvas_hw), crop, flip)


def longest_side_geometry(rng: np.random.Generator | None, input_hw, canvas_hw, *, min_scale: float = 1.0,
                          max_scale: float = 1.0, flip_prob: float = 0.0) -> Geometry:
  """Resize so the longest side fits the canvas, times a scale in [min_scale, max_scale]; random crop
  when the result is larger than the canvas. `rng` None: no randomness (scale 1, no flip)."""
  h, w = _check_hw("input_hw", input_hw)
  ch, cw = _check_hw("canvas_hw", canvas_hw)
  fit = min(ch / h, cw / w)
  scale, flip, u = 1.0, False, (0.0, 0.0)
  if rng is not None:
    flip = bool(rng.random() < flip_prob)
    scale = rng.uniform(min_scale, max_scale)
    u = (rng.uniform(), rng.uniform())
  rh, rw = max(1, int(round(h * fit * scale))), max(1, int(round(w * fit * scale)))
  crop = (int(round(max(rh - ch, 0) * u[0])), int(round(max(rw - cw, 0) * u[1])))
  return Geometry((h, w), (rh, rw), (ch, cw), crop, flip)


# ----------------------------------------------------------------------------- warping


def warp_image(image: np.ndarray, g: Geometry, pad_value: float = 0) -> np.ndarray:
  """(h, w, 3) uint8 -> (H, W, 3) uint8 canvas: bilinear (PIL, antialiased when shrinking, as detectron2's
  ResizeTransform); outside the warped image `pad_value`.

  Only the kept window is resampled (PIL's `box` argument), which is up to 3x faster than resizing
  the whole image and cropping when the scale is large; the two differ by float rounding of the
  window's coordinates in PIL's fixed-point weights (at most 2 grey levels, on few pixels).
  """
  image = np.asarray(image)
  if image.shape[:2] != g.input_hw:
    raise ValueError(f"image has size {image.shape[:2]}, the geometry expects {g.input_hw}")
  (h, w), (rh, rw), (ch, cw) = g.input_hw, g.resized_hw, g.content_hw
  canvas = np.full((*g.canvas_hw, image.shape[2]), pad_value, np.uint8)
  if ch == 0 or cw == 0:
    return canvas
  src = Image.fromarray(image[:, ::-1] if g.flip else image)
  y0, x0 = g.crop_yx
  if (rh, rw) == (h, w):
    out = np.asarray(src)[y0:y0 + ch, x0:x0 + cw]
  else:
    sy, sx = h / rh, w / rw
    out = np.asarray(src.resize((cw, ch), Image.BILINEAR, box=(x0 * sx, y0 * sy, (x0 + cw) * sx, (y0 + ch) * sy)))
  canvas[:ch, :cw] = out
  return canvas


def warp_masks(masks: np.ndarray, g: Geometry, stride: int = 1) -> np.ndarray:
  """(..., h, w) binary masks -> (..., H // stride, W // stride) {0, 1} on the canvas (nearest; zero outside).

  With stride > 1 a canvas cell is 1 when at least half of its stride x stride pixels are.
  """
  masks = np.asarray(masks)
  if masks.shape[-2:] != g.input_hw:
    raise ValueError(f"masks have size {masks.shape[-2:]}, the geometry expects {g.input_hw}")
  rows, cols = g.source_indices()
  ch, cw = g.content_hw
  lead = masks.shape[:-2]
  flat = masks.reshape(-1, *g.input_hw)
  out = np.zeros((flat.shape[0], *g.canvas_hw), np.uint8)
  if flat.shape[0] > 1:
    # Gathers dominate: pack 8 binary masks per byte, gather once per 8 masks, unpack.
    packed = np.zeros(((flat.shape[0] + 7) // 8, *g.input_hw), np.uint8)
    for i in range(flat.shape[0]):
      packed[i // 8] |= (flat[i] != 0).astype(np.uint8) << np.uint8(i % 8)
    gathered = packed.take(rows, axis=1).take(cols, axis=2)
    bits = (gathered[:, None] >> np.arange(8, dtype=np.uint8)[None, :, None, None]) & 1
    out[:, :ch, :cw] = bits.reshape(-1, ch, cw)[:flat.shape[0]]
  elif flat.shape[0] == 1:
    out[:, :ch, :cw] = flat.take(rows, axis=1).take(cols, axis=2) != 0
  return downsample_masks(out.reshape(*lead, *g.canvas_hw), stride)


def downsample_masks(masks: np.ndarray, stride: int, keep_nonempty: bool = False) -> np.ndarray:
  """(..., H, W) {0, 1} -> (..., H // s, W // s): 1 where >= half of the s x s block is 1.

  With `keep_nonempty`, a mask that is non-empty at full resolution but would vanish gets its fullest
  block set, so that every instance keeps at least one pixel.
  """
  if stride == 1:
    return masks
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
  h, w = masks.shape[-2] // stride * stride, masks.shape[-1] // stride * stride
  blocks = masks[..., :h, :w].reshape(*masks.shape[:-2], h // stride, stride, w // stride, stride)
  sums = blocks.sum(axis=(-3, -1), dtype=np.int32)
  out = (sums * 2 >= stride * stride).astype(np.uint8)
  if keep_nonempty and out.size:
    flat_sums = sums.reshape(-1, sums.shape[-2] * sums.shape[-1])
    flat_out = out.reshape(flat_sums.shape)
    lost = (flat_out.max(axis=1) == 0) & (flat_sums.max(axis=1) > 0)
    rows = np.flatnonzero(lost)
    flat_out[rows, flat_sums[rows].argmax(axis=1)] = 1
    out = flat_out.reshape(out.shape)
  return out


def warp_labels(labels: np.ndarray, g: Geometry, pad_value: int = IGNORE_LABEL) -> np.ndarray:
  """(h, w) label / id map -> (H, W) on the canvas (nearest); outside the image `pad_value`."""
  labels = np.asarray(labels)
  rows, cols = g.source_indices()
  ch, cw = g.content_hw
  out = np.full(g.canvas_hw, pad_value, labels.dtype)
  out[:ch, :cw] = labels[rows[:, None], cols[None, :]]
  return out


def masks_to_boxes_xyxy(masks: np.ndarray) -> np.ndarray:
  """(n, H, W) -> (n, 4) tight xyxy boxes in pixels (x1 = last column + 1; zeros for empty masks),
  as detectron2's BitMasks.get_bounding_boxes."""
  n = masks.shape[0]
  boxes = np.zeros((n, 4), np.float32)
  rows_any = masks.any(axis=2)
  cols_any = masks.any(axis=1)
  for i in range(n):
    ys, xs = np.flatnonzero(rows_any[i]), np.flatnonzero(cols_any[i])
    if ys.size:
      boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
  return boxes


def xyxy_to_cxcywh_normalized(boxes: np.ndarray, hw) -> np.ndarray:
  """(n, 4) xyxy pixels -> cxcywh normalized by hw = (H, W)."""
  h, w = float(hw[0]), float(hw[1])
  b = np.asarray(boxes, np.float32).reshape(-1, 4)
  out = np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h, (b[:, 2] - b[:, 0]) / w,
                  (b[:, 3] - b[:, 1]) / h], axis=1)
  return out.astype(np.float32)


# ----------------------------------------------------------------------------- targets


def label_lookup(category_ids: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
  """Dataset category ids (sorted order = contiguous label) -> function mapping ids to labels (-1 unknown)."""
  ids = np.asarray(sorted(int(c) for c in category_ids), np.int64)

  def lookup(values):
    values = np.asarray(values, np.int64)
    idx = np.searchsorted(ids, values)
    idx = np.minimum(idx, max(len(ids) - 1, 0))
    ok = (ids[idx] == values) if len(ids) else np.zeros(values.shape, bool)
    return np.where(ok, idx, -1).astype(np.int32)
  return lookup


def instance_targets(masks: np.ndarray, labels: np.ndarray, *, valid_hw, max_instances: int, mask_stride: int = 1,
                     is_crowd: np.ndarray | None = None, extra: Mapping[str, np.ndarray] | None = None) -> dict:
  """Fixed-shape targets from canvas masks (the padding convention of dinoseg/structures.py).

  Instances whose mask is empty on the canvas are removed; boxes are the masks' tight boxes (at full
  resolution), cxcywh normalized by `valid_hw`; beyond `max_instances` the first ones are kept
  (counted in `num_truncated`). Strided masks keep at least one pixel per instance.

  Args:
    masks: (n, H, W) uint8 canvas masks (full resolution).
    labels: (n,) contiguous class indices.
    valid_hw: (H_valid, W_valid) that boxes are normalized by.
    max_instances: T.
    mask_stride: the returned masks are (T, H // stride, W // stride).
    is_crowd: (n,) bool or None; extra: {name: (n, ...) array} padded alongside (zeros).
  Returns:
    labels (T,) int32, boxes (T, 4) float32, masks (T, Hm, Wm) uint8, valid (T,) bool,
    is_crowd (T,) bool, num_truncated () int32, and every `extra` key padded to T rows.
  """
  n = masks.shape[0]
  boxes = masks_to_boxes_xyxy(masks) if n else np.zeros((0, 4), np.float32)
  keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  is_crowd = np.zeros(n, bool) if is_crowd is None else np.asarray(is_crowd, bool)
  masks, boxes, labels, is_crowd = masks[keep], boxes[keep], np.asarray(labels)[keep], is_crowd[keep]
  small = downsample_masks(masks, mask_stride, keep_nonempty=True)
  hm, wm = masks.shape[1] // mask_stride, masks.shape[2] // mask_stride
  out = pad_instances(labels, xyxy_to_cxcywh_normalized(boxes, valid_hw), small.astype(np.uint8),
                      max_instances=max_instances, mask_hw=(hm, wm), is_crowd=is_crowd, on_overflow="truncate")
  out["num_truncated"] = np.asarray(out.pop("num_dropped"), np.int32)
  for name, values in (extra or {}).items():
    values = np.asarray(values)[keep]
    padded = np.zeros((max_instances, *values.shape[1:]), values.dtype)
    k = min(len(values), max_instances)
    padded[:k] = values[:k]
    out[name] = padded
  return out


def sem_seg_instances(sem_seg: np.ndarray, num_classes: int, *, valid_hw, max_instances: int,
                      mask_stride: int = 1, ignore_label: int = IGNORE_LABEL) -> dict:
  """One instance per class present in a (H, W) train-id map (MaskFormer's semantic targets)."""
  classes = np.unique(sem_seg)
  classes = classes[(classes != ignore_label) & (classes < num_classes)]
  masks = (sem_seg[None] == classes[:, None, None]).astype(np.uint8)
  return instance_targets(masks, classes.astype(np.int32), valid_hw=valid_hw, max_instances=max_instances,
                          mask_stride=mask_stride)


# ----------------------------------------------------------------------------- video


def sample_clip(rng: np.random.Generator | None, num_frames: int, clip_length: int, frame_range: int = 20) -> np.ndarray:
  """Sorted frame indices of a training clip (Mask2Former-video style).

  A reference frame is drawn uniformly; the other `clip_length - 1` frames are drawn (with replacement
  only when there are too few) from the frames within `frame_range` of it. `rng` None: the first
  `clip_length` frames (repeating the last one for short videos).
  """
  if num_frames <= 0 or clip_length <= 0:
    raise ValueError(f"num_frames and clip_length must be positive, got {num_frames}, {clip_length}")
  if rng is None:
    return np.minimum(np.arange(clip_length), num_frames - 1)
  ref = int(rng.integers(num_frames))
  lo, hi = max(0, ref - frame_range), min(num_frames, ref + frame_range + 1)
  pool = np.asarray([f for f in range(lo, hi) if f != ref], np.int64)
  if clip_length == 1:
    return np.asarray([ref])
  if pool.size == 0:
    others = np.full(clip_length - 1, ref)
  else:
    others = rng.choice(pool, clip_length - 1, replace=pool.size < clip_length - 1)
  return np.sort(np.concatenate([[ref], others]))


# ----------------------------------------------------------------------------- prompt samplers

PromptSampler = Callable[[dict, np.random.Generator | None], dict]
PROMPT_SAMPLERS = Registry("prompt_sampler", hint=" (config.data.prompt_sampler)")


def register_prompt_sampler(name: str):
  """Decorator registering a prompt-sampler factory `factory(**options) -> sampler(example, rng) -> dict`.

  A sampler gets the transformed example (fixed-shape targets on the canvas: `masks`, `valid`, ...,
  or `gt_mask` for the interactive task) and the example's generator (None at evaluation) and returns
  extra fixed-shape arrays to add to the example.
  """
  return PROMPT_SAMPLERS.register(name)


def build_prompt_sampler(name: str, options: Mapping[str, Any] | None = None) -> PromptSampler | None:
  """The sampler registered under `name` ("" or "none": None)."""
  if not name or name == "none":
    return None
  return PROMPT_SAMPLERS.get(name)(**dict(options or {}))


def interior_point(mask: np.ndarray) -> tuple[int, int]:
  """(y, x) of the first (raster order) maximum of the Euclidean distance to the mask's outside,
  with the image border counting as outside (the first click of the interactive protocol)."""
  from scipy import ndimage  # noqa: PLC0415
  padded = np.pad(np.asarray(mask, bool), 1)
  dist = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
  y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
  return int(y), int(x)


@register_prompt_sampler("center_click")
def _center_click():
  """One positive click at the most interior point of `gt_mask`: points (1, 3) rows (y, x, 1)."""
  def sample(example, rng):
    mask = example["gt_mask"]
    if not mask.any():
      return {"points": np.full((1, 3), -1, np.int32)}
    y, x = interior_point(mask)
    return {"points": np.asarray([[y, x, 1]], np.int32)}
  return sample


@register_prompt_sampler("random_clicks")
def _random_clicks(num_positive: int = 4, num_negative: int = 4):
  """Up to `num_positive` clicks drawn uniformly inside `gt_mask` and `num_negative` outside it (inside the
  image). points (P + N, 3) rows (y, x, 1 positive | 0 negative), (-1, -1, -1) for missing ones; at
  evaluation (rng None) the positive is the interior point and no negative is drawn."""
  def sample(example, rng):
    mask = example["gt_mask"].astype(bool)
    h, w = (int(v) for v in example["valid_hw"])
    points = np.full((num_positive + num_negative, 3), -1, np.int32)
    if rng is None:
      if mask.any():
        points[0] = (*interior_point(mask), 1)
      return {"points": points}
    inside = np.argwhere(mask[:h, :w])
    outside = np.argwhere(~mask[:h, :w])
    k = int(rng.integers(1, num_positive + 1)) if len(inside) else 0
    for i in range(k):
      points[i] = (*inside[rng.integers(len(inside))], 1)
    k = int(rng.integers(0, num_negative + 1)) if len(outside) else 0
    for i in range(k):
      points[num_positive + i] = (*outside[rng.integers(len(outside))], 0)
    return {"points": points}
  return sample


@register_prompt_sampler("instance_clicks")
def _instance_clicks(num_clicks: int = 50):
  """DINOv-style position prompts: `num_clicks` clicks, each a random pixel of a random valid instance.

  click_points (K, 2) (x, y) in [0, 1] of the canvas, click_instance (K,) int32 row into the
  instance targets (-1 and (0, 0) when the image has no instance), click_valid (K,) bool.
  Mask strides are honoured (clicks are drawn on `masks` and scaled back to the canvas).
  """
  def sample(example, rng):
    masks, valid = example["masks"], example["valid"]
    hm, wm = masks.shape[-2:]
    points = np.zeros((num_clicks, 2), np.float32)
    which = np.full((num_clicks,), -1, np.int32)
    rows = np.flatnonzero(valid)
    if rows.size:
      for k in range(num_clicks):
        t = int(rows[rng.integers(rows.size)]) if rng is not None else int(rows[k % rows.size])
        pix = np.argwhere(masks[t])
        if not len(pix):
          continue
        y, x = pix[rng.integers(len(pix))] if rng is not None else pix[len(pix) // 2]
        points[k] = ((x + 0.5) / wm, (y + 0.5) / hm)
        which[k] = t
    return {"click_points": points, "click_instance": which, "click_valid": which >= 0}
  return sample


__all__ = ["Geometry", "lsj_geometry", "shortest_edge_size", "resize_shortest_edge_geometry", "resize_crop_geometry",
           "longest_side_geometry", "warp_image", "warp_masks", "warp_labels", "downsample_masks",
           "masks_to_boxes_xyxy", "xyxy_to_cxcywh_normalized", "label_lookup", "instance_targets",
           "sem_seg_instances", "sample_clip", "PROMPT_SAMPLERS", "register_prompt_sampler", "build_prompt_sampler",
           "interior_point", "IGNORE_LABEL"]
