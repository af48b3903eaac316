"""OV2Seg's criterion vs the reference (fixture from scripts/make_ov2seg_loss_fixtures.py): matcher indices, every
loss term of every prediction and the gradients of the weighted sum w.r.t. the predictions, with the reference's
random draws (matcher points, mask-loss points, federated categories) fed in; and the on-device federated draw."""
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.models.ov2seg import criterion as crit_lib
from dinoseg.models.ov2seg import defaults
from dinoseg.structures import PaddedInstances

MASKDINO_TESTS = pathlib.Path(__file__).resolve().parents[1] / "maskdino"  # Mask DINO's test helpers
if str(MASKDINO_TESTS) not in sys.path:
  sys.path.append(str(MASKDINO_TESTS))
import maskdino_fixtures  # noqa: E402

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "ov2seg"
TOL = 1e-4


@pytest.fixture(scope="module")
def fx():
  with np.load(FIXTURES / "loss_federated.npz") as f:
    return {k: f[k] for k in f.files}


def _criterion(fx, matcher="scipy_host"):
  loss = defaults.loss_config()
  loss.num_points = 64
  loss.matcher = matcher
  return crit_lib.OV2SegCriterion(fx["logits"].shape[-1] - 1, loss, class_weights=fx["class_weights"])


def _draws(fx):
  return maskdino_fixtures.fixture_draws(fx)


def _targets(fx):
  return PaddedInstances(labels=jnp.asarray(fx["gt/labels"]), boxes=jnp.zeros(fx["gt/labels"].shape + (4,)),
                         valid=jnp.asarray(fx["gt/valid"]), masks=jnp.asarray(fx["gt/masks"]))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


@pytest.mark.parametrize("matcher", ["scipy_host", "hungarian_device"])
def test_losses_indices_and_gradients_match_reference(fx, matcher):
  crit = _criterion(fx, matcher)
  targets, draws = _targets(fx), _draws(fx)
  names = ("logits", "objectness", "masks")

  def total(arrays):
    losses, idx = crit(arrays, targets, draws, sampled_categories=fx["sampled"], return_indices=True)
    return crit_lib.total_loss(losses), (losses, idx)

  arrays = {k: jnp.asarray(fx[k]) for k in names}
  grads, (losses, idx) = jax.jit(jax.grad(total, has_aux=True))(arrays)
  ref_losses = {k.split("/", 1)[1]: v for k, v in fx.items() if k.startswith("losses/")}
  assert sorted(losses) == sorted(ref_losses)
  assert len(losses) == 4 * 7
  idx = np.where(fx["gt/valid"][None], np.asarray(idx), -1)
  np.testing.assert_array_equal(idx, fx["indices"])
  for name, ref in ref_losses.items():
    assert _rel(losses[name], ref) <= TOL, (name, float(losses[name]), float(ref))
  for name in names:
    assert _rel(grads[name], fx[f"grad/{name}"]) <= TOL, name


def test_federated_set_contains_the_ground_truth_classes_and_the_drawn_ones(fx):
  crit = _criterion(fx)
  c = crit.num_classes
  tc = jnp.asarray([[5, c, 3, c], [40, 5, c, c]], jnp.int32)
  out = crit.federated_set(tc, None, jnp.asarray(fx["sampled"][0]))
  expected = fx["sampled"][0].copy()
  expected[[3, 5, 40]] = True
  np.testing.assert_array_equal(np.asarray(out), expected)


def test_federated_draw_counts_rare_and_distribution():
  c = 12
  weights = np.arange(c, dtype=np.float32) ** 0.5  # category 0 has weight 0 (like a rare one)
  present = np.zeros(c, bool)
  present[[3, 7]] = True
  draw = jax.jit(jax.vmap(crit_lib.draw_federated_categories, in_axes=(0, None, None, None)))
  u = jax.random.uniform(jax.random.key(0), (20000, c))
  drawn = np.asarray(draw(u, jnp.asarray(present), jnp.asarray(4), jnp.asarray(weights)))
  assert np.all(drawn.sum(1) == 4)
  assert not drawn[:, [0, 3, 7]].any()
  # one draw (num_extra 1): probability ∝ weight among the eligible categories
  first = np.asarray(draw(u, jnp.asarray(present), jnp.asarray(1), jnp.asarray(weights))).mean(0)
  eligible = weights * ~present
  np.testing.assert_allclose(first, eligible / eligible.sum(), atol=0.015)
  # fewer eligible categories than asked: all of them, no error
  few = np.asarray(draw(u[:3], jnp.asarray(present), jnp.asarray(50), jnp.asarray(weights)))
  assert np.all(few.sum(1) == c - 3)


def test_criterion_draws_a_static_number_of_categories_itself(fx):
  crit = _criterion(fx)
  crit.cfg.deep_supervision = False  # the final prediction only (compiles faster)
  targets = _targets(fx)
  arrays = {k: jnp.asarray(fx[k]) for k in ("logits", "objectness", "masks")}
  from dinoseg.models.maskdino.criterion import random_draws
  losses = jax.jit(lambda a, key: crit(a, targets, random_draws(key)))(arrays, jax.random.key(1))
  assert sorted(losses) == sorted(crit_lib.LOSS_NAMES)
  assert all(np.isfinite(float(v)) for v in losses.values())
  # the drawn sets: 4 ground-truth classes + background present -> 45 drawn
  tc = jnp.full((2, 10), crit.num_classes, jnp.int32).at[0, :4].set(jnp.asarray([5, 3, 40, 17]))
  s = crit.federated_set(tc, jax.random.uniform(jax.random.key(2), (crit.num_classes,)))
  assert int(jnp.sum(s)) == 49 and bool(s[3]) and bool(s[40])


def test_padded_targets_never_count(fx):
  """Extra padded target slots (with garbage labels / masks) change nothing."""
  crit = _criterion(fx)
  t = fx["gt/labels"].shape[1]
  extra = 3
  labels = np.concatenate([fx["gt/labels"], np.full((3, extra), 7, np.int32)], 1)
  masks = np.concatenate([fx["gt/masks"], np.ones((3, extra) + fx["gt/masks"].shape[2:], np.uint8)], 1)
  valid = np.concatenate([fx["gt/valid"], np.zeros((3, extra), bool)], 1)
  padded = PaddedInstances(labels=jnp.asarray(labels), boxes=jnp.zeros(labels.shape + (4,)), valid=jnp.asarray(valid),
                           masks=jnp.asarray(masks))
  base = _draws(fx)

  def draws(name, kind, shape):
    if kind in ("cand", "rand"):
      v = base(name, kind, (shape[0], t) + tuple(shape[2:]))
      return jnp.concatenate([v, jnp.full((shape[0], extra) + tuple(shape[2:]), 0.5)], 1)
    return base(name, kind, shape)
  arrays = {k: jnp.asarray(fx[k]) for k in ("logits", "objectness", "masks")}
  losses = jax.jit(lambda a: crit(a, padded, draws, sampled_categories=fx["sampled"]))(arrays)
  for name, value in losses.items():
    assert _rel(value, fx[f"losses/{name}"]) <= TOL, name


def test_category_weights_zero_rare():
  w = crit_lib.federated_category_weights([4, 9, 16], ["f", "r", "c"])
  np.testing.assert_allclose(w, [2.0, 0.0, 4.0])
  with pytest.raises(ValueError):
    crit_lib.federated_category_weights([1, 2], ["f"])
