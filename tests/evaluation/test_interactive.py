"""Interactive evaluation: the RITM protocol loop and NoC / NoF / mIoU@k as the reference computes them."""
import json

import numpy as np
import pytest

from dinoseg.evaluation import interactive
from dinoseg.models.segnext.clicker import padded_edt


def test_noc_nof_rules():
  curves = [np.array([0.5, 0.86, 0.91, 0.96]), np.array([0.2] * 19 + [0.95]), np.array([0.99] * 20),
            np.array([0.3, 0.88] + [0.89] * 18)]
  nocs, nofs = interactive.compute_noc(curves, max_clicks=20)
  # per object NoC@85: 2, 20, 1, 2; NoC@90: 3, 20, 1, 20; NoC@95: 4, 20, 1, 20
  assert nocs == pytest.approx([25 / 4, 44 / 4, 45 / 4])
  # NoF counts NoC == max_clicks, including the object that reaches 0.95 exactly at click 20.
  assert nofs == [1, 2, 2]
  m = interactive.summarize(curves)
  assert m["NoC@90"] == pytest.approx(11.0) and m["NoF@95"] == 2
  # mIoU@k over the clicks every object ran (the 4-click curve limits the mean curve to 4 entries).
  assert m["mIoU@1"] == pytest.approx(np.mean([0.5, 0.2, 0.99, 0.3]))
  assert np.isnan(m["mIoU@5"])
  full = interactive.summarize(curves[1:])
  assert full["mIoU@5"] == pytest.approx(np.mean([0.2, 0.99, 0.89]))
  with pytest.raises(ValueError, match="empty"):
    interactive.compute_noc([])


def test_iou_ignores_label():
  gt = np.array([[1, 1, 0], [-1, -1, 0]])
  pred = np.array([[1, 0, 1], [1, 1, 0]], bool)
  assert interactive.iou(gt, pred) == pytest.approx(1 / 3)


def test_protocol_loop_feeds_back_probabilities():
  """An oracle that paints disks around positive clicks and erases around negative ones."""
  h, w = 40, 50
  yy, xx = np.mgrid[:h, :w]
  gt = (((yy - 20) / 12.0) ** 2 + ((xx - 22) / 15.0) ** 2 < 1).astype(np.int32)
  seen_prev = []

  def predict(clicks, prev_prob):
    seen_prev.append(prev_prob.copy())
    prob = prev_prob.copy()
    c = clicks[-1]
    disk = (yy - c.coords[0]) ** 2 + (xx - c.coords[1]) ** 2 <= 36
    prob[disk & (gt == 1)] = 0.9 if c.is_positive else prob[disk & (gt == 1)]
    prob[disk & (gt == 0)] = 0.9 if c.is_positive else 0.1
    return prob

  ious, clicks = interactive.evaluate_sample(gt, predict, max_clicks=20)
  assert len(ious) == 20 and len(clicks) == 20
  dt = padded_edt(gt == 1)
  first = tuple(int(v) for v in np.argwhere(dt == dt.max())[0])
  assert clicks[0].is_positive and clicks[0].coords == first  # the most interior GT pixel, first in raster order
  assert np.all(seen_prev[0] == 0) and np.any(seen_prev[1] == 0.9)  # previous probabilities fed back
  assert ious[-1] > ious[0]
  early, _ = interactive.evaluate_sample(gt, predict, target_iou=0.3)
  assert len(early) < 20 and early[-1] >= 0.3


def test_save_curves_writes_json_and_png(tmp_path):
  from PIL import Image  # noqa: PLC0415
  curves = {"DAVIS": [np.linspace(0.5, 0.95, 20), np.linspace(0.7, 0.99, 20)], "HQSeg44K": [np.full(20, 0.8)]}
  json_path, png_path = interactive.save_curves(tmp_path, curves)
  data = json.loads(json_path.read_text())
  assert data["DAVIS"]["mean_iou_per_click"][0] == pytest.approx(0.6)
  assert data["DAVIS"]["metrics"]["NoC@90"] == pytest.approx((18 + 15) / 2)  # clicks 18 and 15 reach 0.9
  assert len(data["HQSeg44K"]["per_object"]) == 1
  image = Image.open(png_path)
  assert image.size == (640, 420) and len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 3
