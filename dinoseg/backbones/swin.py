"""Swin Transformer backbones (Swin-T/S/B/L) as Mask DINO and DINOv use them (`D2SwinTransformer`).

A port of the detection Swin in IDEA-Research/MaskDINO `maskdino/modeling/backbone/swin.py`
(itself from the Swin semantic-segmentation code), same parameters, same float32 numerics:
- Patch embedding: the image is zero-padded on the bottom/right to a multiple of 4, then a
  4x4 stride-4 conv with bias, then LayerNorm. No absolute position embedding.
- Stages of Swin blocks (pre-LN, eps 1e-5). Even blocks use regular windows, odd blocks windows
  shifted by window // 2 (always, even when the map is smaller than a window: this copy of
  Swin never disables the shift). Each block LayerNorms, zero-pads the map on the bottom/right
  to a multiple of the window (padded tokens take part in attention, as in the reference),
  rolls, attends within windows with a learned relative position bias (table
  ((2w-1)^2, heads), indexed by the static `relative_position_index`), un-rolls and crops.
  Shifted windows mask cross-region pairs with -100 (mask computed statically from the
  padded size).
- Patch merging between stages: zero-pad odd sizes, concatenate the sub-grids (0::2,0::2),
  (1::2,0::2), (0::2,1::2), (1::2,1::2), LayerNorm(4C), bias-free Linear 4C -> 2C.
- Outputs res2..res5 = LayerNorm `norm{i}` of each stage's output (before merging), NHWC,
  strides 4/8/16/32 (ceil division for sizes that are not multiples), channels C, 2C, 4C, 8C.
- MLP: exact GELU. Stochastic depth rises linearly to `drop_path_rate` over all blocks and is
  active only with `train=True` (needs the "dropout" RNG).
- Attention probabilities are sown into the "intermediates" collection as
  `layers_{s}/blocks_{b}/attn/attention` with the reference layout (B * windows, heads, N, N),
  computed only when that collection is mutable (`apply(..., mutable=["intermediates"])`);
  otherwise `dinoseg.ops.attention.dot_product_attention` picks its fastest path.

Images are NHWC, normalized by the system (Mask DINO: ImageNet mean/std on the 0-255 scale).

Flax paths mirror the D2 keys: `patch_embed/{proj,norm}`, `layers_{s}/blocks_{b}/{norm1, attn/{qkv, proj,
relative_position_bias_table}, norm2, mlp/{fc1, fc2}}`, `layers_{s}/downsample/{norm, reduction}`,
`norm{i}`. The torch buffer `relative_position_index` is not a variable: it is rebuilt from the
window size (`relative_position_index(window)`).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.backbones.layers import INTERMEDIATES, DropPath, Mlp, drop_path_rates, layer_norm
from dinoseg.ops.attention import dot_product_attention

LAYER_NORM_EPS = 1e-5  # torch nn.LayerNorm default, used throughout Swin
MASK_VALUE = -100.0  # shifted-window mask value of the reference
OUT_NAMES = ("res2", "res3", "res4", "res5")

_SWIN_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_SWIN_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_SWIN_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_SWIN_L = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))

# Name -> SwinTransformer keyword arguments. Window 7 = the 224-px ImageNet checkpoints, window
# 12 = the 384-px ones (Mask DINO / DINOv Swin-L: swin_large_patch4_window12_384_22k).
# drop_path_rate 0.3 = detectron2/Mask DINO's MODEL.SWIN.DROP_PATH_RATE (used only in training).
SWIN_VARIANTS: dict[str, dict[str, Any]] = {
    "swin_tiny": dict(_SWIN_T, window_size=7, drop_path_rate=0.3),
    "swin_small": dict(_SWIN_S, window_size=7, drop_path_rate=0.3),
    "swin_base": dict(_SWIN_B, window_size=12, drop_path_rate=0.3),
    "swin_base_224": dict(_SWIN_B, window_size=7, drop_path_rate=0.3),
    "swin_large": dict(_SWIN_L, window_size=12, drop_path_rate=0.3),
    "swin_large_224": dict(_SWIN_L, window_size=7, drop_path_rate=0.3),
}


def relative_position_index(window_size: int) -> np.ndarray:
  """The reference's `relative_position_index` buffer: (w*w, w*w) int64 indices into the bias table.

  index[i, j] = (dy + w - 1) * (2w - 1) + (dx + w - 1) for tokens i, j of a w x w window
  (row-major), dy/dx = coordinate of i minus coordinate of j.
  """
  w = window_size
  coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)  # (2, N)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)  # (N, N, 2)
  return (rel[..., 0] * (2 * w - 1) + rel[..., 1]).astype(np.int64)


def shifted_window_mask(height: int, width: int, window_size: int, shift_size: int) -> np.ndarray:
  """The reference's shifted-window attention mask for a (height, width) map padded to windows.

  Returns:
    (num_windows, w*w, w*w) float32: 0 where two tokens come from the same region of the
    rolled map, MASK_VALUE otherwise. Windows are in row-major order.
  """
  w, s = window_size, shift_size
  hp, wp = -(-height // w) * w, -(-width // w) * w
  img = np.zeros((hp, wp), np.float32)
  slices = (slice(0, -w), slice(-w, -s), slice(-s, None))
  count = 0
  for hs in slices:
    for ws in slices:
      img[hs, ws] = count
      count += 1
  windows = img.reshape(hp // w, w, wp // w, w).transpose(0, 2, 1, 3).reshape(-1, w * w)
  diff = windows[:, None, :] - windows[:, :, None]
  return np.where(diff != 0, MASK_VALUE, 0.0).astype(np.float32)


def window_partition(x: jax.Array, w: int) -> jax.Array:
  """(B, H, W, C) with H, W multiples of w -> (B, H/w * W/w, w*w, C), windows row-major."""
  b, h, wd, c = x.shape
  x = x.reshape(b, h // w, w, wd // w, w, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // w) * (wd // w), w * w, c)


def window_reverse(windows: jax.Array, w: int, h: int, wd: int) -> jax.Array:
  """Inverse of `window_partition`: (B, nW, w*w, C) -> (B, h, wd, C)."""
  b, _, _, c = windows.shape
  x = windows.reshape(b, h // w, wd // w, w, w, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, wd, c)


class PatchEmbed(nn.Module):
  """Pad to a multiple of `patch_size`, conv patch_size x patch_size (stride = size) with bias, LayerNorm."""
  patch_size: int = 4
  embed_dim: int = 96
  patch_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images (B, H, W, Cin) -> (B, ceil(H/p), ceil(W/p), embed_dim)."""
    p = self.patch_size
    _, h, w, _ = images.shape
    images = jnp.pad(images, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="proj")(images)
    if self.patch_norm:
      x = layer_norm("norm", LAYER_NORM_EPS, self.dtype)(x)
    return x


