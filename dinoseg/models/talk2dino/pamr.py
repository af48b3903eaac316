"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth 2020), as Talk2DINO applies it.

Given a guide image I (RGB, 0..255) and soft masks M at the same resolution:

1. Neighbourhood: for each dilation d in `dilations`, the 8 pixels at offsets
   (+-d, +-d / 0) with replicate padding (48 neighbours for the six default dilations).
2. Local spread: per colour channel, sigma = unbiased standard deviation (ddof = 1) of the
   9 x len(dilations) values made of each dilation's 3x3 window (centre included, so the
   centre is counted once per dilation).
3. Affinity of neighbour k: a_k = -|I_centre - I_k| / (1e-8 + 0.1 * sigma), averaged over
   the colour channels, then softmax over the 48 neighbours.
4. `num_iter` times: M <- sum_k a_k * M_k (the centre itself is not a neighbour).

Talk2DINO uses 10 iterations with dilations (1, 2, 4, 8, 12, 24), on masks already
upsampled to the crop (the guide image resize is then a no-op). The masks' classes are
independent, so the reference's chunks of 30 classes change nothing and are not reproduced.
"""
from typing import Sequence

import jax
import jax.numpy as jnp

DEFAULT_ITERATIONS = 10
DEFAULT_DILATIONS = (1, 2, 4, 8, 12, 24)
# The 8 neighbour directions in the reference's kernel order (row-major 3x3 without the centre).
_DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _shifted(padded: jax.Array, pad: int, dy: int, dx: int, h: int, w: int) -> jax.Array:
  """x[..., y + dy, x + dx] with replicate padding, from an edge-padded array (..., h + 2p, w + 2p)."""
  return padded[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
  """The (dy, dx) offsets of all neighbours, dilation-major, in the reference's order."""
  return [(dy * d, dx * d) for d in dilations for dy, dx in _DIRECTIONS]


def pamr_affinity(image: jax.Array, dilations: Sequence[int] = DEFAULT_DILATIONS) -> jax.Array:
  """Softmax-normalized neighbour affinities of a guide image.

  Args:
    image: (H, W, C) guide image (Talk2DINO: RGB in 0..255), float.
    dilations: neighbourhood dilations (positive ints).
  Returns:
    (K, H, W) float32 with K = 8 * len(dilations); sums to 1 over K.
  """
  if image.ndim != 3:
    raise ValueError(f"image must be (H, W, C), got shape {image.shape}")
  if not dilations or any(int(d) < 1 for d in dilations):
    raise ValueError(f"dilations must be positive integers, got {tuple(dilations)}")
  h, w, _ = image.shape
  x = jnp.moveaxis(image.astype(jnp.float32), -1, 0)  # (C, H, W)
  pad = max(dilations)
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
  # Unbiased std over each dilation's full 3x3 window (centre included), all dilations together.
  window = [_shifted(padded, pad, dy * d, dx * d, h, w)
            for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
  n = len(window)
  mean = sum(window) / n
  var = sum(jnp.square(v - mean) for v in window) / (n - 1)
  denom = 1e-8 + 0.1 * jnp.sqrt(var)  # (C, H, W)
  logits = jnp.stack([jnp.mean(-jnp.abs(x - _shifted(padded, pad, dy, dx, h, w)) / denom, axis=0)
                      for dy, dx in neighbour_offsets(dilations)])  # (K, H, W)
  return jax.nn.softmax(logits, axis=0)


def pamr_propagate(masks: jax.Array, affinity: jax.Array, dilations: Sequence[int] = DEFAULT_DILATIONS,
                   num_iter: int = DEFAULT_ITERATIONS) -> jax.Array:
  """Applies `num_iter` affinity-weighted neighbour averages.

  Args:
    masks: (..., H, W) soft masks (any leading axes, e.g. classes).
    affinity: (K, H, W) from `pamr_affinity` with the same `dilations`.
    dilations: as for the affinity.
    num_iter: iterations (>= 0).
  Returns:
    (..., H, W) float32.
  """
  offsets = neighbour_offsets(dilations)
  h, w = masks.shape[-2:]
  if affinity.shape != (len(offsets), h, w):
    raise ValueError(f"affinity must be ({len(offsets)}, {h}, {w}) for masks {masks.shape}, "
                     f"got {affinity.shape}")
  if num_iter < 0:
    raise ValueError(f"num_iter must be >= 0, got {num_iter}")
  pad = max(dilations)
  widths = [(0, 0)] * (masks.ndim - 2) + [(pad, pad), (pad, pad)]

  def step(_, m):
    padded = jnp.pad(m, widths, mode="edge")
    out = None
    for k, (dy, dx) in enumerate(offsets):
      term = affinity[k] * _shifted(padded, pad, dy, dx, h, w)
      out = term if out is None else out + term
    return out

  return jax.lax.fori_loop(0, num_iter, step, masks.astype(jnp.float32))


def pamr(image: jax.Array, masks: jax.Array, num_iter: int = DEFAULT_ITERATIONS,
         dilations: Sequence[int] = DEFAULT_DILATIONS) -> jax.Array:
  """Refines soft masks with the guide image.

  Args:
    image: (H, W, C) guide image at the masks' resolution.
    masks: (..., H, W) soft masks.
  Returns:
    (..., H, W) refined masks.
  """
  if image.shape[:2] != masks.shape[-2:]:
    raise ValueError(f"image (H, W, C) {image.shape} and masks (..., H, W) {masks.shape} must share H, W")
  return pamr_propagate(masks, pamr_affinity(image, dilations), dilations, num_iter)


__all__ = ["pamr", "pamr_affinity", "pamr_propagate", "neighbour_offsets", "DEFAULT_ITERATIONS",
           "DEFAULT_DILATIONS"]
