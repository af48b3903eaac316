"""DINOv prompt banks: one 256-d prompt embedding per ground-truth instance, stored per category.

The reference fills its bank with `--eval_get_content_features` (task `get_content`): every GT mask of the
evaluation set is encoded as a visual prompt on its own image. Here:

    encoder = PromptBankEncoder(model, variables, config)                # jitted, static shapes
    bank = build_bank(encoder, examples_from_prepared("/data/coco_panoptic", "val2017"))
    write_bank(bank, "/tmp/bank")                                        # one npz per category + index.json
    bank = read_bank("/tmp/bank")                                        # validated

Example sources (each yields `Example`s: an image, its instance masks, their category ids / instance ids):
- `examples_from_prepared(path, split)`: a prepared dataset (dinoseg.data_pipelines; instance records, or
  panoptic records whose segments, things and stuff, are the instances); crowd instances are skipped;
- `examples_from_mask_dir(dir)`: user images with binary mask PNGs named `<image file name>__<category>.png`
  or `<image file name>__<category>__<anything>.png` (e.g. `cat1.jpg__cat.png`, `cat1.jpg__cat__2.png`):
  non-zero pixels are the object; categories are numbered 1, 2, ... in sorted name order;
- `examples_from_coco_json(path)`: a COCO instances JSON (polygons or RLE) whose `file_name`s are relative
  to the JSON's directory (or to an `images/` folder beside it).
`examples_from_path(path)` picks one of the last two for a directory or a .json file.

Encoding (`PromptBankEncoder`): the image is resized as the model's test input (shortest edge
`test.min_size`, longest <= `test.max_size`), the masks with it (nearest), both zero-padded to one static
canvas (`max_size` rounded up to 32, square); the masks go through `DINOv.prompt_embeddings` in chunks of
`slots` prompts (padding slots are empty masks whose outputs are dropped): one compilation per canvas.
An empty mask is skipped with a warning (it would attend everywhere); masks must have the image's size.

Filing (`build_bank(order=...)`, config `evaluation.bank_order`): "clean" (default) stores every embedding
under its own instance's category. "reference" reproduces the reference's `get_content` filing: its labels come
back grouped by category in ascending order (its `getIdx` / `sampled_examples_by_catetory`) while the tokens
stay in instance order, and `test_save_features` zips the two, so the i-th encoded instance of an image is filed
under the i-th smallest category of that image (classes [5, 1, 5, 7] are filed as [1, 5, 5, 7]:
shared/reference/dinov.md section 12; `reference_filing`). Per image, over the instances that are encoded (the
reference's mappers drop empty instances before the model); image / instance ids stay with their embedding.

Several processes (`build_bank(process_index=..., process_count=...)`, as `dinoseg eval` and training-time
evaluation call it under jax.distributed): process p encodes the examples p, p + P, p + 2P, ... of the source
(a sequence such as `examples_from_prepared`'s is indexed, so a process decodes only its own images), the
encoded instances (`BankRows`: flat rows keyed by example index and position) are gathered over the processes
(`gather_over_processes`) and merged (`merge_bank_rows`: sorted by example index, then position), so every
process holds the bank one process would have built: the same embeddings, ids and order in every category.

Files (`write_bank`): `<out>/index.json` {"format": "dinoseg-dinov-prompt-bank", "version": 1, "dim": d,
"categories": [{"id", "name", "file", "count"}], "source": str} and `<out>/category_<id>.npz` with
embeddings (N, d) float32, image_ids (N,) int64, instance_ids (N,) int64, category_id () int64,
category_name () str. `write_bank` creates `out` and refuses a non-empty directory (it never overwrites).
"""
import dataclasses
import json
import logging
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any, Iterable, Mapping

import numpy as np

from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.models.dinov.defaults import BANK_ORDERS

logger = logging.getLogger(__name__)

FORMAT = "dinoseg-dinov-prompt-bank"
VERSION = 1
INDEX = "index.json"
MASK_SEPARATOR = "__"


@dataclasses.dataclass
class Example:
  """One image and its instances: image (H, W, 3) uint8; masks (N, H, W) bool; category_ids, instance_ids (N,)."""
  image_id: int
  image: np.ndarray
  masks: np.ndarray
  category_ids: np.ndarray
  instance_ids: np.ndarray


