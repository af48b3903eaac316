"""scripts/bench_ov2seg.py: its synthetic video, the track recovery, the argument checks, and a smoke run (tiny
sizes) beside the reference (skipped without torch or the LV-VIS checkout)."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LVVIS = pathlib.Path(os.environ.get("OV2SEG_REFERENCE", "/tmp/ref_lvvis"))


def _load():
  spec = importlib.util.spec_from_file_location("bench_ov2seg", ROOT / "scripts" / "bench_ov2seg.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _needs_reference():
  pytest.importorskip("torch")
  pytest.importorskip("scipy")
  if not (LVVIS / "ov2seg").is_dir():
    pytest.skip(f"no LV-VIS checkout at {LVVIS} (set OV2SEG_REFERENCE)")


def test_synthetic_video_and_track_recovery():
  bench = _load()
  t, q, c = 5, 6, 3
  data = bench.synthetic_video_outputs(t, q, c, 8, (4, 5), seed=1)
  assert data["embeddings"].shape == (t, q, 8) and data["logits"].shape == (t, q, c + 1)
  assert data["objectness"].shape == (t, q, 2) and data["masks"].shape == (t, q, 4, 5)
  perm = data["perm"]
  np.testing.assert_array_equal(perm[0], np.arange(q))
  assert all(sorted(row) == list(range(q)) for row in perm)
  assert not all(np.array_equal(row, np.arange(q)) for row in perm[1:])  # the queries are shuffled
  # aligned (track-major) logits: track j of frame f is the frame's query perm[f, j]
  aligned = np.stack([data["logits"][f, perm[f]] for f in range(t)], axis=1)
  np.testing.assert_array_equal(bench.recover_perm(aligned, data["logits"]), perm)
  aligned[1, 2] = aligned[0, 2]  # two tracks on one query: not a permutation
  with pytest.raises(RuntimeError, match="frame 2"):
    bench.recover_perm(aligned, data["logits"])


def test_dinoseg_association_recovers_the_generated_tracks():
  import jax

  from dinoseg.models.ov2seg import video
  bench = _load()
  data = bench.synthetic_video_outputs(12, 8, 3, 16, (2, 2), seed=2)
  assoc = jax.jit(video.associate)(data["embeddings"], data["logits"], data["objectness"])
  np.testing.assert_array_equal(np.asarray(assoc.perm), data["perm"])


def test_arguments_are_checked(tmp_path):
  bench = _load()
  for argv in (["--sections", "frame,nonsense"], ["--size", "480"], ["--frames", "1"], ["--memory-frames", "0"],
               ["--lvvis", str(tmp_path), "--sections", "frame"]):
    with pytest.raises(SystemExit):
      bench.main(argv)
  assert bench.padded((480, 854)) == (480, 864)


def test_reports_show_ratios_and_checks():
  bench = _load()
  args = bench.build_parser().parse_args([])
  frame = {"dinoseg": dict(median_s=1.0, first_s=30.0, rss_mb=900, process_rss_mb=1200),
           "reference": dict(median_s=2.5, first_s=3.0, rss_mb=800, process_rss_mb=1000)}
  text = bench.frame_report(frame, {"logits": 1e-6, "masks": 2e-6}, args)
  assert "| dinoseg (jit; first call = compile + run) | 1000.0 | 30.0 | 900 | 1200 |" in text
  assert "| reference / dinoseg | 2.50x |" in text and "logits 1.0e-06, masks 2.0e-06" in text
  memory = [dict(frames=100, size=[240, 427], predict_s=50.0, write_s=5.0, start_rss_mb=1000, predict_peak_mb=1500,
                 peak_mb=1600, rss_by_quarter_mb=[1500, 1550, 1580, 1600], config="c", window=10),
            dict(frames=500, size=[240, 427], predict_s=250.0, write_s=25.0, start_rss_mb=1000, predict_peak_mb=1510,
                 peak_mb=1616, rss_by_quarter_mb=[1500, 1550, 1580, 1616], config="c", window=10)]
  text = bench.memory_report(memory)
  assert "| 500 | 250.0 | 2.00 | 25.0 | 1000 | 1510 | 1616 | 1500 / 1550 / 1580 / 1616 |" in text
  assert "peak RSS 500 frames / 100 frames: 1.010x (+16 MiB for 400 more frames)" in text


def _smoke(tmp_path, sections):
  out = tmp_path / "bench.json"
  proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_ov2seg.py"), "--smoke", f"--lvvis={LVVIS}",
                         f"--sections={sections}", f"--json={out}"], capture_output=True, text=True, timeout=900,
                        cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_smoke_association_beside_the_reference(tmp_path):
  """The association section at tiny sizes (no model to compile): the reference's host loop and dinoseg's
  on-device association find the same tracks, the generated ones."""
  _needs_reference()
  report, printed = _smoke(tmp_path, "association")
  checks = report["association"]["checks"]
  assert checks["perm_equal"] and checks["generated_equal"] and checks["stream_perm_equal"], checks
  assert checks["labels_equal"] and checks["score_max_diff"] < 1e-5 and checks["stream_score_max_diff"] < 1e-5
  assert "tracks (6 x 10 assignments) identical on both sides and equal to the generated ones" in printed
  rows = report["association"]["rows"]
  assert all(rows[side][k] > 0 for side in ("dinoseg", "reference") for k in ("associate_s", "full_s"))


@pytest.mark.slow
def test_smoke_frame_beside_the_reference(tmp_path):
  """The per-frame section at tiny sizes: the same weights through the converter give the reference's
  predictions (20-40 s on the shared 2-core machine, most of it compiling the model)."""
  _needs_reference()
  report, printed = _smoke(tmp_path, "frame")
  parity = report["frame"]["parity"]
  assert set(parity) == {"logits", "objectness", "masks", "embeddings"}
  assert max(parity.values()) < 1e-4, parity
  assert "| reference / dinoseg |" in printed


@pytest.mark.slow
def test_smoke_memory(tmp_path):
  pytest.importorskip("PIL")
  report, printed = _smoke(tmp_path, "memory")
  rows = report["memory"]
  assert [r["frames"] for r in rows] == [3, 5]
  assert all(r["peak_mb"] > 0 and r["predict_s"] > 0 for r in rows)
  assert "peak RSS 5 frames / 3 frames" in printed
