"""Synthetic shapes for the toy task, served through grain (so iterator checkpoints are real).

Example i of a split is a function of (seed, split, i) only:
  image  (H, W, 3) float32: gray noise background with 1-2 shapes; squares reddish, disks bluish
         (random brightness), so both color and shape carry the class
  labels (H, W) int32: 0 background, 1 square, 2 disk (later shapes paint over earlier ones)
  valid  () bool: False for the padding rows that fill the last eval batch

Train batches: `grain.MapDataset` over indices [0, num_train_examples), shuffled per epoch
(seeded), repeated forever, mapped to examples, batched to the *global* batch size; each process
keeps its contiguous slice [p * B / P, (p + 1) * B / P). Building the whole global batch on every
process is wasteful for real data but makes the global batch identical for any process count,
which is what the multi-process test checks. Eval batches are the same without shuffling or
repetition, padded to a whole number of global batches.
"""
import functools

import grain
import numpy as np

CLASS_NAMES = ("background", "square", "disk")
_COLORS = {1: np.array([0.9, 0.25, 0.2], np.float32), 2: np.array([0.2, 0.3, 0.9], np.float32)}
TRAIN, EVAL = 0, 1


def make_example(index: int, *, seed: int, split: int, image_size: int) -> dict[str, np.ndarray]:
  """One synthetic example (module docstring); deterministic in (seed, split, index)."""
  rng = np.random.default_rng([int(seed), int(split), int(index)])
  size = int(image_size)
  image = (0.5 + 0.08 * rng.standard_normal((size, size, 3))).astype(np.float32)
  labels = np.zeros((size, size), np.int32)
  yy, xx = np.mgrid[0:size, 0:size]
  for _ in range(int(rng.integers(1, 3))):
    cls = int(rng.integers(1, 3))
    extent = int(rng.integers(max(3, size // 5), max(4, size // 2) + 1))
    cy, cx = (int(v) for v in rng.integers(extent // 2, size - extent // 2, size=2))
    if cls == 1:
      mask = (np.abs(yy - cy) <= extent // 2) & (np.abs(xx - cx) <= extent // 2)
    else:
      mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= (extent / 2) ** 2
    color = _COLORS[cls] * rng.uniform(0.7, 1.1)
    image[mask] = color + 0.05 * rng.standard_normal((int(mask.sum()), 3)).astype(np.float32)
    labels[mask] = cls
  return {"image": image, "labels": labels, "valid": np.bool_(True)}


def _padding_example(image_size: int) -> dict[str, np.ndarray]:
  return {"image": np.zeros((image_size, image_size, 3), np.float32),
          "labels": np.zeros((image_size, image_size), np.int32), "valid": np.bool_(False)}


def _process_slice(batch: dict, process_index: int, process_count: int) -> dict:
  n = next(iter(batch.values())).shape[0] // process_count
  return {k: v[process_index * n:(process_index + 1) * n] for k, v in batch.items()}


def _check(data_config, process_count: int) -> int:
  batch = int(data_config.batch_size)
  if batch <= 0 or batch % process_count:
    raise ValueError(f"data.batch_size={batch} must be positive and divisible by the {process_count} processes")
  return batch


def train_dataset(data_config, image_size: int, process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """Infinite MapDataset of this process's train batches {"image", "labels", "valid"}."""
  batch = _check(data_config, process_count)
  seed = int(data_config.seed)
  ds = grain.MapDataset.source(grain.sources.RangeDataSource(0, int(data_config.num_train_examples), 1))
  ds = ds.shuffle(seed=seed).repeat()
  ds = ds.map(functools.partial(make_example, seed=seed, split=TRAIN, image_size=image_size))
  ds = ds.batch(batch, drop_remainder=True)
  return ds.map(functools.partial(_process_slice, process_index=process_index, process_count=process_count))


def eval_dataset(data_config, image_size: int, process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """Finite MapDataset of this process's eval batches, the last padded (valid=False rows)."""
  batch = _check(data_config, process_count)
  n = int(data_config.num_eval_examples)
  padded = -(-n // batch) * batch
  seed = int(data_config.seed)

  def example(i: int) -> dict[str, np.ndarray]:
    return make_example(i, seed=seed, split=EVAL, image_size=image_size) if i < n else _padding_example(image_size)

  ds = grain.MapDataset.source(grain.sources.RangeDataSource(0, padded, 1)).map(example)
  ds = ds.batch(batch, drop_remainder=True)
  return ds.map(functools.partial(_process_slice, process_index=process_index, process_count=process_count))


def iterator(dataset: grain.MapDataset):
  """A checkpointable grain DatasetIterator over `dataset` (2 reader threads, small prefetch)."""
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))


__all__ = ["CLASS_NAMES", "make_example", "train_dataset", "eval_dataset", "iterator"]
