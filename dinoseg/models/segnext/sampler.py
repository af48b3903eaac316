"""Training prompts sampled from ground-truth masks (host side, NumPy), one object per sample.

Clicks: the RITM `MultiPointSampler` as SegNext configures it (max_num_points 24, prob_gamma 0.8,
merge_objects_prob 0.15, max_num_merged_objects 2, positive_erode_prob 0.9 with 3 erosion
iterations, negative strategies bg / other / border = 0.1 / 0.4 / 0.5, expand_ratio 0.1):
- the target is one object, or with probability 0.15 the union of 2 objects;
- positives: per object 1 + k points, P(k) ~ 0.8^k, uniform over its (usually 3x-eroded) mask;
  with several objects the first point of each, then more from their union;
- negatives: k points, P(k) ~ 0.8^k over 0..24, each drawn uniformly from a strategy's region
  picked with the strategy probabilities (background, other objects, a border ring of width
  ceil(0.1 sqrt(area)) around the target);
- points are (y, x, 100) rows, 24 per polarity, (-1, -1, -1) padding (the reference layout).
Random streams differ from the reference (a NumPy Generator instead of Python's `random`).

Beyond the released code: with probabilities `box_prob` / `scribble_prob` a sample also gets a
box (the target's tight box, each side moved by up to `box_jitter` of its length) or scribbles
(a positive polyline walked inside the eroded target, and with probability 0.5 a negative one in
the border ring), and then keeps its initial clicks only with probability `keep_clicks_prob`,
so the model learns box-only and scribble-only inputs. OpenCV's erode/dilate with 3x3 kernels
are reproduced with scipy (erosion treats the outside as foreground, as cv2's default border).
"""
import dataclasses
import math

import numpy as np
from scipy import ndimage

from dinoseg.models.segnext.prompts import resample_polyline

_KERNEL = np.ones((3, 3), bool)


@dataclasses.dataclass(frozen=True)
class PromptSamplerConfig:
  """Sampling parameters (defaults: the reference's, plus the box / scribble extension)."""
  max_num_points: int = 24
  prob_gamma: float = 0.8
  merge_objects_prob: float = 0.15
  max_num_merged_objects: int = 2
  positive_erode_prob: float = 0.9
  positive_erode_iters: int = 3
  negative_probs: tuple[float, float, float] = (0.1, 0.4, 0.5)  # bg, other, border
  expand_ratio: float = 0.1
  box_prob: float = 0.0
  scribble_prob: float = 0.0
  keep_clicks_prob: float = 0.5
  box_jitter: float = 0.1
  num_scribbles: int = 2
  scribble_length: int = 16


def geometric_probs(n: int, gamma: float) -> np.ndarray:
  """(n,) probabilities proportional to gamma^i (reference `generate_probs`)."""
  p = gamma ** np.arange(n, dtype=np.float64)
  return p / p.sum()


def erode(mask: np.ndarray, iterations: int) -> np.ndarray:
  """cv2.erode(mask, ones(3, 3), iterations) (border = foreground)."""
  return ndimage.binary_erosion(mask, _KERNEL, iterations=iterations, border_value=1)


def dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
  """cv2.dilate(mask, ones(3, 3), iterations)."""
  if iterations <= 0:
    return mask.astype(bool)
  return ndimage.binary_dilation(mask, _KERNEL, iterations=iterations)


@dataclasses.dataclass
class SampledPrompts:
  """One training sample's target and prompts (reference layouts, see prompts.py).

  gt_mask (H, W) float32 (1 object, 0 background); points (2N, 3) float32; box (4,) float32 xyxy or
  -1; scribbles (S, K, 2) float32; scribble_labels (S,) int32.
  """
  gt_mask: np.ndarray
  points: np.ndarray
  box: np.ndarray
  scribbles: np.ndarray
  scribble_labels: np.ndarray


