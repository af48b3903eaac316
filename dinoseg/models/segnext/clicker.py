"""The RITM click simulator (reference `isegm/inference/clicker.py`), exactly.

Next click from a ground truth and the current binary prediction:
1. FN = GT and not pred, FP = not GT and pred, both restricted to non-ignored pixels (label -1).
2. Each map is padded by 1 pixel of zeros (the image border counts as boundary), its exact
   Euclidean distance transform is taken (distance to the nearest 0), the padding removed.
3. Both distance maps are multiplied by the not-yet-clicked map (clicked pixels excluded).
4. The click is positive iff max(dt_FN) > max(dt_FP) (ties give a negative click).
5. Its location is the first maximum in raster (row-major) order of the chosen map.

The reference uses `cv2.distanceTransform(DIST_L2, 0)` (float32, not bit-reproducible run to
run); this uses scipy's exact EDT in float64, whose equal squared distances are exactly equal,
so the raster-order tie rule is deterministic. Where OpenCV's float32 rounding breaks a true tie
differently, the click moves to another pixel at the same distance (see docs/segnext.md and the
click fixtures in tests/models/segnext/test_segnext_clicker.py).

Coordinates are (y, x) pixel rows/columns of the original image.
"""
import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class Click:
  """One click: `coords` (y, x) in original pixels, `is_positive`, `index` (0-based click order)."""
  is_positive: bool
  coords: tuple[int, int]
  index: int = 0


def padded_edt(mask: np.ndarray) -> np.ndarray:
  """Exact Euclidean distance to the nearest False pixel, the outside of the image counting as False.

  Args:
    mask: (H, W) bool.
  Returns:
    (H, W) float64 (0 outside `mask`).
  """
  padded = np.pad(mask.astype(bool), 1, mode="constant")
  return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def error_distance_maps(gt: np.ndarray, pred: np.ndarray, not_ignore: np.ndarray | None = None,
                        not_clicked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(dt_FN, dt_FP), each (H, W) float64, clicked pixels zeroed (steps 1-3 of the module doc)."""
  gt = gt.astype(bool)
  pred = pred.astype(bool)
  if gt.shape != pred.shape or gt.ndim != 2:
    raise ValueError(f"gt and pred must be (H, W) of one shape, got {gt.shape} and {pred.shape}")
  not_ignore = np.ones_like(gt) if not_ignore is None else not_ignore.astype(bool)
  fn = gt & ~pred & not_ignore
  fp = ~gt & pred & not_ignore
  fn_dt, fp_dt = padded_edt(fn), padded_edt(fp)
  if not_clicked is not None:
    fn_dt = fn_dt * not_clicked
    fp_dt = fp_dt * not_clicked
  return fn_dt, fp_dt


def next_click(gt: np.ndarray, pred: np.ndarray, not_ignore: np.ndarray | None = None,
               not_clicked: np.ndarray | None = None) -> tuple[int, int, bool]:
  """The RITM next click: (y, x, is_positive) (steps 1-5 of the module doc)."""
  fn_dt, fp_dt = error_distance_maps(gt, pred, not_ignore, not_clicked)
  fn_max, fp_max = fn_dt.max(), fp_dt.max()
  positive = bool(fn_max > fp_max)
  dt, best = (fn_dt, fn_max) if positive else (fp_dt, fp_max)
  flat = int(np.argmax(dt == best))  # first maximum in raster order, as np.where(...)[0]
  y, x = divmod(flat, dt.shape[1])
  return y, x, positive


class Clicker:
  """Click state for one object (reference `Clicker`): clicks so far and the not-clicked map.

  Args:
    gt_mask: (H, W) int: 1 object, 0 background, `ignore_label` ignored.
    ignore_label: ignored value (-1).
  """

  def __init__(self, gt_mask: np.ndarray, ignore_label: int = -1):
    gt_mask = np.asarray(gt_mask)
    if gt_mask.ndim != 2:
      raise ValueError(f"gt_mask must be (H, W), got shape {gt_mask.shape}")
    self.gt_mask = gt_mask == 1
    self.not_ignore_mask = gt_mask != ignore_label
    self.reset()

  def reset(self) -> None:
    self.clicks: list[Click] = []
    self.not_clicked_map = np.ones_like(self.gt_mask, dtype=bool)

  @property
  def num_positive(self) -> int:
    return sum(c.is_positive for c in self.clicks)

  def add_click(self, y: int, x: int, is_positive: bool) -> Click:
    click = Click(bool(is_positive), (int(y), int(x)), len(self.clicks))
    self.clicks.append(click)
    self.not_clicked_map[click.coords] = False
    return click

  def make_next_click(self, pred_mask: np.ndarray) -> Click:
    """Adds (and returns) the RITM click for the binary prediction `pred_mask` (H, W)."""
    y, x, positive = next_click(self.gt_mask, np.asarray(pred_mask), self.not_ignore_mask, self.not_clicked_map)
    return self.add_click(y, x, positive)

  def undo(self) -> None:
    click = self.clicks.pop()
    if not any(c.coords == click.coords for c in self.clicks):
      self.not_clicked_map[click.coords] = True

  def __len__(self) -> int:
    return len(self.clicks)


def clicks_to_points(click_lists: list[list[Click]], num_points: int | None = None) -> np.ndarray:
  """Reference `get_points_nd`: (P, 2N, 3) float32 rows (y, x, index), positives first, -1 padding.

  Args:
    click_lists: per prompt set, its clicks in order.
    num_points: N (default max(1, most clicks of one polarity), as the reference; pass a fixed
      value to keep jitted shapes static).
  """
  counts = [max(sum(c.is_positive for c in cl), sum(not c.is_positive for c in cl)) for cl in click_lists]
  n = max([1] + counts) if num_points is None else num_points
  if max(counts, default=0) > n:
    raise ValueError(f"num_points={n} is smaller than the {max(counts)} clicks of one polarity")
  points = np.full((len(click_lists), 2 * n, 3), -1, np.float32)
  for b, cl in enumerate(click_lists):
    pos = [c for c in cl if c.is_positive]
    neg = [c for c in cl if not c.is_positive]
    for row, c in enumerate(pos):
      points[b, row] = (*c.coords, c.index)
    for row, c in enumerate(neg):
      points[b, n + row] = (*c.coords, c.index)
  return points