@dataclasses.dataclass
class Bank:
  """Per-category embeddings: {category_id: (N, d) float32} with image / instance ids and names."""
  embeddings: dict[int, np.ndarray]
  image_ids: dict[int, np.ndarray]
  instance_ids: dict[int, np.ndarray]
  names: dict[int, str]
  dim: int
  source: str = ""

  @property
  def category_ids(self) -> list[int]:
    return sorted(self.names)

  def count(self, category_id: int) -> int:
    return int(len(self.embeddings.get(category_id, ())))


# ----------------------------------------------------------------------------- sources

class PreparedExamples(Sequence):
  """The `Example`s of a prepared dataset split, decoded on access (len() and indexing; module docstring)."""

  def __init__(self, path: str | os.PathLike, split: str, dataset=None):
    from dinoseg.data_pipelines import open_dataset  # noqa: PLC0415
    self.path, self.split = path, split
    self.view = (dataset if dataset is not None else open_dataset(path)).split(split)

  def __len__(self) -> int:
    return len(self.view)

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    from dinoseg.data_pipelines import schema  # noqa: PLC0415
    index = int(index) + (len(self) if int(index) < 0 else 0)
    if not 0 <= index < len(self):
      raise IndexError(f"example {index} of a split of {len(self)}")
    ex = schema.decode_example(self.view.record(index), masks=True)
    if "instances" in ex:
      inst = ex["instances"]
      keep = ~inst["is_crowd"]
      masks, cats, ids = inst["masks"][keep].astype(bool), inst["category_id"][keep], inst["id"][keep]
    elif "panoptic" in ex:
      segs = ex["panoptic"]["segments"]
      keep = ~segs["is_crowd"]
      ids, cats = segs["id"][keep], segs["category_id"][keep]
      masks = ex["panoptic"]["pan_seg"][None] == ids[:, None, None]
    else:
      raise UserValueError(f"{self.path}: split {self.split!r} has no instance or panoptic annotations to encode")
    return Example(ex["image_id"], ex["image"], masks, np.asarray(cats, np.int64), np.asarray(ids, np.int64))


def examples_from_prepared(path: str | os.PathLike, split: str) -> tuple[PreparedExamples, dict[int, str]]:
  """(examples, {category_id: name}) of a prepared dataset split (module docstring); the examples are a
  sequence decoded on access (`PreparedExamples`)."""
  from dinoseg.data_pipelines import open_dataset  # noqa: PLC0415
  dataset = open_dataset(path)
  names = {int(c["id"]): str(c.get("name", c["id"])) for c in dataset.categories}
  return PreparedExamples(path, split, dataset), names


def _read_mask_png(path: pathlib.Path) -> np.ndarray:
  from PIL import Image  # noqa: PLC0415
  try:
    with Image.open(path) as im:
      m = np.asarray(im)
  except Exception as e:  # PIL raises several types for corrupt files
    raise UserValueError(f"{path}: not a readable mask PNG ({type(e).__name__}: {e})") from None
  return (m.max(-1) if m.ndim == 3 else m) > 0


def examples_from_mask_dir(directory: str | os.PathLike) -> tuple[list[Example], dict[int, str]]:
  """(examples, {category_id: name}) of images + mask PNGs (module docstring for the naming)."""
  from dinoseg.predict import IMAGE_SUFFIXES, read_image  # noqa: PLC0415
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise UserFileNotFoundError(f"no such examples directory: {directory}")
  files = sorted(p for p in directory.iterdir() if p.is_file())
  images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and MASK_SEPARATOR not in p.name]
  masks_of: dict[str, list[tuple[str, pathlib.Path]]] = {}
  for p in files:
    if MASK_SEPARATOR in p.name:
      if p.suffix.lower() != ".png":
        raise UserValueError(f"{p}: a mask must be a PNG named <image file name>__<category>[__<n>].png")
      parts = p.stem.split(MASK_SEPARATOR)
      if len(parts) < 2 or not parts[0] or not parts[1]:
        raise UserValueError(f"{p.name}: a mask must be named <image file name>__<category>[__<n>].png")
      masks_of.setdefault(parts[0], []).append((parts[1], p))
  unknown = sorted(set(masks_of) - {p.name for p in images})
  if unknown:
    raise UserValueError(f"{directory}: mask PNGs for images that are not there: {', '.join(unknown[:5])} "
                         "(masks are named <image file name>__<category>[__<n>].png, e.g. cat1.jpg__cat.png)")
  if not masks_of:
    raise UserValueError(f"{directory}: no example masks (<image file name>__<category>[__<n>].png next to the "
                         "images, or a COCO JSON)")
  names = {i + 1: n for i, n in enumerate(sorted({c for v in masks_of.values() for c, _ in v}))}
  ids = {n: i for i, n in names.items()}
  examples = []
  for index, image_path in enumerate(images):
    entries = masks_of.get(image_path.name, [])
    if not entries:
      continue
    image = read_image(image_path)
    masks = []
    for _, p in entries:
      m = _read_mask_png(p)
      if m.shape != image.shape[:2]:
        raise UserValueError(f"{p.name}: mask size {m.shape[1]} x {m.shape[0]} differs from its image's "
                             f"{image.shape[1]} x {image.shape[0]}")
      masks.append(m)
    examples.append(Example(index, image, np.stack(masks), np.asarray([ids[c] for c, _ in entries], np.int64),
                            np.arange(len(entries), dtype=np.int64)))
  return examples, names


