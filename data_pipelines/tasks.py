"""Example builders per task: record -> fixed-shape example (the batch format of docs/data.md).

A task is registered under the name `config.data.task` uses ("instance", "panoptic", "semantic",
"captions", "video", "interactive"). It decides

- `elements(split)`: the (N, k) integer table of examples (column 0 = record index; more columns
  for examples that are parts of a record: a caption, a video frame, an object);
- `__call__(record, row, rng)`: one example as a dict of fixed-shape NumPy arrays; `rng` is the
  example's generator in training and None at evaluation (deterministic transforms).

Tasks are plain picklable objects (grain sends them to its worker processes).
"""
import importlib
from typing import Any, Callable

import numpy as np

from dinoseg.data_pipelines import schema
from dinoseg.data_pipelines import transforms as T
from dinoseg.data_pipelines.dataset import PreparedDataset
from dinoseg.errors import UserValueError
from dinoseg.registry import Registry

TASKS = Registry("data task", hint=" (config.data.task)")  # name -> example-builder class
IMAGE_PAD = 128  # image padding value of the training crops (detectron2 FixedSizeCrop / MaskFormer)


def register(name: str):
  """Class decorator: registers a task class under `name` (and sets its `name`)."""
  def wrap(cls):
    cls.name = name
    return TASKS.register(name, cls)
  return wrap


get = TASKS.get


def import_modules(names) -> None:
  for name in names or ():
    importlib.import_module(name)


def _hw(value) -> tuple[int, int]:
  value = tuple(int(v) for v in (value if isinstance(value, (tuple, list)) else (value, value)))
  if len(value) != 2 or min(value) <= 0:
    raise UserValueError(f"config.data image sizes must be an int or (height, width) of positive ints, got {value}")
  return value


class LabelLookup:
  """Dataset category ids -> contiguous labels (sorted id order); -1 for unknown ids. Picklable."""

  def __init__(self, category_ids):
    self.ids = np.asarray(sorted(int(c) for c in category_ids), np.int64)

  def __call__(self, values) -> np.ndarray:
    values = np.asarray(values, np.int64)
    if not len(self.ids):
      return np.full(values.shape, -1, np.int32)
    idx = np.minimum(np.searchsorted(self.ids, values), len(self.ids) - 1)
    return np.where(self.ids[idx] == values, idx, -1).astype(np.int32)


