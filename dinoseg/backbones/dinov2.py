"""DINOv2 vision transformers (ViT-S/B/L/g, patch 14), with and without register tokens.

An exact port of the facebookresearch/dinov2 backbones as torch.hub builds them
(`dinov2_vit{s,b,l,g}14[_reg]`): same parameters, same numerics in float32.

- Patch embedding: a 14x14 stride-14 convolution with bias.
- Tokens: [CLS, registers (no position embedding), patches]. The position embedding of
  the 37x37 training grid (518 px) is resampled with bicubic interpolation when the
  patch grid differs, in one of the reference's two modes:
  * `interpolate_offset > 0` (original models): `scale_factor = ((h + offset) / 37,
    (w + offset) / 37)`, no antialiasing (cubic a = -0.75);
  * `interpolate_offset == 0` (register models): `size = (h, w)` with antialiasing
    (cubic a = -0.5).
  Both are reproduced exactly by `dinoseg.ops.interpolate`.
- Blocks: pre-LN (eps 1e-6), multi-head self-attention with a packed qkv projection,
  LayerScale on both residual branches, an FFN that is either an MLP with exact (erf)
  GELU or, for ViT-g, a fused SwiGLU (hidden size rounded as the reference does).
- Outputs (`DinoV2Output`): the final-LayerNorm CLS token, register tokens and patch
  tokens, the pre-norm tokens, and the last block's per-head q, k and attention
  probabilities (Talk2DINO pools patch features with the CLS->patch attention).

Images are NHWC, already normalized with the ImageNet mean/std, with H and W multiples
of the patch size.
"""
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from dinoseg.ops import interpolate
from dinoseg.ops.attention import dot_product_attention

LAYER_NORM_EPS = 1e-6
PATCH_SIZE = 14
POS_EMBED_GRID = 37  # the hub models are trained at 518 px = 37 x 14
NUM_REGISTERS = 4

_ARCHS = {
    "vits14": dict(embed_dim=384, depth=12, num_heads=6),
    "vitb14": dict(embed_dim=768, depth=12, num_heads=12),
    "vitl14": dict(embed_dim=1024, depth=24, num_heads=16),
    "vitg14": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
}
# Register models use the newer interpolation mode (size=, antialiased, no offset).
_REGISTER_SETTINGS = dict(num_register_tokens=NUM_REGISTERS, interpolate_antialias=True,
                          interpolate_offset=0.0)

# Hub name -> DinoV2 keyword arguments.
DINOV2_VARIANTS: dict[str, dict[str, Any]] = {
    **{f"dinov2_{arch}": dict(kw) for arch, kw in _ARCHS.items()},
    **{f"dinov2_{arch}_reg": dict(kw, **_REGISTER_SETTINGS) for arch, kw in _ARCHS.items()},
}


def swiglu_hidden_dim(embed_dim: int, mlp_ratio: float) -> int:
  """Hidden width of the fused SwiGLU FFN: 2/3 of the MLP width, rounded up to a multiple of 8."""
  hidden = int(embed_dim * mlp_ratio)
  return (int(hidden * 2 / 3) + 7) // 8 * 8


@flax.struct.dataclass
class DinoV2Output:
  """What the DINOv2 backbone returns (B images, T = 1 + R + h*w tokens, D = width).

  Attributes:
    cls_token: (B, D) final-LayerNorm CLS token (reference `x_norm_clstoken`).
    register_tokens: (B, R, D) final-LayerNorm register tokens (`x_norm_regtokens`), R may be 0.
    patch_tokens: (B, h, w, D) final-LayerNorm patch tokens (`x_norm_patchtokens` reshaped
      to the patch grid, row-major as in the reference).
    prenorm: (B, T, D) the last block's output before the final LayerNorm (`x_prenorm`).
    last_q: (B, heads, T, head_dim) queries of the last block (qkv projection output, bias
      included, not scaled).
    last_k: (B, heads, T, head_dim) keys of the last block.
    last_attention: (B, heads, T, T) attention probabilities of the last block,
      softmax(q k^T * head_dim^-0.5) over keys.
    intermediate: final-LayerNorm outputs (B, T, D) of the blocks named by
      `DinoV2.intermediate_layers` (reference `get_intermediate_layers(norm=True)`), in order.
  """
  cls_token: jax.Array
  register_tokens: jax.Array
  patch_tokens: jax.Array
  prenorm: jax.Array
  last_q: jax.Array
  last_k: jax.Array
  last_attention: jax.Array
  intermediate: tuple[jax.Array, ...] = ()


def _layer_norm(name: str, dtype) -> nn.LayerNorm:
  # Two-pass variance, as PyTorch computes it.
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, dtype=dtype, name=name)


class LayerScale(nn.Module):
  """x * gamma, gamma (D,) (reference `ls1` / `ls2`, initialized to 1 like the hub models)."""
  init_value: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],))
    return x * gamma.astype(x.dtype)


class Mlp(nn.Module):
  """fc1 -> exact (erf) GELU -> fc2."""
  hidden_dim: int
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.truncated_normal(0.02)
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=init, name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=init, name="fc2")(x)


