"""The preparer interface, the registry of preparers, and the bookkeeping of bad raw data.

A preparer turns one dataset's official raw layout into records (`schema`). It works in two
steps so that preparation can run in parallel and resume:

1. `scan(raw_dir, split, issues)` (main process): reads the annotation files and returns a
   `Scan`: dataset metadata (categories, label maps, ...) and a deterministic list of work
   items, one per future record (plain picklable dicts: an image's info and its annotations).
2. `build(item, raw_dir, issues)` (any worker process): reads the files of one item and returns
   the record dict, or raises `SkipExample(reason, detail)` to leave the whole example out.
   Annotations it cannot use are dropped through `issues.drop(reason, detail)`.

Every skipped example and every dropped annotation is counted by reason in the manifest, logged,
and is a hard error (`BadRawData`) under `strict`: nothing is dropped silently.
"""
import abc
import collections
import dataclasses
import io
import logging
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from dinoseg.data_pipelines import schema
from dinoseg.errors import UserValueError
from dinoseg.registry import Registry

log = logging.getLogger("dinoseg.data")

# Reasons, with the meaning documented in docs/data.md.
SKIP_REASONS = ("missing_file", "unreadable_image", "size_mismatch", "missing_annotation",
                "unreadable_annotation", "no_frames")
DROP_REASONS = ("invalid_rle", "invalid_polygon", "missing_segmentation", "zero_area_box", "box_outside_image",
                "empty_mask", "unknown_category", "unknown_image", "unknown_video", "invalid_segment")
REPAIR_REASONS = ("box_clipped",)
_MAX_EXAMPLES_PER_REASON = 20


class SkipExample(Exception):
  """Raised by `Preparer.build` to leave a whole example out (with a reason from SKIP_REASONS)."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail = reason, detail


class BadRawData(ValueError):
  """Bad raw data under `strict` preparation."""


class Issues:
  """Counts (and under `strict` raises for) skipped examples, dropped annotations and repairs."""

  def __init__(self, strict: bool = False, context: str = ""):
    self.strict, self.context = strict, context
    self.counts = {kind: collections.Counter() for kind in ("skipped_examples", "dropped_annotations", "repaired")}
    self.samples: dict[str, dict[str, list[str]]] = {kind: {} for kind in self.counts}

  def _add(self, kind: str, reason: str, detail: str, fatal: bool) -> None:
    if fatal and self.strict:
      raise BadRawData(f"{self.context}: {reason}: {detail} (strict preparation; drop --strict to skip and count)")
    self.counts[kind][reason] += 1
    samples = self.samples[kind].setdefault(reason, [])
    if len(samples) < _MAX_EXAMPLES_PER_REASON:
      samples.append(detail)
      level = logging.WARNING if fatal else logging.INFO
      log.log(level, "%s: %s %s: %s", self.context, kind.replace("_", " "), reason, detail)

  def skip(self, reason: str, detail: str) -> None:
    self._add("skipped_examples", reason, detail, True)

  def drop(self, reason: str, detail: str) -> None:
    self._add("dropped_annotations", reason, detail, True)

  def repair(self, reason: str, detail: str) -> None:
    self._add("repaired", reason, detail, False)

  def merge(self, other: "Issues | dict") -> None:
    data = other.as_dict() if isinstance(other, Issues) else other
    for kind, counts in data["counts"].items():
      self.counts[kind].update(counts)
      for reason, samples in data["samples"].get(kind, {}).items():
        mine = self.samples[kind].setdefault(reason, [])
        mine.extend(samples[:max(0, _MAX_EXAMPLES_PER_REASON - len(mine))])

  def as_dict(self) -> dict:
    return {"counts": {k: dict(sorted(v.items())) for k, v in self.counts.items()},
            "samples": {k: dict(sorted(v.items())) for k, v in self.samples.items()}}

  @property
  def total(self) -> int:
    return sum(sum(c.values()) for k, c in self.counts.items() if k != "repaired")


@dataclasses.dataclass
class Scan:
  """What `Preparer.scan` returns: dataset metadata (JSON-serializable) and the work items."""
  metadata: dict
  items: list


class Preparer(abc.ABC):
  """One dataset family's converter from its official raw layout (module docstring).

  Class attributes: `name` (registry key), `description`, `splits` (default splits),
  `options` (name -> default of extra keyword options, e.g. annotation file paths).
  """
  name: str = ""
  description: str = ""
  splits: tuple[str, ...] = ("train", "val")
  options: dict[str, Any] = {}

  def __init__(self, **options):
    unknown = set(options) - set(self.options)
    if unknown:
      raise UserValueError(f"unknown options {sorted(unknown)} for dataset {self.name!r}; "
                           f"known: {sorted(self.options) or 'none'}")
    self.opts = {**self.options, **options}

  @abc.abstractmethod
  def scan(self, raw_dir: str, split: str, issues: Issues) -> Scan:
    """Reads the annotation index of `split` (see module docstring)."""

  @abc.abstractmethod
  def build(self, item: dict, raw_dir: str, issues: Issues) -> dict:
    """Builds the record of one work item (see module docstring)."""

  def item_key(self, item: dict) -> str:
    """A stable identifier of a work item (used in messages and in the resume fingerprint)."""
    return str(item.get("file_name", item.get("id")))


# Modules that register preparers when imported (imported on the first lookup).
BUILTIN_PREPARER_MODULES = [
    "dinoseg.data_pipelines.preparers.coco",
    "dinoseg.data_pipelines.preparers.sa1b",
    "dinoseg.data_pipelines.preparers.semantic",
    "dinoseg.data_pipelines.preparers.video",
    "dinoseg.data_pipelines.preparers.interactive",
]
PREPARERS = Registry("dataset", modules=BUILTIN_PREPARER_MODULES)  # name -> Preparer subclass
names = PREPARERS.names


def register(name: str):
  """Class decorator: registers a Preparer subclass under `name` (and sets its `name`)."""
  def wrap(cls):
    cls.name = name
    return PREPARERS.register(name, cls)
  return wrap


def get(name: str, **options) -> Preparer:
  """The preparer registered under `name`, built with `options` (UserValueError naming known ones)."""
  return PREPARERS.get(name)(**options)



# ----------------------------------------------------------------------------- helpers for preparers


def read_bytes(path: str, what: str = "file") -> bytes:
  """File bytes, or SkipExample("missing_file") when it does not exist."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError as e:
    raise SkipExample("missing_file", f"{what} {path} does not exist") from e
  except OSError as e:
    raise SkipExample("missing_file", f"{what} {path} cannot be read: {e}") from e


