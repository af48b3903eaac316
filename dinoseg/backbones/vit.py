"""The plain ViT image encoder of SegNext (MAE-style ViT-B/16 with window and global blocks).

A port of uncbiag/SegNext `isegm/model/modeling/models_vit.py` (`VisionTransformer`), same
parameters, same float32 numerics:
- Patch embedding: a 16x16 stride-16 conv with bias (`patch_embed/proj`), tokens row-major.
- `pos_embed` (1, 1 + h*w, C) for the `img_size` grid (64x64 at 1024 px); slot 0 is an unused
  CLS slot, the forward adds `pos_embed[:, 1:]`. No CLS token, no interpolation: inputs must
  be `img_size` (SegNext stretches every image to 1024x1024 first).
- Pre-LN blocks (LayerNorm eps 1e-6), packed qkv with bias (rows [q; k; v], head-major),
  exact-GELU MLP, no relative position bias, no LayerScale, no drop-path.
- Window / global blocks: with `global_atten_freq = f > 1`, block i (1-based) is global if
  i % f == 0 or i is the last block (ViT-B, f = 3: blocks 3, 6, 9, 12); the others attend
  inside non-overlapping windows. The window grid is the reference's: windows per side =
  grid // (window_size_px // patch) (224 px -> 14 tokens), so at 1024 px a 64x64 grid splits
  into 4x4 windows of 16x16 tokens. No padding, no shift. `global_blocks` overrides the rule.
- `fc_norm` exists in the checkpoints but is never applied; it is kept (unused) so conversion
  round-trips exactly.
- Attention probabilities are sown into "intermediates" as `blocks_{i}/attn/attention`, layout
  (B * windows, heads, N, N) for window blocks and (B, heads, N, N) for global blocks, computed
  only while that collection is mutable (`apply(..., mutable=["intermediates"])`).

Methods (call with `model.apply(variables, ..., method=...)`):
- `__call__(images, extra_tokens=None)`: (B, H, W, 3) -> (B, H/16, W/16, C) feature map
  (the reference `forward(x, other_feats, keep_shape=True)` in NHWC).
- `embed(images, extra_tokens=None)`: patch embedding (+ extra_tokens) + position embedding,
  (B, h, w, C). `extra_tokens` is the reference `other_feats` (added before the position
  embedding), e.g. prompt-map embeddings.
- `encode(tokens)`: runs the blocks on (B, h, w, C) tokens.
`VitBlock` and `PatchEmbed` are reusable by SegNext's fusion blocks (LayerNorm eps 1e-5 there)
and its `visual_prompts_encoder`.

Images are NHWC, normalized by the system (SegNext: ImageNet mean/std on the 0-1 scale).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinoseg.backbones.layers import INTERMEDIATES, Mlp, layer_norm
from dinoseg.ops.attention import dot_product_attention

LAYER_NORM_EPS = 1e-6

# Name -> PlainViT keyword arguments (the released SegNext models: ViT-B/16 at 1024, f = 3).
VIT_VARIANTS: dict[str, dict[str, Any]] = {
    "segnext_vit_b": dict(img_size=(1024, 1024), patch_size=16, embed_dim=768, depth=12, num_heads=12,
                          mlp_ratio=4.0, global_atten_freq=3),
}

_XAVIER = nn.initializers.xavier_uniform()


def global_block_indices(depth: int, global_atten_freq: int) -> tuple[int, ...]:
  """0-based indices of the global-attention blocks under the reference rule (see module doc)."""
  if global_atten_freq <= 1:
    return tuple(range(depth))
  return tuple(i for i in range(depth) if (i + 1) % global_atten_freq == 0 or i + 1 == depth)


class PatchEmbed(nn.Module):
  """Conv patch_size x patch_size, stride patch_size, with bias (`proj`): (B, H, W, Cin) -> (B, h, w, C)."""
  patch_size: int = 16
  embed_dim: int = 768
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    p = self.patch_size
    return nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                   kernel_init=_XAVIER, name="proj")(images)


class VitAttention(nn.Module):
  """Multi-head self-attention with a packed qkv projection; sows the probabilities when asked.

  Attributes:
    num_heads: attention heads.
    qkv_bias: bias on qkv.
    fused: never materialize the (B, heads, T, T) probabilities, not even while "intermediates" is
      mutable (nothing is sown). Without it they are computed and sown only while that collection is
      mutable. Either way `dot_product_attention` picks the implementation (cuDNN flash attention on
      GPUs where it applies, query blocks on CPU for large T). Same values up to rounding.
  """
  num_heads: int
  qkv_bias: bool = True
  fused: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, T, C) -> (B, T, C)."""
    b, t, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"width {c} is not divisible by num_heads={self.num_heads}")
    hd = c // self.num_heads
    qkv = nn.Dense(3 * c, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=_XAVIER, name="qkv")(x)
    q, k, v = qkv.reshape(b, t, 3, self.num_heads, hd).transpose(2, 0, 3, 1, 4)  # (B, h, T, hd) each
    if not self.fused and self.is_mutable_collection(INTERMEDIATES):
      out, probs = dot_product_attention(q, k, v, scale=hd ** -0.5, return_probs=True)
      self.sow(INTERMEDIATES, "attention", probs)
    else:
      out = dot_product_attention(q, k, v, scale=hd ** -0.5)
    out = out.transpose(0, 2, 1, 3).reshape(b, t, c)
    return nn.Dense(c, dtype=self.dtype, kernel_init=_XAVIER, name="proj")(out)


