"""Semantic segmentation metrics: mIoU, fwIoU, mean and pixel accuracy.

The numbers are those of detectron2's `SemSegEvaluator`: a (C+1) x (C+1) confusion matrix
indexed [prediction, ground truth], where ignored ground-truth pixels fall in the extra
row/column and are excluded from every metric.

- IoU_c = TP_c / (GT_c + PRED_c - TP_c), only for classes present in the ground truth
  (GT_c > 0); mIoU is their mean.
- fwIoU = sum_c IoU_c * GT_c / sum GT.
- ACC_c = TP_c / GT_c; mACC is their mean over classes with GT_c > 0.
- pACC = sum TP / sum GT.
All are reported in percent.
"""
from typing import Sequence

import numpy as np


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_label: int = 255) -> np.ndarray:
  """(C+1, C+1) int64 counts [pred, gt] for one image.

  Args:
    pred: (H, W) int predicted class in [0, C).
    gt: (H, W) int ground-truth class in [0, C) or `ignore_label`.
  """
  pred = np.asarray(pred)
  gt = np.asarray(gt)
  if pred.shape != gt.shape:
    raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
  pred = pred.astype(np.int64).reshape(-1)
  gt = gt.astype(np.int64).reshape(-1).copy()
  if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
    raise ValueError(f"pred holds classes outside [0, {num_classes}): [{pred.min()}, {pred.max()}]")
  gt[gt == ignore_label] = num_classes
  if gt.size and (gt.min() < 0 or gt.max() > num_classes):
    raise ValueError(f"gt holds classes outside [0, {num_classes}) other than ignore_label={ignore_label}")
  n = num_classes + 1
  return np.bincount(n * pred + gt, minlength=n * n).reshape(n, n)


def semantic_metrics(conf: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, float]:
  """mIoU, fwIoU, mACC, pACC (and per-class IoU-/ACC-) in percent from a confusion matrix."""
  conf = np.asarray(conf)
  num_classes = conf.shape[0] - 1
  if class_names is None:
    class_names = [str(i) for i in range(num_classes)]
  if len(class_names) != num_classes:
    raise ValueError(f"class_names must have {num_classes} entries, got {len(class_names)}")
  acc = np.full(num_classes, np.nan)
  iou = np.full(num_classes, np.nan)
  tp = conf.diagonal()[:-1].astype(np.float64)
  pos_gt = conf[:-1, :-1].sum(axis=0).astype(np.float64)
  pos_pred = conf[:-1, :-1].sum(axis=1).astype(np.float64)
  total = pos_gt.sum()
  class_weights = pos_gt / total if total > 0 else np.zeros_like(pos_gt)
  acc_valid = pos_gt > 0
  acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
  union = pos_gt + pos_pred - tp
  iou_valid = acc_valid & (union > 0)
  iou[iou_valid] = tp[iou_valid] / union[iou_valid]
  def _mean(values, valid):
    return float(np.sum(values[valid]) / np.sum(valid)) if np.any(valid) else float("nan")
  res = {
      "mIoU": 100 * _mean(iou, iou_valid),
      "fwIoU": 100 * float(np.sum(iou[iou_valid] * class_weights[iou_valid])),
  }
  for name, value in zip(class_names, iou):
    res[f"IoU-{name}"] = 100 * float(value)
  res["mACC"] = 100 * _mean(acc, acc_valid)
  res["pACC"] = 100 * float(np.sum(tp) / total) if total > 0 else float("nan")
  for name, value in zip(class_names, acc):
    res[f"ACC-{name}"] = 100 * float(value)
  return res


class SemanticEvaluator:
  """Accumulates a confusion matrix over images; `evaluate()` returns the metrics.

  Args:
    num_classes: C.
    ignore_label: ground-truth value excluded from the metrics.
    class_names: optional names for the per-class entries.
  """

  def __init__(self, num_classes: int, ignore_label: int = 255, class_names: Sequence[str] | None = None):
    if num_classes <= 0:
      raise ValueError(f"num_classes must be positive, got {num_classes}")
    self.num_classes = num_classes
    self.ignore_label = ignore_label
    self.class_names = list(class_names) if class_names is not None else None
    self.reset()

  def reset(self) -> None:
    self.conf = np.zeros((self.num_classes + 1,) * 2, np.int64)

  def process(self, pred: np.ndarray, gt: np.ndarray) -> None:
    """Adds one image. `pred` is an (H, W) label map or (C, H, W) scores (argmax over C)."""
    pred = np.asarray(pred)
    if pred.ndim == 3:
      if pred.shape[0] != self.num_classes:
        raise ValueError(f"pred scores must have {self.num_classes} channels first, got {pred.shape}")
      pred = pred.argmax(axis=0)
    self.conf += confusion_matrix(pred, gt, self.num_classes, self.ignore_label)

  def evaluate(self) -> dict[str, float]:
    return semantic_metrics(self.conf, self.class_names)


__all__ = ["confusion_matrix", "semantic_metrics", "SemanticEvaluator"]
