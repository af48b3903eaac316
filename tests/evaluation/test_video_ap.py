"""Video AP (YouTube-VIS protocol, LV-VIS base / novel) against the reference evaluator's numbers.

Fixtures: tests/fixtures/video_ap/ from scripts/make_video_ap_fixtures.py (LV-VIS `evaluate/lvviseval.py`).
"""
import copy
import json
import pathlib

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.evaluation import video_ap

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "video_ap"


@pytest.fixture(scope="module")
def fixture():
  gt = json.loads((FIXTURES / "ground_truth.json").read_text())
  results = json.loads((FIXTURES / "results.json").read_text())
  ref = json.loads((FIXTURES / "reference.json").read_text())
  arrays = np.load(FIXTURES / "reference.npz")
  return gt, results, ref, {k: arrays[k] for k in arrays.files}


@pytest.fixture(scope="module")
def evaluated(fixture):
  return video_ap.evaluate_video_ap(str(FIXTURES / "ground_truth.json"), str(FIXTURES / "results.json"))


def test_every_number_equals_the_reference(fixture, evaluated):
  _, results, ref, arrays = fixture
  assert len(results) > 200 and sum(r["video_id"] == 1 and r["category_id"] == 1 for r in results) > 100
  assert set(evaluated["metrics"]) == set(ref["metrics"])
  assert len(ref["metrics"]) == 36 and {"AP", "APb", "APn", "AP50", "AP75", "APs", "APm", "APl", "AR1",
                                         "AR10"} <= set(ref["metrics"])
  for name, want in ref["metrics"].items():
    assert evaluated["metrics"][name] == pytest.approx(want, rel=1e-12, abs=1e-15), name
  for i, name in enumerate(video_ap.METRIC_NAMES):
    assert evaluated["metrics"][name] == pytest.approx(ref["stats"][i], rel=1e-12, abs=1e-15)
  # The fixture exercises defined and undefined cells, and base / novel differ.
  assert ref["metrics"]["APl"] > 0 and ref["metrics"]["APmn"] == -1 and ref["metrics"]["APb"] != ref["metrics"]["APn"]
  np.testing.assert_allclose(evaluated["precision"], arrays["precision"], rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(evaluated["recall"], arrays["recall"], rtol=1e-12, atol=1e-15)
  assert evaluated["base_ids"] == [1, 2, 5, 6] and evaluated["novel_ids"] == [3, 4, 7, 8]


def test_partitions_from_the_ground_truth_an_argument_or_a_file(fixture, evaluated, tmp_path):
  gt, results, ref, _ = fixture
  plain = copy.deepcopy(gt)
  parts = {c["id"]: c.pop("partition") for c in plain["categories"]}
  no_parts = video_ap.evaluate_video_ap(plain, results)["metrics"]
  assert set(no_parts) == set(video_ap.METRIC_NAMES)  # YouTube-VIS / OVIS: overall metrics only
  assert no_parts == {k: evaluated["metrics"][k] for k in video_ap.METRIC_NAMES}
  given = video_ap.evaluate_video_ap(plain, results, partitions=parts)["metrics"]
  (tmp_path / "parts.json").write_text(json.dumps({str(k): v for k, v in parts.items()}))
  from_file = video_ap.evaluate_video_ap(plain, results, partitions=str(tmp_path / "parts.json"))["metrics"]
  for name in ("APb", "APn", "AR10b", "APsn"):
    assert given[name] == from_file[name] == pytest.approx(ref["metrics"][name], rel=1e-12, abs=1e-15)
  # Any two partition groups: swapping base and novel swaps the numbers.
  swapped = video_ap.evaluate_video_ap(gt, results, base_partitions=(2, 3), novel_partitions=(0, 1))["metrics"]
  assert swapped["APb"] == evaluated["metrics"]["APn"] and swapped["APn"] == evaluated["metrics"]["APb"]


def _masks_of(seg, h, w):
  if seg is None:
    return None
  if isinstance(seg, list):
    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(seg, h, w)))
  return coco_mask.decode(coco_mask.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg)


def test_perfect_predictions_through_the_evaluator_class(fixture, tmp_path):
  gt, _, _, _ = fixture
  sizes = {v["id"]: (v["height"], v["width"]) for v in gt["videos"]}
  ev = video_ap.VideoAPEvaluator(gt)
  label_of = {c: i for i, c in enumerate(ev.category_ids)}
  for a in gt["annotations"]:
    h, w = sizes[a["video_id"]]
    masks = np.stack([np.zeros((h, w), np.uint8) if s is None else _masks_of(s, h, w) for s in a["segmentations"]])
    ev.process(a["video_id"], [0.9], [label_of[a["category_id"]]], masks[None])
  ev.write_results(str(tmp_path / "results.json"))
  written = json.loads((tmp_path / "results.json").read_text())
  assert len(written) == len(gt["annotations"])
  assert set(written[0]) == {"video_id", "category_id", "score", "segmentations"}
  assert isinstance(written[0]["segmentations"][0]["counts"], str)
  metrics = ev.evaluate()
  for name in ("AP", "AP50", "AP75", "APb", "APn", "AR100"):
    assert metrics[name] == pytest.approx(100.0, abs=1e-9), name
  assert np.isnan(metrics["APmn"])  # no novel track of medium size: undefined -> NaN in percent


def test_no_predictions_give_zero_not_undefined(fixture):
  gt, _, _, _ = fixture
  metrics = video_ap.evaluate_video_ap(gt, [])["metrics"]
  assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0 and metrics["APmn"] == -1.0


