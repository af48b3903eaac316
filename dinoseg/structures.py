"""Typed containers: fixed-shape batches (the one padding convention of dinoseg) and prediction results.

Images. Every image of a batch sits at the top-left of a fixed canvas (B, H, W, 3);
`valid_hw[b]` is the size of the image inside the canvas, `original_hw[b]` the size of
the file it came from (predictions are resized back to it). Padding pixels hold 0 after
normalization (`pad_image` places an image on a canvas on the host).

Instances. Each image has at most T instances (T fixed by the config). Instance t of
image b exists iff `valid[b, t]`; padding rows are all-zero (label 0, box 0, empty mask)
and must be ignored through `valid`, never through their values. Boxes are cxcywh
normalized by the image's `valid_hw` (DETR convention); masks live on the padded canvas
(possibly at a stride), so that they align with predictions made on the canvas.

`PaddedInstances` is a flax struct dataclass: a pytree that jits, shards and stacks like arrays.
Optional fields are None when a task does not need them.

Results. `Segmentation` is what every predictor returns for one image (`dinoseg.load(...).predict`):
host NumPy arrays at the image's own size, the same fields for every system.
"""
import dataclasses
from typing import Any, Mapping, Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np


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


@dataclasses.dataclass(frozen=True, eq=False)
class Segmentation:
  """One image's predictions at its size (H, W), N segments (instances, panoptic segments, classes present
  or the prompted object). Every system fills the first five fields; the others where it has them.

  Attributes:
    masks: (N, H, W) bool.
    scores: (N,) float32 confidence (NaN where the system gives none, e.g. panoptic-only segments).
    labels: (N,) int32 indices into `class_names`.
    names: (N,) class name of each segment (a tuple of str).
    class_names: the vocabulary: the name of every label value (config.dataset.class_names, the prompted
      class names, else "class_<i>").
    boxes: (N, 4) float32 xyxy pixels, or None for systems without boxes (SegNext, Talk2DINO).
    label_map: (H, W) int32 label per pixel (semantic segmentation: Mask DINO's semantic argmax,
      Talk2DINO's map), or None.
    semantic: (C, H, W) float32 per-class scores (Mask DINO with test.semantic_on), or None.
    panoptic: (H, W) int32 segment ids (0 = no segment) with `segments` ({"id", "category_id", "isthing"}
      per segment, the reference's segments_info), or None.
    probability: (H, W) float32 foreground probability (SegNext), or None.
  """
  masks: np.ndarray
  scores: np.ndarray
  labels: np.ndarray
  names: tuple[str, ...]
  class_names: tuple[str, ...]
  boxes: np.ndarray | None = None
  label_map: np.ndarray | None = None
  semantic: np.ndarray | None = None
  panoptic: np.ndarray | None = None
  segments: tuple[Mapping[str, Any], ...] = ()
  probability: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.labels)
    if self.masks.ndim != 3 or len(self.masks) != n or len(self.scores) != n or len(self.names) != n:
      raise ValueError(f"masks (N, H, W), scores, labels and names must have N rows: masks {self.masks.shape}, "
                       f"scores {len(self.scores)}, labels {n}, names {len(self.names)}")
    if self.boxes is not None and self.boxes.shape != (n, 4):
      raise ValueError(f"boxes must have shape ({n}, 4), got {self.boxes.shape}")

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def image_hw(self) -> tuple[int, int]:
    return tuple(self.masks.shape[1:])

  def select(self, keep: np.ndarray) -> "Segmentation":
    """The segments where `keep` ((N,) bool or indices) holds; the per-image maps unchanged."""
    keep = np.asarray(keep)
    index = np.nonzero(keep)[0] if keep.dtype == bool else keep
    return dataclasses.replace(self, masks=self.masks[index], scores=self.scores[index], labels=self.labels[index],
                               names=tuple(self.names[i] for i in index),
                               boxes=None if self.boxes is None else self.boxes[index])


def segments_from_label_map(label_map: np.ndarray, class_names: Sequence[str], scores: np.ndarray | None = None,
                            ignore: Sequence[int] = ()) -> dict[str, Any]:
  """The Segmentation fields of a semantic map: one segment per class present (ascending label), its score
  the mean of `scores` ((H, W) per-pixel confidence of the label) over the segment (NaN without scores)."""
  classes = [int(c) for c in np.unique(label_map) if int(c) not in set(ignore)]
  masks = np.stack([label_map == c for c in classes]) if classes else np.zeros((0,) + label_map.shape, bool)
  mean = [float(scores[m].mean()) if scores is not None else float("nan") for m in masks]
  return dict(masks=masks, scores=np.asarray(mean, np.float32), labels=np.asarray(classes, np.int32),
              names=tuple(class_names[c] for c in classes), class_names=tuple(class_names))


__all__ = ["PaddedInstances", "pad_instances", "pad_image", "Segmentation", "segments_from_label_map"]
