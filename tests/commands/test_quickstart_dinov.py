"""`dinoseg quickstart dinov`: synthetic shapes -> the small DINOv trained through the shared trainer -> a prompt
bank of training instances -> mask AP on held-out images, J&F on synthetic DAVIS-layout videos -> overlays.

Fast: the DAVIS-layout video writer (read back by the DAVIS reader, every object counted) and its reuse, the VOS
strip, the printed report, the SYSTEM argument, the refusal of a config of another system, of a bad setting and of a
workdir the quickstart did not create (exit 2, through the real CLI). Slow: the `:tiny` variant end to end with a
resumed second run (minutes: compiling DINOv's two-task train step dominates), and the default job, which must
reach the issue's targets (mask AP >= 40 with visual prompts, J&F >= 60)."""
import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dinoseg.commands import quickstart, quickstart_dinov
from dinoseg.errors import UserValueError

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = "configs/dinov/quickstart.py:tiny"
PHASES = {"data", "train", "eval", "vos", "overlays", "total"}


def _env() -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             JAX_THREEFRY_PARTITIONABLE="false")
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def _cmd(workdir, *extra, system=("dinov",), config=CONFIG):
  return [sys.executable, "-m", "dinoseg.cli", "quickstart", *system, f"--config={config}", f"--workdir={workdir}",
          "--config.train.progress=false", *extra]


# ----------------------------------------------------------------------------- videos


def test_davis_videos_are_read_back_with_every_object(tmp_path):
  from PIL import Image

  from dinoseg.evaluation import davis
  root = tmp_path / "davis"
  summary = quickstart_dinov.write_davis_videos(root, num_videos=6, num_frames=5, size=48, max_objects=3, seed=2)
  assert davis.is_davis_root(root)
  assert davis.davis_sequences(root, "val") == summary["videos"] == [f"shapes{v:02d}" for v in range(6)]
  objects = late = 0
  for name in summary["videos"]:
    with Image.open(root / "Annotations" / "480p" / name / "00000.png") as png:
      assert png.mode == "P"
    seq = davis.read_davis_sequence(root, name)
    assert seq.frames.shape == (5, 48, 48, 3) and seq.frames.dtype == np.uint8
    ids = np.asarray(seq.object_ids)
    # Every object written is scored: the ids are 1..n and frame 0 holds the largest one.
    everything = davis.read_davis_sequence(root, name, all_objects=True)
    assert ids.tolist() == everything.object_ids.tolist() == list(range(1, len(ids) + 1))
    present = seq.masks.reshape(len(ids), 5, -1).any(-1)  # (O, T)
    assert present.any(1).all() and present[-1, 0]
    starts = np.argmax(present, 1)
    assert (np.diff(starts == 0) >= 0).all()  # the later entries first, the frame-0 objects last
    assert not (seq.masks.sum(0) > 1).any()  # visible parts: disjoint
    objects += len(ids)
    late += int((starts > 0).sum())
  assert (summary["objects"], summary["objects_after_first_frame"]) == (objects, late)
  assert late > 0  # the protocol's late-object path is exercised
  # Deterministic: the same settings write the same files.
  again = quickstart_dinov.write_davis_videos(tmp_path / "again", num_videos=6, num_frames=5, size=48, max_objects=3,
                                              seed=2)
  assert again == summary
  first = root / "Annotations" / "480p" / "shapes03" / "00002.png"
  assert first.read_bytes() == (tmp_path / "again" / first.relative_to(root)).read_bytes()
  with pytest.raises(UserValueError, match="num_frames must be >= 3"):
    quickstart_dinov.write_davis_videos(tmp_path / "short", num_videos=1, num_frames=2, size=48, max_objects=2, seed=0)


