"""Talk2DINO's background cleaning (`similarity_assignment_weighted`), quirks included.

For one window with raw CLS -> patch logits A (H, P), raw (un-normalized) patch features
F (P, C), normalized class embeddings T (N, C) and sigmoid masks M (N, P):

1. head embeddings e_h = normalize(mean_p(A[h, p] * F[p])) -- weighted by the *raw logits*,
   not a softmax, and normalized without an epsilon;
2. w[n, h] = softmax_h(T_n . e_h);
3. a[n] = softmax_p(sum_h w[n, h] A[h] / sum_h w[n, h]);
4. a <- (a - min a) / max(max a, max a - min a), min and max taken over *all* classes and
   patches of the window (so in practice a division by max a, not by max - min);
5. a <- a * (max M - min M) + min M (again global);
6. M <- (M + lambda * a) / (1 + lambda), lambda = 0.2.

The reference reshapes the masks to (N, P), i.e. it assumes one window at a time; here
the function handles one window and callers `vmap` it over windows, which is what the
reference computes window by window.
"""
import jax
import jax.numpy as jnp

LAMBDA_BG = 0.2


def clean_background(masks: jax.Array, patch_features: jax.Array, attn_logits: jax.Array,
                     text_embeds: jax.Array, lambda_bg: float = LAMBDA_BG) -> jax.Array:
  """Mixes each class mask with a class-conditioned attention map.

  Args:
    masks: (N, h, w) sigmoid patch-text similarities.
    patch_features: (h, w, C) or (P, C) raw patch tokens (final LayerNorm output, not normalized).
    attn_logits: (H, P) raw CLS -> patch logits, P = h * w.
    text_embeds: (N, C) L2-normalized class embeddings.
    lambda_bg: mixing weight.
  Returns:
    (N, h, w) cleaned masks.
  """
  if masks.ndim != 3:
    raise ValueError(f"masks must be (N, h, w), got shape {masks.shape}")
  n, h, w = masks.shape
  p = h * w
  feats = patch_features.reshape(-1, patch_features.shape[-1]).astype(jnp.float32)
  if feats.shape[0] != p:
    raise ValueError(f"patch_features must hold h*w = {p} patches, got shape {patch_features.shape}")
  if attn_logits.ndim != 2 or attn_logits.shape[1] != p:
    raise ValueError(f"attn_logits must be (H, {p}), got shape {attn_logits.shape}")
  if text_embeds.shape != (n, feats.shape[1]):
    raise ValueError(f"text_embeds must be ({n}, {feats.shape[1]}), got shape {text_embeds.shape}")
  attn = attn_logits.astype(jnp.float32)
  head_embed = attn @ feats / p  # (H, C)
  head_embed = head_embed / jnp.linalg.norm(head_embed, axis=-1, keepdims=True)
  head_weights = jax.nn.softmax(text_embeds.astype(jnp.float32) @ head_embed.T, axis=-1)  # (N, H)
  per_class = (head_weights @ attn) / jnp.sum(head_weights, axis=-1, keepdims=True)  # (N, P)
  per_class = jax.nn.softmax(per_class, axis=-1)
  lo, hi = jnp.min(per_class), jnp.max(per_class)
  hi = jnp.maximum(hi, hi - lo)
  per_class = (per_class - lo) / hi
  m = masks.reshape(n, p).astype(jnp.float32)
  per_class = per_class * (jnp.max(m) - jnp.min(m)) + jnp.min(m)
  return ((m + lambda_bg * per_class) / (1 + lambda_bg)).reshape(n, h, w)


__all__ = ["clean_background", "LAMBDA_BG"]