class WindowAttention(nn.Module):
  """Window multi-head self-attention with relative position bias (W-MSA / SW-MSA).

  Attributes:
    num_heads: attention heads.
    window_size: window side w (N = w*w tokens per window).
    qkv_bias: bias on the packed qkv projection (rows [q; k; v], head-major inside each).
  """
  num_heads: int
  window_size: int
  qkv_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, windows: jax.Array, mask: np.ndarray | None = None) -> jax.Array:
    """windows (B, nW, N, C), mask (nW, N, N) or None -> (B, nW, N, C)."""
    b, nw, n, c = windows.shape
    if c % self.num_heads:
      raise ValueError(f"width {c} is not divisible by num_heads={self.num_heads}")
    hd = c // self.num_heads
    w = self.window_size
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * w - 1) ** 2, self.num_heads), jnp.float32)
    qkv = nn.Dense(3 * c, use_bias=self.qkv_bias, dtype=self.dtype,
                   kernel_init=nn.initializers.truncated_normal(0.02), name="qkv")(windows)
    qkv = qkv.reshape(b, nw, n, 3, self.num_heads, hd).transpose(3, 0, 1, 4, 2, 5)  # (3, B, nW, h, N, hd)
    bias = table[relative_position_index(w).reshape(-1)].reshape(n, n, self.num_heads).transpose(2, 0, 1)
    if mask is not None:
      bias = bias[None] + jnp.asarray(mask)[:, None]  # (nW, h, N, N)
    if self.is_mutable_collection(INTERMEDIATES):  # the maps are wanted: materialize them
      out, probs = dot_product_attention(qkv[0], qkv[1], qkv[2], scale=hd ** -0.5, bias=bias, return_probs=True)
      self.sow(INTERMEDIATES, "attention", probs.reshape(b * nw, self.num_heads, n, n))
    else:
      out = dot_product_attention(qkv[0], qkv[1], qkv[2], scale=hd ** -0.5, bias=bias)
    out = out.transpose(0, 1, 3, 2, 4).reshape(b, nw, n, c)
    return nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.truncated_normal(0.02), name="proj")(out)