def examples_from_coco_json(path: str | os.PathLike) -> tuple[list[Example], dict[int, str]]:
  """(examples, {category_id: name}) of a COCO instances JSON (module docstring)."""
  from pycocotools import mask as mask_utils  # noqa: PLC0415

  from dinoseg.predict import read_image  # noqa: PLC0415
  path = pathlib.Path(path)
  try:
    data = json.loads(path.read_text())
    images = {int(im["id"]): im for im in data["images"]}
    anns = list(data["annotations"])
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
  except FileNotFoundError:
    raise UserFileNotFoundError(f"no such COCO JSON: {path}") from None
  except (ValueError, KeyError, TypeError) as e:
    raise UserValueError(f"{path}: not a COCO instances JSON ({type(e).__name__}: {e})") from None
  by_image: dict[int, list] = {}
  for a in anns:
    if a.get("iscrowd", 0):
      continue
    if int(a.get("image_id", -1)) not in images or int(a.get("category_id", -1)) not in names:
      raise UserValueError(f"{path}: annotation {a.get('id')} names an unknown image or category")
    by_image.setdefault(int(a["image_id"]), []).append(a)
  examples = []
  for image_id in sorted(by_image):
    info = images[image_id]
    candidates = [path.parent / info["file_name"], path.parent / "images" / info["file_name"]]
    file = next((c for c in candidates if c.is_file()), candidates[0])
    image = read_image(file)
    h, w = image.shape[:2]
    masks = []
    for a in by_image[image_id]:
      seg = a.get("segmentation")
      try:
        if isinstance(seg, list):
          rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
          rle = mask_utils.frPyObjects(seg, h, w)
        else:
          rle = seg
        masks.append(mask_utils.decode(rle).astype(bool))
      except Exception as e:  # pycocotools raises TypeError / ValueError / its own for bad segmentations
        raise UserValueError(f"{path}: annotation {a.get('id')} has an unreadable segmentation "
                             f"({type(e).__name__}: {e})") from None
    examples.append(Example(image_id, image, np.stack(masks),
                            np.asarray([int(a["category_id"]) for a in by_image[image_id]], np.int64),
                            np.asarray([int(a.get("id", i)) for i, a in enumerate(by_image[image_id])], np.int64)))
  return examples, names


def examples_from_path(path: str | os.PathLike) -> tuple[list[Example], dict[int, str]]:
  """A COCO JSON file, a directory holding exactly one .json (COCO), or a directory of images + mask PNGs."""
  path = pathlib.Path(path)
  if path.is_file():
    if path.suffix.lower() != ".json":
      raise UserValueError(f"examples: {path} is neither a directory nor a COCO .json file")
    return examples_from_coco_json(path)
  if not path.is_dir():
    raise UserFileNotFoundError(f"no such examples directory or file: {path}")
  jsons = sorted(path.glob("*.json"))
  if len(jsons) > 1:
    raise UserValueError(f"{path}: several .json files ({', '.join(p.name for p in jsons)}); give one of them")
  return examples_from_coco_json(jsons[0]) if jsons else examples_from_mask_dir(path)


# ----------------------------------------------------------------------------- encoding

def _round_up(x: int, m: int) -> int:
  return int(math.ceil(x / m) * m)


