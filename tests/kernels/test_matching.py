"""Assignment (dinoseg.matching): device Hungarian and host scipy against
scipy.optimize.linear_sum_assignment; output convention; sharded host path on 8 fake devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from scipy.optimize import linear_sum_assignment

from dinoseg import matching, parallel

hungarian = jax.jit(lambda c, v: matching.assign(c, v, matcher="hungarian_device"))
host = jax.jit(lambda c, v: matching.assign(c, v, matcher="scipy_host"))


def _scipy_total(cost, valid):
  """Optimal total cost per image over the valid columns (float64)."""
  totals = []
  for c, v in zip(cost, valid):
    sub = np.asarray(c, np.float64)[:, np.asarray(v)]
    if sub.shape[1] == 0 or sub.shape[0] == 0:
      totals.append(0.0)
      continue
    r, k = linear_sum_assignment(sub)
    totals.append(sub[r, k].sum())
  return np.array(totals)


def _check(result: matching.Matching, cost, valid, rtol=1e-6):
  """Exact optimum, consistent fields, one query per target and one target per query."""
  cost, valid = np.asarray(cost, np.float64), np.asarray(valid)
  b, q, t = cost.shape
  pred, tgt, ok, inverse = (np.asarray(x) for x in (result.pred_index, result.target_index, result.valid,
                                                    result.target_of_pred))
  assert pred.shape == tgt.shape == ok.shape == (b, t) and inverse.shape == (b, q)
  np.testing.assert_array_equal(tgt, np.broadcast_to(np.arange(t), (b, t)))
  assert not np.any(ok & ~valid)
  np.testing.assert_array_equal(ok.sum(1), np.minimum(valid.sum(1), q))
  for i in range(b):
    rows = pred[i][ok[i]]
    assert len(set(rows.tolist())) == len(rows)
    expected_inverse = np.full(q, -1)
    expected_inverse[rows] = np.flatnonzero(ok[i])
    np.testing.assert_array_equal(inverse[i], expected_inverse)
  totals = np.array([cost[i][pred[i][ok[i]], np.flatnonzero(ok[i])].sum() for i in range(b)])
  np.testing.assert_allclose(totals, _scipy_total(cost, valid), rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("solver", [hungarian, host], ids=["hungarian_device", "scipy_host"])
def test_random_rectangular(solver, rng):
  cost = rng.normal(size=(6, 12, 5)).astype(np.float32)
  valid = rng.uniform(size=(6, 5)) > 0.3
  valid[0] = False  # No target at all.
  valid[1] = True
  _check(solver(cost, valid), cost, valid)


@pytest.mark.parametrize("solver", [hungarian, host], ids=["hungarian_device", "scipy_host"])
def test_fewer_queries_than_targets(solver, rng):
  cost = rng.uniform(size=(3, 4, 7)).astype(np.float32)
  valid = np.ones((3, 7), bool)
  valid[1, :4] = False  # 3 real targets for 4 queries.
  _check(solver(cost, valid), cost, valid)


@pytest.mark.parametrize("solver", [hungarian, host], ids=["hungarian_device", "scipy_host"])
def test_ties_and_large_costs(solver, rng):
  ties = rng.integers(0, 3, size=(2, 12, 5)).astype(np.float32)  # Many equal costs.
  constant = np.full((1, 12, 5), 7.0, np.float32)
  large = (rng.uniform(size=(3, 12, 5)) * 1e7 + 1e8).astype(np.float32)  # Large offset and spread.
  cost = np.concatenate([ties, constant, large])
  valid = np.ones((6, 5), bool)
  valid[4, 3] = False
  _check(solver(cost, valid), cost, valid)


@pytest.mark.parametrize("solver", [hungarian, host], ids=["hungarian_device", "scipy_host"])
def test_padded_columns_with_pad_cost_and_non_finite(solver, rng):
  """matching_cost's huge pad_cost and stray NaN / inf entries do not disturb the optimum."""
  cost = rng.uniform(size=(6, 12, 5)).astype(np.float32)  # The shape of the tests above: one compile.
  valid = np.array([[1, 0, 1, 1, 0], [1, 1, 1, 1, 0]] * 3, bool)
  cost = np.where(valid[:, None, :], cost, 1e6).astype(np.float32)
  dirty = cost.copy()
  dirty[0, 0, 1] = np.nan  # In padded columns only: valid columns must stay comparable to scipy.
  dirty[1, 3, 4] = np.inf
  _check(solver(dirty, valid), cost, valid)


