"""grain input pipelines: prepared ArrayRecord shards -> decoded, transformed, fixed-shape batches.

  it = build_train_iterator(config.data, process_index, process_count)   # infinite, checkpointable
  for batch in build_eval_iterator(config.data, process_index, process_count): ...

Training: the example table of the split (`tasks`) is cut into `process_count` disjoint strided slices
(process p reads rows p, p + P, ...), shuffled per epoch (grain's MapDataset.shuffle, reseeded every
epoch), repeated, transformed with a per-example generator (grain random_map: derived from the seed,
the process index and the example's position, so neither the worker count nor a resumption changes a
batch), batched to `batch_size / process_count` (drop remainder), and prefetched by `num_workers`
worker processes (grain mp_prefetch). The iterator's get_state()/set_state() (or
grain.checkpoint.CheckpointSave/CheckpointRestore beside the train state in Orbax) resume exactly.

Evaluation: every example exactly once, in order; the table is padded to a multiple of the global
eval batch with copies of the first examples marked `example_valid = False`, so every process yields
the same number of fixed-shape batches.
"""
import math
from typing import Any, Mapping

import grain
import ml_collections
import numpy as np

from dinoseg.data_pipelines import schema, tasks
from dinoseg.data_pipelines.dataset import PreparedDataset, RecordSource, open_dataset
from dinoseg.errors import UserFileNotFoundError, UserValueError


def default_config() -> ml_collections.ConfigDict:
  """Every option of `config.data` with its default (docs/data.md describes them)."""
  c = ml_collections.ConfigDict()
  c.task = ""                    # instance | panoptic | semantic | captions | video | interactive
                                 # ("": the prepared dataset's own task, manifest metadata.task)
  c.name = ""                    # free-form label of the dataset (logging)
  c.path = ""                    # prepared dataset directory (holds manifest.json)
  c.train_split = "train"
  c.eval_split = "val"
  c.batch_size = 16              # GLOBAL training batch (split evenly over processes)
  c.eval_batch_size = 8          # GLOBAL evaluation batch
  c.image_size = (1024, 1024)    # training canvas (H, W)
  c.eval_image_size = (1344, 1344)
  c.max_instances = 100          # T: instance rows per image
  c.mask_stride = 1              # masks are (H // stride, W // stride)
  c.augment = "lsj"              # lsj | resize_crop (semantic) | none
  c.min_scale = 0.1              # lsj / interactive scale range
  c.max_scale = 2.0
  c.flip_prob = 0.5
  c.pad_is_image = True          # lsj / resize_crop: valid_hw = canvas (the reference's behaviour)
  c.eval_short_edge = 800        # evaluation: ResizeShortestEdge(eval_short_edge, eval_max_size)
  c.eval_max_size = 1333
  c.eval_targets = False         # evaluation batches also carry targets
  c.keep_crowd = False           # keep crowd regions as instances (is_crowd = True)
  c.filter_empty = True          # training skips records without non-crowd objects
  c.drop_rare = False            # training drops annotations of rare (LVIS frequency 'r') categories (sampling.py)
  c.repeat_threshold = 0.0       # > 0: LVIS repeat-factor sampling with this threshold (sampling.py)
  c.seed = 0
  c.shuffle = True
  c.num_epochs = 0               # 0: repeat forever
  c.num_workers = 2              # grain worker processes (0: in the calling process)
  c.worker_buffer_size = 2       # batches buffered per worker
  c.read_threads = 4             # threads per process reading/transforming examples
  c.read_buffer = 16             # examples prefetched by those threads
  c.prompt_sampler = ""          # transforms.PROMPT_SAMPLERS name ("" none)
  c.prompt_sampler_options = ml_collections.ConfigDict()
  c.extra_modules = ()           # modules to import first (they may register prompt samplers / tasks)
  c.label_map = ""               # semantic: manifest label map ("" = the dataset's default)
  c.train_short_sizes = ()       # semantic resize_crop: shortest-edge choices (default: image_size[0])
  c.train_max_size = 4096
  c.single_category_max_area = 1.0
  c.semantic_instances = True    # semantic: also one instance target per class present
  c.clip_length = 2              # video training clips
  c.frame_range = 20
  c.max_caption_bytes = 256      # captions: UTF-8 bytes kept per caption
  c.tokenizer = ""               # captions: tasks.TOKENIZERS name ("" none), adds caption_tokens
  c.context_length = 77
  return c


