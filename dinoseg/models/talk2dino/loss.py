"""Talk2DINO's symmetric InfoNCE, exactly as the reference computes it (`src/loss.py`).

    logits = exp(logit_scale) * S            S: (B, B) cosines, texts as rows
    loss   = (CE(logits, diag) + CE(logits^T, diag)) / 2 / B^2

- `logit_scale = log(1 / 0.07)` is a float32 constant: the reference keeps it in the loss
  module, outside the optimizer, so the temperature stays 0.07 (scale 14.2857).
- The final division by B^2 is the reference's quirk (`loss / scores.shape[0]**2`). With Adam
  it only matters relative to eps = 1e-8.
- CE is the batch mean (PyTorch `cross_entropy` default).

`valid` supports a padded last batch: padded rows are left out of both cross-entropies
(their columns get -inf logits) and B is the number of valid samples, which equals the
reference on the un-padded batch.
"""
import jax
import jax.numpy as jnp
import numpy as np

TEMPERATURE = 0.07
LOGIT_SCALE = float(np.float32(np.log(1 / TEMPERATURE)))  # the parameter's float32 value


def infonce_loss(similarity: jax.Array, valid: jax.Array | None = None,
                 logit_scale: float = LOGIT_SCALE) -> jax.Array:
  """Symmetric InfoNCE over a square similarity matrix, divided by B^2.

  Args:
    similarity: (B, B) cosine similarities, row i = text i, column j = image j; pairs on the diagonal.
    valid: optional (B,) bool; False marks padding samples.
    logit_scale: log of the inverse temperature (fixed).
  Returns:
    scalar float32 loss.
  """
  if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
    raise ValueError(f"similarity must be a square (B, B) matrix, got shape {similarity.shape}")
  b = similarity.shape[0]
  if valid is None:
    valid = jnp.ones((b,), bool)
  elif valid.shape != (b,):
    raise ValueError(f"valid must have shape ({b},), got {valid.shape}")
  scale = jnp.exp(jnp.float32(logit_scale))
  logits = scale * similarity.astype(jnp.float32)
  pair_valid = valid[:, None] & valid[None, :]
  n = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  diag = jnp.where(valid, jnp.diagonal(logits), 0.0)
  # Rows: each text against all images; columns: each image against all texts. Padding
  # entries are excluded from the log-sum-exps and padded rows/columns contribute 0.
  # (Padded rows/columns keep all their entries so that their log-sum-exp stays finite.)
  lse_rows = jax.nn.logsumexp(logits, axis=1, where=pair_valid | ~valid[:, None])
  lse_cols = jax.nn.logsumexp(logits, axis=0, where=pair_valid | ~valid[None, :])
  ce_rows = jnp.sum(jnp.where(valid, lse_rows - diag, 0.0)) / n
  ce_cols = jnp.sum(jnp.where(valid, lse_cols - diag, 0.0)) / n
  return (ce_rows + ce_cols) / 2 / (n * n)


__all__ = ["infonce_loss", "LOGIT_SCALE", "TEMPERATURE"]
