"""DINOv video object segmentation scored as the official DAVIS protocol (`test.vos_overlap`): each frame's
per-object outputs flattened into one label map as the reference's PNG writer paints them (train_net.py
`test_tracking_prev`), the DAVIS results layout written by `evaluate_vos(out_dir=...)` and read back, and the
refusal to overwrite files evaluate_vos did not write. The tiny model with random weights where a model runs;
a stand-in segmenter (fixed outputs) where the scoring itself is tested."""
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image
from test_vos import TINY, H, T, W, _write_davis, segmenter  # noqa: F401 (a fixture)

from dinoseg.config import ConfigError, load_config
from dinoseg.errors import UserValueError
from dinoseg.evaluation import davis
from dinoseg.models.dinov import vos


def _reference_png_frames(outputs, key_frames, end_frames, mappers):
  """Transcription of `test_tracking_prev`'s writer, frame by frame: `acc_key` |= the frame's key flags; the
  output = masks > 0 & acc_key & ~end_key; a float64 canvas of zeros where object i (in order) paints
  `mappers[i]` over its output; `Image.fromarray(canvas).convert("P")`; then `end_key` |= the frame's end flags.

  Args:
    outputs: (O, T, H, W) bool, the per-object outputs (frame 0: the given masks as it outputs them).
    key_frames, end_frames: (O,) each object's key (start) and end frame.
    mappers: (O,) the object ids, in the reference's object order.
  Returns:
    (T, H, W) uint8, the PNGs' pixel values.
  """
  o, t = outputs.shape[:2]
  acc_key, end_key = np.zeros(o, bool), np.zeros(o, bool)
  pngs = []
  for fid in range(t):
    acc_key |= np.asarray(key_frames) == fid
    output_mask = outputs[:, fid] & acc_key[:, None, None] & ~end_key[:, None, None]
    canvas = np.zeros(output_mask.shape[1:])
    for i in range(o):
      canvas[output_mask[i]] = mappers[i]
    pngs.append(np.asarray(Image.fromarray(canvas).convert("P")))
    end_key |= np.asarray(end_frames) == fid
  return np.stack(pngs)


def test_label_map_against_the_reference_writer():
  """Random overlapping masks, start and end frames: equal to the transcription of the reference's writer, in
  its object order and, with `order`, in an info file's order (ids "2", "1", "3")."""
  rng = np.random.default_rng(0)
  o, t, h, w = 3, 6, 12, 15
  outputs = rng.random((o, t, h, w)) < 0.4
  assert ((outputs.sum(0) > 1).any(0)).sum() > 20  # plenty of overlaps
  starts, ends = np.asarray([0, 2, 0]), np.asarray([5, 4, 2])
  ids = np.asarray([1, 2, 3])
  shown = outputs & (np.arange(t)[None] >= starts[:, None])[..., None, None] \
      & (np.arange(t)[None] <= ends[:, None])[..., None, None]  # what segment outputs (hidden after the end)
  expected = _reference_png_frames(outputs, starts, ends, ids)
  labels = vos.label_map(shown, ids)
  assert labels.dtype == np.uint8 and labels.shape == (t, h, w)
  np.testing.assert_array_equal(labels, expected)
  assert not (labels == 3)[3:].any() and (labels == 3)[:3].any()  # object 3 hidden after its end frame 2
  # the later object wins: where objects 1 and 2 both claim a pixel (and 3 does not), it is 2's
  both = shown[0] & shown[1] & ~shown[2]
  assert both.any() and (labels[both] == 2).all()
  # the reference's objects in an info file's order: "2", "1", "3" -> its object i is dinoseg's order[i]
  sequence = davis.DavisSequence(name="v", frames=np.zeros((t, h, w, 3), np.uint8), masks=outputs,
                                 object_ids=ids, frame_names=[f"{f:05d}" for f in range(t)])
  order = vos._paint_order({"v": {"objects": {"2": {}, "1": {}, "3": {}}}}, sequence)
  assert order.tolist() == [1, 0, 2]
  expected = _reference_png_frames(outputs[order], starts[order], ends[order], ids[order])
  np.testing.assert_array_equal(vos.label_map(shown, ids, order), expected)
  assert (vos.label_map(shown, ids, order)[both] == 1).all()
  # each object's scored mask is its label's region: disjoint, covering the union
  regions = vos.label_masks(labels, ids)
  assert regions.shape == shown.shape and (regions.sum(0) <= 1).all()
  np.testing.assert_array_equal(regions.any(0), shown.any(0))
  assert (regions <= shown).all()
  with pytest.raises(ValueError, match="distinct"):
    vos.label_map(shown, [1, 1, 2])
  with pytest.raises(ValueError, match="permutation"):
    vos.label_map(shown, ids, [0, 0, 1])


