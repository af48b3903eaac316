"""The sampling plan of multi-scale deformable attention: which value rows a query reads, and how much.

Deformable attention is a weighted sum of bilinear samples. Every sample touches the four pixels
around its location, so a query-head reads K = L * P * 4 rows of the value map (one row = the D
channels of one head at one pixel) and the output is

    out[r] = sum_k coeff[r, k] * value_rows[rows[r, k]]

where `coeff` folds the attention weight, the bilinear weight and the zero padding together. Both
implementations (XLA gather and Pallas) compute this plan first, then only gather, weight and sum;
the gradients with respect to locations and attention weights come from the VJP of the plan given
`d coeff[r, k] = <value_rows[rows[r, k]], d out[r]>`.

Layouts (no transposes anywhere):
  value (N, S, M, D) is read as `value_rows` = value.reshape(N * S * M, D): the row of head m at
    position s of image n is (n * S + s) * M + m.
  queries: sampling_locations (N, Lq, M, L, P, 2) is read as (R, L, P, 2) with R = N * Lq * M
    query-head rows; row r = (n * Lq + q) * M + m, and output row r is out (N, Lq, M * D) viewed as
    (R, D).
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Corner order inside a sample: (dy, dx) = top-left, top-right, bottom-left, bottom-right.
CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))


def level_starts(spatial_shapes: Sequence[tuple[int, int]]) -> tuple[int, ...]:
  """Offsets of each level in the flattened S axis: (0, H0*W0, H0*W0 + H1*W1, ...)."""
  sizes = [int(h) * int(w) for h, w in spatial_shapes]
  return tuple(int(s) for s in np.concatenate([[0], np.cumsum(sizes)[:-1]]))


def base_rows(row_ids: jax.Array, *, num_queries: int, num_heads: int, num_values: int) -> jax.Array:
  """Value-row offset of query-head rows: n * S * M + m for row r = (n * Lq + q) * M + m.

  Args:
    row_ids: (...,) int32 query-head row indices r.
    num_queries: Lq; num_heads: M; num_values: S.
  Returns:
    (...,) int32.
  """
  n = row_ids // (num_queries * num_heads)
  m = row_ids % num_heads
  return (n * (num_values * num_heads) + m).astype(jnp.int32)


def pad_rows(x: jax.Array, multiple: int) -> jax.Array:
  """Zero-pads the leading (row) axis of `x` to a multiple of `multiple` (padded rows have coeff 0)."""
  extra = (-x.shape[0]) % multiple
  if not extra:
    return x
  return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1))


def sampling_plan(locations: jax.Array, attention_weights: jax.Array, base: jax.Array, *,
                  spatial_shapes: Sequence[tuple[int, int]], num_heads: int) -> tuple[jax.Array, jax.Array]:
  """Coefficients and value rows of every bilinear corner.

  Pixel coordinates are (x * W - 0.5, y * H - 0.5) (PyTorch `grid_sample`, align_corners=False);
  corners outside the map get coefficient 0 and a clamped (valid) row index.

  Args:
    locations: (R, L, P, 2) sampling locations (x, y) in [0, 1] (any value is allowed).
    attention_weights: (R, L, P).
    base: (R,) int32 value-row offsets (`base_rows`).
    spatial_shapes: static ((H_0, W_0), ...), one per level.
    num_heads: M, the stride between pixels in the value rows.
  Returns:
    coeff: (R, K) float32 with K = L * 4 * P, ordered (level, corner, point); differentiable
      with respect to `locations` and `attention_weights`.
    rows: (R, K) int32 rows of `value_rows`.
  """
  r = locations.shape[0]
  locations = locations.astype(jnp.float32)
  attention_weights = attention_weights.astype(jnp.float32)
  coeffs, rows = [], []
  for level, ((h, w), start) in enumerate(zip(spatial_shapes, level_starts(spatial_shapes))):
    px = locations[:, level, :, 0] * w - 0.5
    py = locations[:, level, :, 1] * h - 0.5
    x0 = jnp.floor(px)
    y0 = jnp.floor(py)
    fx = px - x0
    fy = py - y0
    x0 = x0.astype(jnp.int32)
    y0 = y0.astype(jnp.int32)
    a = attention_weights[:, level]
    for dy, dx in CORNERS:
      xx, yy = x0 + dx, y0 + dy
      inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
      bilinear = (fy if dy else 1 - fy) * (fx if dx else 1 - fx)
      coeffs.append(jnp.where(inside, a * bilinear, 0.0))
      pixel = jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)
      rows.append(base[:, None] + (start + pixel) * num_heads)
  # (R, L * 4, P) -> (R, K): a free reshape.
  coeff = jnp.stack(coeffs, axis=1).reshape(r, -1)
  row = jnp.stack(rows, axis=1).reshape(r, -1)
  return coeff, row.astype(jnp.int32)