class Task:
  """Base class: reads the common options of `config` (see pipeline.default_config)."""
  name = ""

  def __init__(self, config, dataset: PreparedDataset, train: bool):
    g = config.get
    self.train = train
    self.dataset_path = str(dataset.path)
    self.image_size = _hw(g("image_size", 1024) if train else g("eval_image_size", g("image_size", 1024)))
    self.max_instances = int(g("max_instances", 100))
    self.mask_stride = int(g("mask_stride", 1))
    if self.mask_stride < 1 or self.image_size[0] % self.mask_stride or self.image_size[1] % self.mask_stride:
      raise UserValueError(f"config.data.mask_stride {self.mask_stride} must be >= 1 and divide the image size "
                           f"{self.image_size}")
    self.augment = str(g("augment", "lsj")) if train else "none"
    self.min_scale, self.max_scale = float(g("min_scale", 0.1)), float(g("max_scale", 2.0))
    self.flip_prob = float(g("flip_prob", 0.5))
    self.pad_is_image = bool(g("pad_is_image", True))
    self.eval_short_edge, self.eval_max_size = int(g("eval_short_edge", 800)), int(g("eval_max_size", 1333))
    self.keep_crowd = bool(g("keep_crowd", False))
    self.filter_empty = bool(g("filter_empty", True))
    self.drop_rare = train and bool(g("drop_rare", False))  # LVIS norare (sampling.py)
    if self.drop_rare:
      from dinoseg.data_pipelines import sampling  # noqa: PLC0415
      self.rare_ids = sampling.rare_category_ids(dataset)
    self.with_targets = train or bool(g("eval_targets", False))
    self.lookup = LabelLookup(dataset.category_ids)
    sampler = str(g("prompt_sampler", "") or "")
    options = g("prompt_sampler_options", None)
    self.prompt_sampler = T.build_prompt_sampler(sampler, options.to_dict() if hasattr(options, "to_dict")
                                                 else options)
    if self.augment not in ("lsj", "none", "resize_crop"):
      raise UserValueError(f"config.data.augment must be 'lsj', 'resize_crop' or 'none', got {self.augment!r}")

  # -- helpers shared by the image tasks

  def geometry(self, hw, rng) -> T.Geometry:
    if self.augment == "lsj":
      return T.lsj_geometry(rng, hw, self.image_size, self.min_scale, self.max_scale, self.flip_prob)
    return T.resize_shortest_edge_geometry(hw, self.eval_short_edge, self.eval_max_size, self.image_size)

  def image_fields(self, image: np.ndarray, g: T.Geometry, record) -> dict:
    lsj = self.augment in ("lsj", "resize_crop")
    pad = IMAGE_PAD if lsj else 0
    valid_hw = self.image_size if (lsj and self.pad_is_image) else g.content_hw
    return {"image": T.warp_image(image, g, pad), "valid_hw": np.asarray(valid_hw, np.int32),
            "original_hw": np.asarray([record["height"], record["width"]], np.int32),
            "image_id": np.asarray(record["id"], np.int64)}

  def elements(self, split: str, dataset: PreparedDataset) -> np.ndarray:
    n = len(dataset.split(split))
    rows = np.arange(n, dtype=np.int64)
    if self.train and self.filter_empty:
      rows = rows[dataset.split(split).num_instances > 0]
    if self.drop_rare and self.filter_empty:
      from dinoseg.data_pipelines import sampling  # noqa: PLC0415
      return sampling.drop_rare_rows(rows[:, None], dataset, split)
    return rows[:, None]

  def add_prompts(self, example: dict, rng) -> dict:
    if self.prompt_sampler is not None:
      example.update(self.prompt_sampler(example, rng))
    return example

  def __call__(self, record: dict, row: np.ndarray, rng) -> dict:
    raise NotImplementedError


@register("instance")
class InstanceTask(Task):
  """Instance segmentation (COCO, LVIS, SA-1B, ...): image + padded instances (module docs)."""

  def __call__(self, record, row, rng):
    ex = schema.decode_example(record, masks=self.with_targets)
    g = self.geometry(ex["image"].shape[:2], rng)
    out = self.image_fields(ex["image"], g, record)
    if self.with_targets:
      inst = ex.get("instances") or {"masks": np.zeros((0, *g.input_hw), np.uint8),
                                     "category_id": np.zeros(0, np.int64), "is_crowd": np.zeros(0, bool)}
      labels = self.lookup(inst["category_id"])
      keep = labels >= 0
      if not self.keep_crowd:
        keep &= ~inst["is_crowd"]
      if self.drop_rare:
        keep &= ~np.isin(inst["category_id"], self.rare_ids)
      masks = T.warp_masks(inst["masks"][keep], g)
      out.update(T.instance_targets(masks, labels[keep], valid_hw=out["valid_hw"], max_instances=self.max_instances,
                                    mask_stride=self.mask_stride, is_crowd=inst["is_crowd"][keep]))
    return self.add_prompts(out, rng)


