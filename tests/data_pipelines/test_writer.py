"""Sharded writing: shard layout, manifest checksums, strict mode, resumption, parallel workers."""
import json
import os

import pytest

from dinoseg.data_pipelines import schema, synth, writer
from dinoseg.data_pipelines.preparers import base
from dinoseg.data_pipelines.preparers.coco import CocoInstances


def test_shard_ranges():
  assert writer.shard_ranges(10, 3, None) == [(0, 3), (3, 6), (6, 10)]
  assert writer.shard_ranges(10, None, 4) == [(0, 3), (3, 6), (6, 10)]   # balanced, at most 4 each
  assert writer.shard_ranges(2, 5, None) == [(0, 1), (1, 2)]        # never more shards than items
  assert writer.shard_ranges(0, 4, None) == [(0, 0)]
  assert writer.shard_ranges(5000, None, None) == [(0, 1000), (1000, 2000), (2000, 3000), (3000, 4000),
                                                   (4000, 5000)]   # default: at most 1024 per shard
  with pytest.raises(ValueError, match="num_shards"):
    writer.shard_ranges(10, 0, None)
  with pytest.raises(ValueError, match="not both"):
    writer.shard_ranges(10, 2, 2)


@pytest.fixture(scope="module")
def coco_raw(tmp_path_factory):
  raw = tmp_path_factory.mktemp("coco_raw")
  summary = synth.synthesize("coco", str(raw), num_images=6, image_size=(40, 56), splits=("train",), corrupt=True)
  return raw, summary


def test_manifest_counts_checksums_and_verify(coco_raw, tmp_path):
  raw, summary = coco_raw
  out = tmp_path / "out"
  # Written by 2 spawned worker processes: in 2 of 3 full parallel runs an xdist worker process that had
  # run many tests before aborted inside ArrayRecordWriter's constructor at this point (never in
  # isolation; cause not found, see the closing note). The inline path is compared with this one in
  # test_parallel_workers_write_the_same_shards.
  manifest = writer.prepare("coco_instances", str(raw), str(out), splits=["train"], examples_per_shard=4,
                            num_workers=2, progress=False)
  entry = manifest["splits"]["train"]
  assert entry["num_items"] == 8 and entry["num_records"] == 6   # 2 bad images skipped
  assert [s["file"] for s in entry["shards"]] == [f"coco_instances-train.array_record-0000{i}-of-00002"
                                                   for i in range(2)]
  assert sum(s["num_records"] for s in entry["shards"]) == 6
  for shard in entry["shards"]:
    assert writer.sha256_file(out / shard["file"]) == shard["sha256"]
    assert len(shard["ids"]) == len(shard["num_instances"]) == shard["num_records"]
  assert json.loads((out / "manifest.json").read_text()) == manifest
  assert not (out / writer.PROGRESS_DIR).exists()
  assert writer.verify(out) == {"train": []}
  with open(out / entry["shards"][1]["file"], "r+b") as f:   # tamper with one byte
    f.seek(20)
    byte = f.read(1)
    f.seek(20)
    f.write(bytes([byte[0] ^ 1]))
  assert writer.verify(out)["train"] == [f"{entry['shards'][1]['file']}: checksum mismatch"]


def test_strict_mode_raises_on_bad_data(coco_raw, tmp_path):
  raw, _ = coco_raw
  with pytest.raises(base.BadRawData, match="unknown_category"):
    writer.prepare("coco_instances", str(raw), str(tmp_path / "out"), splits=["train"], strict=True, progress=False)