_FORMATS = {"JPEG": "jpeg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tiff", "MPO": "jpeg"}


def check_image(data: bytes, path: str, expected_hw: tuple[int, int] | None = None, *,
                verify: bool = True) -> tuple[int, int, str]:
  """Checks encoded image bytes; returns (height, width, format).

  Raises SkipExample("unreadable_image") when the bytes do not decode (fully decoded when
  `verify`), SkipExample("size_mismatch") when the (EXIF-oriented) size differs from
  `expected_hw`.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      fmt = _FORMATS.get(image.format or "", (image.format or "unknown").lower())
      if verify:
        image.load()
      image = ImageOps.exif_transpose(image) if verify else image
      w, h = image.size
      if not verify:
        orientation = image.getexif().get(0x0112, 1)
        if orientation in (5, 6, 7, 8):
          h, w = w, h
  except Exception as e:  # PIL raises many types on corrupt data
    raise SkipExample("unreadable_image", f"{path}: {e}") from e
  if expected_hw is not None and (h, w) != tuple(int(v) for v in expected_hw):
    raise SkipExample("size_mismatch", f"{path} is {h}x{w}, annotations say {expected_hw[0]}x{expected_hw[1]}")
  return h, w, fmt


def read_image(root: str, file_name: str, expected_hw=None, *, verify: bool = True) -> tuple[bytes, int, int]:
  """Reads and checks an image file; returns (bytes, height, width)."""
  path = os.path.join(root, file_name)
  data = read_bytes(path, "image")
  h, w, _ = check_image(data, path, expected_hw, verify=verify)
  return data, h, w


def segmentation_to_rle(segmentation, height: int, width: int) -> bytes:
  """A COCO `segmentation` (polygons, RLE or uncompressed RLE) -> compressed RLE counts (bytes).

  Raises ValueError("invalid_polygon" | "invalid_rle" | "missing_segmentation": ...).
  """
  from pycocotools import mask as coco_mask  # noqa: PLC0415
  from dinoseg.ops.masks import rle_decode  # noqa: PLC0415

  if segmentation is None or (isinstance(segmentation, list) and not segmentation):
    raise ValueError("missing_segmentation: no polygon or RLE")
  if isinstance(segmentation, list):
    polys = []
    for poly in segmentation:
      p = np.asarray(poly, np.float64).ravel() if isinstance(poly, (list, tuple)) else np.zeros(0)
      if p.size < 6 or p.size % 2 or not np.all(np.isfinite(p)):
        raise ValueError(f"invalid_polygon: a polygon needs an even number (>= 6) of finite coordinates, got {p.size}")
      polys.append(p.tolist())
    rle = coco_mask.merge(coco_mask.frPyObjects(polys, height, width))
    return rle["counts"]
  if isinstance(segmentation, dict):
    try:
      size = [int(s) for s in segmentation.get("size", [])]
      if size != [height, width]:
        raise ValueError(f"rle size {size} is not the image size {[height, width]}")
      mask = rle_decode(segmentation)
    except (ValueError, TypeError, KeyError) as e:
      raise ValueError(f"invalid_rle: {e}") from e
    return schema.encode_mask(mask)
  raise ValueError(f"invalid_polygon: segmentation of type {type(segmentation).__name__}")


def clean_box(bbox, height: int, width: int, issues: Issues, where: str) -> list[float] | None:
  """A COCO [x, y, w, h] box clipped to the image; None (dropped, counted) when degenerate."""
  try:
    x, y, bw, bh = (float(v) for v in bbox)
  except (TypeError, ValueError):
    issues.drop("zero_area_box", f"{where}: box {bbox!r} is not 4 numbers")
    return None
  if not all(np.isfinite([x, y, bw, bh])) or bw <= 0 or bh <= 0:
    issues.drop("zero_area_box", f"{where}: box {bbox}")
    return None
  x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + bw, float(width)), min(y + bh, float(height))
  if x1 <= x0 or y1 <= y0:
    issues.drop("box_outside_image", f"{where}: box {bbox} outside the {height}x{width} image")
    return None
  if (x0, y0, x1, y1) != (x, y, x + bw, y + bh):
    issues.repair("box_clipped", f"{where}: box {bbox} clipped to the {height}x{width} image")
  return [x0, y0, x1 - x0, y1 - y0]


def mask_box(mask: np.ndarray) -> list[float]:
  """Tight [x, y, w, h] box of a binary mask (zeros when empty)."""
  ys, xs = np.nonzero(mask)
  if ys.size == 0:
    return [0.0, 0.0, 0.0, 0.0]
  return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


__all__ = ["Preparer", "Scan", "Issues", "SkipExample", "BadRawData", "register", "get", "names", "PREPARERS",
           "BUILTIN_PREPARER_MODULES", "read_bytes", "check_image", "read_image", "segmentation_to_rle",
           "clean_box", "mask_box", "SKIP_REASONS", "DROP_REASONS"]
