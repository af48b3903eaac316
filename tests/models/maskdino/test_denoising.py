"""Denoising queries: noise semantics, padding slots and the attention mask (vs the reference's loop)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.models.maskdino import denoising


def _reference_mask(scalar, single_pad, num_queries):
  """The reference's `prepare_for_dn` attention-mask construction, transcribed."""
  pad_size = scalar * single_pad
  n = pad_size + num_queries
  mask = np.zeros((n, n), bool)
  mask[pad_size:, :pad_size] = True
  for i in range(scalar):
    if i == 0:
      mask[single_pad * i:single_pad * (i + 1), single_pad * (i + 1):pad_size] = True
    if i == scalar - 1:
      mask[single_pad * i:single_pad * (i + 1), :single_pad * i] = True
    else:
      mask[single_pad * i:single_pad * (i + 1), single_pad * (i + 1):pad_size] = True
      mask[single_pad * i:single_pad * (i + 1), :single_pad * i] = True
  return mask


@pytest.mark.parametrize("groups,t,q", [(1, 3, 4), (2, 3, 5), (33, 3, 10), (4, 1, 2)])
def test_attention_mask_matches_reference(groups, t, q):
  np.testing.assert_array_equal(denoising.dn_attention_mask(groups, t, q), _reference_mask(groups, t, q))


def test_groups():
  assert denoising.num_dn_groups(100, 3) == 33
  assert denoising.num_dn_groups(100, 101) == 0
  with pytest.raises(ValueError, match="max_instances"):
    denoising.num_dn_groups(100, 0)


def test_noise_and_padding(rng):
  b, t, g, c = 2, 4, 3, 7
  labels = jnp.asarray(rng.integers(0, c, (b, t)), jnp.int32)
  boxes = jnp.asarray(rng.uniform(0.2, 0.6, (b, t, 4)), jnp.float32)
  valid = jnp.asarray([[True, True, True, False], [True, False, False, False]])
  noise = denoising.sample_dn_noise(jax.random.key(0), b, g, t, c)
  table = jnp.asarray(rng.standard_normal((c, 5)), jnp.float32)
  content, box_logits = denoising.dn_queries(labels, boxes, valid, noise, lambda x: table[x], 0.4)
  assert content.shape == (b, g * t, 5) and box_logits.shape == (b, g * t, 4)
  keep = np.repeat(np.asarray(valid)[:, None], g, 1).reshape(b, g * t)
  assert np.all(np.asarray(content)[~keep] == 0) and np.all(np.asarray(box_logits)[~keep] == 0)
  noisy, logits = denoising.noised_targets(labels, boxes, noise, 0.4)
  flip = np.asarray(noise.label_u) < 0.2
  np.testing.assert_array_equal(np.asarray(noisy)[flip], np.asarray(noise.random_labels)[flip])
  np.testing.assert_array_equal(np.asarray(noisy)[~flip], np.repeat(np.asarray(labels)[:, None], g, 1)[~flip])
  # box noise: |delta| <= 0.4 * (w/2, h/2, w, h)
  noisy_boxes = np.asarray(jax.nn.sigmoid(logits))
  base = np.repeat(np.asarray(boxes)[:, None], g, 1)
  bound = 0.4 * np.concatenate([base[..., 2:] / 2, base[..., 2:]], -1)
  assert np.all(np.abs(noisy_boxes - base) <= bound + 1e-4)
  np.testing.assert_array_equal(np.asarray(content)[keep], np.asarray(table[noisy]).reshape(b, g * t, 5)[keep])
  # no noise: exact copies
  same, same_logits = denoising.noised_targets(labels, boxes, noise, 0.0)
  np.testing.assert_array_equal(np.asarray(same), np.repeat(np.asarray(labels)[:, None], g, 1))
