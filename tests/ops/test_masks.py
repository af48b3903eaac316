"""RLE / polygon conversions (pycocotools is the COCO reference) and mask paste-back (PyTorch)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close
from pycocotools import mask as coco_mask

from dinoseg.ops import (annotation_to_mask, paste_masks, polygons_to_mask, resize_masks, rle_area, rle_decode,
                         rle_encode, rle_to_xywh)


def test_rle_round_trip_and_area(rng):
  for shape in [(1, 1), (7, 13), (64, 48)]:
    mask = (rng.random(shape) > 0.6).astype(np.uint8)
    rle = rle_encode(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == list(shape)
    np.testing.assert_array_equal(rle_decode(rle), mask)
    assert rle_area(rle) == int(mask.sum())
  empty = rle_encode(np.zeros((5, 6), np.uint8))
  np.testing.assert_array_equal(rle_to_xywh(empty), [0, 0, 0, 0])


def test_uncompressed_rle_and_box():
  # column-major runs: 3 zeros, 2 ones, rest zeros, on a 4x3 image
  rle = {"size": [4, 3], "counts": [3, 2, 7]}
  mask = rle_decode(rle)
  expected = np.zeros((4, 3), np.uint8)
  expected[3, 0] = 1
  expected[0, 1] = 1
  np.testing.assert_array_equal(mask, expected)
  np.testing.assert_array_equal(rle_to_xywh(rle), [0, 0, 2, 4])


def test_polygons_match_pycocotools_and_union():
  polys = [[1, 1, 8, 1, 8, 6, 1, 6], [10, 2, 14, 2, 12, 9]]
  ref = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polys, 12, 16)))
  got = polygons_to_mask(polys, 12, 16)
  np.testing.assert_array_equal(got, ref)
  assert got[3, 4] == 1 and got[0, 0] == 0
  np.testing.assert_array_equal(annotation_to_mask(polys, 12, 16), ref)
  np.testing.assert_array_equal(annotation_to_mask(rle_encode(ref), 12, 16), ref)
  assert polygons_to_mask([], 3, 4).sum() == 0


@pytest.mark.parametrize("bad,match", [
    ({"size": [4, 3], "counts": [3, 2, 2]}, "sum"),  # does not cover the image
    ({"size": [4, 3], "counts": [3, -2, 11]}, "non-negative"),
    ({"size": [4], "counts": "abc"}, "size"),
    ({"counts": "abc"}, "size"),
    ({"size": [10, 10], "counts": "0"}, "pixels"),  # truncated compressed string
    ({"size": [2, 2], "counts": 5}, "counts"),
])
def test_invalid_rle_is_a_value_error(bad, match):
  with pytest.raises(ValueError, match=match):
    rle_decode(bad)


@pytest.mark.parametrize("polys,match", [([[1, 2, 3, 4]], "polygons"), ([[1, 2, 3, 4, 5]], "polygons"),
                                         ([[0, 0, 1, np.nan, 2, 2]], "non-finite")])
def test_invalid_polygon_is_a_value_error(polys, match):
  with pytest.raises(ValueError, match=match):
    polygons_to_mask(polys, 8, 8)


def test_annotation_size_mismatch():
  with pytest.raises(ValueError, match="size"):
    annotation_to_mask(rle_encode(np.zeros((4, 4), np.uint8)), 5, 4)


def test_resize_and_paste_masks_match_sem_seg_postprocess(torch, rng):
  logits = rng.standard_normal((2, 3, 8, 10)).astype(np.float32)  # (B, Q, h, w) at stride 4
  padded, valid, out = (32, 40), (29, 33), (50, 57)
  t = torch.nn.functional.interpolate(torch.tensor(logits), size=padded, mode="bilinear", align_corners=False)
  t = torch.nn.functional.interpolate(t[..., :valid[0], :valid[1]], size=out, mode="bilinear", align_corners=False)
  f = jax.jit(lambda x, v: paste_masks(x, padded, v, out))
  assert_close(f(jnp.asarray(logits), jnp.asarray(valid)), t.numpy())
  assert_close(resize_masks(jnp.asarray(logits), padded),
               torch.nn.functional.interpolate(torch.tensor(logits), size=padded, mode="bilinear").numpy())
