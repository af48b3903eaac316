"""Two-stage proposals and mask-enhanced boxes against transcriptions of the reference formulas (torch)."""
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.models.maskdino import query_selection as qs


def test_proposals_match_reference(torch):
  shapes = [(2, 3), (4, 6), (8, 12), (16, 24)]
  props, valid = qs.encoder_output_proposals(shapes)
  ref = []
  for lvl, (h, w) in enumerate(shapes):  # gen_encoder_output_proposals without padding
    gy, gx = torch.meshgrid(torch.linspace(0, h - 1, h), torch.linspace(0, w - 1, w), indexing="ij")
    grid = (torch.stack([gx, gy], -1) + 0.5) / torch.tensor([w, h])
    wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
    ref.append(torch.cat([grid, wh], -1).view(-1, 4))
  ref = torch.cat(ref)
  ok = ((ref > 0.01) & (ref < 0.99)).all(-1)
  logits = torch.log(ref / (1 - ref)).masked_fill(~ok[:, None], float("inf"))
  np.testing.assert_array_equal(valid, ok.numpy())
  np.testing.assert_allclose(props, logits.numpy(), rtol=1e-6)  # inf where invalid, 1 ulp of log elsewhere


def test_mask_boxes_modes(torch):
  m = np.full((1, 3, 6, 8), -1.0, np.float32)
  m[0, 0, 1:3, 2:5] = 1.0
  m[0, 1, 4, 7] = 2.0
  # query 2 empty
  out_bit = np.asarray(qs.mask_boxes(jnp.asarray(m), "bitmask"))
  out_m2b = np.asarray(qs.mask_boxes(jnp.asarray(m), "mask2box"))
  def inv(x):
    x = np.clip(x, 0, 1)
    return np.log(np.maximum(x, 1e-5) / np.maximum(1 - x, 1e-5))
  def cxcywh(x0, y0, x1, y1):
    return np.array([(x0 + x1) / 2 / 8, (y0 + y1) / 2 / 6, (x1 - x0) / 8, (y1 - y0) / 6])
  np.testing.assert_allclose(out_bit[0, 0], inv(cxcywh(2, 1, 5, 3)), rtol=1e-6)
  np.testing.assert_allclose(out_m2b[0, 0], inv(cxcywh(2, 1, 4, 2)), rtol=1e-6)
  np.testing.assert_allclose(out_bit[0, 2], inv(np.zeros(4)), rtol=1e-6)
  np.testing.assert_allclose(out_m2b[0, 2], inv(cxcywh(1e8, 1e8, 0, 0)), rtol=1e-6)  # reference's empty mask
  with pytest.raises(ValueError, match="mode"):
    qs.mask_boxes(jnp.asarray(m), "no")


def test_topk_too_many():
  with pytest.raises(ValueError, match="num_queries"):
    qs.select_topk(jnp.zeros((1, 5)), 6)
