"""Per-image category index, rare-category filtering and repeat-factor sampling for LVIS-style training.

  index = category_index(dataset, "train")     # per-record category ids + per-category image counts (cached)
  rare = rare_category_ids(dataset)            # LVIS frequency 'r'
  factors = repeat_factors(index.record_categories(rows, drop=rare), threshold=0.001)
  ds = RepeatFactorDataset(RowSource(table), factors, seed=0)   # grain MapDataset of rows, infinite

- **Category index** (`category_index`): the category ids of every record's objects (crowd included, as
  detectron2 counts them) and the number of images per category, read once from the prepared split (the
  records are decoded without images and masks) and cached as an .npz beside the dataset (or under
  `$DINOSEG_CACHE_DIR` / `~/.cache/dinoseg` when the dataset directory is read-only), keyed by the shards'
  SHA-256 sums. No network.
- **norare** (`config.data.drop_rare`): the annotations of rare categories (LVIS `frequency` 'r') are dropped, as
  Detic's `lvis_v1_train_norare.json` (the reference's training set) does; the label space keeps every category.
  With `filter_empty`, records left without annotations are skipped (detectron2's FILTER_EMPTY_ANNOTATIONS on
  that JSON).
- **Repeat-factor sampling** (detectron2's `RepeatFactorTrainingSampler` with
  `repeat_factors_from_category_frequency`, `config.data.repeat_threshold` t, 0.001 for LVIS): f_c = fraction of
  the training images containing category c, r_c = max(1, sqrt(t / f_c)), r_i = max over the image's categories
  (1 for an image without any). Epoch e repeats image i floor(r_i) times plus once more with probability
  frac(r_i) (stochastic rounding, uniforms from `np.random.default_rng((seed, e))`), then shuffles the epoch's
  list (same generator). `RepeatFactorDataset` is a grain MapDataset over that infinite (or `num_epochs`) sequence
  with random access: position n of process p is global position n * P + p, so processes read disjoint interleaved
  slices; a grain iterator's state (its position) resumes it exactly and the worker count changes nothing.
"""
import functools
import hashlib
import logging
import os
import pathlib
import sys
from typing import Sequence

import grain
import numpy as np

from dinoseg.data_pipelines import schema
from dinoseg.data_pipelines.dataset import PreparedDataset
from dinoseg.errors import UserValueError

log = logging.getLogger(__name__)
CACHE_VERSION = 1


class CategoryIndex:
  """Category ids of every record of one split.

  Attributes:
    offsets: (N + 1,) int64, record i's ids are ids[offsets[i]:offsets[i + 1]] (one per object).
    ids: (M,) int64 dataset category ids.
  """

  def __init__(self, offsets: np.ndarray, ids: np.ndarray):
    self.offsets = np.asarray(offsets, np.int64)
    self.ids = np.asarray(ids, np.int64)

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def of(self, record: int) -> np.ndarray:
    return self.ids[self.offsets[record]:self.offsets[record + 1]]

  def record_categories(self, records: Sequence[int], drop: Sequence[int] = ()) -> list[np.ndarray]:
    """Unique category ids of each record in `records`, without the ids in `drop`."""
    drop = np.asarray(list(drop), np.int64)
    out = []
    for r in np.asarray(records, np.int64).reshape(-1):
      ids = np.unique(self.of(int(r)))
      out.append(ids[~np.isin(ids, drop)] if drop.size else ids)
    return out

  def image_counts(self, category_ids: Sequence[int], records: Sequence[int] | None = None,
                   drop: Sequence[int] = ()) -> np.ndarray:
    """(len(category_ids),) int64: the number of records (all, or `records`) containing each category; ids in
    `drop` count 0."""
    records = np.arange(len(self)) if records is None else records
    cats = self.record_categories(records, drop)
    flat = np.concatenate(cats) if cats else np.zeros(0, np.int64)
    uniq, counts = np.unique(flat, return_counts=True)
    table = dict(zip(uniq.tolist(), counts.tolist()))
    return np.asarray([table.get(int(c), 0) for c in category_ids], np.int64)


def _fingerprint(dataset: PreparedDataset, split: str) -> str:
  entry = dataset.manifest["splits"][split]
  digest = hashlib.sha256(f"v{CACHE_VERSION}/{split}".encode())
  for shard in entry["shards"]:
    digest.update(f"{shard.get('file')}:{shard.get('num_records')}:{shard.get('sha256')}".encode())
  return digest.hexdigest()[:20]


