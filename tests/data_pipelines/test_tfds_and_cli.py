"""TFDS builder output read back with tfds.data_source; the `dinoseg data` command."""
import json

import numpy as np
import pytest

from dinoseg import cli
from dinoseg.data_pipelines import dataset as dataset_lib


def test_tfds_builder_reads_back_with_data_source(datasets, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from dinoseg.data_pipelines import tfds_builders  # noqa: PLC0415
  raw = datasets.raw("coco")
  builder = tfds_builders.prepare_tfds("coco_instances", str(raw), str(tmp_path), splits=["val"])
  expected = datasets.summaries["coco"]["expected_issues"]["val"]
  assert builder.issues["val"]["counts"]["dropped_annotations"] == expected["dropped_annotations"]
  assert builder.issues["val"]["counts"]["skipped_examples"] == expected["skipped_examples"]
  assert builder.info.metadata["categories"] == dataset_lib.open_dataset(datasets.prepared("coco")).categories
  source = tfds.data_source("dinoseg_instances/coco_instances", data_dir=str(tmp_path), split="val")
  view = dataset_lib.open_dataset(datasets.prepared("coco")).split("val")
  assert len(source) == len(view)
  ours = {int(view[i]["image_id"]): view[i] for i in range(len(view))}
  for k in range(len(source)):
    ex = source[k]
    mine = ours[int(ex["image/id"])]
    np.testing.assert_array_equal(ex["image"], mine["image"])
    np.testing.assert_array_equal(np.asarray(ex["objects"]["category_id"]), mine["instances"]["category_id"])
    rles = [bytes(r) for r in ex["objects"]["rle"]]
    assert rles == [bytes(r) for r in mine["instances"]["rle"]]
    np.testing.assert_allclose(np.asarray(ex["objects"]["bbox"]).reshape(-1, 4)[:, 2:] +
                               np.asarray(ex["objects"]["bbox"]).reshape(-1, 4)[:, :2],
                               mine["instances"]["boxes_xyxy"][:, 2:], atol=1e-4)


def test_cli_synth_prepare_inspect(tmp_path, capsys):
  raw, out = tmp_path / "raw", tmp_path / "out"
  assert cli.main(["data", "synth", "--layout", "coco", "--out", str(raw), "--num-images", "2",
                   "--image-size", "40,48", "--splits", "val", "--corrupt"]) == 0
  assert cli.main(["data", "prepare", "--dataset", "coco_instances", "--raw", str(raw), "--out", str(out),
                   "--split", "val", "--num-shards", "2", "--no-progress"]) == 0
  text = capsys.readouterr().out
  assert "val: 2 records of 4 in 2 shards" in text and "unknown_category 1" in text
  assert cli.main(["data", "inspect", str(out), "--verify", "--show", "0"]) == 0
  text = capsys.readouterr().out
  assert "verify val: ok" in text and "instances:" in text
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["splits"]["val"]["num_records"] == 2
  assert cli.main(["data", "prepare", "--dataset", "coco_instances", "--raw", str(raw), "--out", str(tmp_path / "s"),
                   "--split", "val", "--strict", "--no-progress"]) == 2     # bad data under --strict
  assert cli.main(["data", "prepare", "--dataset", "nope", "--raw", str(raw), "--out", str(out)]) == 2
  assert cli.main(["data", "synth", "--layout", "nope", "--out", str(raw)]) == 2
  assert "strict" in capsys.readouterr().err


def test_tfds_format_without_tensorflow_datasets_is_a_user_error(tmp_path, monkeypatch, capsys):
  import sys  # noqa: PLC0415

  from dinoseg import data_pipelines  # noqa: PLC0415
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import tensorflow_datasets` fails
  monkeypatch.delitem(sys.modules, "dinoseg.data_pipelines.tfds_builders", raising=False)
  monkeypatch.delattr(data_pipelines, "tfds_builders", raising=False)
  raw = tmp_path / "raw"
  assert cli.main(["data", "synth", "--layout", "coco", "--out", str(raw), "--num-images", "1", "--splits", "val"]) == 0
  assert cli.main(["data", "prepare", "--dataset", "coco_instances", "--raw", str(raw), "--out", str(tmp_path / "o"),
                   "--format", "tfds"]) == 2
  assert "needs tensorflow-datasets: pip install 'dinoseg[tfds]'" in capsys.readouterr().err
