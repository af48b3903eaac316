"""The config groups the trainer reads: `config.train` and `config.optimizer`.

Every config that `dinoseg train` runs starts from these (they only import ml_collections, so a
config file can call them cheaply) and changes what its recipe needs:

  c.train = defaults.train_config(num_steps=368_750, checkpoint_every_steps=5000)
  c.optimizer = defaults.optimizer_config(learning_rate=1e-4, weight_decay=0.05,
                                          lr_multipliers=(("backbone", 0.1),), clip_grad_norm=0.01,
                                          schedule="step", decay_steps=(327_778, 355_092))

Besides these groups the trainer reads `config.task` (the registered task), `config.seed`,
`config.mesh` ({"data": -1, "fsdp": 1, "tensor": 1}), if present `config.sharding_rules`, and
`config.init`, the pretrained initialisation entries of a fresh run (dinoseg.convert.init):

  c.init = ml_collections.ConfigDict()
  c.init.backbone = defaults.init_entry(converter="backbone", target="backbone")   # file="" until given
"""
import ml_collections

from dinoseg.errors import UserValueError

# Defaults of config.train (docs/training.md explains each).
TRAIN_DEFAULTS = dict(
    num_steps=1000,                # train steps (global batches)
    log_every_steps=50,            # metrics are fetched from the device and written this often
    checkpoint_every_steps=1000,   # 0: only at the end (and on preemption)
    eval_every_steps=0,            # 0: evaluate only at the end (if the task evaluates)
    eval_at_end=True,
    keep_last=3,                   # checkpoints kept by recency
    keep_best=0,                   # plus this many best by `best_metric` (an eval result key)
    best_metric="",
    best_mode="max",               # "max" or "min"
    async_checkpointing=True,
    compute_dtype="float32",       # "bfloat16": params and floating inputs cast in the step
    ema_decay=0.0,                 # > 0: keep EMA params (evaluated instead of the raw params)
    max_nonfinite_steps=20,        # stop after this many consecutive skipped (NaN/inf) steps
    fsdp_min_size=2 ** 14,         # unannotated params larger than this are sharded over "fsdp"
    progress=True,                 # tqdm progress bar on process 0
)

OPTIMIZER_DEFAULTS = dict(
    name="adamw",
    learning_rate=1e-4,
    weight_decay=0.0,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    # (regex, multiplier) pairs, searched in '/'-joined param paths; the first match wins.
    # A multiplier of 0 freezes the matching params (no update, no weight decay, no clip share).
    lr_multipliers=(),
    # Regexes (searched in '/'-joined param paths) of params without weight decay.
    no_weight_decay=(r"(^|/)bias$", r"norm", r"embed"),
    clip_grad_norm=0.0,            # full-model global L2 norm; 0 = off
    grad_accum_steps=1,            # micro-batches per step (the global batch is split)
    schedule="constant",           # "constant", "step", "cosine"
    decay_steps=(),                # "step": multiply by decay_factor at each of these steps
    decay_factor=0.1,
    end_factor=0.0,                # "cosine": final lr = end_factor * learning_rate
    warmup_steps=0,                # linear warmup from warmup_factor * lr (detectron2 "linear")
    warmup_factor=0.001,
)


def train_config(**overrides) -> ml_collections.ConfigDict:
  """`config.train` with the defaults above, updated by `overrides` (unknown keys raise)."""
  return _group(TRAIN_DEFAULTS, overrides, "train")


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
  """`config.optimizer` with the defaults above, updated by `overrides` (unknown keys raise)."""
  return _group(OPTIMIZER_DEFAULTS, overrides, "optimizer")


def init_entry(**overrides) -> ml_collections.ConfigDict:
  """One `config.init` entry: file ("" = not given), converter, target, strict, required (see
  dinoseg.convert.init; unknown keys raise)."""
  from dinoseg.convert.init import ENTRY_DEFAULTS  # noqa: PLC0415
  return _group(ENTRY_DEFAULTS, overrides, "init.<entry>")


def _group(defaults: dict, overrides: dict, name: str) -> ml_collections.ConfigDict:
  unknown = sorted(set(overrides) - set(defaults))
  if unknown:
    raise UserValueError(f"unknown config.{name} keys {unknown}; known: {sorted(defaults)}")
  return ml_collections.ConfigDict({**defaults, **overrides})


def resolve(group, defaults: dict, name: str) -> dict:
  """A plain dict of `config.<name>` over `defaults` (missing keys take the default).

  Raises:
    UserValueError: `group` has keys the trainer does not know (a misspelling would be ignored).
  """
  values = dict(group) if group is not None else {}
  unknown = sorted(set(values) - set(defaults))
  if unknown:
    raise UserValueError(f"unknown config.{name} keys {unknown}; the trainer reads {sorted(defaults)}")
  return {**defaults, **values}


__all__ = ["TRAIN_DEFAULTS", "OPTIMIZER_DEFAULTS", "train_config", "optimizer_config", "init_entry", "resolve"]
