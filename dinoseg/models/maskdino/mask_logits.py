"""Mask logits kept as (query embeddings, mask features) until a loss samples them.

A Mask DINO mask logit is a dot product: masks[..., q, y, x] = <embed[..., q, :], features[b, y, x, :]>. Bilinear
sampling is linear, so sampling the (B, h, w, C) features at points and taking the dot product with a query's
embedding gives the sampled logit of the full mask, without the (P, B, Q, h, w) array of every prediction (and
its gradient) that the training losses would otherwise materialise. The losses only read mask logits at points
(matching cost, point-sampled BCE / dice), so in training the decoder can hand them `FactoredMasks`
(`decoder.factored_train_masks`); `materialize()` gives the full logits where a consumer needs them.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp

from dinoseg.ops import point_sample


@flax.struct.dataclass
class FactoredMasks:
  """Mask logits as embed (..., Q, C) x features (B, h, w, C); the leading axes of `embed` end with (B, Q) (e.g.
  (P, B, Q, C) for P predictions). Behaves as an array of shape embed.shape[:-1] + (h, w) for `shape`,
  indexing along the first axis and `concatenate`."""
  embed: Any
  features: Any

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.embed.shape[:-1]) + tuple(self.features.shape[1:3])

  def __getitem__(self, index) -> "FactoredMasks":
    """Indexes the leading (prediction) axis only."""
    return FactoredMasks(self.embed[index], self.features)

  def materialize(self) -> jax.Array:
    """The full logits, float32: embed.shape[:-1] + (h, w)."""
    return jnp.einsum("...bqc,bhwc->...bqhw", self.embed, self.features.astype(self.embed.dtype)).astype(jnp.float32)

  def at_shared_points(self, points: jax.Array) -> jax.Array:
    """embed (B, Q, C), points (B, P, 2) in [0, 1] shared by every query of an image -> (B, P, Q) float32 logits,
    equal to `point_sample` of the full masks (grid_sample, align_corners=False, zeros outside)."""
    sampled = point_sample(self.features.astype(jnp.float32), points)  # (B, P, C)
    return jnp.einsum("bpc,bqc->bpq", sampled, self.embed.astype(jnp.float32))


def concatenate(parts) -> Any:
  """Concatenates predictions (arrays or FactoredMasks sharing their features) along the first axis."""
  if isinstance(parts[0], FactoredMasks):
    return FactoredMasks(jnp.concatenate([p.embed for p in parts]), parts[0].features)
  return jnp.concatenate(parts)


__all__ = ["FactoredMasks", "concatenate"]
