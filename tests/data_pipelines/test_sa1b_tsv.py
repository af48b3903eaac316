"""SA-1B's TSV shard layout (the reference's `datasets/utils/tsv/`): same records as the tar layout, the shard
range, and every bad-input case as a counted skip or a one-line user error."""
import base64
import json
import pathlib

import pytest

from dinoseg import cli
from dinoseg.data_pipelines import dataset as dataset_lib
from dinoseg.data_pipelines import synth, writer
from dinoseg.data_pipelines.preparers import base, sa1b
from dinoseg.errors import UserFileNotFoundError, UserValueError

OPTS = {"num_images": 4, "image_size": (32, 40), "max_objects": 3}


def _records(out) -> dict:
  view = dataset_lib.open_dataset(out).split("train")
  return {view.record(i)["id"]: view.record(i) for i in range(len(view))}


def _prepare(raw, out, **options):
  return writer.prepare("sa1b", str(raw), str(out), options=options or None, num_shards=1, progress=False)


def _skips(manifest) -> dict:
  return manifest["splits"]["train"]["issues"]["counts"]["skipped_examples"]


def test_tsv_layout_gives_the_tar_layouts_records(datasets):
  tar_out, tsv_out = datasets.prepared("sa1b"), datasets.prepared("sa1b_tsv")
  raw = datasets.raw("sa1b_tsv")
  assert sorted(p.name for p in raw.iterdir()) == ["SA-1B.part_00000.lineidx", "SA-1B.part_00000.tsv",
                                                   "SA-1B.part_00001.lineidx", "SA-1B.part_00001.tsv"]
  assert sa1b.Sa1b().layout(str(raw)) == "tsv" and sa1b.Sa1b().layout(str(datasets.raw("sa1b"))) == "tar"
  tar_records, tsv_records = _records(tar_out), _records(tsv_out)
  assert sorted(tsv_records) == sorted(tar_records) == [1, 2, 3]
  for image_id, record in tsv_records.items():
    assert record == tar_records[image_id]
    assert len(record["instances"]["id"]) > 0
  tar_manifest, tsv_manifest = (writer.read_manifest(p) for p in (tar_out, tsv_out))
  assert tsv_manifest["metadata"] == tar_manifest["metadata"]
  assert _skips(tsv_manifest) == {} and tsv_manifest["splits"]["train"]["num_records"] == 3


@pytest.mark.parametrize("naming", ["part", "dash"])
def test_shard_range(tmp_path, naming):
  raw = tmp_path / "raw"
  summary = synth.synth_sa1b_tsv(str(raw), synth.SynthOptions(**OPTS), images_per_shard=1, naming=naming,
                                 first_shard=88)
  assert [sa1b.tsv_shard_number(n) for n in summary["shards"]] == [88, 89, 90, 91]
  # The shards NN with subset_start <= NN < subset_end, as the reference's SAM_SUBSET_START / END.
  _prepare(raw, tmp_path / "a", subset_start=89, subset_end=91)
  assert sorted(_records(tmp_path / "a")) == [2, 3]
  _prepare(raw, tmp_path / "b")  # defaults 0..100: every shard here
  assert sorted(_records(tmp_path / "b")) == [1, 2, 3, 4]
  with pytest.raises(UserFileNotFoundError, match="numbered 92 <= NN < 100"):
    _prepare(raw, tmp_path / "c", subset_start=92)
  for bad in ({"subset_start": -1}, {"subset_end": "9"}, {"subset_start": 5, "subset_end": 5},
              {"subset_end": True}, {"layout": "zip"}):
    with pytest.raises(UserValueError, match="sa1b option"):
      sa1b.Sa1b(**bad)


