"""Normalized focal loss equals the reference NormalizedFocalLossSigmoid (value and gradient)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.models.segnext.loss import normalized_focal_loss
from dinoseg.models.segnext.predictor import CPU_FAST_COMPILE


def test_equals_reference(segnext_fixture):
  f = segnext_fixture("loss")
  logits, labels = jnp.asarray(f["logits"]), jnp.asarray(f["labels"])
  value_and_grad = jax.value_and_grad(lambda x, y: normalized_focal_loss(x, y, alpha=0.5, gamma=2.0))
  value, grad = jax.jit(value_and_grad, compiler_options=CPU_FAST_COMPILE)(logits, labels)
  assert_close(value, f["per_sample"].mean(), rtol=1e-6, name="loss")
  assert_close(grad, f["grad"], rtol=1e-5, name="grad")


def test_sample_valid_and_errors(segnext_fixture):
  f = segnext_fixture("loss")
  logits, labels = jnp.asarray(f["logits"]), jnp.asarray(f["labels"])
  loss = jax.jit(lambda x, y, v: normalized_focal_loss(x, y, sample_valid=v), compiler_options=CPU_FAST_COMPILE)
  masked = loss(logits, labels, jnp.asarray([True, False, True]))
  assert_close(masked, f["per_sample"][[0, 2]].mean(), rtol=1e-6, name="masked loss")
  saturated = loss(jnp.full(logits.shape, 30.0), jnp.ones(labels.shape), jnp.ones((3,), bool))
  assert np.isfinite(float(saturated))
  with pytest.raises(ValueError, match="logits"):
    normalized_focal_loss(logits[0], labels[0])
  with pytest.raises(ValueError, match="same shape"):
    normalized_focal_loss(logits, labels[:, :3])
