"""Writes tests/fixtures/panoptic/: small synthetic panoptic maps and the PQ numbers that the
official cocodataset/panopticapi `pq_compute` gives for them.

Usage:
  # /tmp/ref_panopticapi: a checkout of cocodataset/panopticapi (tested at 7bb4655)
  python scripts/make_panoptic_fixtures.py --panopticapi /tmp/ref_panopticapi

The maps are drawn with NumPy (rectangles and discs of several categories, VOID gaps, crowd
regions); predictions perturb the ground truth (shifts, relabelling, splits, merges, spurious
segments, segments lying mostly on VOID or on crowd). Only the id maps (npz), the segment lists
(JSON) and panopticapi's results are committed; panopticapi itself is only run here.
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "panoptic"

CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 7, "name": "dog", "isthing": 1},
    {"id": 21, "name": "sky", "isthing": 0},
    {"id": 25, "name": "grass", "isthing": 0},
    {"id": 40, "name": "wall", "isthing": 0},  # never present: must not count in the averages
]


def id2rgb(ids):
  ids = np.asarray(ids, np.int64)
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def _shape(rng, h, w):
  m = np.zeros((h, w), bool)
  y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
  y1, x1 = y0 + rng.integers(3, h - y0 + 1), x0 + rng.integers(3, w - x0 + 1)
  if rng.random() < 0.5:
    m[y0:y1, x0:x1] = True
  else:
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = (y0 + y1) / 2, (x0 + x1) / 2, max(2.0, min(y1 - y0, x1 - x0) / 2)
    m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
  return m


def make_image(rng, h, w, next_id):
  """Returns (gt ids, gt segments, pred ids, pred segments)."""
  gt = np.zeros((h, w), np.int64)
  gt_segs = []
  # stuff background bands
  for cat in rng.choice([21, 25], size=rng.integers(1, 3), replace=False):
    band = np.zeros((h, w), bool)
    a, b = sorted(rng.integers(0, h, size=2))
    band[a:b + 1] = True
    sid = next_id(); gt[band] = sid
    gt_segs.append({"id": sid, "category_id": int(cat), "iscrowd": 0})
  for _ in range(rng.integers(2, 6)):
    m = _shape(rng, h, w)
    sid = next_id(); gt[m] = sid
    gt_segs.append({"id": sid, "category_id": int(rng.choice([1, 3, 7])),
                    "iscrowd": int(rng.random() < 0.2)})
  # VOID holes
  for _ in range(rng.integers(0, 3)):
    gt[_shape(rng, h, w) & (rng.random((h, w)) < 0.7)] = 0
  present = set(np.unique(gt).tolist())
  gt_segs = [s for s in gt_segs if s["id"] in present]
  for s in gt_segs:
    s["area"] = int((gt == s["id"]).sum())

  pred = np.zeros((h, w), np.int64)
  pred_segs = []
  for s in gt_segs:
    m = gt == s["id"]
    r = rng.random()
    if r < 0.15:
      continue  # missed
    if r < 0.35:  # shifted
      m = np.roll(m, (rng.integers(-3, 4), rng.integers(-3, 4)), axis=(0, 1))
    elif r < 0.45:  # eroded / grown by a random mask
      m = m & (rng.random((h, w)) < 0.8)
    cat = s["category_id"]
    if rng.random() < 0.15:
      cat = int(rng.choice([c["id"] for c in CATEGORIES[:5]]))
    if rng.random() < 0.15 and m.sum() > 6:  # split in two
      ys, xs = np.nonzero(m)
      cut = np.median(xs)
      left = m & (np.arange(w)[None] < cut)
      for part in (left, m & ~left):
        if part.any():
          sid = next_id(); pred[part] = sid
          pred_segs.append({"id": sid, "category_id": cat})
      continue
    sid = next_id(); pred[m] = sid
    pred_segs.append({"id": sid, "category_id": cat})
  for _ in range(rng.integers(0, 3)):  # spurious segments (may sit on VOID or crowd)
    m = _shape(rng, h, w)
    if rng.random() < 0.5:  # mostly on VOID and crowd regions
      crowd = np.isin(gt, [s["id"] for s in gt_segs if s["iscrowd"]])
      m &= (gt == 0) | crowd | (rng.random((h, w)) < 0.3)
    sid = next_id(); pred[m] = sid
    pred_segs.append({"id": sid, "category_id": int(rng.choice([1, 3, 7, 21, 25]))})
  present = set(np.unique(pred).tolist())
  pred_segs = [s for s in pred_segs if s["id"] in present]
  return gt, gt_segs, pred, pred_segs


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--panopticapi", required=True, help="checkout of cocodataset/panopticapi")
  parser.add_argument("--num-images", type=int, default=12)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  sys.path.insert(0, os.path.abspath(args.panopticapi))
  from panopticapi.evaluation import pq_compute, pq_compute_single_core  # noqa: PLC0415

  rng = np.random.default_rng(args.seed)
  counter = iter(range(1, 10 ** 6))
  def next_id():
    return int(next(counter) * 37 + 5)  # ids spread over all three RGB channels
  maps, gt_anns, pred_anns = {}, [], []
  for i in range(args.num_images):
    h, w = int(rng.integers(20, 33)), int(rng.integers(20, 41))
    gt, gt_segs, pred, pred_segs = make_image(rng, h, w, next_id)
    maps[f"gt_{i}"] = gt.astype(np.int32)
    maps[f"pred_{i}"] = pred.astype(np.int32)
    gt_anns.append({"image_id": i, "file_name": f"{i}.png", "segments_info": gt_segs})
    pred_anns.append({"image_id": i, "file_name": f"{i}.png", "segments_info": pred_segs})

  with tempfile.TemporaryDirectory() as tmp:
    for kind, anns in (("gt", gt_anns), ("pred", pred_anns)):
      os.makedirs(os.path.join(tmp, kind))
      for i, ann in enumerate(anns):
        Image.fromarray(id2rgb(maps[f"{kind}_{i}"])).save(os.path.join(tmp, kind, ann["file_name"]))
      data = {"annotations": anns, "categories": CATEGORIES,
              "images": [{"id": a["image_id"], "file_name": a["file_name"]} for a in anns]}
      with open(os.path.join(tmp, f"{kind}.json"), "w") as f:
        json.dump(data, f)
    results = pq_compute(os.path.join(tmp, "gt.json"), os.path.join(tmp, "pred.json"),
                         os.path.join(tmp, "gt"), os.path.join(tmp, "pred"))
    categories = {c["id"]: c for c in CATEGORIES}
    per_image = []
    for gt_ann, pred_ann in zip(gt_anns, pred_anns):  # per-image statistics: tp, fp, fn, iou sums
      stat = pq_compute_single_core(0, [(json.loads(json.dumps(gt_ann)), json.loads(json.dumps(pred_ann)))],
                                    os.path.join(tmp, "gt"), os.path.join(tmp, "pred"), categories)
      per_image.append({str(cat): {"iou": float(v.iou), "tp": v.tp, "fp": v.fp, "fn": v.fn}
                        for cat, v in stat.pq_per_cat.items() if v.tp + v.fp + v.fn})

  OUT.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(OUT / "maps.npz", **maps)
  with open(OUT / "segments.json", "w") as f:
    json.dump({"categories": CATEGORIES, "gt": gt_anns, "pred": pred_anns}, f)
  expected = {k: v for k, v in results.items() if k != "per_class"}
  expected["per_class"] = {str(k): v for k, v in results["per_class"].items()}
  expected["per_image"] = per_image
  with open(OUT / "expected_pq.json", "w") as f:
    json.dump(expected, f, indent=1)
  print("wrote", OUT, {k: results[k] for k in ("All", "Things", "Stuff")})


if __name__ == "__main__":
  main()
