"""Attention-head pooling of DINOv2 patch features and the max-score caption <-> head matching.

Talk2DINO reads the last DINOv2 block's queries and keys (the reference hooks the output
of `blocks[-1].attn.qkv`, bias included) and forms, per head h, raw CLS -> patch logits

    A[b, h, p] = (0.125 * q[b, h, CLS]) . k[b, h, patch p]

against the patch keys only (the CLS and register keys are dropped). The scale is the
reference's hard-coded 0.125 (= 64^-0.5 for every hub model, whatever the head width).
Because the softmax below covers patches only, these weights are not the model's attention
probabilities.

- `average_head_pooling`: w = softmax_p(mean_h A); v = mean_p(w * x)          (B, D)
- `disentangled_head_pooling`: w_h = softmax_p(A_h); v_h = mean_p(w_h * x)     (B, H, D)

x are the final-LayerNorm patch tokens. Pooling is a *mean* over patches (a constant 1/N
that the later L2 normalization removes).

`max_score_similarity` (training, `alignment_strategy = max_score`): each caption picks
the head of *its own image* whose (normalized) embedding it matches best, and the (B, B)
cosine matrix is built against those selected head embeddings.
"""
import jax
import jax.numpy as jnp

# The reference multiplies the queries by this constant (hard-coded, not head_dim^-0.5).
REFERENCE_ATTENTION_SCALE = 0.125


def cls_patch_logits(q: jax.Array, k: jax.Array, num_prefix_tokens: int,
                     scale: float = REFERENCE_ATTENTION_SCALE) -> jax.Array:
  """Raw CLS -> patch attention logits of one block.

  Args:
    q: (B, H, T, hd) queries (qkv projection output, unscaled), token order
      [CLS, registers, patches].
    k: (B, H, T, hd) keys.
    num_prefix_tokens: 1 + number of registers (5 for the `_reg` models, 1 otherwise); these
      keys are dropped.
    scale: multiplies the CLS query (the reference's 0.125).
  Returns:
    (B, H, N) logits, N = T - num_prefix_tokens patches.
  """
  if q.ndim != 4 or q.shape != k.shape:
    raise ValueError(f"q and k must both be (B, H, T, hd), got {q.shape} and {k.shape}")
  if not 1 <= num_prefix_tokens < q.shape[2]:
    raise ValueError(f"num_prefix_tokens must be in [1, {q.shape[2]}), got {num_prefix_tokens}")
  cls_q = q[:, :, 0].astype(jnp.float32) * jnp.float32(scale)
  return jnp.einsum("bhd,bhnd->bhn", cls_q, k[:, :, num_prefix_tokens:].astype(jnp.float32))


def _check(logits: jax.Array, patch_tokens: jax.Array) -> jax.Array:
  if logits.ndim != 3:
    raise ValueError(f"logits must be (B, H, N), got shape {logits.shape}")
  b, _, n = logits.shape
  if patch_tokens.ndim == 4:  # (B, h, w, D) patch grid
    patch_tokens = patch_tokens.reshape(patch_tokens.shape[0], -1, patch_tokens.shape[-1])
  if patch_tokens.ndim != 3 or patch_tokens.shape[:2] != (b, n):
    raise ValueError(f"patch_tokens must be (B, N, D) or (B, h, w, D) with B={b}, N={n}, "
                     f"got shape {patch_tokens.shape}")
  return patch_tokens.astype(jnp.float32)


def average_head_pooling(logits: jax.Array, patch_tokens: jax.Array) -> jax.Array:
  """Reference `avg_self_attn_out`: patches pooled with softmax(mean over heads of the logits).

  Args:
    logits: (B, H, N) raw CLS -> patch logits (`cls_patch_logits`).
    patch_tokens: (B, N, D) or (B, h, w, D) final-LayerNorm patch tokens.
  Returns:
    (B, D).
  """
  x = _check(logits, patch_tokens)
  weights = jax.nn.softmax(jnp.mean(logits, axis=1), axis=-1)  # (B, N)
  return jnp.einsum("bn,bnd->bd", weights, x) / x.shape[1]


def disentangled_head_pooling(logits: jax.Array, patch_tokens: jax.Array) -> jax.Array:
  """Reference `disentangled_self_attn`: one pooled embedding per head.

  Args:
    logits: (B, H, N) raw CLS -> patch logits.
    patch_tokens: (B, N, D) or (B, h, w, D).
  Returns:
    (B, H, D).
  """
  x = _check(logits, patch_tokens)
  weights = jax.nn.softmax(logits, axis=-1)  # (B, H, N)
  return jnp.einsum("bhn,bnd->bhd", weights, x) / x.shape[1]


def max_score_similarity(text: jax.Array, heads: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Caption <-> best-head cosine matrix (`compute_similarity`, `max_score`).

  Args:
    text: (B, D) L2-normalized projected captions.
    heads: (B, H, D) L2-normalized per-head image embeddings; row i belongs to caption i's image.
  Returns:
    similarity (B, B) with texts as rows and the selected image embeddings as columns:
      S[i, j] = <t_i, v[j, h*_j]>; and the selected heads h* (B,) int32, where
      h*_i = argmax_h softmax_h(<t_i, v[i, h]>) (the reference's softmax kept: it can only
      matter at exact float ties).
  """
  if text.ndim != 2 or heads.ndim != 3 or heads.shape[0] != text.shape[0] or heads.shape[2] != text.shape[1]:
    raise ValueError(f"text must be (B, D) and heads (B, H, D), got {text.shape} and {heads.shape}")
  scores = jax.nn.softmax(jnp.einsum("bd,bhd->bh", text, heads), axis=-1)
  index = jnp.argmax(scores, axis=-1).astype(jnp.int32)
  selected = jnp.take_along_axis(heads, index[:, None, None], axis=1)[:, 0]  # (B, D)
  return text @ selected.T, index


__all__ = ["cls_patch_logits", "average_head_pooling", "disentangled_head_pooling", "max_score_similarity",
           "REFERENCE_ATTENTION_SCALE"]
