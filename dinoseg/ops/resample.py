"""Resampling that reproduces PyTorch exactly: `interpolate`, `grid_sample`, `point_sample`.

Layout: images and feature maps are channels-last, (N, H, W, C), as everywhere in
dinoseg. `interpolate` resizes any two axes (`axes`, default the H and W of NHWC), so
(B, Q, H, W) mask logits are resized with `axes=(-2, -1)`.

`interpolate` is separable: for each resized axis a small static table of source
indices and weights (at most a few taps per output pixel) is computed in NumPy with
PyTorch's float32 index arithmetic, then applied with gathers. This keeps the cost
O(output x taps) (large upsamplings of mask logits stay cheap) and makes the op
linear in `x`, so its gradient is exact.

Modes (PyTorch `F.interpolate` names): "nearest", "nearest-exact", "bilinear",
"bicubic"; `antialias=True` for "bilinear"/"bicubic" reproduces PyTorch's
antialiased kernels (bilinear triangle filter; bicubic with a = -0.5).
"""
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.ops._checks import check_choice, check_last_dim, check_rank

INTERPOLATE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic")
GRID_SAMPLE_PADDING = ("zeros", "border")
_F32 = np.float32


def _scale(in_size: int, out_size: int, align_corners: bool, scale_factor: float | None) -> np.float32:
  """PyTorch `area_pixel_compute_scale` (float32)."""
  if align_corners:
    return _F32(in_size - 1) / _F32(out_size - 1) if out_size > 1 else _F32(0)
  if scale_factor is not None and scale_factor > 0:
    return _F32(1.0 / scale_factor)
  return _F32(in_size) / _F32(out_size)


def _source_index(scale, out_size: int, align_corners: bool, cubic: bool) -> np.ndarray:
  """PyTorch `area_pixel_compute_source_index` for every output index (float32)."""
  dst = np.arange(out_size, dtype=_F32)
  if align_corners:
    return scale * dst
  src = scale * (dst + _F32(0.5)) - _F32(0.5)
  return src if cubic else np.maximum(src, _F32(0))


def _guard(src: np.ndarray, in_size: int):
  """PyTorch `guard_index_and_lambda`: integer index and fractional weight."""
  idx = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  lam = np.clip(src - idx.astype(_F32), _F32(0), _F32(1)).astype(_F32)
  return idx, lam


def _cubic_conv1(x, a):
  return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic_conv2(x, a):
  return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


def _aa_filter(x: np.ndarray, mode: str) -> np.ndarray:
  x = np.abs(x)
  if mode == "bilinear":
    return np.where(x < 1, 1 - x, 0).astype(_F32)
  a = _F32(-0.5)
  return np.where(x < 1, _cubic_conv1(x, a), np.where(x < 2, _cubic_conv2(x, a), 0)).astype(_F32)