class SwiGLU(nn.Module):
  """Fused SwiGLU: w12 -> (x1, x2) halves -> w3(silu(x1) * x2)."""
  hidden_dim: int
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.truncated_normal(0.02)
    x12 = nn.Dense(2 * self.hidden_dim, dtype=self.dtype, kernel_init=init, name="w12")(x)
    x1, x2 = jnp.split(x12, 2, axis=-1)
    return nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=init, name="w3")(nn.silu(x1) * x2)


class Attention(nn.Module):
  """Multi-head self-attention with a packed qkv projection (rows [q; k; v], head-major).

  `query_chunk_size`: see `DinoV2.query_chunk_size`.
  """
  num_heads: int
  query_chunk_size: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, return_maps: bool = False):
    """x (B, T, D) -> (B, T, D); with `return_maps` also (q, k (B, H, T, hd), probs (B, H, T, T))."""
    b, t, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads={self.num_heads}")
    head_dim = d // self.num_heads
    scale = head_dim ** -0.5
    init = nn.initializers.truncated_normal(0.02)
    qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=init, name="qkv")(x)
    qkv = qkv.reshape(b, t, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, hd)
    maps = None
    if return_maps:  # the one block whose probabilities are materialized
      out, probs = dot_product_attention(q, k, v, scale=scale, return_probs=True)
      maps = (q, k, probs)
    else:
      out = dot_product_attention(q, k, v, scale=scale, query_chunk_size=self.query_chunk_size)
    out = out.transpose(0, 2, 1, 3).reshape(b, t, d)
    return nn.Dense(d, dtype=self.dtype, kernel_init=init, name="proj")(out), maps


class Block(nn.Module):
  """Pre-LN transformer block with LayerScale on both residual branches."""
  num_heads: int
  mlp_ratio: float = 4.0
  ffn: str = "mlp"
  query_chunk_size: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, return_maps: bool = False):
    d = x.shape[-1]
    h, maps = Attention(self.num_heads, self.query_chunk_size, dtype=self.dtype, name="attn")(
        _layer_norm("norm1", self.dtype)(x), return_maps=return_maps)
    x = x + LayerScale(name="ls1")(h)
    h = _layer_norm("norm2", self.dtype)(x)
    if self.ffn == "mlp":
      h = Mlp(int(d * self.mlp_ratio), d, dtype=self.dtype, name="mlp")(h)
    else:
      h = SwiGLU(swiglu_hidden_dim(d, self.mlp_ratio), d, dtype=self.dtype, name="mlp")(h)
    x = x + LayerScale(name="ls2")(h)
    return x, maps


