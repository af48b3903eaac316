"""DINOv video object segmentation, the reference's inputs and outputs around the tracking: the frame-0 output
(`test.vos_first_frame_output`: the given mask through the model input and back, as `test_tracking_prev` writes
it) and the per-object frame lists of a `video_objects_info.json` (`test.vos_objects_info`). The tiny model with
random weights; the DAVIS trees and JSON files are written here."""
import dataclasses
import json
import logging

import numpy as np
import pytest
from dinov_fixtures import load_fixture
from test_vos import TINY, H, T, W, _davis_video, _video, _write_davis, segmenter  # noqa: F401 (a fixture)

from dinoseg.config import ConfigError, load_config
from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.evaluation import davis
from dinoseg.models.dinov import vos


def _torch_frame0_output(torch, given: np.ndarray, out_hw) -> np.ndarray:
  """train_net.py `test_tracking_prev` at fid 0: F.interpolate(rand_shape[None].float(), size=(height, width),
  bilinear, align_corners=False)[0] > 0 of the (O, h, w) bool masks the mapper made."""
  x = torch.from_numpy(np.ascontiguousarray(given, bool))[None].float()
  return (torch.nn.functional.interpolate(x, size=tuple(out_hw), mode="bilinear", align_corners=False)[0] > 0).numpy()


# ----------------------------------------------------------------------------------------------- frame-0 output

def test_resized_given_masks_against_the_reference_fixture():
  """The fixture (scripts/make_dinov_vos_fixtures.py): a DAVIS-sized annotation through the reference's mapper
  (torchvision sizes, OpenCV cubic masks) and its frame-0 F.interpolate, at MIN_SIZE_TEST 640 and 800."""
  fx = load_fixture("vos_first_frame")
  ids, key = fx["annotation"], fx["key_frame"]
  masks = np.stack([ids == i for i in (1, 2, 3)])
  frame = np.zeros((*ids.shape, 3), np.uint8)
  for m in (640, 800):
    nh, nw = (int(v) for v in fx[f"size/{m}"])
    canvas_hw = (nh + 24, nw + 11)  # padding beyond the resized frame is not part of the output
    _, cmasks, valid = vos.reference_resize(frame, masks, m, 1333, canvas_hw)
    assert tuple(valid) == (nh, nw)
    np.testing.assert_array_equal(cmasks[:, :nh, :nw] > 0, np.unpackbits(fx[f"given/{m}"], axis=-1, count=nw) > 0)
    expected = np.unpackbits(fx[f"output/{m}"], axis=-1, count=ids.shape[1]).astype(bool)
    ours = vos.resized_given_masks(cmasks, valid, ids.shape) & key[:, None, None]
    np.testing.assert_array_equal(ours, expected)
    # not the annotation: the "> 0" of the bilinear round trip grows it (and objects 1, 2 overlap at their seam)
    assert (ours[:2] & ~masks[:2]).sum() > 500 and not (masks[:2] & ~ours[:2]).any() and (ours[0] & ours[1]).any()