def _dense_video_iou(d_masks, g_masks, shape):
  """The protocol in plain loops: sums over the frames both lists have; None = no mask."""
  empty = np.zeros(shape, np.uint8)
  out = np.zeros((len(d_masks), len(g_masks)))
  for i, ds in enumerate(d_masks):
    for j, gs in enumerate(g_masks):
      inter = union = 0
      for d, g in zip(ds, gs):
        d, g = empty if d is None else d, empty if g is None else g
        inter += int((d & g).sum())
        union += int((d | g).sum())
      out[i, j] = inter / union if union else 0.0
  return out


def test_video_iou_matches_dense_masks():
  rng = np.random.default_rng(3)
  h, w = 23, 31

  def track(length):
    frames = []
    for _ in range(length):
      r = rng.uniform()
      frames.append(None if r < 0.25 else (np.zeros((h, w), np.uint8) if r < 0.35
                                           else (rng.uniform(size=(h, w)) < rng.uniform(0.1, 0.6)).astype(np.uint8)))
    return frames

  d_masks = [track(int(rng.integers(3, 6))) for _ in range(7)]
  g_masks = [track(int(rng.integers(3, 6))) for _ in range(5)]
  g_masks.append([None] * 4)  # a track without any mask: IoU 0
  enc = [[None if m is None else coco_mask.encode(np.asfortranarray(m)) for m in t] for t in d_masks]
  genc = [[None if m is None else coco_mask.encode(np.asfortranarray(m)) for m in t] for t in g_masks]
  np.testing.assert_allclose(video_ap.video_iou(enc, genc), _dense_video_iou(d_masks, g_masks, (h, w)), rtol=1e-15)
  assert video_ap.video_iou(enc, []).shape == (7, 0)


def _loop_match(ious, dt_valid, gt_valid, crowd, ignore, thresholds):
  """COCO's matching rule, one prediction / threshold / track at a time, tracks sorted ignored-last."""
  p_num, d_num, g_num = ious.shape
  a_num = ignore.shape[1]
  out = np.full((p_num, a_num, len(thresholds), d_num), -1)
  for p in range(p_num):
    gts = [g for g in range(g_num) if gt_valid[p, g]]
    for a in range(a_num):
      order = sorted(gts, key=lambda g: ignore[p, a, g])  # stable
      for t, thr in enumerate(thresholds):
        taken = set()
        for d in range(d_num):
          if not dt_valid[p, d]:
            continue
          best, m = min(thr, 1 - 1e-10), -1
          for g in order:
            if g in taken and not crowd[p, g]:
              continue
            if m > -1 and not ignore[p, a, m] and ignore[p, a, g]:
              break
            if ious[p, d, g] < best:
              continue
            best, m = ious[p, d, g], g
          if m > -1:
            out[p, a, t, d] = m
            taken.add(m)
  return out


def test_vectorised_matching_equals_the_loop():
  rng = np.random.default_rng(7)
  p_num, d_num, g_num, a_num = 6, 9, 5, 3
  ious = np.round(rng.uniform(0.3, 1.0, (p_num, d_num, g_num)) * 10) / 10  # many ties
  dt_valid = np.arange(d_num)[None] < rng.integers(0, d_num + 1, (p_num, 1))
  gt_valid = np.arange(g_num)[None] < rng.integers(1, g_num + 1, (p_num, 1))
  crowd = rng.uniform(size=(p_num, g_num)) < 0.2
  ignore = rng.uniform(size=(p_num, a_num, g_num)) < 0.3
  matched, matched_ignored = video_ap.greedy_match(ious, dt_valid, gt_valid, crowd, ignore)
  want = _loop_match(ious, dt_valid, gt_valid, crowd, ignore, video_ap.IOU_THRESHOLDS)
  np.testing.assert_array_equal(matched, want)
  np.testing.assert_array_equal(matched_ignored, (want >= 0) & np.take_along_axis(
      np.broadcast_to(ignore[:, :, None, :], want.shape[:3] + (g_num,)), np.maximum(want, 0), -1))
  assert (matched >= 0).any() and (matched < 0).any()


def test_bad_input_is_a_user_error(fixture, tmp_path):
  gt, results, _, _ = fixture
  with pytest.raises(UserFileNotFoundError, match="results file"):
    video_ap.evaluate_video_ap(gt, str(tmp_path / "missing.json"))
  (tmp_path / "bad.json").write_text("[{")
  with pytest.raises(UserValueError, match="not valid JSON"):
    video_ap.evaluate_video_ap(gt, str(tmp_path / "bad.json"))
  with pytest.raises(UserValueError, match="JSON array"):
    video_ap.evaluate_video_ap(gt, {"video_id": 1})
  with pytest.raises(UserValueError, match="video 12345"):
    video_ap.evaluate_video_ap(gt, [{**results[0], "video_id": 12345}])
  with pytest.raises(UserValueError, match="'score'"):
    video_ap.evaluate_video_ap(gt, [{k: v for k, v in results[0].items() if k != "score"}])
  wrong_size = copy.deepcopy(results[0])
  wrong_size["segmentations"][0] = coco_mask.encode(np.asfortranarray(np.ones((5, 5), np.uint8)))
  with pytest.raises(UserValueError, match="mask size"):
    video_ap.evaluate_video_ap(gt, [wrong_size])
  with pytest.raises(UserValueError, match="videos"):
    video_ap.evaluate_video_ap({"annotations": []}, results)