@functools.lru_cache(maxsize=512)
def _taps(in_size: int, out_size: int, mode: str, align_corners: bool,
          scale_factor: float | None, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
  """Returns (indices (out, K) int32, weights (out, K) float32) for one axis."""
  scale = _scale(in_size, out_size, align_corners, scale_factor)
  if mode in ("nearest", "nearest-exact"):
    if mode == "nearest" and out_size == in_size:
      idx = np.arange(out_size)
    elif mode == "nearest" and out_size == 2 * in_size:
      idx = np.arange(out_size) >> 1
    else:
      s = _F32(1.0 / scale_factor) if scale_factor else _F32(in_size) / _F32(out_size)
      offset = _F32(0.5) if mode == "nearest-exact" else _F32(0)
      idx = np.floor((np.arange(out_size, dtype=_F32) + offset) * s).astype(np.int64)
      idx = np.minimum(idx, in_size - 1)
    return idx[:, None].astype(np.int32), np.ones((out_size, 1), _F32)

  if antialias:
    interp = 2 if mode == "bilinear" else 4
    support = _F32(interp * 0.5) * scale if scale >= 1 else _F32(interp * 0.5)
    invscale = _F32(1) / scale if scale >= 1 else _F32(1)
    centers = scale * (np.arange(out_size, dtype=_F32) + _F32(0.5))
    xmin = np.maximum((centers - support + _F32(0.5)).astype(np.int64), 0)
    xmax = np.minimum((centers + support + _F32(0.5)).astype(np.int64), in_size)
    k = int(max(1, (xmax - xmin).max()))
    j = np.arange(k)
    idx = xmin[:, None] + j[None, :]
    valid = j[None, :] < (xmax - xmin)[:, None]
    w = _aa_filter(((idx - centers[:, None] + _F32(0.5)) * invscale).astype(_F32), mode)
    w = np.where(valid, w, _F32(0))
    total = w.sum(axis=1, keepdims=True, dtype=_F32)
    w = np.where(total != 0, w / np.where(total != 0, total, 1), 0).astype(_F32)
    return np.minimum(idx, in_size - 1).astype(np.int32), w

  if mode == "bilinear":
    if out_size == in_size:
      idx0 = np.arange(out_size)
      lam = np.zeros(out_size, _F32)
    else:
      idx0, lam = _guard(_source_index(scale, out_size, align_corners, cubic=False), in_size)
    idx1 = np.minimum(idx0 + 1, in_size - 1)
    return (np.stack([idx0, idx1], 1).astype(np.int32),
            np.stack([_F32(1) - lam, lam], 1).astype(_F32))

  # bicubic, no antialias: Keys cubic convolution with a = -0.75, border replicate.
  idx, t = _guard(_source_index(scale, out_size, align_corners, cubic=True), in_size)
  a = _F32(-0.75)
  w = np.stack([_cubic_conv2(t + 1, a), _cubic_conv1(t, a), _cubic_conv1(1 - t, a),
                _cubic_conv2(2 - t, a)], 1).astype(_F32)
  taps = np.clip(idx[:, None] - 1 + np.arange(4)[None, :], 0, in_size - 1)
  return taps.astype(np.int32), w


def _resize_axis(x: jax.Array, axis: int, idx: np.ndarray, w: np.ndarray, weighted: bool) -> jax.Array:
  if not weighted:  # nearest: a pure gather, exact for any dtype.
    return jnp.take(x, jnp.asarray(idx[:, 0]), axis=axis)
  shape = [1] * x.ndim
  shape[axis] = idx.shape[0]
  out = None
  for k in range(idx.shape[1]):
    term = jnp.take(x, jnp.asarray(idx[:, k]), axis=axis) * jnp.asarray(w[:, k], x.dtype).reshape(shape)
    out = term if out is None else out + term
  return out


def resize_matrix(in_size: int, out_size: int, mode: str = "bilinear", align_corners: bool = False) -> np.ndarray:
  """(out_size, in_size) float32 matrix of `interpolate` along one axis (no scale_factor, no antialias):
  `interpolate(x)` on that axis equals `matrix @ x` up to float rounding. Lets a chain of resizes be
  composed into one matrix product (dense: meant for axes of a few thousand entries at most)."""
  check_choice("mode", mode, INTERPOLATE_MODES)
  idx, w = _taps(int(in_size), int(out_size), mode, bool(align_corners), None, False)
  m = np.zeros((out_size, in_size), _F32)
  np.add.at(m, (np.repeat(np.arange(out_size), idx.shape[1]), idx.reshape(-1)), w.reshape(-1))
  return m


def crop_resize_taps(in_size: int, n_valid: jax.Array, n_out: jax.Array,
                     out_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Bilinear (align_corners=False, PyTorch's index arithmetic) taps that crop the first `n_valid` of
  `in_size` entries and resize them to `n_out` entries, `n_valid` / `n_out` possibly traced.

  Returns (idx0, idx1, lam), each (out_size,): output i = x[idx0] * (1 - lam) + x[idx1] * lam;
  entries >= n_out are padding (finite, to be masked by the caller).
  """
  n_valid = jnp.clip(n_valid, 1, in_size).astype(jnp.int32)
  n_out = jnp.maximum(n_out, 1).astype(jnp.int32)
  scale = n_valid.astype(jnp.float32) / n_out.astype(jnp.float32)
  dst = jnp.arange(out_size, dtype=jnp.float32)
  src = jnp.maximum(scale * (dst + 0.5) - 0.5, 0.0)
  src = jnp.where(n_valid == n_out, dst, src)  # PyTorch copies when sizes agree.
  idx0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), n_valid - 1)
  lam = jnp.clip(src - idx0.astype(jnp.float32), 0.0, 1.0)
  return idx0, jnp.minimum(idx0 + 1, n_valid - 1), lam


def crop_resize_matrix(in_size: int, n_valid: jax.Array, n_out: jax.Array, out_size: int) -> jax.Array:
  """(out_size, in_size) float32 matrix of `crop_resize_taps` (rows >= n_out are padding)."""
  idx0, idx1, lam = crop_resize_taps(in_size, n_valid, n_out, out_size)
  cols = jnp.arange(in_size, dtype=jnp.int32)[None, :]
  return ((1 - lam)[:, None] * (cols == idx0[:, None]) + lam[:, None] * (cols == idx1[:, None])).astype(jnp.float32)


def interpolate(x: jax.Array, size: Sequence[int] | int | None = None, *,
                scale_factor: Sequence[float] | float | None = None, mode: str = "bilinear",
                align_corners: bool = False, antialias: bool = False,
                axes: tuple[int, int] = (-3, -2)) -> jax.Array:
  """PyTorch `F.interpolate` on two spatial axes of `x`.

  Args:
    x: array with the two spatial axes given by `axes` (default NHWC: (..., H, W, C)).
      Nearest modes accept any dtype; the others need floating point.
    size: output (H', W') (an int means square). Exactly one of size / scale_factor.
    scale_factor: per-axis factors; output size is floor(in * factor) and, as in
      PyTorch (recompute_scale_factor=None), the factor itself drives the sampling grid.
    mode: one of INTERPOLATE_MODES.
    align_corners: for "bilinear"/"bicubic" (must be False for nearest modes).
    antialias: PyTorch's antialiased "bilinear"/"bicubic" (matters when downsampling).
    axes: the (H, W) axes.
  Returns:
    `x` resized to (H', W') on `axes`, same dtype.
  """
  check_choice("mode", mode, INTERPOLATE_MODES)
  if len(axes) != 2:
    raise ValueError(f"axes must name two axes, got {axes}")
  if x.ndim < 2:
    raise ValueError(f"x must have rank >= 2, got shape {x.shape}")
  axes = tuple(a % x.ndim for a in axes)
  if axes[0] == axes[1]:
    raise ValueError(f"axes must be two different axes, got {axes}")
  if (size is None) == (scale_factor is None):
    raise ValueError("exactly one of size and scale_factor must be given")
  nearest = mode.startswith("nearest")
  if nearest and align_corners:
    raise ValueError("align_corners=True is only valid for mode 'bilinear' or 'bicubic'")
  if nearest and antialias:
    raise ValueError("antialias=True is only valid for mode 'bilinear' or 'bicubic'")
  if not nearest and not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x must be floating point for mode {mode!r}, got {x.dtype}")
  in_hw = (x.shape[axes[0]], x.shape[axes[1]])
  if scale_factor is not None:
    factors = (scale_factor,) * 2 if np.isscalar(scale_factor) else tuple(scale_factor)
    if len(factors) != 2 or any(f <= 0 for f in factors):
      raise ValueError(f"scale_factor must be one or two positive numbers, got {scale_factor}")
    out_hw = tuple(int(np.floor(float(i) * float(f))) for i, f in zip(in_hw, factors))
  else:
    factors = (None, None)
    out_hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if len(out_hw) != 2:
      raise ValueError(f"size must be one or two integers, got {size}")
  if any(s <= 0 for s in out_hw):
    raise ValueError(f"size must be positive, got output size {out_hw}")
  for axis, n_in, n_out, factor in zip(axes, in_hw, out_hw, factors):
    if n_in == 0:
      raise ValueError(f"x has an empty spatial axis: shape {x.shape}")
    idx, w = _taps(n_in, n_out, mode, bool(align_corners), None if factor is None else float(factor),
                   bool(antialias))
    x = _resize_axis(x, axis, idx, w, weighted=not nearest)
  return x


def _unnormalize(coord: jax.Array, size: int, align_corners: bool) -> jax.Array:
  if align_corners:
    return (coord + 1) / 2 * (size - 1)
  return ((coord + 1) * size - 1) / 2


def _clip_like_torch(coord: jax.Array, size: int) -> jax.Array:
  """PyTorch `clip_coordinates`: gradient 1 inside [0, size - 1] (ends included), else 0."""
  return jnp.where(coord < 0, 0.0, jnp.where(coord > size - 1, float(size - 1), coord))


def grid_sample(x: jax.Array, grid: jax.Array, *, mode: str = "bilinear",
                padding_mode: str = "zeros", align_corners: bool = False) -> jax.Array:
  """PyTorch `F.grid_sample` (2-d, bilinear) in channels-last layout.

  Args:
    x: (N, H, W, C) input.
    grid: (N, Ho, Wo, 2) sampling positions, last axis (x, y) in [-1, 1].
    mode: "bilinear" (the only mode).
    padding_mode: "zeros" (outside samples are 0) or "border" (clamp to the edge).
    align_corners: PyTorch's flag: whether -1 / 1 are the centres (True) or the outer
      edges (False) of the corner pixels.
  Returns:
    (N, Ho, Wo, C), differentiable with respect to `x` and `grid`.
  """
  check_choice("mode", mode, ("bilinear",))
  check_choice("padding_mode", padding_mode, GRID_SAMPLE_PADDING)
  check_rank("x", x, 4)
  check_rank("grid", grid, 4)
  check_last_dim("grid", grid, 2)
  if grid.shape[0] != x.shape[0]:
    raise ValueError(f"grid and x must have the same batch size, got {grid.shape} and {x.shape}")
  n, h, w, c = x.shape
  _, ho, wo, _ = grid.shape
  grid = grid.astype(x.dtype)
  ix = _unnormalize(grid[..., 0], w, align_corners)
  iy = _unnormalize(grid[..., 1], h, align_corners)
  if padding_mode == "border":
    ix = _clip_like_torch(ix, w)
    iy = _clip_like_torch(iy, h)
  out = bilinear_gather(x.reshape(n, h * w, c), (h, w), ix.reshape(n, -1), iy.reshape(n, -1))
  return out.reshape(n, ho, wo, c)


def bilinear_gather(values: jax.Array, hw: tuple[int, int], px: jax.Array, py: jax.Array) -> jax.Array:
  """Bilinear samples of a flattened map at pixel coordinates, zero outside.

  Args:
    values: (N, H*W, C) map, row-major.
    hw: (H, W), static.
    px, py: (N, P) pixel coordinates (pixel centres at integers).
  Returns:
    (N, P, C). Corners outside the map contribute 0 (PyTorch `grid_sample` "zeros").
  """
  h, w = hw
  x0 = jnp.floor(px)
  y0 = jnp.floor(py)
  fx = px - x0
  fy = py - y0
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)
  out = None
  for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                         (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
    xx, yy = x0 + dx, y0 + dy
    inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
    flat = jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)
    sample = jnp.take_along_axis(values, flat[..., None], axis=1)
    term = sample * jnp.where(inside, weight, 0.0)[..., None]
    out = term if out is None else out + term
  return out


def point_sample(x: jax.Array, point_coords: jax.Array, *, align_corners: bool = False) -> jax.Array:
  """Samples `x` at points given in normalized [0, 1] x [0, 1] coordinates (PointRend).

  Args:
    x: (N, H, W, C) feature map.
    point_coords: (N, P, 2), last axis (x, y) in [0, 1].
  Returns:
    (N, P, C), equal to detectron2 `point_sample` transposed to channels-last.
  """
  check_rank("x", x, 4)
  check_rank("point_coords", point_coords, 3)
  check_last_dim("point_coords", point_coords, 2)
  grid = 2.0 * point_coords[:, None, :, :] - 1.0
  return grid_sample(x, grid, align_corners=align_corners)[:, 0]


def resize_valid_region(x: jax.Array, valid_hw: jax.Array, out_hw: tuple[int, int], *,
                        axes: tuple[int, int] = (-2, -1)) -> jax.Array:
  """Crops the top-left `valid_hw` region of `x` and resizes it bilinearly to `out_hw`.

  Equal to `F.interpolate(x[..., :h, :w], out_hw, mode="bilinear", align_corners=False)`,
  but jit-friendly: `valid_hw` may be a traced (2,) int array; only `out_hw` is static.

  Args:
    x: array whose `axes` are the padded (H, W).
    valid_hw: (2,) the valid height and width (1 <= h <= H, 1 <= w <= W).
    out_hw: static output (H', W').
  Returns:
    `x` with `axes` resized to `out_hw`.
  """
  if len(out_hw) != 2:
    raise ValueError(f"out_hw must be (height, width), got {out_hw}")
  axes = tuple(a % x.ndim for a in axes)
  valid_hw = jnp.asarray(valid_hw)
  if valid_hw.shape != (2,):
    raise ValueError(f"valid_hw must have shape (2,), got {valid_hw.shape}")
  for axis, n_valid, n_out in zip(axes, (valid_hw[0], valid_hw[1]), out_hw):
    idx0, idx1, lam = crop_resize_taps(x.shape[axis], n_valid, n_out, n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    lam = lam.astype(x.dtype).reshape(shape)
    x = jnp.take(x, idx0, axis=axis) * (1 - lam) + jnp.take(x, idx1, axis=axis) * lam
  return x


__all__ = ["interpolate", "grid_sample", "point_sample", "bilinear_gather", "resize_valid_region",
           "resize_matrix", "crop_resize_taps", "crop_resize_matrix", "INTERPOLATE_MODES"]