def _touching_video():
  """frames (T, H, W, 3) and gt (3, T, H, W): objects 1 and 2 side by side (touching, sharing a column
  boundary), object 3 entering at frame 3 and leaving after frame 4."""
  rng = np.random.default_rng(3)
  frames = rng.integers(0, 60, (T, H, W, 3)).astype(np.uint8)
  gt = np.zeros((3, T, H, W), bool)
  for t in range(T):
    gt[0, t, 6:24, 6 + t:30 + t] = True
    gt[1, t, 6:24, 30 + t:50 + t] = True
    if 3 <= t <= 4:
      gt[2, t, 26:38, 20:44] = True
  for o, colour in enumerate(((200, 40, 40), (40, 200, 90), (60, 60, 220))):
    frames[gt[o]] = colour
  return frames, gt


def test_segment_outputs_flattened_as_the_reference_writes(segmenter, monkeypatch):  # noqa: F811
  """The model's outputs with the reference's frame-0 output (touching objects: the bilinear '> 0' makes
  them overlap there) and hiding after the last frame: label_map of the outputs = the transcription of the
  reference's writer over the unhidden outputs with its acc_key / end_key."""
  frames, gt = _touching_video()
  starts, ends = np.asarray([0, 0, 3]), np.asarray([T - 1, T - 1, 4])
  first = gt[np.arange(3), starts]
  settings = dataclasses.replace(segmenter.settings, first_frame_output="reference")
  monkeypatch.setattr(segmenter, "settings", settings)
  shown, _ = segmenter.segment(frames, first, starts, ends)
  monkeypatch.setattr(segmenter, "settings", dataclasses.replace(settings, hide_after_last_frame=True))
  hidden, _ = segmenter.segment(frames, first, starts, ends)
  assert (shown[0, 0] & shown[1, 0]).any()  # frame 0: the given masks overlap after the round trip
  assert shown[2, 5].any() and not hidden[2, 5].any()
  ids = np.asarray([1, 2, 3])
  labels = vos.label_map(hidden, ids)
  np.testing.assert_array_equal(labels, _reference_png_frames(shown, starts, ends, ids))
  assert (labels[0][shown[0, 0] & shown[1, 0]] == 2).all()


class _FixedSegmenter:
  """Stands in for VideoObjectSegmenter in evaluate_vos: `segment` returns fixed per-object outputs (O, T, H, W)
  (the tracked objects' rows, in order) whatever the frames; `settings` a VOSSettings."""

  def __init__(self, outputs, **settings):
    self.outputs = np.asarray(outputs, bool)
    self.settings = vos.VOSSettings(**settings)
    self.calls = 0

  def segment(self, frames, first_masks, start_frames=None, end_frames=None):
    self.calls += 1
    assert len(first_masks) == len(self.outputs)
    return self.outputs.copy(), np.ones(self.outputs.shape[:2], np.float32)


def _two_objects():
  """gt (2, T, H, W): two side-by-side rectangles (ids 1, 2) and frames."""
  gt = np.zeros((2, T, H, W), bool)
  gt[0, :, 8:30, 8:36] = True
  gt[1, :, 8:30, 36:60] = True
  frames = np.full((T, H, W, 3), 30, np.uint8)
  return frames, gt


def test_label_map_and_per_object_differ_on_overlaps(tmp_path):
  """Object 1's prediction spills over object 2 (which is exact): per object, object 1 pays for the spill; as a
  label map object 2 (painted later) takes the shared pixels back, so both are exact and J&F is higher. When
  object 2 spills over object 1, the label map takes those pixels from object 1 too: J&F is lower."""
  frames, gt = _two_objects()
  _write_davis(tmp_path / "DAVIS", {"pair": (frames, gt)})
  root = str(tmp_path / "DAVIS")
  spill1 = gt.copy()
  spill1[0, :, 8:30, 36:48] = True  # object 1 covers half of object 2
  per_object = vos.evaluate_vos(_FixedSegmenter(spill1, overlap="per_object"), root, "val")
  label = vos.evaluate_vos(_FixedSegmenter(spill1), root, "val")  # the default: label_map
  assert vos.VOSSettings().overlap == "label_map"
  j1 = gt[0, 0].sum() / spill1[0, 0].sum()  # object 1's J per object; object 2's is 1
  assert per_object["J-Mean"] == pytest.approx((j1 + 1.0) / 2)
  assert label["J-Mean"] == pytest.approx(1.0) and label["J&F-Mean"] == pytest.approx(1.0)
  assert label["J&F-Mean"] > per_object["J&F-Mean"]
  spill2 = gt.copy()
  spill2[1, :, 8:30, 24:36] = True  # object 2 covers part of object 1
  per_object = vos.evaluate_vos(_FixedSegmenter(spill2, overlap="per_object"), root, "val")
  label = vos.evaluate_vos(_FixedSegmenter(spill2), root, "val")
  j2 = gt[1, 0].sum() / spill2[1, 0].sum()
  j1_lost = (gt[0, 0].sum() - (gt[0, 0] & spill2[1, 0]).sum()) / gt[0, 0].sum()
  assert per_object["J-Mean"] == pytest.approx((1.0 + j2) / 2)
  assert label["J-Mean"] == pytest.approx((j1_lost + j2) / 2)
  assert label["J&F-Mean"] < per_object["J&F-Mean"]


