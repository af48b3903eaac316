"""Writes tests/fixtures/davis/davis_fixture.npz: DAVIS-2017 J / F numbers of the davis2017-evaluation code.

Usage:
  # /tmp/davis2017-evaluation: a checkout of davisvideochallenge/davis2017-evaluation (tested at ac7c43f)
  python scripts/make_davis_fixtures.py [--davis /tmp/davis2017-evaluation]

The official code (`davis2017/metrics.py`, `davis2017/utils.py`, `davis2017/evaluation.py`) imports
opencv (`cv2.dilate`) and scikit-image (`skimage.morphology.disk`), which are not installed in this
project's environment. When `--davis` is given and both import, the official functions run; otherwise
this script uses a line-by-line transcription of `db_eval_iou`, `db_eval_boundary`, `f_measure`,
`_seg2bmap` and `db_statistics` below with numpy / scipy only:
  - `skimage.morphology.disk(r)`: the points of the (2r+1)^2 grid with x^2 + y^2 <= r^2;
  - `cv2.dilate(img, kernel)` (anchor at the centre, the default border that never wins a max):
    `scipy.ndimage.binary_dilation(img, structure=kernel, border_value=0)` (the same for a symmetric kernel);
  - everything else is numpy as in the original.
dinoseg/evaluation/davis.py is an independent (vectorised) implementation; tests/evaluation/test_davis.py
compares every number.

Contents (O objects, T frames, H x W):
  gt/<seq>, pred/<seq>     (O, T, H, W) uint8 binary masks per object (pred may have fewer objects)
  j/<seq>, f/<seq>         (O, T - 2) the official per-frame J and F (semi-supervised: first and last frame
                           dropped, missing predicted objects zero-padded)
  stats/<seq>              (O, 6) J mean, recall, decay, F mean, recall, decay (`db_statistics`)
  summary                  (7,) J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay over all objects
                           of all sequences (`evaluation_method.py`'s global table)
  bound/<name>             f_measure of extra single-frame cases (empty masks, one-pixel objects, borders)
"""
import argparse
import math
import pathlib
import sys
import warnings

import numpy as np
from scipy import ndimage

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "davis" / "davis_fixture.npz"


# ----------------------------------------------------------------------------- transcription (see docstring)

def disk(radius):
  grid = np.arange(-radius, radius + 1)
  xx, yy = np.meshgrid(grid, grid)
  return np.asarray((xx ** 2 + yy ** 2) <= radius ** 2, dtype=np.uint8)


def cv2_dilate(image, kernel):
  return ndimage.binary_dilation(image.astype(bool), structure=kernel.astype(bool), border_value=0).astype(np.uint8)


def db_eval_iou(annotation, segmentation, void_pixels=None):
  assert annotation.shape == segmentation.shape
  annotation = annotation.astype(bool)
  segmentation = segmentation.astype(bool)
  if void_pixels is not None:
    void_pixels = void_pixels.astype(bool)
  else:
    void_pixels = np.zeros_like(segmentation)
  inters = np.sum((segmentation & annotation) & np.logical_not(void_pixels), axis=(-2, -1))
  union = np.sum((segmentation | annotation) & np.logical_not(void_pixels), axis=(-2, -1))
  j = inters / union
  if j.ndim == 0:
    j = 1 if np.isclose(union, 0) else j
  else:
    j[np.isclose(union, 0)] = 1
  return j


def seg2bmap(seg):
  seg = seg.astype(bool)
  seg[seg > 0] = 1
  e = np.zeros_like(seg)
  s = np.zeros_like(seg)
  se = np.zeros_like(seg)
  e[:, :-1] = seg[:, 1:]
  s[:-1, :] = seg[1:, :]
  se[:-1, :-1] = seg[1:, 1:]
  b = seg ^ e | seg ^ s | seg ^ se
  b[-1, :] = seg[-1, :] ^ e[-1, :]
  b[:, -1] = seg[:, -1] ^ s[:, -1]
  b[-1, -1] = 0
  return b


