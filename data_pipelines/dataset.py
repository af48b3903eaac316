"""Reading a prepared dataset: manifest, shard sources, random access to decoded examples, ground truth.

  ds = open_dataset("/data/coco")          # a directory written by `dinoseg data prepare`
  ds.splits, ds.categories, ds.category_ids
  len(ds.split("val")); ds.split("val")[i]  # decoded example (schema.decode_example)
  ds.coco_ground_truth("val")               # COCO instances dict for pycocotools / COCOEvaluator
"""
import functools
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from dinoseg.data_pipelines import schema, writer
from dinoseg.errors import UserFileNotFoundError, UserValueError


class RecordSource:
  """Random access to the serialized records of one split (a picklable grain data source).

  The ArrayRecord readers are opened lazily in each process (they are not pickled).
  """

  def __init__(self, paths: Sequence[str], num_records: int | None = None):
    self.paths = [str(p) for p in paths]
    self._num_records = num_records
    self._source = None

  def _open(self):
    if self._source is None:
      import grain  # noqa: PLC0415
      self._source = grain.sources.ArrayRecordDataSource(self.paths)
    return self._source

  def __len__(self) -> int:
    if self._num_records is None:
      self._num_records = len(self._open())
    return self._num_records

  def __getitem__(self, index: int) -> bytes:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record index {index} out of range [0, {len(self)})")
    return self._open()[index]

  def record(self, index: int) -> dict:
    """The parsed record dict (schema)."""
    return schema.decode_record(self[index])

  def __getstate__(self):
    return {"paths": self.paths, "_num_records": self._num_records, "_source": None}

  def __setstate__(self, state):
    self.__dict__.update(state)


class SplitView:
  """Decoded examples of one split: `view[i]` = schema.decode_example(record i)."""

  def __init__(self, source: RecordSource, entry: dict):
    self.source, self.entry = source, entry

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    return schema.decode_example(self.source.record(index))

  def record(self, index: int) -> dict:
    return self.source.record(index)

  @functools.cached_property
  def ids(self) -> np.ndarray:
    """(N,) image (video) id of every record, from the manifest."""
    return np.asarray([i for s in self.entry["shards"] for i in s["ids"]], np.int64)

  @functools.cached_property
  def num_instances(self) -> np.ndarray:
    """(N,) number of annotated objects of every record, from the manifest."""
    return np.asarray([i for s in self.entry["shards"] for i in s["num_instances"]], np.int64)

  def index_of(self, image_id: int) -> int:
    hits = np.flatnonzero(self.ids == int(image_id))
    if not hits.size:
      raise KeyError(f"image id {image_id} is not in this split")
    return int(hits[0])


class PreparedDataset:
  """A prepared dataset directory (module docstring)."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    self.manifest = writer.read_manifest(self.path)

  @property
  def name(self) -> str:
    return self.manifest["dataset"]

  @property
  def metadata(self) -> dict:
    return self.manifest.get("metadata", {})

  @property
  def splits(self) -> list[str]:
    return list(self.manifest["splits"])

  @property
  def categories(self) -> list[dict]:
    return list(self.metadata.get("categories", []))

  @property
  def category_ids(self) -> list[int]:
    """Dataset category ids in contiguous-label order (label i <-> category_ids[i])."""
    return sorted(int(c["id"]) for c in self.categories)

  def label_map(self, name: str | None = None) -> np.ndarray:
    """(256,) lookup table raw label value -> train id (255 ignore) for semantic datasets."""
    maps = self.metadata.get("label_maps") or {}
    if not maps:
      raise UserValueError(f"dataset {self.name!r} has no semantic label maps (config.data.label_map)")
    name = name or self.metadata.get("default_label_map") or next(iter(maps))
    if name not in maps:
      raise UserValueError(f"unknown label_map {name!r} (config.data.label_map) for {self.name!r}; "
                           f"known: {', '.join(maps)}")
    return np.asarray(maps[name], np.int32)

  def num_classes(self, label_map: str | None = None) -> int:
    if self.metadata.get("label_maps"):
      lut = self.label_map(label_map)
      return int(len(set(lut.tolist()) - {255}))
    return len(self.categories)

  def _entry(self, split: str) -> dict:
    if split not in self.manifest["splits"]:
      raise UserValueError(f"split {split!r} is not prepared in {self.path}; prepared: {', '.join(self.splits)}")
    return self.manifest["splits"][split]

  def source(self, split: str) -> RecordSource:
    entry = self._entry(split)
    paths = [self.path / s["file"] for s in entry["shards"] if s["num_records"] > 0]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
      raise UserFileNotFoundError(f"shards listed in the manifest are missing: {missing[:3]}")
    if not paths:
      raise UserValueError(f"split {split!r} of {self.path} holds no records")
    return RecordSource(paths, entry["num_records"])

  def split(self, split: str) -> SplitView:
    return SplitView(self.source(split), self._entry(split))

  def semantic_pairs(self, split: str, label_map: str | None = None):
    """Yields (image (H, W, 3) uint8, labels (H, W) uint8 train ids with 255 = ignore) of a semantic split,
    at the original resolution (what mIoU evaluation compares against)."""
    lut = self.label_map(label_map).astype(np.uint8)
    view = self.split(split)
    for i in range(len(view)):
      ex = view[i]
      yield ex["image"], lut[np.minimum(ex["sem_seg"], 255)]

  def coco_ground_truth(self, split: str) -> dict[str, Any]:
    """A COCO instances dict (images, annotations with compressed-RLE segmentations, categories).

    Panoptic datasets (records without instances) give their thing segments as instances: mask =
    the segment's pixels, bbox / area / iscrowd from its segments_info. (COCO's own
    instances_val2017.json, which detectron2 pairs with the panoptic split, annotates the same
    objects but may overlap where the panoptic map assigns each pixel once.)
    """
    view = self.split(split)
    things = {int(c["id"]) for c in self.categories if c.get("isthing", 1)}
    images, annotations = [], []

    def add(image_id, h, w, category_id, bbox, area, iscrowd, counts):
      annotations.append({
          "id": len(annotations) + 1, "image_id": image_id, "category_id": int(category_id),
          "bbox": [float(v) for v in bbox], "area": float(area), "iscrowd": int(iscrowd),
          "segmentation": {"size": [h, w], "counts": counts.decode("ascii")}})

    for i in range(len(view)):
      rec = view.record(i)
      h, w, image_id = int(rec["height"]), int(rec["width"]), int(rec["id"])
      images.append({"id": image_id, "file_name": rec["file_name"], "height": h, "width": w})
      inst = rec.get("instances")
      if inst:
        for k in range(len(inst["id"])):
          add(image_id, h, w, inst["category_id"][k], inst["bbox"][k], inst["area"][k], inst["iscrowd"][k],
              inst["rle"][k])
      elif rec.get("panoptic"):
        segs = rec["panoptic"]["segments"]
        pan_seg = schema.decode_panoptic_png(rec["panoptic"]["png"])
        for k in range(len(segs["id"])):
          if int(segs["category_id"][k]) in things:
            add(image_id, h, w, segs["category_id"][k], segs["bbox"][k], segs["area"][k], segs["iscrowd"][k],
                schema.encode_mask(pan_seg == int(segs["id"][k])))
    return {"images": images, "annotations": annotations, "categories": self.categories}


def open_dataset(path: str | os.PathLike) -> PreparedDataset:
  return PreparedDataset(path)


__all__ = ["RecordSource", "SplitView", "PreparedDataset", "open_dataset"]
