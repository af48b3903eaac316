"""`dinoseg quickstart ov2seg`: synthetic LV-VIS videos -> base-class training frames (LVIS layout) -> the small
OV2Seg trained through the shared trainer -> video AP / APb / APn, track identity, overlay GIFs.

Fast: the frames -> LVIS conversion (base classes only, prepared by the LVIS preparer), the track-identity figure
on hand-made tracks, the SYSTEM argument, the refusal of a workdir the quickstart did not create (exit 2, through
the real CLI) and of a config of the other system. Slow: the `:tiny` variant end to end (about 4 minutes on 2 busy
CPU cores, most of it compiling the train step)."""
import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dinoseg.commands import quickstart, quickstart_ov2seg
from dinoseg.errors import UserValueError
from dinoseg.ops.masks import rle_decode, rle_encode

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = "configs/ov2seg/quickstart.py:tiny"


def _env() -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             JAX_THREEFRY_PARTITIONABLE="false")
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def _cmd(workdir, *extra, system=("ov2seg",)):
  return [sys.executable, "-m", "dinoseg.cli", "quickstart", *system, f"--config={CONFIG}", f"--workdir={workdir}",
          "--config.train.progress=false", *extra]


# ----------------------------------------------------------------------------- data


def test_frames_as_lvis_keeps_base_annotations_only_and_prepares(tmp_path):
  from dinoseg.data_pipelines import open_dataset, synth, writer
  raw = tmp_path / "raw"
  synth.synthesize("lvvis", str(raw), num_images=4, splits=("train",), image_size=(40, 48), num_frames=3,
                   max_objects=4, seed=3)
  videos = json.loads((raw / "train_instances.json").read_text())
  out = raw / "frames_lvis_train.json"
  summary = quickstart_ov2seg.frames_as_lvis(raw / "train_instances.json", out)
  partition = {c["id"]: c["partition"] for c in videos["categories"]}
  assert summary["base_ids"] == sorted(i for i, p in partition.items() if p in (0, 1))
  assert summary["novel_ids"] == sorted(i for i, p in partition.items() if p in (2, 3))
  lvis = json.loads(out.read_text())
  assert len(lvis["images"]) == sum(len(v["file_names"]) for v in videos["videos"]) == summary["images"]
  # Every frame mask of a base track is one annotation with the same mask; no novel category is annotated.
  expected = [(t["video_id"] * 1000 + f + 1, t["category_id"], rle_decode(s))
              for t in videos["annotations"] if t["category_id"] in summary["base_ids"]
              for f, s in enumerate(t["segmentations"]) if s is not None]
  assert len(lvis["annotations"]) == len(expected) == summary["annotations"] > 0
  for ann, (image_id, cat, mask) in zip(lvis["annotations"], expected):
    assert (ann["image_id"], ann["category_id"]) == (image_id, cat)
    np.testing.assert_array_equal(rle_decode(ann["segmentation"]), mask)
    assert ann["area"] == mask.sum()
  assert any(t["category_id"] in summary["novel_ids"] for t in videos["annotations"])  # there was something to drop
  cats = {c["id"]: c for c in lvis["categories"]}
  assert [cats[i]["frequency"] for i in summary["novel_ids"]] == ["r"] * len(summary["novel_ids"])
  assert all(cats[i]["image_count"] == 0 for i in summary["novel_ids"])
  assert all(cats[i]["frequency"] == "f" for i in summary["base_ids"])

  data = tmp_path / "frames"
  writer.prepare("lvis", str(raw), str(data), splits=["train"], progress=False,
                 options={"annotations": quickstart_ov2seg.FRAMES_JSON, "images": "{split}/JPEGImages"})
  view = open_dataset(str(data)).split("train")
  assert len(view) == len(lvis["images"])
  labels = [int(c) for i in range(len(view)) for c in view.record(i)["instances"]["category_id"]]
  assert sorted(labels) == sorted(cat for _, cat, _ in expected)


# ----------------------------------------------------------------------------- track identity


def _rle(mask):
  return rle_encode(np.asarray(mask, np.uint8))