def f_measure(foreground_mask, gt_mask, void_pixels=None, bound_th=0.008):
  if void_pixels is not None:
    void_pixels = void_pixels.astype(bool)
  else:
    void_pixels = np.zeros_like(foreground_mask).astype(bool)
  bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
  fg_boundary = seg2bmap(foreground_mask * np.logical_not(void_pixels))
  gt_boundary = seg2bmap(gt_mask * np.logical_not(void_pixels))
  fg_dil = cv2_dilate(fg_boundary.astype(np.uint8), disk(bound_pix).astype(np.uint8))
  gt_dil = cv2_dilate(gt_boundary.astype(np.uint8), disk(bound_pix).astype(np.uint8))
  gt_match = gt_boundary * fg_dil
  fg_match = fg_boundary * gt_dil
  n_fg = np.sum(fg_boundary)
  n_gt = np.sum(gt_boundary)
  if n_fg == 0 and n_gt > 0:
    precision, recall = 1, 0
  elif n_fg > 0 and n_gt == 0:
    precision, recall = 0, 1
  elif n_fg == 0 and n_gt == 0:
    precision, recall = 1, 1
  else:
    precision = np.sum(fg_match) / float(n_fg)
    recall = np.sum(gt_match) / float(n_gt)
  if precision + recall == 0:
    return 0
  return 2 * precision * recall / (precision + recall)


def db_eval_boundary(annotation, segmentation, void_pixels=None, bound_th=0.008):
  n_frames = annotation.shape[0]
  f_res = np.zeros(n_frames)
  for frame_id in range(n_frames):
    f_res[frame_id] = f_measure(segmentation[frame_id], annotation[frame_id], None, bound_th=bound_th)
  return f_res


def db_statistics(per_frame_values):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=RuntimeWarning)
    m = np.nanmean(per_frame_values)
    o = np.nanmean(per_frame_values > 0.5)
  n_bins = 4
  ids = np.round(np.linspace(1, len(per_frame_values), n_bins + 1) + 1e-10) - 1
  ids = ids.astype(np.uint8)
  d_bins = [per_frame_values[ids[i]:ids[i + 1] + 1] for i in range(0, 4)]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=RuntimeWarning)
    d = np.nanmean(d_bins[0]) - np.nanmean(d_bins[3])
  return m, o, d


def official(davis_root):
  """The official functions when --davis is given and cv2 + skimage import; else None."""
  if not davis_root:
    return None
  try:
    import cv2  # noqa: F401, PLC0415
    import skimage  # noqa: F401, PLC0415
  except ImportError:
    print("cv2 / skimage not importable: using the transcription", file=sys.stderr)
    return None
  sys.path.insert(0, str(davis_root))
  from davis2017 import metrics, utils  # noqa: PLC0415
  return metrics.db_eval_iou, metrics.db_eval_boundary, metrics.f_measure, utils.db_statistics


def evaluate_semisupervised(gt, pred, fns):
  """`DAVISEvaluation._evaluate_semisupervised` + the first / last frame cut of `evaluate`."""
  iou_fn, boundary_fn, _, _ = fns
  gt = gt[:, 1:-1]
  pred = pred[:, 1:-1]
  if pred.shape[0] < gt.shape[0]:
    pred = np.concatenate([pred, np.zeros((gt.shape[0] - pred.shape[0], *pred.shape[1:]), pred.dtype)], 0)
  j, f = np.zeros(gt.shape[:2]), np.zeros(gt.shape[:2])
  for i in range(gt.shape[0]):
    j[i] = iou_fn(gt[i], pred[i], None)
    f[i] = boundary_fn(gt[i], pred[i], None)
  return j, f


# ----------------------------------------------------------------------------- synthetic sequences