def test_resume_after_a_crash_keeps_finished_shards(coco_raw, tmp_path, monkeypatch):
  raw, _ = coco_raw
  reference = writer.prepare("coco_instances", str(raw), str(tmp_path / "ref"), splits=["train"], num_shards=4, progress=False)
  calls = {"n": 0}
  original = CocoInstances.build

  def crashing_build(self, item, raw_dir, issues):
    calls["n"] += 1
    if calls["n"] == 5:                  # the 5th example is in the 3rd shard (2 items per shard)
      raise KeyboardInterrupt("simulated crash")
    return original(self, item, raw_dir, issues)

  monkeypatch.setattr(CocoInstances, "build", crashing_build)
  out = tmp_path / "out"
  with pytest.raises(KeyboardInterrupt):
    writer.prepare("coco_instances", str(raw), str(out), splits=["train"], num_shards=4, progress=False)
  assert not (out / "manifest.json").exists()
  done = sorted(p.name for p in (out / writer.PROGRESS_DIR / "train").glob("shard-*.json"))
  assert done == ["shard-00000.json", "shard-00001.json"]
  finished = {name: os.stat(out / f"coco_instances-train.array_record-0000{i}-of-00004").st_mtime_ns
              for i, name in enumerate(done)}

  monkeypatch.setattr(CocoInstances, "build", original)
  built = []
  monkeypatch.setattr(CocoInstances, "build", lambda self, item, raw_dir, issues: built.append(item["id"]) or
                      original(self, item, raw_dir, issues))
  manifest = writer.prepare("coco_instances", str(raw), str(out), splits=["train"], num_shards=4, progress=False)
  assert len(built) == 4                  # only the two unfinished shards were built again
  for i, name in enumerate(done):
    assert os.stat(out / f"coco_instances-train.array_record-0000{i}-of-00004").st_mtime_ns == finished[name]
  strip = lambda m: [{k: v for k, v in s.items()} for s in m["splits"]["train"]["shards"]]  # noqa: E731
  assert strip(manifest) == strip(reference)   # identical shards and checksums
  assert manifest["splits"]["train"]["issues"]["counts"] == reference["splits"]["train"]["issues"]["counts"]


def test_other_arguments_refuse_to_resume(coco_raw, tmp_path, monkeypatch):
  raw, _ = coco_raw
  out = tmp_path / "out"
  monkeypatch.setattr(CocoInstances, "build", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
  with pytest.raises(KeyboardInterrupt):
    writer.prepare("coco_instances", str(raw), str(out), splits=["train"], num_shards=4, progress=False)
  monkeypatch.undo()
  with pytest.raises(ValueError, match="overwrite"):
    writer.prepare("coco_instances", str(raw), str(out), splits=["train"], num_shards=3, progress=False)
  manifest = writer.prepare("coco_instances", str(raw), str(out), splits=["train"], num_shards=3, overwrite=True, progress=False)
  assert len(manifest["splits"]["train"]["shards"]) == 3
  assert sorted(p.name for p in out.glob("*.array_record-*")) == [
      f"coco_instances-train.array_record-0000{i}-of-00003" for i in range(3)]


def test_parallel_workers_write_the_same_shards(coco_raw, tmp_path):
  raw, _ = coco_raw
  serial = writer.prepare("coco_instances", str(raw), str(tmp_path / "a"), splits=["train"], num_shards=3, progress=False)
  parallel = writer.prepare("coco_instances", str(raw), str(tmp_path / "b"), splits=["train"], num_shards=3, num_workers=2,
                            progress=False)
  assert [s["sha256"] for s in parallel["splits"]["train"]["shards"]] == \
      [s["sha256"] for s in serial["splits"]["train"]["shards"]]
  assert parallel["splits"]["train"]["issues"]["counts"] == serial["splits"]["train"]["issues"]["counts"]


def test_records_are_msgpack_not_pickle(coco_raw, tmp_path):
  raw, _ = coco_raw
  out = tmp_path / "out"
  writer.prepare("coco_instances", str(raw), str(out), splits=["train"], num_shards=1, progress=False)
  from dinoseg.data_pipelines.dataset import open_dataset  # noqa: PLC0415
  data = open_dataset(out).source("train")[0]
  assert not data.startswith(b"\x80")           # no pickle protocol header
  record = schema.decode_record(data)
  assert record["schema"] == schema.SCHEMA_VERSION and isinstance(record["image"], bytes)
