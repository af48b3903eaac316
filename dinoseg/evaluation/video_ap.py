"""Video instance segmentation AP (YouTube-VIS protocol) with LV-VIS base / novel AP.

The protocol is the one of the YouTube-VIS cocoapi fork as LV-VIS ships it (haochenheheda/LVVIS
`evaluate/lvviseval.py`, `evaluate/lvvis.py`, `mAP.py`); `tests/evaluation/test_video_ap.py` checks every
number against that code (fixtures from `scripts/make_video_ap_fixtures.py`).

- A prediction and a ground-truth track are compared by the **video IoU**: intersection and union summed
  over the frames of the video, sum_t |d_t & g_t| / sum_t |d_t | g_t|. A frame where one side has no
  mask (None) adds that side's area to the union only; a frame where neither has one adds nothing; a
  union of 0 gives IoU 0. When the two lists of frames differ in length only the common prefix counts
  (the reference zips them).
- Predictions and tracks are matched per (video, category), greedily in score order (stable sort, the
  order of the results file breaks ties), at the IoU thresholds 0.50:0.05:0.95; at most `max_dets[-1]`
  (100) predictions per (video, category) take part.
- Area ranges use the **mean per-frame area** over the frames with a non-zero area (0 when there is
  none): the ground truth's `areas` field as stored in its JSON (truncated to int, as the reference
  does), a prediction's mask areas. Ranges all / small < 128^2 / medium 128^2..256^2 / large > 256^2,
  both bounds inclusive. Tracks outside the range are ignored; so are unmatched predictions outside it.
- `iscrowd` tracks are not ignored (the fork never reads its `ignore` flag); a crowd track may be
  matched by any number of predictions.
- Precision is interpolated at 101 recall points, maxDets 1 / 10 / 100; AP and AR are means over the
  (IoU threshold, recall point, category) cells that have ground truth.
- **APb / APn** (and every other metric with a `b` / `n` suffix) are the same means over the base /
  novel categories: LV-VIS category `partition` 0 (COCO) and 1 (LVIS frequent + common) are base, 2
  (LVIS rare) and 3 (new in LV-VIS) novel. The partitions come from the ground truth's categories or
  the `partitions` argument; without them (YouTube-VIS, OVIS) only the overall metrics are reported.
  The reference selects the categories by `id - 1` along its sorted-category axis, i.e. it assumes ids
  1..C; here they are selected by id, which is the same thing for LV-VIS and also right otherwise.

Ground truth: a YouTube-VIS JSON dict (or file): `videos` [{id, height, width, length?}], `annotations`
[{id, video_id, category_id, segmentations (one per frame: compressed or uncompressed RLE, polygons, or
null), areas (one per frame or null), iscrowd}], `categories` [{id, name, partition?}].

Results (what `instances_to_video_json` writes, the list the reference's evaluator reads from
`results.json` and the LV-VIS evaluation server accepts): a JSON array of
`{"video_id": int, "category_id": int (the dataset's id; 1-based for LV-VIS), "score": float,
"segmentations": [one compressed RLE {"size": [h, w], "counts": str} per frame, or null]}`.
"""
import json
import logging
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from pycocotools import mask as coco_mask

from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.ops.masks import rle_encode

log = logging.getLogger(__name__)

# Built the way the reference builds them (np.linspace, so 0.75 is exactly 0.75).
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES = (("all", (0.0, 1e5 ** 2)), ("small", (0.0, 128.0 ** 2)), ("medium", (128.0 ** 2, 256.0 ** 2)),
               ("large", (256.0 ** 2, 1e5 ** 2)))
BASE_PARTITIONS = (0, 1)
NOVEL_PARTITIONS = (2, 3)

# (name, average precision?, IoU threshold or None = all, area range, index into max_dets)
SUMMARY = (("AP", True, None, "all", 2), ("AP50", True, .5, "all", 2), ("AP75", True, .75, "all", 2),
           ("APs", True, None, "small", 2), ("APm", True, None, "medium", 2), ("APl", True, None, "large", 2),
           ("AR1", False, None, "all", 0), ("AR10", False, None, "all", 1), ("AR100", False, None, "all", 2),
           ("ARs", False, None, "small", 2), ("ARm", False, None, "medium", 2), ("ARl", False, None, "large", 2))
