"""DINOv inference protocols: generic evaluation through a prompt bank (end to end on a tiny synthetic COCO
panoptic set, random weights: the plumbing, not the numbers), video object segmentation (click grid, NMS,
proposal selection, memory; a tiny synthetic video end to end), the predictor."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.config import load_config
from dinoseg.data_pipelines import open_dataset, synth, writer
from dinoseg.errors import UserValueError
from dinoseg.models.dinov import bank as bank_lib
from dinoseg.models.dinov import evaluate, vos
from dinoseg.models.dinov.model import build_model

TINY = "configs/dinov/swint_sam_coco.py:tiny"


# ----------------------------------------------------------------------------- VOS pieces (no model)

def test_point_grid_and_clicks_as_reference():
  n = 4
  offset = 1 / (2 * n)
  side = np.linspace(offset, 1 - offset, n)
  expected = np.stack([np.tile(side[None, :], (n, 1)), np.tile(side[:, None], (1, n))], -1).reshape(-1, 2)
  np.testing.assert_array_equal(vos.point_grid(n), expected)
  clicks = vos.grid_clicks(n, (64, 96))
  np.testing.assert_allclose(clicks[:, 0], expected[:, 0], rtol=1e-6)  # centre = the point
  np.testing.assert_allclose(clicks[:, 2], 6 / 96, rtol=1e-6)  # +-3 px
  np.testing.assert_allclose(clicks[:, 3], 6 / 64, rtol=1e-6)
  assert vos.point_grid(20).shape == (400, 2)


def _numpy_nms(boxes, scores, threshold):
  order = np.argsort(-scores, kind="stable")
  keep = []
  for i in order:
    ok = True
    for j in keep:
      x0, y0 = np.maximum(boxes[i, :2], boxes[j, :2])
      x1, y1 = np.minimum(boxes[i, 2:], boxes[j, 2:])
      inter = max(0, x1 - x0) * max(0, y1 - y0)
      area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
      if inter / (area(boxes[i]) + area(boxes[j]) - inter) > threshold:
        ok = False
        break
    if ok:
      keep.append(i)
  return sorted(keep)


def test_fixed_nms_equals_greedy_nms():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 50, (60, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (60, 2))], 1).astype(np.float32)
  scores = rng.uniform(size=60).astype(np.float32)
  valid = rng.uniform(size=60) > 0.2
  keep = np.asarray(jax.jit(vos.fixed_nms, static_argnums=3)(boxes, scores, valid, 0.5))
  idx = np.nonzero(valid)[0]
  assert np.nonzero(keep)[0].tolist() == sorted(idx[_numpy_nms(boxes[idx], scores[idx], 0.5)].tolist())
  assert not keep[~valid].any()


def test_select_proposals_filters_and_picks():
  n, k = 5, 3
  iou = jnp.asarray([0.9, 0.4, 0.8, 0.95, 0.7])
  boxes = jnp.asarray([[0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1], [0.21, 0.2, 0.2, 0.2],
                       [0.5, 0.8, 0.2, 0.1]])
  masks = jnp.full((n, 10, 10), 1.0).at[4].set(-1.0)  # token 4: empty mask
  logits = jnp.asarray([[5.0, 0, 0], [9, 9, 9], [0, 5, 0], [1, 0, 0], [9, 9, 9]])
  best, score, found = vos.select_proposals(iou, boxes, masks, logits, jnp.asarray([True, True, False]),
                                            nms_threshold=0.7, min_area=50)
  # token 1: IoU <= 0.5; token 0 suppressed by token 3 (higher IoU, overlap); token 4 too small -> {2, 3} remain
  assert best[:2].tolist() == [3, 2] and found.tolist() == [True, True, False] and float(score[2]) == 0.0
  np.testing.assert_allclose(float(score[0]), float(jax.nn.softmax(jnp.asarray([1.0, 0.0]))[0]), rtol=1e-6)
  _, score, found = vos.select_proposals(jnp.zeros(n), boxes, masks, logits, jnp.ones(k, bool), nms_threshold=0.7)
  assert not found.any() and (np.asarray(score) == 0).all()


# ----------------------------------------------------------------------------- generic evaluation, end to end

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("dinov_generic")
  synth.synthesize("coco_panoptic", str(root / "raw"), num_images=3, image_size=(40, 72), max_objects=3, seed=1,
                   splits=("val",))
  writer.prepare("coco_panoptic", str(root / "raw"), str(root / "data"), splits=("val",), num_shards=1, progress=False)
  config = load_config(TINY, [f"data.coco.path={root / 'data'}", "data.coco.eval_split=val"])
  model = build_model(config.model)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  encoder = bank_lib.PromptBankEncoder(model, variables, config, slots=8)
  examples, names = bank_lib.examples_from_prepared(root / "data", "val")
  bank = bank_lib.build_bank(encoder, examples, names)
  return root, config, model, variables, bank


@pytest.mark.slow
def test_bank_from_prepared_val_ground_truth(setup):
  root, config, _, _, bank = setup
  dataset = open_dataset(root / "data")
  view = dataset.split("val")
  expected = {}
  for i in range(len(view)):
    segs = view.record(i)["panoptic"]["segments"]
    for c, crowd in zip(segs["category_id"], segs["iscrowd"]):
      if not crowd:
        expected[int(c)] = expected.get(int(c), 0) + 1
  assert {c: bank.count(c) for c in bank.category_ids if bank.count(c)} == expected
  assert set(bank.category_ids) == set(dataset.category_ids)


@pytest.mark.slow
def test_generic_evaluation_deterministic_missing_categories_and_json(setup, tmp_path):
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  root, config, model, variables, bank = setup
  r1 = evaluate.evaluate_generic(model, variables, config, bank, num_examples=4, seed=5,
                                 results_json=str(tmp_path / "r1.json"))
  r2 = evaluate.evaluate_generic(model, variables, config, bank, num_examples=4, seed=5,
                                 results_json=str(tmp_path / "r2.json"))
  assert r1 == r2 or json.dumps(r1, allow_nan=True) == json.dumps(r2, allow_nan=True)  # NaN != NaN
  assert (tmp_path / "r1.json").read_text() == (tmp_path / "r2.json").read_text()
  no_examples = [c for c in bank.category_ids if bank.count(c) == 0]
  assert r1["num_images"] == 3 and r1["categories_without_examples"] == no_examples and r1["seed"] == 5
  for name in ("PQ", "segm/AP", "bbox/AP", "mIoU"):
    assert 0.0 <= r1[name] <= 100.0, name
  # a category without examples: reported, never predicted
  present = [c for c in bank.category_ids if bank.count(c)]
  dropped = present[0]
  partial = bank_lib.Bank({c: (e if c != dropped else e[:0]) for c, e in bank.embeddings.items()}, bank.image_ids,
                          bank.instance_ids, bank.names, bank.dim)
  r3 = evaluate.evaluate_generic(model, variables, config, partial, num_examples=4, seed=5,
                                 results_json=str(tmp_path / "r3.json"))
  assert r3["categories_without_examples"] == sorted(no_examples + [dropped])
  results = json.loads((tmp_path / "r3.json").read_text())
  assert results and dropped not in {r["category_id"] for r in results}
  # the JSON scores against the dataset's ground truth with pycocotools
  gt = COCO()
  gt.dataset = open_dataset(root / "data").coco_ground_truth("val")
  gt.createIndex()
  for iou_type in ("segm", "bbox"):
    ev = COCOeval(gt, gt.loadRes(str(tmp_path / "r1.json")), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    np.testing.assert_allclose(ev.stats[0] * 100, r1[f"{iou_type}/AP"], rtol=1e-9, atol=1e-9)
  empty = bank_lib.Bank({c: e[:0] for c, e in bank.embeddings.items()}, bank.image_ids, bank.instance_ids,
                        bank.names, bank.dim)
  with pytest.raises(UserValueError, match="no examples"):
    evaluate.evaluate_generic(model, variables, config, empty)


@pytest.mark.slow
def test_predictor_with_example_pairs_and_bank(setup, tmp_path):
  import dinoseg
  from dinoseg.models.dinov.predict import DINOvPredictor
  root, config, model, variables, bank = setup
  predictor = dinoseg.predict.build_predictor(config, variables=variables)
  assert isinstance(predictor, DINOvPredictor)
  examples, names = bank_lib.examples_from_prepared(root / "data", "val")
  ex = list(examples)[0]
  pairs = [(ex.image, {names[int(c)]: m for c, m in zip(ex.category_ids, ex.masks)})]
  with pytest.raises(UserValueError, match="needs examples"):
    predictor.predict(ex.image)
  result = predictor.predict(ex.image, examples=pairs)
  assert set(result.names) <= set(pairs[0][1]) and result.masks.shape[1:] == ex.image.shape[:2]
  assert len(result) > 0 and result.boxes.shape == (len(result), 4)
  again = predictor.predict(ex.image)  # examples are kept
  np.testing.assert_array_equal(again.scores, result.scores)
  bank_lib.write_bank(bank, tmp_path / "bank")
  r = predictor.predict(ex.image, examples=str(tmp_path / "bank"))
  assert set(r.class_names) == set(bank.names.values())
  with pytest.raises(UserValueError, match="image's size"):
    predictor.predict(ex.image, examples=[(ex.image, np.zeros((3, 3), bool))])
  with pytest.raises(UserValueError, match="no non-empty mask"):
    predictor.predict(ex.image, examples=[(ex.image, np.zeros(ex.image.shape[:2], bool))])


# ----------------------------------------------------------------------------- VOS, end to end

@pytest.mark.slow
def test_vos_end_to_end_on_a_synthetic_video(setup, tmp_path):
  _, config, model, variables, _ = setup
  synth.synthesize("ytvis_2019", str(tmp_path / "raw"), num_images=1, image_size=(40, 72), max_objects=2, seed=1,
                   num_frames=4, splits=("val",))
  writer.prepare("ytvis_2019", str(tmp_path / "raw"), str(tmp_path / "data"), splits=("val",), num_shards=1,
                 progress=False)
  seg = vos.VideoObjectSegmenter(model, variables, config, vos.VOSSettings.from_config(config, max_objects=3))
  assert seg.clicks.shape == (1, config.prompts.point_per_side ** 2, 4)
  r = vos.evaluate_vos(seg, str(tmp_path / "data"), "val", out_dir=str(tmp_path / "pred"))
  assert r["num_videos"] == 1 and 0.0 <= r["J&F-Mean"] <= 1.0
  pred = np.load(next((tmp_path / "pred").glob("*.npz")))["masks"]
  assert pred.shape[1] == 4 and pred.dtype == bool
  frames = np.zeros((3, 40, 72, 3), np.uint8)
  first = np.zeros((1, 40, 72), bool)
  with pytest.raises(UserValueError, match="empty"):
    seg.segment(frames, first)
  first[0, 5:20, 5:30] = True
  masks, scores = seg.segment(frames, first)
  assert masks.shape == (1, 3, 40, 72) and (masks[:, 0] == first).all() and scores.shape == (1, 3)
  with pytest.raises(UserValueError, match="max_objects"):
    seg.segment(frames, np.ones((4, 40, 72), bool))
