"""Run logs are strict JSON: an undefined (NaN / inf) metric is written as null, never as a bare NaN."""
import json
import math

import numpy as np

from dinoseg.train.metrics import MetricWriter, read_jsonl


def test_nan_metrics_are_written_as_null(tmp_path):
  writer = MetricWriter(tmp_path, num_steps=2, progress=False)
  writer.write_rows([{"step": 1, "loss": np.float32("nan"), "grad_norm": math.inf, "learning_rate": 0.5}])
  writer.write_scalars(2, {"mIoU": float("nan"), "per_class": np.array([1.0, np.nan])}, prefix="eval/")
  writer.write_json("eval/step_2.json", {"step": 2, "results": {"AP": np.float64("nan"), "APs": [np.nan, 2.0]}})
  writer.close()
  for name in ("metrics.jsonl", "eval/step_2.json"):
    text = (tmp_path / name).read_text()
    assert "NaN" not in text and "Infinity" not in text, text
  assert read_jsonl(tmp_path / "metrics.jsonl") == [
      {"step": 1, "loss": None, "grad_norm": None, "learning_rate": 0.5}, {"step": 2, "eval/mIoU": None}]
  assert json.loads((tmp_path / "eval/step_2.json").read_text()) == {"step": 2, "results": {"AP": None, "APs": [None, 2.0]}}
