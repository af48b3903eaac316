"""COCO-format datasets: COCO 2017 instances and panoptic, LVIS v1, ADE20K panoptic, COCO 2014 captions.

Raw layouts (paths relative to `--raw`; every path is an option, `{split}` is the split name):

  coco_instances   annotations/instances_{split}2017.json, {split}2017/<file_name>
  coco_panoptic    annotations/panoptic_{split}2017.json, annotations/panoptic_{split}2017/<png>,
                   {split}2017/<file_name>
  lvis             lvis_v1_{split}.json; images found through each image's coco_url
                   (<...>/{train,val}2017/<name>.jpg -> {train,val}2017/<name>.jpg)
  ade20k_panoptic  ADEChallengeData2016 as detectron2 prepares it: ade20k_panoptic_{split}.json,
                   ade20k_panoptic_{split}/<png>, images/{training,validation}/<file_name>
  coco_captions    annotations/captions_{split}2014.json, {split}2014/<file_name>
"""
import collections
import json
import os

import numpy as np

from dinoseg.data_pipelines import schema
from dinoseg.data_pipelines.preparers import base
from dinoseg.errors import UserFileNotFoundError, UserValueError


def load_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise UserFileNotFoundError(f"annotation file {path} not found")
  with open(path, "rb") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise UserValueError(f"annotation file {path} is not valid JSON: {e}") from e


def _group_by_image(annotations, image_ids, category_ids, issues, where: str) -> dict[int, list]:
  """Annotations grouped by image id; unknown image / category ids are dropped (counted)."""
  by_image = collections.defaultdict(list)
  for ann in annotations:
    image_id = ann.get("image_id")
    if image_id not in image_ids:
      issues.drop("unknown_image", f"{where}: annotation {ann.get('id')} refers to image {image_id}")
      continue
    if category_ids is not None and ann.get("category_id") not in category_ids:
      issues.drop("unknown_category", f"{where}: annotation {ann.get('id')} has category {ann.get('category_id')}")
      continue
    by_image[image_id].append(ann)
  return by_image


def build_instances(anns, height: int, width: int, issues: base.Issues, where: str) -> dict:
  """COCO annotations of one image -> the record's `instances` columns (bad ones dropped, counted)."""
  cols = {c: [] for c in schema.INSTANCE_COLUMNS}
  for ann in anns:
    what = f"{where} annotation {ann.get('id')}"
    box = base.clean_box(ann.get("bbox"), height, width, issues, what)
    if box is None:
      continue
    try:
      counts = base.segmentation_to_rle(ann.get("segmentation"), height, width)
    except ValueError as e:
      reason, _, detail = str(e).partition(": ")
      issues.drop(reason, f"{what}: {detail}")
      continue
    area = float(schema_area(counts, height, width))
    if area <= 0:
      issues.drop("empty_mask", f"{what}: the segmentation covers no pixel")
      continue
    cols["id"].append(int(ann.get("id", len(cols["id"]))))
    cols["category_id"].append(int(ann["category_id"]))
    cols["bbox"].append(box)
    cols["iscrowd"].append(int(bool(ann.get("iscrowd", 0))))
    cols["area"].append(float(ann.get("area", area)))
    cols["rle"].append(counts)
  return cols


def schema_area(counts: bytes, height: int, width: int) -> int:
  from pycocotools import mask as coco_mask  # noqa: PLC0415
  return int(coco_mask.area({"size": [height, width], "counts": counts}))


def _image_item(img: dict) -> dict:
  return {"id": int(img["id"]), "file_name": img.get("file_name", ""), "height": int(img["height"]),
          "width": int(img["width"])}


def _record(item: dict, data: bytes) -> dict:
  return {"schema": schema.SCHEMA_VERSION, "kind": "image", "id": item["id"], "file_name": item["file_name"],
          "height": item["height"], "width": item["width"], "image": data}