METRIC_NAMES = tuple(name for name, *_ in SUMMARY)


# ----------------------------------------------------------------------------- input


def _read_json(source, what: str):
  if not isinstance(source, (str, os.PathLike)):
    return source
  if not os.path.isfile(source):
    raise UserFileNotFoundError(f"{what} file {source} not found")
  with open(source, "rb") as f:
    try:
      return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise UserValueError(f"{what} file {source} is not valid JSON: {e}") from e


def _frame_rle(seg, height: int, width: int, what: str):
  """One frame's segmentation -> compressed RLE {"size", "counts": bytes}, or None when absent.

  Absent = anything false (null, an empty polygon list), as the reference's `if seg` tests it.
  """
  if not seg:
    return None
  if type(seg) is dict and type(seg.get("counts")) is str and seg.get("size") == [height, width]:
    return {"size": [height, width], "counts": seg["counts"].encode("ascii")}  # the common case, fast
  try:
    if isinstance(seg, list):  # polygons, merged into one mask
      rle = coco_mask.merge(coco_mask.frPyObjects(seg, height, width))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
      size = seg["size"]
      if sum(int(c) for c in seg["counts"]) != int(size[0]) * int(size[1]):
        raise ValueError("uncompressed counts do not sum to size[0] * size[1]")
      rle = coco_mask.frPyObjects(seg, int(size[0]), int(size[1]))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):
      counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
      rle = {"size": [int(s) for s in seg["size"]], "counts": counts}
    else:
      raise ValueError(f"expected an RLE dict or polygons, got {type(seg).__name__}")
  except (ValueError, TypeError, KeyError, IndexError) as e:
    raise UserValueError(f"{what}: unreadable segmentation: {e}") from e
  if [int(s) for s in rle["size"]] != [height, width]:
    raise UserValueError(f"{what}: mask size {list(rle['size'])} differs from the video's {[height, width]}")
  return rle


class _Tracks:
  """Video-level annotations (ground truth or predictions) of the videos and categories evaluated.

  Attributes (N annotations, in the order they are read):
    ids (N,) int, video (N,) int video id, category (N,) int category id, score (N,) float (1 for
    ground truth), crowd (N,) bool, avg_area (N,) float; rles[n] = [compressed RLE or None per frame].
  """

  def __init__(self, anns: Sequence[Mapping], videos: Mapping[int, Mapping], category_ids: set, *, is_gt: bool):
    what = "ground truth" if is_gt else "results"
    ids, vids, cats, scores, crowd, areas, rles = [], [], [], [], [], [], []
    self.unknown_category = 0
    for n, ann in enumerate(anns):
      if not isinstance(ann, Mapping):
        raise UserValueError(f"{what}: entry {n} is a {type(ann).__name__}, not an object")
      for key in ("video_id", "category_id", "segmentations") + (("id",) if is_gt else ("score",)):
        if key not in ann:
          raise UserValueError(f"{what}: entry {n} has no {key!r}")
      vid = ann["video_id"]
      if vid not in videos:
        if is_gt:  # the reference evaluates the videos listed in `videos` only
          continue
        raise UserValueError(f"results: entry {n} refers to video {vid!r}, which the ground truth does not list")
      if ann["category_id"] not in category_ids:  # not evaluated (the reference filters by category)
        self.unknown_category += 1
        continue
      segs = ann["segmentations"]
      if not isinstance(segs, list):
        raise UserValueError(f"{what}: entry {n} 'segmentations' must be a list (one per frame)")
      v = videos[vid]
      label = f"{what} entry {n} (video {vid})"
      frames = [_frame_rle(s, v["height"], v["width"], f"{label} frame {t}") for t, s in enumerate(segs)]
      if is_gt:
        listed = ann.get("areas") or []
        try:
          kept = [int(a) for a in listed if a]  # the reference: int(a) for a in areas if a
        except (TypeError, ValueError) as e:
          raise UserValueError(f"{label}: 'areas' must be numbers or null: {e}") from e
        ids.append(ann["id"])
        scores.append(1.0)
      else:
        kept = [int(a) for a in coco_mask.area([r for r in frames if r is not None])] if any(frames) else []
        kept = [a for a in kept if a]
        ids.append(n + 1)  # the reference numbers results 1..N in file order
        try:
          scores.append(float(ann["score"]))
        except (TypeError, ValueError) as e:
          raise UserValueError(f"{label}: 'score' must be a number") from e
      areas.append(sum(kept) / len(kept) if kept else 0.0)  # = np.mean (integer sum exact, one rounding)
      vids.append(vid)
      cats.append(ann["category_id"])
      crowd.append(bool(int(ann.get("iscrowd", 0) or 0)) if is_gt else False)
      rles.append(frames)
    if is_gt and len(set(ids)) != len(ids):
      raise UserValueError("ground truth: annotation ids are not unique")
    self.ids = np.asarray(ids, np.int64)
    self.video = vids
    self.category = cats
    self.score = np.asarray(scores, np.float64)
    self.crowd = np.asarray(crowd, bool)
    self.avg_area = np.asarray(areas, np.float64)
    self.rles = rles