class VitBlock(nn.Module):
  """Pre-LN ViT block: x + Attn(LN(x)), then x + MLP(LN(x)) (MAE / SegNext `Block`).

  Attributes:
    num_heads: attention heads.
    mlp_ratio: MLP hidden width / C.
    qkv_bias: bias on qkv.
    norm_eps: LayerNorm eps (1e-6 in the SegNext backbone, 1e-5 in its fusion blocks).
    fused_attention: see `VitAttention.fused`.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  norm_eps: float = LAYER_NORM_EPS
  fused_attention: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, T, C) -> (B, T, C)."""
    c = x.shape[-1]
    x = x + VitAttention(self.num_heads, self.qkv_bias, self.fused_attention, dtype=self.dtype, name="attn")(
        layer_norm("norm1", self.norm_eps, self.dtype)(x))
    y = layer_norm("norm2", self.norm_eps, self.dtype)(x)
    return x + Mlp(int(c * self.mlp_ratio), c, dtype=self.dtype, kernel_init=_XAVIER, name="mlp")(y)


class UnusedLayerNormParams(nn.Module):
  """Declares LayerNorm parameters `scale` / `bias` (C,) that nothing applies (reference `fc_norm`)."""
  features: int

  @nn.compact
  def __call__(self) -> None:
    self.param("scale", nn.initializers.ones, (self.features,), jnp.float32)
    self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)


