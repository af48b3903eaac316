"""Interactive segmentation evaluation: the RITM click protocol and its metrics (NoC, NoF, mIoU@k).

Protocol (reference `isegm/inference/evaluation.py: evaluate_sample`, as SegNext's `run_eval.sh`
runs it): per object, the prediction starts all-zero; for up to `max_clicks` (20) clicks the
RITM click simulator (`dinoseg.models.segnext.clicker`) adds a click from the current binary
prediction, the model predicts a probability map from all clicks so far and the previous
probability map, the map is thresholded (`prob > 0.49`) and its IoU with the ground truth is
recorded. `target_iou` > 1 (the default, as `--print-ious`) runs all clicks.

Metrics (`isegm/inference/utils.py: compute_noc_metric`, `scripts/evaluate_model.py`):
- IoU = |pred and gt| / |pred or gt| over non-ignored pixels.
- NoC@t: mean over objects of the first 1-based click index with IoU >= t; `max_clicks` if never.
- NoF@t: number of objects whose NoC@t equals `max_clicks` (so an object that first reaches t
  exactly at the last click is counted too: the RITM convention).
- mIoU@k (5-mIoU for k = 5): mean IoU after the k-th click, over objects with >= k clicks run.

Outputs: `summarize` returns a flat metrics dict; `save_curves` writes the per-click IoU curves
as JSON and a PNG line plot (drawn with Pillow).
"""
import pathlib
import time
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from dinoseg import jsonio

NOC_THRESHOLDS = (0.85, 0.90, 0.95)
PRED_THRESHOLD = 0.49
MAX_CLICKS = 20


def iou(gt_mask: np.ndarray, pred_mask: np.ndarray, ignore_label: int = -1) -> float:
  """IoU of a binary prediction with a ground truth (1 object, 0 background, -1 ignored)."""
  gt_mask = np.asarray(gt_mask)
  valid = gt_mask != ignore_label
  obj = gt_mask == 1
  pred = np.asarray(pred_mask).astype(bool)
  inter = np.logical_and(np.logical_and(pred, obj), valid).sum()
  union = np.logical_and(np.logical_or(pred, obj), valid).sum()
  return float(inter / union) if union > 0 else 1.0


def evaluate_sample(gt_mask: np.ndarray, predict: Callable, *, max_clicks: int = MAX_CLICKS,
                    pred_threshold: float = PRED_THRESHOLD, target_iou: float = 1.01, min_clicks: int = 1,
                    callback: Callable | None = None) -> tuple[np.ndarray, list]:
  """Runs the click protocol on one object.

  Args:
    gt_mask: (H, W) int ground truth (1 object, 0 background, -1 ignored).
    predict: `predict(clicks, prev_prob) -> prob`: clicks is the list of `Click`s so far,
      prev_prob the previous (H, W) float32 probability map (zeros before the first click);
      returns the new (H, W) probability map.
    max_clicks, pred_threshold: the protocol's 20 and 0.49.
    target_iou: stop once IoU >= target_iou after at least `min_clicks` clicks (> 1: never).
    callback: optional `callback(click_index, clicks, prob)` after each prediction.
  Returns:
    (IoU per click (n,) float32, the clicks).
  """
  from dinoseg.models.segnext.clicker import Clicker  # noqa: PLC0415
  clicker = Clicker(gt_mask)
  pred_mask = np.zeros(np.shape(gt_mask), bool)
  prob = np.zeros(np.shape(gt_mask), np.float32)
  ious = []
  for k in range(max_clicks):
    clicker.make_next_click(pred_mask)
    prob = np.asarray(predict(list(clicker.clicks), prob), np.float32)
    pred_mask = prob > pred_threshold
    if callback is not None:
      callback(k, list(clicker.clicks), prob)
    ious.append(iou(gt_mask, pred_mask))
    if ious[-1] >= target_iou and k + 1 >= min_clicks:
      break
  return np.asarray(ious, np.float32), list(clicker.clicks)


def number_of_clicks(ious: np.ndarray, threshold: float, max_clicks: int = MAX_CLICKS) -> int:
  """First 1-based click index with IoU >= threshold, `max_clicks` if none."""
  hits = np.asarray(ious) >= threshold
  return int(np.argmax(hits)) + 1 if hits.any() else max_clicks


def compute_noc(all_ious: Sequence[np.ndarray], thresholds: Iterable[float] = NOC_THRESHOLDS,
                max_clicks: int = MAX_CLICKS) -> tuple[list[float], list[int]]:
  """(NoC@t, NoF@t) for each threshold (RITM `compute_noc_metric`)."""
  if len(all_ious) == 0:
    raise ValueError("all_ious is empty")
  nocs, nofs = [], []
  for t in thresholds:
    scores = np.array([number_of_clicks(x, t, max_clicks) for x in all_ious], int)
    nocs.append(float(scores.mean()))
    nofs.append(int((scores == max_clicks).sum()))
  return nocs, nofs


def mean_iou_curve(all_ious: Sequence[np.ndarray]) -> np.ndarray:
  """(k,) mean IoU after each click, over the clicks every object ran (reference `--print-ious`)."""
  k = min(len(x) for x in all_ious)
  return np.array([np.asarray(x[:k], np.float64) for x in all_ious]).mean(axis=0)


