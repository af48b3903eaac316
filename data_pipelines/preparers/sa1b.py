"""SA-1B (Segment Anything 1B): per-image JSON + JPEG, from its tar shards or from TSV shards.

Two raw layouts, chosen by the `layout` option ("auto": TSV when `--raw` holds `*.tsv` shards and no
`sa_*.tar` shards, tar otherwise; "tar" / "tsv" to force one):

- tar (the official download): `--raw` holds the shards `sa_000000.tar`, `sa_000001.tar`, ... (each a
  flat tar of `sa_<n>.jpg` + `sa_<n>.json`), and/or already extracted folders with the same file pairs.
  The `tars` option (a glob) selects shards, `folders` the extracted folders.
- TSV (the layout DINOv's reference trains from, `datasets/utils/tsv/`): shards named `*part_000NN.tsv`
  or `*-NN.tsv` (`tsvs`, a glob), each with a `.lineidx` file beside it (same stem) holding one row's
  byte offset per line. A row is tab-separated: row[0] a key, row[1] the image's SA-1B JSON, row[-1] the
  base64-encoded image. `subset_start` / `subset_end` keep the shards whose number NN is in
  [subset_start, subset_end), as the reference's SAM_SUBSET_START / SAM_SUBSET_END (its data mapper's
  defaults 0 / 100; its dataset registration defaults to 90 / 100). Shards are read in the order of their
  number; each row is read on its own through its offset (a shard is never read whole).

SA-1B has no official split: everything is "train". Each JSON is {"image": {image_id, width, height,
file_name}, "annotations": [{id, segmentation (compressed RLE), bbox, area, predicted_iou,
stability_score, point_coords, crop_box}]}. All masks get category 1 ("object"), as DINOv trains on them.
Per-instance predicted_iou, stability_score and point_coords are kept in the record's `extra`, aligned
with the kept instances. Both layouts give the same record for the same image and JSON.
"""
import base64
import binascii
import glob
import json
import os
import re
import tarfile

from dinoseg.data_pipelines import schema
from dinoseg.data_pipelines.preparers import base
from dinoseg.data_pipelines.preparers.coco import build_instances
from dinoseg.errors import UserFileNotFoundError, UserValueError

LAYOUTS = ("auto", "tar", "tsv")
# The two shard-name forms of the reference's TSV layout: "<anything>part_000NN.tsv" and "<anything>-NN.tsv".
_TSV_SHARD_NAMES = (re.compile(r"part_(\d+)\.tsv$"), re.compile(r"-(\d+)\.tsv$"))


def _read_range(path: str, offset: int, size: int) -> bytes:
  with open(path, "rb") as f:
    f.seek(offset)
    data = f.read(size)
  if len(data) != size:
    raise base.SkipExample("missing_file", f"{path} is truncated at byte {offset + len(data)}")
  return data


def tsv_shard_number(file_name: str) -> int | None:
  """The shard number NN of a TSV shard named `*part_000NN.tsv` or `*-NN.tsv`; None for other names."""
  for pattern in _TSV_SHARD_NAMES:
    match = pattern.search(file_name)
    if match:
      return int(match.group(1))
  return None


def lineidx_path(tsv_path: str) -> str:
  """The `.lineidx` file of a TSV shard (same stem)."""
  return os.path.splitext(tsv_path)[0] + ".lineidx"


def read_lineidx(tsv_path: str) -> list[int]:
  """The row byte offsets of a TSV shard, from its `.lineidx` (first integer of each non-blank line).

  Raises UserFileNotFoundError when the `.lineidx` is missing, UserValueError when a line is not a
  non-negative integer (the shard cannot be indexed: the same treatment as an unreadable tar shard).
  """
  path = lineidx_path(tsv_path)
  offsets = []
  try:
    with open(path, "rb") as f:
      for number, line in enumerate(f, 1):
        fields = line.split()
        if not fields:
          continue
        try:
          offset = int(fields[0])
        except ValueError:
          offset = -1
        if offset < 0:
          raise UserValueError(f"SA-1B TSV index {path} line {number}: "
                               f"{fields[0][:40].decode('utf-8', 'replace')!r} is not a byte offset")
        offsets.append(offset)
  except FileNotFoundError as e:
    raise UserFileNotFoundError(f"SA-1B TSV shard {tsv_path} has no index {path} (one row byte offset per line)") from e
  except OSError as e:
    raise UserValueError(f"SA-1B TSV index {path} cannot be read: {e}") from e
  return offsets


