"""scripts/bench_predict.py: its images, the reference's resize against the predictor's, the compile counter,
the table, the argument checks, and (slow) a dinoseg-only run of the tiny Mask DINO config."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load():
  spec = importlib.util.spec_from_file_location("bench_predict", ROOT / "scripts" / "bench_predict.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_images_cycle_the_coco_sizes_scaled_and_are_deterministic(tmp_path):
  from PIL import Image
  bench = _load()
  sizes = bench.image_sizes(12, 0.5)
  assert sizes[:3] == [(240, 320), (214, 320), (320, 240)]
  assert sizes[10] == sizes[0] and sizes[11] == sizes[1] and len(set(sizes)) == 10
  paths = bench.write_images(tmp_path, 3, 0.25, seed=3)
  for path, hw in zip(paths, bench.image_sizes(3, 0.25)):
    with Image.open(path) as im:
      assert im.format == "JPEG" and (im.height, im.width) == hw
  a, b = bench.synthetic_image((60, 80), 7), bench.synthetic_image((60, 80), 7)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (60, 80, 3) and a.dtype == np.uint8 and a.std() > 10  # not a flat image
  assert not np.array_equal(a, bench.synthetic_image((60, 80), 8))


def test_reference_resize_matches_the_predictor_and_buckets_are_shared():
  from dinoseg.predict import resize_shortest_edge
  bench = _load()
  buckets = set()
  for scale, short, max_size in ((1.0, 800, 1333), (0.5, 400, 667), (0.37, 296, 493)):
    for h, w in bench.image_sizes(10, scale):
      nh, nw = bench.reference_output_shape(h, w, short, max_size)
      assert (nh, nw) == resize_shortest_edge(h, w, short, max_size), (h, w, scale)
      if scale == 1.0:
        buckets.add((-(-nh // 32) * 32, -(-nw // 32) * 32))
  assert bench.reference_output_shape(480, 640, 800, 1333) == (800, 1067)
  assert bench.reference_output_shape(333, 500, 800, 1333) == (800, 1201)
  # 10 COCO sizes, 6 padded input buckets (3:4 and 4:3 share theirs, 427/424/333 x 640/500 share one).
  assert buckets == {(800, 1088), (1088, 800), (800, 1216), (1216, 800), (800, 800), (1024, 800)}


def test_compile_counter_counts_one_compile_per_shape():
  import jax
  import jax.numpy as jnp
  bench = _load()
  counter = bench.CompileCounter()
  x3, x4 = np.ones(3, np.float32), np.ones(4, np.float32)
  jnp.asarray(x3), jnp.asarray(x4)  # any setup compiles happen before the pass

  def forward(x):
    return x * 2 + 1

  f = jax.jit(forward)
  counter.phase = "pass1"
  f(x3), f(x3), f(x4)
  counter.phase = "pass2"
  f(x3), f(x4)
  assert counter.count("pass1", "forward") == 2 and counter.names("pass1").get("forward") == 2
  assert counter.count("pass2") == 0 and counter.count("pass1", "run") == 0
  assert counter.seconds("pass1") > 0


def test_table_and_score_check():
  bench = _load()
  ours = {"side": "dinoseg", "pass1_s": [10.0, 1.0, 1.0, 0.5], "pass2_s": [1.0, 1.0, 1.0, 1.0],
          "forward_programs": {"32x64": 1, "64x32": 1}, "postprocess_programs": {"a": 1, "b": 1, "c": 1},
          "loop_rss_mb": 700.4, "process_rss_mb": 900.6, "scores": [[0.9, 0.5], [0.3]]}
  ref = {"side": "reference", "pass1_s": [2.0, 2.0, 2.0, 2.0], "pass2_s": [2.0, 2.0, 2.0, 2.0],
         "loop_rss_mb": 500, "process_rss_mb": 600, "scores": [[0.9, 0.4], [0.31], [0.2]]}
  s = bench.summarize(ours)
  assert s["images"] == 4 and s["end_to_end_ips"] == pytest.approx(4 / 12.5) and s["steady_ips"] == 1.0
  assert s["first_image_s"] == 10.0
  text = bench.table([ours, ref])
  assert "| 4 | 0.320 | 1.000 | 10.0 | 2 / 3 | 700 / 901 |" in text
  assert "| 0.64x | 2.00x |" in text and "none (eager)" in text
  np.testing.assert_allclose(bench.score_differences(ours, ref, 2), [0.1, 0.01], atol=1e-9)


@pytest.mark.parametrize("argv, message", [(["--num-images", "0"], "--num-images"),
                                           (["--size-scale", "0"], "--size-scale"),
                                           (["--threads", "-1"], "--threads")])
def test_arguments_are_checked(argv, message, capsys):
  bench = _load()
  with pytest.raises(SystemExit) as e:
    bench.main(argv + ["--no-reference"])
  assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_dinoseg_only_run_compiles_once_per_padded_bucket(tmp_path):
  """The tiny config at 1/8 of the COCO sizes (test resize 256/512 x 1/8 = 32/64): 3 images, 2 padded buckets."""
  out = tmp_path / "bench.json"
  cmd = [sys.executable, str(ROOT / "scripts" / "bench_predict.py"), "--no-reference", "--num-images", "3",
         "--size-scale", "0.125", "--config", "configs/maskdino/coco_instance_r50_3s_d1_2048.py:tiny",
         "--config.test.min_size=256", "--config.test.max_size=512", "--json", str(out)]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "compiled nothing: yes" in proc.stdout and "| dinoseg" in proc.stdout
  row = json.loads(out.read_text())["rows"][0]
  assert row["images_per_bucket"] == {"32x64": 2, "64x32": 1}
  assert row["forward_programs"] == {"32x64": 1, "64x32": 1}
  assert row["compiles"]["pass1"]["forward"] == 2 and row["compiles"]["pass2"]["all"] == 0
  assert len(row["pass1_s"]) == len(row["pass2_s"]) == 3 and row["once_per_bucket"]