def _cache_paths(dataset: PreparedDataset, split: str) -> list[pathlib.Path]:
  name = f"category_index-{split}-{_fingerprint(dataset, split)}.npz"
  user = pathlib.Path(os.environ.get("DINOSEG_CACHE_DIR") or pathlib.Path.home() / ".cache" / "dinoseg")
  return [dataset.path / "cache" / name, user / "category_index" / name]


def _scan(dataset: PreparedDataset, split: str) -> CategoryIndex:
  view = dataset.split(split)
  offsets, ids = [0], []
  for i in range(len(view)):
    ex = schema.decode_example(view.record(i), image=False, masks=False)
    cats = np.asarray((ex.get("instances") or {}).get("category_id", np.zeros(0)), np.int64).reshape(-1)
    ids.append(cats)
    offsets.append(offsets[-1] + len(cats))
  return CategoryIndex(np.asarray(offsets), np.concatenate(ids) if ids else np.zeros(0, np.int64))


@functools.lru_cache(maxsize=8)
def _category_index(path: str, split: str) -> CategoryIndex:
  dataset = PreparedDataset(path)
  if split not in dataset.splits:
    raise UserValueError(f"dataset {path} has no split {split!r} (splits: {dataset.splits})")
  paths = _cache_paths(dataset, split)
  for p in paths:
    if p.is_file():
      try:
        with np.load(p) as f:
          return CategoryIndex(f["offsets"], f["ids"])
      except (OSError, ValueError, KeyError):
        log.warning("ignoring an unreadable category index cache %s", p)
  log.info("indexing the categories of %s split %s (once; cached)", path, split)
  index = _scan(dataset, split)
  for p in paths:
    try:
      p.parent.mkdir(parents=True, exist_ok=True)
      tmp = p.with_name(p.name + f".tmp{os.getpid()}.npz")
      np.savez(tmp, offsets=index.offsets, ids=index.ids)
      os.replace(tmp, p)
      break
    except OSError:
      continue
  return index


def category_index(dataset: PreparedDataset, split: str) -> CategoryIndex:
  """The CategoryIndex of a prepared split (module docstring; computed once, cached on disk and in memory)."""
  return _category_index(str(pathlib.Path(dataset.path).resolve()), split)


def rare_category_ids(dataset: PreparedDataset) -> np.ndarray:
  """Ids of the categories whose LVIS `frequency` is 'r' (empty when the dataset has no frequencies)."""
  return np.asarray(sorted(int(c["id"]) for c in dataset.categories if c.get("frequency") == "r"), np.int64)


def repeat_factors(image_categories: Sequence[np.ndarray], threshold: float) -> np.ndarray:
  """(N,) float64 LVIS repeat factors r_i = max(1, max_{c in image i} sqrt(threshold / f_c)), f_c = fraction of
  the N images containing c; 1 for an image without categories."""
  if not threshold > 0:
    raise UserValueError(f"config.data.repeat_threshold must be positive, got {threshold}")
  n = len(image_categories)
  if n == 0:
    return np.zeros(0, np.float64)
  flat = np.concatenate([np.unique(np.asarray(c, np.int64)) for c in image_categories])
  uniq, counts = np.unique(flat, return_counts=True)
  rep = np.maximum(1.0, np.sqrt(threshold / (counts / n)))
  table = dict(zip(uniq.tolist(), rep.tolist()))
  return np.asarray([max([table[int(c)] for c in np.asarray(cats).reshape(-1)], default=1.0)
                     for cats in image_categories], np.float64)


