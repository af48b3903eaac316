"""The RITM click simulator makes the reference's clicks (fixture from uncbiag/SegNext's Clicker + cv2)."""
import numpy as np
import pytest

from dinoseg.models.segnext.clicker import Click, Clicker, clicks_to_points, next_click, padded_edt


def _unpack(f, name, w):
  return np.unpackbits(f[name], axis=-1)[..., :w].astype(bool)


def test_clicks_equal_reference(segnext_fixture):
  """All 240 reference clicks (48 masks x 5 rounds, ignore bands, rectangles full of distance ties).

  OpenCV's float32 EDT can in principle break an exact tie differently from scipy's float64 one
  (docs/segnext.md); on this fixture no tie flips, so every click must agree.
  """
  f = segnext_fixture("clicks")
  h, w = f["shape"]
  gt, ignore, pred = _unpack(f, "gt", w), _unpack(f, "ignore", w), _unpack(f, "pred", w)
  made = np.zeros_like(f["clicks"])
  for i in range(len(gt)):
    clicker = Clicker(np.where(ignore[i], -1, gt[i].astype(np.int32)))
    for r in range(pred.shape[1]):
      c = clicker.make_next_click(pred[i, r])
      made[i, r] = (*c.coords, int(c.is_positive))
  np.testing.assert_array_equal(made, f["clicks"])


def test_padded_edt_is_exact(rng):
  mask = rng.random((13, 17)) > 0.3
  dt = padded_edt(mask)
  zeros = [(y, x) for y in range(-1, 14) for x in range(-1, 18)
           if not (0 <= y < 13 and 0 <= x < 17) or not mask[y, x]]
  zy, zx = np.array(zeros).T
  for y in range(13):
    for x in range(17):
      expected = np.sqrt(((zy - y) ** 2 + (zx - x) ** 2).min()) if mask[y, x] else 0.0
      assert dt[y, x] == pytest.approx(expected, abs=1e-12)


def test_first_click_and_tie_rules():
  gt = np.zeros((9, 12), bool)
  gt[2:7, 3:8] = True  # 5x5 square: unique most-interior pixel (4, 5)
  assert next_click(gt, np.zeros_like(gt)) == (4, 5, True)
  # FN and FP regions of equal depth: a tie gives a negative click, at the first FP maximum.
  gt2 = np.zeros((5, 10), bool)
  gt2[1:4, 1:4] = True
  pred = np.zeros_like(gt2)
  pred[1:4, 6:9] = True
  assert next_click(gt2, pred) == (2, 7, False)
  # Clicked pixels are excluded: the next best pixel, first in raster order.
  not_clicked = np.ones_like(gt)
  not_clicked[4, 5] = False
  y, x, positive = next_click(gt, np.zeros_like(gt), not_clicked=not_clicked)
  assert positive and (y, x) == (3, 4)  # distance 2, first in raster order


def test_clicker_state_and_points():
  clicker = Clicker(np.pad(np.ones((4, 4), np.int32), 3))
  clicker.make_next_click(np.zeros((10, 10), bool))
  clicker.add_click(0, 0, False)
  assert [c.index for c in clicker.clicks] == [0, 1] and not clicker.not_clicked_map[0, 0]
  clicker.undo()
  assert clicker.not_clicked_map[0, 0] and len(clicker) == 1
  pts = clicks_to_points([[Click(True, (1, 2), 0), Click(False, (3, 4), 1), Click(True, (5, 6), 2)]])
  np.testing.assert_array_equal(pts[0], [[1, 2, 0], [5, 6, 2], [3, 4, 1], [-1, -1, -1]])
  with pytest.raises(ValueError, match="gt_mask"):
    Clicker(np.zeros(5))
  with pytest.raises(ValueError, match="same shape|one shape"):
    next_click(np.zeros((3, 3)), np.zeros((3, 4)))
