"""The XLA matching cost's CPU formulation (issue 19): the grouped softplus row sums and the tanh
sigmoid against float64 NumPy, and no (B, Q, K)-sized intermediate in the compiled CPU program."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.kernels import CostWeights, matching_cost
from dinoseg.kernels.matching_cost.xla import SOFTPLUS_GROUP, sigmoid_via_tanh, softplus_row_sums


def _softplus64(x):
  x = np.asarray(x, np.float64)
  return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


@pytest.mark.parametrize("k", [1, SOFTPLUS_GROUP - 1, SOFTPLUS_GROUP, 3 * SOFTPLUS_GROUP + 5, 12544])
def test_softplus_row_sums_match_float64(k):
  rng = np.random.default_rng(k)
  x = (rng.normal(size=(2, 3, k)) * rng.choice([0.1, 3.0, 40.0], size=(2, 3, 1))).astype(np.float32)
  x[0, 0, :] = -88.0  # every factor rounds to 1: the sum is the tiny exact value, not 0 from cancellation
  got = np.asarray(softplus_row_sums(jnp.asarray(x)))
  assert got.shape == (2, 3, 1)
  want = _softplus64(x).sum(-1, keepdims=True)
  # Row by row: each within float32 rounding of its own magnitude.
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("group", [2, 7, 64, 127])
def test_softplus_row_sums_group_sizes(group):
  rng = np.random.default_rng(group)
  x = rng.normal(scale=5.0, size=(4, 300)).astype(np.float32)
  got = np.asarray(softplus_row_sums(jnp.asarray(x), group))
  np.testing.assert_allclose(got, _softplus64(x).sum(-1, keepdims=True), rtol=2e-6)


def test_softplus_row_sums_non_finite_rows():
  x = np.zeros((3, 40), np.float32)
  x[0, 5], x[1, 17], x[2, 39] = np.inf, np.nan, -np.inf
  got = np.asarray(softplus_row_sums(jnp.asarray(x)))[:, 0]
  assert got[0] == np.inf and np.isnan(got[1])
  np.testing.assert_allclose(got[2], 39 * np.log(2.0), rtol=1e-6)  # softplus(-inf) = 0


def test_sigmoid_via_tanh_matches_float64():
  x = np.concatenate([np.linspace(-120, 120, 20001), [0.0, -1e-30, 1e-30]]).astype(np.float32)
  got = np.asarray(sigmoid_via_tanh(jnp.asarray(x)), np.float64)
  want = 1 / (1 + np.exp(-x.astype(np.float64)))
  assert np.abs(got - want).max() < 2e-7
  assert got.min() >= 0.0 and got.max() <= 1.0


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU program's buffers")
def test_cpu_program_keeps_point_arrays_in_fusions():
  """At Mask DINO's sizes (compiled, not run) no (B, Q, K) intermediate (sigmoid, softplus or a
  broadcast constant) is materialized: XLA computes them inside its fusions. A full-size buffer
  (240 MB here) costs page faults and memory traffic on every call. (At small sizes XLA may pick
  other fusions; this checks the size that the benchmark times.)"""
  b, q, t, c, k = 16, 300, 100, 80, 12544
  shapes = dict(pred_logits=((b, q, c), jnp.float32), pred_boxes=((b, q, 4), jnp.float32),
                pred_mask_points=((b, q, k), jnp.float32), target_labels=((b, t), jnp.int32),
                target_boxes=((b, t, 4), jnp.float32), target_mask_points=((b, t, k), jnp.float32),
                target_valid=((b, t), bool))
  args = {name: jax.ShapeDtypeStruct(s, d) for name, (s, d) in shapes.items()}
  compiled = jax.jit(lambda kw: matching_cost(**kw, weights=CostWeights(), impl="xla")).lower(args).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < b * q * k * 4 // 2, f"{temp} bytes of temporaries for {b * q * k * 4} bytes of point logits"