@base.register("coco_instances")
class CocoInstances(base.Preparer):
  """COCO 2017 instance segmentation (boxes, polygons/RLE masks, crowd regions)."""
  description = "COCO 2017 instances (annotations/instances_{split}2017.json + {split}2017/)"
  splits = ("train", "val")
  options = {"annotations": "annotations/instances_{split}2017.json", "images": "{split}2017",
             "verify_images": True}

  def _paths(self, raw_dir: str, split: str) -> tuple[str, str]:
    return (os.path.join(raw_dir, self.opts["annotations"].format(split=split)),
            os.path.join(raw_dir, self.opts["images"].format(split=split)))

  def _metadata(self, data: dict) -> dict:
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    return {"task": "instance", "categories": cats, "info": data.get("info", {})}

  def _image_extra(self, img: dict) -> dict:
    return {}

  def _file_name(self, img: dict) -> str:
    return img["file_name"]

  def scan(self, raw_dir, split, issues):
    ann_file, image_root = self._paths(raw_dir, split)
    data = load_json(ann_file)
    images = {int(img["id"]): img for img in data.get("images", [])}
    category_ids = {c["id"] for c in data.get("categories", [])}
    by_image = _group_by_image(data.get("annotations", []), images, category_ids, issues, os.path.basename(ann_file))
    items = []
    for image_id in sorted(images):
      img = images[image_id]
      item = _image_item(img)
      item["file_name"] = self._file_name(img)
      item["annotations"] = by_image.get(image_id, [])
      item["extra"] = self._image_extra(img)
      item["image_root"] = image_root
      items.append(item)
    return base.Scan(self._metadata(data), items)

  def build(self, item, raw_dir, issues):
    data, _, _ = base.read_image(item["image_root"], item["file_name"], (item["height"], item["width"]),
                                 verify=self.opts["verify_images"])
    record = _record(item, data)
    record["instances"] = build_instances(item["annotations"], item["height"], item["width"], issues,
                                          item["file_name"])
    if item.get("extra"):
      record["extra"] = item["extra"]
    return record


@base.register("lvis")
class Lvis(CocoInstances):
  """LVIS v1 (COCO images; federated annotations: negative / not-exhaustive category ids)."""
  description = "LVIS v1 (lvis_v1_{split}.json + COCO {train,val}2017/ images)"
  options = {"annotations": "lvis_v1_{split}.json", "images": ".", "verify_images": True}

  def _file_name(self, img):
    if "coco_url" in img:
      return "/".join(img["coco_url"].split("/")[-2:])
    return img["file_name"]

  def _image_extra(self, img):
    return {"neg_category_ids": [int(c) for c in img.get("neg_category_ids", [])],
            "not_exhaustive_category_ids": [int(c) for c in img.get("not_exhaustive_category_ids", [])]}

  def _metadata(self, data):
    meta = super()._metadata(data)
    meta["categories"] = [{k: c[k] for k in ("id", "name", "frequency", "synset", "image_count", "instance_count")
                           if k in c} for c in meta["categories"]]
    return meta


