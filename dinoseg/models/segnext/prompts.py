"""SegNext prompts and the dense prompt maps the model embeds.

Prompts live in the original image's pixel frame; the model rasterizes them in its square
`size` x `size` input frame (1024 for the released models), where the image is stretched
(aspect ratio ignored, see docs/segnext.md).

Conventions (the reference's, kept so that its tensors can be fed unchanged):
- Clicks: `points` (P, 2N, 3) float32 rows (y, x, index). Rows [0, N) are positive clicks,
  rows [N, 2N) negative clicks; a row whose index is -1 is padding. Coordinates are pixel
  rows/columns of the original image.
- Coordinates are mapped to the model frame as the reference does in `get_prompt_feats`:
  `int(c * (size / H) + 0.5)` for y and `int(c * (size / W) + 0.5)` for x, computed in
  float32 (the reference multiplies 0-d torch tensors, which promote to float32).
- A click becomes a disk dy^2 + dx^2 <= radius^2 (radius 5: 81 pixels) in the model frame.

Beyond the released code (trained here, see docs/segnext.md):
- Boxes: `boxes` (P, 4) float32 (x0, y0, x1, y1), inclusive pixel corners; a row of -1 is
  "no box". The box channel is 1 inside the mapped rectangle.
- Scribbles: `scribbles` (P, S, K, 2) float32 polylines of K vertices (y, x), resampled to K
  equally spaced vertices by `make_prompts`, and `scribble_labels` (P, S) int32: 1 positive,
  0 negative, -1 absent. A scribble channel is a brush stroke of `scribble_radius` along the
  polyline (disks stamped at samples at most one pixel apart).

Map channel order: clicks (P, size, size, 2) = [positive, negative] (the reference's
DistMaps order; the previous mask comes first in the model's 3-channel map) and extras
(P, size, size, 3) = [box, positive scribble, negative scribble].
"""
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

_F32 = jnp.float32


@flax.struct.dataclass
class Prompts:
  """Prompt sets for P masks of one (or P) images; see the module docstring for layouts.

  Attributes:
    points: (P, 2N, 3) float32 (y, x, index); positive rows first; index -1 = padding.
    boxes: (P, 4) float32 (x0, y0, x1, y1) inclusive; -1 everywhere = no box.
    scribbles: (P, S, K, 2) float32 (y, x) polyline vertices.
    scribble_labels: (P, S) int32: 1 positive, 0 negative, -1 absent.
  """
  points: jax.Array
  boxes: jax.Array
  scribbles: jax.Array
  scribble_labels: jax.Array

  @property
  def batch_size(self) -> int:
    return self.points.shape[0]


def make_prompts(clicks: Sequence[Sequence[tuple]] = (), boxes: Sequence | None = None,
                 scribbles: Sequence[Sequence[tuple]] | None = None, *, num_points: int | None = None,
                 num_scribbles: int = 2, scribble_length: int = 16) -> Prompts:
  """Builds padded `Prompts` on the host from Python lists (one entry per prompt set).

  Args:
    clicks: per prompt set, a list of (y, x, is_positive) in original pixels, in click order.
      Click indices are assigned in order (0, 1, ...), as the reference's `Clicker` does.
    boxes: per prompt set, (x0, y0, x1, y1) or None; None for all = no boxes.
    scribbles: per prompt set, a list of (vertices [(y, x), ...], is_positive).
    num_points: N, the padded number of positive (and of negative) rows; default: the
      reference's `get_points_nd` rule, max(1, most clicks of one polarity).
    num_scribbles: S, scribble slots per prompt set.
    scribble_length: K, vertices per scribble (each scribble is resampled to K evenly spaced vertices).
  Returns:
    Prompts with P = max(len(clicks), len(boxes), len(scribbles), 1).
  """
  p = max(len(clicks), len(boxes or ()), len(scribbles or ()), 1)
  clicks = list(clicks) + [[]] * (p - len(clicks))
  counts = [max(sum(1 for c in cl if c[2]), sum(1 for c in cl if not c[2])) for cl in clicks]
  n = max([1] + counts) if num_points is None else num_points
  if max(counts, default=0) > n:
    raise ValueError(f"num_points={n} is smaller than the {max(counts)} clicks of one polarity")
  points = np.full((p, 2 * n, 3), -1, np.float32)
  for b, cl in enumerate(clicks):
    npos = nneg = 0
    for index, (y, x, positive) in enumerate(cl):
      row = npos if positive else n + nneg
      npos, nneg = (npos + 1, nneg) if positive else (npos, nneg + 1)
      points[b, row] = (y, x, index)
  box_arr = np.full((p, 4), -1, np.float32)
  for b, box in enumerate(boxes or ()):
    if box is not None:
      x0, y0, x1, y1 = (float(v) for v in box)
      if x1 < x0 or y1 < y0:
        raise ValueError(f"boxes[{b}] must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {box}")
      box_arr[b] = (x0, y0, x1, y1)
  scr = np.zeros((p, num_scribbles, scribble_length, 2), np.float32)
  labels = np.full((p, num_scribbles), -1, np.int32)
  for b, items in enumerate(scribbles or ()):
    if len(items) > num_scribbles:
      raise ValueError(f"scribbles[{b}] has {len(items)} scribbles, more than num_scribbles={num_scribbles}")
    for s, (vertices, positive) in enumerate(items):
      scr[b, s] = resample_polyline(np.asarray(vertices, np.float32).reshape(-1, 2), scribble_length)
      labels[b, s] = 1 if positive else 0
  return Prompts(points=jnp.asarray(points), boxes=jnp.asarray(box_arr), scribbles=jnp.asarray(scr),
                 scribble_labels=jnp.asarray(labels))


