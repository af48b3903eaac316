"""scripts/bench_gpu.py (the one-command GPU benchmark) and scripts/project_scale.py's projection arithmetic."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name: str):
  spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_arguments_are_checked():
  bench_gpu = _load("bench_gpu")
  with pytest.raises(SystemExit):
    bench_gpu.main(["--sections", "env,nonsense"])
  with pytest.raises(SystemExit):
    bench_gpu.main(["--batch", "0"])


def test_a_section_past_its_budget_is_one_line_and_the_others_still_run(tmp_path, capsys):
  bench_gpu = _load("bench_gpu")
  out = tmp_path / "r.json"
  # Budgets far too small for a JAX import: both sections fail, each with one line, and the JSON is written.
  bench_gpu.BUDGETS.update(env=11, msda=10)
  assert bench_gpu.main(["--sections", "env,msda", "--total-budget", "12.5", "--json-out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "env: FAILED, ran past its budget of 11 s" in printed
  assert "msda: FAILED" in printed or "msda: not run" in printed
  results = json.loads(out.read_text())["results"]
  assert set(results) == {"env", "msda"} and all("error" in r for r in results.values())


def test_msda_floor_bytes_counts_each_tensor_once_per_pass():
  bench_kernels = _load("bench_kernels")
  floor = bench_kernels.msda_floor_bytes(batch=2, num_tokens=85, num_queries=10, heads=8, levels=4, points=4,
                                         channels=32)
  value, loc, weights, out = 2 * 85 * 8 * 32, 2 * 10 * 8 * 4 * 4 * 2, 2 * 10 * 8 * 4 * 4, 2 * 10 * 8 * 32
  assert floor["fwd"] == 4 * (value + loc + weights + out)
  assert floor["all"] == floor["fwd"] + 4 * (2 * value + 2 * loc + 2 * weights + out)


def test_reports_of_each_section():
  bench_gpu = _load("bench_gpu")
  row = {"side": "decoder", "queries": 400, "name": "dinoseg XLA", "fwd_s": 2e-3, "all_s": 5e-3, "floor_fwd_s": 1e-3,
         "floor_all_s": 2e-3, "cost_bytes_all": 3e7, "scratch_mib": "2"}
  text = bench_gpu.report("msda", {"rows": [row], "bandwidth": 3.35e12, "bandwidth_source": "data-sheet peak",
                                   "image_size": 1024, "batch": 2})
  assert "| decoder | 400 | dinoseg XLA | 2.00 | 5.00 | 1.00 | 2.00 | 2.5x | 30 | 2 |" in text
  segnext = {"model": "ViT-B sax2 at 1024", "image_hw": [480, 854], "reference_skipped": "no checkout",
             "dinoseg": {"device": "cuda:0", "embed_ms": 20.0, "click_ms": 12.5, "sat_serial_ms": 300.0,
                         "sat_batched_ms": 100.0}}
  text = bench_gpu.report("segnext", segnext)
  assert "per-click goal (<= 10 ms): not met (12.50 ms)" in text and "reference: no checkout" in text
  text = bench_gpu.report("maskdino", {"size": 1024, "batch": 8, "compute_dtype": "bfloat16", "train_s": 0.5,
                                       "train_first_s": 80.0, "device_peak_mb": 2048.0, "train_rss_mb": 3000.0})
  assert "500.0 ms/step" in text and "16.00 images/s" in text and "peak device memory 2.00 GiB" in text


def test_projection_arithmetic():
  project_scale = _load("project_scale")
  gb = 1e9
  row = {"mode": "fsdp", "size": 512, "per_device_batch": 1, "flops": 1e12, "bytes_accessed": 1e11,
         "temp_bytes": 2 * gb, "argument_bytes": 1.5 * gb, "output_bytes": 1 * gb, "alias_bytes": 1 * gb,
         "state_bytes_per_device": 1 * gb, "state_bytes_total": 8 * gb, "num_params": 10 ** 8}
  out = {p["hardware"]: p for p in project_scale.project([row], 1024)}
  h100 = out["8 x H100 SXM"]
  assert h100["extrapolated"] and h100["tflops_per_device"] == pytest.approx(4.0)
  assert h100["compute_ms"] == pytest.approx(4e12 / 989e12 * 1e3)
  assert h100["hbm_ms"] == pytest.approx(4e11 / 3.35e12 * 1e3)
  assert h100["comm_ms"] == pytest.approx(3 * 7 / 8 * 4e8 / 450e9 * 1e3)
  # state 8 GB / 8 devices + batch args 0.5 GB x 4 + output - alias + temp 2 GB x 4
  assert h100["memory_gb"] == pytest.approx(1 + 2 + 0 + 8)
  assert out["TPU v5p-64 (32 chips)"]["memory_gb"] == pytest.approx(8 / 32 + 2 + 8)


@pytest.mark.slow
def test_smoke_runs_every_section_on_cpu(tmp_path):
  out = tmp_path / "smoke.json"
  proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--smoke", "--json-out", str(out)],
                        capture_output=True, text=True, timeout=2400, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())["results"]
  failed = {name: r["error"] for name, r in results.items() if "error" in r}
  assert not failed, failed
  assert results["maskdino"]["train_s"] > 0 and results["segnext"]["dinoseg"]["click_ms"] > 0
  assert {r["name"] for r in results["msda"]["rows"]} >= {"dinoseg XLA", "dinoseg Pallas (interpret)",
                                                           "PyTorch grid_sample"}
  assert "## backbones" in proc.stdout and "| dinov2_vitb14_reg 112px |" in proc.stdout
