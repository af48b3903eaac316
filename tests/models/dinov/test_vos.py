"""DINOv video object segmentation: objects that enter after frame 0 (DAVIS semi-supervised start frames) and
the DAVIS-2017 raw layout (a tiny tree written here), on the tiny model with random weights."""
import dataclasses
import json
import queue

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dinoseg.config import ConfigError, load_config
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


# ----------------------------------------------------------------------------- late objects, the reference's way

@pytest.fixture(scope="module")
def reference_segmenter(segmenter):
  """The `segmenter` fixture's model with late_objects="reference" (test.vos_late_objects)."""
  settings = dataclasses.replace(segmenter.settings, late_objects="reference")
  return vos.VideoObjectSegmenter(segmenter.model, segmenter.variables, segmenter.config, settings)


REFERENCE_FRAME_KEY = 10000  # the reference's priority-queue key of frame 0 (the smallest key leaves a full queue)


def _reference_transcription(seg, frames, first, starts):
  """Runs the reference-mode `_first` / `_step` over a video beside a host transcription of the reference's
  bookkeeping (train_net.py `test_tracking_prev`): per object a queue.PriorityQueue(maxsize=memory_size) of
  (key, embedding), key 10000 on frame 0 and t on frame t, the smallest key leaving a full queue; the entry of
  frame t is `rand_shape` encoded on frame t-1's features (frame 0's: on frame 0's); `rand_shape` is the given
  mask on an object's start frame, its prediction of the previous frame from frame 2 on, empty before. The
  transcription takes only the frames' features (the states' `multi_scale`) and predictions from the steps.

  Returns one dict per frame: entries (per object the queue, sorted by key), the step's memory (O, M, d) /
  memory_valid (O, M) / scores (O,) (None on frame 0), rand_shape after the frame (O, Hc, Wc), that frame's
  features (multi-scale list) and valid_hw (2,).
  """
  from dinoseg.models.dinov.bank import resize_for_model
  n, m, o = seg.settings.max_objects, seg.settings.memory_size, len(first)
  encode = jax.jit(seg._encode)
  queues = [queue.PriorityQueue(maxsize=m) for _ in range(o)]
  rand_shape = np.zeros((n, *seg.canvas_hw), np.float32)
  tracked = np.arange(n) < o
  state, record = None, []
  for f in range(len(frames)):
    start = np.zeros(n, bool)
    start[:o] = starts == f
    given = np.zeros((n, H, W), bool)
    given[:o][start[:o]] = first[start[:o]]
    canvas, cmasks, hw = resize_for_model(frames[f], given, seg.resize_config, seg.canvas_hw)
    rand_shape[start] = cmasks[start]
    score = None
    previous_features = None if state is None else state["multi_scale"]  # frame f-1's
    if f == 0:
      state = seg._first(seg.variables, canvas[None], hw[None], cmasks[None], start, tracked)
      previous_features = state["multi_scale"]  # frame 0's entry: on frame 0's features
    else:
      state, logits, score = seg._step(seg.variables, state, canvas[None], hw[None], cmasks[None], start)
    emb = np.asarray(encode(seg.variables, previous_features, rand_shape[None])[0])
    for i in range(o):
      if queues[i].full():
        queues[i].get()
      queues[i].put((f if f else REFERENCE_FRAME_KEY, emb[i]))
    if f:
      inside = (np.arange(seg.canvas_hw[0])[:, None] < hw[0]) & (np.arange(seg.canvas_hw[1])[None, :] < hw[1])
      rand_shape = ((np.asarray(logits) > 0) & inside).astype(np.float32)
      score = np.asarray(score)
    record.append({"entries": [sorted(q.queue, key=lambda e: e[0]) for q in queues],
                   "memory": np.asarray(state["memory"]), "valid": np.asarray(state["memory_valid"]),
                   "scores": score, "rand_shape": rand_shape.copy(), "features": state["multi_scale"], "hw": hw})
  return record


