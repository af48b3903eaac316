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
    y = jnp.einsum("bhwc,ijcd->bhiwjd", x.astype(self.dtype), kernel.astype(self.dtype))
    return y.reshape(b, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


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
    conv = lambda f, name, k=1: nn.Conv(f, (k, k), strides=(k, k), padding="VALID", dtype=dt, name=name)  # noqa: E731
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