def test_canvas(config) -> tuple[int, int]:
  """Static input canvas of the test resize: (max_size, max_size) rounded up to 32."""
  side = _round_up(int(config.test.max_size), 32)
  return side, side


def resize_for_model(image: np.ndarray, masks: np.ndarray | None, config, canvas_hw: tuple[int, int]):
  """Test-time resize + pad: image (H, W, 3) uint8, masks (N, H, W) bool ->
  (canvas image (Hc, Wc, 3) float32, canvas masks (N, Hc, Wc) float32 or None, valid_hw (2,) int32)."""
  from PIL import Image  # noqa: PLC0415

  from dinoseg.predict import resize_shortest_edge  # noqa: PLC0415
  from dinoseg.structures import pad_image  # noqa: PLC0415
  h, w = image.shape[:2]
  nh, nw = resize_shortest_edge(h, w, int(config.test.min_size), int(config.test.max_size))
  nh, nw = min(nh, canvas_hw[0]), min(nw, canvas_hw[1])
  resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
  canvas = pad_image(resized, canvas_hw)
  out_masks = None
  if masks is not None:
    out_masks = np.zeros((len(masks), *canvas_hw), np.float32)
    for i, m in enumerate(masks):
      r = np.asarray(Image.fromarray(np.asarray(m, np.uint8) * 255).resize((nw, nh), Image.NEAREST)) > 0
      out_masks[i, :nh, :nw] = r
  return canvas, out_masks, np.asarray([nh, nw], np.int32)


