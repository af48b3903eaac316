"""Normalized focal loss (RITM `NormalizedFocalLossSigmoid`), the only SegNext training loss.

Per sample, with p = sigmoid(logits), label y in {0, 1} and ignore label -1:
  p_t   = 1 - |y - p| on valid pixels (1 on ignored ones)
  beta  = (1 - p_t)^gamma * mult,  mult = stop_gradient(#valid / (sum(beta_raw) + eps))
  alpha = alpha for y > 0.5, 1 - alpha otherwise (0 on ignored pixels)
  loss  = sum(-alpha * beta * log(min(p_t + eps, 1))) / (#valid + eps)
and the batch loss is the mean over samples (the reference's `torch.mean` of the per-sample
vector). `mult` rescales the focal weights so that they sum to the number of valid pixels.
"""
import jax
import jax.numpy as jnp

from dinoseg.ops._checks import check_same_shape


def normalized_focal_loss(logits: jax.Array, labels: jax.Array, *, alpha: float = 0.5, gamma: float = 2.0,
                          eps: float = 1e-12, ignore_label: float = -1.0,
                          sample_valid: jax.Array | None = None) -> jax.Array:
  """Mean over samples of the per-sample normalized focal loss.

  Args:
    logits: (B, H, W) mask logits.
    labels: (B, H, W) float targets in {0, 1}, `ignore_label` where ignored.
    alpha, gamma, eps: the reference's parameters (SegNext: alpha 0.5, gamma 2).
    sample_valid: optional (B,) bool; invalid samples (batch padding) are left out of the mean.
  Returns:
    scalar float32.
  """
  check_same_shape("logits", logits, "labels", labels)
  if logits.ndim != 3:
    raise ValueError(f"logits must have shape (B, H, W), got {logits.shape}")
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  prob = jax.nn.sigmoid(logits)
  weight = labels != ignore_label
  weight_f = weight.astype(jnp.float32)
  a = jnp.where(labels > 0.5, alpha * weight_f, (1 - alpha) * weight_f)
  p_t = jnp.where(weight, 1.0 - jnp.abs(labels - prob), 1.0)
  beta = (1.0 - p_t) ** gamma
  mult = jnp.sum(weight_f, axis=(1, 2), keepdims=True) / (jnp.sum(beta, axis=(1, 2), keepdims=True) + eps)
  beta = beta * jax.lax.stop_gradient(mult)
  loss = -a * beta * jnp.log(jnp.minimum(p_t + eps, 1.0)) * weight_f
  per_sample = jnp.sum(loss, axis=(1, 2)) / (jnp.sum(weight_f, axis=(1, 2)) + eps)
  if sample_valid is None:
    return jnp.mean(per_sample)
  sample_valid = sample_valid.astype(jnp.float32)
  return jnp.sum(per_sample * sample_valid) / jnp.maximum(jnp.sum(sample_valid), 1.0)
