"""Masks: COCO RLE <-> dense, polygons -> masks (host side, NumPy + pycocotools), and
resizing / paste-back of mask logits (device side, jit-friendly).

Host-side RLEs are dicts {"size": [h, w], "counts": str} (compressed, as in COCO JSON).
Uncompressed RLEs ({"counts": [ints]}) are accepted on input.
"""
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from pycocotools import mask as coco_mask

from dinoseg.ops._checks import check_min_rank
from dinoseg.ops.resample import interpolate, resize_valid_region

Rle = dict[str, Any]


def _as_compressed(rle: Rle) -> Rle:
  if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
    raise ValueError(f"rle must be a dict with 'size' and 'counts', got {type(rle).__name__}")
  size = rle["size"]
  if len(size) != 2 or any(int(s) < 0 for s in size):
    raise ValueError(f"rle 'size' must be [height, width], got {size}")
  h, w = int(size[0]), int(size[1])
  counts = rle["counts"]
  if isinstance(counts, list):
    if any(int(c) < 0 for c in counts) or sum(int(c) for c in counts) != h * w:
      raise ValueError(f"uncompressed rle counts must be non-negative and sum to {h * w}")
    return coco_mask.frPyObjects(rle, h, w)
  if isinstance(counts, str):
    counts = counts.encode("ascii")
  if not isinstance(counts, bytes):
    raise ValueError(f"rle 'counts' must be str, bytes or a list, got {type(counts).__name__}")
  return {"size": [h, w], "counts": counts}


def rle_encode(mask: np.ndarray) -> Rle:
  """(H, W) binary mask -> compressed RLE with str counts (JSON-ready)."""
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"mask must have rank 2, got shape {mask.shape}")
  rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: Rle) -> np.ndarray:
  """RLE (compressed or uncompressed) -> (H, W) uint8 mask.

  Raises ValueError for malformed RLEs (wrong size, counts that do not cover the image).
  """
  comp = _as_compressed(rle)
  h, w = comp["size"]
  try:
    mask = coco_mask.decode(comp)
  except Exception as e:  # pycocotools raises assorted errors on garbage
    raise ValueError(f"rle could not be decoded: {e}") from e
  # pycocotools silently truncates or zero-fills a compressed string that does not
  # describe exactly h * w pixels; re-encoding exposes that.
  if mask.shape != (h, w) or coco_mask.encode(np.asfortranarray(mask))["counts"] != comp["counts"]:
    raise ValueError("rle counts do not describe exactly size[0] * size[1] pixels")
  return mask


def rle_area(rle: Rle) -> int:
  return int(coco_mask.area(_as_compressed(rle)))


def rle_to_xywh(rle: Rle) -> np.ndarray:
  """Tight box (x, y, w, h) in pixels, as COCO stores boxes."""
  return np.asarray(coco_mask.toBbox(_as_compressed(rle)), np.float64)


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
  """COCO polygons [[x0, y0, x1, y1, ...], ...] -> (H, W) uint8 mask (their union).

  Raises ValueError for a polygon with fewer than 3 points, an odd coordinate count or
  non-finite coordinates.
  """
  if height <= 0 or width <= 0:
    raise ValueError(f"height and width must be positive, got {height}x{width}")
  polys = []
  for i, poly in enumerate(polygons):
    p = np.asarray(poly, np.float64).ravel()
    if p.size < 6 or p.size % 2:
      raise ValueError(f"polygons[{i}] needs an even number (>= 6) of coordinates, got {p.size}")
    if not np.all(np.isfinite(p)):
      raise ValueError(f"polygons[{i}] has non-finite coordinates")
    polys.append(p.tolist())
  if not polys:
    return np.zeros((height, width), np.uint8)
  rles = coco_mask.frPyObjects(polys, height, width)
  return coco_mask.decode(coco_mask.merge(rles))


def annotation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
  """A COCO `segmentation` field (polygons, RLE or uncompressed RLE) -> (H, W) uint8."""
  if isinstance(segmentation, list):
    return polygons_to_mask(segmentation, height, width)
  if isinstance(segmentation, dict):
    mask = rle_decode(segmentation)
    if mask.shape != (height, width):
      raise ValueError(f"rle size {mask.shape} does not match the image size {(height, width)}")
    return mask
  raise ValueError(f"segmentation must be a polygon list or an RLE dict, got {type(segmentation).__name__}")


def resize_masks(masks: jax.Array, size: tuple[int, int], *, mode: str = "bilinear") -> jax.Array:
  """Resizes (..., H, W) masks or mask logits to (..., H', W') (PyTorch `interpolate`)."""
  check_min_rank("masks", masks, 2)
  return interpolate(masks, size, mode=mode, axes=(-2, -1))


def paste_masks(mask_logits: jax.Array, padded_hw: tuple[int, int], valid_hw: jax.Array,
                output_hw: tuple[int, int]) -> jax.Array:
  """Maps low-resolution mask logits back onto the original image.

  As detectron2's `sem_seg_postprocess`: upsample (bilinear) to the padded input size,
  crop the valid (unpadded) region, resize (bilinear) to the output size.

  Args:
    mask_logits: (..., h, w) logits predicted on the padded canvas.
    padded_hw: static padded input size (Hp, Wp).
    valid_hw: (2,) valid image size inside the canvas; may be traced.
    output_hw: static output size, normally the original image size.
  Returns:
    (..., H, W) logits.
  """
  check_min_rank("mask_logits", mask_logits, 2)
  up = interpolate(mask_logits, padded_hw, mode="bilinear", axes=(-2, -1))
  return resize_valid_region(up, valid_hw, output_hw, axes=(-2, -1))


__all__ = ["rle_encode", "rle_decode", "rle_area", "rle_to_xywh", "polygons_to_mask",
           "annotation_to_mask", "resize_masks", "paste_masks"]
