"""Multi-scale deformable attention module (Deformable DETR's `MSDeformAttn`) around the kernel
`dinoseg.kernels.ms_deform_attn`.

Projections (names = reference keys): `value_proj`, `output_proj` (d -> d), `sampling_offsets`
(d -> M*L*P*2, flattened as ((m*L + l)*P + p)*2 + xy), `attention_weights` (d -> M*L*P, softmax
jointly over levels x points). Sampling locations in [0, 1]:
  2-d reference points: loc = ref + offset / (W_l, H_l)
  4-d reference boxes:  loc = ref_xy + offset / P * ref_wh * 0.5
Reference init: offsets weight 0 and bias = per-head direction (cos, sin) / max(|cos|, |sin|) * (p + 1),
attention weights 0, value/output projections Xavier-uniform with zero bias.
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.models.maskdino.layers import dense, xavier_uniform, zeros


def sampling_offsets_bias_init(n_heads: int, n_levels: int, n_points: int):
  """The reference's grid initialization of the sampling-offset bias, flattened (M*L*P*2,)."""
  def init(key, shape, dtype=jnp.float32):
    del key
    thetas = np.arange(n_heads, dtype=np.float32) * np.float32(2.0 * math.pi / n_heads)
    grid = np.stack([np.cos(thetas), np.sin(thetas)], -1)
    grid = grid / np.abs(grid).max(-1, keepdims=True)
    grid = np.tile(grid[:, None, None, :], (1, n_levels, n_points, 1))
    grid = grid * (np.arange(n_points, dtype=np.float32) + 1)[None, None, :, None]
    return jnp.asarray(grid.reshape(shape), dtype)
  return init


class MSDeformAttn(nn.Module):
  """Deformable attention of queries over a flattened multi-level value map.

  Attributes:
    d_model: feature width (C); n_levels: L; n_heads: M; n_points: P.
    impl: `dinoseg.kernels.ms_deform_attn` implementation ("auto", "xla", "pallas", ...).
    dtype: compute dtype of the projections (the sampling runs in the value's dtype).
  """
  d_model: int = 256
  n_levels: int = 4
  n_heads: int = 8
  n_points: int = 4
  impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query: jax.Array, reference_points: jax.Array, value_input: jax.Array,
               spatial_shapes: Sequence[tuple[int, int]]) -> jax.Array:
    """Runs the attention.

    Args:
      query: (N, Lq, C).
      reference_points: (N, Lq, L, 2) points or (N, Lq, L, 4) boxes (cx, cy, w, h) in [0, 1].
      value_input: (N, S, C), S = sum_l H_l * W_l, levels concatenated in `spatial_shapes` order.
      spatial_shapes: static ((H_0, W_0), ...), one per level.
    Returns:
      (N, Lq, C).
    """
    from dinoseg.kernels import ms_deform_attn  # noqa: PLC0415  (kernels load lazily)

    spatial_shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    m, lv, p, c = self.n_heads, self.n_levels, self.n_points, self.d_model
    if c % m:
      raise ValueError(f"d_model ({c}) must be divisible by n_heads ({m})")
    if len(spatial_shapes) != lv:
      raise ValueError(f"spatial_shapes must have n_levels={lv} entries, got {len(spatial_shapes)}")
    n, s, _ = value_input.shape
    if s != sum(h * w for h, w in spatial_shapes):
      raise ValueError(f"value_input has {s} tokens, spatial_shapes sum to {sum(h * w for h, w in spatial_shapes)}")
    lq = query.shape[1]
    if reference_points.shape[:3] != (n, lq, lv) or reference_points.shape[-1] not in (2, 4):
      raise ValueError(f"reference_points must be (N, Lq, n_levels, 2 or 4) = ({n}, {lq}, {lv}, 2|4), "
                       f"got {reference_points.shape}")
    value = dense(c, c, "value_proj", kernel_init=xavier_uniform, bias_init=zeros, dtype=self.dtype)(value_input)
    value = value.reshape(n, s, m, c // m)
    offsets = dense(m * lv * p * 2, c, "sampling_offsets", kernel_init=zeros,
                    bias_init=sampling_offsets_bias_init(m, lv, p), dtype=self.dtype)(query)
    offsets = offsets.reshape(n, lq, m, lv, p, 2).astype(jnp.float32)
    weights = dense(m * lv * p, c, "attention_weights", kernel_init=zeros, bias_init=zeros,
                    dtype=self.dtype)(query)
    weights = jax.nn.softmax(weights.reshape(n, lq, m, lv * p).astype(jnp.float32), axis=-1)
    weights = weights.reshape(n, lq, m, lv, p)
    ref = reference_points.astype(jnp.float32)
    if ref.shape[-1] == 2:
      normalizer = jnp.asarray([[w, h] for h, w in spatial_shapes], jnp.float32)  # (L, 2) as (x, y)
      locations = ref[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    else:
      locations = ref[:, :, None, :, None, :2] + offsets / p * ref[:, :, None, :, None, 2:] * 0.5
    out = ms_deform_attn(value, spatial_shapes, locations, weights.astype(value.dtype), impl=self.impl)
    return dense(c, c, "output_proj", kernel_init=xavier_uniform, bias_init=zeros, dtype=self.dtype)(out)


__all__ = ["MSDeformAttn", "sampling_offsets_bias_init"]
