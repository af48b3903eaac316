"""scripts/bench_dinov.py: the reference spec of the released config, the bank examples, the argument checks, and a
smoke run (tiny sizes) beside the reference (skipped without torch or the DINOv / MaskDINO / detectron2 checkouts)."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DINOV = pathlib.Path(os.environ.get("DINOV_REFERENCE", "/tmp/ref_dinov"))
MASKDINO = pathlib.Path(os.environ.get("MASKDINO_REFERENCE", "/tmp/ref_maskdino"))
DETECTRON2 = pathlib.Path(os.environ.get("DETECTRON2_REFERENCE", "/tmp/ref_detectron2"))


def _load():
  spec = importlib.util.spec_from_file_location("bench_dinov", ROOT / "scripts" / "bench_dinov.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_reference_spec_of_the_released_swint_config():
  bench = _load()
  args = bench.build_parser().parse_args([])
  spec = bench.reference_spec(bench.load_dinov_config(args), 0, "/tmp/bank")
  assert spec["swin"] == dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)
  assert spec["channels"] == dict(res2=96, res3=192, res4=384, res5=768)
  assert (spec["num_queries"], spec["dec_layers"], spec["enc_layers"], spec["hidden_dim"], spec["dim_proj"]) == (
      300, 9, 6, 256, 512)
  assert spec["encoder_in"] == ["res3", "res4", "res5"] and spec["total_levels"] == 4


def test_bank_examples():
  bench = _load()
  examples = bench.bank_examples(2, 3, 5, (40, 50), seed=0)
  assert len(examples) == 2
  for image, masks, cats in examples:
    assert image.shape == (40, 50, 3) and image.dtype == np.uint8
    assert masks.shape == (3, 40, 50) and masks.dtype == bool and masks.reshape(3, -1).any(1).all()
    assert cats.shape == (3,) and cats.min() >= 1 and cats.max() <= 5


def test_arguments_are_checked(tmp_path):
  bench = _load()
  for argv in (["--sections", "generic,nonsense"], ["--size", "1000"], ["--categories", "0"],
               ["--dinov", str(tmp_path)]):
    with pytest.raises(SystemExit):
      bench.main(argv)


def test_reports_show_ratios_and_parity():
  bench = _load()
  args = bench.build_parser().parse_args([])
  rows = {"dinoseg": dict(median_s=20.0, first_s=90.0, rss_mb=3000, process_rss_mb=4000, predict_s=25.0,
                          predict_first_s=100.0, predict_rss_mb=3500),
          "reference": dict(median_s=30.0, first_s=31.0, rss_mb=2000, process_rss_mb=2500)}
  text = bench.generic_report(rows, {"logits": 1e-6, "boxes": 2e-7, "masks": 3e-6}, args)
  assert "| reference / dinoseg (forward) | 1.50x |" in text
  assert "1024x1024 image, 80 prompt categories" in text and "logits 1.0e-06, boxes 2.0e-07, masks 3.0e-06" in text
  bank = {"reference": dict(instances=24, second_s=12.0, first_s=13.0, rss_mb=2000, canvas=[800, 1088]),
          "dinoseg": dict(same_s=6.0, same_first_s=60.0, same_rss_mb=2500, default_s=24.0, default_first_s=90.0,
                          default_rss_mb=3000, default_instances=24, default_canvas=[1344, 1344])}
  text = bench.bank_report(bank, {"embeddings": 5e-7}, args)
  assert "| reference `get_content` + one safetensors file per instance | 800x1088 | 12.00 | 2.00 | 13.0 | 2000 |" in text
  assert "| dinoseg `PromptBankEncoder`, same canvas | 800x1088 | 6.00 | 4.00 |" in text
  assert "| 1344x1344 | 24.00 | 1.00 |" in text and "| reference / dinoseg, same canvas | | 2.00x |" in text


@pytest.mark.slow
def test_smoke_beside_the_reference(tmp_path):
  """Every section at tiny sizes beside the reference (50 s to 3 min on the shared 2-core machine: four compilations
  of the model)."""
  pytest.importorskip("torch")
  pytest.importorskip("safetensors")
  for path, marker in ((DINOV, "dinov/body"), (MASKDINO, "maskdino/modeling"), (DETECTRON2, "detectron2/modeling")):
    if not (path / marker).is_dir():
      pytest.skip(f"no checkout at {path} (set DINOV_REFERENCE / MASKDINO_REFERENCE / DETECTRON2_REFERENCE)")
  out = tmp_path / "bench.json"
  proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_dinov.py"), "--smoke", f"--dinov={DINOV}",
                         f"--maskdino={MASKDINO}", f"--detectron2={DETECTRON2}", f"--json={out}"],
                        capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = json.loads(out.read_text())
  parity = report["generic"]["parity"]
  assert set(parity) == {"logits", "boxes", "masks"} and max(parity.values()) < 1e-4, parity
  assert report["bank"]["checks"]["embeddings"] < 1e-4, report["bank"]["checks"]
  bank = report["bank"]["rows"]
  assert bank["reference"]["instances"] == 4 and bank["dinoseg"]["default_instances"] == 4
  assert "| reference / dinoseg (forward) |" in proc.stdout and "instances / s" in proc.stdout
