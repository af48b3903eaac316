"""DINOv video object segmentation: objects that enter after frame 0 (DAVIS semi-supervised start frames) and
the DAVIS-2017 raw layout (a tiny tree written here), on the tiny model with random weights."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dinoseg.config import load_config
from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.evaluation import davis
from dinoseg.models.dinov import vos
from dinoseg.models.dinov.model import build_model

TINY = "configs/dinov/swint_sam_coco.py:tiny"
T, H, W = 6, 40, 72


def _video(seed: int = 0):
  """frames (T, H, W, 3) uint8 with two moving rectangles; object 2 enters at frame 3; gt (2, T, H, W)."""
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 60, (T, H, W, 3)).astype(np.uint8)
  gt = np.zeros((2, T, H, W), bool)
  for t in range(T):
    gt[0, t, 5:20, 4 + 2 * t:30 + 2 * t] = True
    frames[t][gt[0, t]] = (200, 40, 40)
    if t >= 3:
      gt[1, t, 22:36, 40 - t:60 - t] = True
      frames[t][gt[1, t]] = (40, 200, 90)
  return frames, gt


def _davis_video(seed: int = 0):
  """_video plus a static square as DAVIS id 3, so that the first frame's largest id (3) makes the late object
  (id 2) count, as davis2017-evaluation counts objects: gt (3, T, H, W)."""
  frames, gt = _video(seed)
  square = np.zeros((1, T, H, W), bool)
  square[0, :, 30:38, 2:10] = True
  frames[:, 30:38, 2:10] = (90, 90, 220)
  return frames, np.concatenate([gt, square])


@pytest.fixture(scope="module")
def segmenter():
  config = load_config(TINY, ["model.msda_impl=xla"])
  model = build_model(config.model)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  # random heads predict IoUs below the proposal threshold (0.5), so nothing would ever be tracked: shift the IoU
  # head's output up so that proposals survive and the tracked masks are real (tested below)
  head = variables["params"]["predictor"]["iou_prediction_head"]["layers_2"]
  head["bias"] = head["bias"] + 1.0
  return vos.VideoObjectSegmenter(model, variables, config, vos.VOSSettings.from_config(config, max_objects=3,
                                                                                         memory_size=3))


def test_object_entering_at_frame_3(segmenter):
  frames, gt = _video()
  starts = np.asarray([0, 3])
  masks, scores = segmenter.segment(frames, gt[[0, 1], [0, 3]], starts)
  assert masks.shape == (2, T, H, W) and scores.shape == (2, T)
  assert not masks[1, :3].any() and (scores[1, :3] == 0).all()  # nothing before its start frame
  assert (masks[1, 3] == gt[1, 3]).all() and scores[1, 3] == 1.0  # the given mask on its start frame
  assert (masks[0, 0] == gt[0, 0]).all() and scores[0, 0] == 1.0
  assert masks[:, 4:].reshape(2, 2, -1).any(-1).all() and (scores[:, 4:] > 0).all()  # tracked: real proposals
  # objects are independent: object 1 alone gives the same result
  alone, alone_scores = segmenter.segment(frames, gt[:1, 0])
  np.testing.assert_array_equal(alone[0], masks[0])
  np.testing.assert_allclose(alone_scores[0], scores[0], rtol=1e-5, atol=1e-6)
  # object 2 from frame 3 on is the same as a video that starts at frame 3 (its memory starts there; the
  # ring buffer's slots differ, its contents do not: memory 3 = the reference entry + 2 recent, evicting)
  sub, sub_scores = segmenter.segment(frames[3:], gt[1:, 3])
  assert np.mean(sub[0] == masks[1, 3:]) > 0.999
  np.testing.assert_allclose(sub_scores[0], scores[1, 3:], rtol=1e-4, atol=1e-5)
  with pytest.raises(UserValueError, match="start_frames"):
    segmenter.segment(frames, gt[[0, 1], [0, 3]], np.asarray([0, T]))


def test_step_state_memory_of_a_late_object(segmenter):
  """The jitted step directly: a late object's memory starts with one valid entry on its start frame and
  grows by one per frame up to memory_size; it is inactive (invalid prompt, score 0) before."""
  from dinoseg.models.dinov.bank import resize_for_model
  frames, gt = _video()
  n = segmenter.settings.max_objects
  given = np.zeros((n, H, W), bool)
  given[0] = gt[0, 0]
  canvas, cmasks, hw = resize_for_model(frames[0], given, segmenter.resize_config, segmenter.canvas_hw)
  state = segmenter._first(segmenter.variables, canvas[None], hw[None], cmasks[None], np.arange(n) == 0)
  assert np.asarray(state["active"]).tolist() == [True, False, False]
  counts = []
  for t in range(1, T):
    start = np.zeros(n, bool)
    start[1] = t == 3
    given = np.zeros((n, H, W), bool)
    given[1] = gt[1, t] if t == 3 else False
    canvas, cmasks, hw = resize_for_model(frames[t], given, segmenter.resize_config, segmenter.canvas_hw)
    state, logits, score = segmenter._step(segmenter.variables, state, canvas[None], hw[None], cmasks[None], start)
    if t <= 3:
      assert float(score[1]) == 0.0 and float(jnp.max(logits[1])) < 0
    counts.append(np.asarray(state["memory_valid"]).sum(1).tolist())
  assert [c[1] for c in counts] == [0, 0, 1, 2, 3]
  assert [c[0] for c in counts] == [2, 3, 3, 3, 3]
  assert np.asarray(state["active"]).tolist() == [True, True, False]


def _write_davis(root, sequences):
  """A DAVIS-2017 tree: JPEGImages/480p, Annotations/480p (palette PNGs), ImageSets/2017/val.txt."""
  palette = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12)
  for name, (frames, gt) in sequences.items():
    (root / "JPEGImages" / "480p" / name).mkdir(parents=True)
    (root / "Annotations" / "480p" / name).mkdir(parents=True)
    for t, frame in enumerate(frames):
      Image.fromarray(frame).save(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", quality=95)
      ids = np.zeros(frame.shape[:2], np.uint8)
      for o in range(len(gt)):
        ids[gt[o, t]] = o + 1
      png = Image.fromarray(ids, mode="P")
      png.putpalette(palette)
      png.save(root / "Annotations" / "480p" / name / f"{t:05d}.png")
  (root / "ImageSets" / "2017").mkdir(parents=True)
  (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(sequences) + "\n")


def test_davis_raw_layout_reader(tmp_path):
  frames, gt = _davis_video()
  _write_davis(tmp_path, {"shapes": (frames, gt), "late_top_id": (frames, gt[:2])})
  png_path = tmp_path / "Annotations" / "480p" / "shapes" / "00001.png"
  with Image.open(png_path) as png:
    ids, palette = np.asarray(png).copy(), png.getpalette()
  ids[0:3, 60:70] = davis.VOID_ID  # void pixels (background there, not an object)
  png = Image.fromarray(ids, mode="P")
  png.putpalette(palette)
  png.save(png_path)
  assert davis.is_davis_root(tmp_path) and not davis.is_davis_root(tmp_path / "JPEGImages")
  assert davis.davis_sequences(tmp_path, "val") == ["shapes", "late_top_id"]
  seq = davis.read_davis_sequence(tmp_path, "shapes")
  assert seq.frames.shape == (T, H, W, 3) and seq.frames.dtype == np.uint8
  assert seq.object_ids.tolist() == [1, 2, 3] and seq.frame_names == [f"{t:05d}" for t in range(T)]
  np.testing.assert_array_equal(seq.masks, gt)
  # the official count: ids 1..(largest id of frame 0); id 2 enters at frame 3 above it -> not an object there
  assert davis.read_davis_sequence(tmp_path, "late_top_id").object_ids.tolist() == [1]
  every = davis.read_davis_sequence(tmp_path, "late_top_id", all_objects=True)
  assert every.object_ids.tolist() == [1, 2]
  np.testing.assert_array_equal(every.masks, gt[:2])
  with pytest.raises(UserFileNotFoundError, match="test-dev"):
    davis.davis_sequences(tmp_path, "test-dev")
  (tmp_path / "Annotations" / "480p" / "shapes" / "00004.png").unlink()
  with pytest.raises(UserFileNotFoundError, match="00004.png"):
    davis.read_davis_sequence(tmp_path, "shapes")
  Image.new("RGB", (W, H)).save(tmp_path / "Annotations" / "480p" / "shapes" / "00004.png")
  with pytest.raises(UserValueError, match="indexed"):
    davis.read_davis_sequence(tmp_path, "shapes")
  Image.new("P", (W + 1, H)).save(tmp_path / "Annotations" / "480p" / "shapes" / "00004.png")
  with pytest.raises(UserValueError, match="size"):
    davis.read_davis_sequence(tmp_path, "shapes")
  with pytest.raises(UserFileNotFoundError, match="no frames"):
    davis.read_davis_sequence(tmp_path, "missing")


@pytest.mark.slow
def test_evaluate_vos_on_a_davis_tree_and_cli(segmenter, tmp_path, capsys):
  from dinoseg import cli
  frames, gt = _davis_video()
  frames2, gt2 = _video(1)
  _write_davis(tmp_path / "DAVIS", {"a": (frames, gt), "b": (frames2, gt2[:1])})
  r = vos.evaluate_vos(segmenter, str(tmp_path / "DAVIS"), "val", out_dir=str(tmp_path / "pred"))
  assert r["num_videos"] == 2 and r["num_objects"] == 4 and r["objects_after_first_frame"] == 1
  assert 0.0 <= r["J&F-Mean"] <= 1.0
  saved = np.load(tmp_path / "pred" / "a.npz")
  assert saved["start_frames"].tolist() == [0, 3, 0] and saved["masks"].shape == (3, T, H, W)
  assert not saved["masks"][1, :3].any() and (saved["masks"][1, 3] == gt[1, 3]).all()
  code = cli.main(["dinov", "eval", f"--config={TINY}", "--random-init", f"--vos={tmp_path / 'DAVIS'}",
                   "--max-videos=1", f"--output={tmp_path / 'jf.json'}"])
  assert code == 0
  out = json.loads((tmp_path / "jf.json").read_text())
  assert out["protocol"] == "vos" and out["results"]["num_videos"] == 1