def summarize(all_ious: Sequence[np.ndarray], max_clicks: int = MAX_CLICKS,
              thresholds: Iterable[float] = NOC_THRESHOLDS, miou_at: Iterable[int] = (1, 5)) -> dict[str, float]:
  """Flat metrics: NoC@85/90/95, NoF@85/90/95, mIoU@k (5-mIoU = "mIoU@5"), num_objects.

  IoU values are fractions (the reference prints them as percentages).
  """
  thresholds = tuple(thresholds)
  nocs, nofs = compute_noc(all_ious, thresholds, max_clicks)
  out = {"num_objects": float(len(all_ious))}
  for t, noc, nof in zip(thresholds, nocs, nofs):
    out[f"NoC@{round(t * 100)}"] = noc
    out[f"NoF@{round(t * 100)}"] = float(nof)
  curve = mean_iou_curve(all_ious)
  for k in miou_at:
    out[f"mIoU@{k}"] = float(curve[k - 1]) if len(curve) >= k else float("nan")
  return out


def save_curves(out_dir: str | pathlib.Path, curves: Mapping[str, Sequence[np.ndarray]],
                metrics: Mapping[str, Mapping[str, float]] | None = None, name: str = "iou_curves",
                title: str = "mIoU vs. number of clicks") -> tuple[pathlib.Path, pathlib.Path]:
  """Writes `<name>.json` (per-object IoU curves, mean curve, metrics) and `<name>.png` (mean curves).

  Args:
    out_dir: output folder (created).
    curves: {label (e.g. dataset name): per-object IoU arrays}.
    metrics: optional {label: summarize(...)}.
  Returns:
    (json path, png path). The JSON is strict: NaN (an undefined metric) is written as null.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  payload = {}
  for label, all_ious in curves.items():
    payload[label] = {"mean_iou_per_click": [float(v) for v in mean_iou_curve(all_ious)],
                      "per_object": [[float(v) for v in x] for x in all_ious],
                      "metrics": dict((metrics or {}).get(label) or summarize(all_ious))}
  json_path = out_dir / f"{name}.json"
  json_path.write_text(jsonio.dumps(payload, indent=1))
  png_path = out_dir / f"{name}.png"
  plot_curves({k: v["mean_iou_per_click"] for k, v in payload.items()}, png_path, title=title)
  return json_path, png_path


_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot_curves(mean_curves: Mapping[str, Sequence[float]], path: str | pathlib.Path,
                title: str = "mIoU vs. number of clicks", size: tuple[int, int] = (640, 420)) -> None:
  """Line plot of mean IoU (y, %) against the click number (x) for each label, as a PNG."""
  from PIL import Image, ImageDraw  # noqa: PLC0415
  w, h = size
  left, right, top, bottom = 60, 150, 36, 44
  img = Image.new("RGB", (w, h), "white")
  draw = ImageDraw.Draw(img)
  n = max([len(c) for c in mean_curves.values()] + [2])
  values = [v for c in mean_curves.values() for v in c]
  lo = min(values + [1.0])
  y_min = max(0.0, np.floor(lo * 10) / 10 - 0.05) if values else 0.0
  to_x = lambda i: left + (w - left - right) * (i - 1) / max(n - 1, 1)  # noqa: E731
  to_y = lambda v: top + (h - top - bottom) * (1.0 - (v - y_min) / max(1.0 - y_min, 1e-6))  # noqa: E731
  draw.rectangle([left, top, w - right, h - bottom], outline="black")
  for k in range(1, n + 1):
    if k == 1 or k % 5 == 0 or k == n:
      draw.line([to_x(k), h - bottom, to_x(k), h - bottom + 4], fill="black")
      draw.text((to_x(k) - 6, h - bottom + 6), str(k), fill="black")
  for j in range(6):
    v = y_min + (1.0 - y_min) * j / 5
    draw.line([left - 4, to_y(v), left, to_y(v)], fill="black")
    draw.line([left, to_y(v), w - right, to_y(v)], fill=(225, 225, 225))
    draw.text((8, to_y(v) - 6), f"{100 * v:.1f}", fill="black")
  draw.text((left, 10), title, fill="black")
  draw.text(((w - right + left) // 2 - 40, h - 18), "number of clicks", fill="black")
  for idx, (label, curve) in enumerate(mean_curves.items()):
    color = _COLORS[idx % len(_COLORS)]
    pts = [(to_x(i + 1), to_y(v)) for i, v in enumerate(curve)]
    if len(pts) > 1:
      draw.line(pts, fill=color, width=2)
    for x, y in pts:
      draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    draw.line([w - right + 10, top + 10 + 16 * idx, w - right + 30, top + 10 + 16 * idx], fill=color, width=2)
    draw.text((w - right + 34, top + 4 + 16 * idx), str(label)[:16], fill="black")
  img.save(path)


class Timer:
  """Accumulates wall time of the model calls (seconds per click, SPC)."""

  def __init__(self):
    self.total = 0.0
    self.count = 0

  def __call__(self, fn: Callable) -> Callable:
    def timed(*args, **kwargs):
      start = time.perf_counter()
      out = fn(*args, **kwargs)
      self.total += time.perf_counter() - start
      self.count += 1
      return out
    return timed

  @property
  def seconds_per_call(self) -> float:
    return self.total / max(self.count, 1)