def resample_polyline(vertices: np.ndarray, k: int) -> np.ndarray:
  """(V, 2) polyline -> (k, 2) vertices evenly spaced along its length (end points kept), so every
  segment has the same length (a single point is repeated)."""
  if vertices.ndim != 2 or vertices.shape[1] != 2 or len(vertices) == 0:
    raise ValueError(f"a scribble needs vertices of shape (V >= 1, 2), got {vertices.shape}")
  if len(vertices) == 1:
    return np.repeat(vertices.astype(np.float32), k, 0)
  seg = np.linalg.norm(np.diff(vertices, axis=0), axis=1)
  arc = np.concatenate([[0.0], np.cumsum(seg)])
  targets = np.linspace(0.0, arc[-1], k)
  out = np.stack([np.interp(targets, arc, vertices[:, i]) for i in range(2)], 1)
  return out.astype(np.float32)


def empty_prompts(batch_size: int, num_points: int = 1, num_scribbles: int = 2,
                  scribble_length: int = 16) -> Prompts:
  """Prompts with nothing set (shape template for `init` and for jit signatures)."""
  return Prompts(points=jnp.full((batch_size, 2 * num_points, 3), -1, _F32),
                 boxes=jnp.full((batch_size, 4), -1, _F32),
                 scribbles=jnp.zeros((batch_size, num_scribbles, scribble_length, 2), _F32),
                 scribble_labels=jnp.full((batch_size, num_scribbles), -1, jnp.int32))


def to_model_frame(coords: jax.Array, original_size: jax.Array, size: int) -> jax.Array:
  """The reference's coordinate rounding `int(c * (size / original_size) + 0.5)` in float32.

  Args:
    coords: (...) float32 pixel coordinates along one axis (non-negative).
    original_size: broadcastable to `coords`, the image extent along that axis.
    size: the model frame's extent.
  Returns:
    (...) float32 integers (truncation toward zero, as Python's int()).
  """
  scale = _F32(size) / original_size.astype(_F32)
  return jnp.trunc(coords.astype(_F32) * scale + _F32(0.5))


def _scale_points(points: jax.Array, original_hw: jax.Array, size: int) -> jax.Array:
  """(P, M, 3) reference points -> (P, M, 2) (y, x) in the model frame; rows with index -1 unchanged."""
  h = original_hw[:, 0, None].astype(_F32)
  w = original_hw[:, 1, None].astype(_F32)
  valid = points[..., 2] > -1
  y = jnp.where(valid, to_model_frame(points[..., 0], h, size), points[..., 0])
  x = jnp.where(valid, to_model_frame(points[..., 1], w, size), points[..., 1])
  return jnp.stack([y, x], -1)


def disk_offsets(radius: float) -> np.ndarray:
  """(K, 2) int32 integer offsets (dy, dx) with dy^2 + dx^2 <= radius^2 (radius 5: the 81-pixel disk)."""
  r = int(np.floor(radius))
  dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
  keep = dy * dy + dx * dx <= np.float32(radius) ** 2
  return np.stack([dy[keep], dx[keep]], -1).astype(np.int32)


