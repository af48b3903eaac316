"""PAMR and background cleaning against the reference (`models/dinotext/pamr.py`; fixtures) and torch transcriptions."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.models.talk2dino.background import clean_background
from dinoseg.models.talk2dino.pamr import neighbour_offsets, pamr, pamr_affinity, pamr_propagate

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "talk2dino" / "pamr_tiny.npz"


def test_pamr_matches_reference():
  z = np.load(FIXTURE)
  image = jnp.asarray(z["image_rgb"].astype(np.float32))
  masks = jnp.asarray(z["masks"])
  assert_close(jax.jit(pamr)(image, masks), z["out/pamr"], name="pamr 10 iters, dilations 1..24")
  assert_close(pamr(image, masks, num_iter=3, dilations=(1, 2)), z["out/pamr_d12_3"], name="pamr 3 iters (1, 2)")


def test_pamr_affinity_is_a_distribution_and_preserves_constants():
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.uniform(0, 255, (9, 11, 3)).astype(np.float32))
  aff = pamr_affinity(image, (1, 3))
  assert aff.shape == (16, 9, 11)
  np.testing.assert_allclose(np.asarray(aff).sum(0), 1.0, rtol=1e-6)
  const = jnp.full((2, 9, 11), 0.25)
  np.testing.assert_allclose(np.asarray(pamr_propagate(const, aff, (1, 3), 4)), 0.25, rtol=1e-6)
  assert neighbour_offsets((2,))[0] == (-2, -2) and neighbour_offsets((2,))[-1] == (2, 2)


def _clean_background_torch(torch, mask, image_feat, self_attn_maps, text_emb, lambda_bg=0.2):
  """The reference formula, transcribed in torch for one window (B = 1)."""
  bs, c, h, w = image_feat.shape
  _, num_classes, _, _ = mask.shape
  hw = h * w
  feat = image_feat.reshape(bs, c, hw)
  head = (self_attn_maps.unsqueeze(2) * feat.unsqueeze(1)).mean(dim=-1)
  head = head / head.norm(dim=-1, keepdim=True)
  sim = (text_emb.unsqueeze(0) @ head.permute(0, 2, 1)).softmax(dim=-1)
  per_class = (self_attn_maps.unsqueeze(1) * sim.unsqueeze(-1)).sum(dim=2) / sim.sum(dim=-1, keepdim=True)
  per_class = per_class.softmax(dim=-1)
  lo, hi = per_class.min().item(), per_class.max().item()
  hi = max(hi, hi - lo)
  per_class = (per_class - lo) / hi
  per_class = per_class * (mask.max() - mask.min()) + mask.min()
  return (mask.reshape(num_classes, hw) + lambda_bg * per_class).reshape(bs, num_classes, h, w) / (1 + lambda_bg)


def test_clean_background_matches_torch_transcription(torch):
  rng = np.random.default_rng(3)
  n, c, heads, h, w = 4, 8, 3, 5, 6
  masks = rng.uniform(0.3, 0.7, (n, h, w)).astype(np.float32)
  feats = rng.normal(size=(h, w, c)).astype(np.float32)
  logits = rng.normal(size=(heads, h * w)).astype(np.float32)
  text = rng.normal(size=(n, c)).astype(np.float32)
  text /= np.linalg.norm(text, axis=-1, keepdims=True)
  expected = _clean_background_torch(torch, torch.tensor(masks)[None], torch.tensor(feats).permute(2, 0, 1)[None],
                                     torch.tensor(logits)[None], torch.tensor(text))
  got = clean_background(jnp.asarray(masks), jnp.asarray(feats), jnp.asarray(logits), jnp.asarray(text))
  assert_close(got, expected[0].numpy(), name="cleaned masks")


@pytest.mark.parametrize("bad", [
    lambda: pamr(jnp.zeros((4, 5, 3)), jnp.zeros((2, 4, 6))),
    lambda: pamr_affinity(jnp.zeros((4, 5)), (1,)),
    lambda: pamr_affinity(jnp.zeros((4, 5, 3)), (0, 1)),
    lambda: pamr_propagate(jnp.zeros((2, 4, 5)), jnp.zeros((8, 4, 5)), (1,), -1),
    lambda: pamr_propagate(jnp.zeros((2, 4, 5)), jnp.zeros((7, 4, 5)), (1,), 1),
    lambda: clean_background(jnp.zeros((2, 3, 3)), jnp.zeros((3, 3, 4)), jnp.zeros((2, 8)), jnp.zeros((2, 4))),
    lambda: clean_background(jnp.zeros((2, 3, 3)), jnp.zeros((3, 3, 4)), jnp.zeros((2, 9)), jnp.zeros((3, 4))),
])
def test_bad_input_raises_value_error(bad):
  with pytest.raises(ValueError):
    bad()
