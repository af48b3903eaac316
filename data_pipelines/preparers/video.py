"""Video instance segmentation: YouTube-VIS 2019 / 2021, LV-VIS and OVIS (YouTube-VIS JSON format).

JSON: videos [{id, file_names, height, width, length}], annotations [{id, video_id, category_id,
segmentations (per frame: RLE, polygons or null), bboxes, areas, iscrowd}], categories [{id, name,
(LV-VIS) partition}]. Raw layouts (relative to `--raw`; both paths are options):

  ytvis_2019   {train,valid}/JPEGImages/<video>/<frame>.jpg, {train,valid}.json
  ytvis_2021   {train,valid}/JPEGImages/<video>/<frame>.jpg, {train,valid}/instances.json
  lvvis        {train,val}/JPEGImages/<video>/<frame>.jpg, {train,val}_instances.json
  ovis         {train,valid}/<video>/<frame>.jpg, annotations/annotations_{train,valid}.json

A record holds every frame's bytes and one row per track (object) with a per-frame RLE (None where
the object is absent). Windows path separators in file_names are normalized (LV-VIS has some).
"""
import collections
import os

from dinoseg.data_pipelines import schema
from dinoseg.data_pipelines.preparers import base
from dinoseg.data_pipelines.preparers.coco import load_json


class VideoInstances(base.Preparer):
  """A YouTube-VIS-format dataset; subclasses set the default paths."""
  splits = ("train", "val")
  options = {"annotations": "{split_dir}.json", "images": "{split_dir}/JPEGImages",
             "split_dirs": {"train": "train", "val": "valid"}, "verify_images": True}

  def _fmt(self, key, split):
    return self.opts[key].format(split=split, split_dir=self.opts["split_dirs"].get(split, split))

  def scan(self, raw_dir, split, issues):
    ann_file = os.path.join(raw_dir, self._fmt("annotations", split))
    data = load_json(ann_file)
    videos = {int(v["id"]): v for v in data.get("videos", [])}
    category_ids = {c["id"] for c in data.get("categories", [])}
    tracks = collections.defaultdict(list)
    where = os.path.basename(ann_file)
    for ann in data.get("annotations", []) or []:
      if ann.get("video_id") not in videos:
        issues.drop("unknown_video", f"{where}: track {ann.get('id')} refers to video {ann.get('video_id')}")
        continue
      if ann.get("category_id") not in category_ids:
        issues.drop("unknown_category", f"{where}: track {ann.get('id')} has category {ann.get('category_id')}")
        continue
      tracks[ann["video_id"]].append(ann)
    items = []
    for vid in sorted(videos):
      v = videos[vid]
      names = [n.replace("\\", "/") for n in v.get("file_names", [])]
      folder = os.path.dirname(names[0]) if names else str(vid)
      items.append({"id": vid, "file_name": folder, "frames": names, "height": int(v["height"]),
                    "width": int(v["width"]), "tracks": tracks.get(vid, []),
                    "image_root": os.path.join(raw_dir, self._fmt("images", split)),
                    "has_annotations": "annotations" in data})
    cats = sorted(data.get("categories", []), key=lambda c: c["id"])
    return base.Scan({"task": "video", "categories": cats}, items)

  def build(self, item, raw_dir, issues):
    h, w = item["height"], item["width"]
    if not item["frames"]:
      raise base.SkipExample("no_frames", f"video {item['id']} lists no frames")
    images = []
    for name in item["frames"]:
      data, _, _ = base.read_image(item["image_root"], name, (h, w), verify=self.opts["verify_images"])
      images.append(data)
    record = {"schema": schema.SCHEMA_VERSION, "kind": "video", "id": item["id"], "file_name": item["file_name"],
              "height": h, "width": w, "frames": {"file_name": item["frames"], "image": images}}
    if not item["has_annotations"]:
      return record
    cols = {c: [] for c in schema.TRACK_COLUMNS}
    num_frames = len(item["frames"])
    for ann in item["tracks"]:
      what = f"video {item['id']} track {ann.get('id')}"
      segs = list(ann.get("segmentations") or [])
      if len(segs) != num_frames:
        issues.drop("invalid_segment", f"{what}: {len(segs)} segmentations for {num_frames} frames")
        continue
      rles = []
      for f, seg in enumerate(segs):
        if seg is None:
          rles.append(None)
          continue
        try:
          counts = base.segmentation_to_rle(seg, h, w)
        except ValueError as e:
          reason, _, detail = str(e).partition(": ")
          issues.drop(reason, f"{what} frame {f}: {detail}")
          rles.append(None)
          continue
        rles.append(counts)
      if all(r is None for r in rles):
        issues.drop("empty_mask", f"{what}: no frame has a mask")
        continue
      cols["id"].append(int(ann.get("id", len(cols["id"]))))
      cols["category_id"].append(int(ann["category_id"]))
      cols["iscrowd"].append(int(bool(ann.get("iscrowd", 0))))
      cols["rle"].append(rles)
    record["tracks"] = cols
    return record


@base.register("ytvis_2019")
class YouTubeVis2019(VideoInstances):
  """YouTube-VIS 2019 (40 categories)."""
  description = "YouTube-VIS 2019 ({train,valid}/JPEGImages + {train,valid}.json)"


@base.register("ytvis_2021")
class YouTubeVis2021(VideoInstances):
  """YouTube-VIS 2021 (40 categories)."""
  description = "YouTube-VIS 2021 ({train,valid}/JPEGImages + {train,valid}/instances.json)"
  options = {**VideoInstances.options, "annotations": "{split_dir}/instances.json"}


@base.register("lvvis")
class LvVis(VideoInstances):
  """LV-VIS (1196 categories with base/novel `partition`)."""
  description = "LV-VIS ({train,val}/JPEGImages + {train,val}_instances.json)"
  options = {**VideoInstances.options, "annotations": "{split}_instances.json", "images": "{split}/JPEGImages",
             "split_dirs": {}}


@base.register("ovis")
class Ovis(VideoInstances):
  """OVIS, Occluded Video Instance Segmentation (25 categories; valid / test annotations stay on its server).

  Frames sit directly in the split folder (no JPEGImages). OV2Seg's configuration names the file
  `annotation_valid.json` at the dataset root: pass `--option annotations=annotation_valid.json` for that layout.
  """
  description = "OVIS ({train,valid}/<video>/<frame>.jpg + annotations/annotations_{train,valid}.json)"
  options = {**VideoInstances.options, "annotations": "annotations/annotations_{split_dir}.json",
             "images": "{split_dir}"}


__all__ = ["VideoInstances", "YouTubeVis2019", "YouTubeVis2021", "LvVis", "Ovis"]
