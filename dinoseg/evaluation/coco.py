"""COCO box and mask AP through pycocotools, and COCO-format result JSON.

Predictions are converted to COCO results: boxes (x, y, w, h) in original-image pixels, masks as
compressed RLE, `category_id` from the dataset's ids (`category_ids[contiguous_label]`). The
ground truth is a COCO instances dict (or JSON file), or is built image by image with
`add_ground_truth` (for datasets that are not stored in COCO format, e.g. the synthetic shapes).
Metrics follow detectron2's `COCOEvaluator`: AP, AP50, AP75, APs, APm, APl in percent.
"""
import contextlib
import copy
import io
import json
from typing import Any, Mapping, Sequence

import numpy as np

from dinoseg.ops.masks import rle_encode

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def instances_to_coco_json(image_id: int, scores: np.ndarray, labels: np.ndarray, *,
                           boxes_xyxy: np.ndarray | None = None, masks: np.ndarray | None = None,
                           category_ids: Sequence[int] | None = None) -> list[dict]:
  """Converts one image's predictions to COCO result dicts.

  Args:
    image_id: the COCO image id.
    scores: (K,) float; labels: (K,) int contiguous class indices.
    boxes_xyxy: (K, 4) boxes in original-image pixels, or None.
    masks: (K, H, W) binary masks at the original size, or None.
    category_ids: dataset category id of each contiguous label (identity when None).
  Returns:
    [{"image_id", "category_id", "score", "bbox"?, "segmentation"?}] (K entries).
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels, np.int64).reshape(-1)
  k = scores.shape[0]
  if labels.shape[0] != k:
    raise ValueError(f"labels must have {k} entries (one per score), got {labels.shape[0]}")
  if boxes_xyxy is not None:
    boxes_xyxy = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    if boxes_xyxy.shape[0] != k:
      raise ValueError(f"boxes_xyxy must have {k} rows, got {boxes_xyxy.shape}")
  if masks is not None:
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[0] != k:
      raise ValueError(f"masks must have shape ({k}, H, W), got {masks.shape}")
  if category_ids is not None:
    category_ids = list(category_ids)
    if k and (labels.min() < 0 or labels.max() >= len(category_ids)):
      raise ValueError(f"labels must index category_ids (0..{len(category_ids) - 1}), got {labels.min()}..{labels.max()}")
  results = []
  for i in range(k):
    entry = {"image_id": int(image_id),
             "category_id": int(category_ids[labels[i]] if category_ids is not None else labels[i]),
             "score": float(scores[i])}
    if boxes_xyxy is not None:
      x0, y0, x1, y1 = boxes_xyxy[i]
      entry["bbox"] = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
    if masks is not None:
      entry["segmentation"] = rle_encode(masks[i] > 0)
    results.append(entry)
  return results


def _quiet():
  return contextlib.redirect_stdout(io.StringIO())


class COCOEvaluator:
  """Box and mask AP of instance predictions.

  Args:
    ground_truth: a COCO instances dict or a path to its JSON; None to build it with
      `add_ground_truth`.
    categories: COCO category dicts ({"id", "name"}) when building the ground truth.
    iou_types: subset of ("bbox", "segm").
    category_ids: dataset category id per contiguous label (default: the categories' ids in order).
  """

  def __init__(self, ground_truth: str | Mapping | None = None, *, categories: Sequence[Mapping] | None = None,
               iou_types: Sequence[str] = IOU_TYPES, category_ids: Sequence[int] | None = None):
    for t in iou_types:
      if t not in IOU_TYPES:
        raise ValueError(f"iou_types must be a subset of {IOU_TYPES}, got {tuple(iou_types)}")
    self.iou_types = tuple(iou_types)
    if ground_truth is None:
      if categories is None:
        raise ValueError("categories are needed when ground_truth is built with add_ground_truth")
      self._gt = {"images": [], "annotations": [], "categories": [dict(c) for c in categories]}
    elif isinstance(ground_truth, Mapping):
      self._gt = copy.deepcopy(dict(ground_truth))
    else:
      with open(ground_truth) as f:
        self._gt = json.load(f)
    self._gt.setdefault("annotations", [])
    self._image_ids = {int(im["id"]) for im in self._gt.get("images", [])}
    self.category_ids = (list(category_ids) if category_ids is not None
                         else [int(c["id"]) for c in self._gt["categories"]])
    self.results: list[dict] = []

  def add_ground_truth(self, image_id: int, height: int, width: int, labels: Sequence[int], *,
                       masks: np.ndarray | None = None, boxes_xyxy: np.ndarray | None = None,
                       iscrowd: Sequence[int] | None = None) -> None:
    """Adds one image's ground truth (labels are contiguous indices, like predictions)."""
    image_id = int(image_id)
    if image_id in self._image_ids:
      raise ValueError(f"image_id {image_id} already has ground truth")
    labels = np.asarray(labels, np.int64).reshape(-1)
    n = labels.shape[0]
    if masks is None and boxes_xyxy is None:
      raise ValueError("add_ground_truth needs masks or boxes_xyxy")
    if masks is not None:
      masks = np.asarray(masks)
      if masks.shape != (n, height, width):
        raise ValueError(f"masks must have shape {(n, height, width)}, got {masks.shape}")
    if boxes_xyxy is not None:
      boxes_xyxy = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
      if boxes_xyxy.shape[0] != n:
        raise ValueError(f"boxes_xyxy must have {n} rows, got {boxes_xyxy.shape}")
    self._gt["images"].append({"id": image_id, "height": int(height), "width": int(width)})
    self._image_ids.add(image_id)
    for i in range(n):
      ann = {"id": len(self._gt["annotations"]) + 1, "image_id": image_id,
             "category_id": int(self.category_ids[labels[i]]),
             "iscrowd": int(iscrowd[i]) if iscrowd is not None else 0}
      if masks is not None:
        m = masks[i] > 0
        rle = rle_encode(m)
        ann["segmentation"] = rle
        ann["area"] = float(m.sum())
        ys, xs = np.nonzero(m)
        box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if xs.size else [0, 0, 0, 0]
      if boxes_xyxy is not None:
        box = boxes_xyxy[i]
      x0, y0, x1, y1 = (float(v) for v in box)
      ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
      if masks is None:
        ann["area"] = (x1 - x0) * (y1 - y0)
      self._gt["annotations"].append(ann)

  @property
  def ground_truth(self) -> dict:
    return self._gt

  def process(self, image_id: int, scores, labels, *, boxes_xyxy=None, masks=None) -> None:
    """Adds one image's predictions (see `instances_to_coco_json`)."""
    self.results.extend(instances_to_coco_json(image_id, scores, labels, boxes_xyxy=boxes_xyxy,
                                               masks=masks, category_ids=self.category_ids))

  def write_results(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump(self.results, f)

  def evaluate(self, max_dets: int = 100) -> dict[str, dict[str, float]]:
    """{"bbox": {AP, AP50, ...}, "segm": {...}} in percent.

    No predictions at all give 0 (pycocotools cannot load an empty result list); an area range
    without ground truth gives NaN.
    """
    from pycocotools.coco import COCO  # noqa: PLC0415
    from pycocotools.cocoeval import COCOeval  # noqa: PLC0415
    gt = COCO()
    gt.dataset = copy.deepcopy(self._gt)
    gt.dataset.setdefault("info", {})
    with _quiet():
      gt.createIndex()
    out = {}
    for iou_type in self.iou_types:
      results = [r for r in self.results if (("bbox" in r) if iou_type == "bbox" else ("segmentation" in r))]
      if not results:
        out[iou_type] = {name: 0.0 for name in METRIC_NAMES}
        continue
      with _quiet():
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, iou_type)
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
      # pycocotools reports -1 for an area range without ground truth: NaN, as detectron2.
      out[iou_type] = {name: float(100 * ev.stats[i]) if ev.stats[i] >= 0 else float("nan")
                       for i, name in enumerate(METRIC_NAMES)}
    return out


__all__ = ["COCOEvaluator", "instances_to_coco_json", "METRIC_NAMES", "IOU_TYPES"]
