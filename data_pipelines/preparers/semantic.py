"""Semantic segmentation datasets: ADE20K, Pascal VOC 2012, Pascal Context, Cityscapes.

Records keep the label PNG exactly as stored; the manifest's `label_maps` turn its raw values
into train ids (255 = ignore). Raw layouts (relative to `--raw`):

  ade20k          ADEChallengeData2016: images/{training,validation}/*.jpg,
                  annotations/{training,validation}/*.png (0 = other -> ignore, 1..150 -> 0..149)
  voc             VOCdevkit/VOC2012: ImageSets/Segmentation/{split}.txt, JPEGImages/<id>.jpg,
                  SegmentationClass/<id>.png (palette; 0 background, 1..20, 255 boundary)
                  label maps: voc21 (background = 0) and voc20 (background -> ignore)
  pascal_context  VOCdevkit/VOC2010 (mmseg layout): ImageSets/SegmentationContext/{split}.txt,
                  JPEGImages/<id>.jpg, SegmentationClassContext/<id>.png (0 background, 1..59)
                  label maps: context60 (background = 0) and context59 (background -> ignore)
  cityscapes      leftImg8bit/{split}/<city>/<name>_leftImg8bit.png,
                  gtFine/{split}/<city>/<name>_gtFine_labelIds.png (official ids -> 19 train ids)
"""
import glob
import os

import numpy as np

from dinoseg.data_pipelines import schema
from dinoseg.data_pipelines.preparers import base
from dinoseg.errors import UserFileNotFoundError

IGNORE = 255

# Cityscapes label id -> train id (cityscapesScripts labels.py; everything else is ignored).
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def identity_map(num_classes: int) -> list[int]:
  """Raw value v -> v for v < num_classes, else ignore."""
  return [v if v < num_classes else IGNORE for v in range(256)]


def reduce_zero_map(num_classes: int) -> list[int]:
  """Raw 0 -> ignore, v -> v - 1 for 1 <= v <= num_classes (mmseg's reduce_zero_label)."""
  return [v - 1 if 1 <= v <= num_classes else IGNORE for v in range(256)]


def table_map(table: dict[int, int]) -> list[int]:
  return [table.get(v, IGNORE) for v in range(256)]


class SemanticPreparer(base.Preparer):
  """Image + label PNG pairs; subclasses list the pairs of a split and define the label maps."""
  options = {"verify_images": True}
  label_maps: dict[str, list[int]] = {}
  known_values: frozenset = frozenset()  # raw values that are legitimate (mapped or deliberately ignored)

  def pairs(self, raw_dir: str, split: str) -> list[tuple[str, str]]:
    """[(image path, label path)] relative to raw_dir."""
    raise NotImplementedError

  def scan(self, raw_dir, split, issues):
    items = []
    for index, (image, label) in enumerate(self.pairs(raw_dir, split)):
      items.append({"id": index, "file_name": image, "label": label})
    if not items:
      raise UserFileNotFoundError(f"no {self.name} images for split {split!r} under {raw_dir}")
    num_classes = {name: len({v for v in lut if v != IGNORE}) for name, lut in self.label_maps.items()}
    return base.Scan({"task": "semantic", "label_maps": self.label_maps, "num_classes": num_classes,
                      "default_label_map": next(iter(self.label_maps)), "ignore_label": IGNORE}, items)

  def build(self, item, raw_dir, issues):
    data, h, w = base.read_image(raw_dir, item["file_name"], verify=self.opts["verify_images"])
    path = os.path.join(raw_dir, item["label"])
    png = base.read_bytes(path, "label PNG")
    try:
      labels = schema.decode_png_labels(png)
    except Exception as e:  # PIL errors, multi-channel PNGs
      raise base.SkipExample("unreadable_annotation", f"{path}: {e}") from e
    if labels.shape != (h, w):
      raise base.SkipExample("size_mismatch", f"{path} is {labels.shape[0]}x{labels.shape[1]}, the image {h}x{w}")
    unknown = sorted(set(np.unique(labels).tolist()) - self.known_values)
    if unknown:
      issues.drop("unknown_category", f"{item['label']}: label values {unknown[:10]} are not classes of "
                                      f"{self.name} (their pixels are ignored)")
    return {"schema": schema.SCHEMA_VERSION, "kind": "image", "id": item["id"], "file_name": item["file_name"],
            "height": h, "width": w, "image": data, "sem_seg": {"png": png}}

  def item_key(self, item):
    return item["file_name"]


