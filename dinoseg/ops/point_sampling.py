"""Uncertainty-based importance sampling of points (PointRend; Mask2Former's mask loss)."""
from typing import Callable

import jax
import jax.numpy as jnp

from dinoseg.ops._checks import check_rank
from dinoseg.ops.resample import point_sample


def logit_uncertainty(logits: jax.Array) -> jax.Array:
  """-|logit|: highest for logits nearest the decision boundary (Mask2Former's rule)."""
  return -jnp.abs(logits)


def importance_point_counts(num_points: int, oversample_ratio: float,
                            importance_sample_ratio: float) -> tuple[int, int, int]:
  """(oversampled, uncertain, random) point counts, computed as PointRend does."""
  if oversample_ratio < 1:
    raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
  if not 0 <= importance_sample_ratio <= 1:
    raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
  if num_points <= 0:
    raise ValueError(f"num_points must be positive, got {num_points}")
  num_sampled = int(num_points * oversample_ratio)
  num_uncertain = int(importance_sample_ratio * num_points)
  return num_sampled, num_uncertain, num_points - num_uncertain


def uncertain_point_coords_with_randomness(
    key: jax.Array, coarse_logits: jax.Array, *, num_points: int, oversample_ratio: float,
    importance_sample_ratio: float,
    uncertainty_fn: Callable[[jax.Array], jax.Array] = logit_uncertainty) -> jax.Array:
  """Picks points where `coarse_logits` are most uncertain, plus uniform random ones.

  Draws `num_points * oversample_ratio` uniform points, keeps the
  `importance_sample_ratio * num_points` most uncertain, and appends uniform random
  points to reach `num_points` (detectron2 `get_uncertain_point_coords_with_randomness`).
  The random draws are `uniform(k1, (N, num_sampled, 2))` and
  `uniform(k2, (N, num_random, 2))` with `k1, k2 = jax.random.split(key)`.

  Args:
    key: PRNG key.
    coarse_logits: (N, H, W) class-agnostic logits (for example mask logits per instance).
  Returns:
    (N, num_points, 2) coordinates (x, y) in [0, 1]; no gradient flows through them.
  """
  check_rank("coarse_logits", coarse_logits, 3)
  n = coarse_logits.shape[0]
  num_sampled, num_uncertain, num_random = importance_point_counts(
      num_points, oversample_ratio, importance_sample_ratio)
  k1, k2 = jax.random.split(key)
  coarse_logits = jax.lax.stop_gradient(coarse_logits)
  coords = jax.random.uniform(k1, (n, num_sampled, 2), jnp.float32)
  point_logits = point_sample(coarse_logits[..., None], coords)[..., 0]  # (N, num_sampled)
  uncertainty = uncertainty_fn(point_logits)
  if num_uncertain > 0:
    _, idx = jax.lax.top_k(uncertainty, num_uncertain)
    chosen = jnp.take_along_axis(coords, idx[..., None], axis=1)
  else:
    chosen = coords[:, :0]
  if num_random > 0:
    chosen = jnp.concatenate([chosen, jax.random.uniform(k2, (n, num_random, 2), jnp.float32)], axis=1)
  return chosen


__all__ = ["uncertain_point_coords_with_randomness", "logit_uncertainty", "importance_point_counts"]
