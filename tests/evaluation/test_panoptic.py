"""PQ against the official panopticapi numbers (tests/fixtures/panoptic, scripts/make_panoptic_fixtures.py)."""
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from dinoseg.evaluation.panoptic import (PanopticEvaluator, id2rgb, pq_compute_files, pq_stats_single, rgb2id)

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "panoptic"


@pytest.fixture(scope="module")
def fixture():
  maps = dict(np.load(FIXTURES / "maps.npz"))
  segments = json.loads((FIXTURES / "segments.json").read_text())
  expected = json.loads((FIXTURES / "expected_pq.json").read_text())
  return maps, segments, expected


def _close(a, b):
  assert abs(a - b) <= 1e-12, (a, b)


def test_matches_panopticapi(fixture):
  maps, segments, expected = fixture
  evaluator = PanopticEvaluator(segments["categories"])
  for i, (gt, pred) in enumerate(zip(segments["gt"], segments["pred"])):
    stats = pq_stats_single(maps[f"gt_{i}"], gt["segments_info"], maps[f"pred_{i}"], pred["segments_info"],
                            evaluator.categories)
    got = {str(c): {"iou": stats.iou.get(c, 0.0), "tp": stats.tp.get(c, 0), "fp": stats.fp.get(c, 0),
                    "fn": stats.fn.get(c, 0)} for c in set(stats.iou) | set(stats.tp) | set(stats.fp) | set(stats.fn)}
    got = {c: v for c, v in got.items() if v["tp"] + v["fp"] + v["fn"]}
    want = expected["per_image"][i]
    assert set(got) == set(want), i
    for c in want:
      assert (got[c]["tp"], got[c]["fp"], got[c]["fn"]) == (want[c]["tp"], want[c]["fp"], want[c]["fn"]), (i, c)
      _close(got[c]["iou"], want[c]["iou"])
    evaluator.process(maps[f"gt_{i}"], gt["segments_info"], maps[f"pred_{i}"], pred["segments_info"])
  res = evaluator.evaluate()
  for name in ("All", "Things", "Stuff"):
    for key in ("pq", "sq", "rq"):
      _close(res[name][key], expected[name][key])
    assert res[name]["n"] == expected[name]["n"]
  for cat, values in expected["per_class"].items():
    for key in ("pq", "sq", "rq"):
      _close(res["per_class"][int(cat)][key], values[key])
  assert res["PQ"] == pytest.approx(100 * expected["All"]["pq"])
  assert res["PQ_th"] == pytest.approx(100 * expected["Things"]["pq"])
  assert res["RQ_st"] == pytest.approx(100 * expected["Stuff"]["rq"])


def test_fixture_exercises_void_and_crowd(fixture):
  """The fixture must contain predictions ignored because of VOID / crowd, and crowd ground truth."""
  maps, segments, _ = fixture
  crowd = sum(s["iscrowd"] for a in segments["gt"] for s in a["segments_info"])
  assert crowd >= 2
  ignored = 0
  for i, (gt, pred) in enumerate(zip(segments["gt"], segments["pred"])):
    g, p = maps[f"gt_{i}"], maps[f"pred_{i}"]
    for s in pred["segments_info"]:
      m = p == s["id"]
      crowd_ids = [t["id"] for t in gt["segments_info"] if t["iscrowd"] and t["category_id"] == s["category_id"]]
      if ((g[m] == 0) | np.isin(g[m], crowd_ids)).mean() > 0.5:
        ignored += 1
  assert ignored >= 2


def test_files_round_trip(fixture, tmp_path):
  maps, segments, expected = fixture
  for kind in ("gt", "pred"):
    (tmp_path / kind).mkdir()
    for i, ann in enumerate(segments[kind]):
      Image.fromarray(id2rgb(maps[f"{kind}_{i}"])).save(tmp_path / kind / ann["file_name"])
  res = pq_compute_files({"annotations": segments["gt"], "categories": segments["categories"]},
                         {"annotations": segments["pred"]}, str(tmp_path / "gt"), str(tmp_path / "pred"))
  _close(res["All"]["pq"], expected["All"]["pq"])


def test_rgb_id_round_trip(rng):
  ids = rng.integers(0, 256 ** 3, size=(5, 7))
  np.testing.assert_array_equal(rgb2id(id2rgb(ids)), ids)
  with pytest.raises(ValueError, match="rgb"):
    rgb2id(np.zeros((4, 4)))


def test_bad_predictions_raise():
  gt = np.array([[1, 1], [0, 0]])
  cats = {1: {"isthing": 1}}
  with pytest.raises(ValueError, match="not in pred_segments"):
    pq_stats_single(gt, [{"id": 1, "category_id": 1}], np.array([[5, 0], [0, 0]]), [], cats)
  with pytest.raises(ValueError, match="not in the predicted map"):
    pq_stats_single(gt, [{"id": 1, "category_id": 1}], np.zeros((2, 2)), [{"id": 5, "category_id": 1}], cats)
  with pytest.raises(ValueError, match="unknown category_id"):
    pq_stats_single(gt, [{"id": 1, "category_id": 1}], gt, [{"id": 1, "category_id": 9}], cats)
  with pytest.raises(ValueError, match="categories"):
    PanopticEvaluator({})


def test_semantic_from_panoptic():
  from dinoseg.evaluation.panoptic import semantic_from_panoptic
  pan = np.array([[0, 5, 5], [7, 7, 9], [300, 0, 9]])
  # segment 5: category 20 (index 2), 7: category 1 (index 0, a crowd segment is labeled too), 9: category 3;
  # 300 has no segments_info entry: ignored like VOID.
  sem = semantic_from_panoptic(pan, [9, 5, 7], [3, 20, 1], category_ids=[1, 3, 20])
  np.testing.assert_array_equal(sem, [[255, 2, 2], [0, 0, 1], [255, 255, 1]])
  assert semantic_from_panoptic(pan, [], [], category_ids=[1]).tolist() == [[255] * 3] * 3
  with pytest.raises(ValueError, match=r"categories \[4\]"):
    semantic_from_panoptic(pan, [5], [4], category_ids=[1, 3, 20])
