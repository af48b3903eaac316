"""Semantic metrics against a direct transcription of the definitions."""
import numpy as np
import pytest

from dinoseg.evaluation.semantic import SemanticEvaluator, confusion_matrix, semantic_metrics


def _reference(preds, gts, c, ignore):
  """Per-class IoU/ACC straight from pixel sets (no confusion matrix)."""
  pred = np.concatenate([p.ravel() for p in preds])
  gt = np.concatenate([g.ravel() for g in gts])
  keep = gt != ignore
  pred, gt = pred[keep], gt[keep]
  ious, accs, weights = [], [], []
  for k in range(c):
    g, p = gt == k, pred == k
    if g.sum() == 0:
      continue
    ious.append((g & p).sum() / (g | p).sum())
    accs.append((g & p).sum() / g.sum())
    weights.append(g.sum() / gt.size)
  return {"mIoU": 100 * np.mean(ious), "fwIoU": 100 * np.sum(np.array(ious) * weights),
          "mACC": 100 * np.mean(accs), "pACC": 100 * (pred == gt).mean()}


def test_matches_definitions(rng):
  c = 5
  ev = SemanticEvaluator(c, ignore_label=255, class_names=list("abcde"))
  preds, gts = [], []
  for _ in range(3):
    gt = rng.integers(0, c - 1, size=(9, 11))  # class 4 never in the ground truth
    gt[rng.random(gt.shape) < 0.1] = 255
    scores = rng.random((c, 9, 11))
    scores[gt % c, np.arange(9)[:, None], np.arange(11)] += rng.random((9, 11)) > 0.4
    ev.process(scores, gt)
    preds.append(scores.argmax(0))
    gts.append(gt)
  res = ev.evaluate()
  want = _reference(preds, gts, c, 255)
  for key, value in want.items():
    assert res[key] == pytest.approx(value, abs=1e-9), key
  assert np.isnan(res["IoU-e"]) and np.isnan(res["ACC-e"])


def test_hand_computed():
  gt = np.array([[0, 0, 1, 255]])
  pred = np.array([[0, 1, 1, 0]])
  conf = confusion_matrix(pred, gt, 2)
  res = semantic_metrics(conf)
  # class 0: tp 1, gt 2, pred 1 -> IoU 1/2, ACC 1/2; class 1: tp 1, gt 1, pred 2 -> IoU 1/2, ACC 1
  assert res["mIoU"] == pytest.approx(50.0)
  assert res["mACC"] == pytest.approx(75.0)
  assert res["pACC"] == pytest.approx(200 / 3)
  assert res["fwIoU"] == pytest.approx(50.0)


def test_bad_input():
  with pytest.raises(ValueError, match="same shape"):
    confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
  with pytest.raises(ValueError, match="pred holds"):
    confusion_matrix(np.full((2, 2), 3), np.zeros((2, 2), int), 3)
  with pytest.raises(ValueError, match="gt holds"):
    confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 7), 3)
  with pytest.raises(ValueError, match="num_classes"):
    SemanticEvaluator(0)