class SwinBlock(nn.Module):
  """Swin block on a (B, H, W, C) map: x + DropPath(W-MSA(LN(x))), then x + DropPath(MLP(LN(x)))."""
  num_heads: int
  window_size: int = 7
  shift_size: int = 0
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: np.ndarray | None, deterministic: bool = True) -> jax.Array:
    """x (B, H, W, C) -> (B, H, W, C); `mask` is the shifted-window mask (used when shift_size > 0)."""
    b, h, wd, c = x.shape
    w, s = self.window_size, self.shift_size
    shortcut = x
    x = layer_norm("norm1", LAYER_NORM_EPS, self.dtype)(x)
    x = jnp.pad(x, ((0, 0), (0, -h % w), (0, -wd % w), (0, 0)))
    hp, wp = x.shape[1:3]
    if s > 0:
      x = jnp.roll(x, (-s, -s), axis=(1, 2))
    x = WindowAttention(self.num_heads, w, self.qkv_bias, dtype=self.dtype, name="attn")(
        window_partition(x, w), mask if s > 0 else None)
    x = window_reverse(x, w, hp, wp)
    if s > 0:
      x = jnp.roll(x, (s, s), axis=(1, 2))
    x = x[:, :h, :wd]
    drop = DropPath(self.drop_path)
    x = shortcut + drop(x, deterministic)
    y = layer_norm("norm2", LAYER_NORM_EPS, self.dtype)(x)
    y = Mlp(int(c * self.mlp_ratio), c, dtype=self.dtype, name="mlp")(y)
    return x + drop(y, deterministic)


