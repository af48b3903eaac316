"""The Talk2DINO projection: CLIP text embeddings -> DINOv2 feature space.

Only the text side is projected (the DINOv2 features are used as they are):

    x = linear_layer(t)                          512 -> D
    for each hidden layer: x = hidden(act(x))    D -> D

With the published configuration (one hidden layer, tanh) this is
Linear(512 -> D) -> tanh -> Linear(D -> D), D = 768 (ViT-B) or 1024 (ViT-L), with no
activation at the end. Both sides are L2-normalized before any dot product
(`normalize`). Parameter names follow the reference state dict: `linear_layer`,
`hidden_layers_{i}` (torch `hidden_layers.{i}`).
"""
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "none": lambda x: x,
}

# Widths of the DINOv2 spaces the published projections map into.
EMBED_DIMS = {"vitb": 768, "vitl": 1024}
CLIP_EMBED_DIM = 512


def _torch_linear_bias_init(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch.nn.Linear's default bias init."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


# torch.nn.Linear's default weight init (kaiming_uniform with a = sqrt(5)): U(+-1/sqrt(fan_in)).
_torch_linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """`torch.nn.functional.normalize`: x / max(||x||_2, eps) along `axis`."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


class TextProjection(nn.Module):
  """Maps CLIP text embeddings (..., 512) to the DINOv2 space (..., D).

  Attributes:
    embed_dim: D, the DINOv2 width (768 ViT-B, 1024 ViT-L).
    num_hidden_layers: D -> D layers after the first one (1 in the published models; 0 gives
      a single Linear).
    activation: applied before every hidden layer ("tanh", "relu", "sigmoid", "none").
  """
  embed_dim: int = 768
  num_hidden_layers: int = 1
  activation: str = "tanh"

  @nn.compact
  def __call__(self, text_embeds: jax.Array) -> jax.Array:
    """text_embeds (..., C) (cast to float32, as the reference's `.float()`) -> (..., D), not normalized."""
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
    if self.num_hidden_layers < 0:
      raise ValueError(f"num_hidden_layers must be >= 0, got {self.num_hidden_layers}")
    x = text_embeds.astype(jnp.float32)
    x = nn.Dense(self.embed_dim, kernel_init=_torch_linear_kernel_init,
                 bias_init=_torch_linear_bias_init(x.shape[-1]), name="linear_layer")(x)
    act = ACTIVATIONS[self.activation]
    for i in range(self.num_hidden_layers):
      x = nn.Dense(self.embed_dim, kernel_init=_torch_linear_kernel_init,
                   bias_init=_torch_linear_bias_init(self.embed_dim), name=f"hidden_layers_{i}")(act(x))
    return x


__all__ = ["TextProjection", "normalize", "ACTIVATIONS", "EMBED_DIMS", "CLIP_EMBED_DIM"]