class PromptBankEncoder:
  """Encodes instance masks into prompt embeddings with one jitted function (module docstring).

  Args:
    model: a `DINOv`; variables: its variables; config: the config (`test.min_size` / `max_size`).
    slots: prompts per call (static); canvas_hw: the static canvas (default `test_canvas(config)`).
  """

  def __init__(self, model, variables: Mapping, config, *, slots: int = 16, canvas_hw: tuple[int, int] | None = None):
    import jax  # noqa: PLC0415
    self.model, self.config, self.slots = model, config, int(slots)
    self.variables = jax.device_put(dict(variables))
    self.canvas_hw = tuple(canvas_hw or test_canvas(config))

    def encode(variables, images, masks, valid_hw):
      return model.apply(variables, images, masks, valid_hw, method=model.prompt_embeddings)
    self._encode = jax.jit(encode)

  @property
  def dim(self) -> int:
    return int(self.config.model.decoder.hidden_dim)

  def encode_canvas(self, canvas: np.ndarray, masks: np.ndarray, valid_hw: np.ndarray) -> np.ndarray:
    """canvas (Hc, Wc, 3) float32, masks (N, Hc, Wc) on the canvas, valid_hw (2,) -> (N, d) float32."""
    out = []
    for start in range(0, len(masks), self.slots):
      chunk = masks[start:start + self.slots]
      padded = np.zeros((1, self.slots, *self.canvas_hw), np.float32)
      padded[0, :len(chunk)] = chunk
      emb = self._encode(self.variables, canvas[None], padded, valid_hw[None])
      out.append(np.asarray(emb[0, :len(chunk)], np.float32))
    return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

  def encode(self, image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """image (H, W, 3) uint8, masks (N, H, W) -> (embeddings (M, d), kept (N,) bool): empty masks (also
    those that vanish at the model's input size) are not encoded."""
    masks = np.asarray(masks).astype(bool)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
      raise UserValueError(f"masks must be (N, H, W) with the image's size {image.shape[:2]}, got {masks.shape}")
    canvas, cmasks, valid = resize_for_model(image, masks, self.config, self.canvas_hw)
    kept = cmasks.reshape(len(cmasks), -1).any(-1)
    return self.encode_canvas(canvas, cmasks[kept], valid), kept


def reference_filing(category_ids: np.ndarray) -> np.ndarray:
  """The categories the reference files one image's embeddings under: (N,) category ids in instance order ->
  (N,) the i-th of them is the category of the i-th embedding (the sorted ids; module docstring)."""
  return np.sort(np.asarray(category_ids, np.int64), kind="stable")


@dataclasses.dataclass
class BankRows:
  """Encoded instances as flat rows, before they are filed per category (M rows):
  embeddings (M, d) float32; category_ids (the category each is filed under), image_ids, instance_ids (M,) int64;
  example_index (M,) int64 (the example's position in the source) and position (M,) int64 (its place among the
  example's encoded instances): the key that orders rows as one process encodes them."""
  embeddings: np.ndarray
  category_ids: np.ndarray
  image_ids: np.ndarray
  instance_ids: np.ndarray
  example_index: np.ndarray
  position: np.ndarray

  @classmethod
  def empty(cls, dim: int) -> "BankRows":
    ints = np.zeros(0, np.int64)
    return cls(np.zeros((0, dim), np.float32), ints, ints, ints, ints, ints)

  def arrays(self) -> dict[str, np.ndarray]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  def __len__(self) -> int:
    return int(len(self.category_ids))


def _process_examples(examples: Iterable[Example], process_index: int, process_count: int,
                      max_examples: int) -> Iterable[tuple[int, Example]]:
  """(index, example) of this process's share: indices process_index, + process_count, ... below max_examples
  (0: all). A sequence is indexed (only this process's examples are read); other iterables are walked."""
  if isinstance(examples, Sequence):
    n = len(examples) if not max_examples else min(len(examples), int(max_examples))
    for i in range(process_index, n, process_count):
      yield i, examples[i]
    return
  for i, ex in enumerate(examples):
    if max_examples and i >= max_examples:
      return
    if i % process_count == process_index:
      yield i, ex


def encode_examples(encoder: PromptBankEncoder, examples: Iterable[Example], names: Mapping[int, str],
                    order: str = "clean", *, process_index: int = 0, process_count: int = 1,
                    max_examples: int = 0) -> BankRows:
  """Encodes the instances of this process's share of `examples` (module docstring) into `BankRows`, filed by
  `order` ("clean" / "reference"). max_examples: only the first N examples of the source (0: all)."""
  if order not in BANK_ORDERS:
    raise UserValueError(f"bank order must be one of {BANK_ORDERS}, got {order!r}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  cols: dict[str, list] = {k: [] for k in ("embeddings", "category_ids", "image_ids", "instance_ids",
                                           "example_index", "position")}
  skipped = 0
  for index, ex in _process_examples(examples, process_index, process_count, max_examples):
    if len(ex.masks) == 0:
      continue
    unknown = set(np.asarray(ex.category_ids).tolist()) - set(names)
    if unknown:
      raise UserValueError(f"image {ex.image_id}: category ids {sorted(unknown)} are not among the categories")
    e, kept = encoder.encode(ex.image, ex.masks)
    skipped += int((~kept).sum())
    filed = np.asarray(ex.category_ids)[kept]
    if order == "reference":
      filed = reference_filing(filed)
    n = len(filed)
    cols["embeddings"].append(np.asarray(e, np.float32).reshape(n, encoder.dim))
    cols["category_ids"].append(np.asarray(filed, np.int64))
    cols["image_ids"].append(np.full(n, int(ex.image_id), np.int64))
    cols["instance_ids"].append(np.asarray(ex.instance_ids, np.int64)[kept])
    cols["example_index"].append(np.full(n, index, np.int64))
    cols["position"].append(np.arange(n, dtype=np.int64))
  if skipped:
    logger.warning("%d empty mask(s) skipped (nothing to encode at the model's input size)", skipped)
  if not cols["embeddings"]:
    return BankRows.empty(encoder.dim)
  return BankRows(**{k: np.concatenate(v) for k, v in cols.items()})


def merge_bank_rows(parts: Sequence[BankRows]) -> BankRows:
  """The rows of several processes as one process encodes them: concatenated, ordered by (example_index,
  position). Raises ValueError when two parts hold the same row (overlapping shares)."""
  if not parts:
    raise ValueError("no bank rows to merge")
  cat = {k: np.concatenate([p.arrays()[k] for p in parts]) for k in parts[0].arrays()}
  order = np.lexsort((cat["position"], cat["example_index"]))
  cat = {k: v[order] for k, v in cat.items()}
  same = (np.diff(cat["example_index"]) == 0) & (np.diff(cat["position"]) == 0)
  if same.any():
    i = int(np.argmax(same))
    raise ValueError(f"bank rows of example {cat['example_index'][i]} position {cat['position'][i]} come from "
                     "two processes (the processes' shares overlap)")
  return BankRows(**cat)