def test_torch_cpu_bilinear_matrix_against_torch():
  """Weights and, above all, which taps are exactly zero (the "> 0" depends on them): PyTorch's CPU kernel
  computes the source index with a fused multiply-add; rounding twice gets 20 -> 60 (among others) wrong."""
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  sizes = [(20, 60), (640, 480), (1138, 854), (749, 480), (1333, 854), (7, 7), (1, 5), (5, 1)]
  sizes += [(int(a), int(b)) for a, b in rng.integers(1, 160, (120, 2))]
  for n_in, n_out in sizes:
    impulses = torch.eye(n_in)[None, None]  # row i: the response to input i
    ref = torch.nn.functional.interpolate(impulses, size=(n_in, n_out), mode="bilinear",
                                          align_corners=False)[0, 0].numpy().T  # (out, in)
    ours = vos.torch_cpu_bilinear_matrix(n_in, n_out)
    np.testing.assert_array_equal(ours > 0, ref > 0, err_msg=str((n_in, n_out)))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
  # the twice-rounded index (float32 product, then float32 subtraction) differs from it at 20 -> 60
  scale = np.float32(20) / np.float32(60)
  twice = scale * (np.arange(60, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  assert twice[1] == 0.0 and vos.torch_cpu_bilinear_matrix(20, 60)[1, 1] > 0


def test_resized_given_masks_against_torch_interpolate():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(3)
  cases = (((640, 1138), (480, 854)), ((749, 1333), (480, 854)), ((35, 64), (40, 72)), ((36, 64), (40, 72)),
           ((25, 71), (37, 53)), ((48, 48), (48, 48)), ((30, 20), (100, 60)), ((13, 7), (5, 9)))
  for (nh, nw), out_hw in cases:
    blocks = rng.random((3, nh // 3 + 1, nw // 3 + 1)) > 0.6
    given = np.kron(blocks, np.ones((3, 3), bool))[:, :nh, :nw]
    given[2] = rng.random((nh, nw)) > 0.97  # isolated pixels: the taps' zero weights matter
    canvas = np.ones((3, nh + 5, nw + 3), np.float32)  # the padding must not leak in
    canvas[:, :nh, :nw] = given
    ours = vos.resized_given_masks(canvas, np.asarray([nh, nw]), out_hw)
    assert ours.shape == (3, *out_hw) and ours.dtype == bool
    np.testing.assert_array_equal(ours, _torch_frame0_output(torch, given, out_hw), err_msg=str((nh, nw, out_hw)))


@pytest.fixture(scope="module")
def reference_like(segmenter):  # noqa: F811 (the imported fixture)
  """The reference-like run of test_tracking_prev (late objects, sizes / filters, end frames, frame-0 output;
  float32): its own jitted functions (late_objects changes the traced step)."""
  settings = dataclasses.replace(segmenter.settings, late_objects="reference", resize="reference",
                                 hide_after_last_frame=True, first_frame_output="reference")
  return vos.VideoObjectSegmenter(segmenter.model, segmenter.variables, segmenter.config, settings)


def test_first_frame_output_clean(segmenter, monkeypatch):  # noqa: F811
  """late_objects="clean": where the given mask is output (frame 0; a late object's start frame) "reference"
  outputs resized_given_masks of the canvas mask instead; every other output and every score is unchanged."""
  frames, gt = _video()
  first, starts = gt[[0, 1], [0, 3]], np.asarray([0, 3])
  given, given_scores = segmenter.segment(frames, first, starts)
  monkeypatch.setattr(segmenter, "settings", dataclasses.replace(segmenter.settings, first_frame_output="reference"))
  out, scores = segmenter.segment(frames, first, starts)
  np.testing.assert_array_equal(scores, given_scores)
  for o, f in ((0, 0), (1, 3)):
    _, cmasks, valid = segmenter.resize(frames[f], first[o:o + 1])
    expected = vos.resized_given_masks(cmasks, valid, (H, W))[0]
    np.testing.assert_array_equal(out[o, f], expected)
    assert (expected != gt[o, f]).any() and expected[gt[o, f]].all()  # close to the annotation, not equal
    out[o, f] = given[o, f]
  np.testing.assert_array_equal(out, given)


def test_first_frame_output_reference_run(reference_like, monkeypatch):
  """The reference-like run: frame 0 = the reference's F.interpolate of the mapper's masks (PyTorch, when
  installed, else dinoseg's transcription of it); a late object's start frame is its prediction either way."""
  frames, gt = _video()
  first, starts = gt[[0, 1], [0, 3]], np.asarray([0, 3])
  out, scores = reference_like.segment(frames, first, starts)
  nh, nw = vos.reference_resize_size(H, W, 64, 64)
  mapper = vos.opencv_cubic_resize(first[:1].astype(np.uint8), (nh, nw)) > 0
  try:
    import torch  # noqa: PLC0415
    expected = _torch_frame0_output(torch, mapper, (H, W))[0]
  except ImportError:
    expected = vos.resized_given_masks(mapper.astype(np.float32), (nh, nw), (H, W))[0]
  np.testing.assert_array_equal(out[0, 0], expected)
  assert (expected != gt[0, 0]).any() and scores[0, 0] == 1.0 and not out[1, :3].any()
  monkeypatch.setattr(reference_like, "settings", dataclasses.replace(reference_like.settings,
                                                                      first_frame_output="given"))
  given, given_scores = reference_like.segment(frames, first, starts)
  np.testing.assert_array_equal(given[0, 0], gt[0, 0])
  np.testing.assert_array_equal(given[:, 1:], out[:, 1:])  # frame 3 of the late object included
  np.testing.assert_array_equal(given_scores, scores)


def test_first_frame_output_setting_is_checked(segmenter, tmp_path, capsys):  # noqa: F811
  from dinoseg import cli
  s = vos.VOSSettings.from_config(segmenter.config)
  assert (s.first_frame_output, s.objects_info) == ("given", "")  # the defaults: today's behaviour
  config = load_config(TINY, ["test.vos_first_frame_output=reference", "test.vos_objects_info=/data/info.json"])
  s = vos.VOSSettings.from_config(config)
  assert (s.first_frame_output, s.objects_info) == ("reference", "/data/info.json")
  with pytest.raises(ConfigError, match="test.vos_first_frame_output"):
    load_config(TINY, ["test.vos_first_frame_output=resized"])
  with pytest.raises(UserValueError, match="first_frame_output"):
    vos.VideoObjectSegmenter(segmenter.model, segmenter.variables, segmenter.config,
                             vos.VOSSettings(first_frame_output="annotation"))
  assert cli.main(["eval", f"--config={TINY}", f"--weights={tmp_path}",
                   "--config.test.vos_first_frame_output=exact"]) == 2
  err = capsys.readouterr().err.strip()
  assert "test.vos_first_frame_output must be one of" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------- video_objects_info.json

def _objects_info(videos: dict) -> dict:
  """{"videos": {name: {"objects": {"<id>": {"frames": [...]}}}}} from {name: {id: frames}}."""
  return {"videos": {name: {"objects": {str(k): {"frames": list(v)} for k, v in objs.items()}}
                     for name, objs in videos.items()}}


def _stems(*frames):
  return [f"{t:05d}" for t in frames]


@pytest.fixture()
def davis_tree(tmp_path):
  """A DAVIS tree with "a" (objects 1, 3 from frame 0, 2 from frame 3) and "b" (one object)."""
  frames, gt = _davis_video()
  frames2, gt2 = _video(1)
  _write_davis(tmp_path / "DAVIS", {"a": (frames, gt), "b": (frames2, gt2[:1])})
  return tmp_path / "DAVIS", gt


def test_video_object_frames(davis_tree, tmp_path, caplog):
  root, gt = davis_tree
  seq = davis.read_davis_sequence(root, "a")
  # object 1: its last frame 3 (annotated until 5); object 2: given at frame 4 (annotated from 3); id 7: not scored
  info = _objects_info({"a": {1: _stems(0, 1, 2, 3), 2: _stems(4, 5), 3: _stems(*range(T)), 7: _stems(2)}})
  path = tmp_path / "video_objects_info.json"
  path.write_text(json.dumps(info))
  videos = davis.read_video_objects_info(path)
  with caplog.at_level(logging.WARNING, logger="dinoseg.evaluation.davis"):
    starts, ends = davis.video_object_frames(videos, seq)
  assert starts.tolist() == [0, 4, 0] and ends.tolist() == [3, 5, T - 1]
  assert "[7]" in caplog.text
  # unlisted objects that no annotation holds are allowed (-1: scored against an empty prediction)
  empty = dataclasses.replace(seq, masks=np.concatenate([seq.masks, np.zeros_like(seq.masks[:1])]),
                              object_ids=np.asarray([1, 2, 3, 4]))
  starts, ends = davis.video_object_frames(videos, empty)
  assert starts.tolist() == [0, 4, 0, -1] and ends.tolist() == [3, 5, T - 1, -1]
  bad_entries = {
      "video 'a' is not in it": {"videos": {"b": {"objects": {}}}},
      'has no "objects"': {"videos": {"a": {"frames": []}}},
      "not an integer id": _objects_info({"a": {"one": _stems(0)}}),
      "non-empty list": _objects_info({"a": {1: [], 2: _stems(3), 3: _stems(0)}}),
      "are not frames of the sequence": _objects_info({"a": {1: ["00000", "00009"], 2: _stems(3), 3: _stems(0)}}),
      "precedes its first": _objects_info({"a": {1: _stems(4, 2), 2: _stems(3), 3: _stems(0)}}),
      "does not hold it": _objects_info({"a": {1: _stems(0), 2: _stems(1, 2), 3: _stems(0)}}),
      r"annotated objects \[2\] are not listed": _objects_info({"a": {1: _stems(0), 3: _stems(0)}}),
  }
  for message, content in bad_entries.items():
    with pytest.raises(UserValueError, match=message):
      davis.video_object_frames(content["videos"], seq)
  bad_files = {"no video objects info file": None, "not a JSON file": b'{"videos": {', "\"videos\" mapping": b"[1]"}
  for message, content in bad_files.items():
    bad = tmp_path / "bad.json"
    bad.unlink(missing_ok=True)
    if content is not None:
      bad.write_bytes(content)
    with pytest.raises(UserFileNotFoundError if content is None else UserValueError, match=message):
      davis.read_video_objects_info(bad)
  bad.write_bytes(b"\xff\xfe{}")
  with pytest.raises(UserValueError, match="not a JSON file"):
    davis.read_video_objects_info(bad)


def test_evaluate_vos_with_objects_info(reference_like, davis_tree, tmp_path, monkeypatch):
  """The reference-like run reads its start / end frames from the JSON (settings.objects_info, or the argument);
  a video of the split missing from the file is refused before anything runs."""
  root, gt = davis_tree
  path = tmp_path / "video_objects_info.json"
  path.write_text(json.dumps(_objects_info({"a": {1: _stems(0, 1, 2, 3), 2: _stems(4, 5), 3: _stems(*range(T))},
                                            "b": {1: _stems(*range(T))}})))
  monkeypatch.setattr(reference_like, "settings", dataclasses.replace(reference_like.settings,
                                                                      objects_info=str(path)))
  r = vos.evaluate_vos(reference_like, str(root), "val", out_dir=str(tmp_path / "pred"))
  assert r["num_videos"] == 2 and r["num_objects"] == 4 and r["objects_after_first_frame"] == 1
  saved = np.load(tmp_path / "pred" / "a.npz")
  assert saved["start_frames"].tolist() == [0, 4, 0] and saved["end_frames"].tolist() == [3, 5, T - 1]
  masks = saved["masks"]
  assert not masks[0, 4:].any() and masks[0, 1:4].any()  # hidden after its last listed frame
  assert not masks[1, :4].any() and masks[1, 4:].any()  # given (and shown) from its first listed frame
  # the same run segment() makes with those frames
  frames = davis.read_davis_sequence(root, "a").frames
  direct, _ = reference_like.segment(frames, gt[[0, 1, 2], [0, 4, 0]], np.asarray([0, 4, 0]), np.asarray([3, 5, 5]))
  np.testing.assert_array_equal(masks, direct)
  # refusals: a video of the split absent (nothing runs), a prepared dataset (no DAVIS names), a missing file
  path.write_text(json.dumps(_objects_info({"a": {1: _stems(0), 2: _stems(3), 3: _stems(0)}})))
  monkeypatch.setattr(reference_like, "segment", lambda *a, **k: pytest.fail("segment ran"))
  with pytest.raises(UserValueError, match=r"videos \['b'\] of split 'val' are not in it"):
    vos.evaluate_vos(reference_like, str(root), "val")
  with pytest.raises(UserValueError, match="not a DAVIS root"):
    vos.evaluate_vos(reference_like, str(tmp_path / "pred"), "val")
  with pytest.raises(UserFileNotFoundError, match="no video objects info file"):
    vos.evaluate_vos(reference_like, str(root), "val", objects_info=str(tmp_path / "missing.json"))


@pytest.mark.slow  # builds and initialises the model (about 20 s here)
def test_objects_info_from_the_command_line(davis_tree, tmp_path, capsys):
  """`dinoseg dinov eval --vos=DIR --config.test.vos_objects_info=PATH`: a bad file is one line, exit 2."""
  from dinoseg import cli
  root, _ = davis_tree
  bad = tmp_path / "info.json"
  bad.write_text("not json")
  code = cli.main(["dinov", "eval", f"--config={TINY}", "--random-init", f"--vos={root}",
                   f"--config.test.vos_objects_info={bad}", "--config.model.msda_impl=xla"])
  errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (log lines aside)
  assert code == 2 and len(errors) == 1 and errors[0].startswith("dinoseg dinov: error: ")
  assert errors[0].endswith("not a JSON file (Expecting value: line 1 column 1 (char 0))")
