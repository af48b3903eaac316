"""Small layers shared by the backbones: PyTorch-exact LayerNorm, FrozenBatchNorm, DropPath, MLP.

(Attention is `dinoseg.ops.attention.dot_product_attention`, the one function every block calls.)

Everything here follows PyTorch numerics in float32:
- `layer_norm` computes the variance in two passes (as torch does), with an explicit eps.
- `FrozenBatchNorm` is detectron2's `FrozenBatchNorm2d`: y = x * scale + shift with
  scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale. Its four
  statistics live in the non-trainable Flax collection `FROZEN_BN` ("frozen_bn"), never in
  "params", so optimizers never see them; the converters fill that collection.
- `Mlp` uses the exact (erf) GELU of `torch.nn.GELU()` (Flax's default is the tanh approximation).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Flax collection holding frozen batch-norm statistics (weight, bias, running_mean, running_var).
FROZEN_BN = "frozen_bn"
# Flax collection that attention layers `sow` their probability maps into (only while it is mutable:
# the probabilities are materialized for that alone, `dot_product_attention(..., return_probs=True)`).
INTERMEDIATES = "intermediates"


def layer_norm(name: str, eps: float, dtype: Any = jnp.float32) -> nn.LayerNorm:
  """A LayerNorm with PyTorch's two-pass variance; params `scale` (torch `weight`) and `bias`."""
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


class FrozenBatchNorm(nn.Module):
  """detectron2 FrozenBatchNorm2d on NHWC (or any channels-last) input.

  Variables (collection `FROZEN_BN`, shapes (C,)): `weight`, `bias`, `running_mean`,
  `running_var`, initialized to the identity transform (running_var = 1 - eps, as detectron2).

  Attributes:
    eps: added to running_var (detectron2: 1e-5).
    dtype: output dtype (the affine transform is computed in float32).
  """
  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    weight = self.variable(FROZEN_BN, "weight", jnp.ones, (c,), jnp.float32).value
    bias = self.variable(FROZEN_BN, "bias", jnp.zeros, (c,), jnp.float32).value
    mean = self.variable(FROZEN_BN, "running_mean", jnp.zeros, (c,), jnp.float32).value
    var = self.variable(FROZEN_BN, "running_var", lambda s, d: jnp.full(s, 1.0 - self.eps, d),
                        (c,), jnp.float32).value
    scale = weight * jax.lax.rsqrt(var + self.eps)
    shift = bias - mean * scale
    return (x.astype(jnp.float32) * scale + shift).astype(self.dtype)


class DropPath(nn.Module):
  """Stochastic depth per sample (timm `DropPath`): x * mask / keep_prob, mask ~ Bernoulli(keep_prob).

  Uses the "dropout" RNG stream when `deterministic` is False and `rate` > 0; identity otherwise.
  """
  rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class Mlp(nn.Module):
  """fc1 -> exact (erf) GELU -> fc2 (timm/Swin/MAE `Mlp` without dropout).

  Attributes:
    hidden_dim: width of fc1's output.
    out_dim: width of fc2's output.
  """
  hidden_dim: int
  out_dim: int
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.truncated_normal(0.02)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=self.kernel_init, name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=self.kernel_init, name="fc2")(x)


def drop_path_rates(depths, drop_path_rate: float) -> list[list[float]]:
  """Per-block stochastic-depth rates rising linearly from 0 to `drop_path_rate` over all blocks.

  Matches `torch.linspace(0, rate, sum(depths))` split per stage (Swin's decay rule).
  """
  flat = np.linspace(0.0, drop_path_rate, sum(depths), dtype=np.float32).tolist()
  rates, start = [], 0
  for d in depths:
    rates.append(flat[start:start + d])
    start += d
  return rates