def bank_from_rows(rows: BankRows, names: Mapping[int, str], dim: int, source: str = "") -> Bank:
  """Files `rows` per category in row order; categories of `names` without rows get empty arrays."""
  bank = Bank({}, {}, {}, {}, int(dim), source)
  for c, name in names.items():
    sel = rows.category_ids == int(c)
    bank.embeddings[int(c)] = rows.embeddings[sel].astype(np.float32).reshape(-1, int(dim))
    bank.image_ids[int(c)] = rows.image_ids[sel].astype(np.int64)
    bank.instance_ids[int(c)] = rows.instance_ids[sel].astype(np.int64)
    bank.names[int(c)] = str(name)
  return bank


def _to_wire(x: np.ndarray) -> np.ndarray:
  """64-bit integers as pairs of int32 (JAX without x64 would truncate them); other arrays unchanged."""
  x = np.ascontiguousarray(x)
  if x.dtype.itemsize == 8 and np.issubdtype(x.dtype, np.integer):
    return x.view(np.int32).reshape(*x.shape, 2)
  if x.dtype == np.float64:
    raise ValueError("float64 arrays are not gathered (JAX without x64 would round them); convert to float32")
  return x


def _from_wire(x: np.ndarray, like: np.ndarray) -> np.ndarray:
  if like.dtype.itemsize == 8 and np.issubdtype(like.dtype, np.integer):
    return np.ascontiguousarray(x).view(like.dtype).reshape(x.shape[:-1])
  return np.asarray(x).astype(like.dtype, copy=False)


