"""TFDS builders (file_format="array_record") for instance-segmentation data, so that
`tfds.data_source(...)` reads the result without TensorFlow.

`DinosegInstances` reads a raw dataset through the same preparers as `dinoseg data prepare` (same
checks, same skip / drop bookkeeping) and writes TFDS ArrayRecord shards. One builder config per
instance-style preparer: coco_instances, lvis, sa1b, davis345, hqseg44k.

  from dinoseg.data_pipelines import tfds_builders
  tfds_builders.prepare_tfds("coco_instances", raw_dir, data_dir)
  source = tfds.data_source("dinoseg_instances/coco_instances", data_dir=data_dir, split="val")
  source[0] -> {"image": (H, W, 3) uint8, "image/id", "image/filename",
                "objects": {"id", "category_id", "bbox" (n, 4) xywh pixels, "is_crowd", "area",
                            "rle" (n,) compressed COCO RLE counts (bytes)}}

Image features hold the raw encoded bytes (no re-encoding, no TensorFlow needed); tfds decodes them
with PIL. The categories are in `builder.info.metadata["categories"]`.

This is the only module that imports tensorflow-datasets (an optional dependency:
`pip install "dinoseg[tfds]"`); nothing imports it unless it is used.
"""
import numpy as np
import tensorflow_datasets as tfds

from dinoseg.data_pipelines.preparers import base
from dinoseg.errors import UserValueError

INSTANCE_PREPARERS = ("coco_instances", "lvis", "sa1b", "davis345", "hqseg44k")


class DinosegInstances(tfds.core.GeneratorBasedBuilder):
  """Instance segmentation records (image, boxes, crowd flags, RLE masks) from a raw dataset."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "dinoseg record schema 1 as TFDS features."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f"dinoseg preparer {name!r}")
                     for name in INSTANCE_PREPARERS]

  def __init__(self, *, raw_dir: str | None = None, preparer_options: dict | None = None, strict: bool = False,
               splits=None, **kwargs):
    self._raw_dir, self._options, self._strict, self._splits = raw_dir, dict(preparer_options or {}), strict, splits
    self.issues: dict[str, dict] = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="dinoseg instance-segmentation records (image bytes as stored, boxes, crowd flags, RLE masks)",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/id": np.int64,
            "image/filename": tfds.features.Text(),
            "objects": tfds.features.Sequence({
                "id": np.int64,
                "category_id": np.int64,
                "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                "is_crowd": np.bool_,
                "area": np.float32,
                "rle": tfds.features.Tensor(shape=(), dtype=np.object_),
            }),
        }),
        metadata=tfds.core.MetadataDict(),
        homepage="https://github.com/dinoseg",
    )

  def _split_generators(self, dl_manager):
    if self._raw_dir is None:
      raise ValueError("DinosegInstances needs raw_dir= to generate (reading a prepared copy does not)")
    preparer = base.get(self.builder_config.name, **self._options)
    splits = self._splits or preparer.splits
    return {split: self._generate_examples(preparer, split) for split in splits}

  def _generate_examples(self, preparer, split):
    issues = base.Issues(strict=self._strict, context=f"tfds {self.builder_config.name}/{split}")
    scan = preparer.scan(self._raw_dir, split, issues)
    self.info.metadata["categories"] = scan.metadata.get("categories", [])
    for item in scan.items:
      try:
        record = preparer.build(item, self._raw_dir, issues)
      except base.SkipExample as e:
        issues.skip(e.reason, f"{preparer.item_key(item)}: {e.detail}")
        continue
      inst = record["instances"]
      yield preparer.item_key(item), {
          "image": record["image"],
          "image/id": int(record["id"]),
          "image/filename": record["file_name"],
          "objects": {"id": list(inst["id"]), "category_id": list(inst["category_id"]),
                      "bbox": np.asarray(inst["bbox"], np.float32).reshape(-1, 4),
                      "is_crowd": [bool(c) for c in inst["iscrowd"]], "area": list(inst["area"]),
                      "rle": list(inst["rle"])},
      }
    self.issues[split] = issues.as_dict()


def prepare_tfds(dataset: str, raw_dir: str, data_dir: str, *, splits=None, options: dict | None = None,
                 strict: bool = False) -> DinosegInstances:
  """Builds `dinoseg_instances/<dataset>` under data_dir (ArrayRecord); returns the builder
  (`builder.issues` holds the skip / drop counts per split)."""
  if dataset not in INSTANCE_PREPARERS:
    raise UserValueError(f"TFDS output is available for {', '.join(INSTANCE_PREPARERS)}, not {dataset!r}")
  builder = DinosegInstances(config=dataset, data_dir=data_dir, raw_dir=raw_dir, preparer_options=options,
                             strict=strict, splits=splits, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw_dir))
  return builder


__all__ = ["DinosegInstances", "prepare_tfds", "INSTANCE_PREPARERS"]
