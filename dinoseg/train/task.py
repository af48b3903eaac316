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

and appending its module to `BUILTIN_TASK_MODULES` (imported lazily on lookup). The trainer owns
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
- Pretrained initialisation (`config.init`, dinoseg.convert.init) is the trainer's, for a fresh run:
  the entries read their files with the converters of `init_converters()` (by default "backbone"
  from `backbone_module()`, "task" from `variables_from_weights` or the model's converter, and
  "orbax"), filtered by `init_entries`; tasks add names or retarget entries there.
"""
import abc
import importlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import ml_collections

from dinoseg.errors import UserValueError


class Evaluator(Protocol):
  """Accumulates predictions over eval batches; one fresh instance per evaluation."""

  def update(self, batch: Mapping[str, Any], predictions: Any) -> None:
    """Adds one global batch (NumPy arrays) and the task's predictions for it."""

  def result(self) -> dict[str, Any]:
    """The metrics over everything added: a JSON-serializable dict (scalars at the top level)."""


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

  def variables_from_weights(self, path: str) -> Mapping[str, Any]:
    """Flax variables ({"params": ..., other collections}) read from a weights file or directory
    (e.g. a released PyTorch checkpoint, converted), for `dinoseg eval --weights`. Must have the
    tree structure of `init_variables`."""
    raise UserValueError(f"task {type(self).__name__} cannot read weights files; evaluate a training workdir instead "
                         "(dinoseg eval --workdir=DIR)")

  def weights_converter(self) -> Any:
    """The `dinoseg.convert.ModelConverter` for this config's model (`dinoseg convert --config`), built
    from the config when no registered converter name (`config.model.name`) fits it; None: none."""
    return None

  def backbone_module(self) -> Any:
    """The Flax backbone module whose variables sit under "backbone" (the "backbone" init converter builds
    its key map from it); default: `self.model.backbone` when the task's model has one, else None."""
    import flax.linen as nn  # noqa: PLC0415
    module = getattr(getattr(self, "model", None), "backbone", None)
    return module if isinstance(module, nn.Module) else None

  def init_converters(self) -> dict[str, Any]:
    """{name: converter} for `config.init` entries (dinoseg.convert.init.InitConverter): "backbone" (when
    `backbone_module()` gives one), "task" (a full checkpoint of this model: `variables_from_weights` when
    the task defines it, else the `dinoseg convert --config` converter) and "orbax". Registered converter
    names work without being listed here."""
    import os  # noqa: PLC0415

    from dinoseg.convert import init as init_lib  # noqa: PLC0415
    own_reader = type(self).variables_from_weights is not Task.variables_from_weights

    def full_model(path, target):
      if os.path.isdir(path) and not own_reader:
        return init_lib.orbax_converter(path, target)
      return init_lib.from_variables(self._full_variables(path), target)

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

  def _full_variables(self, path: str) -> Mapping[str, Any]:
    """Variables of a full checkpoint file of this model: `variables_from_weights` when the task defines it,
    else the file through the model's converter (`config.model.name` in the registry, or
    `weights_converter()`)."""
    if type(self).variables_from_weights is not Task.variables_from_weights:
      return self.variables_from_weights(path)
    from dinoseg.convert import init as init_lib, registry  # noqa: PLC0415
    name = (self.config.get("model") or {}).get("name")
    converter = registry.get(str(name)) if name else self.weights_converter()
    if converter is None:
      raise UserValueError(f"task {type(self).__name__} has no full-model converter; use converter 'orbax' for a "
                           "dinoseg checkpoint directory")
    tree = converter.to_flax(init_lib.read_state_dict(path))
    return tree if converter.variables else {"params": tree}

  def evaluate_weights(self, path: str | None, workdir: str | None) -> dict[str, Any] | None:
    """A task's own evaluation of a weights file (e.g. a benchmark suite that is not the trainer's
    eval loop); None (the default) means: use the trainer's evaluation with `variables_from_weights`."""
    del path, workdir
    return None


TaskFactory = Callable[[ml_collections.ConfigDict], Task]
TASKS: dict[str, TaskFactory] = {}

# Modules that register tasks when imported. Each system appends its module here.
BUILTIN_TASK_MODULES: list[str] = []
BUILTIN_TASK_MODULES.append("dinoseg.models.toy.task")  # the worked example (tests, bench)
BUILTIN_TASK_MODULES.append("dinoseg.models.talk2dino.task")  # Talk2DINO projection on cached features
BUILTIN_TASK_MODULES.append("dinoseg.models.segnext.task")  # SegNext interactive segmentation
BUILTIN_TASK_MODULES.append("dinoseg.models.maskdino.task")  # Mask DINO (instance / panoptic / semantic)


def register(name: str) -> Callable[[TaskFactory], TaskFactory]:
  """Class decorator registering a Task subclass (or any config -> Task callable) under `name`."""

  def wrap(factory: TaskFactory) -> TaskFactory:
    if name in TASKS and TASKS[name] is not factory:
      raise ValueError(f"a task named {name!r} is already registered ({TASKS[name]})")
    TASKS[name] = factory
    return factory

  return wrap


def _import_builtin_tasks() -> None:
  for module in BUILTIN_TASK_MODULES:
    importlib.import_module(module)


def names() -> list[str]:
  _import_builtin_tasks()
  return sorted(TASKS)


def get(name: str) -> TaskFactory:
  """The factory registered under `name` (UserValueError listing the known tasks otherwise)."""
  if name not in TASKS:
    _import_builtin_tasks()
  if name not in TASKS:
    raise UserValueError(f"unknown task {name!r} (config.task); known: {', '.join(sorted(TASKS)) or 'none'}")
  return TASKS[name]


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
