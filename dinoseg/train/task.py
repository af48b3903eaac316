"""The plug-in interface between one system and the shared trainer, and the task registry.

A system (Mask DINO, DINOv, Talk2DINO, OV2Seg, SegNext, the toy example) plugs into
`dinoseg train` / `dinoseg eval` by subclassing `Task` and registering it under the name its
configs put in `config.task`:

  @task.register("toy_segmentation")
  class ToySegmentationTask(task.Task):
    def init_variables(self, rng): ...           # Flax variables {"params": ..., other collections}
    def loss_fn(self, params, model_state, batch, rng, *, train=True): ...  # -> (loss, metrics)
    def train_iterator(self, process_index, process_count): ...  # per-process NumPy batches
    # optional, for evaluation:
    def predict_fn(self, params, model_state, batch): ...       # -> predictions (batch-leading)
    def eval_iterator(self, process_index, process_count): ...  # finite, per-process batches
    def evaluator(self): ...                                     # -> Evaluator

and appending its module to `BUILTIN_TASK_MODULES` (imported lazily on lookup; `TASKS` is a
`dinoseg.registry.Registry`, so an installed plugin registers a task the same way). The trainer owns
everything else: the mesh, sharded state creation, the optimizer, the jitted step, checkpoints,
logging. The contract, in shapes and rules (full example in `dinoseg/models/toy/`):

- `init_variables(rng)` is traced (under `jax.eval_shape` and `jax.jit`), so it must be pure and
  use only `rng` (a typed PRNG key). Leaves may be `nn.LogicallyPartitioned` boxes
  (`nn.with_logical_partitioning`); the logical axis rules then place them. Collections other
  than "params" (e.g. "frozen_bn") are carried in `TrainState.model_state`, never optimized and
  never updated by the step.
- `loss_fn(params, model_state, batch, rng, *, train)` runs inside the jitted step on the global
  batch (leaves (B, ...) sharded over the batch axes). `params` arrive in the compute dtype
  (`config.train.compute_dtype`; so are the floating leaves under `compute_dtype_inputs`, never the
  targets), so upcast logits to float32 before losses. Returns `(loss, metrics)`: a float scalar
  to minimize and a flat dict of scalar arrays (each loss term, accuracies) that is logged every
  step. With gradient accumulation it sees micro-batches of B / `config.optimizer.grad_accum_steps`
  examples and its losses and metrics are averaged over them.
- `train_iterator(process_index, process_count)` returns an infinite iterator of this process's
  slice of every global batch (dicts of NumPy arrays, leading axis = global batch / process
  count; the global batch is their concatenation in process order). It must have `get_state()`
  / `set_state()` (a grain `DatasetIterator` or `DataLoader` iterator): its state is checkpointed
  with the model so a resumed run sees exactly the batches it would have seen.
- `predict_fn(params, model_state, batch)` runs jitted on a global eval batch and returns a
  pytree of arrays with the batch axis first. The trainer gathers predictions and the batch to
  NumPy on every process and calls `evaluator.update(batch, predictions)` per batch, then
  `evaluator.result()` -> a JSON-serializable dict of metrics (written to
  `<workdir>/eval/step_<N>.json`, logged, and used for keep-best checkpoints via
  `config.train.best_metric`). Eval batches must have static shapes: pad the last one and mark
  padding rows (e.g. a "valid" key) for the evaluator to skip.
- A task whose evaluation is a protocol of its own rather than batches through one evaluator (e.g. DINOv:
  build a prompt bank, then score a dataset; track videos) overrides `evaluate(variables)`: it gets the
  model's variables and returns the metrics dict (or None to fall back to predict_fn / eval_iterator /
  evaluator). `dinoseg eval` (a workdir checkpoint or --weights) calls it first (trainer.evaluate_variables).
- Pretrained initialisation (`config.init`, dinoseg.convert.init) is the trainer's, for a fresh run:
  the entries read their files with the converters of `init_converters()` (by default "backbone"
  from `backbone_module()`, "task" through `variables_from_weights`, and "orbax"), filtered by
  `init_entries`; tasks add names or retarget entries there.
- Weight files: `variables_from_weights(path)` is the one route from a file or checkpoint directory
  to the model's variables (`dinoseg eval --weights`, `dinoseg predict`, `dinoseg.load`, config.init
  "task"); a task supplies the state-dict converter (`weights_converter()`: by default the converter
  registered under `config.model.name`).
"""
import abc
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import ml_collections

from dinoseg.errors import UserValueError
from dinoseg.registry import Registry