def gather_over_processes(arrays: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
  """Every process's `arrays` ({name: (n_p, ...) NumPy}, the same names, dtypes and trailing shapes everywhere;
  the leading length n_p may differ), on every process: [process 0's, process 1's, ...]. A collective: every
  process calls it, in the same order. One process: [arrays]."""
  import jax  # noqa: PLC0415
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  if jax.process_count() == 1:
    return [arrays]
  from jax.experimental import multihost_utils  # noqa: PLC0415
  lengths = {len(v) for v in arrays.values()}
  if len(lengths) != 1:
    raise ValueError(f"the arrays gathered must share their leading length, got {sorted(lengths)}")
  n = lengths.pop()
  counts = np.asarray(multihost_utils.process_allgather(np.asarray([n], np.int32))).reshape(-1)
  cap = max(int(counts.max()), 1)
  wire = {}
  for k, v in arrays.items():
    padded = np.zeros((cap, *v.shape[1:]), v.dtype)
    padded[:n] = v
    wire[k] = _to_wire(padded)
  stacked = multihost_utils.process_allgather(wire)  # {name: (P, cap, ...)}
  return [{k: _from_wire(np.asarray(stacked[k])[p], arrays[k])[:int(counts[p])] for k in arrays}
          for p in range(len(counts))]


def build_bank(encoder: PromptBankEncoder, examples: Iterable[Example], names: Mapping[int, str],
               source: str = "", order: str | None = None, *, process_index: int = 0, process_count: int = 1,
               max_examples: int = 0) -> Bank:
  """Encodes every instance of `examples`; categories of `names` without instances get empty arrays.
  `order`: "clean" or "reference" (module docstring; default the encoder config's `evaluation.bank_order`,
  else "clean"). With process_count > 1 (a collective over the jax.distributed processes: every process calls
  it with its own process_index and the same examples) each process encodes its share and every process returns
  the merged bank, equal to the one-process bank. max_examples: only the first N examples (0: all)."""
  if order is None:
    order = str((encoder.config.get("evaluation", None) or {}).get("bank_order", "clean"))
  rows = encode_examples(encoder, examples, names, order, process_index=process_index, process_count=process_count,
                         max_examples=max_examples)
  if process_count > 1:
    like = rows.arrays()
    parts = gather_over_processes(like)
    if len(parts) != process_count:
      raise ValueError(f"process_count {process_count} differs from the {len(parts)} running JAX processes")
    rows = merge_bank_rows([BankRows(**p) for p in parts])
  return bank_from_rows(rows, names, encoder.dim, source)


# ----------------------------------------------------------------------------- files

def _category_file(category_id: int) -> str:
  return f"category_{int(category_id)}.npz"


def write_bank(bank: Bank, out_dir: str | os.PathLike) -> pathlib.Path:
  """Writes `bank` into `out_dir` (created; a non-empty existing directory is refused). Returns index.json."""
  out = pathlib.Path(out_dir)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise UserValueError(f"--out={out} exists and is not an empty directory; the bank is written only into a new "
                         "or empty directory (nothing is overwritten)")
  out.mkdir(parents=True, exist_ok=True)
  entries = []
  for cat in bank.category_ids:
    file = _category_file(cat)
    np.savez(out / file, embeddings=bank.embeddings[cat].astype(np.float32), image_ids=bank.image_ids[cat],
             instance_ids=bank.instance_ids[cat], category_id=np.int64(cat), category_name=np.str_(bank.names[cat]))
    entries.append({"id": int(cat), "name": bank.names[cat], "file": file, "count": bank.count(cat)})
  index = {"format": FORMAT, "version": VERSION, "dim": int(bank.dim), "categories": entries, "source": bank.source}
  path = out / INDEX
  path.write_text(json.dumps(index, indent=1))
  return path


def read_bank(directory: str | os.PathLike, dim: int | None = None) -> Bank:
  """Reads and validates a bank directory (`write_bank`); `dim`: the expected embedding width."""
  directory = pathlib.Path(directory)
  index_path = directory / INDEX
  if not index_path.is_file():
    raise UserFileNotFoundError(f"{directory}: no prompt bank here (no {INDEX}; build one with `dinoseg dinov bank`)")
  try:
    index = json.loads(index_path.read_text())
    ok = index.get("format") == FORMAT and isinstance(index.get("categories"), list)
  except (ValueError, AttributeError):
    ok = False
  if not ok:
    raise UserValueError(f"{index_path}: not a dinoseg DINOv prompt bank index")
  if int(index.get("version", 0)) > VERSION:
    raise UserValueError(f"{index_path}: bank version {index['version']} is newer than this dinoseg reads ({VERSION})")
  width = int(index["dim"])
  if dim is not None and width != dim:
    raise UserValueError(f"{directory}: embeddings are {width}-d, the model's prompts {dim}-d (another model's bank?)")
  bank = Bank({}, {}, {}, {}, width, str(index.get("source", "")))
  for entry in index["categories"]:
    path = directory / str(entry.get("file", ""))
    cat = int(entry["id"])
    try:
      with np.load(path, allow_pickle=False) as z:
        e, im, ins = z["embeddings"], z["image_ids"], z["instance_ids"]
        stored_cat = int(z["category_id"])
    except FileNotFoundError:
      raise UserFileNotFoundError(f"{directory}: {entry.get('file')} listed in {INDEX} is missing") from None
    except (OSError, ValueError, KeyError) as e_:
      raise UserValueError(f"{path}: not a readable bank file ({type(e_).__name__}: {e_})") from None
    n = int(entry.get("count", len(e)))
    if (e.ndim != 2 or e.shape != (n, width) or im.shape != (n,) or ins.shape != (n,) or stored_cat != cat
        or not np.issubdtype(e.dtype, np.floating) or not np.isfinite(e).all()):
      raise UserValueError(f"{path}: expected embeddings ({n}, {width}) finite floats, image_ids / instance_ids ({n},) "
                           f"and category {cat}; got {e.shape}, {im.shape}, {ins.shape}, category {stored_cat}")
    bank.embeddings[cat], bank.image_ids[cat], bank.instance_ids[cat] = e.astype(np.float32), im, ins
    bank.names[cat] = str(entry.get("name", cat))
  return bank


def bank_from_embeddings(embeddings: Mapping[str, Sequence[np.ndarray]] | Mapping[str, np.ndarray], dim: int) -> Bank:
  """A bank from {name: (N, d) embeddings} (ids 1, 2, ... in the given order; image / instance ids 0..N-1)."""
  bank = Bank({}, {}, {}, {}, dim)
  for i, (name, e) in enumerate(embeddings.items()):
    e = np.asarray(e, np.float32).reshape(-1, dim)
    bank.embeddings[i + 1], bank.names[i + 1] = e, str(name)
    bank.image_ids[i + 1] = bank.instance_ids[i + 1] = np.arange(len(e), dtype=np.int64)
  return bank


__all__ = ["Example", "Bank", "BankRows", "PreparedExamples", "PromptBankEncoder", "build_bank", "encode_examples",
           "merge_bank_rows", "bank_from_rows", "gather_over_processes", "write_bank", "read_bank",
           "bank_from_embeddings",
           "examples_from_prepared", "examples_from_mask_dir", "examples_from_coco_json", "examples_from_path",
           "resize_for_model", "test_canvas", "reference_filing", "FORMAT", "MASK_SEPARATOR"]