class PlainViT(nn.Module):
  """SegNext's plain ViT image encoder (see the module docstring).

  Attributes:
    img_size: (H, W) the position embedding is laid out for; inputs must have this size.
    patch_size: 16.
    embed_dim, depth, num_heads, mlp_ratio, qkv_bias: ViT-B = 768, 12, 12, 4, True.
    global_atten_freq: f of the window/global rule (3; <= 1 makes every block global).
    global_blocks: 0-based global block indices; overrides `global_atten_freq` when given.
    window_size_px: the reference's window size in pixels (224): windows per side =
      grid // (window_size_px // patch_size).
    norm_eps: LayerNorm eps of the blocks and fc_norm (1e-6).
    fused_attention: never materialize or sow the attention maps (`VitAttention.fused`), even while
      "intermediates" is mutable.
    dtype: compute dtype (params stay float32).
  """
  img_size: Sequence[int] = (1024, 1024)
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  global_atten_freq: int = 3
  global_blocks: Sequence[int] | None = None
  window_size_px: int = 224
  norm_eps: float = LAYER_NORM_EPS
  fused_attention: bool = False
  dtype: Any = jnp.float32

  @property
  def grid_size(self) -> tuple[int, int]:
    """(h, w) of the token grid."""
    return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

  @property
  def num_windows(self) -> tuple[int, int]:
    """Windows per side (rows, columns) of the window blocks."""
    per_window = self.window_size_px // self.patch_size
    return self.grid_size[0] // per_window, self.grid_size[1] // per_window

  @property
  def global_block_indices(self) -> tuple[int, ...]:
    if self.global_blocks is not None:
      return tuple(self.global_blocks)
    return global_block_indices(self.depth, self.global_atten_freq)

  def _check(self) -> None:
    gh, gw = self.grid_size
    if gh * self.patch_size != self.img_size[0] or gw * self.patch_size != self.img_size[1]:
      raise ValueError(f"img_size {tuple(self.img_size)} must be a multiple of patch_size={self.patch_size}")
    if any(not 0 <= i < self.depth for i in self.global_block_indices):
      raise ValueError(f"global_blocks must be 0-based indices below depth={self.depth}, got {self.global_blocks}")
    if len(self.global_block_indices) < self.depth:
      nh, nw = self.num_windows
      if nh < 1 or nw < 1 or gh % nh or gw % nw:
        raise ValueError(f"a {gh}x{gw} token grid cannot be split into {nh}x{nw} equal windows "
                         f"(window_size_px={self.window_size_px}, patch_size={self.patch_size})")

  def setup(self):
    self._check()
    self.patch_embed = PatchEmbed(self.patch_size, self.embed_dim, dtype=self.dtype)
    gh, gw = self.grid_size
    self.pos_embed = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + gh * gw, self.embed_dim),
                                jnp.float32)
    self.blocks = [VitBlock(self.num_heads, self.mlp_ratio, self.qkv_bias, self.norm_eps, self.fused_attention,
                            dtype=self.dtype, name=f"blocks_{i}") for i in range(self.depth)]
    self.fc_norm = UnusedLayerNormParams(self.embed_dim)

  def embed(self, images: jax.Array, extra_tokens: jax.Array | None = None) -> jax.Array:
    """Patch + position embedding.

    Args:
      images: (B, H, W, Cin) with (H, W) == img_size.
      extra_tokens: optional (B, h, w, C) added to the patch embeddings before the position
        embedding (reference `other_feats`).
    Returns:
      (B, h, w, C) tokens.
    """
    if images.ndim != 4 or tuple(images.shape[1:3]) != tuple(self.img_size):
      raise ValueError(f"images must be (B, {self.img_size[0]}, {self.img_size[1]}, C), got shape {images.shape}")
    self.fc_norm()  # declares the unused fc_norm parameters (computes nothing)
    x = self.patch_embed(images)
    if extra_tokens is not None:
      if extra_tokens.shape != x.shape:
        raise ValueError(f"extra_tokens must have shape {x.shape}, got {extra_tokens.shape}")
      x = x + extra_tokens.astype(x.dtype)
    gh, gw = self.grid_size
    return x + self.pos_embed[:, 1:].reshape(1, gh, gw, self.embed_dim).astype(x.dtype)

  def encode(self, tokens: jax.Array) -> jax.Array:
    """Runs the window/global blocks: (B, h, w, C) -> (B, h, w, C)."""
    b, gh, gw, c = tokens.shape
    if (gh, gw) != self.grid_size:
      raise ValueError(f"tokens must be on the {self.grid_size} grid, got shape {tokens.shape}")
    nh, nw = self.num_windows
    x = tokens
    global_blocks = set(self.global_block_indices)
    for i, block in enumerate(self.blocks):
      if i in global_blocks:
        x = block(x.reshape(b, gh * gw, c)).reshape(b, gh, gw, c)
      else:
        wh, ww = gh // nh, gw // nw
        win = x.reshape(b, nh, wh, nw, ww, c).transpose(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, wh * ww, c)
        win = block(win)
        x = win.reshape(b, nh, nw, wh, ww, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh, gw, c)
    return x

  def __call__(self, images: jax.Array, extra_tokens: jax.Array | None = None) -> jax.Array:
    """(B, H, W, Cin) images -> (B, H/16, W/16, C) features (see `embed` for `extra_tokens`)."""
    return self.encode(self.embed(images, extra_tokens))


def vit(name: str = "segnext_vit_b", **overrides) -> PlainViT:
  """Builds a named plain ViT ("segnext_vit_b"); `overrides` set PlainViT fields."""
  if name not in VIT_VARIANTS:
    raise ValueError(f"name must be one of {sorted(VIT_VARIANTS)}, got {name!r}")
  return PlainViT(**{**VIT_VARIANTS[name], **overrides})