class Evaluator(Protocol):
  """Accumulates predictions over eval batches; one fresh instance per evaluation."""

  def update(self, batch: Mapping[str, Any], predictions: Any) -> None:
    """Adds one global batch (NumPy arrays) and the task's predictions for it."""

  def result(self) -> dict[str, Any]:
    """The metrics over everything added: a JSON-serializable dict (scalars at the top level)."""


def model_dtype(config):
  """The model's compute dtype: jnp.bfloat16 when `config.model.dtype` or `config.train.compute_dtype` says
  "bfloat16", else None (float32 modules)."""
  import jax.numpy as jnp  # noqa: PLC0415
  model = config.get("model", {}) or {}
  train = config.get("train", {}) or {}
  wanted = (model.get("dtype", "float32"), train.get("compute_dtype", "float32"))
  return jnp.bfloat16 if "bfloat16" in wanted else None


class Task(abc.ABC):
  """One system's model, loss, data and evaluation, built from its config (see module docstring).

  Attributes:
    config: the full run config (locked ConfigDict).
    compute_dtype_inputs: the batch keys whose floating leaves the step casts to the compute
      dtype (`config.train.compute_dtype`): the model inputs. Everything else (ground-truth
      boxes, masks, labels) reaches `loss_fn` as the data pipeline made it, so bf16 never
      touches targets.
  """
  compute_dtype_inputs: tuple[str, ...] = ("image",)

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def init_variables(self, rng) -> Mapping[str, Any]:
    """Flax variables {"params": ..., <other collections>: ...} from a PRNG key (traced)."""

  @abc.abstractmethod
  def loss_fn(self, params, model_state: Mapping[str, Any], batch: Mapping[str, Any], rng, *,
              train: bool = True) -> tuple[Any, dict[str, Any]]:
    """(scalar loss, {name: scalar metric}) for a (micro-)batch; traced inside the train step."""

  @abc.abstractmethod
  def train_iterator(self, process_index: int, process_count: int) -> Iterator[dict]:
    """Infinite iterator of this process's NumPy batches, with get_state()/set_state()."""

  def predict_fn(self, params, model_state: Mapping[str, Any], batch: Mapping[str, Any]) -> Any:
    """Predictions for a global eval batch (traced). Needed only when the task evaluates."""
    raise NotImplementedError(f"task {type(self).__name__} defines no predict_fn, so it cannot be evaluated")

  def eval_iterator(self, process_index: int, process_count: int) -> Iterable[dict] | None:
    """A finite iterable of this process's eval batches, or None when the task has no evaluation."""
    return None

  def evaluator(self) -> Evaluator | None:
    """A fresh Evaluator, or None when the task has no evaluation."""
    return None

  def evaluate(self, variables: Mapping[str, Any]) -> dict[str, Any] | None:
    """A task's own evaluation protocol on the model's variables {"params": ..., <other collections>}
    (placed on the run's mesh): a JSON-serializable dict of metrics (scalars at the top level), or None (the
    default) to use the trainer's loop over `eval_iterator` with `predict_fn` and `evaluator`."""
    del variables
    return None

  def variables_from_weights(self, path: str | os.PathLike, *, check: bool = True) -> dict[str, Any]:
    """Flax variables {"params": ..., <other collections>} of a weights file or directory: the one route from
    weights to variables (`dinoseg eval --weights`, `dinoseg predict`, `dinoseg.load`, the `config.init`
    converter "task"). Tasks customise the converter (`weights_converter`), not this method.

    - a directory: a dinoseg checkpoint (`<workdir>/checkpoints/<step>`, a training workdir (its newest
      step), or `dinoseg convert --to DIR` output): "params" (the EMA params when the run kept them) and
      the model's other collections (e.g. "frozen_bn"); optimizer state is not read;
    - `.msgpack`: Flax variables or params (flax.serialization);
    - any other file (.pth/.pt/.bin/.ckpt, .pkl, .safetensors, .npz): a state dict (`{"model": ...}` /
      `{"state_dict": ...}` unwrapped) converted by `weights_converter()` (strict about keys).

    Args:
      check: compare every converted shape with the model's (`abstract_variables`).
    Raises:
      UserError: a missing, unreadable or unsafe file, a task without a converter, weights that do not
        fit the model (keymap.KeyMismatchError / ConversionError naming the keys and shapes).
    """
    from dinoseg.convert import init as init_lib, keymap  # noqa: PLC0415
    variables = init_lib.read_variables(path, self.weights_converter, what=f"task {type(self).__name__}")
    if check:
      keymap.check_shapes(variables, self.abstract_variables(), what=f"the weights in {path}")
    return variables

  def abstract_variables(self) -> dict[str, Any]:
    """The model's variables as `jax.ShapeDtypeStruct` leaves (`init_variables` traced, unboxed; cached)."""
    if getattr(self, "_abstract_variables", None) is None:
      import flax.linen as nn  # noqa: PLC0415
      import jax  # noqa: PLC0415
      self._abstract_variables = dict(nn.meta.unbox(jax.eval_shape(self.init_variables, jax.random.key(0))))
    return self._abstract_variables

  def weights_converter(self) -> Any:
    """The `dinoseg.convert.ModelConverter` of this config's model (`variables_from_weights`, `dinoseg convert
    --config`): by default the one registered under `config.model.name`; a task whose model settings vary
    (widths, depths) builds one from its config. None: the task reads no weight files (only checkpoints)."""
    from dinoseg.convert import registry  # noqa: PLC0415
    name = (self.config.get("model") or {}).get("name")
    return registry.get(str(name)) if name else None

  def backbone_module(self) -> Any:
    """The Flax backbone module whose variables sit under "backbone" (the "backbone" init converter builds
    its key map from it); default: `self.model.backbone` when the task's model has one, else None."""
    import flax.linen as nn  # noqa: PLC0415
    module = getattr(getattr(self, "model", None), "backbone", None)
    return module if isinstance(module, nn.Module) else None

  def init_converters(self) -> dict[str, Any]:
    """{name: converter} for `config.init` entries (dinoseg.convert.init.InitConverter): "backbone" (when
    `backbone_module()` gives one), "task" (a full checkpoint of this model, read by `variables_from_weights`)
    and "orbax" (a dinoseg checkpoint, partial ones too). Registered converter names work without being
    listed here."""
    from dinoseg.convert import init as init_lib  # noqa: PLC0415

    def full_model(path, target):  # shapes and coverage are checked by init_lib.load, entry by entry
      return init_lib.from_variables(self.variables_from_weights(path, check=False), target)

    out = {"task": full_model, "orbax": init_lib.orbax_converter}
    backbone = self.backbone_module()
    if backbone is not None:
      out["backbone"] = init_lib.backbone_converter(backbone)
    return out

  def init_entries(self, entries: list) -> list:
    """The `config.init` entries (dinoseg.convert.init.Entry, broadest target first) as the trainer applies
    them to this task's variables; a task whose variables are part of the configured model retargets or
    skips entries here (`dinoseg.convert.init.rebase`). Default: all of them, unchanged."""
    return list(entries)

  def evaluate_weights(self, path: str | None, workdir: str | None) -> dict[str, Any] | None:
    """A task's own evaluation of a weights file (e.g. a benchmark suite that is not the trainer's
    eval loop); None (the default) means: use the trainer's evaluation with `variables_from_weights`."""
    del path, workdir
    return None


