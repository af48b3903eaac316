"""The one record schema of every prepared dataset (version 1), and decoding to NumPy.

A record is one image (or one video) with all its annotations, serialized with msgpack (a
stable, language-neutral format; decoding never executes code, unlike pickle). It is a map:

  schema        int, SCHEMA_VERSION
  kind          "image" or "video"
  id            int: the dataset's image id (video id for videos)
  file_name     str: path of the image (video folder) relative to the raw image root
  height, width int: image (frame) size in pixels
  image         bytes: the encoded file exactly as read from disk (never re-encoded)
  instances     (optional) columns, one entry per instance:
                  id [int], category_id [int], bbox [[x, y, w, h]] (pixels, float),
                  iscrowd [0|1], area [float], rle [bytes]: compressed COCO RLE counts of
                  a (height, width) mask
  panoptic      (optional) png: bytes (the panoptic PNG as stored, id = R + 256 G + 256^2 B),
                  segments: columns id, category_id, iscrowd, bbox, area
  sem_seg       (optional) png: bytes (the label PNG as stored; the dataset's label map
                  turns raw values into train ids, see the manifest's `label_maps`)
  captions      (optional) columns id [int], text [str]
  frames        (video) columns file_name [str], image [bytes]
  tracks        (video) columns id, category_id, iscrowd [int] and rle [[bytes | None]]
                  (one entry per frame; None where the object is absent)
  extra         (optional) map of dataset-specific fields (e.g. LVIS negative category ids,
                  SA-1B predicted IoUs and point coords, the HQSeg-44K subset name)

`decode_example` turns a record into NumPy arrays (decoded image, dense masks, boxes in xyxy
pixels, ...) that the transforms consume.
"""
import io
from typing import Any, Mapping

import msgpack
import numpy as np
from PIL import Image, ImageOps
from pycocotools import mask as coco_mask

SCHEMA_VERSION = 1
KINDS = ("image", "video")
INSTANCE_COLUMNS = ("id", "category_id", "bbox", "iscrowd", "area", "rle")
SEGMENT_COLUMNS = ("id", "category_id", "iscrowd", "bbox", "area")
TRACK_COLUMNS = ("id", "category_id", "iscrowd", "rle")


class RecordError(ValueError):
  """A serialized record that does not follow the schema."""


