"""Box ops. Boxes are float arrays with a last axis of 4, in one of two formats.

- `cxcywh`: (center x, center y, width, height), usually normalized to [0, 1].
- `xyxy`: (x0, y0, x1, y1) corners.

All functions broadcast over leading axes. Pairwise functions take `a` (..., N, 4)
and `b` (..., M, 4) and return (..., N, M). Degenerate boxes (zero width or height)
never produce NaN or inf: a ratio whose denominator is 0 is defined as 0, and its
gradient is finite.
"""
import jax
import jax.numpy as jnp

from dinoseg.ops._checks import check_choice, check_last_dim, check_min_rank


def box_cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
  """(..., 4) cxcywh -> (..., 4) xyxy."""
  check_last_dim("boxes", boxes, 4)
  cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
  """(..., 4) xyxy -> (..., 4) cxcywh."""
  check_last_dim("boxes", boxes, 4)
  x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def box_area(boxes: jax.Array) -> jax.Array:
  """(..., 4) xyxy -> (...,) area (negative extents count as given, like torchvision)."""
  check_last_dim("boxes", boxes, 4)
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den where den != 0, else 0; the gradient is finite everywhere."""
  nonzero = den != 0
  return jnp.where(nonzero, num / jnp.where(nonzero, den, 1.0), 0.0)


def _pairwise_inter_union(a: jax.Array, b: jax.Array):
  area_a = box_area(a)[..., :, None]
  area_b = box_area(b)[..., None, :]
  lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
  rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
  wh = jnp.clip(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  return inter, area_a + area_b - inter


def _check_pair(a, b):
  check_last_dim("a", a, 4)
  check_last_dim("b", b, 4)
  check_min_rank("a", a, 2)
  check_min_rank("b", b, 2)


def box_iou(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pairwise IoU of xyxy boxes: a (..., N, 4), b (..., M, 4) -> (iou, union), each (..., N, M)."""
  _check_pair(a, b)
  inter, union = _pairwise_inter_union(a, b)
  return _safe_divide(inter, union), union


def generalized_box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """Pairwise generalized IoU (Rezatofighi et al. 2019) of xyxy boxes -> (..., N, M).

  Equals the DETR/torchvision definition for boxes with positive area. For degenerate
  boxes, where the reference divides 0 by 0, the IoU term and the enclosing-area term
  are taken as 0 instead (the reference asserts on such boxes).
  """
  _check_pair(a, b)
  inter, union = _pairwise_inter_union(a, b)
  iou = _safe_divide(inter, union)
  lt = jnp.minimum(a[..., :, None, :2], b[..., None, :, :2])
  rb = jnp.maximum(a[..., :, None, 2:], b[..., None, :, 2:])
  wh = jnp.clip(rb - lt, 0.0)
  enclosing = wh[..., 0] * wh[..., 1]
  return iou - _safe_divide(enclosing - union, enclosing)


def elementwise_generalized_box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """GIoU of matched pairs: a, b (..., 4) xyxy -> (...,). The diagonal of the pairwise one."""
  check_last_dim("a", a, 4)
  check_last_dim("b", b, 4)
  return generalized_box_iou(a[..., None, :], b[..., None, :])[..., 0, 0]


def masks_to_boxes(masks: jax.Array, mode: str = "mask2box") -> jax.Array:
  """Tight xyxy boxes around binary masks: (..., H, W) -> (..., 4) in pixels.

  mode "mask2box": torchvision `masks_to_boxes` (x1, y1 = last index inside the mask).
  mode "bitmask": detectron2 `BitMasks.get_bounding_boxes` (x1, y1 = last index + 1).
  Empty masks give (0, 0, 0, 0) in both modes.
  """
  check_choice("mode", mode, ("mask2box", "bitmask"))
  check_min_rank("masks", masks, 2)
  masks = masks.astype(bool)
  h, w = masks.shape[-2:]
  any_row = masks.any(axis=-1)  # (..., H)
  any_col = masks.any(axis=-2)  # (..., W)
  ys = jnp.arange(h, dtype=jnp.float32)
  xs = jnp.arange(w, dtype=jnp.float32)
  big = jnp.float32(max(h, w) + 1)
  x0 = jnp.min(jnp.where(any_col, xs, big), axis=-1)
  y0 = jnp.min(jnp.where(any_row, ys, big), axis=-1)
  x1 = jnp.max(jnp.where(any_col, xs, -1.0), axis=-1)
  y1 = jnp.max(jnp.where(any_row, ys, -1.0), axis=-1)
  if mode == "bitmask":
    x1, y1 = x1 + 1, y1 + 1
  boxes = jnp.stack([x0, y0, x1, y1], axis=-1)
  nonempty = any_row.any(axis=-1)[..., None]
  return jnp.where(nonempty, boxes, 0.0)


def normalize_boxes(boxes: jax.Array, image_hw) -> jax.Array:
  """Divides pixel boxes (..., 4) (xyxy or cxcywh) by (w, h, w, h).

  image_hw: (h, w) as a pair, or an array (..., 2) broadcastable against boxes[..., :2].
  """
  check_last_dim("boxes", boxes, 4)
  hw = jnp.asarray(image_hw, dtype=boxes.dtype)
  check_last_dim("image_hw", hw, 2)
  scale = jnp.concatenate([hw[..., ::-1], hw[..., ::-1]], axis=-1)
  return boxes / scale


def denormalize_boxes(boxes: jax.Array, image_hw) -> jax.Array:
  """Inverse of `normalize_boxes`: multiplies (..., 4) by (w, h, w, h)."""
  check_last_dim("boxes", boxes, 4)
  hw = jnp.asarray(image_hw, dtype=boxes.dtype)
  check_last_dim("image_hw", hw, 2)
  scale = jnp.concatenate([hw[..., ::-1], hw[..., ::-1]], axis=-1)
  return boxes * scale


def clip_boxes(boxes_xyxy: jax.Array, image_hw) -> jax.Array:
  """Clips xyxy pixel boxes (..., 4) to [0, w] x [0, h]."""
  check_last_dim("boxes_xyxy", boxes_xyxy, 4)
  hw = jnp.asarray(image_hw, dtype=boxes_xyxy.dtype)
  upper = jnp.concatenate([hw[..., ::-1], hw[..., ::-1]], axis=-1)
  return jnp.clip(boxes_xyxy, 0.0, upper)


__all__ = [
    "box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh", "box_area", "box_iou", "generalized_box_iou",
    "elementwise_generalized_box_iou", "masks_to_boxes", "normalize_boxes", "denormalize_boxes",
    "clip_boxes",
]