class _Options(dict):
  """A plain-dict view of the resolved options (picklable, `.get` like ConfigDict)."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError as e:
      raise AttributeError(name) from e


def resolve_config(config: Mapping[str, Any] | ml_collections.ConfigDict) -> _Options:
  """`config` over `default_config()`; unknown keys are a UserValueError naming them."""
  defaults = default_config().to_dict()
  given = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise UserValueError(f"unknown data config keys {unknown} (config.data); see data_pipelines.default_config()")
  defaults.update(given)
  if not defaults["path"]:
    raise UserValueError("config.data.path must name a prepared dataset directory")
  return _Options(defaults)


def per_process_batch_size(global_batch: int, process_count: int, what: str = "batch_size") -> int:
  if global_batch <= 0 or global_batch % process_count:
    raise UserValueError(f"config.data.{what} ({global_batch}) must be positive and divisible by the process count "
                         f"({process_count})")
  return global_batch // process_count


def _check_process(process_index: int, process_count: int) -> None:
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")


class RowSource:
  """Random access to the rows of an (N, k) example table (a grain data source)."""

  def __init__(self, rows: np.ndarray):
    self.rows = np.asarray(rows, np.int64)

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index) -> np.ndarray:
    return self.rows[int(index)]


class _BuildExample:
  """row -> example: reads the record (column 0), runs the task, adds `example_valid` (last column)."""

  def __init__(self, source: RecordSource, task: tasks.Task):
    self.source, self.task = source, task

  def build(self, row: np.ndarray, rng) -> dict:
    record = schema.decode_record(self.source[int(row[0])])
    example = self.task(record, row[:-1], rng)
    example["example_valid"] = np.asarray(bool(row[-1]))
    return example


class TrainExample(grain.transforms.RandomMap):
  """grain RandomMap: row -> training example (the generator is grain's per-example one)."""

  def __init__(self, builder: _BuildExample):
    self.builder = builder

  def random_map(self, row, rng):
    return self.builder.build(row, rng)


class EvalExample(grain.transforms.Map):
  """grain Map: row -> evaluation example (deterministic)."""

  def __init__(self, builder: _BuildExample):
    self.builder = builder

  def map(self, row):
    return self.builder.build(row, None)


def _setup(config, train: bool):
  cfg = resolve_config(config)
  tasks.import_modules(cfg.extra_modules)
  try:
    dataset = open_dataset(cfg.path)
  except UserFileNotFoundError as e:
    raise UserFileNotFoundError(f"config.data.path={cfg.path!r}: {e}") from None
  task = tasks.get(cfg.task or dataset.metadata.get("task", "instance"))(cfg, dataset, train)
  split = cfg.train_split if train else cfg.eval_split
  rows = task.elements(split, dataset)
  if len(rows) == 0:
    raise UserValueError(f"split {split!r} of {cfg.path} has no examples for task {cfg.task!r}")
  return cfg, dataset, task, split, rows


def _finish(ds, cfg):
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(cfg.read_threads),
                                            prefetch_buffer_size=int(cfg.read_buffer)))
  if int(cfg.num_workers) > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(cfg.num_workers),
                                                     per_worker_buffer_size=int(cfg.worker_buffer_size)))
  return ds