class RepeatFactorDataset(grain.MapDataset):
  """Rows of `parent` in repeat-factor order (module docstring): element n = parent[epoch_order[...]] at global
  position n * process_count + process_index.

  Args:
    parent: a grain MapDataset (or random-access source) of N rows.
    factors: (N,) repeat factors (>= 0).
    seed: base seed; epoch e uses np.random.default_rng((seed, e)).
    shuffle: shuffle each epoch's list (the sampler always does; False keeps the expanded order, for tests).
    num_epochs: 0 = infinite.
  """

  def __init__(self, parent, factors: np.ndarray, *, seed: int = 0, shuffle: bool = True, num_epochs: int = 0,
               process_index: int = 0, process_count: int = 1):
    if not isinstance(parent, grain.MapDataset):
      parent = grain.MapDataset.source(parent)
    super().__init__(parent)
    factors = np.asarray(factors, np.float64)
    if factors.shape != (len(parent),):
      raise ValueError(f"factors must have shape ({len(parent)},), got {factors.shape}")
    if np.any(factors < 0) or not np.all(np.isfinite(factors)):
      raise ValueError("repeat factors must be finite and non-negative")
    self.int_part = np.floor(factors).astype(np.int64)
    self.frac_part = factors - self.int_part
    self.seed, self.shuffle, self.num_epochs = int(seed), bool(shuffle), int(num_epochs)
    self.process_index, self.process_count = int(process_index), int(process_count)
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")
    if np.sum(self.int_part) == 0 and not np.any(self.frac_part > 0):
      raise ValueError("every repeat factor is 0: nothing to sample")
    self._ends = []  # cumulative epoch lengths
    self._cache = {}

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The parent indices of epoch `epoch`, in order."""
    if epoch in self._cache:
      return self._cache[epoch]
    rng = np.random.default_rng((self.seed, epoch))
    reps = self.int_part + (rng.random(len(self.int_part)) < self.frac_part)
    order = np.repeat(np.arange(len(self.int_part), dtype=np.int64), reps)
    if self.shuffle:
      order = order[rng.permutation(len(order))]
    if len(self._cache) >= 2:
      self._cache.pop(min(self._cache))
    self._cache[epoch] = order
    return order

  def _epoch_end(self, epoch: int) -> int:
    while len(self._ends) <= epoch:
      e = len(self._ends)
      self._ends.append((self._ends[-1] if self._ends else 0) + len(self.epoch_order(e)))
    return self._ends[epoch]

  def _global_length(self) -> int:
    return self._epoch_end(self.num_epochs - 1) if self.num_epochs else sys.maxsize

  def __len__(self) -> int:
    total = self._global_length()
    if total == sys.maxsize:
      return sys.maxsize
    return max(0, (total - self.process_index + self.process_count - 1) // self.process_count)

  def locate(self, position: int) -> tuple[int, int]:
    """(epoch, offset) of a global position."""
    epoch = 0
    while self._epoch_end(epoch) <= position:
      epoch += 1
    start = self._ends[epoch - 1] if epoch else 0
    return epoch, position - start

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    position = int(index) * self.process_count + self.process_index
    epoch, offset = self.locate(position)
    return self._parent[int(self.epoch_order(epoch)[offset])]

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"] = {}
    return state

  def __str__(self) -> str:
    return f"RepeatFactorDataset(seed={self.seed}, num_epochs={self.num_epochs})"


def drop_rare_rows(rows: np.ndarray, dataset: PreparedDataset, split: str) -> np.ndarray:
  """rows (N, k) -> the rows whose record keeps an annotation once the rare categories are dropped."""
  index = category_index(dataset, split)
  rare = rare_category_ids(dataset)
  keep = np.asarray([len(c) > 0 for c in index.record_categories(rows[:, 0], drop=rare)], bool)
  return rows[keep]


def train_rows(config, dataset: PreparedDataset, split: str, table: np.ndarray, process_index: int,
               process_count: int) -> grain.MapDataset:
  """The training rows of `table` (column 0 = record index) in repeat-factor order for `config.data`
  (repeat_threshold > 0; drop_rare; seed; shuffle; num_epochs); the pipeline maps and batches them."""
  from dinoseg.data_pipelines.pipeline import RowSource  # noqa: PLC0415
  index = category_index(dataset, split)
  drop = rare_category_ids(dataset) if config.get("drop_rare", False) else ()
  factors = repeat_factors(index.record_categories(table[:, 0], drop=drop), float(config.repeat_threshold))
  log.info("repeat-factor sampling (threshold %g): %d images, %.1f expected per epoch, max factor %.2f",
           float(config.repeat_threshold), len(factors), float(np.sum(factors)), float(np.max(factors, initial=0)))
  return RepeatFactorDataset(RowSource(table), factors, seed=int(config.seed) % (2 ** 32),
                             shuffle=bool(config.shuffle), num_epochs=int(config.num_epochs),
                             process_index=process_index, process_count=process_count)


__all__ = ["CategoryIndex", "category_index", "rare_category_ids", "repeat_factors", "RepeatFactorDataset",
           "drop_rare_rows", "train_rows"]
