"""Typed, fixed-shape containers for batches: the one padding convention of dinoseg.

Images. Every image of a batch sits at the top-left of a fixed canvas (B, H, W, 3);
`valid_hw[b]` is the size of the image inside the canvas, `original_hw[b]` the size of
the file it came from (predictions are resized back to it). Padding pixels hold 0 after
normalization. `pixel_mask` (B, H, W) is True on image pixels.

Instances. Each image has at most T instances (T fixed by the config). Instance t of
image b exists iff `valid[b, t]`; padding rows are all-zero (label 0, box 0, empty mask)
and must be ignored through `valid`, never through their values. Boxes are cxcywh
normalized by the image's `valid_hw` (DETR convention); masks live on the padded canvas
(possibly at a stride), so that they align with predictions made on the canvas.

Both are flax struct dataclasses: pytrees that jit, shard and stack like arrays.
Optional fields are None when a task does not need them.
"""
from typing import Any

import flax.struct
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class PaddedImages:
  """images (B, H, W, 3) float; valid_hw (B, 2) int32; original_hw (B, 2) int32;
  image_id (B,) int64 or None."""
  images: Any
  valid_hw: Any
  original_hw: Any
  image_id: Any = None

  @property
  def pixel_mask(self):
    """(B, H, W) bool, True inside each image's valid region."""
    _, h, w = self.images.shape[:3]
    rows = jnp.arange(h)[None, :, None] < self.valid_hw[:, 0, None, None]
    cols = jnp.arange(w)[None, None, :] < self.valid_hw[:, 1, None, None]
    return rows & cols


@flax.struct.dataclass
class PaddedInstances:
  """labels (B, T) int32; boxes (B, T, 4) float32 cxcywh in [0, 1]; valid (B, T) bool;
  masks (B, T, Hm, Wm) bool or uint8 or None; is_crowd (B, T) bool or None;
  track_ids (B, T) int32 or None (video)."""
  labels: Any
  boxes: Any
  valid: Any
  masks: Any = None
  is_crowd: Any = None
  track_ids: Any = None

  @property
  def num_instances(self):
    """(B,) number of valid instances per image."""
    return jnp.sum(self.valid, axis=-1)


def pad_instances(labels, boxes, masks=None, *, max_instances: int, mask_hw=None,
                  is_crowd=None, track_ids=None, on_overflow: str = "error") -> dict[str, np.ndarray]:
  """Pads the instances of ONE image to `max_instances` rows (host side, NumPy).

  Args:
    labels: (n,) ints; boxes: (n, 4) cxcywh normalized; masks: (n, h, w) or None;
    mask_hw: (Hm, Wm) canvas size for masks (masks are zero-padded at the bottom/right).
    on_overflow: "error" raises if n > max_instances; "truncate" keeps the first ones.
  Returns:
    dict with labels, boxes, valid, and masks / is_crowd / track_ids when given, each with
    a leading axis of `max_instances`, plus `num_dropped` (int).
  """
  if on_overflow not in ("error", "truncate"):
    raise ValueError(f"on_overflow must be 'error' or 'truncate', got {on_overflow!r}")
  labels = np.asarray(labels, np.int32).reshape(-1)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  n = labels.shape[0]
  if boxes.shape[0] != n:
    raise ValueError(f"boxes must have one row per label ({n}), got shape {boxes.shape}")
  if n > max_instances and on_overflow == "error":
    raise ValueError(f"{n} instances exceed max_instances={max_instances}")
  keep = min(n, max_instances)
  out = {
      "labels": np.zeros((max_instances,), np.int32),
      "boxes": np.zeros((max_instances, 4), np.float32),
      "valid": np.zeros((max_instances,), bool),
      "num_dropped": n - keep,
  }
  out["labels"][:keep] = labels[:keep]
  out["boxes"][:keep] = boxes[:keep]
  out["valid"][:keep] = True
  if masks is not None:
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[0] != n:
      raise ValueError(f"masks must have shape ({n}, h, w), got {masks.shape}")
    hm, wm = mask_hw if mask_hw is not None else masks.shape[1:]
    if masks.shape[1] > hm or masks.shape[2] > wm:
      raise ValueError(f"masks of size {masks.shape[1:]} do not fit the canvas {(hm, wm)}")
    out["masks"] = np.zeros((max_instances, hm, wm), masks.dtype if masks.dtype != bool else np.uint8)
    out["masks"][:keep, :masks.shape[1], :masks.shape[2]] = masks[:keep]
  for name, values, dtype in (("is_crowd", is_crowd, bool), ("track_ids", track_ids, np.int32)):
    if values is not None:
      values = np.asarray(values, dtype).reshape(-1)
      if values.shape[0] != n:
        raise ValueError(f"{name} must have one entry per label ({n}), got {values.shape[0]}")
      out[name] = np.zeros((max_instances,), dtype)
      out[name][:keep] = values[:keep]
  return out


def pad_image(image: np.ndarray, canvas_hw: tuple[int, int], value: float = 0.0) -> np.ndarray:
  """Places an (h, w, C) image at the top-left of an (H, W, C) canvas filled with `value`."""
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f"image must have shape (h, w, C), got {image.shape}")
  h, w = image.shape[:2]
  if h > canvas_hw[0] or w > canvas_hw[1]:
    raise ValueError(f"image of size {(h, w)} does not fit the canvas {tuple(canvas_hw)}")
  canvas = np.full((*canvas_hw, image.shape[2]), value, image.dtype)
  canvas[:h, :w] = image
  return canvas


__all__ = ["PaddedImages", "PaddedInstances", "pad_instances", "pad_image"]
