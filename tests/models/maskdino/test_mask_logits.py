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


def test_factored_mask_terms_equal_the_full_logits_terms_values_and_gradients():
  """The criterion's factored path (per-chunk (rows, h, w) logits from embeddings x features) gives the point BCE
  and dice of the full-logits path on the same points, and the same gradients w.r.t. embeddings and features."""
  from dinoseg.models.maskdino import defaults  # noqa: PLC0415
  loss = defaults.loss_config()
  loss.num_points, loss.mask_row_chunk, loss.factored_mask_row_chunk = 24, 2, 3
  crit = crit_lib.SetCriterion(3, loss)
  m, b, n, t, h, w = 2, 2, 4, 3, 12, 9
  masks = _factored(p=m, b=b, q=n, h=h, w=w)  # slots = queries here: embed (M, B, N, C)
  tmasks = np.zeros((b, t, 2 * h, 2 * w), np.uint8)
  tmasks[:, 0, 4:14, 3:12] = 1
  tmasks[:, 1, 10:20, 0:7] = 1
  tmasks[:, 2, :, 9:] = 1
  target = jnp.asarray([[2, 0, 1, 0], [1, 1, 0, 0]], jnp.int32)
  valid = jnp.asarray([[True, True, True, False], [True, False, True, True]])
  # Points inside and on the border of the map, as the uniform draws of the losses.
  cand = jax.random.uniform(jax.random.key(6), (m, b, n, crit.num_sampled, 2)).at[..., :2, :].set(
      jnp.asarray([[0.0, 0.0], [1.0, 1.0]]))
  rand = jax.random.uniform(jax.random.key(7), (m, b, n, crit.num_random, 2))

  def terms(embed, features, factored):
    if factored:
      bce, dice = crit._mask_slot_terms(embed, target, valid, jnp.asarray(tmasks), cand, rand, features)  # noqa: SLF001
    else:
      full = mask_logits.FactoredMasks(embed, features).materialize()  # (M, B, N, h, w)
      bce, dice = crit._mask_slot_terms(full, target, valid, jnp.asarray(tmasks), cand, rand)  # noqa: SLF001
    return jnp.sum(bce * jnp.arange(1, 1 + m * b * n).reshape(m, b, n)) + 2 * jnp.sum(dice), (bce, dice)

  grads = {}
  for factored in (True, False):
    fn = jax.jit(jax.value_and_grad(lambda e, f: terms(e, f, factored), argnums=(0, 1), has_aux=True))  # noqa: B023
    (_, (bce, dice)), g = fn(masks.embed, masks.features)
    grads[factored] = (bce, dice, *g)
  for got, want in zip(grads[True], grads[False]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  bce, dice = grads[True][:2]
  assert np.all(np.asarray(bce)[:, np.asarray(valid)] > 0)  # (rows of padded slots are masked out by the caller)
  assert float(jnp.abs(grads[True][3]).sum()) > 0


def test_the_option_and_its_values():
  assert train_mask_logits({"train_mask_logits": "factored"}) is True
  assert train_mask_logits({"train_mask_logits": "full"}) is False
  assert train_mask_logits({"train_mask_logits": "auto"}) is (jax.default_backend() == "cpu")
  with pytest.raises(UserValueError, match="train_mask_logits"):
    train_mask_logits({"train_mask_logits": "sparse"})


def test_points_drawn_per_row_inside_the_chunks_equal_the_same_points_given_up_front():
  """With factored logits the mask-loss points come from per-row keys (RandomDraws.row_keys) and are drawn inside
  each chunk; handing the criterion those same points as arrays (the parity fixtures' path) gives equal losses and
  gradients."""
  from dinoseg.models.maskdino import defaults  # noqa: PLC0415
  from dinoseg.structures import PaddedInstances  # noqa: PLC0415
  loss = defaults.loss_config()
  loss.num_points, loss.mask_row_chunk = 24, 2
  crit = crit_lib.SetCriterion(3, loss)
  m, b, q, t, h, w = 2, 2, 5, 4, 12, 9
  masks = _factored(p=m, b=b, q=q, h=h, w=w)
  rng = np.random.default_rng(0)
  tmasks = np.zeros((b, t, 2 * h, 2 * w), np.uint8)
  tmasks[:, :, 4:14, 3:12] = 1
  targets = PaddedInstances(labels=jnp.asarray(rng.integers(0, 3, (b, t)), jnp.int32),
                            boxes=jnp.asarray(rng.uniform(0.2, 0.5, (b, t, 4)), jnp.float32),
                            valid=jnp.asarray([[True, True, False, False], [True, False, False, False]]),
                            masks=jnp.asarray(tmasks))
  logits = jax.random.normal(jax.random.key(3), (m, b, q, 3))
  boxes = jax.nn.sigmoid(jax.random.normal(jax.random.key(4), (m, b, q, 4)))
  lazy = crit_lib.random_draws(jax.random.key(5))
  assert lazy.row_keys("pred0", "cand", (b, t)).dtype == jnp.uint32

  def eager(name, kind, shape):  # the same points, materialised (a provider without row_keys)
    if kind in ("cand", "rand"):
      keys = lazy.row_keys(name, kind, shape[:2])
      return crit_lib.row_points(keys.reshape(-1, keys.shape[-1]), shape[2:]).reshape(shape)
    return lazy(name, kind, shape)

  def total(embed, draws):
    out, _ = crit.matched_losses(["pred0", "pred1"], logits, boxes, mask_logits.FactoredMasks(embed, masks.features),
                                 targets, 3.0, draws)
    return out["loss_mask"].sum() + out["loss_dice"].sum(), out

  (v1, out1), g1 = jax.jit(jax.value_and_grad(lambda e: total(e, lazy), has_aux=True))(masks.embed)
  (v2, out2), g2 = jax.jit(jax.value_and_grad(lambda e: total(e, eager), has_aux=True))(masks.embed)
  assert float(v1) > 0
  for key in ("loss_mask", "loss_dice"):
    np.testing.assert_allclose(out1[key], out2[key], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(g1).sum()) > 0
