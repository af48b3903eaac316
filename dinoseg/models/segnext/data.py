"""SegNext's hooks into the data pipelines: the "segnext" prompt sampler and the evaluation reader.

- Prompt sampler `segnext` (`config.data.prompt_sampler`; this module is listed in
  `config.data.extra_modules` so that grain workers register it too): for the "interactive" data
  task's example (`gt_mask` (S, S) on the training canvas) it returns the reference layouts of
  `sampler.PromptSampler`, as int32 so that a bfloat16 compute dtype never rounds coordinates:
  points (2N, 3), boxes (4,), scribbles (S, K, 2), scribble_labels (S,). The data task exposes
  one object per example, so the sampler's "other objects" negatives fall back to the background
  and objects are never merged (the reference merges 2 objects with probability 0.15).
- `InteractiveEvalBatches`: the evaluation examples at ORIGINAL resolution (the click protocol
  works on the original ground truth), one per non-crowd object of a prepared dataset split,
  batched on a canvas bucketed to the global batch's largest image, with the GT box and a deterministic
  GT scribble for the one-round evaluations.
"""
import numpy as np

from dinoseg.data_pipelines import transforms as T
from dinoseg.errors import UserValueError
from dinoseg.models.segnext.sampler import PromptSampler, PromptSamplerConfig


class DataPromptSampler:
  """example -> prompt arrays (picklable; grain sends it to worker processes)."""

  def __init__(self, **options):
    fields = {f for f in PromptSamplerConfig.__dataclass_fields__}
    unknown = sorted(set(options) - fields)
    if unknown:
      raise UserValueError(f"unknown segnext prompt_sampler_options {unknown}; known: {sorted(fields)}")
    self.sampler = PromptSampler(PromptSamplerConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                        for k, v in options.items()}))

  def __call__(self, example: dict, rng) -> dict:
    gt = np.asarray(example["gt_mask"]).astype(bool)
    rng = rng if rng is not None else np.random.default_rng(0)
    masks = gt[None] if gt.any() else np.zeros((0, *gt.shape), bool)
    s = self.sampler(masks, rng)
    return {"points": s.points.astype(np.int32), "boxes": np.round(s.box).astype(np.int32),
            "scribbles": np.round(s.scribbles).astype(np.int32), "scribble_labels": s.scribble_labels}


if "segnext" not in T.PROMPT_SAMPLERS:
  T.register_prompt_sampler("segnext")(DataPromptSampler)


def canvas_bucket(n: int) -> int:
  from dinoseg.models.segnext.predictor import canvas_bucket as bucket  # noqa: PLC0415
  return bucket(n)


class InteractiveEvalBatches:
  """Iterable of evaluation batches (NumPy) of one prepared split, this process's share.

  Each batch: image (B, Hc, Wc, 3) uint8, image_hw (B, 2) int32, gt (B, Hc, Wc) int8 (1 object,
  0 background), box (B, 4) int32 xyxy (the GT box), scribble (B, K, 2) int32 (y, x) (a positive
  scribble walked inside the GT from a seeded generator), valid (B,) bool (False: padding rows),
  example_id (B, 2) int64 (record index, object index).

  Args:
    path: prepared dataset directory.
    split: split name.
    batch_size: GLOBAL batch size (each process yields batch_size / process_count rows).
    sampler: the PromptSampler drawing scribbles.
    max_examples: 0 = all.
  """

  def __init__(self, path: str, split: str, batch_size: int, sampler: PromptSampler, process_index: int = 0,
               process_count: int = 1, max_examples: int = 0, seed: int = 0):
    from dinoseg.data_pipelines.dataset import open_dataset  # noqa: PLC0415
    if batch_size <= 0 or batch_size % process_count:
      raise UserValueError(f"eval batch size {batch_size} must be positive and divisible by {process_count} processes")
    self.view = open_dataset(path).split(split)
    rows = []
    for i in range(len(self.view)):
      crowd = (self.view.record(i).get("instances") or {"iscrowd": []})["iscrowd"]
      rows.extend((i, k) for k, c in enumerate(crowd) if not c)
    if max_examples:
      rows = rows[:max_examples]
    if not rows:
      raise UserValueError(f"{path} split {split!r} has no objects to evaluate")
    n = -(-len(rows) // batch_size) * batch_size
    self.rows = [(r, True) for r in rows] + [(rows[0], False)] * (n - len(rows))
    self.local = batch_size // process_count
    self.batch_size, self.process_index, self.process_count = batch_size, process_index, process_count
    self.sampler, self.seed = sampler, seed
    self.num_examples = len(rows)

  def _example(self, row):
    from dinoseg.data_pipelines import schema  # noqa: PLC0415
    (i, k), valid = row
    record = self.view.record(i)
    image = schema.decode_image(record["image"])
    mask = schema.decode_rles([record["instances"]["rle"][k]], int(record["height"]), int(record["width"]))[0]
    ys, xs = np.nonzero(mask)
    box = (xs.min(), ys.min(), xs.max(), ys.max()) if len(ys) else (-1, -1, -1, -1)
    scribble = self.sampler.sample_scribble(mask.astype(bool), np.random.default_rng((self.seed, i, k)))
    if scribble is None:
      scribble = np.zeros((self.sampler.config.scribble_length, 2), np.float32)
    return image, mask, np.asarray(box, np.int32), np.round(scribble).astype(np.int32), valid, (i, k)

  def __len__(self):
    return len(self.rows) // self.batch_size

  def __iter__(self):
    for start in range(0, len(self.rows), self.batch_size):
      # One canvas for the global batch (every process must yield the same shapes).
      sizes = [(int(rec["height"]), int(rec["width"])) for rec in
               (self.view.record(i) for (i, _), _ in self.rows[start:start + self.batch_size])]
      hc, wc = canvas_bucket(max(h for h, _ in sizes)), canvas_bucket(max(w for _, w in sizes))
      mine = self.rows[start + self.process_index * self.local: start + (self.process_index + 1) * self.local]
      examples = [self._example(r) for r in mine]
      b = len(examples)
      batch = {"image": np.zeros((b, hc, wc, 3), np.uint8), "image_hw": np.zeros((b, 2), np.int32),
               "gt": np.zeros((b, hc, wc), np.int8), "box": np.stack([e[2] for e in examples]),
               "scribble": np.stack([e[3] for e in examples]), "valid": np.asarray([e[4] for e in examples]),
               "example_id": np.asarray([e[5] for e in examples], np.int64)}
      for j, (image, mask, *_rest) in enumerate(examples):
        h, w = mask.shape
        batch["image"][j, :h, :w] = image
        batch["gt"][j, :h, :w] = mask
        batch["image_hw"][j] = (h, w)
      yield batch
