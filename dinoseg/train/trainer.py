"""The train loop and the evaluate loop shared by every task (docs/training.md).

`train(config, workdir)`:
  create and lock the workdir (dinoseg.train.workdir: one process trains in it; a second one is
  refused at once), watch for SIGTERM / SIGINT (dinoseg.train.preemption)
  -> build the task, mesh, optimizer and the sharded state layout (`build_run`); check that the
     global batch divides over the mesh's data-parallel devices
  -> restore the newest usable checkpoint of <workdir>/checkpoints (state + data iterator), or
     create a fresh state from config.seed and apply the `config.init` entries (pretrained weights,
     dinoseg.convert.init; reported in <workdir>/init_report.json)
  -> loop: next per-process batch -> global batch -> jitted step (state donated)
     every log_every_steps (and before any eval or save): fetch the window's metrics, write one
     row per step, stop if max_nonfinite_steps consecutive steps were skipped
     every eval_every_steps: evaluate, write eval/step_<N>.json
     every checkpoint_every_steps, at the end, and on SIGTERM / SIGINT: save (async; on a signal
     the run then stops: TrainResult.stop_signal)
  -> wait for the last save, release the lock.

`evaluate(run, state)` runs the task's predict_fn over its eval iterator and returns the
evaluator's results; `evaluate_checkpoint(config, workdir)` does so for a saved checkpoint
(`dinoseg eval`).
"""
import dataclasses
import json
import logging
import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dinoseg import compile_cache, jsonio, parallel
from dinoseg.convert import init as init_lib
from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.train import checkpointing, optimizer as optimizer_lib, state as state_lib, step as step_lib
from dinoseg.train import task as task_lib, workdir as workdir_lib
from dinoseg.train.defaults import TRAIN_DEFAULTS, resolve
from dinoseg.train.metrics import MetricWriter
from dinoseg.train.preemption import PreemptionHandler, signal_name

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient norm."""


def _validate_settings(s: dict) -> None:
  for key in ("num_steps", "log_every_steps", "max_nonfinite_steps", "keep_last"):
    if int(s[key]) < 1:
      raise UserValueError(f"train.{key} must be >= 1, got {s[key]!r}")
  for key in ("checkpoint_every_steps", "eval_every_steps", "keep_best"):
    if int(s[key]) < 0:
      raise UserValueError(f"train.{key} must be >= 0, got {s[key]!r}")
  if not 0.0 <= float(s["ema_decay"]) < 1.0:
    raise UserValueError(f"train.ema_decay must be in [0, 1), got {s['ema_decay']!r}")
  step_lib.compute_dtype(s["compute_dtype"])


@dataclasses.dataclass
class Run:
  """Everything a run derives from its config, before any array exists.

  Attributes:
    config: the run config.
    task: the `Task` (config.task).
    settings: resolved `config.train` (see `defaults.TRAIN_DEFAULTS`).
    mesh: the device mesh (`config.mesh`); rules: logical axis rules (`config.sharding_rules`).
    optimizer: from `config.optimizer`.
    abstract: TrainState of ShapeDtypeStructs; shardings: TrainState of NamedShardings.
  """
  config: Any
  task: task_lib.Task
  settings: dict
  mesh: jax.sharding.Mesh
  rules: Any
  optimizer: optimizer_lib.Optimizer
  abstract: state_lib.TrainState
  shardings: state_lib.TrainState
  _train_step: Callable | None = None
  _predict: Callable | None = None

  @property
  def batch_axes(self) -> tuple[str, ...]:
    return tuple(a for a in parallel.BATCH_AXES if a in self.mesh.axis_names)

  @property
  def ema(self) -> bool:
    return float(self.settings["ema_decay"]) > 0

  def context(self):
    return state_lib.mesh_context(self.mesh, self.rules)

  def restore_target(self):
    return state_lib.with_shardings(self.abstract, self.shardings)

  def create_state(self) -> state_lib.TrainState:
    return state_lib.create_train_state(self.task, self.optimizer.tx, self.shardings, self.mesh, self.rules,
                                        seed=int(self.config.get("seed", 0)), ema=self.ema)

  def global_batch(self, local_batch):
    return parallel.global_batch(local_batch, self.mesh, self.batch_axes)

  @property
  def train_step(self) -> Callable:
    """The jitted step: (state, global batch) -> (state, metrics); the state is donated."""
    if self._train_step is None:
      fn = step_lib.make_train_step(self.task, self.optimizer, dtype=self.settings["compute_dtype"],
                                    ema_decay=float(self.settings["ema_decay"]), batch_axes=self.batch_axes)
      batch_sh = parallel.batch_sharding(self.mesh, self.batch_axes)
      self._train_step = jax.jit(fn, in_shardings=(self.shardings, batch_sh),
                                 out_shardings=(self.shardings, NamedSharding(self.mesh, P())), donate_argnums=0)
    return self._train_step

  @property
  def predict(self) -> Callable:
    """The jitted eval step: (params, model_state, global batch) -> predictions."""
    if self._predict is None:
      self._predict = jax.jit(step_lib.make_predict_step(self.task, dtype=self.settings["compute_dtype"]))
    return self._predict


def build_run(config, task: task_lib.Task | None = None, devices=None) -> Run:
  """Resolves settings, builds the task (unless given), mesh, optimizer and state layout.

  Args:
    config: the run config.
    task: a Task instance to use instead of building `config.task`.
    devices: devices of the mesh (default: all); e.g. one device to compare with a sharded run.
  """
  settings = resolve(config.get("train"), TRAIN_DEFAULTS, "train")
  _validate_settings(settings)
  task = task if task is not None else task_lib.build(config)
  mesh = parallel.make_mesh(config.get("mesh") or {"data": -1}, devices)
  rules = config.get("sharding_rules")
  optimizer = optimizer_lib.build_optimizer(config.get("optimizer"), int(settings["num_steps"]))
  abstract, shardings = state_lib.state_shardings(
      task, optimizer.tx, mesh, rules, ema=float(settings["ema_decay"]) > 0,
      fsdp_min_size=int(settings["fsdp_min_size"]))
  return Run(config=config, task=task, settings=settings, mesh=mesh, rules=rules, optimizer=optimizer,
             abstract=abstract, shardings=shardings)


def check_batch_size(run: Run, global_batch_size: int | None = None) -> None:
  """Raises UserError unless the global train batch divides over the processes and the mesh's batch axes.

  Args:
    run: the run (its config's `data.batch_size`, the global batch of every task, is checked).
    global_batch_size: the size actually seen (the first batch); default: `config.data.batch_size`.
  """
  data = run.config.get("data") or {}
  size = global_batch_size if global_batch_size is not None else data.get("batch_size")
  if size is None:
    return
  shards = parallel.batch_shard_count(run.mesh, run.batch_axes)
  mesh = dict(zip(run.mesh.axis_names, run.mesh.devices.shape))
  name = "data.batch_size" if "batch_size" in data else "the global batch size"
  if int(size) % shards:
    raise UserValueError(
        f"{name} (the global batch, {size}) must be divisible by the {shards} data-parallel devices of mesh {mesh} "
        f"(axes {' x '.join(run.batch_axes)}); set --config.data.batch_size to a multiple of {shards} or "
        "change --config.mesh")
  if int(size) % jax.process_count():
    raise UserValueError(f"{name} (the global batch, {size}) must be divisible by the {jax.process_count()} processes")


def _gather(tree):
  """Global jax.Arrays -> full NumPy arrays on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # noqa: PLC0415
  return multihost_utils.process_allgather(tree, tiled=True)


def eval_params(run: Run | None, state: state_lib.TrainState):
  """The params evaluated: the EMA params when the run keeps them, else the params (`run` is not needed)."""
  return state.ema_params if state.ema_params is not None else state.params


def evaluate(run: Run, state: state_lib.TrainState) -> dict | None:
  """Runs the task's evaluation on `state`; None when the task has none.

  Every process iterates its own slice of the eval batches and sees the gathered global
  predictions, so the evaluator's result is the same everywhere.
  """
  return evaluate_variables(run, eval_params(run, state), state.model_state)


def evaluate_variables(run: Run, params, model_state) -> dict | None:
  """Runs the task's evaluation with the given (sharded) params and model state; None without one."""
  own = run.task.evaluate({"params": params, **dict(model_state)})  # a task's own protocol (Task.evaluate)
  if own is not None:
    return own
  evaluator = run.task.evaluator()
  batches = run.task.eval_iterator(jax.process_index(), jax.process_count())
  if evaluator is None or batches is None:
    return None
  with run.context():
    for local in batches:
      batch = run.global_batch(parallel.pad_eval_batch(local, run.mesh, run.batch_axes))
      predictions = run.predict(params, model_state, batch)
      evaluator.update(_gather(batch), _gather(predictions))
  return evaluator.result()


class _IteratorStateSnapshot:
  """The iterator's position at save time (grain's handler calls get_state(), maybe later)."""

  def __init__(self, iterator):
    state = iterator.get_state()
    self._state = state if isinstance(state, bytes) else json.dumps(state, indent=4).encode()

  def get_state(self) -> bytes:
    return self._state


@dataclasses.dataclass
class TrainResult:
  """What `train` returns: the final state, its step, why the loop ended, the last eval results."""
  state: state_lib.TrainState
  step: int
  stopped_by: str  # "completed" or "preempted" (a stop signal: checkpoint saved at `step`)
  eval_results: dict | None
  workdir: pathlib.Path
  stop_signal: int | None = None  # the signal that stopped the run (SIGTERM, SIGINT)


def _log_rows(pending, elapsed: float, batch_size: int) -> list[dict]:
  """Fetches the window's device metrics (one host sync) into per-step rows with timing."""
  values = jax.device_get([m for _, m in pending])
  step_time = elapsed / max(len(pending), 1)
  rows = []
  for (step, _), metrics in zip(pending, values):
    row = {"step": step, **{k: np.asarray(v).item() for k, v in metrics.items()}}
    row["step_time"] = step_time
    row["examples_per_sec"] = batch_size / step_time if step_time > 0 else float("nan")
    rows.append(row)
  return rows


def initialise(run: Run, entries, say: Callable[[str], None], warn: Callable[[str], None] | None = None
               ) -> tuple[state_lib.TrainState, list[dict]]:
  """A fresh state with the `config.init` entries applied (dinoseg.convert.init): the files are read and
  checked against the model's shapes before the state is created, then placed with each variable's
  sharding. Returns (state, one report dict per entry); each report is also said as one line (through
  `warn`, when given, for an entry without a file)."""
  abstract = {"params": run.abstract.params, **run.abstract.model_state}
  arrays, reports = init_lib.load(entries, abstract, run.task.init_converters())
  state = run.create_state()
  if arrays:
    state = state_lib.with_variables(state, arrays, run.shardings, run.optimizer.tx, run.mesh, run.rules)
  for report in reports:
    tell = (warn or say) if report["status"] == "not given" else say
    tell(init_lib.describe(report))
  return state, reports


def train(config, workdir, *, task: task_lib.Task | None = None, echo: Callable[[str], None] | None = None
          ) -> TrainResult:
  """Trains `config` in `workdir`, resuming from its checkpoints (module docstring).

  Args:
    config: the run config (config.task, config.train, config.optimizer, config.mesh, ...).
    workdir: run directory (checkpoints/, metrics.jsonl, tensorboard/, eval/, config.json).
    task: a Task instance to use instead of building config.task.
    echo: where progress messages go (default: this module's logger on process 0, warnings as warnings).
  Raises:
    TrainingDivergedError: `max_nonfinite_steps` consecutive non-finite steps; nothing is saved
      after the last good checkpoint.
    checkpointing.CheckpointRestoreError: checkpoints exist but none is usable.
    UserError: the workdir cannot be created or another process trains in it
      (workdir.WorkdirInUseError), the checkpoints belong to another config
      (checkpointing.CheckpointMismatchError), the batch does not divide over the mesh, a bad setting.
  """
  say, warn = _console(echo, logging.INFO), _console(echo, logging.WARNING)
  workdir = workdir_lib.prepare(workdir)
  lock = workdir_lib.lock_for_run(workdir, warn)
  try:
    with PreemptionHandler() as preemption:
      return _train(config, workdir, task, say, warn, preemption)
  finally:
    lock.release()


def _console(echo: Callable[[str], None] | None, level: int) -> Callable[[str], None]:
  """`echo`, or a function logging at `level` on process 0."""
  if echo is not None:
    return echo
  return lambda text: logger.log(level, text) if jax.process_index() == 0 else None


def _train(config, workdir: pathlib.Path, task, say, warn, preemption: PreemptionHandler) -> TrainResult:
  """The body of `train` once the workdir is locked and stop signals are watched."""
  run = build_run(config, task)
  check_batch_size(run)
  s = run.settings
  num_steps, log_every = int(s["num_steps"]), int(s["log_every_steps"])
  ckpt_every, eval_every = int(s["checkpoint_every_steps"]), int(s["eval_every_steps"])
  max_nonfinite = int(s["max_nonfinite_steps"])

  init_entries = run.task.init_entries(init_lib.entries(config.get("init")))
  checkpointer = checkpointing.Checkpointer(
      workdir / "checkpoints", keep_last=int(s["keep_last"]), keep_best=int(s["keep_best"]),
      best_metric=str(s["best_metric"]), best_mode=str(s["best_mode"]), async_save=bool(s["async_checkpointing"]),
      echo=warn)
  try:
    train_iter = run.task.train_iterator(jax.process_index(), jax.process_count())
    with run.context():
      restored = checkpointer.restore(run.restore_target(), train_iter)
    init_reports = None
    if restored is not None:
      state = restored.state
      say(f"resumed from {checkpointer.step_dir(restored.step)} at step {restored.step}"
          + ("; config.init is not applied (the checkpoint holds the weights)"
             if any(e.file and not e.skipped for e in init_entries) else ""))
    else:
      say(f"starting a new run in {workdir} ({jax.process_count()} process(es), {jax.device_count()} devices, "
          f"mesh {dict(zip(run.mesh.axis_names, run.mesh.devices.shape))})")
      state, init_reports = initialise(run, init_entries, say, warn)
  except BaseException:
    checkpointer.close()
    raise
  start = int(jax.device_get(state.step))
  last_saved = restored.step if restored is not None else None

  writer = MetricWriter(workdir, num_steps=num_steps, start_step=start, progress=bool(s["progress"]))
  writer.write_json("config.json", config.to_dict() if hasattr(config, "to_dict") else dict(config))
  if init_reports:
    writer.write_json("init_report.json", {"entries": init_reports})
  has_eval = run.task.evaluator() is not None
  eval_results, stopped_by = None, "completed"
  pending: list[tuple[int, dict]] = []
  step, batch_size = start, None
  window_start = time.perf_counter()
  cache_dir, cache_before = compile_cache.directory(), compile_cache.stats()

  def flush() -> None:
    """Fetches the pending metrics (one host sync), writes them, stops a diverged run."""
    nonlocal window_start, pending
    now = time.perf_counter()
    rows = _log_rows(pending, now - window_start, batch_size)
    if rows[0]["step"] == start + 1:
      said = f"step {start + 1}: first step (with compilation) took {now - window_start:.1f}s"
      if cache_dir is not None:
        said += f"; {compile_cache.describe(cache_before, compile_cache.stats())}"
      say(said)
    window_start, pending = now, []
    writer.write_rows(rows)
    writer.progress(rows[-1]["step"], loss=rows[-1]["loss"], lr=rows[-1]["learning_rate"])
    diverged = [r for r in rows if r["nonfinite_streak"] >= max_nonfinite]
    if diverged:
      bad = diverged[0]
      raise TrainingDivergedError(
          f"stopping at step {bad['step']}: the loss or gradient norm was not finite for "
          f"{bad['nonfinite_streak']} consecutive steps (train.max_nonfinite_steps={max_nonfinite}; "
          f"{bad['nonfinite_total']} steps skipped in all). Those updates were skipped and nothing was saved "
          f"after them; the last checkpoint is step {last_saved} in {checkpointer.directory}. "
          "Lower the learning rate, enable gradient clipping, compute in float32, or check the data.")

  try:
    if preemption.signal_received is not None:  # asked to stop during start-up: no step to finish, nothing to save
      stopped_by = "preempted"
      say(f"received signal {preemption.signal_received} before step {start + 1}: stopped without "
          f"training ({signal_name(preemption.signal_received)}; nothing new to save)")
    while stopped_by == "completed" and step < num_steps:
      local_batch = next(train_iter)
      if batch_size is None:  # before the batch is sharded, whose error would not name the setting
        batch_size = int(np.shape(jax.tree.leaves(local_batch)[0])[0]) * jax.process_count()
        check_batch_size(run, batch_size)
      batch = run.global_batch(local_batch)
      if step == start:
        say(f"step {step + 1}: compiling the train step (the first step takes longest; compilation cache: "
            f"{cache_dir if cache_dir is not None else 'none'})")
      with run.context():
        state, metrics = run.train_step(state, batch)
      step += 1
      pending.append((step, metrics))
      final = step == num_steps
      preempted = preemption.should_stop(step)
      do_eval = has_eval and ((eval_every and step % eval_every == 0) or (final and bool(s["eval_at_end"])))
      do_save = (ckpt_every and step % ckpt_every == 0) or final or preempted
      if step == start + 1 or step % log_every == 0 or do_eval or do_save:
        flush()
      if do_eval:
        eval_results = evaluate(run, state)
        if eval_results is not None:
          writer.write_json(f"eval/step_{step}.json", {"step": step, "results": eval_results})
          writer.write_scalars(step, {k: v for k, v in eval_results.items() if np.ndim(v) == 0}, prefix="eval/")
          shown = ", ".join(f"{k}={v:.4g}" for k, v in list(eval_results.items())[:6]
                            if isinstance(v, (int, float)))
          say(f"step {step}: eval {shown}")
      if do_save and step != last_saved:
        checkpointer.save(step, state, _IteratorStateSnapshot(train_iter),
                          metrics=eval_results if do_eval else None)
        last_saved = step
      if preempted:
        checkpointer.wait()
        stopped_by = "preempted"
        say(f"received signal {preemption.signal_received}: saved checkpoint "
            f"{checkpointer.step_dir(step)} and stopped at step {step} "
            f"({signal_name(preemption.signal_received)}; run the same command to resume)")
        break
    checkpointer.wait()
  finally:
    checkpointer.close()
    writer.close()
  return TrainResult(state=state, step=step, stopped_by=stopped_by, eval_results=eval_results, workdir=workdir,
                     stop_signal=preemption.signal_received if stopped_by == "preempted" else None)


def restore_for_eval(config, workdir, *, step: int | None = None, task: task_lib.Task | None = None
                     ) -> tuple[Run, state_lib.TrainState, int]:
  """(run, state, step) of the newest usable (or the given) checkpoint of `workdir`."""
  directory = pathlib.Path(workdir).resolve() / "checkpoints"
  if not directory.is_dir():
    raise UserFileNotFoundError(f"no checkpoints in {workdir} (expected {directory})")
  run = build_run(config, task)
  checkpointer = checkpointing.Checkpointer(directory, async_save=False)
  try:
    with run.context():
      restored = checkpointer.restore(run.restore_target(), None, step=step)
  finally:
    checkpointer.close()
  if restored is None:
    raise UserFileNotFoundError(f"no checkpoints in {directory}")
  return run, restored.state, restored.step


def evaluate_checkpoint(config, workdir, *, step: int | None = None, task: task_lib.Task | None = None) -> dict:
  """Evaluates a checkpoint of `workdir`; writes <workdir>/eval/step_<N>.json; returns {"step", "results"}."""
  run, state, restored_step = restore_for_eval(config, workdir, step=step, task=task)
  results = evaluate(run, state)
  if results is None:
    raise UserValueError(f"task {config.get('task')!r} has no evaluation (no evaluator / eval_iterator)")
  out = {"step": restored_step, "results": results}
  if jax.process_index() == 0:
    path = pathlib.Path(workdir).resolve() / "eval" / f"step_{restored_step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonio.dumps(out, indent=2, sort_keys=True) + "\n")
  return out


def _place(tree, target, shardings, what: str):
  """Puts the NumPy leaves of `tree` on the mesh with the structure/shapes of `target` (checked)."""
  want = jax.tree_util.tree_structure(target)
  got = jax.tree_util.tree_structure(tree)
  if got != want:
    paths = lambda t: {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(t)}  # noqa: E731
    missing, unexpected = sorted(paths(target) - paths(tree)), sorted(paths(tree) - paths(target))
    raise UserValueError(f"{what} do not fit the configured model: missing {missing[:8]} ({len(missing)}), "
                         f"unexpected {unexpected[:8]} ({len(unexpected)})")
  bad = [(jax.tree_util.keystr(k), tuple(a.shape), tuple(b.shape))
         for (k, a), b in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree_util.tree_leaves(target))
         if tuple(a.shape) != tuple(b.shape)]
  if bad:
    raise UserValueError(f"{what}: shape mismatches (path, file, model) {bad[:8]}")
  leaves = [np.asarray(a, b.dtype) for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(target))]
  return jax.device_put(jax.tree_util.tree_unflatten(want, leaves), shardings)


