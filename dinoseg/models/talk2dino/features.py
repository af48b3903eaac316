"""Talk2DINO feature pre-extraction (a resumable job) and the caption-level training source.

The projection is trained on cached features, as in the reference (`dino_extraction_v2.py`
+ `text_features_extraction.py`):

- images: PIL bicubic resize of the short side to 448 (torchvision `Resize(448)` rounding:
  long = int(448 * long / short)), centre crop 448 (`CenterCrop`: offsets
  int(round((size - 448) / 2))), /255, ImageNet mean/std; frozen DINOv2 -> the two pooled
  embeddings of `pooling.py`: `avg_self_attn_out` (D,) and `disentangled_self_attn` (H, D);
- captions: CLIP tokenizer with truncation, `encode_text` -> `ann_feats` (512,), raw
  (the reference stores fp16 on GPU; here float32).

Output: ArrayRecord shards `features-SSSSS-of-NNNNN.array_record` in one directory, one record
per image (all its captions inside), plus `manifest.json` (model name, widths, and per shard
the number of captions of each record). A shard covers a fixed range of source images and is
written to a temporary name, then renamed: a killed job restarts at the first missing shard.

Training reads the shards through grain with one sample per caption (`CaptionFeatureSource`):
an image's features repeat for each of its captions, as in the reference `DinoClipDataset`.
"""
import dataclasses
import functools
import io
import json
import os
import pathlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.ops import pixels

MANIFEST = "manifest.json"
SHARD_PATTERN = "features-{index:05d}-of-{count:05d}.array_record"
IMAGE_FEATURES = ("avg_self_attn_out", "disentangled_self_attn")
TEXT_FEATURES = "ann_feats"


# --------------------------------------------------------------------------- preprocessing


def resize_crop_size(height: int, width: int, size: int = 448) -> tuple[int, int, int, int]:
  """torchvision Resize(size) + CenterCrop(size) geometry.

  Returns:
    (resized_h, resized_w, crop_top, crop_left).
  """
  if height <= 0 or width <= 0:
    raise ValueError(f"image size must be positive, got {height}x{width}")
  short, long = (width, height) if width <= height else (height, width)
  new_short, new_long = size, int(size * long / short)
  new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
  return new_h, new_w, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


def preprocess_image(image: Any, size: int = 448) -> np.ndarray:
  """An RGB image (uint8 (H, W, 3) array or PIL image) -> (size, size, 3) float32 normalized.

  PIL bicubic resize of the short side, centre crop, /255, ImageNet mean/std (the reference's
  training transform). Grayscale / RGBA inputs are converted to RGB like the reference.
  """
  from PIL import Image  # noqa: PLC0415
  if not isinstance(image, Image.Image):
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
      raise ValueError(f"image must be a uint8 (H, W, 3) RGB array or a PIL image, got {array.shape} {array.dtype}")
    image = Image.fromarray(array)
  if image.mode != "RGB":
    image = image.convert("RGB")
  new_h, new_w, top, left = resize_crop_size(image.height, image.width, size)
  image = image.resize((new_w, new_h), Image.BICUBIC)
  return pixels.normalize_pixels(np.asarray(image)[top:top + size, left:left + size])


# --------------------------------------------------------------------------- records


def encode_record(record: Mapping[str, np.ndarray]) -> bytes:
  """{name: array} -> bytes (an uncompressed .npz)."""
  buffer = io.BytesIO()
  np.savez(buffer, **{k: np.asarray(v) for k, v in record.items()})
  return buffer.getvalue()


def decode_record(data: bytes) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(data), allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


@dataclasses.dataclass
class ImageSample:
  """One source image with its captions (what the extraction job consumes)."""
  image_id: int
  image: Any                      # uint8 (H, W, 3) RGB array or PIL image
  captions: Sequence[str]
  caption_ids: Sequence[int] = ()


# --------------------------------------------------------------------------- extraction