def test_videos_are_reused_only_with_the_same_settings(tmp_path):
  from dinoseg.config import load_config
  config = load_config(CONFIG)
  first = quickstart_dinov.make_videos(config, tmp_path)
  assert not first["reused"] and len(first["videos"]) == config.quickstart.num_videos
  marker = tmp_path / "raw" / "davis" / "JPEGImages" / "480p" / "shapes00" / "00000.jpg"
  stamp = marker.stat().st_mtime_ns
  again = quickstart_dinov.make_videos(config, tmp_path)
  assert again["reused"] and again["videos"] == first["videos"] and marker.stat().st_mtime_ns == stamp
  other = load_config(CONFIG, ["quickstart.num_videos=3", "quickstart.num_frames=4"])
  rebuilt = quickstart_dinov.make_videos(other, tmp_path)
  assert not rebuilt["reused"] and len(rebuilt["videos"]) == 3
  assert len(list((tmp_path / "raw" / "davis" / "JPEGImages" / "480p" / "shapes00").glob("*.jpg"))) == 4


def test_vos_strip_shows_ground_truth_over_prediction(tmp_path):
  from PIL import Image

  from dinoseg.evaluation import davis
  root = tmp_path / "davis"
  summary = quickstart_dinov.write_davis_videos(root, num_videos=1, num_frames=4, size=40, max_objects=2, seed=1)
  name = summary["videos"][0]
  seq = davis.read_davis_sequence(root, name)
  pred = np.zeros_like(seq.masks)
  pred[:, 1:] = seq.masks[:, 1:]  # nothing on frame 0, the ground truth after it
  (tmp_path / "vos").mkdir()
  np.savez_compressed(tmp_path / "vos" / f"{name}.npz", masks=pred)
  (path,) = quickstart_dinov.write_vos_strips(root, tmp_path / "vos", [name], tmp_path / "out")
  assert path == tmp_path / "out" / f"vos_{name}.png"
  with Image.open(path) as im:
    strip = np.asarray(im.convert("RGB")).astype(int)
  assert strip.shape == (80, 160, 3)
  frame0 = seq.frames[0].astype(int)
  # Frame 0: the prediction row is the bare frame, the ground-truth row is drawn over.
  assert np.abs(strip[40:, :40] - frame0).max() == 0
  assert np.abs(strip[:40, :40] - frame0).max() > 0
  # Frame 2 (away from the labels' corner): prediction = ground truth, drawn identically inside the masks.
  inside = seq.masks[:, 2].any(0)
  np.testing.assert_array_equal(strip[:40, 80:120][inside], strip[40:, 80:120][inside])


def test_report_lines():
  report = {"config": "c.py", "machine": "m", "step": 7, "seconds": {"data": 1.0, "total": 2.0},
            "notes": {"data": "x"}, "results": {"segm/AP": 41.25, "segm/AP50": 60.0, "segm/AP75": float("nan"),
                                                "bbox/AP": 30.0, "num_images": 64, "num_examples": 16, "seed": 0},
            "vos": {"J&F-Mean": 0.625, "J-Mean": 0.7, "F-Mean": 0.55, "num_videos": 8, "num_objects": 20,
                    "objects_after_first_frame": 5},
            "paths": {k: f"/w/{k}" for k in ("data", "videos", "train", "bank", "eval", "overlays", "report")}}
  lines = quickstart_dinov.report_lines(report)
  assert lines[0] == "dinoseg quickstart dinov: DINOv on synthetic shapes (c.py), m"
  text = "\n".join(lines)
  assert "mask AP 41.2 (AP50 60.0, AP75 nan), box AP 30.0 on 64 held-out images" in text
  assert "VOS J&F 62.5 (J 70.0, F 55.0) on 8 synthetic videos, 20 objects (5 entering after frame 0)" in text
  assert lines[-1] == "  report:   /w/report"


