"""Denoising queries: the reference's group layout computed on device, noise semantics, padding slots
and the attention mask (vs the reference's `prepare_for_dn` loop, transcribed)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.models import query_groups
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


def _reference_layout(counts, dn_num):
  """The reference's groups: scalar = dn_num // max(counts) (0 -> off), slots g * m + j, j < count."""
  m = max(counts)
  scalar = dn_num // m if m > 0 else 0
  return m, scalar


def _valid(counts, t, rows=None):
  valid = np.zeros((len(counts), t), bool)
  for i, n in enumerate(counts):
    valid[i, (rows[i] if rows else np.arange(n))] = True
  return jnp.asarray(valid)


@pytest.mark.parametrize("counts,t,dn_num", [([3, 2], 100, 100), ([1, 1], 8, 6), ([4, 0], 4, 6), ([0, 0], 5, 10),
                                             ([7, 2], 8, 6), ([5, 5], 5, 100)])
def test_layout_and_mask_equal_the_reference(counts, t, dn_num):
  layout = jax.jit(denoising.group_layout, static_argnums=(1,))(_valid(counts, t), dn_num)
  m, scalar = _reference_layout(counts, dn_num)
  pad = m * scalar
  assert np.asarray(layout["m"]).tolist() == [m] * len(counts)
  assert np.asarray(layout["groups"]).tolist() == [scalar] * len(counts)
  active = np.asarray(layout["active"])
  assert active.sum(1).tolist() == [pad] * len(counts) and active[:, :pad].all()
  matched = np.asarray(layout["matched"])
  for i, n in enumerate(counts):
    want = np.zeros(dn_num, bool)
    for g in range(scalar):
      want[g * m:g * m + n] = True
    np.testing.assert_array_equal(matched[i], want)
    np.testing.assert_array_equal(np.asarray(layout["target"])[i][want], np.tile(np.arange(n), scalar))
  # The composed attention mask, restricted to the active slots, is the reference's.
  q, b = 3, len(counts)
  content = jnp.zeros((b, dn_num, 4))
  dn = query_groups.QueryGroup(name="dn", content=content, boxes=jnp.zeros((b, dn_num, 4)),
                               valid=layout["active"], block=layout["group"], seen_by=("dn",))
  matching = query_groups.QueryGroup(name="queries", content=jnp.zeros((b, q, 4)), boxes=jnp.zeros((b, q, 4)),
                                     valid=jnp.ones((b, q), bool))
  mask = np.asarray(query_groups.attention_mask([dn, matching]))[:, 0]
  keep = np.r_[0:pad, dn_num:dn_num + q]
  for i in range(b):
    np.testing.assert_array_equal(mask[i][np.ix_(keep, keep)], _reference_mask(scalar, m, q) if pad else
                                  np.zeros((q, q), bool))
    assert mask[i][:, pad:dn_num][keep].all()  # inactive slots are seen by no active query


def test_targets_at_any_rows_and_per_chunk_groups():
  valid = _valid([2, 3, 1, 1], 6, rows=[[1, 4], [0, 2, 5], [3], [5]])
  layout = denoising.group_layout(valid, 8)
  assert np.asarray(layout["groups"]).tolist() == [2] * 4  # m = 3 over the batch
  np.testing.assert_array_equal(np.asarray(layout["target"])[1, :6], [0, 2, 5, 0, 2, 5])
  np.testing.assert_array_equal(np.asarray(layout["target"])[0, :2], [1, 4])
  chunked = denoising.group_layout(valid, 8, dn_group_images=2)  # the reference per GPU of 2 images
  assert np.asarray(chunked["m"]).tolist() == [3, 3, 1, 1]
  assert np.asarray(chunked["groups"]).tolist() == [2, 2, 8, 8]
  assert np.asarray(chunked["matched"])[2].tolist() == [True] * 8
  with pytest.raises(ValueError, match="dn_group_images"):
    denoising.group_layout(valid, 8, dn_group_images=3)


def test_noise_content_and_padding(rng):
  b, t, s, c = 2, 4, 9, 7
  labels = jnp.asarray(rng.integers(0, c, (b, t)), jnp.int32)
  boxes = jnp.asarray(rng.uniform(0.2, 0.6, (b, t, 4)), jnp.float32)
  valid = jnp.asarray([[True, True, True, False], [True, False, False, False]])
  noise = denoising.sample_dn_noise(jax.random.key(0), b, s, c)
  table = jnp.asarray(rng.standard_normal((c, 5)), jnp.float32)
  group = denoising.denoising_group(labels, boxes, valid, noise, lambda x: table[x], dn_num=s, noise_scale=0.4)
  assert group.content.shape == (b, s, 5) and group.boxes.shape == (b, s, 4)
  a = group.aux["assignment"]
  matched = np.asarray(a.matched)
  assert matched.sum(1).tolist() == [9, 3]  # m = 3, 3 groups: image 1 has 1 target per group
  assert np.all(np.asarray(group.content)[~matched] == 0) and np.all(np.asarray(group.boxes)[~matched] == 0)
  np.testing.assert_array_equal(np.asarray(a.normalizer_scale), [3.0, 3.0])
  slot_labels = np.take_along_axis(np.asarray(labels), np.asarray(a.target), 1)
  flip = np.asarray(noise.label_u) < 0.2
  noisy = np.where(flip, np.asarray(noise.random_labels), slot_labels)
  np.testing.assert_array_equal(np.asarray(group.content)[matched], np.asarray(table)[noisy][matched])
  # box noise: |delta| <= 0.4 * (w/2, h/2, w, h)
  base = np.take_along_axis(np.asarray(boxes), np.asarray(a.target)[..., None], 1)
  noisy_boxes = np.asarray(jax.nn.sigmoid(group.boxes))
  bound = 0.4 * np.concatenate([base[..., 2:] / 2, base[..., 2:]], -1)
  assert np.all((np.abs(noisy_boxes - base) <= bound + 1e-4)[matched])
  # no noise: exact copies
  same_labels, same_logits = denoising.noised_targets(jnp.asarray(slot_labels), jnp.asarray(base), noise, 0.0)
  np.testing.assert_array_equal(np.asarray(same_labels), slot_labels)
  np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(same_logits)), base, rtol=1e-5)


def test_noise_in_the_group_layout_is_read_as_slots():
  """(B, G, m) noise (the reference's groups) is the same as (B, G * m) slots, padded to dn_num."""
  noise = denoising.sample_dn_noise(jax.random.key(1), 2, 6, 5)
  grouped = denoising.DNNoise(noise.label_u.reshape(2, 2, 3), noise.random_labels.reshape(2, 2, 3),
                              noise.box_u.reshape(2, 2, 3, 4))
  slots = grouped.slots(8)
  np.testing.assert_array_equal(slots.label_u[:, :6], noise.label_u)
  np.testing.assert_array_equal(slots.box_u[:, :6], noise.box_u)
  assert slots.label_u.shape == (2, 8) and (np.asarray(slots.label_u[:, 6:]) == 1.0).all()
  with pytest.raises(ValueError, match="more than dn_num"):
    noise.slots(4)
