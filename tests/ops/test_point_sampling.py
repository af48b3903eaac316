"""Importance point sampling against detectron2's procedure (transcribed in PyTorch) on the same draws."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.ops import importance_point_counts, uncertain_point_coords_with_randomness


def _torch_reference(torch, coarse_logits, coords_over, coords_rand, num_points, oversample, importance):
  """detectron2 get_uncertain_point_coords_with_randomness with the uniform draws passed in."""
  logits = torch.tensor(coarse_logits)[:, None]  # (N, 1, H, W)
  over = torch.tensor(coords_over)
  n = logits.shape[0]
  point_logits = torch.nn.functional.grid_sample(logits, 2.0 * over[:, :, None] - 1.0, align_corners=False)[..., 0]
  uncertainties = -point_logits.abs()  # calculate_uncertainty
  num_uncertain = int(importance * num_points)
  idx = torch.topk(uncertainties[:, 0, :], k=num_uncertain, dim=1)[1]
  shift = int(num_points * oversample) * torch.arange(n, dtype=torch.long)
  idx = idx + shift[:, None]
  chosen = over.view(-1, 2)[idx.view(-1), :].view(n, num_uncertain, 2)
  return torch.cat([chosen, torch.tensor(coords_rand)], dim=1).numpy()


@pytest.mark.parametrize("num_points,oversample,importance", [(50, 3.0, 0.75), (37, 2.0, 0.0), (20, 1.0, 1.0)])
def test_matches_detectron2_on_the_same_draws(torch, rng, num_points, oversample, importance):
  logits = rng.standard_normal((4, 16, 12)).astype(np.float32)
  key = jax.random.key(3)
  out = uncertain_point_coords_with_randomness(key, jnp.asarray(logits), num_points=num_points,
                                               oversample_ratio=oversample, importance_sample_ratio=importance)
  num_sampled, _, num_random = importance_point_counts(num_points, oversample, importance)
  k1, k2 = jax.random.split(key)
  over = np.asarray(jax.random.uniform(k1, (4, num_sampled, 2)))
  rand = np.asarray(jax.random.uniform(k2, (4, num_random, 2)))
  ref = _torch_reference(torch, logits, over, rand, num_points, oversample, importance)
  assert out.shape == (4, num_points, 2)
  assert_close(out, ref)


def test_jit_and_no_gradient_through_coords(rng):
  logits = jnp.asarray(rng.standard_normal((2, 8, 8)).astype(np.float32))
  f = jax.jit(lambda k, x: uncertain_point_coords_with_randomness(
      k, x, num_points=12, oversample_ratio=3.0, importance_sample_ratio=0.75).sum())
  assert np.isfinite(float(f(jax.random.key(0), logits)))
  g = jax.grad(lambda x: f(jax.random.key(0), x))(logits)
  assert float(jnp.abs(g).max()) == 0.0


@pytest.mark.parametrize("kwargs,arg", [
    (dict(num_points=10, oversample_ratio=0.5, importance_sample_ratio=0.5), "oversample_ratio"),
    (dict(num_points=10, oversample_ratio=2.0, importance_sample_ratio=1.5), "importance_sample_ratio"),
    (dict(num_points=0, oversample_ratio=2.0, importance_sample_ratio=0.5), "num_points"),
])
def test_bad_arguments(kwargs, arg):
  with pytest.raises(ValueError, match=arg):
    uncertain_point_coords_with_randomness(jax.random.key(0), jnp.zeros((1, 4, 4)), **kwargs)
  with pytest.raises(ValueError, match="coarse_logits"):
    uncertain_point_coords_with_randomness(jax.random.key(0), jnp.zeros((4, 4)), num_points=4,
                                           oversample_ratio=2.0, importance_sample_ratio=0.5)


@pytest.mark.parametrize("case", ["normal", "ties", "signed_zeros_and_infs", "k_edges"])
def test_largest_k_indices_is_the_set_top_k_picks(case):
  """`largest_k_indices` selects exactly lax.top_k's indices (ties: lowest index first), in index order."""
  from dinoseg.ops import largest_k_indices  # noqa: PLC0415
  rng = np.random.default_rng(3)
  if case == "normal":
    x, ks = rng.normal(size=(6, 257)).astype(np.float32) * 10.0 ** rng.integers(-30, 30, (6, 1)), (1, 64, 200)
  elif case == "ties":  # many equal values, so the k-th value is tied and the lowest indices must win
    x, ks = rng.integers(-3, 4, size=(5, 100)).astype(np.float32), (1, 17, 50, 99)
  elif case == "signed_zeros_and_infs":
    x = rng.choice(np.asarray([-np.inf, -1.0, -0.0, 0.0, 1e-38, 2.0, np.inf], np.float32), size=(4, 64))
    ks = (3, 32, 63)
  else:
    x, ks = rng.normal(size=(2, 3, 40)).astype(np.float32), (0, 40)
  for k in ks:
    got = np.asarray(jax.jit(largest_k_indices, static_argnums=1)(jnp.asarray(x), k))
    _, want = jax.lax.top_k(jnp.asarray(x), k)
    assert got.shape == x.shape[:-1] + (k,) and got.dtype == np.int32
    np.testing.assert_array_equal(got, np.sort(np.asarray(want), axis=-1), err_msg=f"{case} k={k}")
  with pytest.raises(ValueError, match="k must be"):
    largest_k_indices(jnp.zeros((2, 5)), 6)