@register("panoptic")
class PanopticTask(Task):
  """Panoptic segmentation: one target per non-crowd segment (things and stuff) + the id map."""

  def __init__(self, config, dataset, train):
    super().__init__(config, dataset, train)
    cats = {int(c["id"]): bool(c.get("isthing", 1)) for c in dataset.categories}
    self.thing_ids = np.asarray(sorted(i for i, t in cats.items() if t), np.int64)

  def __call__(self, record, row, rng):
    ex = schema.decode_example(record, masks=False)
    g = self.geometry(ex["image"].shape[:2], rng)
    out = self.image_fields(ex["image"], g, record)
    if self.with_targets:
      pan = ex["panoptic"]
      segs = pan["segments"]
      pan_seg = T.warp_labels(pan["pan_seg"], g, 0).astype(np.int32)
      labels = self.lookup(segs["category_id"])
      keep = (labels >= 0) & ~segs["is_crowd"]
      ids = segs["id"][keep]
      masks = (pan_seg[None] == ids[:, None, None]).astype(np.uint8)
      extra = {"segment_ids": ids.astype(np.int32), "is_thing": np.isin(segs["category_id"][keep], self.thing_ids)}
      out.update(T.instance_targets(masks, labels[keep], valid_hw=out["valid_hw"], max_instances=self.max_instances,
                                    mask_stride=self.mask_stride, extra=extra))
      out["pan_seg"] = pan_seg
    return self.add_prompts(out, rng)


@register("semantic")
class SemanticTask(Task):
  """Semantic segmentation: train-id map (255 ignore) + one instance target per present class."""

  def __init__(self, config, dataset, train):
    super().__init__(config, dataset, train)
    g = config.get
    self.lut = dataset.label_map(g("label_map", None) or None).astype(np.int32)
    self.num_classes = dataset.num_classes(g("label_map", None) or None)
    self.short_sizes = tuple(int(s) for s in (g("train_short_sizes", None) or (self.image_size[0],)))
    self.train_max_size = int(g("train_max_size", 4 * max(self.image_size)))
    self.single_category_max_area = float(g("single_category_max_area", 1.0))
    self.semantic_instances = bool(g("semantic_instances", True))
    if train and self.augment == "lsj":
      self.augment = "resize_crop"

  def __call__(self, record, row, rng):
    ex = schema.decode_example(record)
    labels = self.lut[np.minimum(ex["sem_seg"].astype(np.int64), 255)]
    hw = ex["image"].shape[:2]
    if self.augment == "resize_crop":
      g = T.resize_crop_geometry(rng, hw, self.short_sizes, self.train_max_size, self.image_size, self.image_size,
                                 self.flip_prob, labels, self.single_category_max_area)
    else:
      g = self.geometry(hw, rng)
    out = self.image_fields(ex["image"], g, record)
    if self.with_targets:
      sem = T.warp_labels(labels, g, T.IGNORE_LABEL).astype(np.int32)
      out["sem_seg"] = sem
      if self.semantic_instances:
        out.update(T.sem_seg_instances(sem, self.num_classes, valid_hw=out["valid_hw"],
                                       max_instances=self.max_instances, mask_stride=self.mask_stride))
    return self.add_prompts(out, rng)


@register("captions")
class CaptionsTask(Task):
  """Image-caption pairs, one example per caption: resize shortest edge + centre crop (Talk2DINO's 448)."""

  def __init__(self, config, dataset, train):
    super().__init__(config, dataset, train)
    g = config.get
    self.image_size = _hw(g("image_size", 448))
    self.max_caption_bytes = int(g("max_caption_bytes", 256))
    self.tokenizer_name = str(g("tokenizer", "") or "")
    self.context_length = int(g("context_length", 77))
    self._tokenizer = None

  def elements(self, split, dataset):
    view = dataset.split(split)
    rows = []
    for i in range(len(view)):
      caps = view.record(i).get("captions") or {"id": []}
      rows.extend((i, k) for k in range(len(caps["id"])))
    return np.asarray(rows, np.int64).reshape(-1, 2)

  def tokenize(self, text: str) -> np.ndarray:
    if self._tokenizer is None:
      self._tokenizer = TOKENIZERS[self.tokenizer_name]()
    return np.asarray(self._tokenizer(text, self.context_length), np.int32).reshape(self.context_length)

  def __call__(self, record, row, rng):
    image = schema.decode_image(record["image"])
    h, w = image.shape[:2]
    size = self.image_size
    rh, rw = T.shortest_edge_size((h, w), min(size), 1 << 30)
    rh, rw = max(rh, size[0]), max(rw, size[1])
    crop = (int(round((rh - size[0]) / 2.0)), int(round((rw - size[1]) / 2.0)))
    g = T.Geometry((h, w), (rh, rw), size, crop)
    k = int(row[1])
    text = record["captions"]["text"][k]
    data = text.encode("utf-8")[:self.max_caption_bytes]
    caption = np.zeros((self.max_caption_bytes,), np.uint8)
    caption[:len(data)] = np.frombuffer(data, np.uint8)
    out = {"image": T.warp_image(image, g), "valid_hw": np.asarray(size, np.int32),
           "original_hw": np.asarray([h, w], np.int32), "image_id": np.asarray(record["id"], np.int64),
           "caption_id": np.asarray(record["captions"]["id"][k], np.int64), "caption_bytes": caption,
           "caption_length": np.asarray(len(data), np.int32)}
    if self.tokenizer_name:
      out["caption_tokens"] = self.tokenize(text)
    return out

  def __getstate__(self):
    return {**self.__dict__, "_tokenizer": None}