@base.register("coco_panoptic")
class CocoPanoptic(base.Preparer):
  """COCO 2017 panoptic segmentation (PNG + segments_info; things and stuff)."""
  description = "COCO 2017 panoptic (annotations/panoptic_{split}2017.json + PNGs + {split}2017/)"
  splits = ("train", "val")
  options = {"annotations": "annotations/panoptic_{split}2017.json", "panoptic_dir": "annotations/panoptic_{split}2017",
             "images": "{split}2017", "split_dirs": {}, "verify_images": True}

  def _fmt(self, key: str, split: str) -> str:
    return self.opts[key].format(split=split, split_dir=self.opts["split_dirs"].get(split, split))

  def scan(self, raw_dir, split, issues):
    ann_file = os.path.join(raw_dir, self._fmt("annotations", split))
    data = load_json(ann_file)
    images = {int(img["id"]): img for img in data.get("images", [])}
    category_ids = {c["id"] for c in data.get("categories", [])}
    anns = {}
    for ann in data.get("annotations", []):
      if ann.get("image_id") not in images:
        issues.drop("unknown_image", f"{os.path.basename(ann_file)}: panoptic annotation {ann.get('file_name')} "
                                     f"refers to image {ann.get('image_id')}")
        continue
      anns[ann["image_id"]] = ann
    items = []
    for image_id in sorted(images):
      item = _image_item(images[image_id])
      item["image_root"] = os.path.join(raw_dir, self._fmt("images", split))
      item["panoptic_root"] = os.path.join(raw_dir, self._fmt("panoptic_dir", split))
      item["annotation"] = anns.get(image_id)
      item["category_ids"] = sorted(category_ids)
      items.append(item)
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    return base.Scan({"task": "panoptic", "categories": cats}, items)

  def build(self, item, raw_dir, issues):
    data, _, _ = base.read_image(item["image_root"], item["file_name"], (item["height"], item["width"]),
                                 verify=self.opts["verify_images"])
    ann = item["annotation"]
    if ann is None:
      raise base.SkipExample("missing_annotation", f"image {item['id']} has no panoptic annotation")
    png_path = os.path.join(item["panoptic_root"], ann["file_name"])
    png = base.read_bytes(png_path, "panoptic PNG")
    try:
      ids = schema.decode_panoptic_png(png)
    except Exception as e:  # PIL errors
      raise base.SkipExample("unreadable_annotation", f"{png_path}: {e}") from e
    if ids.shape != (item["height"], item["width"]):
      raise base.SkipExample("size_mismatch", f"{png_path} is {ids.shape}, the image {item['height']}x{item['width']}")
    present = set(np.unique(ids).tolist())
    known = set(item["category_ids"])
    cols = {c: [] for c in schema.SEGMENT_COLUMNS}
    for seg in ann.get("segments_info", []):
      what = f"{ann['file_name']} segment {seg.get('id')}"
      if seg.get("category_id") not in known:
        issues.drop("unknown_category", f"{what}: category {seg.get('category_id')}")
        continue
      if seg.get("id") not in present or seg.get("id") == 0:
        issues.drop("invalid_segment", f"{what}: id not present in the PNG")
        continue
      mask = ids == seg["id"]
      box = seg.get("bbox") or base.mask_box(mask)
      box = base.clean_box(box, item["height"], item["width"], issues, what)
      if box is None:
        continue
      cols["id"].append(int(seg["id"]))
      cols["category_id"].append(int(seg["category_id"]))
      cols["iscrowd"].append(int(bool(seg.get("iscrowd", 0))))
      cols["bbox"].append(box)
      cols["area"].append(float(seg.get("area", int(mask.sum()))))
    record = _record(item, data)
    record["panoptic"] = {"png": png, "segments": cols}
    return record


@base.register("ade20k_panoptic")
class Ade20kPanoptic(CocoPanoptic):
  """ADE20K panoptic (150 categories: 100 things, 50 stuff), detectron2's prepared layout."""
  description = "ADE20K panoptic (ade20k_panoptic_{split}.json + PNGs + images/{training,validation}/)"
  options = {"annotations": "ade20k_panoptic_{split}.json", "panoptic_dir": "ade20k_panoptic_{split}",
             "images": "images/{split_dir}", "split_dirs": {"train": "training", "val": "validation"},
             "verify_images": True}


@base.register("coco_captions")
class CocoCaptions(base.Preparer):
  """COCO 2014 captions (Talk2DINO training): images with their ~5 captions."""
  description = "COCO 2014 captions (annotations/captions_{split}2014.json + {split}2014/)"
  splits = ("train", "val")
  options = {"annotations": "annotations/captions_{split}2014.json", "images": "{split}2014",
             "verify_images": True}

  def scan(self, raw_dir, split, issues):
    ann_file = os.path.join(raw_dir, self.opts["annotations"].format(split=split))
    data = load_json(ann_file)
    images = {int(img["id"]): img for img in data.get("images", [])}
    by_image = _group_by_image(data.get("annotations", []), images, None, issues, os.path.basename(ann_file))
    items = []
    for image_id in sorted(images):
      item = _image_item(images[image_id])
      item["image_root"] = os.path.join(raw_dir, self.opts["images"].format(split=split))
      item["captions"] = [(int(a["id"]), str(a.get("caption", ""))) for a in by_image.get(image_id, [])]
      items.append(item)
    return base.Scan({"task": "captions"}, items)

  def build(self, item, raw_dir, issues):
    data, _, _ = base.read_image(item["image_root"], item["file_name"], (item["height"], item["width"]),
                                 verify=self.opts["verify_images"])
    record = _record(item, data)
    record["captions"] = {"id": [c[0] for c in item["captions"]], "text": [c[1] for c in item["captions"]]}
    return record


__all__ = ["CocoInstances", "Lvis", "CocoPanoptic", "Ade20kPanoptic", "CocoCaptions", "build_instances", "load_json"]
