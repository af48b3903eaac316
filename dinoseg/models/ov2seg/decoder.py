"""OV2Seg's transformer decoder: Mask2Former's masked-attention decoder with a class-agnostic objectness
head and a zero-shot classifier (reference `mask2former_transformer_decoder.py` and `zero_shot_classifier.py`
of haochenheheda/LVVIS; shared/reference/ov2seg.md section 1).

Computation (dropout 0, post-norm, no input projection: the pixel decoder already gives hidden_dim channels):
- Memory of level l (coarse -> fine, the pixel decoder's order): its tokens + `level_embed[l]`; keys also get
  the normalised sine position encoding of the level's grid (hidden_dim / 2 features per axis, y first).
- Queries: `query_feat` (Q, d) as content, `query_embed` (Q, d) added to queries and keys as position.
- Prediction heads (run on the learnable queries before layer 1 and after every layer: L + 1 predictions)
  read `decoder_norm(output)`:
    objectness = object_embed MLP (d -> d -> 2), mask = <mask_embed MLP (3 layers), mask features>,
    class logits = ZeroShotClassifier (below); the attention mask of the next layer is the mask logits
    resized bilinearly (align_corners=False) to that layer's level, blocked where sigmoid < 0.5, with
    rows blocked everywhere unblocked.
- Layer i reads level i mod 3: masked cross-attention -> `norm`; self-attention (q = k = output + query_embed)
  -> `norm`; FFN (ReLU) -> `norm`.
- `embeddings` = decoder_norm(last output): the reference's `pred_embds`, used by the video association.

ZeroShotClassifier: x -> Linear(d, E/2) -> ReLU -> Linear(E/2, E) -> L2-normalise -> x temperature (50), dot
with the class embeddings (C, E), each row L2-normalised (F.normalize, eps 1e-12), plus a zero background
column: logits (..., C + 1) with the last one always 0. The class embeddings are a call argument, never a
parameter (the reference's `zs_weight` buffer), so the vocabulary changes without retraining. A zero row
(e.g. vocabulary padding) gives logit 0, like the background column.

Parameter names mirror the reference keys (convert.py): `transformer_{cross,self}_attention_layers_{i}`,
`transformer_ffn_layers_{i}`, `decoder_norm`, `query_feat`, `query_embed`, `level_embed` (Embed
`embedding`), `class_embed/linear_{0,2}`, `object_embed/layers_{0,1}`, `mask_embed/layers_{0,1,2}`.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinoseg.models.maskdino.decoder import MultiheadAttention
from dinoseg.models.maskdino.layers import MLP, dense, torch_layer_norm, xavier_uniform
from dinoseg.ops import interpolate, sine_position_embedding

NUM_FEATURE_LEVELS = 3


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """torch.nn.functional.normalize(x, p=2, dim=axis): x / max(||x||, eps)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def attention_mask(mask_logits: jax.Array, size: tuple[int, int]) -> jax.Array:
  """The masked-attention mask of the next layer.

  Args:
    mask_logits: (B, Q, H, W) mask logits of the previous prediction.
    size: (h, w) of the level the next layer attends to.
  Returns:
    (B, 1, Q, h * w) bool, True = blocked (sigmoid < 0.5 after a bilinear resize), no row blocked everywhere.
  """
  resized = interpolate(mask_logits, size, mode="bilinear", axes=(-2, -1))
  blocked = jax.nn.sigmoid(resized).reshape(resized.shape[:2] + (-1,)) < 0.5
  blocked = blocked & ~jnp.all(blocked, axis=-1, keepdims=True)
  return jax.lax.stop_gradient(blocked)[:, None]


