"""Writes tests/fixtures/video_ap/: synthetic video ground truth + predictions and the LV-VIS evaluator's numbers.

Usage:
  # /tmp/ref_lvvis: a checkout of haochenheheda/LVVIS (tested at cc3cdf4)
  python scripts/make_video_ap_fixtures.py --lvvis /tmp/ref_lvvis
  python scripts/make_video_ap_fixtures.py --lvvis /tmp/ref_lvvis --bench 300 15   # timing only

The reference evaluator itself runs (`evaluate/lvvis.py` LVVIS + `evaluate/lvviseval.py` LVVISeval, the steps
of `mAP.py`: loadRes, evaluate, accumulate, summarize), CPU, numpy + pycocotools. Nothing of its logic is
changed; three things of the environment are supplied:
  - `matplotlib` is not installed: `evaluate/lvvis.py` imports it for drawing only, so empty stand-in
    modules are registered under its names;
  - NumPy >= 1.24 has no `np.float`, which `accumulate` uses as a dtype: the module's `np` is replaced by a
    proxy of numpy whose `float` is Python's float (what `np.float` always was);
  - `summarize` prints APb / APn with 3 decimals and returns only the overall numbers: the same proxy
    records the value of every `np.mean` call (the only use of np.mean in the module is the summary), and
    the printed lines say which metric each value belongs to (a printed -1.000 is a metric without values,
    for which no mean is computed). Each recorded value is checked against its printed rounding.

The data (seeded, deterministic): 6 videos of 3-5 frames at sizes from 96 x 128 to 330 x 400 (so small,
medium and large tracks exist); 8 categories with LV-VIS partitions 0, 1, 2, 3, 0, 1, 2, 3 (category 8 has no
ground truth, category 7 no predictions); tracks absent in some frames (null), one crowd track, ground
truth stored as compressed RLE, uncompressed RLE and polygons; `areas` (what the protocol uses) that put one
track's mean area exactly on the 128^2 boundary, disagree with another's masks, and hold zeros for a third;
a video without annotations, two identical tracks; predictions derived from the tracks (shifted, grown,
shrunk, some frames blanked or empty, one with fewer frames than its video) plus false positives, 130
predictions of one (video, category) (more than maxDets 100), exact duplicates, scores rounded to 0.05 so
many tie, and one prediction of a category the ground truth does not list.

Files:
  ground_truth.json   YouTube-VIS / LV-VIS format (videos, annotations, categories with partition).
  results.json        results in the LV-VIS server format (video_id, category_id, score, segmentations).
  reference.json      {"metrics": {AP, APb, APn, AP50, AP50b, ... ARl, ARlb, ARln}} from the reference
                      (fractions, -1 where undefined), "stats": the 12 numbers summarize() stores, "printed":
                      its printed lines; the versions of numpy / pycocotools used.
  reference.npz       precision (T=10, R=101, K=8, A=4, M=3) and recall (T, K, A, M) of accumulate().
"""
import argparse
import contextlib
import importlib.metadata
import io
import json
import pathlib
import re
import sys
import types

import numpy as np
from pycocotools import mask as coco_mask

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "video_ap"
PARTITIONS = [0, 1, 2, 3, 0, 1, 2, 3]  # categories 1..8
SIZES = [(96, 128), (200, 240), (330, 400), (160, 200), (300, 360), (120, 160)]
LENGTHS = [4, 3, 5, 4, 3, 4]


def _ellipse(h, w, cy, cx, ry, rx):
  yy, xx = np.mgrid[:h, :w]
  return (((yy - cy) / max(ry, 1e-3)) ** 2 + ((xx - cx) / max(rx, 1e-3)) ** 2 <= 1).astype(np.uint8)


def _rle(mask):
  r = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}


def _uncompressed(mask):
  flat = mask.astype(np.uint8).flatten(order="F")
  counts, value, run = [], 0, 0
  for px in flat:
    if px == value:
      run += 1
    else:
      counts.append(run)
      value, run = px, 1
  counts.append(run)
  return {"size": list(mask.shape), "counts": counts}


