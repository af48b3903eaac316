"""DINOv's visual prompt encoder ("visual prompt extractor", reference `prepare_visual_prompt` /
`prepare_for_visual_query` in `dinov/body/decoder/dinov_{openset,refer}_decoder.py`).

Every visual prompt (point, box, scribble or mask) is a binary mask on the padded image canvas. Its
embedding starts from one learned token (`content_tokens`, query position `pos_embed`) that attends,
level by level in the decoder's order (coarse -> fine), to that level's flattened encoder features:
one `CrossAttentionLayer` per level (multi-head attention, key = value = memory without position,
residual, post-norm LayerNorm, no FFN). The attention of a prompt is restricted to its mask: the mask
is resized by successive bilinear steps (align_corners=False) from the canvas size H x W through
H/2, H/4, ... down to the finest level and then level by level, and keys where the resized value is
<= 0 are blocked; a prompt whose row would be fully blocked (an empty mask) attends everywhere.
Resizing straight to each level gives different values, which is why the steps are kept.

Class prompts of the generic task average the embeddings of several examples (`average_prompts`).
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinoseg.models.maskdino.decoder import MultiheadAttention
from dinoseg.models.maskdino.layers import torch_layer_norm
from dinoseg.ops import interpolate


def resize_steps(mask_hw: tuple[int, int], level_shapes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
  """The reference's sequence of bilinear resize targets for prompt masks of size `mask_hw`.

  Args:
    mask_hw: (H, W) of the prompt masks (the padded canvas).
    level_shapes: the encoder levels' (h, w) in encoder order (finest first for low2high).
  Returns:
    [(H/2, W/2), (H/4, W/4), ...] halvings while they stay above the first level, then `level_shapes`.
  """
  h, w = mask_hw
  steps = int(math.log(int(h / level_shapes[0][0]), 2))
  return [(int(h / 2 ** i), int(w / 2 ** i)) for i in range(1, steps)] + [tuple(s) for s in level_shapes]


def key_masks(prompt_masks: jax.Array, level_shapes: Sequence[tuple[int, int]]) -> list[jax.Array]:
  """Per-level cross-attention masks of the prompts (True = blocked), encoder level order.

  Args:
    prompt_masks: (B, K, H, W) prompt masks on the canvas (bool or {0, 1} float).
    level_shapes: the encoder levels' (h, w), encoder order.
  Returns:
    one (B, K, h_l * w_l) bool array per level: blocked where the successively resized mask is <= 0,
    nowhere for a prompt that would be blocked everywhere.
  """
  x = prompt_masks.astype(jnp.float32)
  resized = []
  for size in resize_steps(x.shape[-2:], level_shapes):
    x = interpolate(x, size, mode="bilinear", axes=(-2, -1))
    resized.append(x)
  out = []
  for x in resized[-len(level_shapes):]:
    blocked = x.reshape(x.shape[:2] + (-1,)) <= 0
    out.append(blocked & ~jnp.all(blocked, axis=-1, keepdims=True))
  return out


class CrossAttentionLayer(nn.Module):
  """The reference `CrossAttentionLayer` (post-norm, dropout 0): `multihead_attn`, `norm`."""
  d_model: int = 256
  nhead: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tgt, memory, mask, query_pos):
    """tgt, query_pos (B, K, d); memory (B, S, d); mask (B, 1, K, S) bool, True = blocked -> (B, K, d)."""
    tgt2 = MultiheadAttention(self.d_model, self.nhead, self.dtype, name="multihead_attn")(
        tgt + query_pos, memory, memory, mask)
    return torch_layer_norm("norm", self.dtype)(tgt + tgt2)


class PromptEncoder(nn.Module):
  """Prompt masks -> prompt embeddings.

  Params (reference keys under `predictor.`): `content_tokens` (1, d), `pos_embed` (1, d),
  `project_cross_attention_layers_{i}` (one CrossAttentionLayer per feature level, decoder order).
  """
  hidden_dim: int = 256
  nheads: int = 8
  num_levels: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, multi_scale: Sequence[jax.Array], prompt_masks: jax.Array) -> jax.Array:
    """Encodes prompt masks.

    Args:
      multi_scale: the pixel decoder's levels in encoder order, each (B, h_l, w_l, d).
      prompt_masks: (B, K, H, W) binary masks on the padded canvas (K = a static prompt budget;
        unused slots may hold anything, their embeddings are ignored by the caller).
    Returns:
      (B, K, d) prompt embeddings.
    """
    if len(multi_scale) != self.num_levels:
      raise ValueError(f"expected {self.num_levels} feature levels, got {len(multi_scale)}")
    d = self.hidden_dim
    content = nn.Embed(1, d, embedding_init=nn.initializers.normal(1.0), name="content_tokens").embedding
    pos = nn.Embed(1, d, embedding_init=nn.initializers.normal(1.0), name="pos_embed").embedding
    b, k = prompt_masks.shape[:2]
    shapes = [tuple(x.shape[1:3]) for x in multi_scale]
    masks = key_masks(prompt_masks, shapes)
    tokens = jnp.broadcast_to(content[None].astype(self.dtype), (b, k, d))
    query_pos = jnp.broadcast_to(pos[None].astype(self.dtype), (b, k, d))
    for i, (level, mask) in enumerate(zip(multi_scale[::-1], masks[::-1])):  # decoder order: coarse -> fine
      memory = level.reshape(b, -1, d).astype(self.dtype)
      tokens = CrossAttentionLayer(d, self.nheads, self.dtype, name=f"project_cross_attention_layers_{i}")(
          tokens, memory, mask[:, None], query_pos)
    return tokens.astype(jnp.float32)


def average_prompts(embeddings: jax.Array, members: jax.Array) -> jax.Array:
  """Class prompts as averages of example embeddings (the generic task's training prompts).

  Args:
    embeddings: (..., M, d) example embeddings (e.g. the batch's prompts flattened to M = B * T).
    members: (K, M) bool or {0, 1}: example m belongs to class prompt k.
  Returns:
    (..., K, d): the mean of each class's examples (zeros for a class without examples).
  """
  w = members.astype(jnp.float32)
  total = jnp.einsum("km,...md->...kd", w, embeddings.astype(jnp.float32))
  return total / jnp.maximum(w.sum(-1), 1.0)[:, None]


__all__ = ["PromptEncoder", "CrossAttentionLayer", "key_masks", "resize_steps", "average_prompts"]