@pytest.mark.parametrize("matcher", list(matching.MATCHERS))
def test_zero_targets(matcher):
  result = matching.assign(jnp.zeros((2, 5, 0)), jnp.zeros((2, 0), bool), matcher=matcher)
  assert result.pred_index.shape == (2, 0) and result.target_of_pred.shape == (2, 5)
  assert np.all(np.asarray(result.target_of_pred) == -1)


def test_device_hungarian_vmaps_over_layers(rng):
  """The device matcher vmaps (e.g. over decoder layers) and jits without retracing per batch."""
  cost = rng.normal(size=(3, 2, 10, 4)).astype(np.float32)
  valid = np.ones((2, 4), bool)
  out = jax.jit(jax.vmap(lambda c: matching.assign(c, valid).pred_index))(cost)
  for layer in range(3):  # Continuous random costs: a unique optimum, so scipy's indices.
    np.testing.assert_array_equal(out[layer], host(cost[layer], valid).pred_index)


def test_matching_end_to_end(rng):
  """match() = matching_cost() + assign(), with the reference's use of the result."""
  b, q, c, t, k = 2, 8, 5, 3, 16
  kwargs = dict(pred_logits=rng.normal(size=(b, q, c)).astype(np.float32),
                pred_boxes=rng.uniform(0.2, 0.8, size=(b, q, 4)).astype(np.float32),
                target_labels=rng.integers(0, c, size=(b, t)), target_boxes=rng.uniform(0.2, 0.8, size=(b, t, 4)),
                target_valid=np.array([[1, 1, 0], [1, 1, 1]], bool))
  result = jax.jit(lambda kw: matching.match(**kw, matcher="scipy_host"))(kwargs)
  cost = matching.matching_cost(**kwargs, impl="xla")
  _check(result, cost, kwargs["target_valid"], rtol=1e-5)


def _counting_solver(monkeypatch):
  calls = []
  original = matching.solve_on_host

  def counted(cost, valid):
    calls.append(np.shape(cost)[0])
    return original(cost, valid)

  monkeypatch.setattr(matching, "solve_on_host", counted)
  return calls


@pytest.mark.parametrize("mesh_spec,expected_calls", [({"data": 8}, [2] * 8), ({"data": 4, "tensor": 2}, [4] * 4)])
def test_sharded_host_matcher_equals_single_device(mesh_spec, expected_calls, rng, monkeypatch):
  """On 8 devices each batch shard is solved once, locally; tensor replicas do not call the host."""
  calls = _counting_solver(monkeypatch)
  cost = rng.normal(size=(16, 12, 5)).astype(np.float32)
  valid = rng.uniform(size=(16, 5)) > 0.2
  single = matching.assign(cost, valid, matcher="scipy_host")
  calls.clear()
  mesh = parallel.make_mesh(mesh_spec)
  sharding = NamedSharding(mesh, P("data"))
  cost_s, valid_s = jax.device_put(cost, sharding), jax.device_put(valid, sharding)
  sharded = jax.jit(lambda c, v: matching.assign(c, v, matcher="scipy_host", mesh=mesh))(cost_s, valid_s)
  jax.block_until_ready(sharded)
  assert sorted(calls) == expected_calls
  for field in ("pred_index", "valid", "target_of_pred"):
    np.testing.assert_array_equal(getattr(sharded, field), getattr(single, field))
  # The same with the mesh taken from the context.
  with jax.set_mesh(mesh):
    in_context = jax.jit(lambda c, v: matching.assign(c, v, matcher="scipy_host"))(cost_s, valid_s)
  np.testing.assert_array_equal(in_context.pred_index, single.pred_index)


def test_device_hungarian_sharded_equals_single_device(rng):
  cost = rng.normal(size=(16, 10, 4)).astype(np.float32)
  valid = np.ones((16, 4), bool)
  mesh = parallel.make_mesh({"data": 8})
  cost_s = jax.device_put(cost, NamedSharding(mesh, P("data")))
  sharded = hungarian(cost_s, valid)
  assert sharded.pred_index.sharding.spec[0] == "data"  # Each device solved its own images.
  np.testing.assert_array_equal(sharded.pred_index, host(cost, valid).pred_index)


def test_bad_arguments(rng):
  cost = rng.normal(size=(4, 6, 3)).astype(np.float32)
  valid = np.ones((4, 3), bool)
  with pytest.raises(ValueError, match="matcher"):
    matching.assign(cost, valid, matcher="greedy")
  with pytest.raises(ValueError, match="cost"):
    matching.assign(cost[0], valid)
  with pytest.raises(ValueError, match="target_valid"):
    matching.assign(cost, valid[:, :2])
  with pytest.raises(ValueError, match="divisible"):
    matching.assign(cost[:3], valid[:3], matcher="scipy_host", mesh=parallel.make_mesh({"data": 8}))