def test_written_results_read_back_and_score_the_same(tmp_path):
  """out_dir: <out>/<sequence>/<stem>.png indexed with the annotations' palette, pixel = the scored label map;
  scored from the PNGs as davis2017-evaluation reads them = the in-memory J&F; a rerun replaces its own files;
  the npz keeps the per-object outputs. A prepared-dataset-free check: two DAVIS sequences."""
  frames, gt = _two_objects()
  _write_davis(tmp_path / "DAVIS", {"pair": (frames, gt), "pair2": (frames[:, :, ::-1].copy(), gt[:, :, :, ::-1])})
  root = tmp_path / "DAVIS"
  outputs = gt.copy()
  outputs[0, :, 8:30, 36:48] = True
  outputs[1, 2:, 4:12, 40:70] = True
  out = tmp_path / "results"
  seg = _FixedSegmenter(outputs)
  result = vos.evaluate_vos(seg, str(root), "val", out_dir=str(out), max_videos=1)
  assert result["num_videos"] == 1 and not (out / "pair2").exists()
  stems = [f"{t:05d}" for t in range(T)]
  with Image.open(root / "Annotations" / "480p" / "pair" / "00000.png") as im:
    palette = im.getpalette()
  labels = vos.label_map(outputs, [1, 2])
  for t, stem in enumerate(stems):
    with Image.open(out / "pair" / f"{stem}.png") as im:
      assert im.mode == "P" and im.getpalette() == palette
      np.testing.assert_array_equal(np.asarray(im), labels[t])
  saved = np.load(out / "pair.npz")
  np.testing.assert_array_equal(saved["masks"], outputs)
  np.testing.assert_array_equal(saved["labels"], labels)
  assert saved["object_ids"].tolist() == [1, 2] and saved["start_frames"].tolist() == [0, 0]
  evaluator = davis.DavisEvaluator()
  sequence = davis.read_davis_sequence(root, "pair")
  evaluator.process("pair", sequence.masks, davis.read_result_masks(out, "pair", sequence.frame_names))
  from_pngs = evaluator.result()
  for key in ("J&F-Mean", "J-Mean", "F-Mean", "J-Recall", "F-Decay"):
    assert from_pngs[key] == pytest.approx(result[key], abs=1e-12), key
  assert result["J&F-Mean"] < 1.0  # object 2's spill is scored
  manifest = json.loads((out / vos.OUTPUTS_MANIFEST).read_text())["files"]
  assert set(manifest) == {"pair.npz", *(f"pair/{s}.png" for s in stems)}
  # a rerun over its own files: allowed, all sequences now
  again = vos.evaluate_vos(_FixedSegmenter(outputs), str(root), "val", out_dir=str(out))
  assert again["num_videos"] == 2 and (out / "pair2" / "00005.png").is_file()
  assert len(json.loads((out / vos.OUTPUTS_MANIFEST).read_text())["files"]) == 2 * (T + 1)


def test_outputs_never_overwrite_other_files(tmp_path):
  """A planned output that exists and evaluate_vos did not write (not in its manifest) is refused before any
  video runs: a user's PNG in the results folder, the annotations folder itself as out_dir."""
  frames, gt = _two_objects()
  _write_davis(tmp_path / "DAVIS", {"pair": (frames, gt)})
  root = tmp_path / "DAVIS"
  out = tmp_path / "results"
  (out / "pair").mkdir(parents=True)
  Image.new("P", (W, H)).save(out / "pair" / "00003.png")
  seg = _FixedSegmenter(gt)
  with pytest.raises(UserValueError, match="00003.png exists and was not written"):
    vos.evaluate_vos(seg, str(root), "val", out_dir=str(out))
  assert seg.calls == 0 and not (out / vos.OUTPUTS_MANIFEST).exists()
  annotations = root / "Annotations" / "480p"
  before = (annotations / "pair" / "00001.png").read_bytes()
  with pytest.raises(UserValueError, match="not overwritten"):
    vos.evaluate_vos(seg, str(root), "val", out_dir=str(annotations))
  assert (annotations / "pair" / "00001.png").read_bytes() == before and seg.calls == 0
  (out / vos.OUTPUTS_MANIFEST).write_text("not json")
  with pytest.raises(UserValueError, match="not a list of evaluate_vos outputs"):
    vos.evaluate_vos(seg, str(root), "val", out_dir=str(out))