def test_mixed_iterator_survives_grains_checkpoint_restore(tmp_path):
  """Resuming a DINOv run restores the two-source iterator through grain's checkpoint handler, which calls
  `start_prefetch` after `set_state` (a resumed quickstart failed on it)."""
  from grain._src.python.checkpoint import handler as grain_handler

  from dinoseg.models.dinov.task import MixedIterator

  class Source:
    def __init__(self):
      self.position, self.prefetching = 0, False

    def __next__(self):
      self.position += 1
      return {"x": np.asarray([self.position])}

    def get_state(self):
      return json.dumps({"position": self.position}).encode()

    def set_state(self, state):
      self.position = json.loads(state)["position"]

    def start_prefetch(self):
      self.prefetching = True

  class Plain(Source):
    start_prefetch = None  # a source without prefetch

  it = MixedIterator({"coco": Source(), "sam": Plain()})
  next(it), next(it)
  h = grain_handler.CheckpointHandler()
  h.save(tmp_path, item=it)
  fresh = MixedIterator({"coco": Source(), "sam": Plain()})
  h.restore(tmp_path, item=fresh)
  assert fresh.iterators["coco"].prefetching
  assert {k: int(v[0]) for k, v in next(fresh).items()} == {"coco.x": 3, "sam.x": 3}


# ----------------------------------------------------------------------------- arguments and refusals


def _parse(argv):
  parser = argparse.ArgumentParser()
  quickstart.add_arguments(parser)
  return parser.parse_args(argv)


def test_system_argument_selects_the_dinov_defaults():
  for argv in (["dinov"], ["--system=dinov"], ["dinov", "--system", "dinov"]):
    args = _parse(argv)
    assert quickstart.resolve_system(args) == "dinov"
    assert (args.config, args.workdir) == (quickstart_dinov.DEFAULT_CONFIG, quickstart_dinov.DEFAULT_WORKDIR)
  assert quickstart_dinov.DEFAULT_CONFIG == "configs/dinov/quickstart.py"
  with pytest.raises(UserValueError, match="two systems"):
    quickstart.resolve_system(_parse(["dinov", "--system=ov2seg"]))


@pytest.mark.parametrize("system,config,hint", [
    ("dinov", "configs/maskdino/quickstart.py:tiny", "dinoseg quickstart maskdino"),
    ("dinov", "configs/ov2seg/quickstart.py:tiny", "dinoseg quickstart ov2seg"),
    ("maskdino", CONFIG, "dinoseg quickstart dinov"),
    ("ov2seg", CONFIG, "dinoseg quickstart dinov")])
def test_a_config_of_another_system_is_refused(tmp_path, system, config, hint):
  args = _parse([system, f"--config={config}", f"--workdir={tmp_path / 'q'}"])
  with pytest.raises(UserValueError, match="not one of the") as info:
    quickstart.main(args, [])
  assert hint in str(info.value)
  assert not (tmp_path / "q").exists()


def test_a_workdir_it_did_not_create_is_refused_and_left_alone(tmp_path):
  workdir = tmp_path / "q"
  (workdir / "raw").mkdir(parents=True)
  (workdir / "raw" / "precious.txt").write_text("x")
  (workdir / "eval").mkdir()
  proc = subprocess.run(_cmd(workdir, "--fresh", system=("--system=dinov",)), cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=180)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"dinoseg quickstart: error: --workdir={workdir} already holds raw, eval, which dinoseg quickstart did not "
      f"create (no {quickstart.WORKDIR_STAMP} there) and would replace; nothing was changed. Choose another "
      "--workdir (e.g. a new directory) or move those entries away"]
  assert (workdir / "raw" / "precious.txt").read_text() == "x"
  assert sorted(p.name for p in workdir.iterdir()) == ["eval", "raw"]