def read_tsv_row(path: str, offset: int) -> list[bytes]:
  """The tab-separated fields of the TSV row starting at byte `offset` of `path` (only that row is read).

  Raises SkipExample("missing_file") when the file is missing or the offset is at or past its end,
  SkipExample("unreadable_annotation") when the offset does not start a row.
  """
  try:
    with open(path, "rb") as f:
      if offset > 0:
        f.seek(offset - 1)
        before = f.read(1)
        if not before:
          raise base.SkipExample("missing_file", f"{path}: row offset {offset} is past the end of the file "
                                                 f"({os.fstat(f.fileno()).st_size} bytes)")
        if before != b"\n":
          raise base.SkipExample("unreadable_annotation", f"{path}: byte {offset} does not start a row")
      line = f.readline()
  except OSError as e:
    raise base.SkipExample("missing_file", f"{path} cannot be read: {e}") from e
  if not line:
    raise base.SkipExample("missing_file", f"{path}: row offset {offset} is past the end of the file")
  return [field.strip() for field in line.split(b"\t")]


def _check_options(opts: dict) -> None:
  if opts["layout"] not in LAYOUTS:
    raise UserValueError(f"sa1b option layout must be one of {', '.join(LAYOUTS)}, got {opts['layout']!r}")
  for key in ("subset_start", "subset_end"):
    value = opts[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise UserValueError(f"sa1b option {key} must be a non-negative integer (a shard number), got {value!r}")
  if opts["subset_end"] <= opts["subset_start"]:
    raise UserValueError(f"sa1b options subset_start={opts['subset_start']} / subset_end={opts['subset_end']} "
                         "select no shard: shards NN with subset_start <= NN < subset_end are read")


@base.register("sa1b")
class Sa1b(base.Preparer):
  """SA-1B masks (class-agnostic), from tar shards, extracted folders or TSV shards (module docstring)."""
  description = ("SA-1B (sa_*.tar shards of sa_<n>.jpg + sa_<n>.json, extracted folders, or the reference's "
                 "*.tsv + .lineidx shards)")
  splits = ("train",)
  options = {"tars": "sa_*.tar", "folders": "*", "verify_images": True, "layout": "auto", "tsvs": "*.tsv",
             "subset_start": 0, "subset_end": 100}

  def __init__(self, **options):
    super().__init__(**options)
    _check_options(self.opts)

  def layout(self, raw_dir: str) -> str:
    """"tar" or "tsv": the `layout` option, or the one found under `raw_dir` when it is "auto"."""
    if self.opts["layout"] != "auto":
      return self.opts["layout"]
    has_tsv = any(os.path.isfile(p) for p in glob.glob(os.path.join(raw_dir, self.opts["tsvs"])))
    has_tar = bool(glob.glob(os.path.join(raw_dir, self.opts["tars"])))
    if has_tsv and has_tar:
      raise UserValueError(f"{raw_dir} holds both SA-1B tar shards ({self.opts['tars']}) and TSV shards "
                           f"({self.opts['tsvs']}); choose one with the option layout=tar or layout=tsv")
    return "tsv" if has_tsv else "tar"

  def scan(self, raw_dir, split, issues):
    if split != "train":
      raise UserValueError(f"SA-1B has only the 'train' split, got {split!r}")
    if self.layout(raw_dir) == "tsv":
      items = self._scan_tsv(raw_dir)
    else:
      items = self._scan_tar(raw_dir, issues)
    return base.Scan({"task": "instance", "categories": [{"id": 1, "name": "object"}]}, items)

  def _scan_tar(self, raw_dir, issues) -> list[dict]:
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
    return items

  def _scan_tsv(self, raw_dir) -> list[dict]:
    start, end = self.opts["subset_start"], self.opts["subset_end"]
    shards = []
    for path in sorted(glob.glob(os.path.join(raw_dir, self.opts["tsvs"]))):
      if not os.path.isfile(path):
        continue
      number = tsv_shard_number(os.path.basename(path))
      if number is None:
        raise UserValueError(f"SA-1B TSV shard {path}: the name must end in part_<NN>.tsv or -<NN>.tsv "
                             "(select the shards with the option tsvs=GLOB)")
      if start <= number < end:
        shards.append((number, path))
    if not shards:
      raise UserFileNotFoundError(f"no SA-1B TSV shards ({self.opts['tsvs']}) numbered {start} <= NN < {end} "
                                  f"under {raw_dir}")
    base.log.info("sa1b: reading %d TSV shards numbered %d..%d", len(shards), shards[0][0], shards[-1][0])
    items = []
    for number, path in sorted(shards):
      items.extend({"tsv": path, "shard": number, "row": row, "offset": offset}
                   for row, offset in enumerate(read_lineidx(path)))
    if not items:
      raise UserFileNotFoundError(f"the SA-1B TSV shards under {raw_dir} hold no rows (empty .lineidx files)")
    return items

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
    if "tsv" in item:
      return f"{os.path.basename(item['tsv'])}:{item['row']}"
    return f"{os.path.basename(item['container'])}/{item['file_name']}"

  def _read(self, item, key):
    if item["tar"]:
      return _read_range(item["container"], *item[key])
    return base.read_bytes(item[key], key)

  def _read_tsv(self, item) -> tuple[bytes, bytes, str]:
    """(JSON bytes, image bytes, fallback file name) of a TSV work item."""
    fields = read_tsv_row(item["tsv"], item["offset"])
    where = self.item_key(item)
    if len(fields) < 3:
      raise base.SkipExample("unreadable_annotation", f"{where}: the row has {len(fields)} tab-separated fields, "
                                                      "expected a key, the JSON and the base64 image")
    try:
      image = base64.b64decode(fields[-1], validate=True)
    except (binascii.Error, ValueError) as e:
      raise base.SkipExample("unreadable_image", f"{where}: the image field is not base64: {e}") from e
    fallback = fields[0].decode("utf-8", "replace") + ".jpg"
    return fields[1], image, fallback

  def build(self, item, raw_dir, issues):
    if "tsv" in item:
      meta_bytes, data, fallback_name = self._read_tsv(item)
    else:
      meta_bytes, data, fallback_name = self._read(item, "json"), None, item["file_name"]
    where = self.item_key(item)
    try:
      meta = json.loads(meta_bytes)
      info = meta["image"]
      anns = meta.get("annotations", [])
      height, width = int(info["height"]), int(info["width"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise base.SkipExample("unreadable_annotation", f"{where}: {e}") from e
    if data is None:
      data = self._read(item, "image")
    base.check_image(data, where, (height, width), verify=self.opts["verify_images"])
    for ann in anns:
      ann.setdefault("category_id", 1)
      ann.setdefault("iscrowd", 0)
    instances = build_instances(anns, height, width, issues, where)
    kept = {i: a for a in anns for i in [a.get("id")]}
    extra = {"predicted_iou": [], "stability_score": [], "point_coords": []}
    for ann_id in instances["id"]:
      ann = kept.get(ann_id, {})
      extra["predicted_iou"].append(float(ann.get("predicted_iou", 0.0)))
      extra["stability_score"].append(float(ann.get("stability_score", 0.0)))
      extra["point_coords"].append([[float(v) for v in p] for p in ann.get("point_coords", [])])
    return {"schema": schema.SCHEMA_VERSION, "kind": "image", "id": int(info.get("image_id", 0)),
            "file_name": info.get("file_name", fallback_name), "height": height, "width": width,
            "image": data, "instances": instances, "extra": extra}


__all__ = ["Sa1b", "LAYOUTS", "tsv_shard_number", "lineidx_path", "read_lineidx", "read_tsv_row"]