# ----------------------------------------------------------------------------- video IoU


def _per_frame_areas(rles: Sequence[Sequence], length: int) -> np.ndarray:
  """(N, length) float64 mask area per annotation and frame (0 where absent or past its frames)."""
  out = np.zeros((len(rles), length), np.float64)
  for n, frames in enumerate(rles):
    present = [t for t, r in enumerate(frames) if r is not None]
    if present:
      out[n, present] = coco_mask.area([frames[t] for t in present])
  return out


def video_iou(dt_rles: Sequence[Sequence], gt_rles: Sequence[Sequence]) -> np.ndarray:
  """Video IoU between predictions and ground-truth tracks of one video.

  Args:
    dt_rles: D lists of per-frame compressed RLEs (None where absent); gt_rles: G such lists.
  Returns:
    (D, G) float64: sum_t intersection_t / sum_t union_t over the frames both lists have (0 when the
    union is empty). The per-frame intersections come from pycocotools' crowd IoU (intersection / area
    of the prediction, computed on the RLEs with its box pre-filter), times that area, rounded: exact,
    as both are integers below 2^32.
  """
  d_num, g_num = len(dt_rles), len(gt_rles)
  if d_num == 0 or g_num == 0:
    return np.zeros((d_num, g_num), np.float64)
  d_len = np.asarray([len(f) for f in dt_rles])
  g_len = np.asarray([len(f) for f in gt_rles])
  length = int(max(d_len.max(), g_len.max()))
  d_area = _per_frame_areas(dt_rles, length)
  g_area = _per_frame_areas(gt_rles, length)
  inter = np.zeros((d_num, g_num), np.float64)
  for t in range(length):
    d_idx = np.nonzero(d_area[:, t] > 0)[0]  # an empty mask intersects nothing: skip it as well
    g_idx = np.nonzero(g_area[:, t] > 0)[0]
    if not len(d_idx) or not len(g_idx):
      continue
    ratio = np.asarray(coco_mask.iou([dt_rles[i][t] for i in d_idx], [gt_rles[j][t] for j in g_idx],
                                     [1] * len(g_idx)), np.float64).reshape(len(d_idx), len(g_idx))
    if (ratio < 0).any():  # pycocotools' flag for masks of different sizes
      raise UserValueError(f"frame {t}: a prediction's mask size differs from the ground truth's")
    inter[np.ix_(d_idx, g_idx)] += np.rint(ratio * d_area[d_idx, t][:, None])
  # Union over the common frames: sum of both areas over frames < min(len_d, len_g) minus the intersection.
  d_cum = np.concatenate([np.zeros((d_num, 1)), np.cumsum(d_area, axis=1)], axis=1)
  g_cum = np.concatenate([np.zeros((g_num, 1)), np.cumsum(g_area, axis=1)], axis=1)
  common = np.minimum(d_len[:, None], g_len[None, :])
  union = (np.take_along_axis(d_cum, common, axis=1) + np.take_along_axis(g_cum, common.T, axis=1).T - inter)
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


