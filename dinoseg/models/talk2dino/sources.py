"""Datasets for Talk2DINO, read from the prepared ArrayRecord datasets of `dinoseg.data_pipelines`.

- Feature extraction (`config.features.dataset`):
  * "coco2014_captions": the `coco_captions` preparer's output in `features.data_dir` (COCO 2014
    images with their ~5 captions);
  * "synthetic_coco_captions": the same, from `data_pipelines.synth` scenes whose captions describe
    the drawn shapes; prepared into `features.data_dir` on first use (tiny configs).
- Benchmarks (`config.eval`): `<eval.data_dir>/<dataset>` prepared by the semantic preparers, with the
  label map of each benchmark (`BENCHMARK_DATASETS`); `eval.synthetic` prepares synthetic VOC /
  Pascal Context / ADE20K / Cityscapes layouts there on first use (tiny configs).

Ground truth = the label map's lookup table applied to the stored label PNG (255 = ignore).
"""
import os
import pathlib
from typing import Callable, Sequence

import numpy as np

from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.models.talk2dino.features import ImageSample

# Benchmark key -> (prepared dataset directory under eval.data_dir, label map name in its manifest).
BENCHMARK_DATASETS = {
    "voc20": ("voc", "voc20"), "voc": ("voc", "voc21"),
    "context59": ("pascal_context", "context59"), "context": ("pascal_context", "context60"),
    "ade20k": ("ade20k", "ade20k"), "cityscapes": ("cityscapes", "cityscapes"),
    "coco_stuff": ("coco_stuff", "coco_stuff"), "coco_object": ("coco_object", "coco_object"),
}
# data_pipelines preparer (and synthetic layout) of each prepared directory.
PREPARERS = {"voc": "voc", "pascal_context": "pascal_context", "ade20k": "ade20k", "cityscapes": "cityscapes"}


class PreparedRecords:
  """Random access to the decoded records (`schema.decode_record`) of one prepared split."""

  def __init__(self, dataset_dir: str | os.PathLike, split: str):
    from grain.sources import ArrayRecordDataSource  # noqa: PLC0415

    from dinoseg.data_pipelines import writer  # noqa: PLC0415
    self.dir = pathlib.Path(dataset_dir)
    self.manifest = writer.read_manifest(self.dir)
    if split not in self.manifest["splits"]:
      raise UserValueError(f"{self.dir} has no split {split!r}; it has {sorted(self.manifest['splits'])}")
    files = [str(self.dir / s["file"]) for s in self.manifest["splits"][split]["shards"] if s["num_records"]]
    self._source = ArrayRecordDataSource(files) if files else []

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    from dinoseg.data_pipelines import schema  # noqa: PLC0415
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)})")
    return schema.decode_record(self._source[index])


class CaptionRecords:
  """`ImageSample`s (decoded RGB image, captions, caption ids) of a prepared captions split."""

  def __init__(self, dataset_dir: str | os.PathLike, split: str):
    self.records = PreparedRecords(dataset_dir, split)

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> ImageSample:
    from dinoseg.data_pipelines import schema  # noqa: PLC0415
    record = self.records[index]
    captions = record.get("captions") or {"id": [], "text": []}
    return ImageSample(image_id=int(record["id"]), image=schema.decode_image(record["image"]),
                       captions=list(captions["text"]), caption_ids=[int(i) for i in captions["id"]])


class SemanticRecords:
  """(RGB uint8 image, ground-truth labels) pairs of a prepared semantic split under a label map."""

  def __init__(self, dataset_dir: str | os.PathLike, split: str, label_map: str):
    self.records = PreparedRecords(dataset_dir, split)
    maps = self.records.manifest.get("metadata", {}).get("label_maps", {})
    if label_map not in maps:
      raise UserValueError(f"{dataset_dir} has no label map {label_map!r}; it has {sorted(maps)}")
    self.lut = np.asarray(maps[label_map], np.int32)

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    from dinoseg.data_pipelines import schema  # noqa: PLC0415
    record = self.records[index]
    raw = schema.decode_png_labels(record["sem_seg"]["png"]).astype(np.int64)
    gt = np.where(raw < len(self.lut), self.lut[np.clip(raw, 0, len(self.lut) - 1)], 255).astype(np.int32)
    return schema.decode_image(record["image"]), gt


def ensure_synthetic(layout: str, preparer: str, out_dir: str | os.PathLike, num_images: int,
                     image_size=(40, 64)) -> pathlib.Path:
  """Synthesizes the raw `layout` and prepares it into `out_dir` unless a manifest is already there."""
  out = pathlib.Path(out_dir)
  if (out / "manifest.json").exists():
    return out
  import tempfile  # noqa: PLC0415

  from dinoseg.data_pipelines import synth, writer  # noqa: PLC0415
  with tempfile.TemporaryDirectory() as raw:
    synth.synthesize(layout, raw, num_images=num_images, image_size=tuple(image_size), splits=("train", "val"))
    writer.prepare(preparer, raw, str(out), progress=False)
  return out


def _coco2014(features_config, split: str) -> Sequence[ImageSample]:
  if not features_config.data_dir:
    raise UserValueError("config.features.data_dir must name the prepared coco_captions dataset "
                     "(dinoseg.data_pipelines preparer 'coco_captions')")
  return CaptionRecords(features_config.data_dir, split)


def _synthetic_coco_captions(features_config, split: str) -> Sequence[ImageSample]:
  data_dir = features_config.data_dir or "/tmp/dinoseg_talk2dino_synthetic/coco_captions"
  ensure_synthetic("coco_captions", "coco_captions", data_dir, int(features_config.get("max_images", 0) or 16))
  return CaptionRecords(data_dir, split)


SOURCES: dict[str, Callable] = {"coco2014_captions": _coco2014, "synthetic_coco_captions": _synthetic_coco_captions}


def build_source(features_config, split: str) -> Sequence[ImageSample]:
  """The ImageSample source of `config.features.dataset` for a split name ("train2014" style names map
  to the preparer's "train" / "val")."""
  name = features_config.dataset
  if name not in SOURCES:
    raise UserValueError(f"unknown features.dataset {name!r}; known: {', '.join(SOURCES)}")
  return SOURCES[name](features_config, split)


def semantic_samples(eval_config, benchmark, split: str = "val"):
  """(image, ground truth) pairs of a benchmark's validation split (see the module doc)."""
  if benchmark.key not in BENCHMARK_DATASETS:
    raise ValueError(f"no dataset is known for benchmark {benchmark.key!r}")
  directory, label_map = BENCHMARK_DATASETS[benchmark.key]
  if not eval_config.data_dir:
    raise UserValueError("config.eval.data_dir must name the directory holding the prepared benchmark datasets")
  path = pathlib.Path(eval_config.data_dir) / directory
  if eval_config.get("synthetic", False):
    if directory not in PREPARERS:
      raise UserValueError(f"no synthetic layout exists for {directory!r}")
    n = int(eval_config.get("max_images", 0) or 4)
    ensure_synthetic(PREPARERS[directory], PREPARERS[directory], path, n)
  if not (path / "manifest.json").exists():
    raise UserFileNotFoundError(f"{path}/manifest.json not found: prepare the {directory!r} dataset into {path} "
                            "(dinoseg.data_pipelines)")
  return SemanticRecords(path, split, label_map)


__all__ = ["PreparedRecords", "CaptionRecords", "SemanticRecords", "SOURCES", "BENCHMARK_DATASETS", "build_source",
           "semantic_samples", "ensure_synthetic"]
