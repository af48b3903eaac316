"""Panoptic quality (PQ, SQ, RQ; all, things, stuff), as defined by Kirillov et al. and COCO.

Same definition as cocodataset/panopticapi `pq_compute` (checked against it on fixtures,
tests/evaluation/test_panoptic.py):

- A panoptic map holds one segment id per pixel; id 0 (VOID) is unlabeled. Each image has
  `segments_info`, a list of {"id", "category_id"} (+ "iscrowd" and "area" for ground truth).
- A ground-truth and a predicted segment of the same category match when
  IoU = |g n p| / (|g| + |p| - |g n p| - |VOID n p|) > 0.5 (the ground truth's area is taken
  from its `area` field when present, else counted; predicted areas are counted).
  Crowd ground-truth segments never match.
- Unmatched non-crowd ground truths are false negatives. An unmatched prediction is a false
  positive unless more than half of it lies on VOID or on a crowd region of its category.
- Per category: PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP, RQ = TP / (TP + FP/2 + FN/2);
  averages run over the categories with TP + FP + FN > 0.
"""
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

VOID = 0
_OFFSET = 256 * 256 * 256


def rgb2id(rgb: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 COCO panoptic PNG -> (H, W) int64 ids (R + 256 G + 256^2 B)."""
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ValueError(f"rgb must have shape (H, W, 3), got {rgb.shape}")
  rgb = rgb.astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
  """(H, W) ids -> (H, W, 3) uint8, the inverse of `rgb2id`."""
  ids = np.asarray(ids, np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= _OFFSET):
    raise ValueError(f"ids must be in [0, 256^3), got [{ids.min()}, {ids.max()}]")
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def semantic_from_panoptic(pan_seg: np.ndarray, segment_ids: Sequence[int], segment_categories: Sequence[int],
                           category_ids: Sequence[int], ignore_label: int = 255) -> np.ndarray:
  """Semantic ground truth of a panoptic annotation, as the COCO `panoptic_semseg_*` label maps that
  detectron2 / Mask DINO evaluate semantic segmentation of panoptic models against: every segment's
  pixels (crowd included) get the contiguous index of its category, VOID and unlisted ids `ignore_label`.

  Args:
    pan_seg: (H, W) int segment ids (0 = VOID).
    segment_ids, segment_categories: (S,) the image's segments and their dataset category ids.
    category_ids: (C,) dataset category id of each contiguous class index.
  Returns:
    (H, W) int64 labels in [0, C) or `ignore_label`.
  """
  pan_seg = np.asarray(pan_seg, np.int64)
  contiguous = {int(c): i for i, c in enumerate(category_ids)}
  ids = np.asarray(segment_ids, np.int64).reshape(-1)
  cats = np.asarray(segment_categories, np.int64).reshape(-1)
  if ids.shape != cats.shape:
    raise ValueError(f"segment_ids and segment_categories differ in length: {ids.shape} vs {cats.shape}")
  unknown = sorted({int(c) for c in cats} - set(contiguous))
  if unknown:
    raise ValueError(f"segment categories {unknown} are not among the dataset's category ids")
  out = np.full(pan_seg.shape, ignore_label, np.int64)
  if ids.size:
    order = np.argsort(ids)
    sorted_ids = ids[order]
    labels = np.asarray([contiguous[int(c)] for c in cats[order]], np.int64)
    pos = np.clip(np.searchsorted(sorted_ids, pan_seg), 0, ids.size - 1)
    hit = (sorted_ids[pos] == pan_seg) & (pan_seg != VOID)
    out[hit] = labels[pos[hit]]
  return out


class PQStats:
  """Per-category sums: IoU of true positives, TP, FP, FN."""

  def __init__(self):
    self.iou: dict[int, float] = {}
    self.tp: dict[int, int] = {}
    self.fp: dict[int, int] = {}
    self.fn: dict[int, int] = {}

  def _add(self, table, cat, value):
    table[cat] = table.get(cat, 0) + value

  def __iadd__(self, other: "PQStats") -> "PQStats":
    for name in ("iou", "tp", "fp", "fn"):
      for cat, value in getattr(other, name).items():
        self._add(getattr(self, name), cat, value)
    return self

  def average(self, categories: Mapping[int, Mapping[str, Any]], isthing: bool | None) -> tuple[dict, dict]:
    """Averages over `categories` (id -> {"isthing": 0/1}); isthing None = all categories."""
    pq = sq = rq = 0.0
    n = 0
    per_class = {}
    for cat, info in categories.items():
      if isthing is not None and (int(info.get("isthing", 0)) == 1) != isthing:
        continue
      iou, tp = self.iou.get(cat, 0.0), self.tp.get(cat, 0)
      fp, fn = self.fp.get(cat, 0), self.fn.get(cat, 0)
      if tp + fp + fn == 0:
        per_class[cat] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        continue
      n += 1
      denom = tp + 0.5 * fp + 0.5 * fn
      per_class[cat] = {"pq": iou / denom, "sq": iou / tp if tp else 0.0, "rq": tp / denom}
      pq += per_class[cat]["pq"]
      sq += per_class[cat]["sq"]
      rq += per_class[cat]["rq"]
    if n == 0:
      return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}, per_class
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def pq_stats_single(pan_gt: np.ndarray, gt_segments: Sequence[Mapping], pan_pred: np.ndarray,
                    pred_segments: Sequence[Mapping], categories: Mapping[int, Any]) -> PQStats:
  """PQ statistics of one image.

  Args:
    pan_gt, pan_pred: (H, W) int segment-id maps (0 = VOID).
    gt_segments: [{"id", "category_id", "iscrowd" (default 0), "area" (optional)}].
    pred_segments: [{"id", "category_id"}]; every non-VOID id in `pan_pred` must be listed, and
      every listed id must occur in `pan_pred`.
    categories: known category ids (a prediction with another category is an error).
  Raises:
    ValueError for inconsistent predictions (as panopticapi raises KeyError).
  """
  pan_gt = np.asarray(pan_gt, np.int64)
  pan_pred = np.asarray(pan_pred, np.int64)
  if pan_gt.shape != pan_pred.shape or pan_gt.ndim != 2:
    raise ValueError(f"pan_gt and pan_pred must be (H, W) maps of one shape, got {pan_gt.shape}, {pan_pred.shape}")
  stats = PQStats()
  gt_segms = {int(s["id"]): dict(s) for s in gt_segments}
  pred_segms = {int(s["id"]): dict(s) for s in pred_segments}

  ids, counts = np.unique(pan_pred, return_counts=True)
  unseen = set(pred_segms)
  for seg_id, count in zip(ids.tolist(), counts.tolist()):
    if seg_id not in pred_segms:
      if seg_id == VOID:
        continue
      raise ValueError(f"segment id {seg_id} is in the predicted map but not in pred_segments")
    pred_segms[seg_id]["area"] = count
    unseen.discard(seg_id)
    if pred_segms[seg_id]["category_id"] not in categories:
      raise ValueError(f"segment id {seg_id} has unknown category_id {pred_segms[seg_id]['category_id']}")
  if unseen:
    raise ValueError(f"segment ids {sorted(unseen)} are in pred_segments but not in the predicted map")
  gt_ids, gt_counts = np.unique(pan_gt, return_counts=True)
  gt_area = dict(zip(gt_ids.tolist(), gt_counts.tolist()))
  for seg_id, seg in gt_segms.items():
    if "area" not in seg:
      seg["area"] = gt_area.get(seg_id, 0)

  pairs, inter = np.unique(pan_gt * _OFFSET + pan_pred, return_counts=True)
  gt_pred = {(int(p // _OFFSET), int(p % _OFFSET)): int(c) for p, c in zip(pairs.tolist(), inter.tolist())}

  gt_matched, pred_matched = set(), set()
  for (gt_id, pred_id), intersection in gt_pred.items():
    if gt_id not in gt_segms or pred_id not in pred_segms:
      continue
    gt = gt_segms[gt_id]
    if int(gt.get("iscrowd", 0)) == 1 or gt["category_id"] != pred_segms[pred_id]["category_id"]:
      continue
    union = (pred_segms[pred_id]["area"] + gt["area"] - intersection - gt_pred.get((VOID, pred_id), 0))
    iou = intersection / union
    if iou > 0.5:
      cat = gt["category_id"]
      stats._add(stats.tp, cat, 1)
      stats._add(stats.iou, cat, iou)
      gt_matched.add(gt_id)
      pred_matched.add(pred_id)

  crowd_by_cat = {}
  for gt_id, gt in gt_segms.items():
    if gt_id in gt_matched:
      continue
    if int(gt.get("iscrowd", 0)) == 1:
      crowd_by_cat[gt["category_id"]] = gt_id
      continue
    stats._add(stats.fn, gt["category_id"], 1)

  for pred_id, pred in pred_segms.items():
    if pred_id in pred_matched:
      continue
    intersection = gt_pred.get((VOID, pred_id), 0)
    if pred["category_id"] in crowd_by_cat:
      intersection += gt_pred.get((crowd_by_cat[pred["category_id"]], pred_id), 0)
    if intersection / pred["area"] > 0.5:
      continue
    stats._add(stats.fp, pred["category_id"], 1)
  return stats


def summarize(stats: PQStats, categories: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
  """{"All" / "Things" / "Stuff": {pq, sq, rq, n}, "per_class": ...} (fractions, as panopticapi)."""
  results = {}
  for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
    results[name], per_class = stats.average(categories, isthing)
    if name == "All":
      results["per_class"] = per_class
  return results


def flat_percent(results: Mapping[str, Any]) -> dict[str, float]:
  """detectron2-style flat metrics in percent: PQ, SQ, RQ, PQ_th, SQ_th, RQ_th, PQ_st, SQ_st, RQ_st."""
  out = {}
  for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
    for key in ("pq", "sq", "rq"):
      out[key.upper() + suffix] = 100 * results[name][key]
  return out


class PanopticEvaluator:
  """Accumulates PQ statistics over images.

  Args:
    categories: {category_id: {"isthing": 0 or 1, ...}} or a COCO-style list of dicts with "id".
  """

  def __init__(self, categories):
    if isinstance(categories, Mapping):
      self.categories = {int(k): dict(v) for k, v in categories.items()}
    else:
      self.categories = {int(c["id"]): dict(c) for c in categories}
    if not self.categories:
      raise ValueError("categories must not be empty")
    self.reset()

  def reset(self) -> None:
    self.stats = PQStats()

  def process(self, pan_gt, gt_segments, pan_pred, pred_segments) -> None:
    """Adds one image (see `pq_stats_single` for the arguments)."""
    self.stats += pq_stats_single(pan_gt, gt_segments, pan_pred, pred_segments, self.categories)

  def evaluate(self) -> dict[str, Any]:
    """Returns `summarize(...)` plus the flat percent metrics of `flat_percent`."""
    results = summarize(self.stats, self.categories)
    results.update(flat_percent(results))
    return results


def _read_png_ids(path: str) -> np.ndarray:
  from PIL import Image  # noqa: PLC0415
  with Image.open(path) as im:
    return rgb2id(np.asarray(im.convert("RGB"), np.uint8))


def pq_compute_files(gt_json: str | Mapping, pred_json: str | Mapping, gt_folder: str,
                     pred_folder: str) -> dict[str, Any]:
  """PQ from COCO panoptic files (JSON + PNG folders), as `panopticapi.evaluation.pq_compute`.

  Args:
    gt_json / pred_json: a path or an already loaded dict with "annotations" (and "categories"
      in the ground truth).
    gt_folder / pred_folder: folders holding each annotation's `file_name` PNG.
  Returns:
    `summarize(...)` results (fractions) plus the flat percent metrics.
  """
  def _load(x):
    if isinstance(x, Mapping):
      return x
    with open(x) as f:
      return json.load(f)
  gt, pred = _load(gt_json), _load(pred_json)
  evaluator = PanopticEvaluator(gt["categories"])
  preds = {p["image_id"]: p for p in pred["annotations"]}
  for gt_ann in gt["annotations"]:
    if gt_ann["image_id"] not in preds:
      raise ValueError(f"no prediction for the image with id {gt_ann['image_id']}")
    pred_ann = preds[gt_ann["image_id"]]
    evaluator.process(_read_png_ids(os.path.join(gt_folder, gt_ann["file_name"])), gt_ann["segments_info"],
                      _read_png_ids(os.path.join(pred_folder, pred_ann["file_name"])),
                      pred_ann["segments_info"])
  return evaluator.evaluate()


__all__ = ["rgb2id", "id2rgb", "semantic_from_panoptic", "PQStats", "pq_stats_single", "summarize", "flat_percent",
           "PanopticEvaluator", "pq_compute_files", "VOID"]