class PromptSampler:
  """Samples a target object and its prompts from an image's instance masks."""

  def __init__(self, config: PromptSamplerConfig = PromptSamplerConfig()):
    if not math.isclose(sum(config.negative_probs), 1.0):
      raise ValueError(f"negative_probs must sum to 1, got {config.negative_probs}")
    self.config = config
    self._pos_probs = geometric_probs(config.max_num_points, config.prob_gamma)
    self._neg_probs = geometric_probs(config.max_num_points + 1, config.prob_gamma)

  # ------------------------------------------------------------------ clicks
  def _positive_erode(self, mask, rng):
    c = self.config
    if rng.random() > c.positive_erode_prob:
      return mask
    eroded = erode(mask, c.positive_erode_iters)
    return eroded if eroded.sum() > 10 else mask

  def _border(self, mask):
    r = int(np.ceil(self.config.expand_ratio * np.sqrt(mask.sum())))
    return dilate(mask, r) & ~mask

  def _points_in(self, region, count, rng):
    idx = np.flatnonzero(region)
    if len(idx) == 0 or count == 0:
      return []
    pick = idx[rng.integers(0, len(idx), count)]
    return [(int(v // region.shape[1]), int(v % region.shape[1]), 100) for v in pick]

  def _num_positive(self, rng):
    return 1 + int(rng.choice(self.config.max_num_points, p=self._pos_probs))

  def _num_negative(self, rng):
    return int(rng.choice(self.config.max_num_points + 1, p=self._neg_probs))

  def _strategy_points(self, regions_with_probs, count, rng):
    """`count` points, each from a region picked with its probability (uniform pixel in it)."""
    width = regions_with_probs[0][0].shape[1]
    regions = [np.flatnonzero(r) for r, _ in regions_with_probs]
    probs = np.array([p for _, p in regions_with_probs], np.float64)
    points = []
    for _ in range(count):
      idx = regions[int(rng.choice(len(regions), p=probs / probs.sum()))]
      if len(idx):
        v = idx[rng.integers(0, len(idx))]
        points.append((int(v // width), int(v % width), 100))
    return points

  def _pad(self, points):
    n = self.config.max_num_points
    points = points[:n] + [(-1, -1, -1)] * (n - min(len(points), n))
    return points

  def sample_clicks(self, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list]:
    """Picks the target among `masks` (T, H, W) bool and samples its clicks.

    Returns:
      gt (H, W) bool, points (2N, 3) float32, the positive-click regions (for scribbles).
    """
    c = self.config
    t, h, w = masks.shape
    if t == 0:  # a kept background sample: no object, negatives anywhere
      gt = np.zeros((h, w), bool)
      neg = self._strategy_points([(~gt, 1.0)], self._num_negative(rng), rng)
      return gt, np.asarray(self._pad([]) + self._pad(neg), np.float32), []
    if t > 1 and rng.random() < c.merge_objects_prob:
      k = int(rng.integers(2, min(t, c.max_num_merged_objects) + 1))
      chosen = list(rng.choice(t, k, replace=False))
    else:
      chosen = [int(rng.integers(0, t))]
    gt = np.any(masks[chosen], axis=0)
    pos_regions = [self._positive_erode(masks[i], rng) for i in chosen]
    # positives
    per_object = [self._points_in(r, self._num_positive(rng), rng) for r in pos_regions]
    per_object = [p for p in per_object if p]
    if len(per_object) == 1:
      pos = per_object[0]
    elif per_object:
      pos = [p[0] for p in per_object]
      # More points from the objects (each point: an object picked uniformly, then a pixel); the
      # reference draws their number with the negative-count distribution (0..24).
      extra = self._strategy_points([(r, 1.0 / len(pos_regions)) for r in pos_regions],
                                    self._num_negative(rng), rng)
      room = c.max_num_points - len(pos)
      if len(extra) > room:
        extra = [extra[i] for i in rng.choice(len(extra), room, replace=False)]
      pos += extra
    else:
      pos = []
    # negatives
    bg = ~gt
    other = bg if t <= len(chosen) else (np.any(masks, axis=0) & ~gt)
    regions = list(zip((bg, other, self._border(gt)), c.negative_probs))
    neg = self._strategy_points(regions, self._num_negative(rng), rng)
    points = np.asarray(self._pad(pos) + self._pad(neg), np.float32)
    return gt, points, pos_regions

  # ------------------------------------------------------------ box, scribbles
  def sample_box(self, gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(4,) float32 xyxy: the tight box with each side moved by up to box_jitter of its length."""
    ys, xs = np.nonzero(gt)
    if len(ys) == 0:
      return np.full(4, -1, np.float32)
    h, w = gt.shape
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    jw, jh = self.config.box_jitter * (x1 - x0 + 1), self.config.box_jitter * (y1 - y0 + 1)
    box = np.array([x0 + rng.uniform(-jw, jw), y0 + rng.uniform(-jh, jh),
                    x1 + rng.uniform(-jw, jw), y1 + rng.uniform(-jh, jh)])
    box = np.clip(np.round(box), 0, [w - 1, h - 1, w - 1, h - 1])
    box[[0, 2]] = np.sort(box[[0, 2]])
    box[[1, 3]] = np.sort(box[[1, 3]])
    return box.astype(np.float32)

  def sample_scribble(self, region: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A polyline (K, 2) (y, x) walked inside `region` from a deep interior pixel, or None if empty."""
    k = self.config.scribble_length
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
      return None
    dt = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    inner = np.argwhere(dt >= dt.max() / 2)
    y, x = inner[rng.integers(0, len(inner))].astype(np.float64)
    step = max(2.0, 0.08 * math.sqrt(len(ys)))
    angle = rng.uniform(0, 2 * np.pi)
    vertices = [(y, x)]
    n_steps = int(rng.integers(1, k))
    for _ in range(n_steps):
      for _ in range(8):
        ny, nx = y + step * math.sin(angle), x + step * math.cos(angle)
        iy, ix = int(round(ny)), int(round(nx))
        if 0 <= iy < region.shape[0] and 0 <= ix < region.shape[1] and region[iy, ix]:
          y, x = ny, nx
          vertices.append((y, x))
          angle += rng.normal(0, 0.5)
          break
        angle = rng.uniform(0, 2 * np.pi)
      else:
        break
    return np.round(resample_polyline(np.asarray(vertices, np.float32), k))

  # -------------------------------------------------------------------- all
  def __call__(self, masks: np.ndarray, rng: np.random.Generator) -> SampledPrompts:
    """Samples a target and its prompts from (T, H, W) instance masks (T may be 0)."""
    masks = np.asarray(masks).astype(bool)
    if masks.ndim != 3:
      raise ValueError(f"masks must be (T, H, W), got shape {masks.shape}")
    c = self.config
    gt, points, pos_regions = self.sample_clicks(masks, rng)
    box = np.full(4, -1, np.float32)
    scribbles = np.zeros((c.num_scribbles, c.scribble_length, 2), np.float32)
    labels = np.full(c.num_scribbles, -1, np.int32)
    u = rng.random()
    extra = False
    if gt.any() and u < c.box_prob:
      box, extra = self.sample_box(gt, rng), True
    elif gt.any() and u < c.box_prob + c.scribble_prob:
      region = pos_regions[0] if pos_regions and pos_regions[0].any() else gt
      pos = self.sample_scribble(region, rng)
      if pos is not None:
        scribbles[0], labels[0], extra = pos, 1, True
      if c.num_scribbles > 1 and rng.random() < 0.5:
        neg = self.sample_scribble(self._border(gt), rng)
        if neg is not None:
          scribbles[1], labels[1] = neg, 0
    if extra and rng.random() >= c.keep_clicks_prob:
      points = np.full_like(points, -1)
    return SampledPrompts(gt_mask=gt.astype(np.float32), points=points, box=box, scribbles=scribbles,
                          scribble_labels=labels)