def _clip_tokenizer():
  from dinoseg.backbones.clip_tokenizer import default_tokenizer  # noqa: PLC0415
  tok = default_tokenizer()
  return lambda text, length: tok([text], context_length=length)


# name -> factory() -> callable(text, context_length) -> (context_length,) ids
TOKENIZERS: dict[str, Callable[[], Callable[[str, int], Any]]] = {"clip": _clip_tokenizer}


@register("video")
class VideoTask(Task):
  """Video instance segmentation. Training: clips of `clip_length` frames sharing one geometry, targets
  per track. Evaluation: one example per frame (resize shortest edge), with video id and frame index."""

  def __init__(self, config, dataset, train):
    super().__init__(config, dataset, train)
    g = config.get
    self.clip_length = int(g("clip_length", 2))
    self.frame_range = int(g("frame_range", 20))
    if not train:
      self.eval_short_edge = int(g("eval_short_edge", 480))

  def elements(self, split, dataset):
    view = dataset.split(split)
    if self.train:
      rows = np.arange(len(view), dtype=np.int64)
      if self.filter_empty:
        rows = rows[view.num_instances > 0]
      return rows[:, None]
    rows = []
    for i in range(len(view)):
      n = len(view.record(i)["frames"]["file_name"])
      rows.extend((i, f) for f in range(n))
    return np.asarray(rows, np.int64).reshape(-1, 2)

  def __call__(self, record, row, rng):
    frames = record["frames"]
    h, w = int(record["height"]), int(record["width"])
    if not self.train:
      f = int(row[1])
      image = schema.decode_image(frames["image"][f])
      g = self.geometry(image.shape[:2], None)
      out = self.image_fields(image, g, record)
      out.update(frame_index=np.asarray(f, np.int32), num_frames=np.asarray(len(frames["image"]), np.int32))
      return out
    idx = T.sample_clip(rng, len(frames["image"]), self.clip_length, self.frame_range)
    images = [schema.decode_image(frames["image"][f]) for f in idx]
    g = self.geometry((h, w), rng)
    fields = [self.image_fields(im, g, record) for im in images]
    out = {"image": np.stack([f["image"] for f in fields]), "valid_hw": fields[0]["valid_hw"],
           "original_hw": fields[0]["original_hw"], "image_id": fields[0]["image_id"],
           "frame_indices": idx.astype(np.int32)}
    tracks = record.get("tracks") or {"id": [], "category_id": [], "iscrowd": [], "rle": []}
    labels = self.lookup(tracks["category_id"])
    num_t, num_f = len(tracks["id"]), len(idx)
    masks = np.zeros((num_t, num_f, h, w), np.uint8)
    for t, rles in enumerate(tracks["rle"]):
      for j, f in enumerate(idx):
        if rles[f] is not None:
          masks[t, j] = schema.decode_rles([rles[f]], h, w)[0]
    warped = T.warp_masks(masks, g) if num_t else np.zeros((0, num_f, *self.image_size), np.uint8)
    present = warped.reshape(num_t, num_f, -1).any(-1)
    keep = (labels >= 0) & present.any(1)
    if not self.keep_crowd:
      keep &= ~np.asarray(tracks["iscrowd"], bool).reshape(-1)
    warped, present, labels = warped[keep], present[keep], labels[keep]
    ids = np.asarray(tracks["id"], np.int64).reshape(-1)[keep]
    crowd = np.asarray(tracks["iscrowd"], bool).reshape(-1)[keep]
    k = min(len(ids), self.max_instances)
    tm, hm, wm = self.max_instances, self.image_size[0] // self.mask_stride, self.image_size[1] // self.mask_stride
    boxes = np.zeros((tm, num_f, 4), np.float32)
    for t in range(k):
      boxes[t] = T.xyxy_to_cxcywh_normalized(T.masks_to_boxes_xyxy(warped[t]), out["valid_hw"])
    out.update({
        "labels": np.zeros(tm, np.int32), "track_ids": np.zeros(tm, np.int32), "valid": np.zeros(tm, bool),
        "is_crowd": np.zeros(tm, bool), "boxes": boxes,
        "masks": np.zeros((tm, num_f, hm, wm), np.uint8), "present": np.zeros((tm, num_f), bool),
        "num_truncated": np.asarray(len(ids) - k, np.int32)})
    out["labels"][:k], out["track_ids"][:k], out["valid"][:k] = labels[:k], ids[:k], True
    out["is_crowd"][:k], out["present"][:k] = crowd[:k], present[:k]
    out["masks"][:k] = T.downsample_masks(warped[:k], self.mask_stride, keep_nonempty=True)
    return out


