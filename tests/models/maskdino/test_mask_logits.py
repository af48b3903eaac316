"""Factored mask logits (dinoseg/models/maskdino/mask_logits.py) equal sampling the full logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.errors import UserValueError
from dinoseg.models.maskdino import criterion as crit_lib
from dinoseg.models.maskdino import mask_logits
from dinoseg.models.maskdino.model import train_mask_logits
from dinoseg.ops import point_sample


def _factored(seed=0, p=3, b=2, q=5, h=12, w=9, c=4):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return mask_logits.FactoredMasks(jax.random.normal(k1, (p, b, q, c)), jax.random.normal(k2, (b, h, w, c)))


def test_shape_indexing_and_concatenation():
  m = _factored()
  assert m.shape == (3, 2, 5, 12, 9)
  assert m[np.asarray([0, 2])].shape == (2, 2, 5, 12, 9)
  both = mask_logits.concatenate([m, m[:1]])
  assert both.shape == (4, 2, 5, 12, 9)
  np.testing.assert_allclose(both.materialize()[3], m.materialize()[0], rtol=1e-6, atol=1e-6)


def test_points_shared_by_the_queries_equal_sampling_the_full_masks():
  m = _factored()[1]  # (B, Q, C)
  # Points inside, on the border and outside the map (grid_sample's zeros padding).
  points = jax.random.uniform(jax.random.key(1), (2, 40, 2), minval=-0.1, maxval=1.1)
  full = point_sample(m.materialize().transpose(0, 2, 3, 1), points)  # (B, P, Q)
  np.testing.assert_allclose(m.at_shared_points(points), full, rtol=1e-5, atol=1e-5)


def test_rows_at_their_own_points_equal_sampling_their_full_masks():
  m = _factored(p=1)[0]  # (B, Q, C)
  image = jnp.asarray([0, 1, 1, 0], jnp.int32)
  query = jnp.asarray([4, 0, 3, 4], jnp.int32)
  # The losses' points are uniform draws in [0, 1) (their bilinear taps reach at most half a pixel outside).
  points = jax.random.uniform(jax.random.key(2), (4, 30, 2)).at[:, :4].set(jnp.asarray([[0.0, 0.0], [0.0, 1.0],
                                                                                     [1.0, 0.0], [1.0, 1.0]]))
  embed = m.embed[image, query]
  got = mask_logits.sample_rows(mask_logits.tall_features(m.features), (12, 9), image, embed, points)
  full = m.materialize()[image, query]  # (R, h, w)
  np.testing.assert_allclose(got, crit_lib.sample_masks(full, points), rtol=1e-4, atol=1e-5)


def test_the_option_and_its_values():
  assert train_mask_logits({"train_mask_logits": "factored"}) is True
  assert train_mask_logits({"train_mask_logits": "full"}) is False
  assert train_mask_logits({"train_mask_logits": "auto"}) is (jax.default_backend() == "cpu")
  with pytest.raises(UserValueError, match="train_mask_logits"):
    train_mask_logits({"train_mask_logits": "sparse"})
