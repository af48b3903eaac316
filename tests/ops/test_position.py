"""Sine position embeddings and inverse_sigmoid against the reference formulas in PyTorch."""
import math

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.ops import inverse_sigmoid, sine_embedding_for_boxes, sine_position_embedding


def _torch_sine(torch, not_mask, num_feats=128, temperature=10000, normalize=True, scale=2 * math.pi,
                eps=1e-6, offset=0.0):
  """Mask2Former PositionEmbeddingSine.forward (with DINO's optional offset), NCHW out."""
  y_embed = not_mask.cumsum(1, dtype=torch.float32)
  x_embed = not_mask.cumsum(2, dtype=torch.float32)
  if normalize:
    y_embed = (y_embed - offset) / (y_embed[:, -1:, :] + eps) * scale
    x_embed = (x_embed - offset) / (x_embed[:, :, -1:] + eps) * scale
  dim_t = torch.arange(num_feats, dtype=torch.float32)
  dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
  pos_x = x_embed[:, :, :, None] / dim_t
  pos_y = y_embed[:, :, :, None] / dim_t
  pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
  pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
  return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def _torch_box_sine(torch, pos):
  """DINO gen_sineembed_for_position (d_model 256)."""
  scale = 2 * math.pi
  dim_t = torch.arange(128, dtype=torch.float32)
  dim_t = 10000 ** (2 * (dim_t // 2) / 128)
  def emb(v):
    p = v[:, :, None] * scale / dim_t
    return torch.stack((p[:, :, 0::2].sin(), p[:, :, 1::2].cos()), dim=3).flatten(2)
  parts = [emb(pos[:, :, 1]), emb(pos[:, :, 0])]
  if pos.size(-1) == 4:
    parts += [emb(pos[:, :, 2]), emb(pos[:, :, 3])]
  return torch.cat(parts, dim=2)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_feature_map_embedding(torch, rng, offset):
  valid = np.ones((2, 6, 9), bool)
  valid[1, 4:, :] = False
  valid[1, :, 7:] = False
  ref = _torch_sine(torch, torch.tensor(valid), offset=offset).permute(0, 2, 3, 1).numpy()
  got = np.asarray(sine_position_embedding(jnp.asarray(valid), offset=offset))
  # Padded pixels with offset 0.5 divide by ~eps (sin of ~1e6): compare valid pixels only.
  assert_close(got[valid], ref[valid])
  if offset == 0.0:
    assert_close(got, ref)
  full = sine_position_embedding((6, 9), num_feats=16)
  assert full.shape == (1, 6, 9, 32)
  assert_close(full, _torch_sine(torch, torch.ones(1, 6, 9, dtype=torch.bool), num_feats=16)
               .permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("dims", [2, 4])
def test_box_embedding(torch, rng, dims):
  pos = rng.random((3, 11, dims)).astype(np.float32)
  ref = _torch_box_sine(torch, torch.tensor(pos)).numpy()
  assert_close(sine_embedding_for_boxes(jnp.asarray(pos)), ref)


def test_inverse_sigmoid(torch):
  x = np.array([0.0, 1e-7, 0.3, 0.5, 0.999999, 1.0, -0.2, 1.3], np.float32)
  t = torch.tensor(x).clamp(min=0, max=1)
  ref = torch.log(t.clamp(min=1e-5) / (1 - t).clamp(min=1e-5)).numpy()
  np.testing.assert_allclose(np.asarray(inverse_sigmoid(jnp.asarray(x))), ref, rtol=1e-6)
  y = jnp.asarray([0.1, 0.7])
  np.testing.assert_allclose(np.asarray(1 / (1 + jnp.exp(-inverse_sigmoid(y)))), np.asarray(y), rtol=1e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match="boxes"):
    sine_embedding_for_boxes(jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="mask_or_hw"):
    sine_position_embedding(jnp.zeros((4, 4)))
