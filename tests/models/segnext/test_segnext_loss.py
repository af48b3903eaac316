"""Normalized focal loss equals the reference NormalizedFocalLossSigmoid (value and gradient)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.models.segnext.loss import normalized_focal_loss


def test_equals_reference(segnext_fixture):
  f = segnext_fixture("loss")
  logits, labels = jnp.asarray(f["logits"]), jnp.asarray(f["labels"])
  value, grad = jax.value_and_grad(lambda x: normalized_focal_loss(x, labels, alpha=0.5, gamma=2.0))(logits)
  assert_close(value, f["per_sample"].mean(), rtol=1e-6, name="loss")
  assert_close(grad, f["grad"], rtol=1e-5, name="grad")


def test_sample_valid_and_errors(segnext_fixture):
  f = segnext_fixture("loss")
  logits, labels = jnp.asarray(f["logits"]), jnp.asarray(f["labels"])
  masked = normalized_focal_loss(logits, labels, sample_valid=jnp.asarray([True, False, True]))
  assert_close(masked, f["per_sample"][[0, 2]].mean(), rtol=1e-6, name="masked loss")
  with pytest.raises(ValueError, match="logits"):
    normalized_focal_loss(logits[0], labels[0])
  with pytest.raises(ValueError, match="same shape"):
    normalized_focal_loss(logits, labels[:, :3])
  assert np.isfinite(float(normalized_focal_loss(jnp.full((1, 4, 4), 30.0), jnp.ones((1, 4, 4)))))