def ellipse(h, w, cy, cx, ry, rx):
  yy, xx = np.mgrid[:h, :w]
  return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def make_sequences(rng):
  seqs = {}
  # 1: two objects moving; the prediction is the ground truth shifted / eroded / noisy, one frame lost.
  h, w, t = 48, 64, 9
  gt = np.zeros((2, t, h, w), np.uint8)
  pred = np.zeros_like(gt)
  for k in range(t):
    a = ellipse(h, w, 20 + k, 15 + 3 * k, 9, 7)
    b = ellipse(h, w, 30, 50 - 2 * k, 6, 10) & ~a
    gt[0, k], gt[1, k] = a, b
    pred[0, k] = np.roll(a, (k % 3) - 1, axis=1)
    noisy = b ^ (rng.random((h, w)) < 0.03)
    pred[1, k] = ndimage.binary_erosion(noisy) if k % 2 else noisy
  pred[1, 4] = 0  # lost
  seqs["moving"] = (gt, pred)
  # 2: an object that disappears (empty GT frames) while the prediction keeps a blob; a missing predicted object.
  h, w, t = 40, 40, 7
  gt = np.zeros((2, t, h, w), np.uint8)
  for k in range(t):
    if k not in (3, 4):
      gt[0, k] = ellipse(h, w, 20, 20, 8, 8)
    gt[1, k, 0:6, 30:40] = 1  # touches the image border
  pred = np.zeros((1, t, h, w), np.uint8)
  for k in range(t):
    pred[0, k] = ellipse(h, w, 21, 19, 8, 9)
  seqs["vanish"] = (gt, pred)
  # 3: a long random-walk sequence (the decay quantiles over 22 frames), thin structures.
  h, w, t = 32, 48, 24
  gt = np.zeros((1, t, h, w), np.uint8)
  pred = np.zeros_like(gt)
  cy, cx = 16.0, 24.0
  for k in range(t):
    cy, cx = cy + rng.normal(0, 1.5), cx + rng.normal(0, 1.5)
    m = ellipse(h, w, cy, cx, 6, 4)
    m[int(np.clip(cy, 0, h - 1)), :] = True  # a one-pixel line
    gt[0, k] = m
    pred[0, k] = ndimage.binary_dilation(m, iterations=1 + k // 8) ^ (rng.random((h, w)) < 0.02 * (k / t))
  seqs["walk"] = (gt, pred)
  return seqs


def bound_cases():
  h, w = 30, 50
  cases = {}
  z = np.zeros((h, w), np.uint8)
  one = z.copy()
  one[10, 10] = 1
  full = np.ones((h, w), np.uint8)
  box = z.copy()
  box[5:20, 8:40] = 1
  cases["both_empty"] = (z, z)
  cases["pred_empty"] = (z, box)
  cases["gt_empty"] = (box, z)
  cases["one_pixel"] = (one, box)
  cases["full"] = (full, box)
  cases["corner"] = (np.pad(np.ones((4, 4), np.uint8), ((h - 4, 0), (w - 4, 0))), np.pad(np.ones((5, 5), np.uint8), ((h - 5, 0), (w - 5, 0))))
  return cases


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--davis", default="", help="a davis2017-evaluation checkout (used when cv2 + skimage import)")
  parser.add_argument("--out", default=str(OUT))
  args = parser.parse_args(argv)
  fns = official(args.davis) or (db_eval_iou, db_eval_boundary, f_measure, db_statistics)
  rng = np.random.default_rng(20171)
  out = {}
  all_j, all_f = [], []
  for name, (gt, pred) in make_sequences(rng).items():
    j, f = evaluate_semisupervised(gt, pred, fns)
    stats = np.asarray([[*fns[3](j[i]), *fns[3](f[i])] for i in range(gt.shape[0])], np.float64)
    out.update({f"gt/{name}": gt, f"pred/{name}": pred, f"j/{name}": j, f"f/{name}": f, f"stats/{name}": stats})
    all_j.append(stats[:, :3])
    all_f.append(stats[:, 3:])
  all_j, all_f = np.concatenate(all_j), np.concatenate(all_f)
  jm, fm = all_j.mean(0), all_f.mean(0)  # evaluation_method.py: np.mean over the per-object lists
  out["summary"] = np.asarray([(jm[0] + fm[0]) / 2, *jm, *fm], np.float64)
  for name, (fg, gt) in bound_cases().items():
    out[f"bound/fg/{name}"], out[f"bound/gt/{name}"] = fg, gt
    out[f"bound/f/{name}"] = np.float64(fns[2](fg, gt, None, 0.008))
  out["bound/f/one_pixel_th3"] = np.float64(fns[2](bound_cases()["one_pixel"][0], bound_cases()["one_pixel"][1], None, 3))
  path = pathlib.Path(args.out)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, **out)
  print(f"wrote {path} ({path.stat().st_size} bytes); summary {np.round(out['summary'], 4).tolist()}")


if __name__ == "__main__":
  main()
