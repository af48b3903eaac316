"""Sine position embeddings (DETR / Mask2Former / DINO) and `inverse_sigmoid`."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.ops._checks import check_choice, check_rank


def _dim_t(num_feats: int, temperature: float) -> jax.Array:
  # Computed as PyTorch does: float32 arange, integer-halved, float32 power.
  i = np.arange(num_feats, dtype=np.float32)
  return jnp.asarray(np.float32(temperature) ** (2 * (i // 2) / np.float32(num_feats)), jnp.float32)


def _interleave_sin_cos(x: jax.Array) -> jax.Array:
  """x (..., F) -> (..., F) with sin on even and cos on odd features, interleaved."""
  s = jnp.sin(x[..., 0::2])
  c = jnp.cos(x[..., 1::2])
  return jnp.stack([s, c], axis=-1).reshape(x.shape)


def sine_position_embedding(mask_or_hw, *, num_feats: int = 128, temperature: float = 10000.0,
                            normalize: bool = True, scale: float = 2 * math.pi, eps: float = 1e-6,
                            offset: float = 0.0) -> jax.Array:
  """Sine embedding of feature-map positions, channels [pos_y, pos_x].

  Args:
    mask_or_hw: a (B, H, W) boolean "valid pixel" mask, or a static (H, W) pair (all valid,
      batch 1). The embedding counts valid pixels by cumulative sums, as DETR does.
    num_feats: features per axis; the output has 2 * num_feats channels.
    normalize: divide the cumulative coordinate by its last value (+ eps) and scale.
    offset: subtracted from the cumulative coordinate before normalizing (0 in
      Mask2Former / Mask DINO, 0.5 in DINO / Deformable DETR).
  Returns:
    (B, H, W, 2 * num_feats) float32.
  """
  if isinstance(mask_or_hw, (tuple, list)):
    if len(mask_or_hw) != 2:
      raise ValueError(f"mask_or_hw must be (H, W) or a (B, H, W) mask, got {mask_or_hw}")
    valid = jnp.ones((1, *mask_or_hw), jnp.float32)
  else:
    check_rank("mask_or_hw", mask_or_hw, 3)
    valid = jnp.asarray(mask_or_hw).astype(jnp.float32)
  y = jnp.cumsum(valid, axis=1)
  x = jnp.cumsum(valid, axis=2)
  if normalize:
    y = (y - offset) / (y[:, -1:, :] + eps) * scale
    x = (x - offset) / (x[:, :, -1:] + eps) * scale
  dim_t = _dim_t(num_feats, temperature)
  pos_x = _interleave_sin_cos(x[..., None] / dim_t)
  pos_y = _interleave_sin_cos(y[..., None] / dim_t)
  return jnp.concatenate([pos_y, pos_x], axis=-1)


def sine_embedding_for_boxes(boxes: jax.Array, *, num_feats: int = 128, temperature: float = 10000.0,
                             scale: float = 2 * math.pi) -> jax.Array:
  """Sine embedding of normalized reference points or boxes (DINO's `gen_sineembed_for_position`).

  Args:
    boxes: (..., 2) points (x, y) or (..., 4) boxes (cx, cy, w, h), in [0, 1].
  Returns:
    (..., 2 * num_feats) ordered [y, x] or (..., 4 * num_feats) ordered [y, x, w, h].
  """
  if boxes.shape[-1] not in (2, 4):
    raise ValueError(f"boxes must have a last dimension of 2 or 4, got shape {boxes.shape}")
  dim_t = _dim_t(num_feats, temperature)
  parts = [_interleave_sin_cos((boxes[..., k] * scale)[..., None] / dim_t) for k in range(boxes.shape[-1])]
  order = [1, 0] if boxes.shape[-1] == 2 else [1, 0, 2, 3]
  return jnp.concatenate([parts[k] for k in order], axis=-1)


def inverse_sigmoid(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """log(x / (1 - x)) with x clamped to [0, 1] and both terms to >= eps (DETR convention)."""
  x = jnp.clip(x, 0.0, 1.0)
  return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1.0 - x, eps))


__all__ = ["sine_position_embedding", "sine_embedding_for_boxes", "inverse_sigmoid"]
