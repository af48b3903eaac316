"""SimpleFPN (ViTDet style): four pyramid levels from the single stride-16 ViT map.

Layers, as the reference `SimpleFPN` numbers them (state-dict index in brackets); every
GroupNorm is GN(1, C) with eps 1e-5 and GELU is exact (erf):

  down_4:  ConvT k2s2 [0] -> GN [1] -> GELU -> ConvT k2s2 [3] -> GN [4] -> Conv 1x1 [5] -> GN [6] -> GELU
  down_8:  ConvT k2s2 [0] -> GN [1] -> Conv 1x1 [2] -> GN [3] -> GELU
  down_16: Conv 1x1 [0] -> GN [1] -> GELU
  down_32: Conv k2s2 [0] -> GN [1] -> Conv 1x1 [2] -> GN [3] -> GELU

Flax submodules are named `down_4_0`, `down_4_1`, ... after those indices (see convert.py).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

GROUP_NORM_EPS = 1e-5


class ConvTranspose2x2(nn.Module):
  """PyTorch `ConvTranspose2d(k=2, s=2)`: a per-pixel matmul followed by a 2x2 pixel shuffle.

  Params: `kernel` (2, 2, Cin, Cout) = torch weight (Cin, Cout, 2, 2) transposed (2, 3, 0, 1);
  `bias` (Cout,).
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, H, W, Cin) -> (B, 2H, 2W, Cout)."""
    cin = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(in_axis=2, out_axis=3),
                        (2, 2, cin, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    b, h, w, _ = x.shape
    # One (B*H*W, Cin) x (Cin, 4*Cout) matmul, then the 2x2 pixel shuffle: faster on XLA CPU than
    # the equivalent einsum straight into the (B, H, 2, W, 2, Cout) layout (same products and sums).
    k = kernel.astype(self.dtype).transpose(2, 0, 1, 3).reshape(cin, 4 * self.features)  # (Cin, [i, j, Cout])
    y = jnp.dot(x.astype(self.dtype).reshape(b * h * w, cin), k)
    y = y.reshape(b, h, w, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


class PatchConv(nn.Module):
  """`nn.Conv(features, (k, k), strides=(k, k), padding="VALID")` as a patchify + matmul.

  Same parameters as that `nn.Conv` (`kernel` (k, k, Cin, Cout), `bias` (Cout,)) and the same
  products; for non-overlapping kernels (1x1, and the k x k stride-k patch convs) a matmul is
  faster than XLA CPU's convolution. Input and kernel are cast to `dtype` as `nn.Conv` does.
  """
  features: int
  kernel_size: int = 1
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, H, W, Cin), H and W multiples of k -> (B, H/k, W/k, Cout)."""
    k = self.kernel_size
    b, h, w, cin = x.shape
    if h % k or w % k:
      raise ValueError(f"input {h}x{w} is not a multiple of the kernel size {k}")
    kernel = self.param("kernel", self.kernel_init, (k, k, cin, self.features))
    x = x.astype(self.dtype)
    if k > 1:  # (B, H/k, k, W/k, k, Cin) -> (B, H/k, W/k, [k, k, Cin]), the kernel's (i, j, c) order
      x = x.reshape(b, h // k, k, w // k, k, cin).transpose(0, 1, 3, 2, 4, 5)
    y = jnp.dot(x.reshape(b, h // k, w // k, k * k * cin), kernel.astype(self.dtype).reshape(k * k * cin, -1))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


def _group_norm(name: str, dtype) -> nn.GroupNorm:
  # GN(1, C): statistics over (H, W, C) per sample, two-pass variance as PyTorch.
  return nn.GroupNorm(num_groups=1, epsilon=GROUP_NORM_EPS, use_fast_variance=False, dtype=dtype, name=name)


def _gelu(x):
  return nn.gelu(x, approximate=False)


class SimpleFPN(nn.Module):
  """Stride-16 map -> [stride 4, 8, 16, 32] maps.

  Attributes:
    out_dims: channels of the four outputs (reference (128, 256, 512, 1024)).
  """
  out_dims: Sequence[int] = (128, 256, 512, 1024)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    """x (B, h, w, D) -> [(B, 4h, 4w, d0), (B, 2h, 2w, d1), (B, h, w, d2), (B, h/2, w/2, d3)]."""
    in_dim = x.shape[-1]
    dt = self.dtype
    conv = lambda f, name, k=1: PatchConv(f, k, dtype=dt, name=name)  # noqa: E731
    c4 = max(self.out_dims[0] * 2, in_dim // 2)
    y = ConvTranspose2x2(c4, dtype=dt, name="down_4_0")(x)
    y = _gelu(_group_norm("down_4_1", dt)(y))
    y = ConvTranspose2x2(c4 // 2, dtype=dt, name="down_4_3")(y)
    y = _group_norm("down_4_4", dt)(y)
    y = conv(self.out_dims[0], "down_4_5")(y)
    x4 = _gelu(_group_norm("down_4_6", dt)(y))

    c8 = max(self.out_dims[1], in_dim // 2)
    y = ConvTranspose2x2(c8, dtype=dt, name="down_8_0")(x)
    y = _group_norm("down_8_1", dt)(y)
    y = conv(self.out_dims[1], "down_8_2")(y)
    x8 = _gelu(_group_norm("down_8_3", dt)(y))

    y = conv(self.out_dims[2], "down_16_0")(x)
    x16 = _gelu(_group_norm("down_16_1", dt)(y))

    c32 = max(self.out_dims[3], in_dim * 2)
    y = conv(c32, "down_32_0", k=2)(x)
    y = _group_norm("down_32_1", dt)(y)
    y = conv(self.out_dims[3], "down_32_2")(y)
    x32 = _gelu(_group_norm("down_32_3", dt)(y))
    return [x4, x8, x16, x32]