TaskFactory = Callable[[ml_collections.ConfigDict], Task]

# Modules that register tasks when imported (imported on the first lookup). Each system appends its module.
BUILTIN_TASK_MODULES: list[str] = [
    "dinoseg.models.toy.task",  # the worked example (tests, bench)
    "dinoseg.models.talk2dino.task",  # Talk2DINO projection on cached features
    "dinoseg.models.segnext.task",  # SegNext interactive segmentation
    "dinoseg.models.maskdino.task",  # Mask DINO (instance / panoptic / semantic)
    "dinoseg.models.dinov.task",  # DINOv (COCO generic + SA-1B referring)
    "dinoseg.models.ov2seg.task",  # OV2Seg (LVIS training; LV-VIS / YouTube-VIS / OVIS video evaluation)
]
TASKS = Registry("task", hint=" (config.task)", modules=BUILTIN_TASK_MODULES)
register = TASKS.register  # @register("name") on a Task subclass (or any config -> Task callable)
get = TASKS.get
names = TASKS.names


def build(config: ml_collections.ConfigDict) -> Task:
  """Builds the task named by `config.task`."""
  name = config.get("task")
  if not name:
    raise UserValueError("the config has no `task` entry naming the system to train (see dinoseg.train.task)")
  task = get(str(name))(config)
  if not isinstance(task, Task):
    raise ValueError(f"task {name!r} built a {type(task).__name__}, not a dinoseg.train.task.Task")
  return task


__all__ = ["Task", "Evaluator", "TASKS", "BUILTIN_TASK_MODULES", "register", "get", "build", "names"]