class DinoV2(nn.Module):
  """DINOv2 ViT backbone.

  Attributes:
    embed_dim: token width D.
    depth: number of blocks.
    num_heads: attention heads (head dim = D / heads, 64 for all hub models).
    patch_size: patch (and stride) of the patch embedding.
    mlp_ratio: FFN expansion (the SwiGLU hidden size derives from it, see `swiglu_hidden_dim`).
    ffn: "mlp" (exact GELU) or "swiglu" (fused SwiGLU, ViT-g).
    num_register_tokens: 0 or 4 (the `_reg` models).
    pos_embed_grid: side of the square grid the position embedding was trained on.
    interpolate_antialias: antialiased bicubic position-embedding resampling.
    interpolate_offset: > 0: resample with `scale_factor=(h + offset) / grid` (original
      models, 0.1); 0: resample with `size=(h, w)` (register models).
    in_chans: input channels.
    intermediate_layers: block indices whose final-LayerNorm outputs are also returned.
    query_chunk_size: if set, blocks other than the last compute attention for this many
      queries at a time on CPU (`dot_product_attention`'s blocked path: same values, bounded
      memory). None: the function decides (blocked on CPU from 512 tokens; cuDNN or XLA on GPU).
    dtype: compute dtype (float32 by default; bfloat16 as a switch). Parameters stay float32
      and the attention softmax and position-embedding resampling run in float32.
  """
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  patch_size: int = PATCH_SIZE
  mlp_ratio: float = 4.0
  ffn: str = "mlp"
  num_register_tokens: int = 0
  pos_embed_grid: int = POS_EMBED_GRID
  interpolate_antialias: bool = False
  interpolate_offset: float = 0.1
  in_chans: int = 3
  intermediate_layers: Sequence[int] = ()
  query_chunk_size: int | None = None
  dtype: Any = jnp.float32

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def attention_scale(self) -> float:
    """The scale of q k^T in every block (head_dim^-0.5; 0.125 for the hub models)."""
    return self.head_dim ** -0.5

  def _check(self, images, masks):
    if self.ffn not in ("mlp", "swiglu"):
      raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {self.ffn!r}")
    if self.embed_dim % self.num_heads:
      raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
    if self.num_register_tokens < 0:
      raise ValueError(f"num_register_tokens must be >= 0, got {self.num_register_tokens}")
    for i in self.intermediate_layers:
      if not -self.depth <= i < self.depth:
        raise ValueError(f"intermediate_layers entry {i} is out of range for depth {self.depth}")
    if images.ndim != 4 or images.shape[-1] != self.in_chans:
      raise ValueError(f"images must be (B, H, W, {self.in_chans}), got shape {images.shape}")
    h, w = images.shape[1:3]
    if h % self.patch_size or w % self.patch_size or h == 0 or w == 0:
      raise ValueError(f"images height and width must be positive multiples of the patch size "
                       f"{self.patch_size}, got {h}x{w}")
    n = (h // self.patch_size) * (w // self.patch_size)
    if masks is not None and tuple(masks.shape) != (images.shape[0], n):
      raise ValueError(f"masks must be (B, h*w) = {(images.shape[0], n)}, got shape {masks.shape}")

  def interpolate_pos_embed(self, pos_embed: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
    """Resamples the (1, 1 + G*G, D) position embedding to a (h, w) patch grid.

    Returns:
      (1, 1 + h*w, D) float32: the CLS slot unchanged, then the grid resampled row-major.
    """
    g = self.pos_embed_grid
    pos_embed = pos_embed.astype(jnp.float32)
    if tuple(grid_hw) == (g, g):
      return pos_embed
    h, w = grid_hw
    d = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, g, g, d)
    if self.interpolate_offset:
      # float(h + offset) / g in double precision, as the reference computes it.
      factors = (float(h + self.interpolate_offset) / g, float(w + self.interpolate_offset) / g)
      grid = interpolate(grid, scale_factor=factors, mode="bicubic",
                         antialias=self.interpolate_antialias)
    else:
      grid = interpolate(grid, size=(h, w), mode="bicubic", antialias=self.interpolate_antialias)
    if grid.shape[1:3] != (h, w):  # the reference asserts this too
      raise ValueError(f"position-embedding interpolation gave grid {grid.shape[1:3]}, expected {(h, w)}; "
                       f"interpolate_offset={self.interpolate_offset} does not fit grid {g}")
    return jnp.concatenate([pos_embed[:, :1], grid.reshape(1, h * w, d)], axis=1)

  @nn.compact
  def __call__(self, images: jax.Array, masks: jax.Array | None = None) -> DinoV2Output:
    """Runs the backbone.

    Args:
      images: (B, H, W, C) normalized images; H, W multiples of `patch_size`.
      masks: optional (B, h*w) bool; True replaces that patch embedding with `mask_token`
        (iBOT-style masked modelling; unused at inference).
    Returns:
      DinoV2Output.
    """
    self._check(images, masks)
    d, r = self.embed_dim, self.num_register_tokens
    b = images.shape[0]
    grid_hw = (images.shape[1] // self.patch_size, images.shape[2] // self.patch_size)
    n_grid = self.pos_embed_grid * self.pos_embed_grid

    x = nn.Conv(d, (self.patch_size, self.patch_size), strides=(self.patch_size, self.patch_size),
                padding="VALID", dtype=self.dtype, name="patch_embed")(images.astype(self.dtype))
    x = x.reshape(b, -1, d)
    cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d))
    pos_embed = self.param("pos_embed", nn.initializers.truncated_normal(0.02), (1, 1 + n_grid, d))
    mask_token = self.param("mask_token", nn.initializers.zeros, (1, d))
    if masks is not None:
      x = jnp.where(masks[..., None], mask_token.astype(x.dtype)[None], x)
    x = jnp.concatenate([jnp.broadcast_to(cls_token.astype(x.dtype), (b, 1, d)), x], axis=1)
    x = x + self.interpolate_pos_embed(pos_embed, grid_hw).astype(x.dtype)
    if r:
      registers = self.param("register_tokens", nn.initializers.normal(1e-6), (1, r, d))
      x = jnp.concatenate([x[:, :1], jnp.broadcast_to(registers.astype(x.dtype), (b, r, d)), x[:, 1:]],
                          axis=1)

    norm = _layer_norm("norm", self.dtype)
    wanted = {i % self.depth for i in self.intermediate_layers}
    intermediate = {}
    maps = None
    for i in range(self.depth):
      last = i == self.depth - 1
      x, block_maps = Block(self.num_heads, self.mlp_ratio, self.ffn, self.query_chunk_size,
                            dtype=self.dtype, name=f"blocks_{i}")(x, return_maps=last)
      if last:
        maps = block_maps
      if i in wanted:
        intermediate[i] = norm(x)
    x_norm = norm(x)
    q, k, probs = maps
    return DinoV2Output(
        cls_token=x_norm[:, 0],
        register_tokens=x_norm[:, 1:1 + r],
        patch_tokens=x_norm[:, 1 + r:].reshape(b, *grid_hw, d),
        prenorm=x,
        last_q=q,
        last_k=k,
        last_attention=probs,
        intermediate=tuple(intermediate[i % self.depth] for i in self.intermediate_layers))


def dinov2(name: str, **overrides) -> DinoV2:
  """Builds a hub DINOv2 model by name ("dinov2_vitb14_reg", ...); `overrides` set DinoV2 fields."""
  if name not in DINOV2_VARIANTS:
    raise ValueError(f"name must be one of {sorted(DINOV2_VARIANTS)}, got {name!r}")
  return DinoV2(**{**DINOV2_VARIANTS[name], **overrides})