def make_data(seed: int = 0):
  rng = np.random.default_rng(seed)
  categories = [{"id": i + 1, "name": f"category_{i + 1}", "partition": p} for i, p in enumerate(PARTITIONS)]
  videos, annotations, tracks = [], [], []  # tracks: (video, category, [mask or None per frame])
  ann_id = 1
  for v, ((h, w), length) in enumerate(zip(SIZES, LENGTHS)):
    vid = v + 1
    videos.append({"id": vid, "height": h, "width": w, "length": length,
                   "file_names": [f"{vid:05d}/{f:05d}.jpg" for f in range(length)]})
    if vid == 6:
      continue  # a video without ground truth (its predictions are all false positives)
    num = int(rng.integers(2, 5))
    for k in range(num):
      cat = int(rng.choice([1, 2, 3, 4, 5, 6, 7])) if k else 1 + (v % 4)
      big = rng.uniform(0.1, 0.45)
      ry, rx = big * h, big * w * rng.uniform(0.6, 1.0)
      cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
      vy, vx = rng.uniform(-0.05, 0.05, 2) * np.array([h, w])
      enter = int(rng.integers(0, 2)) if k else 0
      if vid == 3 and k == 0:  # a large track (mean area > 256^2)
        ry, rx, cy, cx = 0.44 * h, 0.44 * w, h / 2, w / 2
      masks = []
      for f in range(length):
        if f < enter or (k == 1 and f == length - 1):
          masks.append(None)  # absent (late entry, early exit)
        else:
          masks.append(_ellipse(h, w, cy + vy * f, cx + vx * f, ry, rx))
      tracks.append((vid, cat, masks))
      segs, areas = [], []
      for f, m in enumerate(masks):
        if m is None:
          segs.append(None), areas.append(None)
          continue
        style = (ann_id + f) % 5
        if style == 3 and h * w <= 40000:
          segs.append(_uncompressed(m))
        elif style == 4:  # a polygon: the box of the ellipse's inner square
          y0, y1 = cy + vy * f - ry * 0.7, cy + vy * f + ry * 0.7
          x0, x1 = cx + vx * f - rx * 0.7, cx + vx * f + rx * 0.7
          segs.append([[x0, y0, x1, y0, x1, y1, x0, y1]])
          rle = coco_mask.merge(coco_mask.frPyObjects(segs[-1], h, w))
          masks[f] = coco_mask.decode(rle)
        else:
          segs.append(_rle(m))
        areas.append(float(masks[f].sum()))
      annotations.append({"id": ann_id, "video_id": vid, "category_id": cat, "segmentations": segs,
                          "areas": areas, "bboxes": [None] * length, "iscrowd": 0, "height": h, "width": w,
                          "length": 1})
      ann_id += 1
  # Special ground truth: one crowd track, one track on the small/medium boundary, one whose areas disagree.
  annotations[1]["iscrowd"] = 1
  annotations[2]["areas"] = [128 * 128 if a is not None else None for a in annotations[2]["areas"]]
  annotations[3]["areas"] = [a * 3.7 if a is not None else None for a in annotations[3]["areas"]]
  # Zero areas do not count in the mean (16500: medium; with the zeros it would be small).
  annotations[5]["areas"] = [0 if f % 2 else 16500 for f in range(len(annotations[5]["areas"]))]
  # Two identical tracks (IoU ties between tracks: the later one is taken first).
  twin = next(a for a in annotations if a["video_id"] == 4)
  annotations.append({**twin, "id": ann_id})
  tracks.append(next(t for t in tracks if t[0] == 4))
  gt = {"info": {"description": "dinoseg video AP fixture"}, "videos": videos, "annotations": annotations,
        "categories": categories}

  results = []

  def add(vid, cat, score, masks):
    segs = [None if m is None else _rle(m) for m in masks]
    results.append({"video_id": vid, "category_id": cat, "score": float(score), "segmentations": segs})

  for t, (vid, cat, masks) in enumerate(tracks):
    h, w = SIZES[vid - 1]
    if cat == 7:
      continue  # category 7 has ground truth but no predictions
    for variant in range(int(rng.integers(1, 4))):
      dy, dx = rng.integers(-12, 13, 2)
      grow = int(rng.integers(-3, 4))
      pred = []
      for f, m in enumerate(masks):
        if m is None:
          pred.append(None if rng.uniform() < 0.5 else np.zeros((h, w), np.uint8))
          continue
        p = np.roll(m, (dy, dx), axis=(0, 1))
        if grow > 0:
          p = np.maximum(p, np.roll(p, grow, 0)) | np.roll(p, grow, 1)
        elif grow < 0:
          p = p & np.roll(p, grow, 0) & np.roll(p, grow, 1)
        if rng.uniform() < 0.15:
          p = np.zeros_like(p)  # an empty mask in one frame
        pred.append(p.astype(np.uint8))
      if t == 0 and variant == 0:
        pred = pred[:-1]  # fewer frames than the video: only the common frames count
      add(vid, cat, np.round(rng.uniform(0.05, 1.0) / 0.05) * 0.05, pred)
  # False positives, wrong categories, and 130 predictions of video 1 / category 1.
  for n in range(40):
    vid = int(rng.integers(1, 7))
    h, w = SIZES[vid - 1]
    length = LENGTHS[vid - 1]
    cat = int(rng.choice([1, 2, 3, 4, 5, 6, 8]))  # never 7
    cy, cx, r = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(0.05, 0.4) * min(h, w)
    add(vid, cat, np.round(rng.uniform(0.0, 0.9) / 0.05) * 0.05,
        [_ellipse(h, w, cy, cx + 3 * f, r, r) for f in range(length)])
  base_track = next(m for vid, cat, m in tracks if vid == 1 and cat == 1)
  for n in range(130):
    dy, dx = rng.integers(-30, 31, 2)
    pred = [None if m is None else np.roll(m, (dy, dx), axis=(0, 1)) for m in base_track]
    add(1, 1, np.round(rng.uniform(0.0, 1.0) / 0.05) * 0.05, pred)
  results.extend([dict(r) for r in results[:6]])  # exact duplicates (same masks, same scores)
  add(2, 99, 0.9, [np.ones(SIZES[1], np.uint8)] * LENGTHS[1])
  return gt, results