class PatchMerging(nn.Module):
  """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C): 2x2 sub-grid concat, LayerNorm(4C), bias-free Linear."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    x = layer_norm("norm", LAYER_NORM_EPS, self.dtype)(x)
    return nn.Dense(2 * c, use_bias=False, dtype=self.dtype,
                    kernel_init=nn.initializers.truncated_normal(0.02), name="reduction")(x)


class SwinStage(nn.Module):
  """One stage (reference `BasicLayer`): `depth` blocks, alternating regular/shifted windows."""
  depth: int
  num_heads: int
  window_size: int = 7
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_path: Sequence[float] = ()
  downsample: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> tuple[jax.Array, jax.Array | None]:
    """x (B, H, W, C) -> (stage output (B, H, W, C), merged (B, ceil(H/2), ceil(W/2), 2C) or None)."""
    w = self.window_size
    shift = w // 2
    mask = shifted_window_mask(x.shape[1], x.shape[2], w, shift) if shift > 0 else None
    for i in range(self.depth):
      rate = self.drop_path[i] if self.drop_path else 0.0
      x = SwinBlock(self.num_heads, w, 0 if i % 2 == 0 else shift, self.mlp_ratio, self.qkv_bias, rate,
                    dtype=self.dtype, name=f"blocks_{i}")(x, mask, deterministic)
    merged = PatchMerging(dtype=self.dtype, name="downsample")(x) if self.downsample else None
    return x, merged


class SwinTransformer(nn.Module):
  """D2SwinTransformer: Swin backbone returning {"res2".."res5": NHWC maps} after per-stage LayerNorms.

  Attributes:
    embed_dim: C of stage 1 (96 T/S, 128 B, 192 L); stage i has C * 2^i channels.
    depths: blocks per stage.
    num_heads: heads per stage.
    window_size: 7 (224-px checkpoints) or 12 (384-px checkpoints).
    mlp_ratio: MLP hidden width / C (4).
    qkv_bias: bias on qkv (True).
    drop_path_rate: final stochastic-depth rate (training only).
    patch_size: 4.
    patch_norm: LayerNorm after the patch embedding (True).
    out_features: which of res2..res5 to return (None: every stage; all norms exist regardless).
    frozen_stages: -1 none; 0 the patch embedding; k >= 2 also layers_0..layers_{k-2} (reference
      semantics; stop_gradient on their outputs, their norm{i} stay trainable).
    dtype: compute dtype (params stay float32).
  """
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 7
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_path_rate: float = 0.0
  patch_size: int = 4
  patch_norm: bool = True
  out_features: Sequence[str] | None = None
  frozen_stages: int = -1
  dtype: Any = jnp.float32

  def _check(self) -> None:
    if len(self.depths) != len(self.num_heads) or not self.depths:
      raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} must be non-empty and of equal "
                       "length")
    if self.window_size < 1:
      raise ValueError(f"window_size must be >= 1, got {self.window_size}")
    unknown = set(self.out_features or ()) - set(OUT_NAMES[:len(self.depths)])
    if unknown:
      raise ValueError(f"out_features must be a subset of {OUT_NAMES[:len(self.depths)]}, got {self.out_features}")

  @property
  def num_features(self) -> tuple[int, ...]:
    """Channels of each stage's output."""
    return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Runs the backbone.

    Args:
      images: (B, H, W, 3) normalized images, any H, W (padded internally as the reference).
      train: enables stochastic depth (requires a "dropout" RNG).
    Returns:
      {"res{i+2}": (B, H_i, W_i, C * 2^i)} with H_0 = ceil(H / 4), H_{i+1} = ceil(H_i / 2).
    """
    self._check()
    if images.ndim != 4:
      raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
    x = PatchEmbed(self.patch_size, self.embed_dim, self.patch_norm, dtype=self.dtype, name="patch_embed")(images)
    if self.frozen_stages >= 0:
      x = jax.lax.stop_gradient(x)
    rates = drop_path_rates(self.depths, self.drop_path_rate)
    outputs = {}
    num_stages = len(self.depths)
    for i in range(num_stages):
      out, x = SwinStage(self.depths[i], self.num_heads[i], self.window_size, self.mlp_ratio, self.qkv_bias,
                         tuple(rates[i]), downsample=i < num_stages - 1, dtype=self.dtype,
                         name=f"layers_{i}")(x, deterministic=not train)
      if self.frozen_stages >= i + 2:
        out = jax.lax.stop_gradient(out)
        x = None if x is None else jax.lax.stop_gradient(x)
      out = layer_norm(f"norm{i}", LAYER_NORM_EPS, self.dtype)(out)
      if self.out_features is None or OUT_NAMES[i] in self.out_features:
        outputs[OUT_NAMES[i]] = out
    return outputs


def swin(name: str = "swin_tiny", **overrides) -> SwinTransformer:
  """Builds a named Swin ("swin_tiny", ..., "swin_large"); `overrides` set SwinTransformer fields."""
  if name not in SWIN_VARIANTS:
    raise ValueError(f"name must be one of {sorted(SWIN_VARIANTS)}, got {name!r}")
  return SwinTransformer(**{**SWIN_VARIANTS[name], **overrides})
