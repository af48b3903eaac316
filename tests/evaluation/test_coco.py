"""COCO AP through pycocotools: conversion to results, ground truth building, metrics."""
import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from dinoseg.evaluation.coco import COCOEvaluator, instances_to_coco_json

CATS = [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}]


def _gt_masks(rng, n, h, w):
  masks = np.zeros((n, h, w), bool)
  for i in range(n):
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    masks[i, y0:y0 + rng.integers(4, h // 2), x0:x0 + rng.integers(4, w // 2)] = True
  return masks


def test_perfect_predictions_give_100(rng):
  ev = COCOEvaluator(categories=CATS)
  for image_id in (3, 4):
    masks = _gt_masks(rng, 3, 40, 50)
    labels = np.array([0, 1, 1])
    ev.add_ground_truth(image_id, 40, 50, labels, masks=masks)
    ys, xs = np.nonzero(masks[0])
    boxes = np.stack([[np.nonzero(m.any(0))[0].min(), np.nonzero(m.any(1))[0].min(),
                       np.nonzero(m.any(0))[0].max() + 1, np.nonzero(m.any(1))[0].max() + 1] for m in masks])
    ev.process(image_id, np.array([0.9, 0.8, 0.7]), labels, boxes_xyxy=boxes, masks=masks)
  res = ev.evaluate()
  assert res["segm"]["AP"] == pytest.approx(100.0)
  assert res["bbox"]["AP"] == pytest.approx(100.0)
  assert np.isnan(res["segm"]["APl"])  # no large objects in the ground truth


def test_matches_direct_pycocotools(rng, tmp_path):
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  ev = COCOEvaluator(categories=CATS)
  for image_id in range(3):
    masks = _gt_masks(rng, 4, 30, 30)
    ev.add_ground_truth(image_id, 30, 30, rng.integers(0, 2, 4), masks=masks)
    pred = np.roll(masks, rng.integers(-2, 3), axis=2)
    boxes = rng.random((4, 4)) * 8 + np.array([0, 0, 12, 12])
    ev.process(image_id, rng.random(4), rng.integers(0, 2, 4), masks=pred, boxes_xyxy=boxes)
  gt_path = tmp_path / "gt.json"
  gt_path.write_text(json.dumps(ev.ground_truth))
  ev.write_results(str(tmp_path / "res.json"))
  res = ev.evaluate()
  gt = COCO(str(gt_path))
  for iou_type in ("segm", "bbox"):
    e = COCOeval(gt, gt.loadRes(str(tmp_path / "res.json")), iou_type)
    e.evaluate(); e.accumulate(); e.summarize()
    assert res[iou_type]["AP"] == pytest.approx(100 * e.stats[0])
    assert res[iou_type]["AP50"] == pytest.approx(100 * e.stats[1])
  # A ground-truth dict given directly gives the same numbers.
  ev2 = COCOEvaluator(str(gt_path))
  ev2.results = list(ev.results)
  np.testing.assert_equal(ev2.evaluate(), res)  # NaN == NaN here


def test_results_format():
  masks = np.zeros((1, 4, 6), bool)
  masks[0, 1:3, 2:5] = True
  out = instances_to_coco_json(7, [0.5], [1], boxes_xyxy=[[1, 2, 4, 3]], masks=masks, category_ids=[5, 9])
  assert out[0]["category_id"] == 9 and out[0]["bbox"] == [1.0, 2.0, 3.0, 1.0]
  np.testing.assert_array_equal(coco_mask.decode(out[0]["segmentation"]), masks[0])


def test_no_predictions_and_bad_input():
  ev = COCOEvaluator(categories=CATS)
  ev.add_ground_truth(1, 8, 8, [0], boxes_xyxy=[[0, 0, 4, 4]])
  assert ev.evaluate()["bbox"]["AP"] == 0.0
  with pytest.raises(ValueError, match="already"):
    ev.add_ground_truth(1, 8, 8, [0], boxes_xyxy=[[0, 0, 4, 4]])
  with pytest.raises(ValueError, match="iou_types"):
    COCOEvaluator(categories=CATS, iou_types=("keypoints",))
  with pytest.raises(ValueError, match="labels must index"):
    instances_to_coco_json(1, [0.5], [3], boxes_xyxy=[[0, 0, 1, 1]], category_ids=[5])
  with pytest.raises(ValueError, match="categories"):
    COCOEvaluator()