def test_a_bad_config_value_is_one_line_and_exit_2(tmp_path):
  proc = subprocess.run(_cmd(tmp_path / "q", "--config.quickstart.num_frames=2"), cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=180)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert lines == [
      "dinoseg quickstart: error: quickstart.py: quickstart.num_frames must be >= 3 (DAVIS scores neither the first "
      "nor the last frame), got 2"], proc.stderr[-2000:]
  assert not (tmp_path / "q").exists()


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tiny_quickstart_end_to_end_and_resume(tmp_path):
  """About 12 minutes on 2 busy CPU cores (load 5), most of it compiling the two-task train step (4-6 min),
  then the bank encoder, the eval, VOS and predictor programs; the resumed run reads them from the cache."""
  from PIL import Image

  from dinoseg.config import load_config
  workdir = tmp_path / "q"
  proc = subprocess.run(_cmd(workdir), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  config = load_config(CONFIG)
  q = config.quickstart
  report = json.loads((workdir / "report.json").read_text())
  assert {"system", "config", "machine", "step", "seconds", "notes", "results", "vos", "bank", "paths"} <= set(report)
  assert report["system"] == "dinov" and report["step"] == config.train.num_steps
  assert set(report["seconds"]) == PHASES
  r = report["results"]
  assert r["num_images"] == q.num_val_images and r["num_examples"] == config.evaluation.num_examples
  for key in ("segm/AP", "segm/AP50", "bbox/AP"):  # a NaN (no detections at all) is written as null
    assert r[key] is None or 0.0 <= r[key] <= 100.0, (key, r[key])
  v = report["vos"]
  assert v["num_videos"] == q.num_videos and v["num_objects"] > 0
  assert 0.0 <= v["J&F-Mean"] <= 1.0
  # The bank holds training instances only, under the shapes' category names.
  bank_index = json.loads((workdir / "eval" / "bank" / "index.json").read_text())
  assert bank_index["source"].endswith(":train")
  names = {c["name"] for c in bank_index["categories"]}
  assert names <= {"circle", "square", "triangle", "hexagon", "star"}
  assert sum(c["count"] for c in bank_index["categories"]) == sum(report["bank"]["instances"].values()) > 0
  assert report["bank"]["images"] == q.num_train_images
  # Eval files, VOS predictions, overlays.
  saved = json.loads((workdir / "eval" / f"step_{report['step']}.json").read_text())
  assert saved["results"]["segm/AP"] == r["segm/AP"] and "vos" in saved
  assert (workdir / "eval" / "results.json").is_file()
  for name in quickstart_dinov.make_videos(config, workdir)["videos"]:
    masks = np.load(workdir / "eval" / "vos" / f"{name}.npz")["masks"]
    assert masks.shape[1:] == (q.num_frames, q.video_size, q.video_size)
  overlays = sorted(p.name for p in (workdir / "overlays").iterdir())
  val_images = sorted(p.name for p in (workdir / "raw" / "val2017").glob("*.jpg"))[:q.num_overlays]
  assert overlays == sorted([f"{n}.png" for n in val_images] + ["predictions.json"]
                            + [f"vos_shapes{v:02d}.png" for v in range(q.num_vos_overlays)])
  with Image.open(workdir / "overlays" / "vos_shapes00.png") as strip:
    assert strip.size == (q.video_size * q.num_frames, 2 * q.video_size)
  out = proc.stdout
  assert "dinoseg quickstart dinov: DINOv on synthetic shapes" in out and "mask AP" in out and "VOS J&F" in out

  # Again: the data and videos are reused, training resumes at its last step, the evaluation is redone.
  proc = subprocess.run(_cmd(workdir), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  again = json.loads((workdir / "report.json").read_text())
  assert again["step"] == report["step"] and "(reused)" in again["notes"]["data"]
  assert again["results"]["segm/AP"] == r["segm/AP"]
  assert again["vos"]["J&F-Mean"] == pytest.approx(v["J&F-Mean"])


@pytest.mark.slow
def test_default_quickstart_reaches_the_targets(tmp_path):
  """The issue's targets on the default config: mask AP >= 40 with visual prompts, J&F >= 60 (minutes)."""
  workdir = tmp_path / "q"
  proc = subprocess.run(_cmd(workdir, config=quickstart_dinov.DEFAULT_CONFIG), cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=3600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = json.loads((workdir / "report.json").read_text())
  assert report["results"]["segm/AP"] >= 40.0, report["results"]
  assert 100 * report["vos"]["J&F-Mean"] >= 60.0, report["vos"]