def test_overlay_videos_prefer_videos_with_a_base_object(tmp_path):
  for name in ("00001", "00002", "00003", "00004"):
    (tmp_path / name).mkdir()
  videos = [{"id": i + 1, "file_names": [f"{name}/00000.jpg"]} for i, name in enumerate(("00001", "00002", "00003", "00004"))]
  # 00001 and 00003 hold novel shapes only (category 5); 00002 and 00004 a base one (category 1).
  annotations = [{"video_id": 1, "category_id": 5}, {"video_id": 2, "category_id": 5}, {"video_id": 2, "category_id": 1},
                 {"video_id": 3, "category_id": 5}, {"video_id": 4, "category_id": 1}]
  truth = {"videos": videos, "annotations": annotations}
  names = lambda paths: [p.name for p in paths]  # noqa: E731
  assert names(quickstart_ov2seg.overlay_videos(truth, tmp_path, {1}, 3)) == ["00002", "00004", "00001"]
  assert names(quickstart_ov2seg.overlay_videos(truth, tmp_path, {1}, 1)) == ["00002"]
  assert names(quickstart_ov2seg.overlay_videos(truth, tmp_path, set(), 2)) == ["00001", "00002"]


def test_track_identity_counts_switches_fragments_and_misses():
  h, w = 8, 8
  a = np.zeros((h, w), bool)
  a[:4, :4] = True
  b = np.zeros((h, w), bool)
  b[4:, 4:] = True
  empty = np.zeros((h, w), bool)
  gt = {"videos": [{"id": 1, "height": h, "width": w}, {"id": 2, "height": h, "width": w}],
        "annotations": [
            {"video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": [_rle(a), _rle(a), None]},
            {"video_id": 1, "category_id": 2, "iscrowd": 0, "segmentations": [_rle(b), _rle(b), _rle(b)]},
            {"video_id": 1, "category_id": 2, "iscrowd": 1, "segmentations": [_rle(b), None, None]},  # crowd: skipped
            {"video_id": 2, "category_id": 1, "iscrowd": 0, "segmentations": [_rle(a), None, None]}]}  # no prediction
  results = [
      # Follows object 1 in its two frames (its absence in frame 2 is not counted): kept.
      {"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [_rle(a), _rle(a), _rle(empty)]},
      # Follows object 2 for two frames, then switches to object 1's place: broken in frame 2.
      {"video_id": 1, "category_id": 2, "score": 0.8, "segmentations": [_rle(b), _rle(b), _rle(a)]},
  ]
  out = quickstart_ov2seg.track_identity(gt, results, 0.5)
  assert out == {"objects": 3, "kept": 1, "consistency": pytest.approx(100 / 3),
                 "frame_fraction": pytest.approx(100 * (1 + 2 / 3 + 0) / 3)}
  only_1 = quickstart_ov2seg.track_identity(gt, results, 0.5, category_ids={1})
  assert (only_1["objects"], only_1["kept"]) == (2, 1)
  fixed = results[:1] + [dict(results[1], segmentations=[_rle(b)] * 3)]
  assert quickstart_ov2seg.track_identity(gt, fixed, 0.5)["kept"] == 2
  assert np.isnan(quickstart_ov2seg.track_identity(gt, results, 0.5, category_ids={7})["consistency"])


# ----------------------------------------------------------------------------- arguments and refusals


def _parse(argv):
  parser = argparse.ArgumentParser()
  quickstart.add_arguments(parser)
  return parser.parse_args(argv)


def test_system_argument_selects_the_defaults():
  args = _parse([])
  assert quickstart.resolve_system(args) == "maskdino"
  assert (args.config, args.workdir) == (quickstart.DEFAULT_CONFIG, quickstart.DEFAULT_WORKDIR)
  for argv in (["ov2seg"], ["--system=ov2seg"], ["ov2seg", "--system", "ov2seg"]):
    args = _parse(argv)
    assert quickstart.resolve_system(args) == "ov2seg"
    assert (args.config, args.workdir) == (quickstart_ov2seg.DEFAULT_CONFIG, quickstart_ov2seg.DEFAULT_WORKDIR)
  args = _parse(["ov2seg", "--config=x.py", "--workdir=/tmp/w"])
  quickstart.resolve_system(args)
  assert (args.config, args.workdir) == ("x.py", "/tmp/w")
  with pytest.raises(UserValueError, match="two systems"):
    quickstart.resolve_system(_parse(["maskdino", "--system=ov2seg"]))
  with pytest.raises(SystemExit):
    _parse(["segnext"])


@pytest.mark.parametrize("system,config", [("ov2seg", "configs/maskdino/quickstart.py:tiny"),
                                           ("maskdino", "configs/ov2seg/quickstart.py:tiny")])
def test_a_config_of_the_other_system_is_refused(tmp_path, system, config):
  args = _parse([system, f"--config={config}", f"--workdir={tmp_path / 'q'}"])
  with pytest.raises(UserValueError, match="not one of the"):
    quickstart.main(args, [])
  assert not (tmp_path / "q").exists()


def test_a_workdir_it_did_not_create_is_refused_and_left_alone(tmp_path):
  workdir = tmp_path / "q"
  (workdir / "data").mkdir(parents=True)
  (workdir / "data" / "precious.txt").write_text("x")
  (workdir / "report.json").write_text("{}")
  proc = subprocess.run(_cmd(workdir, system=("--system=ov2seg",)), cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=180)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"dinoseg quickstart: error: --workdir={workdir} already holds data, report.json, which dinoseg quickstart "
      f"did not create (no {quickstart.WORKDIR_STAMP} there) and would replace; nothing was changed. Choose another "
      "--workdir (e.g. a new directory) or move those entries away"]
  assert (workdir / "data" / "precious.txt").read_text() == "x"
  assert sorted(p.name for p in workdir.iterdir()) == ["data", "report.json"]


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tiny_quickstart_end_to_end(tmp_path):
  from PIL import Image

  from dinoseg.config import load_config
  from dinoseg.data_pipelines import open_dataset
  workdir = tmp_path / "q"
  proc = subprocess.run(_cmd(workdir), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  q = load_config(CONFIG).quickstart
  report = json.loads((workdir / "report.json").read_text())
  assert {"system", "config", "machine", "step", "seconds", "notes", "results", "track_identity", "base_classes",
          "novel_classes", "paths"} <= set(report)
  assert report["system"] == "ov2seg" and report["step"] == 2
  assert set(report["seconds"]) == {"data", "train", "eval", "overlays", "total"}
  assert report["base_classes"] == ["circle", "square", "star"] and report["novel_classes"] == ["triangle", "hexagon"]
  r = report["results"]
  assert r["num_videos"] == q.num_val_videos
  for key in ("AP", "APb", "APn", "AP50", "AR100"):
    assert 0.0 <= r[key] <= 100.0, (key, r[key])
  ident = report["track_identity"]
  assert ident["all"]["objects"] == ident["base"]["objects"] + ident["novel"]["objects"] > 0
  assert 0 <= ident["all"]["kept"] <= ident["all"]["objects"]
  # The GIFs: one per overlay video, animated over all its frames.
  assert len(report["paths"]["gifs"]) == q.num_overlays
  for gif in report["paths"]["gifs"]:
    with Image.open(gif) as image:
      assert image.format == "GIF" and image.n_frames == q.num_frames
  assert len(list((workdir / "overlays" / "00001").glob("*.png"))) == q.num_frames
  results = json.loads((workdir / "eval" / "results.json").read_text())
  assert {res["video_id"] for res in results} == set(range(1, q.num_val_videos + 1))
  # The training frames carry base classes only; the video datasets all classes.
  frames = open_dataset(str(workdir / "data" / "frames")).split("train")
  labels = {int(c) for i in range(len(frames)) for c in frames.record(i)["instances"]["category_id"]}
  assert labels and labels <= {1, 3, 9}
  assert len(frames) == q.num_train_videos * q.num_frames
  out = proc.stdout
  assert "dinoseg quickstart ov2seg: OV2Seg on synthetic videos" in out and "novel APn" in out
  assert "track identity:" in out