def test_prepared_style_outputs_use_default_palette(tmp_path):
  """Without DAVIS annotations (a prepared dataset) the PNGs take davis.default_palette (the DAVIS / VOC
  colours) and ids 1, 2, ...; write_label_png / read_result_masks round trip."""
  palette = davis.default_palette()
  assert palette[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] and len(palette) == 768
  labels = np.zeros((3, 5, 7), np.uint8)
  labels[:, 1:3, 2:5] = 2
  labels[1, 4, :] = 1
  (tmp_path / "v").mkdir()
  for t in range(3):
    davis.write_label_png(tmp_path / "v" / f"{t:05d}.png", labels[t])
  masks = davis.read_result_masks(tmp_path, "v", ["00000", "00001", "00002"])
  np.testing.assert_array_equal(masks, vos.label_masks(labels, [1, 2]))
  with Image.open(tmp_path / "v" / "00001.png") as im:
    assert im.mode == "P" and im.getpalette() == palette


def test_overlap_setting_is_checked(segmenter, tmp_path, capsys):  # noqa: F811
  from dinoseg import cli
  assert vos.VOSSettings.from_config(segmenter.config).overlap == "label_map"
  config = load_config(TINY, ["test.vos_overlap=per_object"])
  assert vos.VOSSettings.from_config(config).overlap == "per_object"
  with pytest.raises(ConfigError, match="test.vos_overlap"):
    load_config(TINY, ["test.vos_overlap=later_wins"])
  with pytest.raises(UserValueError, match="overlap"):
    vos.VideoObjectSegmenter(segmenter.model, segmenter.variables, segmenter.config,
                             vos.VOSSettings(overlap="union"))
  assert cli.main(["eval", f"--config={TINY}", f"--weights={tmp_path}", "--config.test.vos_overlap=first"]) == 2
  err = capsys.readouterr().err.strip()
  assert "test.vos_overlap must be one of" in err and len(err.splitlines()) == 1


class _GroundTruthSegmenter(_FixedSegmenter):
  """`segment` returns each tracked object's ground truth (set per call through `truth`), and object 1's
  mask grown over the whole frame so that the label map matters."""

  def __init__(self, truth, **settings):
    super().__init__(np.zeros((0, 1, 1, 1), bool), **settings)
    self.truth = truth

  def segment(self, frames, first_masks, start_frames=None, end_frames=None):
    self.calls += 1
    out = self.truth[:len(first_masks)].copy()
    out[0] = True
    return out, np.ones(out.shape[:2], np.float32)


def test_prepared_dataset_results_layout(tmp_path, monkeypatch):
  """A prepared video dataset: PNGs <out>/<video id>/00000.png ... with the default palette and track ids 1, 2, ...;
  its label maps score as the in-memory run (object 1 covering the frame, the others painted over it)."""
  from dinoseg.data_pipelines import synth, writer
  synth.synthesize("ytvis_2019", str(tmp_path / "raw"), num_images=1, image_size=(40, 72), max_objects=2, seed=1,
                   num_frames=4, splits=("val",))
  writer.prepare("ytvis_2019", str(tmp_path / "raw"), str(tmp_path / "data"), splits=("val",), num_shards=1,
                 progress=False)
  ((name, frames, gt, _),) = list(vos._videos(str(tmp_path / "data"), "val"))
  seg = _GroundTruthSegmenter(gt)
  out = tmp_path / "pred"
  result = vos.evaluate_vos(seg, str(tmp_path / "data"), "val", out_dir=str(out))
  stems = [f"{t:05d}" for t in range(len(frames))]
  labels = []
  for stem in stems:
    with Image.open(out / name / f"{stem}.png") as im:
      assert im.mode == "P"
      labels.append(np.asarray(im))
  labels = np.stack(labels)
  expected = seg.segment(frames, gt[:, 0])[0]
  np.testing.assert_array_equal(labels, vos.label_map(expected, np.arange(1, len(gt) + 1)))
  with Image.open(out / name / "00000.png") as im:
    assert im.getpalette() == davis.default_palette()
  evaluator = davis.DavisEvaluator()
  evaluator.process(name, gt, davis.read_result_masks(out, name, stems))
  assert evaluator.result()["J&F-Mean"] == pytest.approx(result["J&F-Mean"], abs=1e-12)
  per_object = vos.evaluate_vos(_GroundTruthSegmenter(gt, overlap="per_object"), str(tmp_path / "data"), "val")
  assert len(gt) >= 2 and gt[1:, 1:-1].any()  # later objects take their pixels back from object 1
  assert result["J&F-Mean"] > per_object["J&F-Mean"]
