"""Every converter on synthetic raw data round-trips: record -> decoded example equals the source annotations."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from dinoseg.data_pipelines import dataset as dataset_lib
from dinoseg.data_pipelines import schema, writer
from dinoseg.data_pipelines.preparers import base


def _records(path, split):
  view = dataset_lib.open_dataset(path).split(split)
  return [(view.record(i), view[i]) for i in range(len(view))]


def _png(path):
  return np.asarray(Image.open(path))


def _rgb2id(path):
  rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _quiet_coco(path):
  import contextlib  # noqa: PLC0415
  with contextlib.redirect_stdout(io.StringIO()):
    return COCO(str(path))


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_instances_round_trip_and_bad_data(datasets, split):
  raw, out = datasets.raw("coco"), datasets.prepared("coco")
  coco = _quiet_coco(raw / "annotations" / f"instances_{split}2017.json")
  expected = datasets.summaries["coco"]["expected_issues"][split]
  bad_anns = set(expected["annotation_ids"])
  records = _records(out, split)
  good_images = [i for i in sorted(coco.imgs) if i not in expected["image_ids"]]
  assert [r["id"] for r, _ in records] == good_images
  compared = 0
  for record, ex in records:
    info = coco.imgs[record["id"]]
    assert record["image"] == (raw / f"{split}2017" / info["file_name"]).read_bytes()  # bytes kept as they are
    assert ex["image"].shape == (info["height"], info["width"], 3)
    anns = [a for a in coco.imgToAnns[record["id"]] if a["id"] not in bad_anns]
    inst = ex["instances"]
    assert inst["id"].tolist() == [a["id"] for a in anns]
    assert inst["category_id"].tolist() == [a["category_id"] for a in anns]
    assert inst["is_crowd"].tolist() == [bool(a["iscrowd"]) for a in anns]
    np.testing.assert_allclose(inst["boxes_xyxy"], schema.xywh_to_xyxy([a["bbox"] for a in anns]), atol=1e-4)
    for k, a in enumerate(anns):
      np.testing.assert_array_equal(inst["masks"][k], coco.annToMask(a))
      compared += 1
  assert compared > 5
  forms = {type(a["segmentation"]).__name__ + (type(a["segmentation"].get("counts")).__name__
                                              if isinstance(a["segmentation"], dict) else "")
           for a in coco.dataset["annotations"] if a["id"] not in bad_anns}
  assert forms >= {"list", "dictstr"}  # polygons and compressed RLE (+ count-list crowds when drawn)
  counts = datasets.manifests["coco"]["splits"][split]["issues"]["counts"]
  assert counts["skipped_examples"] == expected["skipped_examples"]
  assert counts["dropped_annotations"] == expected["dropped_annotations"]
  samples = datasets.manifests["coco"]["splits"][split]["issues"]["samples"]
  assert set(samples["dropped_annotations"]) == set(expected["dropped_annotations"])


def test_coco_crowd_regions_are_uncompressed_rle(datasets):
  # The default synthetic COCO layout draws crowds; they come back as masks with is_crowd set.
  raw, out = datasets.raw("coco"), datasets.prepared("coco")
  anns = json.loads((raw / "annotations" / "instances_train2017.json").read_text())["annotations"]
  anns += json.loads((raw / "annotations" / "instances_val2017.json").read_text())["annotations"]
  crowds = [a for a in anns if a["iscrowd"]]
  assert crowds
  for a in crowds:
    assert isinstance(a["segmentation"]["counts"], list)
  n = sum(int(ex["instances"]["is_crowd"].sum()) for split in ("train", "val") for _, ex in _records(out, split))
  assert n == len(crowds)


def test_lvis_round_trip(datasets):
  raw, out = datasets.raw("lvis"), datasets.prepared("lvis")
  data = json.loads((raw / "lvis_v1_val.json").read_text())
  coco = _quiet_coco(raw / "lvis_v1_val.json")
  for record, ex in _records(out, "val"):
    img = coco.imgs[record["id"]]
    assert record["file_name"] == "/".join(img["coco_url"].split("/")[-2:])
    assert ex["extra"]["neg_category_ids"] == img["neg_category_ids"]
    assert ex["extra"]["not_exhaustive_category_ids"] == img["not_exhaustive_category_ids"]
    anns = coco.imgToAnns[record["id"]]
    assert ex["instances"]["category_id"].tolist() == [a["category_id"] for a in anns]
    for k, a in enumerate(anns):
      np.testing.assert_array_equal(ex["instances"]["masks"][k], coco.annToMask(a))
  cats = dataset_lib.open_dataset(out).categories
  assert [c["frequency"] for c in cats] == [c["frequency"] for c in sorted(data["categories"], key=lambda c: c["id"])]


@pytest.mark.parametrize("layout", ["coco_panoptic", "ade20k_panoptic"])
def test_panoptic_round_trip(datasets, layout):
  raw, out = datasets.raw(layout), datasets.prepared(layout)
  ann_file = raw / ("annotations/panoptic_val2017.json" if layout == "coco_panoptic" else "ade20k_panoptic_val.json")
  png_dir = ann_file.with_suffix("") if layout == "coco_panoptic" else raw / "ade20k_panoptic_val"
  data = json.loads(ann_file.read_text())
  anns = {a["image_id"]: a for a in data["annotations"]}
  records = _records(out, "val")
  assert len(records) == len(data["images"])
  for record, ex in records:
    ann = anns[record["id"]]
    np.testing.assert_array_equal(ex["panoptic"]["pan_seg"], _rgb2id(png_dir / ann["file_name"]))
    segs = ex["panoptic"]["segments"]
    assert segs["id"].tolist() == [s["id"] for s in ann["segments_info"]]
    assert segs["category_id"].tolist() == [s["category_id"] for s in ann["segments_info"]]
    assert segs["is_crowd"].tolist() == [bool(s["iscrowd"]) for s in ann["segments_info"]]
    assert record["panoptic"]["png"] == (png_dir / ann["file_name"]).read_bytes()
  assert {c["isthing"] for c in dataset_lib.open_dataset(out).categories} == {0, 1}


@pytest.mark.parametrize("layout,pairs", [
    ("ade20k", lambda raw: [(p, raw / "annotations/validation" / (p.stem + ".png"))
                            for p in sorted((raw / "images/validation").glob("*.jpg"))]),
    ("voc", lambda raw: [(raw / f"JPEGImages/{i}.jpg", raw / f"SegmentationClass/{i}.png")
                         for i in (raw / "ImageSets/Segmentation/val.txt").read_text().split()]),
    ("pascal_context", lambda raw: [(raw / f"JPEGImages/{i}.jpg", raw / f"SegmentationClassContext/{i}.png")
                                    for i in (raw / "ImageSets/SegmentationContext/val.txt").read_text().split()]),
    ("cityscapes", lambda raw: [(p, raw / "gtFine/val" / p.parent.name /
                                 p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
                                for p in sorted((raw / "leftImg8bit/val").glob("*/*_leftImg8bit.png"))]),
])
def test_semantic_round_trip(datasets, layout, pairs):
  raw, out = datasets.raw(layout), datasets.prepared(layout)
  records = _records(out, "val")
  expected = pairs(raw)
  assert len(records) == len(expected)
  for (record, ex), (image_path, label_path) in zip(records, expected):
    assert record["image"] == image_path.read_bytes()
    assert record["sem_seg"]["png"] == label_path.read_bytes()
    np.testing.assert_array_equal(ex["sem_seg"], _png(label_path))
  ds = dataset_lib.open_dataset(out)
  lut = ds.label_map()
  assert lut.shape == (256,) and lut[255] == 255
  if layout == "voc":
    assert ds.label_map("voc21")[0] == 0 and ds.label_map("voc20")[0] == 255 and ds.label_map("voc20")[1] == 0
    assert ds.num_classes("voc21") == 21 and ds.num_classes("voc20") == 20
  if layout == "cityscapes":
    assert lut[7] == 0 and lut[26] == 13 and lut[0] == 255 and ds.num_classes() == 19
  if layout == "ade20k":
    assert lut[0] == 255 and lut[1] == 0 and ds.num_classes() == 150


def test_captions_round_trip(datasets):
  raw, out = datasets.raw("coco_captions"), datasets.prepared("coco_captions")
  data = json.loads((raw / "annotations/captions_train2014.json").read_text())
  by_image = {}
  for a in data["annotations"]:
    by_image.setdefault(a["image_id"], []).append(a)
  for record, ex in _records(out, "train"):
    anns = by_image[record["id"]]
    assert ex["captions"]["text"] == [a["caption"] for a in anns]
    assert ex["captions"]["id"].tolist() == [a["id"] for a in anns]


@pytest.mark.parametrize("layout,ann_path,image_dir", [
    ("ytvis_2019", "valid.json", "valid/JPEGImages"),
    ("ytvis_2021", "valid/instances.json", "valid/JPEGImages"),
    ("lvvis", "val_instances.json", "val/JPEGImages"),
])
def test_video_round_trip(datasets, layout, ann_path, image_dir):
  raw, out = datasets.raw(layout), datasets.prepared(layout)
  data = json.loads((raw / ann_path).read_text())
  videos = {v["id"]: v for v in data["videos"]}
  records = _records(out, "val")
  assert len(records) == len(videos)
  absent = 0
  for record, ex in records:
    v = videos[record["id"]]
    assert [bytes(b) for b in record["frames"]["image"]] == [(raw / image_dir / n).read_bytes()
                                                             for n in v["file_names"]]
    assert ex["frames"].shape == (len(v["file_names"]), v["height"], v["width"], 3)
    anns = [a for a in data["annotations"] if a["video_id"] == v["id"]]
    tracks = ex["tracks"]
    assert tracks["id"].tolist() == [a["id"] for a in anns]
    assert tracks["category_id"].tolist() == [a["category_id"] for a in anns]
    for t, a in enumerate(anns):
      for f, seg in enumerate(a["segmentations"]):
        assert tracks["present"][t, f] == (seg is not None)
        if seg is None:
          absent += 1
          assert not tracks["masks"][t, f].any()
        else:
          rle = coco_mask.frPyObjects(seg, *seg["size"])
          np.testing.assert_array_equal(tracks["masks"][t, f], coco_mask.decode(rle))
  if layout == "lvvis":
    assert "partition" in dataset_lib.open_dataset(out).categories[0]
  assert absent > 0  # objects entering late are absent in early frames


def test_sa1b_round_trip(datasets):
  raw, out = datasets.raw("sa1b"), datasets.prepared("sa1b")
  source = {}
  for tar_path in sorted(raw.glob("sa_*.tar")):
    with tarfile.open(tar_path) as tar:
      for m in tar.getmembers():
        source[m.name] = tar.extractfile(m).read()
  records = _records(out, "train")
  assert len(records) == sum(name.endswith(".jpg") for name in source)
  for record, ex in records:
    meta = json.loads(source[record["file_name"].replace(".jpg", ".json")])
    assert record["image"] == source[record["file_name"]]
    anns = meta["annotations"]
    assert ex["instances"]["category_id"].tolist() == [1] * len(anns)
    for k, a in enumerate(anns):
      np.testing.assert_array_equal(ex["instances"]["masks"][k], coco_mask.decode(a["segmentation"]))
    assert ex["extra"]["predicted_iou"] == pytest.approx([a["predicted_iou"] for a in anns])
    assert ex["extra"]["point_coords"] == [a["point_coords"] for a in anns]


@pytest.mark.parametrize("layout,split", [("davis345", "val"), ("hqseg44k", "train"), ("hqseg44k", "val")])
def test_interactive_round_trip(datasets, layout, split):
  raw, out = datasets.raw(layout), datasets.prepared(layout)
  records = _records(out, split)
  assert records
  for record, ex in records:
    image_path = raw / record["file_name"]
    assert record["image"] == image_path.read_bytes()
    if layout == "davis345":
      mask_path = raw / "gt" / (image_path.stem + ".png")
    else:
      im_dir = os.path.dirname(record["file_name"])
      from dinoseg.data_pipelines.preparers.interactive import HQSEG_SUBSETS  # noqa: PLC0415
      gt_dir = {im: gt for _, im, gt in HQSEG_SUBSETS[split]}[im_dir]
      mask_path = raw / gt_dir / (image_path.stem + ".png")
    np.testing.assert_array_equal(ex["instances"]["masks"][0], (_png(mask_path) > 0).astype(np.uint8))
  if layout == "hqseg44k":
    first = {"train": "DIS5K-TR", "val": "DIS5K-VD"}[split]
    assert first in {r["extra"]["subset"] for r, _ in records}


def test_unknown_preparer_and_option_are_value_errors():
  with pytest.raises(ValueError, match="unknown dataset"):
    base.get("no_such_dataset")
  with pytest.raises(ValueError, match="unknown options"):
    base.get("coco_instances", no_such_option=1)


def test_missing_annotation_file_is_a_clear_error(tmp_path):
  (tmp_path / "raw").mkdir()
  with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
    writer.prepare("coco_instances", str(tmp_path / "raw"), str(tmp_path / "out"), splits=["train"], progress=False)


def test_ground_truth_helpers(datasets):
  raw, out = datasets.raw("coco"), datasets.prepared("coco")
  ds = dataset_lib.open_dataset(out)
  gt = ds.coco_ground_truth("val")
  coco = _quiet_coco(raw / "annotations" / "instances_val2017.json")
  bad = set(datasets.summaries["coco"]["expected_issues"]["val"]["annotation_ids"])
  good = [a for a in coco.dataset["annotations"] if a["id"] not in bad]
  assert len(gt["annotations"]) == len(good)
  for mine, theirs in zip(sorted(gt["annotations"], key=lambda a: (a["image_id"], a["area"])),
                          sorted(good, key=lambda a: (a["image_id"], a["area"]))):
    assert mine["category_id"] == theirs["category_id"] and mine["iscrowd"] == theirs["iscrowd"]
    np.testing.assert_array_equal(coco_mask.decode(mine["segmentation"]), coco.annToMask(theirs))
  sem = dataset_lib.open_dataset(datasets.prepared("voc"))
  image, labels = next(sem.semantic_pairs("val", "voc20"))
  raw_labels = _png(sorted((datasets.raw("voc") / "SegmentationClass").glob("*val*.png"))[0])
  np.testing.assert_array_equal(labels, np.where((raw_labels == 0) | (raw_labels == 255), 255, raw_labels - 1))


def _ovis_raw(root):
  """A tiny OVIS layout ({train,valid}/<video>/<frame>.jpg, annotations/annotations_{train,valid}.json),
  rearranged from the synthetic YouTube-VIS 2019 layout (same JSON format, no JPEGImages folder)."""
  import shutil  # noqa: PLC0415
  from dinoseg.data_pipelines import synth  # noqa: PLC0415
  src = root / "ytvis"
  synth.synthesize("ytvis_2019", str(src), num_images=2, image_size=(40, 56), num_frames=3, max_objects=3)
  raw = root / "ovis"
  (raw / "annotations").mkdir(parents=True)
  for split_dir in ("train", "valid"):
    shutil.copytree(src / split_dir / "JPEGImages", raw / split_dir)
    data = json.loads((src / f"{split_dir}.json").read_text())
    for c in data["categories"]:
      c["name"] = c["name"].capitalize()  # OVIS spells its names capitalized; no partition
    (raw / "annotations" / f"annotations_{split_dir}.json").write_text(json.dumps(data))
  return raw


def test_ovis_round_trip(tmp_path):
  raw = _ovis_raw(tmp_path)
  out = tmp_path / "prepared"
  writer.prepare("ovis", str(raw), str(out), num_shards=1, progress=False)
  for split, split_dir in (("train", "train"), ("val", "valid")):
    data = json.loads((raw / "annotations" / f"annotations_{split_dir}.json").read_text())
    videos = {v["id"]: v for v in data["videos"]}
    records = _records(out, split)
    assert [r["id"] for r, _ in records] == sorted(videos)
    for record, ex in records:
      v = videos[record["id"]]
      assert [bytes(b) for b in record["frames"]["image"]] == [(raw / split_dir / n).read_bytes()
                                                               for n in v["file_names"]]
      anns = [a for a in data["annotations"] if a["video_id"] == v["id"]]
      assert ex["tracks"]["id"].tolist() == [a["id"] for a in anns]
      assert ex["tracks"]["category_id"].tolist() == [a["category_id"] for a in anns]
      for t, a in enumerate(anns):
        for f, seg in enumerate(a["segmentations"]):
          assert ex["tracks"]["present"][t, f] == (seg is not None)
          if seg is not None:
            np.testing.assert_array_equal(ex["tracks"]["masks"][t, f],
                                          coco_mask.decode(coco_mask.frPyObjects(seg, *seg["size"])))
  cats = dataset_lib.open_dataset(out).categories
  assert [c["name"] for c in cats] == [c["name"] for c in data["categories"]]
  # OV2Seg's layout names the file annotation_valid.json at the root: an option.
  (raw / "annotation_valid.json").write_text((raw / "annotations" / "annotations_valid.json").read_text())
  other = tmp_path / "prepared_ov2seg"
  writer.prepare("ovis", str(raw), str(other), splits=["val"], options={"annotations": "annotation_valid.json"},
                 num_shards=1, progress=False)
  assert [r["id"] for r, _ in _records(other, "val")] == sorted(videos)


@pytest.mark.parametrize("layout,ann_path", [("lvvis", "val_instances.json"), ("ytvis_2019", "valid.json")])
def test_video_records_keep_what_video_ap_needs(datasets, layout, ann_path):
  """Ground truth rebuilt from prepared records evaluates like the original JSON (ids, categories, partitions)."""
  from dinoseg.evaluation import video_ap  # noqa: PLC0415
  from dinoseg.ops.masks import rle_encode  # noqa: PLC0415
  raw, out = datasets.raw(layout), datasets.prepared(layout)
  original = json.loads((raw / ann_path).read_text())
  ds = dataset_lib.open_dataset(out)
  rebuilt = video_ap.ground_truth_from_records([r for r, _ in _records(out, "val")], ds.categories)
  # Predictions: every track, shifted by one pixel in odd frames, with scores that tie in pairs.
  results = []
  for n, a in enumerate(original["annotations"]):
    segs = []
    for f, seg in enumerate(a["segmentations"]):
      if seg is None:
        segs.append(None)
        continue
      m = coco_mask.decode(coco_mask.frPyObjects(seg, *seg["size"]))
      segs.append(rle_encode(np.roll(m, f % 2, axis=1)))
    results.append({"video_id": a["video_id"], "category_id": a["category_id"], "score": 1.0 - (n // 2) * 0.1,
                    "segmentations": segs})
  want = video_ap.evaluate_video_ap(original, results)["metrics"]
  got = video_ap.evaluate_video_ap(rebuilt, results)["metrics"]
  assert got == want
  assert ("APb" in got) == (layout == "lvvis") and want["AP"] > 0
