"""The text transformer of OpenAI CLIP (ViT-B/16 by default): an exact port of `encode_text`.

- `x = token_embedding[ids] + positional_embedding[:L]`.
- `layers` pre-LN residual blocks: `x += out_proj(attn(ln_1 x))` with a causal mask and a
  packed [q; k; v] input projection; `x += c_proj(QuickGELU(c_fc(ln_2 x)))`,
  QuickGELU(x) = x * sigmoid(1.702 x). LayerNorm eps 1e-5, computed in float32.
- `ln_final`, then the feature at the end-of-text token — the position of the largest id
  in each row (EOT = 49407 is the largest id of the vocabulary) — times `text_projection`
  (no bias, no normalization).

The reference always runs the full 77-position context. With the causal mask a position
never sees later ones, so running only the first L <= 77 positions (e.g. the longest
prompt of a batch) gives the same features at those positions and the same pooled
embedding as long as every EOT lies within them.
"""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from dinoseg.ops.attention import dot_product_attention

LAYER_NORM_EPS = 1e-5
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408

# Name -> ClipTextTransformer keyword arguments.
CLIP_TEXT_VARIANTS: dict[str, dict[str, Any]] = {
    "clip_vitb16_text": dict(vocab_size=VOCAB_SIZE, context_length=CONTEXT_LENGTH, width=512,
                             num_heads=8, depth=12, embed_dim=512),
}


@flax.struct.dataclass
class ClipTextOutput:
  """Outputs of the CLIP text transformer (B prompts, L positions, W width, E embedding dim).

  Attributes:
    text_embeds: (B, E) EOT feature after `text_projection` (reference `encode_text`).
    token_features: (B, L, W) all positions after `ln_final`.
    projected_tokens: (B, L, E) `token_features @ text_projection` (Talk2DINO's
      `clip_txt_out_tokens`).
    eot_index: (B,) int32 position of the pooled token (argmax of the ids).
  """
  text_embeds: jax.Array
  token_features: jax.Array
  projected_tokens: jax.Array
  eot_index: jax.Array


def quick_gelu(x: jax.Array) -> jax.Array:
  """x * sigmoid(1.702 x) (CLIP's activation)."""
  return x * jax.nn.sigmoid(1.702 * x)


def _layer_norm(name: str) -> nn.LayerNorm:
  # float32 statistics and output, two-pass variance, like CLIP's fp16-safe LayerNorm.
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, dtype=jnp.float32, name=name)


def causal_mask(length: int) -> jax.Array:
  """(L, L) bool, True where query i may attend key j (j <= i)."""
  return jnp.tril(jnp.ones((length, length), bool))


class MultiheadSelfAttention(nn.Module):
  """`nn.MultiheadAttention` self-attention: packed in_proj (rows [q; k; v]) and out_proj."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x (B, L, W), mask (L, L) bool (True = attend) -> (B, L, W)."""
    b, length, width = x.shape
    head_dim = width // self.num_heads
    qkv = nn.Dense(3 * width, dtype=self.dtype, name="in_proj")(x)
    qkv = qkv.reshape(b, length, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, L, hd)
    out = dot_product_attention(q, k, v, scale=head_dim ** -0.5, mask=mask)
    out = out.transpose(0, 2, 1, 3).reshape(b, length, width)
    return nn.Dense(width, dtype=self.dtype, name="out_proj")(out)


class ResidualAttentionBlock(nn.Module):
  """Pre-LN block: causal self-attention and a QuickGELU MLP (4x width)."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    width = x.shape[-1]
    h = _layer_norm("ln_1")(x).astype(self.dtype)
    x = x + MultiheadSelfAttention(self.num_heads, dtype=self.dtype, name="attn")(h, mask)
    h = _layer_norm("ln_2")(x).astype(self.dtype)
    h = quick_gelu(nn.Dense(4 * width, dtype=self.dtype, name="c_fc")(h))
    return x + nn.Dense(width, dtype=self.dtype, name="c_proj")(h)


class ClipTextTransformer(nn.Module):
  """CLIP text encoder.

  Attributes:
    vocab_size: token embedding rows (49408).
    context_length: number of positions of `positional_embedding` (77).
    width: transformer width W.
    num_heads: attention heads.
    depth: number of residual blocks.
    embed_dim: output embedding dim E (`text_projection` is (W, E)).
    dtype: compute dtype (float32 by default; LayerNorms and the softmax stay float32).
  """
  vocab_size: int = VOCAB_SIZE
  context_length: int = CONTEXT_LENGTH
  width: int = 512
  num_heads: int = 8
  depth: int = 12
  embed_dim: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array) -> ClipTextOutput:
    """Encodes token ids.

    Args:
      ids: (B, L) integer token ids from the CLIP tokenizer, L <= context_length, zero-padded
        after EOT (the pooled position is the argmax of each row).
    Returns:
      ClipTextOutput.
    """
    if ids.ndim != 2:
      raise ValueError(f"ids must be (B, L), got shape {ids.shape}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"ids must be integers, got {ids.dtype}")
    length = ids.shape[1]
    if not 0 < length <= self.context_length:
      raise ValueError(f"ids length must be in [1, {self.context_length}], got {length}")
    if self.width % self.num_heads:
      raise ValueError(f"width={self.width} is not divisible by num_heads={self.num_heads}")
    embed = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                     name="token_embedding")
    positional = self.param("positional_embedding", nn.initializers.normal(0.01),
                            (self.context_length, self.width))
    text_projection = self.param("text_projection", nn.initializers.normal(self.width ** -0.5),
                                 (self.width, self.embed_dim))
    x = (embed(ids) + positional[:length]).astype(self.dtype)
    mask = causal_mask(length)
    for i in range(self.depth):
      x = ResidualAttentionBlock(self.num_heads, dtype=self.dtype, name=f"resblocks_{i}")(x, mask)
    features = _layer_norm("ln_final")(x).astype(self.dtype)
    eot = jnp.argmax(ids, axis=-1).astype(jnp.int32)
    pooled = jnp.take_along_axis(features, eot[:, None, None], axis=1)[:, 0]
    proj = text_projection.astype(self.dtype)
    return ClipTextOutput(text_embeds=pooled @ proj, token_features=features,
                          projected_tokens=features @ proj, eot_index=eot)


def clip_text(name: str = "clip_vitb16_text", **overrides) -> ClipTextTransformer:
  """Builds a named CLIP text tower; `overrides` set ClipTextTransformer fields."""
  if name not in CLIP_TEXT_VARIANTS:
    raise ValueError(f"name must be one of {sorted(CLIP_TEXT_VARIANTS)}, got {name!r}")
  return ClipTextTransformer(**{**CLIP_TEXT_VARIANTS[name], **overrides})
