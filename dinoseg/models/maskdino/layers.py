"""Small layers shared by the Mask DINO modules: MLP, conv + GroupNorm, PyTorch-default initializers.

Parameter names mirror the reference state-dict keys so that `convert.py` is a rename:
Dense `kernel` (in, out) = torch `weight` (out, in) transposed; Conv `kernel` (kh, kw, in, out) =
torch (out, in, kh, kw) transposed; LayerNorm / GroupNorm `scale` = torch `weight`.
"""
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinoseg.backbones.layers import layer_norm
from dinoseg.ops.conv import ConvGeneralDilated

Initializer = Callable[..., jax.Array]

xavier_uniform = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros
# detectron2 c2_xavier_fill: kaiming_uniform_(a=1) = uniform(+-sqrt(3 / fan_in)).
c2_xavier_fill = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def torch_linear_kernel_init() -> Initializer:
  """torch.nn.Linear's default weight init: kaiming_uniform_(a=sqrt(5)) = uniform(+-1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Initializer:
  """torch.nn.Linear / Conv2d default bias init: uniform(+-1/sqrt(fan_in))."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def dense(features: int, in_features: int, name: str, *, kernel_init: Initializer | None = None,
          bias_init: Initializer | None = None, dtype: Any = jnp.float32) -> nn.Dense:
  """nn.Dense with torch.nn.Linear's default init unless given (fp32 params, `dtype` compute)."""
  return nn.Dense(features, name=name, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=kernel_init or torch_linear_kernel_init(),
                  bias_init=bias_init or torch_bias_init(in_features))


class MLP(nn.Module):
  """The reference `MLP`: `num_layers` Linear layers with ReLU between them (`layers_{i}`).

  Attributes:
    hidden_dim, output_dim, num_layers: as the reference (input width from the input).
    kernel_init / bias_init: optional initializers for every layer (default torch Linear's).
    zero_last: zero-initialize the last layer (the box MLP).
  """
  hidden_dim: int
  output_dim: int
  num_layers: int
  kernel_init: Initializer | None = None
  zero_last: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (..., Din) -> (..., output_dim)."""
    dims = [self.hidden_dim] * (self.num_layers - 1) + [self.output_dim]
    in_dim = x.shape[-1]
    for i, d in enumerate(dims):
      last = i == self.num_layers - 1
      kinit = zeros if (last and self.zero_last) else self.kernel_init
      binit = zeros if (last and self.zero_last) else None
      x = dense(d, in_dim, f"layers_{i}", kernel_init=kinit, bias_init=binit, dtype=self.dtype)(x)
      if not last:
        x = nn.relu(x)
      in_dim = d
    return x


def group_norm(name: str, num_groups: int = 32, dtype: Any = jnp.float32) -> nn.GroupNorm:
  """torch.nn.GroupNorm(num_groups, C) (eps 1e-5, two-pass variance)."""
  return nn.GroupNorm(num_groups=num_groups, epsilon=1e-5, use_fast_variance=False, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


class ConvNorm(nn.Module):
  """Conv2d (NHWC, symmetric padding) followed by an optional GroupNorm and activation.

  The torch layouts it mirrors: `nn.Sequential(Conv2d, GroupNorm)` (children `0`, `1`: the
  pixel decoder's `input_proj`) and detectron2 `Conv2d(norm=GN)` (children conv + `norm`).

  Attributes:
    features: output channels; kernel_size, stride, padding: as torch.
    use_bias: conv bias.
    norm: "GN" or None.
    activation: e.g. nn.relu, or None.
    kernel_init: conv kernel initializer.
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  norm: str | None = None
  activation: Callable[[jax.Array], jax.Array] | None = None
  kernel_init: Initializer = xavier_uniform
  conv_name: str = "conv"
  norm_name: str = "norm"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, H, W, Cin) -> (B, H', W', features)."""
    k = self.kernel_size
    x = nn.Conv(self.features, (k, k), strides=(self.stride,) * 2, padding=((self.padding,) * 2,) * 2,
                use_bias=self.use_bias, kernel_init=self.kernel_init, bias_init=zeros, dtype=self.dtype,
                param_dtype=jnp.float32, conv_general_dilated_cls=ConvGeneralDilated, name=self.conv_name)(x)
    if self.norm == "GN":
      x = group_norm(self.norm_name, dtype=self.dtype)(x)
    elif self.norm is not None:
      raise ValueError(f"norm must be 'GN' or None, got {self.norm!r}")
    if self.activation is not None:
      x = self.activation(x)
    return x


def torch_layer_norm(name: str, dtype: Any = jnp.float32) -> nn.LayerNorm:
  """torch.nn.LayerNorm(d) (eps 1e-5, two-pass variance)."""
  return layer_norm(name, 1e-5, dtype)


@jax.custom_vjp
def relu(x: jax.Array) -> jax.Array:
  """max(x, 0) whose gradient is read from the output: the backward pass keeps y (which the next layer keeps
  anyway) instead of the pre-activation too (an FFN at 1024 x 1024: 170 MiB less per encoder layer)."""
  return jnp.maximum(x, 0)


def _relu_fwd(x):
  y = jnp.maximum(x, 0)
  return y, y


def _relu_bwd(y, g):
  return (jnp.where(y > 0, g, jnp.zeros_like(g)),)


relu.defvjp(_relu_fwd, _relu_bwd)


def check_levels(name: str, values: Sequence, n: int) -> None:
  if len(values) != n:
    raise ValueError(f"{name} must have {n} entries (one per feature level), got {len(values)}")


__all__ = ["MLP", "ConvNorm", "dense", "relu", "group_norm", "torch_layer_norm", "torch_bias_init",
           "torch_linear_kernel_init", "xavier_uniform", "c2_xavier_fill", "zeros", "check_levels"]