def test_layout_choice(tmp_path):
  raw = tmp_path / "raw"
  synth.synth_sa1b_tsv(str(raw), synth.SynthOptions(**{**OPTS, "num_images": 1}))
  with pytest.raises(UserFileNotFoundError, match="no SA-1B images"):
    _prepare(raw, tmp_path / "o", layout="tar")
  synth.synth_sa1b(str(raw), synth.SynthOptions(**{**OPTS, "num_images": 2}))
  with pytest.raises(UserValueError, match="both SA-1B tar shards"):
    _prepare(raw, tmp_path / "o")
  _prepare(raw, tmp_path / "tar", layout="tar")
  _prepare(raw, tmp_path / "tsv", layout="tsv")
  assert sorted(_records(tmp_path / "tar")) == [1, 2] and sorted(_records(tmp_path / "tsv")) == [1]
  (raw / "notes.tsv").write_text("x\n")
  with pytest.raises(UserValueError, match="must end in part_<NN>.tsv or -<NN>.tsv"):
    _prepare(raw, tmp_path / "o", layout="tsv")
  _prepare(raw, tmp_path / "glob", layout="tsv", tsvs="SA-1B*.tsv")  # the option `tsvs` leaves notes.tsv out
  assert sorted(_records(tmp_path / "glob")) == [1]


def _bad_rows_raw(tmp_path) -> tuple[pathlib.Path, list[int]]:
  """One shard: a good row, a bad JSON, a bad base64 image, base64 that is no image, too few fields, then
  offsets past the end and into the middle of a row appended to the .lineidx."""
  raw = tmp_path / "raw"
  (name, jpg, js), = synth.sa1b_entries(synth.SynthOptions(**{**OPTS, "num_images": 1}))
  good = base64.b64encode(jpg)
  path = raw / "sam-07.tsv"
  offsets = synth.write_tsv_shard(path, [
      (name, js, good),
      ("bad_json", b"{\"image\": ", good),
      ("bad_base64", js, b"%%% not base64 %%%"),
      ("not_an_image", js, base64.b64encode(b"this is not a jpeg")),
      ("two_fields", js),
      ("no_image_info", json.dumps({"annotations": []}), good),
  ])
  size = path.stat().st_size
  with open(path.with_suffix(".lineidx"), "a") as f:
    f.write(f"{size + 100}\n{offsets[1] + 3}\n")
  return raw, offsets


def test_bad_rows_are_counted_skips(tmp_path):
  raw, _ = _bad_rows_raw(tmp_path)
  manifest = _prepare(raw, tmp_path / "out")
  assert _skips(manifest) == {"missing_file": 1, "unreadable_annotation": 4, "unreadable_image": 2}
  samples = manifest["splits"]["train"]["issues"]["samples"]["skipped_examples"]
  assert any("sam-07.tsv:2" in s and "not base64" in s for s in samples["unreadable_image"])
  assert any("past the end" in s for s in samples["missing_file"])
  assert any("does not start a row" in s for s in samples["unreadable_annotation"])
  assert list(_records(tmp_path / "out")) == [1]
  with pytest.raises(base.BadRawData, match="sam-07.tsv:1: "):
    writer.prepare("sa1b", str(raw), str(tmp_path / "strict"), num_shards=1, progress=False, strict=True)


def test_bad_index_is_a_user_error(tmp_path, capsys):
  raw, _ = _bad_rows_raw(tmp_path)
  index = raw / "sam-07.lineidx"
  index.write_text("0\nnot-an-offset\n")
  with pytest.raises(UserValueError, match="line 2: 'not-an-offset' is not a byte offset"):
    _prepare(raw, tmp_path / "o1")
  index.unlink()
  with pytest.raises(UserFileNotFoundError, match="has no index .*sam-07.lineidx"):
    _prepare(raw, tmp_path / "o2")
  # Through the CLI: one line, exit status 2.
  assert cli.main(["data", "prepare", "--dataset", "sa1b", "--raw", str(raw), "--output", str(tmp_path / "o3"),
                   "--option", "subset_start=5", "--no-progress"]) == 2
  errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
  assert len(errors) == 1 and errors[0].startswith("dinoseg data: error:") and "has no index" in errors[0], errors