def encode_record(record: Mapping[str, Any]) -> bytes:
  """Validates a record (module docstring) and serializes it with msgpack."""
  validate_record(record)
  return msgpack.packb(dict(record), use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
  """msgpack bytes -> record dict (validated)."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise RecordError(f"a record must be bytes, got {type(data).__name__}")
  try:
    record = msgpack.unpackb(data, raw=False, strict_map_key=False)
  except Exception as e:  # msgpack raises several unrelated types on garbage
    raise RecordError(f"record is not valid msgpack: {e}") from e
  validate_record(record)
  return record


def _columns(name: str, table: Any, columns: tuple[str, ...]) -> int:
  if not isinstance(table, Mapping):
    raise RecordError(f"record[{name!r}] must be a map of columns")
  missing = [c for c in columns if c not in table]
  if missing:
    raise RecordError(f"record[{name!r}] lacks columns {missing}")
  lengths = {c: len(table[c]) for c in columns}
  if len(set(lengths.values())) > 1:
    raise RecordError(f"record[{name!r}] columns have different lengths: {lengths}")
  return next(iter(lengths.values())) if lengths else 0


def validate_record(record: Mapping[str, Any]) -> None:
  """Raises RecordError when `record` does not follow the schema (module docstring)."""
  if not isinstance(record, Mapping):
    raise RecordError(f"a record must be a map, got {type(record).__name__}")
  if record.get("schema") != SCHEMA_VERSION:
    raise RecordError(f"record schema {record.get('schema')!r} is not {SCHEMA_VERSION}; re-prepare the dataset")
  for key in ("kind", "id", "file_name", "height", "width"):
    if key not in record:
      raise RecordError(f"record lacks {key!r}")
  if record["kind"] not in KINDS:
    raise RecordError(f"record kind must be one of {KINDS}, got {record['kind']!r}")
  if int(record["height"]) <= 0 or int(record["width"]) <= 0:
    raise RecordError(f"record size must be positive, got {record['height']}x{record['width']}")
  if record["kind"] == "image":
    if not isinstance(record.get("image"), (bytes, bytearray)):
      raise RecordError("an image record needs the encoded image bytes in 'image'")
    if "instances" in record:
      _columns("instances", record["instances"], INSTANCE_COLUMNS)
    if "panoptic" in record:
      _columns("panoptic.segments", record["panoptic"].get("segments"), SEGMENT_COLUMNS)
    if "captions" in record:
      _columns("captions", record["captions"], ("id", "text"))
  else:
    num_frames = _columns("frames", record.get("frames"), ("file_name", "image"))
    if num_frames == 0:
      raise RecordError("a video record needs at least one frame")
    if "tracks" in record:
      _columns("tracks", record["tracks"], TRACK_COLUMNS)
      for rles in record["tracks"]["rle"]:
        if len(rles) != num_frames:
          raise RecordError(f"every track needs one rle entry per frame ({num_frames}), got {len(rles)}")


# ----------------------------------------------------------------------------- decoding


def decode_image(data: bytes) -> np.ndarray:
  """Encoded image bytes -> (H, W, 3) uint8 RGB (EXIF orientation applied, as detectron2 reads)."""
  with Image.open(io.BytesIO(data)) as image:
    if image.getexif().get(0x0112, 1) != 1:   # only EXIF-rotated files need the (copying) transpose
      image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
      image = image.convert("RGB")
    return np.asarray(image)


def decode_png_labels(data: bytes) -> np.ndarray:
  """A label PNG (grey or palette) -> (H, W) array of its raw values (uint8 or uint16/int32)."""
  with Image.open(io.BytesIO(data)) as image:
    if image.mode in ("L", "P"):
      return np.asarray(image)
    if image.mode in ("I;16", "I;16B", "I"):
      return np.asarray(image).astype(np.int32)
    if image.mode in ("RGB", "RGBA"):
      raise ValueError(f"label PNG has mode {image.mode}; expected a single channel")
    return np.asarray(image.convert("L"))


def decode_panoptic_png(data: bytes) -> np.ndarray:
  """COCO panoptic PNG bytes -> (H, W) int32 segment ids (R + 256 G + 256^2 B)."""
  with Image.open(io.BytesIO(data)) as image:
    rgb = np.asarray(image.convert("RGB")).astype(np.int32)
  return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def decode_rles(counts: list, height: int, width: int) -> np.ndarray:
  """Compressed RLE counts (bytes) of (height, width) masks -> (n, height, width) uint8."""
  if not counts:
    return np.zeros((0, height, width), np.uint8)
  rles = [{"size": [height, width], "counts": c} for c in counts]
  return np.ascontiguousarray(np.transpose(coco_mask.decode(rles), (2, 0, 1)))


def encode_mask(mask: np.ndarray) -> bytes:
  """(H, W) binary mask -> compressed RLE counts (bytes)."""
  return coco_mask.encode(np.asfortranarray(np.asarray(mask, np.uint8)))["counts"]


def xywh_to_xyxy(boxes) -> np.ndarray:
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _segment_columns(table: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {
      "id": np.asarray(table["id"], np.int64),
      "category_id": np.asarray(table["category_id"], np.int64),
      "is_crowd": np.asarray(table["iscrowd"], bool),
      "boxes_xyxy": xywh_to_xyxy(table["bbox"]),
      "area": np.asarray(table["area"], np.float32),
  }


def decode_example(record: Mapping[str, Any], *, image: bool = True, masks: bool = True) -> dict[str, Any]:
  """A record -> NumPy example (what the transforms consume).

  Args:
    record: a record dict (`decode_record` output).
    image: decode the image(s); else `image` / `frames` are left out.
    masks: decode instance masks; else only boxes, labels and RLE bytes are returned.
  Returns:
    dict with image_id, file_name, original_hw (2,) int32, and when present:
    image (H, W, 3) uint8;
    instances: {id (n,), category_id (n,) int64, boxes_xyxy (n, 4) float32 pixels,
      is_crowd (n,) bool, area (n,), rle [bytes], masks (n, H, W) uint8};
    panoptic: {pan_seg (H, W) int32 ids, segments: {id, category_id, is_crowd, boxes_xyxy, area}};
    sem_seg (H, W) raw label values; captions: {id (k,), text [str]};
    video records: frames (F, H, W, 3) uint8, frame_names [str],
      tracks: {id, category_id, is_crowd, present (N, F) bool, masks (N, F, H, W) uint8};
    extra: dict.
  """
  h, w = int(record["height"]), int(record["width"])
  out: dict[str, Any] = {
      "kind": record["kind"],
      "image_id": int(record["id"]),
      "file_name": record["file_name"],
      "original_hw": np.asarray([h, w], np.int32),
      "extra": dict(record.get("extra") or {}),
  }
  if record["kind"] == "video":
    frames = record["frames"]
    out["frame_names"] = list(frames["file_name"])
    if image:
      out["frames"] = np.stack([decode_image(b) for b in frames["image"]])
    if "tracks" in record:
      t = record["tracks"]
      num_frames = len(frames["file_name"])
      present = np.asarray([[c is not None for c in rles] for rles in t["rle"]], bool).reshape(-1, num_frames)
      tracks = {
          "id": np.asarray(t["id"], np.int64),
          "category_id": np.asarray(t["category_id"], np.int64),
          "is_crowd": np.asarray(t["iscrowd"], bool),
          "present": present,
          "rle": [list(r) for r in t["rle"]],
      }
      if masks:
        m = np.zeros((len(t["id"]), num_frames, h, w), np.uint8)
        for i, rles in enumerate(t["rle"]):
          for f, c in enumerate(rles):
            if c is not None:
              m[i, f] = decode_rles([c], h, w)[0]
        tracks["masks"] = m
      out["tracks"] = tracks
    return out

  if image:
    out["image"] = decode_image(record["image"])
  if "instances" in record:
    t = record["instances"]
    inst = {
        "id": np.asarray(t["id"], np.int64),
        "category_id": np.asarray(t["category_id"], np.int64),
        "boxes_xyxy": xywh_to_xyxy(t["bbox"]),
        "is_crowd": np.asarray(t["iscrowd"], bool),
        "area": np.asarray(t["area"], np.float32),
        "rle": list(t["rle"]),
    }
    if masks:
      inst["masks"] = decode_rles(t["rle"], h, w)
    out["instances"] = inst
  if "panoptic" in record:
    out["panoptic"] = {"pan_seg": decode_panoptic_png(record["panoptic"]["png"]),
                       "segments": _segment_columns(record["panoptic"]["segments"])}
  if "sem_seg" in record:
    out["sem_seg"] = decode_png_labels(record["sem_seg"]["png"])
  if "captions" in record:
    out["captions"] = {"id": np.asarray(record["captions"]["id"], np.int64),
                       "text": list(record["captions"]["text"])}
  return out


def num_instances(record: Mapping[str, Any]) -> int:
  """Number of non-crowd annotated objects of a record (instances, panoptic segments or tracks);
  semantic records count 1 (their label map is the annotation)."""
  for key, table in (("instances", record.get("instances")), ("panoptic", (record.get("panoptic") or {}).get(
      "segments")), ("tracks", record.get("tracks"))):
    if table is not None:
      return int(sum(1 for c in table["iscrowd"] if not c))
  return 1 if "sem_seg" in record else 0


__all__ = ["SCHEMA_VERSION", "RecordError", "encode_record", "decode_record", "validate_record", "decode_image",
           "decode_png_labels", "decode_panoptic_png", "decode_rles", "encode_mask", "xywh_to_xyxy",
           "decode_example", "num_instances"]