class ZeroShotClassifier(nn.Module):
  """Projection to the class-embedding space, cosine similarity x temperature (module docstring).

  Attributes:
    embed_dim: class-embedding width E (512); the hidden layer is E / 2 wide.
    temperature: the logit scale (50).
  """
  embed_dim: int = 512
  temperature: float = 50.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, class_embeddings: jax.Array) -> jax.Array:
    """x (B, Q, d), class_embeddings (C, E) -> logits (B, Q, C + 1), the last column 0 (background)."""
    if class_embeddings.ndim != 2 or class_embeddings.shape[-1] != self.embed_dim:
      raise ValueError(f"class_embeddings must be (C, {self.embed_dim}), got shape {class_embeddings.shape}")
    h = nn.relu(dense(self.embed_dim // 2, x.shape[-1], "linear_0", dtype=self.dtype)(x))
    z = dense(self.embed_dim, self.embed_dim // 2, "linear_2", dtype=self.dtype)(h).astype(jnp.float32)
    z = self.temperature * l2_normalize(z)
    weights = l2_normalize(class_embeddings.astype(jnp.float32))
    weights = jnp.concatenate([weights, jnp.zeros((1, self.embed_dim), jnp.float32)], 0)
    return jnp.einsum("bqe,ce->bqc", z, weights)


class CrossAttentionLayer(nn.Module):
  """The reference `CrossAttentionLayer` (post-norm): `multihead_attn`, `norm`; keys carry the position
  encoding, values do not."""
  d_model: int = 256
  nhead: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tgt: jax.Array, memory: jax.Array, pos: jax.Array, mask: jax.Array | None,
               query_pos: jax.Array) -> jax.Array:
    """tgt, query_pos (B, Q, d); memory (B, S, d); pos (1 or B, S, d); mask (B, 1, Q, S) bool, True = blocked
    -> (B, Q, d)."""
    tgt2 = MultiheadAttention(self.d_model, self.nhead, self.dtype, name="multihead_attn")(
        tgt + query_pos, memory + pos, memory, mask)
    return torch_layer_norm("norm", self.dtype)(tgt + tgt2)


class SelfAttentionLayer(nn.Module):
  """The reference `SelfAttentionLayer` (post-norm): `self_attn`, `norm`."""
  d_model: int = 256
  nhead: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tgt: jax.Array, query_pos: jax.Array) -> jax.Array:
    """tgt, query_pos (B, Q, d) -> (B, Q, d)."""
    q = tgt + query_pos
    tgt2 = MultiheadAttention(self.d_model, self.nhead, self.dtype, name="self_attn")(q, q, tgt)
    return torch_layer_norm("norm", self.dtype)(tgt + tgt2)


class FFNLayer(nn.Module):
  """The reference `FFNLayer` (post-norm, ReLU): `linear1`, `linear2`, `norm`."""
  d_model: int = 256
  dim_feedforward: int = 2048
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tgt: jax.Array) -> jax.Array:
    """tgt (B, Q, d) -> (B, Q, d)."""
    h = nn.relu(dense(self.dim_feedforward, self.d_model, "linear1", kernel_init=xavier_uniform,
                      dtype=self.dtype)(tgt))
    tgt2 = dense(self.d_model, self.dim_feedforward, "linear2", kernel_init=xavier_uniform, dtype=self.dtype)(h)
    return torch_layer_norm("norm", self.dtype)(tgt + tgt2)