def evaluate_weights(config, weights: str, *, workdir: str | None = None,
                     task: task_lib.Task | None = None) -> dict:
  """Evaluates a weights file (e.g. a released PyTorch checkpoint) with the task's evaluation.

  The task reads the file (`Task.variables_from_weights`, strict about keys and shapes) or runs its own
  evaluation (`Task.evaluate_weights`). Results go to <workdir>/eval/weights_<name>.json when a workdir is
  given. Returns {"weights", "results"}.
  """
  task = task if task is not None else task_lib.build(config)
  results = task.evaluate_weights(weights, workdir)
  if results is None:
    run = build_run(config, task)
    variables = dict(run.task.variables_from_weights(weights))
    params = _place(variables.pop("params"), run.abstract.params, run.shardings.params, f"{weights}: params")
    model_state = _place(variables, run.abstract.model_state, run.shardings.model_state, f"{weights}: model state")
    results = evaluate_variables(run, params, model_state)
    if results is None:
      raise UserValueError(f"task {config.get('task')!r} has no evaluation (no evaluator / eval_iterator)")
  out = {"weights": str(weights), "results": results}
  if workdir is not None and jax.process_index() == 0:
    path = pathlib.Path(workdir).resolve() / "eval" / f"weights_{pathlib.Path(weights).stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(jsonio.dumps(out, indent=2, sort_keys=True) + "\n")
  return out


__all__ = ["Run", "build_run", "check_batch_size", "train", "initialise", "evaluate", "evaluate_checkpoint",
           "evaluate_variables", "evaluate_weights",
           "restore_for_eval", "TrainResult", "TrainingDivergedError", "eval_params"]
