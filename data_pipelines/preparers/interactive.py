"""Interactive segmentation sets (one object per image): DAVIS-345 and HQSeg-44K.

Raw layouts (relative to `--raw`), as SegNext reads them:

  davis345   img/<name>.<ext> (all files, sorted), gt/<name>.png
  hqseg44k   train: DIS5K/DIS-TR/{im,gt}, thin_object_detection/ThinObject5K/{images_train,masks_train},
                    cascade_psp/{fss_all,DUTS-TR,DUTS-TE,ecssd,MSRA_10K} (images and masks side by side)
             val:   DIS5K/DIS-VD/{im,gt}, thin_object_detection/ThinObject5K/{images_test,masks_test},
                    thin_object_detection/COIFT/{images,masks}, thin_object_detection/HRSOD/{images,masks_max255}
             (only *.jpg images; the mask is <stem>.png in the mask folder)

The object mask is "any channel > 0" of the mask PNG (SegNext: max over BGR channels > 0); it is
stored as one instance (category 1) with its RLE and tight box. The record's `extra.subset` names
the source folder.
"""
import glob
import io
import os

import numpy as np
from PIL import Image

from dinoseg.data_pipelines import schema
from dinoseg.data_pipelines.preparers import base
from dinoseg.errors import UserFileNotFoundError, UserValueError

HQSEG_SUBSETS = {
    "train": [("DIS5K-TR", "DIS5K/DIS-TR/im", "DIS5K/DIS-TR/gt"),
              ("ThinObject5k-TR", "thin_object_detection/ThinObject5K/images_train",
               "thin_object_detection/ThinObject5K/masks_train"),
              ("FSS", "cascade_psp/fss_all", "cascade_psp/fss_all"),
              ("DUTS-TR", "cascade_psp/DUTS-TR", "cascade_psp/DUTS-TR"),
              ("DUTS-TE", "cascade_psp/DUTS-TE", "cascade_psp/DUTS-TE"),
              ("ECSSD", "cascade_psp/ecssd", "cascade_psp/ecssd"),
              ("MSRA10K", "cascade_psp/MSRA_10K", "cascade_psp/MSRA_10K")],
    "val": [("DIS5K-VD", "DIS5K/DIS-VD/im", "DIS5K/DIS-VD/gt"),
            ("ThinObject5k-TE", "thin_object_detection/ThinObject5K/images_test",
             "thin_object_detection/ThinObject5K/masks_test"),
            ("COIFT", "thin_object_detection/COIFT/images", "thin_object_detection/COIFT/masks"),
            ("HRSOD", "thin_object_detection/HRSOD/images", "thin_object_detection/HRSOD/masks_max255")],
}


def binary_mask_from_png(data: bytes) -> np.ndarray:
  """Mask PNG bytes -> (H, W) uint8 in {0, 1}: 1 where any colour channel is > 0."""
  with Image.open(io.BytesIO(data)) as image:
    if image.mode in ("I;16", "I;16B", "I", "F"):
      arr = np.asarray(image)
      return (arr > 0).astype(np.uint8)
    rgb = np.asarray(image.convert("RGB"))
  return (rgb.max(axis=2) > 0).astype(np.uint8)


class SingleObject(base.Preparer):
  """Image + single-object mask pairs."""
  options = {"verify_images": True}

  def pairs(self, raw_dir: str, split: str) -> list[tuple[str, str, str]]:
    """[(subset, image path, mask path)] relative to raw_dir."""
    raise NotImplementedError

  def scan(self, raw_dir, split, issues):
    items = [{"id": i, "subset": s, "file_name": im, "mask": m}
             for i, (s, im, m) in enumerate(self.pairs(raw_dir, split))]
    if not items:
      raise UserFileNotFoundError(f"no {self.name} images for split {split!r} under {raw_dir}")
    return base.Scan({"task": "interactive", "categories": [{"id": 1, "name": "object"}]}, items)

  def build(self, item, raw_dir, issues):
    if item["mask"] is None:
      raise base.SkipExample("missing_annotation", f"{item['file_name']} has no mask file")
    data, h, w = base.read_image(raw_dir, item["file_name"], verify=self.opts["verify_images"])
    path = os.path.join(raw_dir, item["mask"])
    png = base.read_bytes(path, "mask PNG")
    try:
      mask = binary_mask_from_png(png)
    except Exception as e:  # PIL errors
      raise base.SkipExample("unreadable_annotation", f"{path}: {e}") from e
    if mask.shape != (h, w):
      raise base.SkipExample("size_mismatch", f"{path} is {mask.shape[0]}x{mask.shape[1]}, the image {h}x{w}")
    record = {"schema": schema.SCHEMA_VERSION, "kind": "image", "id": item["id"], "file_name": item["file_name"],
              "height": h, "width": w, "image": data, "extra": {"subset": item["subset"]}}
    cols = {c: [] for c in schema.INSTANCE_COLUMNS}
    area = int(mask.sum())
    if area == 0:
      issues.drop("empty_mask", f"{item['mask']}: the object mask is empty")
    else:
      cols["id"].append(1)
      cols["category_id"].append(1)
      cols["bbox"].append(base.mask_box(mask))
      cols["iscrowd"].append(0)
      cols["area"].append(float(area))
      cols["rle"].append(schema.encode_mask(mask))
    record["instances"] = cols
    return record

  def item_key(self, item):
    return item["file_name"]


@base.register("davis345")
class Davis345(SingleObject):
  """DAVIS-345 (RITM's interactive test set: 345 frames from DAVIS, one object each)."""
  description = "DAVIS-345 interactive (img/ + gt/)"
  splits = ("val",)

  def pairs(self, raw_dir, split):
    images = sorted(p for p in glob.glob(os.path.join(raw_dir, "img", "*.*")) if os.path.isfile(p))
    masks = {os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(os.path.join(raw_dir, "gt", "*.*"))}
    out = []
    for p in images:
      stem = os.path.basename(p).split(".")[0]
      m = masks.get(stem)
      out.append(("DAVIS345", os.path.relpath(p, raw_dir), os.path.relpath(m, raw_dir) if m else None))
    return out


@base.register("hqseg44k")
class HqSeg44k(SingleObject):
  """HQSeg-44K (SAM-HQ training data; 44,320 train / 1,537 val images)."""
  description = "HQSeg-44K (DIS5K, ThinObject5K, COIFT, HRSOD, cascade_psp folders)"
  splits = ("train", "val")

  def pairs(self, raw_dir, split):
    if split not in HQSEG_SUBSETS:
      raise UserValueError(f"HQSeg-44K splits are {sorted(HQSEG_SUBSETS)}, got {split!r}")
    out = []
    for subset, im_dir, gt_dir in HQSEG_SUBSETS[split]:
      for p in sorted(glob.glob(os.path.join(raw_dir, im_dir, "*.jpg"))):
        stem = os.path.splitext(os.path.basename(p))[0]
        out.append((subset, os.path.join(im_dir, stem + ".jpg"), os.path.join(gt_dir, stem + ".png")))
    return out


__all__ = ["Davis345", "HqSeg44k", "binary_mask_from_png", "HQSEG_SUBSETS"]