# ----------------------------------------------------------------------------- matching


def greedy_match(ious: np.ndarray, dt_valid: np.ndarray, gt_valid: np.ndarray, gt_crowd: np.ndarray,
                 gt_ignore: np.ndarray, thresholds: np.ndarray = IOU_THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
  """COCO's greedy matching for P (video, category) pairs at once, every area range and threshold.

  Predictions are taken in order (they must be sorted by score); each takes, among the tracks not yet
  matched (crowd tracks always stay available) whose IoU reaches the threshold, the one of highest IoU,
  ties to the later track, preferring tracks not ignored; ignored ones only when no other qualifies.

  Args:
    ious: (P, D, G) video IoUs; dt_valid: (P, D) bool; gt_valid, gt_crowd: (P, G) bool;
    gt_ignore: (P, A, G) bool, per area range; thresholds: (T,).
  Returns:
    matched_gt: (P, A, T, D) int, the matched track's index or -1; matched_ignored: (P, A, T, D) bool,
    whether that track is ignored.
  """
  p_num, d_num, g_num = ious.shape
  a_num, t_num = gt_ignore.shape[1], len(thresholds)
  matched_gt = np.full((p_num, a_num, t_num, d_num), -1, np.int64)
  matched_ignored = np.zeros((p_num, a_num, t_num, d_num), bool)
  if g_num == 0:
    return matched_gt, matched_ignored
  thr = np.minimum(np.asarray(thresholds, np.float64), 1 - 1e-10)[None, None, :, None]  # (1, 1, T, 1)
  taken = np.zeros((p_num, a_num, t_num, g_num), bool)
  ignore = gt_ignore[:, :, None, :]  # (P, A, 1, G)
  available = gt_valid[:, None, None, :]
  reverse = np.arange(g_num - 1, -1, -1)
  for d in range(d_num):
    iou = ious[:, d][:, None, None, :]  # (P, 1, 1, G)
    ok = (~taken | gt_crowd[:, None, None, :]) & available & (iou >= thr)  # (P, A, T, G)
    regular = ok & ~ignore
    cand = np.where(regular.any(-1, keepdims=True), regular, ok & ignore)
    scored = np.where(cand, iou, -np.inf)
    top = cand & (scored == scored.max(-1, keepdims=True))
    found = cand.any(-1) & dt_valid[:, d][:, None, None]  # (P, A, T)
    pick = g_num - 1 - np.argmax(top[..., reverse], axis=-1)  # the last of the best
    matched_gt[..., d] = np.where(found, pick, -1)
    matched_ignored[..., d] = found & np.take_along_axis(np.broadcast_to(ignore, taken.shape), pick[..., None],
                                                         -1)[..., 0]
    np.put_along_axis(taken, pick[..., None], np.take_along_axis(taken, pick[..., None], -1) | found[..., None], -1)
  return matched_gt, matched_ignored


# ----------------------------------------------------------------------------- the evaluation


def _partition_map(categories: Sequence[Mapping], partitions) -> dict | None:
  if partitions is None:
    if categories and all("partition" in c for c in categories):
      return {c["id"]: c["partition"] for c in categories}
    return None
  data = _read_json(partitions, "partitions")
  if isinstance(data, Mapping) and "categories" in data:
    data = data["categories"]
  if isinstance(data, list):
    try:
      return {c["id"]: c["partition"] for c in data}
    except (TypeError, KeyError) as e:
      raise UserValueError(f"partitions: every category needs 'id' and 'partition' ({e})") from e
  if isinstance(data, Mapping):
    out = {}
    for k, v in data.items():
      try:
        out[int(k)] = int(v)
      except (TypeError, ValueError) as e:
        raise UserValueError(f"partitions: expected {{category id: partition}}, got {k!r}: {v!r}") from e
    return out
  raise UserValueError("partitions must be a list of categories with 'partition' or a {category id: partition} map")


def evaluate_video_ap(ground_truth, results, *, partitions=None, max_dets: Sequence[int] = MAX_DETS,
                      base_partitions: Sequence[int] = BASE_PARTITIONS,
                      novel_partitions: Sequence[int] = NOVEL_PARTITIONS) -> dict[str, Any]:
  """Video mask AP / AR of `results` against `ground_truth` (module docstring).

  Args:
    ground_truth: YouTube-VIS-format dict, or the path of its JSON.
    results: list of result dicts, or the path of a results JSON (module docstring).
    partitions: optional category partitions (a {category id: partition} map, a list of categories
      with `partition`, or the path of a JSON with either); default: the ground truth's categories'
      `partition` when every category has one.
    max_dets: the three detection budgets (AR1 / AR10 / AR100 use them in order).
  Returns:
    {"metrics": {name: value}} with the 12 COCO names (AP, AP50, AP75, APs, APm, APl, AR1, AR10,
    AR100, ARs, ARm, ARl) and, with partitions, each with a `b` (base) and `n` (novel) suffix; values
    are fractions, -1 where no category has ground truth (the reference's convention);
    "precision" (T, R, K, A, M) and "recall" (T, K, A, M) arrays (-1 where undefined);
    "category_ids" (K,) the sorted category ids of the K axis; "base_ids" / "novel_ids" (or None).
  """
  gt = _read_json(ground_truth, "ground truth")
  res = _read_json(results, "results")
  if not isinstance(gt, Mapping) or not isinstance(gt.get("videos"), list) or not isinstance(
      gt.get("categories"), list):
    raise UserValueError("ground truth must be a YouTube-VIS JSON object with 'videos' and 'categories' lists")
  if not isinstance(res, list):
    raise UserValueError(f"results must be a JSON array of objects, got {type(res).__name__}")
  max_dets = sorted(int(m) for m in max_dets)
  if len(max_dets) != 3 or max_dets[0] < 1:
    raise UserValueError(f"max_dets must be three positive budgets, got {max_dets}")
  videos = {}
  for v in gt["videos"]:
    try:
      videos[v["id"]] = {"height": int(v["height"]), "width": int(v["width"])}
    except (TypeError, KeyError, ValueError) as e:
      raise UserValueError(f"ground truth: every video needs 'id', 'height' and 'width' ({e})") from e
  video_ids = sorted(videos)
  if not all(isinstance(c, Mapping) and "id" in c for c in gt["categories"]):
    raise UserValueError("ground truth: every category needs an 'id'")
  category_ids = sorted({c["id"] for c in gt["categories"]})
  cat_pos = {c: k for k, c in enumerate(category_ids)}
  gts = _Tracks(gt.get("annotations") or [], videos, set(category_ids), is_gt=True)
  dts = _Tracks(res, videos, set(category_ids), is_gt=False)
  if dts.unknown_category:
    log.warning("%d results have a category the ground truth does not list; they are not evaluated",
                dts.unknown_category)

  # (video, category) pairs in the reference's order: categories, then videos, both sorted. The kept
  # predictions are rows 0..N-1 in that order, each pair's by score (so a category's rows are contiguous).
  vid_pos = {v: i for i, v in enumerate(video_ids)}
  groups_gt, groups_dt = {}, {}
  for n in range(len(gts.ids)):
    groups_gt.setdefault((cat_pos[gts.category[n]], vid_pos[gts.video[n]]), []).append(n)
  for n in range(len(dts.ids)):
    groups_dt.setdefault((cat_pos[dts.category[n]], vid_pos[dts.video[n]]), []).append(n)
  pairs = sorted(set(groups_gt) | set(groups_dt))
  pair_dt, pair_gt = [], []
  for key in pairs:
    members = np.asarray(groups_dt.get(key, []), np.int64)
    order = np.argsort(-dts.score[members], kind="mergesort")  # stable: file order breaks ties
    pair_dt.append(members[order][:max_dets[-1]])
    pair_gt.append(np.asarray(groups_gt.get(key, []), np.int64))
  row_start = np.cumsum([0] + [len(d) for d in pair_dt])
  rows = np.concatenate(pair_dt + [np.zeros(0, np.int64)])  # (N,) index into dts
  row_rank = np.concatenate([np.arange(len(d)) for d in pair_dt] + [np.zeros(0, np.int64)])
  row_score = dts.score[rows]

  areas = np.asarray([rng for _, rng in AREA_RANGES], np.float64)  # (A, 2)
  a_num, t_num, r_num, m_num = len(areas), len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(max_dets)

  def outside(values):  # (A, n): outside each area range (bounds inclusive)
    return (values[None] < areas[:, :1]) | (values[None] > areas[:, 1:])

  # Matching, only for the pairs that have both predictions and tracks, padded to (Pm, D, G).
  matched = [p for p in range(len(pairs)) if len(pair_dt[p]) and len(pair_gt[p])]
  d_max = max([len(pair_dt[p]) for p in matched] + [0])
  g_max = max([len(pair_gt[p]) for p in matched] + [0])
  ious = np.zeros((len(matched), d_max, g_max))
  by_video: dict[int, list[int]] = {}
  for i, p in enumerate(matched):
    by_video.setdefault(pairs[p][1], []).append(i)
  for members in by_video.values():  # one IoU computation per video, for all its categories
    d_rows = np.concatenate([pair_dt[matched[i]] for i in members])
    g_rows = np.concatenate([pair_gt[matched[i]] for i in members])
    full = video_iou([dts.rles[n] for n in d_rows], [gts.rles[n] for n in g_rows])
    d0 = g0 = 0
    for i in members:
      nd, ng = len(pair_dt[matched[i]]), len(pair_gt[matched[i]])
      ious[i, :nd, :ng] = full[d0:d0 + nd, g0:g0 + ng]
      d0, g0 = d0 + nd, g0 + ng
  dt_valid = np.zeros((len(matched), d_max), bool)
  gt_valid = np.zeros((len(matched), g_max), bool)
  gt_crowd = np.zeros((len(matched), g_max), bool)
  gt_ignore = np.zeros((len(matched), a_num, g_max), bool)
  gt_id_set = np.zeros((len(matched), g_max), bool)
  for i, p in enumerate(matched):
    nd, ng = len(pair_dt[p]), len(pair_gt[p])
    dt_valid[i, :nd] = gt_valid[i, :ng] = True
    gt_crowd[i, :ng] = gts.crowd[pair_gt[p]]
    gt_id_set[i, :ng] = gts.ids[pair_gt[p]] != 0
    gt_ignore[i, :, :ng] = outside(gts.avg_area[pair_gt[p]])
  matched_gt, matched_ignored = greedy_match(ious, dt_valid, gt_valid, gt_crowd, gt_ignore)
  # A match counts when the track's id is non-zero (the reference stores the id as the match flag).
  id_set = np.broadcast_to(gt_id_set[:, None, None, :], matched_gt.shape[:3] + (g_max,))
  pair_hit = (matched_gt >= 0) & np.take_along_axis(id_set, np.maximum(matched_gt, 0), -1)
  hit = np.zeros((a_num, t_num, len(rows)), bool)  # (A, T, N)
  hit_ignored = np.zeros((a_num, t_num, len(rows)), bool)
  for i, p in enumerate(matched):
    lo, hi = row_start[p], row_start[p + 1]
    hit[:, :, lo:hi] = pair_hit[i, :, :, :hi - lo]
    hit_ignored[:, :, lo:hi] = matched_ignored[i, :, :, :hi - lo]
  # Ignored: matched to an ignored track, or unmatched (or matched to id 0) and outside the range.
  dt_ignored = hit_ignored | (~hit & outside(dts.avg_area[rows])[:, None, :])

  # Tracks that count, per category and area range (crowd tracks count).
  k_num = len(category_ids)
  gt_counted = np.zeros((k_num, a_num), np.int64)
  gt_cat = np.asarray([cat_pos[c] for c in gts.category], np.int64)
  np.add.at(gt_counted, gt_cat, (~outside(gts.avg_area)).T.astype(np.int64))

  precision = -np.ones((t_num, r_num, k_num, a_num, m_num))
  recall = -np.ones((t_num, k_num, a_num, m_num))
  cat_of_pair = np.asarray([k for k, _ in pairs], np.int64)
  for k in np.nonzero(gt_counted.any(1))[0]:
    first, last = np.searchsorted(cat_of_pair, [k, k + 1])  # this category's pairs, hence rows
    lo, hi = row_start[first], row_start[last]
    for m, max_det in enumerate(max_dets):
      keep = lo + np.nonzero(row_rank[lo:hi] < max_det)[0]  # concatenated video by video
      order = keep[np.argsort(-row_score[keep], kind="mergesort")]
      tp, ig = hit[:, :, order], dt_ignored[:, :, order]  # (A, T, n)
      tp_sum = np.cumsum(tp & ~ig, axis=-1).astype(np.float64)
      fp_sum = np.cumsum(~tp & ~ig, axis=-1).astype(np.float64)
      n_det = len(order)
      for a in np.nonzero(gt_counted[k])[0]:
        rc = tp_sum[a] / gt_counted[k, a]  # (T, n)
        pr = tp_sum[a] / (fp_sum[a] + tp_sum[a] + np.spacing(1))
        recall[:, k, a, m] = rc[:, -1] if n_det else 0
        if not n_det:
          precision[:, :, k, a, m] = 0
          continue
        pr = np.maximum.accumulate(pr[:, ::-1], axis=-1)[:, ::-1]  # interpolated: max over higher recall
        where = np.stack([np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left") for t in range(t_num)])
        precision[:, :, k, a, m] = np.where(where < n_det, np.take_along_axis(pr, np.minimum(where, n_det - 1), -1),
                                            0.0)

  parts = _partition_map(gt["categories"], partitions)
  subsets = {"": np.arange(k_num)}
  base_ids = novel_ids = None
  if parts is not None:
    # In the order the ground truth lists its categories, as the reference takes them.
    listed = list(dict.fromkeys(c["id"] for c in gt["categories"]))
    base_ids = [c for c in listed if parts.get(c) in tuple(base_partitions)]
    novel_ids = [c for c in listed if parts.get(c) in tuple(novel_partitions)]
    subsets["b"] = np.asarray([cat_pos[c] for c in base_ids], np.int64)
    subsets["n"] = np.asarray([cat_pos[c] for c in novel_ids], np.int64)
  labels = [name for name, _ in AREA_RANGES]
  metrics = {}
  for name, is_ap, iou_thr, area, m in SUMMARY:
    a = labels.index(area)
    if is_ap:
      s = precision[..., a, m]  # (T, R, K)
    else:
      s = recall[..., a, m][:, None, :]  # (T, 1, K)
    if iou_thr is not None:
      s = s[np.where(iou_thr == IOU_THRESHOLDS)[0]]
    for suffix, cats in subsets.items():
      sel = s[:, :, cats]
      sel = sel[sel > -1]
      metrics[name + suffix] = float(np.mean(sel)) if sel.size else -1.0
  return {"metrics": metrics, "precision": precision, "recall": recall, "category_ids": category_ids,
          "base_ids": base_ids, "novel_ids": novel_ids}


def percent(metrics: Mapping[str, float]) -> dict[str, float]:
  """The metrics in percent, NaN where undefined (-1), as the other dinoseg evaluators report them."""
  return {k: (100.0 * v if v >= 0 else math.nan) for k, v in metrics.items()}


# ----------------------------------------------------------------------------- results


def instances_to_video_json(video_id: int, scores, labels, masks, *,
                            category_ids: Sequence[int] | None = None) -> list[dict]:
  """One video's predictions as result dicts (module docstring: the LV-VIS / YouTube-VIS results format).

  Args:
    video_id: the dataset's video id.
    scores: (K,) float; labels: (K,) int contiguous class indices.
    masks: (K, T, H, W) binary masks at the original size, every frame of the video.
    category_ids: the dataset category id of each contiguous label (identity when None).
  Returns:
    K dicts {"video_id", "category_id", "score", "segmentations": T compressed RLEs}.
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels, np.int64).reshape(-1)
  masks = np.asarray(masks)
  k = scores.shape[0]
  if labels.shape[0] != k or masks.ndim != 4 or masks.shape[0] != k:
    raise ValueError(f"expected scores (K,), labels (K,), masks (K, T, H, W) with K = {k}; "
                     f"got labels {labels.shape}, masks {masks.shape}")
  if category_ids is not None:
    category_ids = list(category_ids)
    if k and (labels.min() < 0 or labels.max() >= len(category_ids)):
      raise ValueError(f"labels must index category_ids (0..{len(category_ids) - 1})")
  out = []
  for i in range(k):
    out.append({"video_id": int(video_id),
                "category_id": int(category_ids[labels[i]] if category_ids is not None else labels[i]),
                "score": float(scores[i]),
                "segmentations": [rle_encode(m > 0) for m in masks[i]]})
  return out


def ground_truth_from_records(records: Iterable[Mapping], categories: Sequence[Mapping]) -> dict:
  """A YouTube-VIS ground-truth dict from prepared video records (`data_pipelines` schema).

  `areas` are the masks' areas (the original JSON's `areas` field is not kept by the preparers; for the
  official numbers evaluate against the original JSON, whose `areas` the protocol uses).
  """
  videos, anns = [], []
  for rec in records:
    h, w = int(rec["height"]), int(rec["width"])
    num_frames = len(rec["frames"]["file_name"])
    videos.append({"id": rec["id"], "height": h, "width": w, "length": num_frames})
    tracks = rec.get("tracks") or {}
    for n in range(len(tracks.get("id", []))):
      segs = []
      for counts in tracks["rle"][n]:
        if counts is None:
          segs.append(None)
        else:
          counts = counts.decode("ascii") if isinstance(counts, bytes) else counts
          segs.append({"size": [h, w], "counts": counts})
      areas = [int(coco_mask.area({"size": [h, w], "counts": s["counts"].encode("ascii")})) if s else None
               for s in segs]
      anns.append({"id": int(tracks["id"][n]), "video_id": rec["id"], "category_id": int(tracks["category_id"][n]),
                   "iscrowd": int(tracks["iscrowd"][n]), "segmentations": segs, "areas": areas})
  return {"videos": videos, "annotations": anns, "categories": [dict(c) for c in categories]}


class VideoAPEvaluator:
  """Collects video predictions and evaluates them (`evaluate_video_ap`).

  Args:
    ground_truth: YouTube-VIS-format dict or JSON path (the original annotation file: its `areas`
      define the area ranges).
    category_ids: dataset category id per contiguous label (default: the ground truth's ids, sorted).
    partitions: see `evaluate_video_ap`.
  """

  def __init__(self, ground_truth, *, category_ids: Sequence[int] | None = None, partitions=None):
    self.ground_truth = _read_json(ground_truth, "ground truth")
    if not isinstance(self.ground_truth, Mapping) or "categories" not in self.ground_truth:
      raise UserValueError("ground truth must be a YouTube-VIS JSON object with 'categories'")
    self.category_ids = (list(category_ids) if category_ids is not None
                         else sorted(c["id"] for c in self.ground_truth["categories"]))
    self.partitions = partitions
    self.results: list[dict] = []

  def process(self, video_id: int, scores, labels, masks) -> None:
    """Adds one video's predictions: scores (K,), labels (K,) contiguous, masks (K, T, H, W)."""
    self.results.extend(instances_to_video_json(video_id, scores, labels, masks, category_ids=self.category_ids))

  def write_results(self, path: str) -> None:
    """Writes the results JSON (the file the LV-VIS / YouTube-VIS servers take)."""
    with open(path, "w") as f:
      json.dump(self.results, f)

  def evaluate(self) -> dict[str, float]:
    """Metrics in percent (NaN where undefined): AP, AP50, ..., ARl and, with partitions, APb, APn, ..."""
    return percent(evaluate_video_ap(self.ground_truth, self.results, partitions=self.partitions)["metrics"])


__all__ = ["evaluate_video_ap", "video_iou", "greedy_match", "instances_to_video_json", "ground_truth_from_records",
           "VideoAPEvaluator", "percent", "METRIC_NAMES", "IOU_THRESHOLDS", "RECALL_THRESHOLDS", "MAX_DETS",
           "AREA_RANGES", "BASE_PARTITIONS", "NOVEL_PARTITIONS"]