@register("interactive")
class InteractiveTask(Task):
  """Interactive segmentation: one object per example on a longest-side canvas, + prompt-sampler output.

  Training draws one non-crowd object of the record at random; evaluation has one example per object.
  """

  def __init__(self, config, dataset, train):
    super().__init__(config, dataset, train)
    g = config.get
    self.min_scale, self.max_scale = float(g("min_scale", 0.75)), float(g("max_scale", 1.40))

  def elements(self, split, dataset):
    view = dataset.split(split)
    if self.train:
      rows = np.arange(len(view), dtype=np.int64)
      return rows[view.num_instances > 0][:, None]
    rows = []
    for i in range(len(view)):
      crowd = (view.record(i).get("instances") or {"iscrowd": []})["iscrowd"]
      rows.extend((i, k) for k, c in enumerate(crowd) if not c)
    return np.asarray(rows, np.int64).reshape(-1, 2)

  def __call__(self, record, row, rng):
    inst = record["instances"]
    candidates = [k for k, c in enumerate(inst["iscrowd"]) if not c]
    k = int(row[1]) if not self.train else int(candidates[int(rng.integers(len(candidates)))])
    image = schema.decode_image(record["image"])
    mask = schema.decode_rles([inst["rle"][k]], int(record["height"]), int(record["width"]))[0]
    g = T.longest_side_geometry(rng if self.train else None, image.shape[:2], self.image_size,
                                min_scale=self.min_scale, max_scale=self.max_scale, flip_prob=self.flip_prob)
    out = {"image": T.warp_image(image, g, 0), "valid_hw": np.asarray(g.content_hw, np.int32),
           "original_hw": np.asarray(image.shape[:2], np.int32), "image_id": np.asarray(record["id"], np.int64),
           "object_index": np.asarray(k, np.int32), "gt_mask": T.warp_masks(mask, g)}
    return self.add_prompts(out, rng)


__all__ = ["TASKS", "register", "get", "Task", "InstanceTask", "PanopticTask", "SemanticTask", "CaptionsTask",
           "VideoTask", "InteractiveTask", "LabelLookup", "TOKENIZERS"]
