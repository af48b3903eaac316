"""SegNext training: prompt sampling from ground truth, the on-device next click, and a tiny run whose loss drops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from dinoseg.config import load_config
from dinoseg.models.segnext import iterative
from dinoseg.models.segnext.sampler import PromptSampler, PromptSamplerConfig, dilate, erode

CONFIG = "configs/segnext/vitb_sax2.py:tiny"


def test_morphology_matches_opencv_semantics():
  rng = np.random.default_rng(0)
  m = rng.random((20, 24)) > 0.3
  padded = np.pad(m, 1, constant_values=True)  # cv2.erode: the outside counts as foreground
  once = np.ones_like(m)
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      once &= padded[1 + dy:21 + dy, 1 + dx:25 + dx]
  np.testing.assert_array_equal(erode(m, 1), once)
  np.testing.assert_array_equal(dilate(m, 2), ndimage.binary_dilation(m, np.ones((3, 3)), iterations=2))


def test_click_sampler_layout_and_regions():
  rng = np.random.default_rng(1)
  sampler = PromptSampler(PromptSamplerConfig(max_num_points=24))
  masks = np.zeros((2, 64, 64), bool)
  masks[0, 10:40, 10:40] = True
  masks[1, 45:60, 45:60] = True
  counts = []
  for _ in range(200):
    s = sampler(masks, rng)
    pos, neg = s.points[:24], s.points[24:]
    gt = s.gt_mask > 0.5
    assert s.points.shape == (48, 3) and set(np.unique(s.points[:, 2])) <= {-1, 100}
    real_pos = pos[pos[:, 2] > -1].astype(int)
    real_neg = neg[neg[:, 2] > -1].astype(int)
    assert len(real_pos) >= 1 and np.all(gt[real_pos[:, 0], real_pos[:, 1]])
    assert not np.any(gt[real_neg[:, 0], real_neg[:, 1]])
    assert np.all(s.box == -1) and np.all(s.scribble_labels == -1)
    counts.append(len(real_pos))
  # P(1 + k positives) ~ 0.8^k: about 20 % single clicks, mean about 4.4 when not truncated.
  assert 0.1 < np.mean(np.array(counts) == 1) < 0.35
  background = sampler(np.zeros((0, 32, 32), bool), rng)
  assert background.gt_mask.sum() == 0 and np.all(background.points[:24] == -1)


def test_box_and_scribble_sampling():
  rng = np.random.default_rng(2)
  sampler = PromptSampler(PromptSamplerConfig(max_num_points=4, box_prob=0.5, scribble_prob=0.5,
                                              keep_clicks_prob=0.0, scribble_length=8))
  masks = np.zeros((1, 80, 80), bool)
  masks[0, 20:60, 10:70] = True
  boxes = scribbles = 0
  for _ in range(40):
    s = sampler(masks, rng)
    assert np.all(s.points == -1)  # keep_clicks_prob = 0: box / scribble only
    if s.box[0] >= 0:
      boxes += 1
      x0, y0, x1, y1 = s.box
      assert x0 <= 10 + 6 and x1 >= 69 - 6 and y0 <= 20 + 4 and y1 >= 59 - 4 and x0 <= x1 and y0 <= y1
    else:
      scribbles += 1
      assert s.scribble_labels[0] == 1
      v = s.scribbles[0].astype(int)
      assert np.all(masks[0][v[:, 0], v[:, 1]])  # the positive scribble stays on the object
      if s.scribble_labels[1] == 0:
        v = s.scribbles[1].astype(int)
        assert not np.any(masks[0][v[:, 0], v[:, 1]])
  assert boxes > 5 and scribbles > 5


def test_next_click_goes_to_the_larger_error():
  gt = np.zeros((2, 40, 50), np.float32)
  gt[:, 5:35, 5:45] = 1
  prob = np.zeros((2, 40, 50), np.float32)
  prob[1] = gt[1]
  prob[1, 10:30, 20:30] = 0  # a false-negative hole in sample 1
  prob[0, 5:35, 5:45] = 0.9
  prob[0, 0:4, 46:50] = 0.9  # a small false positive in sample 0 (FN region is empty there)
  points = jnp.full((2, 8, 3), -1.0)
  out = np.asarray(iterative.sample_next_points(jax.random.key(0), jnp.asarray(prob), jnp.asarray(gt), points, 1))
  # sample 0: negative click (slot 2N - 1 = 7) inside the FP corner; sample 1: positive (slot N - 1 = 3) in the hole
  assert out[0, 7, 2] == 1 and 0 <= out[0, 7, 0] < 4 and 46 <= out[0, 7, 1] < 50
  assert out[1, 3, 2] == 1 and 10 <= out[1, 3, 0] < 30 and 20 <= out[1, 3, 1] < 30
  # inner half: the distance at the click exceeds half the hole's maximal distance
  d = np.sqrt(np.asarray(iterative.squared_edt(jnp.asarray((gt[1] > 0.5) & (prob[1] < 0.49))[None]))[0])
  assert d[int(out[1, 3, 0]), int(out[1, 3, 1])] > d.max() / 2
  assert np.all(np.delete(out, [3, 7], axis=1) == -1)
  # nothing to correct: points unchanged
  same = iterative.sample_next_points(jax.random.key(0), jnp.asarray(gt), jnp.asarray(gt), points, 1)
  assert np.all(np.asarray(same) == -1)


def test_squared_edt_is_exact():
  rng = np.random.default_rng(3)
  m = rng.random((2, 23, 31)) > 0.25
  ref = np.stack([ndimage.distance_transform_edt(np.pad(x, 1))[1:-1, 1:-1] ** 2 for x in m])
  np.testing.assert_allclose(np.asarray(iterative.squared_edt(jnp.asarray(m))), ref, atol=1e-4)
  np.testing.assert_allclose(np.asarray(iterative.squared_edt(jnp.asarray(m), row_chunk=5)), ref, atol=1e-4)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """Synthetic HQSeg-44K-layout data (the data pipelines' generator) prepared as ArrayRecord shards."""
  from dinoseg.data_pipelines import synth, writer  # noqa: PLC0415
  root = tmp_path_factory.mktemp("segnext_data")
  synth.synthesize("hqseg44k", str(root / "raw"), num_images=8, image_size=(96, 160), seed=0)
  writer.prepare("hqseg44k", str(root / "raw"), str(root / "prepared"))
  return root / "prepared"


def test_trainer_run_loss_goes_down_and_evaluates(prepared, tmp_path):
  """`dinoseg train` on the tiny config: the loss of the last steps is below the first steps', the
  number of no-grad click rounds varies without recompiling, and the end-of-run evaluation runs the
  click protocol and writes the curves."""
  from dinoseg.train import trainer  # noqa: PLC0415
  import json  # noqa: PLC0415
  config = load_config(CONFIG, [f"data.path={prepared}", "train.num_steps=16", "train.log_every_steps=1",
                                "train.eval_at_end=True", "train.checkpoint_every_steps=0",
                                f"eval.datasets=('synthetic={prepared}:val',)", "eval.max_clicks=3",
                                "eval.max_examples=8", f"eval.output_dir={tmp_path / 'curves'}"])
  result = trainer.train(config, tmp_path / "run", echo=lambda _: None)
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in rows if "loss" in r]
  assert len(losses) == 16 and all(np.isfinite(losses))
  assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
  assert len({r["click_rounds"] for r in rows if "click_rounds" in r}) > 1
  metrics = result.eval_results
  assert metrics["synthetic/num_objects"] == 8 and 1 <= metrics["synthetic/NoC@85"] <= 3
  assert 0 <= metrics["synthetic/box_mIoU"] <= 1 and 0 <= metrics["synthetic/scribble_mIoU"] <= 1
  assert (tmp_path / "curves" / "iou_curves.json").exists() and (tmp_path / "curves" / "iou_curves.png").exists()