def stamp_disks(centres: jax.Array, valid: jax.Array, size: int, radius: float) -> jax.Array:
  """Union of integer disks around integer centres, by scattering the disk's pixels.

  Args:
    centres: (P, M, 2) float32 integer-valued (y, x) in the model frame (may lie outside it).
    valid: (P, M) bool; invalid centres stamp nothing.
    size: frame side.
    radius: disk radius.
  Returns:
    (P, size, size) float32 in {0, 1}: 1 where dy^2 + dx^2 <= radius^2 for some valid centre.
  """
  p, m = valid.shape
  offsets = jnp.asarray(disk_offsets(radius))  # (K, 2)
  c = jnp.round(centres).astype(jnp.int32)
  yy = c[..., 0, None] + offsets[:, 0]  # (P, M, K)
  xx = c[..., 1, None] + offsets[:, 1]
  inside = valid[..., None] & (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
  flat = jnp.where(inside, yy * size + xx, size * size)  # out of range -> dropped
  batch = jnp.broadcast_to(jnp.arange(p)[:, None, None], flat.shape)
  out = jnp.zeros((p, size * size), jnp.float32)
  out = out.at[batch.reshape(-1), flat.reshape(-1)].max(1.0, mode="drop")
  return out.reshape(p, size, size)


def click_maps(points: jax.Array, original_hw: jax.Array, size: int, radius: float = 5.0) -> jax.Array:
  """Binary click disks in the model frame (reference `DistMaps(use_disks=True)`).

  Equal to the reference's min-distance formulation: the rounded coordinates are integers, so
  the disk around a click is exactly its centre plus the integer offsets within `radius`; the
  pixels are scattered (O(clicks x 81)) instead of comparing every pixel with every click.
  Rows whose index is -1 are padding (the reference also skips them: their coordinates are -1).

  Args:
    points: (P, 2N, 3) reference points (see the module docstring).
    original_hw: (P, 2) the original image (H, W) of each prompt set.
    size: model frame size (1024).
    radius: disk radius in model-frame pixels (`norm_radius`).
  Returns:
    (P, size, size, 2) float32: [positive disks, negative disks].
  """
  if points.ndim != 3 or points.shape[-1] != 3 or points.shape[1] % 2:
    raise ValueError(f"points must have shape (P, 2N, 3), got {points.shape}")
  yx = _scale_points(points, original_hw, size)
  valid = (points[..., 2] > -1) & (jnp.max(yx, axis=-1) >= 0)
  n = points.shape[1] // 2
  pos = stamp_disks(yx[:, :n], valid[:, :n], size, radius)
  neg = stamp_disks(yx[:, n:], valid[:, n:], size, radius)
  return jnp.stack([pos, neg], -1)


def box_map(boxes: jax.Array, original_hw: jax.Array, size: int) -> jax.Array:
  """(P, 4) boxes (x0, y0, x1, y1) -> (P, size, size) float32, 1 inside the mapped box."""
  present = jnp.all(boxes >= 0, axis=-1)
  h = original_hw[:, 0].astype(_F32)
  w = original_hw[:, 1].astype(_F32)
  x0, x1 = (to_model_frame(boxes[:, i], w, size) for i in (0, 2))
  y0, y1 = (to_model_frame(boxes[:, i], h, size) for i in (1, 3))
  grid = jnp.arange(size, dtype=_F32)
  rows = (grid[None] >= y0[:, None]) & (grid[None] <= y1[:, None])
  cols = (grid[None] >= x0[:, None]) & (grid[None] <= x1[:, None])
  inside = rows[:, :, None] & cols[:, None, :] & present[:, None, None]
  return inside.astype(_F32)


def scribble_samples_per_segment(size: int, num_vertices: int) -> int:
  """Samples per polyline segment so that a scribble as long as 1.5 x the frame side (longer than
  its diagonal) split into equal segments is sampled at least every pixel."""
  return max(2, int(np.ceil(1.5 * size / max(num_vertices - 1, 1))) + 1)


def scribble_maps(scribbles: jax.Array, labels: jax.Array, original_hw: jax.Array, size: int,
                  radius: float = 3.0) -> jax.Array:
  """Polyline scribbles -> (P, size, size, 2) float32 [positive, negative] brush maps.

  Vertices are mapped with the click rounding; each segment is sampled at
  `scribble_samples_per_segment` evenly spaced points (ends included), rounded to pixels, and a
  disk of `radius` is stamped at every sample. `make_prompts` resamples scribbles to equal-length
  segments, so samples are at most one pixel apart and the map is the brush stroke of the polyline.
  """
  if scribbles.ndim != 4 or scribbles.shape[-1] != 2:
    raise ValueError(f"scribbles must have shape (P, S, K, 2), got {scribbles.shape}")
  p, s, k, _ = scribbles.shape
  h = original_hw[:, 0, None, None].astype(_F32)
  w = original_hw[:, 1, None, None].astype(_F32)
  vy = to_model_frame(jnp.maximum(scribbles[..., 0], 0), h, size)
  vx = to_model_frame(jnp.maximum(scribbles[..., 1], 0), w, size)
  v = jnp.stack([vy, vx], -1)  # (P, S, K, 2)
  a, b = (v[:, :, :-1], v[:, :, 1:]) if k > 1 else (v, v)
  m = scribble_samples_per_segment(size, k)
  t = jnp.linspace(0.0, 1.0, m, dtype=_F32)[:, None]  # (M, 1)
  samples = a[..., None, :] + t * (b - a)[..., None, :]  # (P, S, K-1, M, 2)
  samples = jnp.floor(samples + 0.5).reshape(p, s, -1, 2)
  maps = []
  for polarity in (1, 0):
    valid = jnp.broadcast_to((labels == polarity)[..., None], samples.shape[:3])
    maps.append(stamp_disks(samples.reshape(p, -1, 2), valid.reshape(p, -1), size, radius))
  return jnp.stack(maps, -1)


def extra_maps(prompts: Prompts, original_hw: jax.Array, size: int, scribble_radius: float = 3.0) -> jax.Array:
  """(P, size, size, 3) float32 [box, positive scribble, negative scribble]."""
  box = box_map(prompts.boxes, original_hw, size)
  scribble = scribble_maps(prompts.scribbles, prompts.scribble_labels, original_hw, size, scribble_radius)
  return jnp.concatenate([box[..., None], scribble], -1)