class MaskedAttentionDecoder(nn.Module):
  """Mask2Former's MultiScaleMaskedTransformerDecoder with OV2Seg's heads (module docstring).

  Attributes:
    hidden_dim: d (256); num_queries: Q (100); nheads: 8; dim_feedforward: 2048.
    dec_layers: transformer layers L (6 = the reference's DEC_LAYERS 7 minus the initial prediction).
    mask_dim: mask-feature channels (256).
    embed_dim / temperature: the zero-shot classifier's class-embedding width (512) and scale (50).
  """
  hidden_dim: int = 256
  num_queries: int = 100
  nheads: int = 8
  dim_feedforward: int = 2048
  dec_layers: int = 6
  mask_dim: int = 256
  embed_dim: int = 512
  temperature: float = 50.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, multi_scale: Sequence[jax.Array], mask_features: jax.Array, class_embeddings: jax.Array):
    """Runs the decoder.

    Args:
      multi_scale: 3 maps (B, h_l, w_l, d), coarse -> fine (the pixel decoder's order).
      mask_features: (B, H/4, W/4, mask_dim).
      class_embeddings: (C, embed_dim) one row per class (normalised here).
    Returns:
      logits (P, B, Q, C + 1), objectness (P, B, Q, 2), masks (P, B, Q, H/4, W/4) for the P = L + 1
      predictions (the first from the learnable queries), embeddings (B, Q, d) = decoder_norm of the
      last layer's output. All float32.
    """
    if len(multi_scale) != NUM_FEATURE_LEVELS:
      raise ValueError(f"multi_scale must hold {NUM_FEATURE_LEVELS} levels, got {len(multi_scale)}")
    d = self.hidden_dim
    for lvl, x in enumerate(multi_scale):
      if x.ndim != 4 or x.shape[-1] != d:
        raise ValueError(f"multi_scale[{lvl}] must be (B, h, w, {d}), got shape {x.shape}")
    b = multi_scale[0].shape[0]
    embed = lambda name, n: nn.Embed(n, d, embedding_init=nn.initializers.normal(1.0),  # noqa: E731
                                     param_dtype=jnp.float32, name=name).embedding
    level_embed = embed("level_embed", NUM_FEATURE_LEVELS)
    query_feat = embed("query_feat", self.num_queries)
    query_embed = embed("query_embed", self.num_queries)
    memories, positions, sizes = [], [], []
    for lvl, x in enumerate(multi_scale):
      h, w = int(x.shape[1]), int(x.shape[2])
      sizes.append((h, w))
      positions.append(sine_position_embedding((h, w), num_feats=d // 2).reshape(1, h * w, d).astype(self.dtype))
      memories.append((x.reshape(b, h * w, d) + level_embed[lvl]).astype(self.dtype))
    query_pos = jnp.broadcast_to(query_embed[None], (b, self.num_queries, d)).astype(self.dtype)
    output = jnp.broadcast_to(query_feat[None], (b, self.num_queries, d)).astype(self.dtype)

    decoder_norm = torch_layer_norm("decoder_norm", self.dtype)
    object_embed = MLP(d, 2, 2, dtype=self.dtype, name="object_embed")
    mask_embed = MLP(d, self.mask_dim, 3, dtype=self.dtype, name="mask_embed")
    class_embed = ZeroShotClassifier(self.embed_dim, self.temperature, self.dtype, name="class_embed")
    mask_features = mask_features.astype(self.dtype)

    def heads(out, next_size):
      normed = decoder_norm(out)
      objectness = object_embed(normed).astype(jnp.float32)
      masks = jnp.einsum("bqc,bhwc->bqhw", mask_embed(normed), mask_features).astype(jnp.float32)
      logits = class_embed(normed, class_embeddings)
      return logits, objectness, masks, attention_mask(masks, next_size)

    logits, objectness, masks, attn = heads(output, sizes[0])
    predictions = [(logits, objectness, masks)]
    for i in range(self.dec_layers):
      lvl = i % NUM_FEATURE_LEVELS
      output = CrossAttentionLayer(d, self.nheads, self.dtype, name=f"transformer_cross_attention_layers_{i}")(
          output, memories[lvl], positions[lvl], attn, query_pos)
      output = SelfAttentionLayer(d, self.nheads, self.dtype, name=f"transformer_self_attention_layers_{i}")(
          output, query_pos)
      output = FFNLayer(d, self.dim_feedforward, self.dtype, name=f"transformer_ffn_layers_{i}")(output)
      logits, objectness, masks, attn = heads(output, sizes[(i + 1) % NUM_FEATURE_LEVELS])
      predictions.append((logits, objectness, masks))
    logits, objectness, masks = (jnp.stack(p) for p in zip(*predictions))
    embeddings = decoder_norm(output).astype(jnp.float32)
    return logits, objectness, masks, embeddings


__all__ = ["MaskedAttentionDecoder", "ZeroShotClassifier", "CrossAttentionLayer", "SelfAttentionLayer", "FFNLayer",
           "attention_mask", "l2_normalize", "NUM_FEATURE_LEVELS"]