def build_train_dataset(config, process_index: int = 0, process_count: int = 1):
  """The training pipeline as a grain IterDataset (module docstring); batches are this process's slice."""
  _check_process(process_index, process_count)
  cfg, dataset, task, split, rows = _setup(config, train=True)
  local_batch = per_process_batch_size(int(cfg.batch_size), process_count)
  table = np.concatenate([rows, np.ones((len(rows), 1), np.int64)], axis=1)
  if float(cfg.get("repeat_threshold", 0.0) or 0.0) > 0:  # repeat-factor order, already repeated (sampling.py)
    from dinoseg.data_pipelines import sampling  # noqa: PLC0415
    ds = sampling.train_rows(cfg, dataset, split, table, process_index, process_count)
  else:
    ds = grain.MapDataset.source(RowSource(table))[process_index::process_count]
    if len(ds) == 0:
      raise ValueError(f"{len(rows)} examples cannot feed {process_count} processes")
    if cfg.shuffle:
      ds = ds.shuffle(seed=int(cfg.seed) % (2 ** 32))
    ds = ds.repeat(int(cfg.num_epochs) or None)
  builder = _BuildExample(dataset.source(split), task)
  ds = ds.random_map(TrainExample(builder), seed=(int(cfg.seed) * 1_000_003 + 7919 * process_index) % (2 ** 32))
  ds = ds.batch(local_batch, drop_remainder=True)
  return _finish(ds, cfg)


def build_train_iterator(config, process_index: int = 0, process_count: int = 1):
  """Infinite iterator of this process's training batches (dicts of NumPy arrays, leading axis
  batch_size / process_count), with get_state() / set_state()."""
  return iter(build_train_dataset(config, process_index, process_count))


def eval_table(rows: np.ndarray, global_batch: int) -> np.ndarray:
  """rows (N, k) -> (ceil(N / G) * G, k + 1): rows, then copies of the first ones; last column = valid."""
  n = len(rows)
  total = max(1, math.ceil(n / global_batch)) * global_batch
  idx = np.arange(total) % n
  return np.concatenate([rows[idx], (np.arange(total) < n).astype(np.int64)[:, None]], axis=1)


def build_eval_dataset(config, process_index: int = 0, process_count: int = 1, split: str | None = None):
  """The evaluation pipeline as a grain IterDataset (module docstring)."""
  _check_process(process_index, process_count)
  if split is not None:
    config = {**(config.to_dict() if hasattr(config, "to_dict") else dict(config)), "eval_split": split}
  cfg, dataset, task, split, rows = _setup(config, train=False)
  global_batch = int(cfg.eval_batch_size)
  local_batch = per_process_batch_size(global_batch, process_count, "eval_batch_size")
  table = eval_table(rows, global_batch)
  ds = grain.MapDataset.source(RowSource(table))[process_index::process_count]
  ds = ds.map(EvalExample(_BuildExample(dataset.source(split), task)))
  ds = ds.batch(local_batch, drop_remainder=True)
  return _finish(ds, cfg)


def build_eval_iterator(config, process_index: int = 0, process_count: int = 1, split: str | None = None):
  """Finite iterator over this process's evaluation batches: every example of the split exactly once
  over all processes, padding rows marked `example_valid = False`; every process yields the same
  number of batches of eval_batch_size / process_count examples."""
  return iter(build_eval_dataset(config, process_index, process_count, split))


def num_eval_batches(config, process_count: int = 1, split: str | None = None) -> int:
  """How many batches `build_eval_iterator` yields on each process."""
  cfg, dataset, task, split, rows = _setup(
      {**(config.to_dict() if hasattr(config, "to_dict") else dict(config)),
       **({"eval_split": split} if split else {})}, train=False)
  return len(eval_table(rows, int(cfg.eval_batch_size))) // int(cfg.eval_batch_size)


__all__ = ["default_config", "resolve_config", "build_train_dataset", "build_train_iterator", "build_eval_dataset",
           "build_eval_iterator", "num_eval_batches", "eval_table", "per_process_batch_size", "RowSource",
           "PreparedDataset"]