@functools.partial(jax.jit, static_argnums=0)
def _pooled(model, params, images):
  """(B, S, S, 3) normalized images -> (avg (B, D), disentangled (B, H, D))."""
  from dinoseg.models.talk2dino.model import Talk2Dino  # noqa: PLC0415
  from dinoseg.models.talk2dino.pooling import average_head_pooling, disentangled_head_pooling  # noqa: PLC0415
  feats = model.apply({"params": params}, images, method=Talk2Dino.encode_image)
  return (average_head_pooling(feats.cls_logits, feats.patch_tokens),
          disentangled_head_pooling(feats.cls_logits, feats.patch_tokens))


@functools.partial(jax.jit, static_argnums=0)
def _encode(model, params, ids):
  from dinoseg.models.talk2dino.model import Talk2Dino  # noqa: PLC0415
  return model.apply({"params": params}, ids, method=Talk2Dino.encode_text)


class FeatureExtractor:
  """Jitted DINOv2 pooling and CLIP caption encoding for one Talk2Dino model.

  Args:
    model: `Talk2Dino`.
    params: its parameters (`dinov2` and `clip_text` are used).
    image_batch: images per DINOv2 call (the last batch is padded).
    text_batch: captions per CLIP call (padded); caption lengths are bucketed to multiples of 16.
  """

  def __init__(self, model, params, image_batch: int = 64, text_batch: int = 256):
    if image_batch <= 0 or text_batch <= 0:
      raise UserValueError(f"image_batch and text_batch must be positive, got {image_batch}, {text_batch}")
    self.model, self.image_batch, self.text_batch = model, image_batch, text_batch
    self._vision = {"dinov2": params["dinov2"]}
    self._text = {"clip_text": params["clip_text"]}

  def images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, S, S, 3) normalized images -> avg (B, D), disentangled (B, H, D) float32 (B padded internally)."""
    b = images.shape[0]
    pad = -b % self.image_batch
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    avgs, heads = [], []
    for i in range(0, images.shape[0], self.image_batch):
      a, h = _pooled(self.model, self._vision, images[i:i + self.image_batch])
      avgs.append(np.asarray(a))
      heads.append(np.asarray(h))
    return np.concatenate(avgs)[:b], np.concatenate(heads)[:b]

  def captions(self, captions: Sequence[str]) -> np.ndarray:
    """Raw CLIP embeddings (M, E) of captions, tokenized with truncation."""
    from dinoseg.backbones.clip_tokenizer import tokenize  # noqa: PLC0415
    if not captions:
      return np.zeros((0, self.model.clip_text.embed_dim), np.float32)
    ids = np.asarray(tokenize(list(captions), truncate=True), np.int32)
    length = min(ids.shape[1], -(-(int(np.argmax(ids, axis=1).max()) + 1) // 16) * 16)
    ids = ids[:, :length]
    m = ids.shape[0]
    pad = -m % self.text_batch
    if pad:
      ids = np.concatenate([ids, np.zeros((pad, length), np.int32)])
    out = [np.asarray(_encode(self.model, self._text, ids[i:i + self.text_batch]))
           for i in range(0, len(ids), self.text_batch)]
    return np.concatenate(out)[:m]


def shard_ranges(num_images: int, shard_size: int) -> list[tuple[int, int]]:
  """[start, end) image ranges of the shards."""
  if shard_size <= 0:
    raise UserValueError(f"shard_size must be positive, got {shard_size}")
  return [(s, min(s + shard_size, num_images)) for s in range(0, num_images, shard_size)]


def extract_features(source: Sequence[ImageSample], extractor: FeatureExtractor, out_dir: str | os.PathLike,
                     shard_size: int = 1024, image_size: int = 448, image_dtype: str = "float32",
                     metadata: Mapping[str, Any] | None = None, progress: bool = True,
                     load: Callable[[ImageSample], np.ndarray] | None = None) -> dict[str, Any]:
  """Runs the extraction job (resumable); returns the manifest.

  Args:
    source: random-access sequence of ImageSample (len() and [i]).
    extractor: FeatureExtractor.
    out_dir: output directory (created).
    shard_size: images per shard.
    image_size: DINOv2 input size (448).
    image_dtype: "float32" or "float16" for the stored image features.
    metadata: extra manifest entries (model names, config).
    progress: show a tqdm progress bar.
    load: optional sample -> preprocessed image; default `preprocess_image(sample.image)`.
  """
  from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415
  from tqdm import tqdm  # noqa: PLC0415
  if image_dtype not in ("float32", "float16"):
    raise UserValueError(f"image_dtype must be 'float32' or 'float16', got {image_dtype!r}")
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  ranges = shard_ranges(len(source), shard_size)
  manifest_path = out / MANIFEST
  manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
  settings = {"num_images": len(source), "shard_size": shard_size, "image_size": image_size,
              "image_dtype": image_dtype, **dict(metadata or {})}
  previous = manifest.get("settings")
  if previous is not None and previous != json.loads(json.dumps(settings)):
    raise UserValueError(f"{out} holds features extracted with other settings ({previous}); use another out_dir")
  manifest["settings"] = settings
  shards = manifest.setdefault("shards", {})
  load = load or (lambda sample: preprocess_image(sample.image, image_size))
  bar = tqdm(total=len(source), desc="talk2dino features", unit="img", disable=not progress)
  for index, (start, end) in enumerate(ranges):
    name = SHARD_PATTERN.format(index=index, count=len(ranges))
    if name in shards and (out / name).exists():
      bar.update(end - start)
      continue
    records, caption_counts = [], []
    for b0 in range(start, end, extractor.image_batch):
      samples = [source[i] for i in range(b0, min(b0 + extractor.image_batch, end))]
      avg, heads = extractor.images(np.stack([load(s) for s in samples]))
      captions = [c for s in samples for c in s.captions]
      text = extractor.captions(captions)
      offset = 0
      for j, s in enumerate(samples):
        n = len(s.captions)
        caption_ids = np.asarray(list(s.caption_ids) if len(s.caption_ids) else range(n), np.int64)
        if caption_ids.shape != (n,):
          raise ValueError(f"image {s.image_id}: {n} captions but {caption_ids.shape[0]} caption ids")
        records.append(encode_record({
            "image_id": np.int64(s.image_id), "caption_ids": caption_ids,
            "avg_self_attn_out": avg[j].astype(image_dtype),
            "disentangled_self_attn": heads[j].astype(image_dtype),
            TEXT_FEATURES: text[offset:offset + n].astype(np.float32)}))
        caption_counts.append(n)
        offset += n
      bar.update(len(samples))
    tmp = out / (name + ".tmp")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    for record in records:
      writer.write(record)
    writer.close()
    os.replace(tmp, out / name)
    shards[name] = caption_counts
    manifest_path.write_text(json.dumps(manifest))
  bar.close()
  manifest["complete"] = all(SHARD_PATTERN.format(index=i, count=len(ranges)) in shards for i in range(len(ranges)))
  manifest_path.write_text(json.dumps(manifest))
  return manifest


# --------------------------------------------------------------------------- training source


def read_manifest(feature_dir: str | os.PathLike) -> dict[str, Any]:
  path = pathlib.Path(feature_dir) / MANIFEST
  if not path.exists():
    raise UserFileNotFoundError(f"{path} not found: run the Talk2DINO feature extraction first")
  manifest = json.loads(path.read_text())
  if not manifest.get("complete"):
    raise UserValueError(f"{feature_dir}: the feature extraction has not finished (re-run it to resume)")
  return manifest


class CaptionFeatureSource:
  """grain random-access source: one sample per caption of the extracted shards.

  Sample i: {"image": the image's `image_feature` ((H, D) or (D,)), "text": (E,) raw caption
  embedding, "image_id", "caption_id"}.
  """

  def __init__(self, feature_dir: str | os.PathLike, image_feature: str = "disentangled_self_attn"):
    from grain.sources import ArrayRecordDataSource  # noqa: PLC0415
    if image_feature not in IMAGE_FEATURES:
      raise UserValueError(f"image_feature must be one of {IMAGE_FEATURES}, got {image_feature!r}")
    manifest = read_manifest(feature_dir)
    names = sorted(manifest["shards"])
    counts = np.concatenate([np.asarray(manifest["shards"][n], np.int64) for n in names]) if names else np.zeros(0)
    self._records = ArrayRecordDataSource([str(pathlib.Path(feature_dir) / n) for n in names])
    self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self.image_feature = image_feature
    self.manifest = manifest

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"caption index {index} out of range [0, {len(self)})")
    record = int(np.searchsorted(self._starts, index, side="right") - 1)
    fields = decode_record(self._records[record])
    j = index - int(self._starts[record])
    return {"image": fields[self.image_feature].astype(np.float32), "text": fields[TEXT_FEATURES][j],
            "image_id": fields["image_id"], "caption_id": fields["caption_ids"][j]}


class CaptionBatches:
  """Random-access padded caption batches, step by step: the reference DataLoader (shuffled every
  epoch, last batch kept) with static shapes, usable as a grain source.

  Step s is batch j = s mod n_b of epoch e = s // n_b (n_b = ceil(N / batch_size)); epoch e's
  order is a permutation seeded by (seed, e) (identity when `shuffle` is False). The last batch of
  an epoch is padded with zeros and valid=False. With `process_count` > 1 each process gets rows
  [process_index * B / P, (process_index + 1) * B / P) of every global batch.

  Items: {"image": (b, ...) float32, "text": (b, E) float32, "valid": (b,) bool}, b = B / P.
  """

  def __init__(self, source, batch_size: int, seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
               process_index: int = 0, process_count: int = 1):
    if batch_size <= 0:
      raise UserValueError(f"batch_size must be positive, got {batch_size}")
    if process_count <= 0 or batch_size % process_count or not 0 <= process_index < process_count:
      raise UserValueError(f"batch_size {batch_size} must split evenly over process_count {process_count} "
                       f"(process_index {process_index})")
    if len(source) == 0:
      raise UserValueError("the caption source is empty")
    self.source, self.batch_size, self.seed, self.shuffle = source, batch_size, seed, shuffle
    self.num_epochs, self.process_index, self.process_count = num_epochs, process_index, process_count
    self.batches_per_epoch = -(-len(source) // batch_size)
    self._order = {}

  def __len__(self) -> int:
    return self.batches_per_epoch * self.num_epochs if self.num_epochs else 2 ** 62

  def order(self, epoch: int) -> np.ndarray:
    if epoch not in self._order:
      n = len(self.source)
      self._order = {epoch: np.random.default_rng((self.seed, epoch)).permutation(n) if self.shuffle
                     else np.arange(n)}
    return self._order[epoch]

  def __getitem__(self, step: int) -> dict[str, np.ndarray]:
    epoch, j = divmod(int(step), self.batches_per_epoch)
    rows = self.batch_size // self.process_count
    start = j * self.batch_size + self.process_index * rows
    idx = self.order(epoch)[start:start + rows]
    samples = [self.source[int(i)] for i in idx]
    if not samples:  # this process's rows are all padding
      samples, valid = [self.source[0]], np.zeros((0,), bool)
    else:
      valid = np.ones((len(samples),), bool)
    image = np.stack([s["image"] for s in samples])[:len(valid)]
    text = np.stack([s["text"] for s in samples])[:len(valid)]
    pad = rows - len(valid)
    if pad:
      image = np.concatenate([image, np.zeros((pad,) + image.shape[1:], np.float32)])
      text = np.concatenate([text, np.zeros((pad,) + text.shape[1:], np.float32)])
      valid = np.concatenate([valid, np.zeros((pad,), bool)])
    return {"image": image.astype(np.float32), "text": text.astype(np.float32), "valid": valid}


def caption_batches(source, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> Iterable[dict]:
  """One epoch of padded batches (`CaptionBatches` steps of epoch `epoch`)."""
  batches = CaptionBatches(source, batch_size, seed, shuffle)
  first = epoch * batches.batches_per_epoch
  return (batches[s] for s in range(first, first + batches.batches_per_epoch))


__all__ = ["preprocess_image", "resize_crop_size", "encode_record", "decode_record", "ImageSample",
           "FeatureExtractor", "extract_features", "shard_ranges", "read_manifest", "CaptionFeatureSource",
           "caption_batches", "CaptionBatches", "IMAGE_FEATURES", "TEXT_FEATURES"]