class _NumpyProxy(types.ModuleType):
  """numpy with `float` (removed in NumPy 1.24) and a record of `mean` results; everything else is numpy."""

  def __init__(self):
    super().__init__("numpy")
    self.means = []

  def __getattr__(self, name):
    return getattr(np, name)

  float = float

  def mean(self, *args, **kwargs):
    value = np.mean(*args, **kwargs)
    self.means.append(float(value))
    return value


def run_reference(lvvis_root: pathlib.Path, gt_path: pathlib.Path, results_path: pathlib.Path) -> dict:
  for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.collections", "matplotlib.patches"):
    sys.modules.setdefault(name, types.ModuleType(name))
  sys.modules["matplotlib.collections"].PatchCollection = None
  sys.modules["matplotlib.patches"].Polygon = None
  sys.path.insert(0, str(lvvis_root))
  from evaluate import lvviseval  # noqa: PLC0415
  from evaluate.lvvis import LVVIS  # noqa: PLC0415
  proxy = _NumpyProxy()
  lvviseval.np = proxy
  log = io.StringIO()
  with contextlib.redirect_stdout(log):
    gt = LVVIS(str(gt_path))
    dt = gt.loadRes(str(results_path))
    ev = lvviseval.LVVISeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    proxy.means.clear()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      ev.summarize()
  printed = out.getvalue().splitlines()
  means = list(proxy.means)
  names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
  metrics = {}
  line_re = re.compile(r" (A[PR][bn]?) @\[ IoU=(\S+)\s*\| area=\s*(\w+) \| maxDets=\s*(\d+) \] = (-?[\d.]+)")
  for i, line in enumerate(printed):
    m = line_re.search(line)
    assert m, line
    suffix = m.group(1)[2:]
    name = names[i // 3] + suffix
    if m.group(5) == "-1.000":
      value = -1.0
    else:
      value = means.pop(0)
      assert f"{value:0.3f}" == m.group(5), (line, value)
    metrics[name] = value
  assert not means, means
  stats = [float(x) for x in ev.stats]
  for i, name in enumerate(names):
    assert stats[i] == metrics[name], (name, stats[i], metrics[name])
  return {"metrics": metrics, "stats": stats, "printed": printed, "precision": ev.eval["precision"],
          "recall": ev.eval["recall"]}


def benchmark(lvvis_root: pathlib.Path, num_videos: int, num_frames: int, seed: int = 0) -> None:
  """Times dinoseg's evaluator and the reference on a larger synthetic set (240 x 320 frames, 50 categories,
  4 tracks and 20 predictions per video) and checks that every number agrees. Writes nothing to the fixtures."""
  import tempfile  # noqa: PLC0415
  import time  # noqa: PLC0415
  from dinoseg.evaluation import video_ap  # noqa: PLC0415
  rng = np.random.default_rng(seed)
  h, w, num_cats = 240, 320, 50
  videos, annotations, results = [], [], []
  for vid in range(1, num_videos + 1):
    videos.append({"id": vid, "height": h, "width": w, "length": num_frames})
    for cat in rng.integers(1, num_cats + 1, 4):
      cy, cx, r = rng.uniform(50, 190), rng.uniform(50, 270), rng.uniform(10, 60)
      segs = [_rle(_ellipse(h, w, cy + f, cx + 2 * f, r, r)) for f in range(num_frames)]
      annotations.append({"id": len(annotations) + 1, "video_id": vid, "category_id": int(cat), "iscrowd": 0,
                          "segmentations": segs, "areas": [int(coco_mask.area(s)) for s in segs]})
      for j in range(5):
        dy, dx = rng.uniform(-10, 10, 2)
        results.append({"video_id": vid, "category_id": int(cat if j < 3 else rng.integers(1, num_cats + 1)),
                        "score": float(rng.uniform()),
                        "segmentations": [_rle(_ellipse(h, w, cy + f + dy, cx + 2 * f + dx, r, r))
                                          for f in range(num_frames)]})
  categories = [{"id": i + 1, "name": str(i + 1), "partition": i % 4} for i in range(num_cats)]
  tmp = pathlib.Path(tempfile.mkdtemp())
  gt_path, res_path = tmp / "ground_truth.json", tmp / "results.json"
  gt_path.write_text(json.dumps({"videos": videos, "annotations": annotations, "categories": categories}))
  res_path.write_text(json.dumps(results))
  start = time.perf_counter()
  ours = video_ap.evaluate_video_ap(str(gt_path), str(res_path))
  ours_s = time.perf_counter() - start
  start = time.perf_counter()
  ref = run_reference(lvvis_root, gt_path, res_path)
  ref_s = time.perf_counter() - start
  equal = (all(ours["metrics"][k] == v for k, v in ref["metrics"].items())
           and np.array_equal(ours["precision"], ref["precision"]) and np.array_equal(ours["recall"], ref["recall"]))
  print(f"{num_videos} videos x {num_frames} frames, {len(annotations)} tracks, {len(results)} predictions: "
        f"dinoseg {ours_s:.2f} s, reference {ref_s:.2f} s, every number equal: {equal}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--lvvis", default="/tmp/ref_lvvis", help="checkout of haochenheheda/LVVIS")
  parser.add_argument("--out", default=str(OUT))
  parser.add_argument("--bench", type=int, nargs=2, metavar=("VIDEOS", "FRAMES"),
                      help="only time dinoseg vs the reference on a larger synthetic set")
  args = parser.parse_args()
  if args.bench:
    benchmark(pathlib.Path(args.lvvis), *args.bench)
    return
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  gt, results = make_data()
  gt_path, res_path = out / "ground_truth.json", out / "results.json"
  gt_path.write_text(json.dumps(gt, separators=(",", ":")))
  res_path.write_text(json.dumps(results, separators=(",", ":")))
  ref = run_reference(pathlib.Path(args.lvvis), gt_path, res_path)
  (out / "reference.json").write_text(json.dumps(
      {"metrics": ref["metrics"], "stats": ref["stats"], "printed": ref["printed"],
       "versions": {"numpy": np.__version__, "pycocotools": importlib.metadata.version("pycocotools")},
       "reference": "haochenheheda/LVVIS cc3cdf4 evaluate/lvviseval.py"}, indent=1))
  np.savez_compressed(out / "reference.npz", precision=ref["precision"], recall=ref["recall"])
  for name, value in ref["metrics"].items():
    print(f"{name:8s} {value:.6f}")
  print(f"{len(results)} results, {len(gt['annotations'])} tracks; wrote {out}")


if __name__ == "__main__":
  main()