def test_reference_late_objects_memory_and_output(segmenter, reference_segmenter):
  """late_objects="reference": the memory of every object equals the reference's priority queue on every frame
  (objects entering at frames 3 and 2, memory_size 3: evictions included); a late object's reference entry is
  the empty mask's embedding on frame 0, its frame-k entry the given mask encoded on frame k-1's features, the
  entries between are its own pre-start predictions; its output starts on frame k with its prediction."""
  seg = reference_segmenter
  m = seg.settings.memory_size
  assert m == 3 and seg.settings.max_objects == 3
  frames, gt = _davis_video()
  starts = np.asarray([0, 3, 2])  # the square (DAVIS id 3) is given on frame 2
  first = gt[np.arange(3), starts]
  record = _reference_transcription(seg, frames, first, starts)

  def slot(key):
    return 0 if key == REFERENCE_FRAME_KEY else 1 + (key - 1) % (m - 1)

  for t, r in enumerate(record):
    assert r["valid"].sum(1).tolist() == [len(e) for e in r["entries"]]
    for i, entries in enumerate(r["entries"]):
      for key, emb in entries:
        assert r["valid"][i, slot(key)]
        np.testing.assert_allclose(r["memory"][i, slot(key)], emb, rtol=1e-4, atol=1e-5,
                                   err_msg=f"frame {t}, object {i}, entry of frame {key}")
  assert [r["valid"].sum(1).tolist() for r in record] == [[1, 1, 1]] + [[2, 2, 2]] + [[3, 3, 3]] * (T - 2)

  def keys(t, i):
    return [key for key, _ in record[t]["entries"][i]]
  # frames k..k+2 of the object entering at k = 3, and of the one entering at k = 2
  assert [keys(t, 1) for t in (3, 4, 5)] == [[2, 3, REFERENCE_FRAME_KEY], [3, 4, REFERENCE_FRAME_KEY],
                                             [4, 5, REFERENCE_FRAME_KEY]]
  assert [keys(t, 2) for t in (2, 3, 4)] == [[1, 2, REFERENCE_FRAME_KEY], [2, 3, REFERENCE_FRAME_KEY],
                                             [3, 4, REFERENCE_FRAME_KEY]]
  encode = jax.jit(seg._encode)
  zeros = np.zeros((1, 3, *seg.canvas_hw), np.float32)
  empty = np.asarray(encode(seg.variables, record[0]["features"], zeros)[0])  # (3, d): the empty mask on frame 0
  assert np.isfinite(empty).all()
  for r in record:  # the late objects' reference entry, never evicted
    np.testing.assert_allclose(r["memory"][1:, 0], empty[1:], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(record[2]["memory"][2, slot(1)], empty[2], rtol=1e-4, atol=1e-5)  # frame 1: empty again
  # before its start the object entering at 3 is tracked from that memory: its frame-1 prediction is a real
  # mask and its frame-2 entry encodes it (not the empty mask)
  assert record[1]["rand_shape"][1].any()
  assert not np.allclose(record[2]["memory"][1, slot(2)], empty[1], rtol=1e-3, atol=1e-3)
  from dinoseg.models.dinov.bank import resize_for_model
  for i, k in ((1, 3), (2, 2)):  # the entry of frame k: the given mask of frame k on frame k-1's features
    _, given, _ = resize_for_model(frames[k], first[i:i + 1], seg.resize_config, seg.canvas_hw)
    prompt = zeros.copy()
    prompt[0, i] = given[0]
    expected = np.asarray(encode(seg.variables, record[k - 1]["features"], prompt)[0, i])
    np.testing.assert_allclose(record[k]["memory"][i, slot(k)], expected, rtol=1e-4, atol=1e-5)

  masks, scores = seg.segment(frames, first, starts)
  assert (masks[0, 0] == first[0]).all() and scores[0, 0] == 1.0  # frame 0: the given mask
  for i, k in ((1, 3), (2, 2)):
    assert not masks[i, :k].any() and (scores[i, :k] == 0).all()  # hidden before its start frame
    # on its start frame: its prediction (the step's score; not the given mask)
    np.testing.assert_allclose(scores[i, k:], [record[t]["scores"][i] for t in range(k, T)], rtol=1e-5, atol=1e-6)
    assert scores[i, k] > 0.0 and masks[i, k].any() and not (masks[i, k] == first[i]).all()
    nh, nw = record[k]["hw"]
    pred = Image.fromarray(record[k]["rand_shape"][i, :nh, :nw].astype(np.uint8) * 255).resize((W, H), Image.NEAREST)
    pred = np.asarray(pred) > 0
    assert (pred & masks[i, k]).sum() / (pred | masks[i, k]).sum() > 0.8
  # objects given on frame 0 are those of "clean" (objects are independent)
  clean, clean_scores = segmenter.segment(frames, first, starts)
  assert np.mean(masks[0] == clean[0]) > 0.999
  np.testing.assert_allclose(scores[0], clean_scores[0], rtol=1e-4, atol=1e-5)


def test_reference_late_objects_without_late_objects_is_clean(segmenter, reference_segmenter):
  frames, gt = _davis_video()
  first = gt[[0, 2], 0]
  ref, ref_scores = reference_segmenter.segment(frames, first)
  clean, clean_scores = segmenter.segment(frames, first)
  assert np.mean(ref == clean) > 0.999 and ref[:, 1:].any()
  np.testing.assert_allclose(ref_scores, clean_scores, rtol=1e-4, atol=1e-5)


def test_late_objects_setting_is_checked(segmenter, tmp_path, capsys):
  from dinoseg import cli
  assert vos.VOSSettings.from_config(segmenter.config).late_objects == "clean"
  config = load_config(TINY, ["test.vos_late_objects=reference"])
  assert vos.VOSSettings.from_config(config).late_objects == "reference"
  with pytest.raises(ConfigError, match="test.vos_late_objects"):
    load_config(TINY, ["test.vos_late_objects=newest"])
  with pytest.raises(UserValueError, match="late_objects"):
    vos.VideoObjectSegmenter(segmenter.model, segmenter.variables, segmenter.config,
                             vos.VOSSettings(late_objects="newest"))
  assert cli.main(["eval", f"--config={TINY}", f"--weights={tmp_path}", "--config.test.vos_late_objects=newest"]) == 2
  assert "test.vos_late_objects must be one of" in capsys.readouterr().err


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


# ----------------------------------------------------------------------------- the reference's other behaviours

def _reference_end_key_outputs(pred, ends):
  """Host transcription of train_net.py `test_tracking_prev`'s hiding: `end_key` starts False; per frame the
  output is the prediction & ~end_key, then end_key |= the frame's `end_frame` flags (the object's last frame)."""
  out = np.zeros_like(pred)
  end_key = np.zeros(pred.shape[0], bool)
  for f in range(pred.shape[1]):
    out[:, f] = pred[:, f] & ~end_key[:, None, None]
    end_key |= np.asarray(ends) == f
  return out


def test_last_annotated_frames():
  present = np.asarray([[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], bool)
  assert vos.last_annotated_frames(present).tolist() == [4, 5, -1, 0]


def test_hide_after_last_frame(segmenter, monkeypatch):
  """test.vos_hide_after_last_frame: the outputs equal the reference's end_key masking of the default run's
  outputs (tracking goes on: nothing else changes); off (default), end_frames change nothing."""
  frames, gt = _video()
  first, starts, ends = gt[[0, 1], [0, 3]], np.asarray([0, 3]), np.asarray([2, 4])
  shown, shown_scores = segmenter.segment(frames, first, starts, ends)  # default: not hidden
  assert shown[0, 3:].any() and shown[1, 5].any() and (shown_scores[:, 4:] > 0).all()
  monkeypatch.setattr(segmenter, "settings", dataclasses.replace(segmenter.settings, hide_after_last_frame=True))
  hidden, hidden_scores = segmenter.segment(frames, first, starts, ends)
  np.testing.assert_array_equal(hidden, _reference_end_key_outputs(shown, ends))
  assert not hidden[0, 3:].any() and not hidden[1, 5:].any() and hidden[1, 3:5].any()
  np.testing.assert_array_equal(hidden_scores, np.where(np.arange(T)[None] > ends[:, None], 0.0, shown_scores))
  with pytest.raises(UserValueError, match="end_frames"):
    segmenter.segment(frames, first, starts, np.asarray([2, 2]))  # before the start frame


def test_evaluate_vos_hides_after_the_last_annotation(segmenter, tmp_path, monkeypatch):
  """evaluate_vos gives each object its last annotated frame (the last annotation holding its id)."""
  frames, gt = _video()
  gt = gt[:1].copy()
  gt[0, 4:] = False  # object 1 leaves after frame 3
  _write_davis(tmp_path / "DAVIS", {"leaving": (frames, gt)})
  monkeypatch.setattr(segmenter, "settings", dataclasses.replace(segmenter.settings, hide_after_last_frame=True))
  r = vos.evaluate_vos(segmenter, str(tmp_path / "DAVIS"), "val", out_dir=str(tmp_path / "pred"))
  saved = np.load(tmp_path / "pred" / "leaving.npz")
  assert saved["end_frames"].tolist() == [3] and saved["start_frames"].tolist() == [0]
  assert not saved["masks"][0, 4:].any() and saved["masks"][0, 1:4].any()
  assert r["num_videos"] == 1


def _torchvision_resize_size(h, w, size, max_size):
  """torchvision 0.14 `_compute_resized_output_size` for an int size (the reference pins torch 1.13.1)."""
  short, long = (w, h) if w <= h else (h, w)
  new_short, new_long = size, int(size * long / short)
  if new_long > max_size:
    new_short, new_long = int(max_size * new_short / new_long), max_size
  new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
  return new_h, new_w


def test_reference_resize_sizes():
  # DAVIS 480p at the Swin-T / Swin-L MIN_SIZE_TEST (640 / 800, max 1333): floored long sides, not detectron2's
  assert vos.reference_resize_size(480, 854, 640, 1333) == (640, 1138)
  assert vos.reference_resize_size(480, 854, 800, 1333) == (749, 1333)
  assert vos.reference_resize_size(854, 480, 640, 1333) == (1138, 640)
  from dinoseg.predict import resize_shortest_edge
  assert resize_shortest_edge(480, 854, 640, 1333) == (640, 1139)  # dinoseg's default differs by one pixel
  rng = np.random.default_rng(0)
  for h, w, size in zip(rng.integers(20, 2000, 50), rng.integers(20, 2000, 50), rng.integers(16, 900, 50)):
    assert vos.reference_resize_size(int(h), int(w), int(size), 1333) == \
        _torchvision_resize_size(int(h), int(w), int(size), 1333)


def test_opencv_cubic_resize_against_torch_bicubic():
  """OpenCV's INTER_CUBIC = PyTorch's bicubic (A = -0.75, half-pixel, replicated border, no antialias) up to
  OpenCV's 11-bit fixed-point weights: uint8 values within 1, masks equal except at values within 1e-3 of 0.5
  (the shrink to 45 x 30 has exact ties at 0.5, which the fixed point keeps and torch's float sum may not)."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  for (h, w), (nh, nw) in (((37, 53), (50, 71)), ((60, 80), (45, 30)), ((24, 32), (35, 64))):
    image = rng.integers(0, 256, (3, h, w)).astype(np.uint8)
    ours = vos.opencv_cubic_resize(image, (nh, nw))
    assert ours.shape == (3, nh, nw) and ours.dtype == np.uint8
    ref = torch.nn.functional.interpolate(torch.from_numpy(image.astype(np.float64))[None], (nh, nw),
                                          mode="bicubic", align_corners=False)[0].numpy()
    assert np.abs(ours.astype(int) - np.clip(np.round(ref), 0, 255)).max() <= 1
    blocks = rng.random((2, h // 4 + 1, w // 4 + 1)) > 0.5
    masks = np.kron(blocks, np.ones((4, 4)))[:, :h, :w].astype(np.uint8)
    kept = vos.opencv_cubic_resize(masks, (nh, nw)) > 0
    value = torch.nn.functional.interpolate(torch.from_numpy(masks.astype(np.float64))[None], (nh, nw),
                                            mode="bicubic", align_corners=False)[0].numpy()
    differ = kept != (value >= 0.5)
    assert np.abs(value[differ] - 0.5).max(initial=0.0) < 1e-3
    assert (kept[np.abs(value - 0.5) > 1e-3] == (value >= 0.5)[np.abs(value - 0.5) > 1e-3]).all() and kept.any()
    assert (kept != (masks[:, (np.arange(nh) * h) // nh][:, :, (np.arange(nw) * w) // nw] > 0)).any()  # not nearest


def test_reference_resize_of_frames_and_masks(segmenter, monkeypatch):
  frames, gt = _video()
  frame, masks = frames[0], np.concatenate([gt[:, 3], np.zeros((1, H, W), bool)])
  default = segmenter.resize(frame, masks)
  monkeypatch.setattr(segmenter, "settings", dataclasses.replace(segmenter.settings, resize="reference"))
  canvas, cmasks, valid = segmenter.resize(frame, masks)
  nh, nw = vos.reference_resize_size(H, W, 64, 64)  # the tiny config: davis_min_size = max_size = 64
  assert tuple(valid) == (nh, nw) == (35, 64) and tuple(default[2]) == (36, 64)
  expected = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BICUBIC), np.float32)
  np.testing.assert_array_equal(canvas[:nh, :nw], expected)
  assert not canvas[nh:].any() and canvas.shape == (*segmenter.canvas_hw, 3)
  np.testing.assert_array_equal(cmasks[:2, :nh, :nw], vos.opencv_cubic_resize(masks[:2].astype(np.uint8), (nh, nw)) > 0)
  assert not cmasks[2].any() and not cmasks[:, nh:].any()
  out, scores = segmenter.segment(frames[:3], gt[:1, 0])  # runs through the same jitted functions
  assert out.shape == (1, 3, H, W) and np.isfinite(scores).all()


def test_float16_vos(segmenter):
  """test.vos_dtype="float16": float16 compute (the reference's autocast), float32 parameters; finite results."""
  settings = dataclasses.replace(segmenter.settings, dtype="float16")
  seg = vos.VideoObjectSegmenter(segmenter.model, segmenter.variables, segmenter.config, settings)
  assert seg.model.predictor.dtype == jnp.float16 and seg.model.backbone.dtype == jnp.float16
  assert seg.model.pixel_decoder.dtype == jnp.float16 and segmenter.model.predictor.dtype == jnp.float32
  assert {x.dtype for x in jax.tree_util.tree_leaves(seg.variables)} == {jnp.dtype(jnp.float32)}
  frames, gt = _video()
  masks, scores = seg.segment(frames[:4], gt[:1, 0])
  assert np.isfinite(scores).all() and masks[0, 1:].any() and (scores[0, 1:] > 0).all()
  reference, _ = segmenter.segment(frames[:4], gt[:1, 0])
  assert np.mean(masks == reference) > 0.9  # close to the float32 run (random weights)


def test_new_settings_are_checked(segmenter, tmp_path, capsys):
  from dinoseg import cli
  s = vos.VOSSettings.from_config(segmenter.config)
  assert (s.hide_after_last_frame, s.resize, s.dtype) == (False, "dinoseg", "float32")  # the defaults
  config = load_config(TINY, ["test.vos_hide_after_last_frame=True", "test.vos_resize=reference",
                              "test.vos_dtype=float16"])
  s = vos.VOSSettings.from_config(config)
  assert (s.hide_after_last_frame, s.resize, s.dtype) == (True, "reference", "float16")
  for override in ("test.vos_resize=bicubic", "test.vos_dtype=float64"):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
      load_config(TINY, [override])
  for bad in (dict(resize="bicubic"), dict(dtype="int8")):
    with pytest.raises(UserValueError):
      vos.VideoObjectSegmenter(segmenter.model, segmenter.variables, segmenter.config, vos.VOSSettings(**bad))
  assert cli.main(["eval", f"--config={TINY}", f"--weights={tmp_path}", "--config.test.vos_resize=pil"]) == 2
  assert "test.vos_resize must be one of" in capsys.readouterr().err
