"""Prompt maps (reference DistMaps rounding and disks; boxes; scribbles) and frame resizes (torch oracle).

Every function under test runs jitted (one compile instead of one per primitive op in eager mode).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.models.segnext import prompts as prompt_lib
from dinoseg.models.segnext import resize
from dinoseg.models.segnext.predictor import CPU_FAST_COMPILE

_jit = functools.partial(jax.jit, compiler_options=CPU_FAST_COMPILE)
click_maps = _jit(prompt_lib.click_maps, static_argnums=(2, 3))
box_map = _jit(prompt_lib.box_map, static_argnums=2)
scribble_maps = _jit(prompt_lib.scribble_maps, static_argnums=(3, 4))
to_model_frame = _jit(resize.to_model_frame, static_argnums=2)
to_original_frame = _jit(resize.to_original_frame, static_argnums=2)


def _reference_disks(points, orig_hw, size, radius=5):
  """The reference get_prompt_feats rounding + DistMaps(use_disks=True), transcribed with float32 numpy."""
  points = np.array(points, np.float32)
  out = np.zeros((points.shape[0], 2, size, size), np.float32)
  n = points.shape[1] // 2
  rows, cols = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32), indexing="ij")
  for b in range(points.shape[0]):
    for j in range(points.shape[1]):
      if points[b, j, 2] > -1:
        for axis, extent in ((0, orig_hw[b][0]), (1, orig_hw[b][1])):
          points[b, j, axis] = int(np.float32(points[b, j, axis]) * np.float32(size / extent) + np.float32(0.5))
    for polarity in range(2):
      d = np.full((size, size), np.inf, np.float32)
      for j in range(polarity * n, (polarity + 1) * n):
        y, x = points[b, j, :2]
        dist = (rows - y) ** 2 + (cols - x) ** 2
        if max(y, x) < 0:
          dist = np.full_like(dist, 1e6)
        d = np.minimum(d, dist)
      out[b, polarity] = d <= radius ** 2
  return out.transpose(0, 2, 3, 1)


def test_click_maps_equal_reference_rounding_and_disks():
  points = [[[0, 0, 0], [96, 130, 2], [50.0, 7.0, 3], [-1, -1, -1]],
            [[33, 44, 1], [-1, -1, -1], [10, 120, 0], [-1, -1, -1]]]
  hw = [(97, 131), (480, 854)]
  got = click_maps(jnp.asarray(points, jnp.float32), jnp.asarray(hw), 112, 5.0)
  np.testing.assert_array_equal(np.asarray(got), _reference_disks(points, hw, 112))
  one = click_maps(jnp.asarray([[[40, 40, 0], [-1, -1, -1]]], jnp.float32), jnp.asarray([[64, 64]]), 64, 5.0)
  assert int(one[0, ..., 0].sum()) == 81 and int(one[0, ..., 1].sum()) == 0


def test_to_model_frame_rounds_like_torch_float32(torch):
  coords = np.arange(0, 2000, dtype=np.float32)
  extents = (97, 480, 854, 1000, 1999)
  mapped = jax.jit(prompt_lib.to_model_frame, static_argnums=2)  # default XLA options, as on the click path
  got = np.asarray(mapped(jnp.asarray(coords)[None], jnp.asarray(extents, jnp.float32)[:, None], 1024))
  for row, extent in zip(got, extents):
    c = coords[coords < extent]
    expected = [int(v * (1024 / extent) + 0.5) for v in torch.from_numpy(c.astype(np.int64))]
    np.testing.assert_array_equal(row[:len(c)].astype(np.int64), expected)


def test_box_map():
  boxes = jnp.asarray([[2, 3, 5, 7], [-1, -1, -1, -1]], jnp.float32)  # (x0, y0, x1, y1)
  m = np.asarray(box_map(boxes, jnp.asarray([[10, 10], [10, 10]]), 20))
  expected = np.zeros((20, 20))
  expected[6:15, 4:11] = 1  # y: 3*2 .. 7*2 ; x: 2*2 .. 5*2 (inclusive)
  np.testing.assert_array_equal(m[0], expected)
  assert m[1].sum() == 0


def test_scribble_maps():
  # A one-vertex scribble is a disk; a horizontal segment is a capsule; polarity goes to its channel.
  scribbles = jnp.asarray([[[[10, 10], [10, 10]], [[30, 5], [30, 25]]]], jnp.float32)  # (1, S=2, K=2, 2)
  labels = jnp.asarray([[1, 0]])
  m = np.asarray(scribble_maps(scribbles, labels, jnp.asarray([[40, 40]]), 40, 2.0))
  yy, xx = np.mgrid[:40, :40]
  np.testing.assert_array_equal(m[0, ..., 0], ((yy - 10) ** 2 + (xx - 10) ** 2 <= 4).astype(np.float32))
  d2 = (yy - 30) ** 2 + np.where(xx < 5, (xx - 5) ** 2, np.where(xx > 25, (xx - 25) ** 2, 0))
  np.testing.assert_array_equal(m[0, ..., 1], (d2 <= 4).astype(np.float32))
  absent = np.asarray(scribble_maps(scribbles, jnp.asarray([[-1, -1]]), jnp.asarray([[40, 40]]), 40, 2.0))
  assert absent.sum() == 0


def test_make_prompts_layout_and_errors():
  p = prompt_lib.make_prompts([[(5, 6, True), (7, 8, False), (9, 10, True)], []], boxes=[None, (1, 2, 3, 4)],
                              scribbles=[[], [([(0, 0), (3, 4), (6, 8)], False)]], scribble_length=2)
  np.testing.assert_array_equal(np.asarray(p.points[0]), [[5, 6, 0], [9, 10, 2], [7, 8, 1], [-1, -1, -1]])
  assert np.all(np.asarray(p.points[1]) == -1)
  np.testing.assert_array_equal(np.asarray(p.boxes), [[-1, -1, -1, -1], [1, 2, 3, 4]])
  np.testing.assert_allclose(np.asarray(p.scribbles[1, 0]), [[0, 0], [6, 8]])  # resampled to 2 vertices
  np.testing.assert_array_equal(np.asarray(p.scribble_labels), [[-1, -1], [0, -1]])
  with pytest.raises(ValueError, match="boxes"):
    prompt_lib.make_prompts([[]], boxes=[(5, 5, 1, 1)])
  with pytest.raises(ValueError, match="num_points"):
    prompt_lib.make_prompts([[(1, 1, True), (2, 2, True)]], num_points=1)
  with pytest.raises(ValueError, match="scribble"):
    prompt_lib.make_prompts([[]], scribbles=[[([], True)]])
  with pytest.raises(ValueError, match="points"):
    prompt_lib.click_maps(jnp.zeros((1, 3, 3)), jnp.asarray([[4, 4]]), 8)


@pytest.mark.parametrize("hw", [(97, 131), (448, 448), (500, 300)])
def test_frame_resizes_equal_torch(torch, hw, rng):
  """Equal up to the source-index rounding: torch's CPU kernel evaluates scale * (i + 0.5) - 0.5 with
  one rounding (a fused multiply-add), float32 arithmetic here rounds twice; the sampling position
  then differs by one float32 ulp of the index (~1.5e-5 of a pixel at index 256)."""
  F = torch.nn.functional
  h, w = hw
  x = rng.random((h, w)).astype(np.float32)
  canvas = np.zeros((1, 512, 512, 1), np.float32)
  canvas[0, :h, :w, 0] = x
  got = to_model_frame(jnp.asarray(canvas), jnp.asarray([[h, w]]), 448)
  ref = F.interpolate(torch.from_numpy(x)[None, None], 448, mode="bilinear", align_corners=False)[0, 0].numpy()
  assert_close(got[0, ..., 0], ref, rtol=5e-5, name="to_model_frame")
  y = rng.standard_normal((1, 448, 448, 1)).astype(np.float32)
  back = np.asarray(to_original_frame(jnp.asarray(y), jnp.asarray([[h, w]]), (512, 512)))
  ref = F.interpolate(torch.from_numpy(y[..., 0])[None], (h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
  assert_close(back[0, :h, :w, 0], ref, rtol=5e-5, name="to_original_frame")
  assert np.all(back[0, h:] == 0) and np.all(back[0, :, w:] == 0)
