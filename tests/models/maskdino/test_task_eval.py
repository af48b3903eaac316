"""Mask DINO evaluation through the task on prepared synthetic datasets: `dinoseg eval --weights X.pth`
for the instance, panoptic (instance + panoptic + semantic) and semantic configs, and the evaluator's
glue (category ids, crowd, semantic labels of a panoptic annotation, original sizes) scoring 100 when
the ground truth itself is fed in as predictions."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg import cli
from dinoseg.config import load_config
from dinoseg.convert.pth_writer import write_pth
from dinoseg.data_pipelines import open_dataset, schema, synth, writer
from dinoseg.evaluation.panoptic import semantic_from_panoptic
from dinoseg.models.maskdino import convert
from dinoseg.models.maskdino.model import build_model
from dinoseg.models.maskdino.task import MaskDINOEvaluator

CASES = {  # synthetic layout -> tiny config
    "coco": "configs/maskdino/coco_instance_r50_3s_d1_2048.py:tiny",
    "coco_panoptic": "configs/maskdino/coco_panoptic_r50_3s_d1_2048.py:tiny",
    "ade20k": "configs/maskdino/ade20k_semantic_r50.py:tiny",
}
EXPECTED = {
    "coco": ["bbox/AP", "bbox/AP50", "segm/AP", "segm/AP75"],
    "coco_panoptic": ["PQ", "SQ", "RQ", "PQ_th", "PQ_st", "bbox/AP", "segm/AP", "mIoU", "fwIoU", "mACC", "pACC"],
    "ade20k": ["mIoU", "fwIoU", "mACC", "pACC"],
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("maskdino_eval")
  paths = {}

  def get(layout):
    if layout not in paths:
      raw, out = root / "raw" / layout, root / "data" / layout
      synth.synthesize(layout, str(raw), num_images=4, image_size=(40, 72), max_objects=4, seed=1)
      writer.prepare(synth.PREPARER_FOR_LAYOUT[layout], str(raw), str(out), num_shards=1, progress=False)
      paths[layout] = out
    return paths[layout]
  return get


@pytest.mark.parametrize("layout", [pytest.param(c, marks=pytest.mark.slow) if c == "ade20k" else c for c in sorted(CASES)])
def test_eval_command_with_reference_layout_weights(prepared, layout, tmp_path):
  data = prepared(layout)
  config = load_config(CASES[layout], [f"data.path={data}"])
  variables = build_model(config.model).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  weights = write_pth(convert.to_torch(jax.tree.map(np.asarray, dict(variables)), config.model,
                                       no_object_weight=config.loss.no_object_weight), tmp_path / "random.pth")
  assert cli.main(["eval", f"--config={CASES[layout]}", f"--weights={weights}", f"--workdir={tmp_path / 'run'}",
                   f"--config.data.path={data}"]) == 0
  results = json.loads((tmp_path / "run" / "eval" / "weights_random.json").read_text())["results"]
  assert results["num_images"] == len(open_dataset(data).split(config.data.eval_split))
  for name in EXPECTED[layout]:
    assert 0.0 <= results[name] <= 100.0, (name, results[name])  # ground truth exists: never NaN


def _ground_truth_predictions(dataset, split, canvas):
  """One batch holding every image of `split`, and predictions equal to its ground truth."""
  view = dataset.split(split)
  cat_index = {c: i for i, c in enumerate(dataset.category_ids)}
  things = {int(c["id"]) for c in dataset.categories if c.get("isthing", 1)}
  n, k = len(view), 16
  batch = {"image_id": np.zeros(n, np.int64), "original_hw": np.zeros((n, 2), np.int32),
           "example_valid": np.ones(n, bool)}
  pred = {"output_hw": np.zeros((n, 2), np.int32), "inst_scores": np.zeros((n, k), np.float32),
          "inst_labels": np.zeros((n, k), np.int32), "inst_boxes": np.zeros((n, k, 4), np.float32),
          "inst_masks": np.zeros((n, k, *canvas), bool), "inst_valid": np.zeros((n, k), bool),
          "pano_seg": np.zeros((n, *canvas), np.int32), "pano_segment_id": np.zeros((n, k), np.int32),
          "pano_category": np.zeros((n, k), np.int32), "pano_is_new": np.zeros((n, k), bool),
          "sem_labels": np.zeros((n, *canvas), np.int32)}
  for b in range(n):
    ex = schema.decode_example(view.record(b), image=False, masks=False)
    h, w = (int(v) for v in ex["original_hw"])
    batch["image_id"][b], batch["original_hw"][b], pred["output_hw"][b] = ex["image_id"], (h, w), (h, w)
    pan, segs = ex["panoptic"]["pan_seg"], ex["panoptic"]["segments"]
    pred["pano_seg"][b, :h, :w] = pan
    pred["sem_labels"][b, :h, :w] = np.where(
        (s := semantic_from_panoptic(pan, segs["id"], segs["category_id"], dataset.category_ids)) == 255, 0, s)
    j = 0
    for sid, cid, crowd, box in zip(segs["id"], segs["category_id"], segs["is_crowd"], segs["boxes_xyxy"]):
      pred["pano_segment_id"][b, j], pred["pano_category"][b, j] = sid, cat_index[int(cid)]
      pred["pano_is_new"][b, j] = True
      if int(cid) in things and not crowd:
        pred["inst_scores"][b, j], pred["inst_labels"][b, j], pred["inst_boxes"][b, j] = 0.9, cat_index[int(cid)], box
        pred["inst_masks"][b, j, :h, :w] = pan == sid
        pred["inst_valid"][b, j] = True
      j += 1
  return batch, pred


def test_panoptic_evaluator_scores_the_ground_truth_100(prepared):
  data = prepared("coco_panoptic")
  config = load_config(CASES["coco_panoptic"], [f"data.path={data}"])
  dataset = open_dataset(data)
  canvas = (80, 80)
  batch, pred = _ground_truth_predictions(dataset, config.data.eval_split, canvas)
  assert pred["inst_valid"].any() and pred["pano_is_new"].sum() > pred["inst_valid"].sum()  # things and stuff
  evaluator = MaskDINOEvaluator(config, dataset, config.data.eval_split)
  evaluator.update(batch, pred)
  results = evaluator.result()
  for name in ("PQ", "PQ_th", "PQ_st", "bbox/AP", "segm/AP", "pACC"):
    assert results[name] == pytest.approx(100.0), (name, results)
  # Classes absent from the split count as NaN in mIoU's mean (as detectron2): the present ones are exact.
  assert results["mIoU"] == pytest.approx(100.0)
  # A wrong category on every thing instance: mask AP drops to 0; the panoptic stuff segments stay exact.
  things = [i for i, c in enumerate(dataset.category_ids) if any(x["id"] == c and x.get("isthing", 1)
                                                                for x in dataset.categories)]
  wrong = dict(pred, inst_labels=np.where(pred["inst_valid"], (pred["inst_labels"] + 1) % len(things), 0))
  evaluator = MaskDINOEvaluator(config, dataset, config.data.eval_split)
  evaluator.update(batch, wrong)
  results = evaluator.result()
  assert results["segm/AP"] == pytest.approx(0.0) and results["PQ_st"] == pytest.approx(100.0)
