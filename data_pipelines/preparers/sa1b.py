"""SA-1B (Segment Anything 1B): per-image JSON + JPEG, read straight from its tar shards.

Raw layout: `--raw` holds the downloaded shards `sa_000000.tar`, `sa_000001.tar`, ... (each a flat
tar of `sa_<n>.jpg` + `sa_<n>.json`), and/or already extracted folders with the same file pairs.
SA-1B has no official split: everything is "train"; the `tars` option (a glob) selects shards.

Each JSON is {"image": {image_id, width, height, file_name}, "annotations": [{id, segmentation
(compressed RLE), bbox, area, predicted_iou, stability_score, point_coords, crop_box}]}. All masks
get category 1 ("object"), as DINOv trains on them. Per-instance predicted_iou, stability_score and
point_coords are kept in the record's `extra`, aligned with the kept instances.
"""
import glob
import json
import os
import tarfile

from dinoseg.data_pipelines import schema
from dinoseg.data_pipelines.preparers import base
from dinoseg.data_pipelines.preparers.coco import build_instances
from dinoseg.errors import UserFileNotFoundError, UserValueError


def _read_range(path: str, offset: int, size: int) -> bytes:
  with open(path, "rb") as f:
    f.seek(offset)
    data = f.read(size)
  if len(data) != size:
    raise base.SkipExample("missing_file", f"{path} is truncated at byte {offset + len(data)}")
  return data


@base.register("sa1b")
class Sa1b(base.Preparer):
  """SA-1B masks (class-agnostic), from tar shards or extracted folders."""
  description = "SA-1B (sa_*.tar shards of sa_<n>.jpg + sa_<n>.json, or extracted folders)"
  splits = ("train",)
  options = {"tars": "sa_*.tar", "folders": "*", "verify_images": True}

  def scan(self, raw_dir, split, issues):
    if split != "train":
      raise UserValueError(f"SA-1B has only the 'train' split, got {split!r}")
    items = []
    for tar_path in sorted(glob.glob(os.path.join(raw_dir, self.opts["tars"]))):
      members = {}
      try:
        with tarfile.open(tar_path, "r:") as tar:
          for info in tar:
            if info.isfile():
              members[os.path.basename(info.name)] = (info.offset_data, info.size)
      except (tarfile.TarError, OSError) as e:
        raise UserValueError(f"SA-1B shard {tar_path} is not a readable (uncompressed) tar: {e}") from e
      items.extend(self._pairs(members, issues, tar_path, tar=True))
    for folder in sorted(glob.glob(os.path.join(raw_dir, self.opts["folders"]))):
      if os.path.isdir(folder):
        members = {name: os.path.join(folder, name) for name in os.listdir(folder)}
        items.extend(self._pairs(members, issues, folder, tar=False))
    if not items:
      raise UserFileNotFoundError(f"no SA-1B images (sa_*.tar shards or folders of sa_<n>.jpg/.json) under {raw_dir}")
    return base.Scan({"task": "instance", "categories": [{"id": 1, "name": "object"}]}, items)

  def _pairs(self, members: dict, issues, container: str, tar: bool) -> list[dict]:
    items = []
    for name in sorted(members):
      stem, ext = os.path.splitext(name)
      if ext.lower() != ".jpg":
        continue
      if stem + ".json" not in members:
        issues.skip("missing_annotation", f"{container}: {name} has no {stem}.json")
        continue
      items.append({"container": container, "tar": tar, "file_name": name, "image": members[name],
                    "json": members[stem + ".json"]})
    return items

  def item_key(self, item):
    return f"{os.path.basename(item['container'])}/{item['file_name']}"

  def _read(self, item, key):
    if item["tar"]:
      return _read_range(item["container"], *item[key])
    return base.read_bytes(item[key], key)

  def build(self, item, raw_dir, issues):
    try:
      meta = json.loads(self._read(item, "json"))
      info = meta["image"]
      anns = meta.get("annotations", [])
      height, width = int(info["height"]), int(info["width"])
    except (ValueError, KeyError, TypeError) as e:
      raise base.SkipExample("unreadable_annotation", f"{self.item_key(item)}: {e}") from e
    data = self._read(item, "image")
    base.check_image(data, self.item_key(item), (height, width), verify=self.opts["verify_images"])
    for ann in anns:
      ann.setdefault("category_id", 1)
      ann.setdefault("iscrowd", 0)
    where = self.item_key(item)
    instances = build_instances(anns, height, width, issues, where)
    kept = {i: a for a in anns for i in [a.get("id")]}
    extra = {"predicted_iou": [], "stability_score": [], "point_coords": []}
    for ann_id in instances["id"]:
      ann = kept.get(ann_id, {})
      extra["predicted_iou"].append(float(ann.get("predicted_iou", 0.0)))
      extra["stability_score"].append(float(ann.get("stability_score", 0.0)))
      extra["point_coords"].append([[float(v) for v in p] for p in ann.get("point_coords", [])])
    return {"schema": schema.SCHEMA_VERSION, "kind": "image", "id": int(info.get("image_id", 0)),
            "file_name": info.get("file_name", item["file_name"]), "height": height, "width": width,
            "image": data, "instances": instances, "extra": extra}


__all__ = ["Sa1b"]