def _list_file(raw_dir: str, rel: str) -> list[str]:
  path = os.path.join(raw_dir, rel)
  if not os.path.isfile(path):
    raise UserFileNotFoundError(f"split list {path} not found")
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


@base.register("ade20k")
class Ade20k(SemanticPreparer):
  """ADE20K SceneParsing (150 classes)."""
  description = "ADE20K semantic (ADEChallengeData2016: images/ + annotations/)"
  splits = ("train", "val")
  options = {"verify_images": True, "split_dirs": {"train": "training", "val": "validation"}}
  label_maps = {"ade20k": reduce_zero_map(150)}
  known_values = frozenset(range(151))

  def pairs(self, raw_dir, split):
    sub = self.opts["split_dirs"].get(split, split)
    images = sorted(glob.glob(os.path.join(raw_dir, "images", sub, "*.jpg")))
    return [(os.path.relpath(p, raw_dir),
             os.path.join("annotations", sub, os.path.splitext(os.path.basename(p))[0] + ".png")) for p in images]


@base.register("voc")
class PascalVoc(SemanticPreparer):
  """Pascal VOC 2012 segmentation (20 classes + background)."""
  description = "Pascal VOC 2012 semantic (VOC2012: ImageSets/Segmentation, JPEGImages, SegmentationClass)"
  splits = ("train", "val")
  label_maps = {"voc21": identity_map(21), "voc20": reduce_zero_map(20)}
  known_values = frozenset(range(21)) | {IGNORE}

  def pairs(self, raw_dir, split):
    ids = _list_file(raw_dir, f"ImageSets/Segmentation/{split}.txt")
    return [(f"JPEGImages/{i}.jpg", f"SegmentationClass/{i}.png") for i in ids]


@base.register("pascal_context")
class PascalContext(SemanticPreparer):
  """Pascal Context (59 classes + background), mmseg's converted layout."""
  description = "Pascal Context (VOC2010: ImageSets/SegmentationContext, JPEGImages, SegmentationClassContext)"
  splits = ("train", "val")
  label_maps = {"context60": identity_map(60), "context59": reduce_zero_map(59)}
  known_values = frozenset(range(60)) | {IGNORE}

  def pairs(self, raw_dir, split):
    ids = _list_file(raw_dir, f"ImageSets/SegmentationContext/{split}.txt")
    return [(f"JPEGImages/{i}.jpg", f"SegmentationClassContext/{i}.png") for i in ids]


@base.register("cityscapes")
class Cityscapes(SemanticPreparer):
  """Cityscapes fine annotations (19 train classes)."""
  description = "Cityscapes semantic (leftImg8bit/ + gtFine/ *_gtFine_labelIds.png)"
  splits = ("train", "val")
  options = {"verify_images": True, "label_suffix": "_gtFine_labelIds.png"}
  known_values = frozenset(range(34)) | {IGNORE}

  @property
  def label_maps(self):
    if self.opts["label_suffix"].endswith("labelTrainIds.png"):
      return {"cityscapes": identity_map(19)}
    return {"cityscapes": table_map(CITYSCAPES_TRAIN_IDS)}

  def pairs(self, raw_dir, split):
    images = sorted(glob.glob(os.path.join(raw_dir, "leftImg8bit", split, "*", "*_leftImg8bit.png")))
    out = []
    for p in images:
      rel = os.path.relpath(p, raw_dir)
      city = os.path.basename(os.path.dirname(p))
      stem = os.path.basename(p)[:-len("_leftImg8bit.png")]
      out.append((rel, os.path.join("gtFine", split, city, stem + self.opts["label_suffix"])))
    return out


__all__ = ["SemanticPreparer", "Ade20k", "PascalVoc", "PascalContext", "Cityscapes", "identity_map",
           "reduce_zero_map", "CITYSCAPES_TRAIN_IDS"]
