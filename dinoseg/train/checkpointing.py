"""Checkpoints of a run: an Orbax CheckpointManager with verified restores and fallback.

Layout (the contract `dinoseg convert --from <workdir>/checkpoints/<step>` relies on):

  <workdir>/checkpoints/<step>/state/      the TrainState as a dict: Flax collections side by side
                                           ("params", and e.g. "frozen_bn" from model_state) plus
                                           "opt_state", "step", "rng", "ema_params",
                                           "nonfinite_total", "nonfinite_streak" (`state_to_tree`)
  <workdir>/checkpoints/<step>/data_iter/  the data iterator position (grain CheckpointSave,
                                           one JSON per process)
  <workdir>/checkpoints/<step>/meta/       JSON: step, per-leaf fingerprints, eval metrics

Behaviour:
- Saves are asynchronous: `save` returns once the arrays are copied off the device (the state
  may then be donated to the next step); the write continues in the background.
  `wait()` blocks until it is committed.
- Atomic: Orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames it when complete, so a
  crash during a save leaves the previous checkpoints as they were; leftover tmp dirs are
  ignored and removed by the next run.
- Retention: the newest `keep_last` plus the `keep_best` best by eval metric `best_metric`
  (`best_mode` "max" or "min"); checkpoints saved without that metric only count as recent.
- Integrity: a byte that changes inside an array file can restore without any error, so every
  save records a fingerprint of each leaf (a wrapping uint32 sum of its bits weighted by odd
  position factors, computed on device: any single-bit change alters it) in `meta`, and
  `restore` recomputes and compares them. A checkpoint that fails to restore (truncated or
  missing files, unparsable metadata) or whose fingerprints differ is reported with a log line
  naming the step and the reason, and the previous one is tried. Once an older checkpoint
  restores cleanly, the unusable newer ones are moved to `<workdir>/corrupt_checkpoints/` (kept
  for inspection; later saves of those step numbers need the place). If none restores, nothing
  is moved and `CheckpointRestoreError` lists every failure.
- Restores go straight onto the current mesh through target shardings, so a checkpoint written
  on 8 devices restores on 1 device or on a (data=4, fsdp=2) mesh.
- Another config: before a checkpoint is restored, the shapes and paths recorded in its metadata
  are compared with the configured state; checkpoints of a model of another shape (e.g. another
  `model.decoder.hidden_dim`) or with another optimizer state raise `CheckpointMismatchError` (a
  UserError: one line naming the first differing parameters, exit status 2), nothing is moved.
"""
import dataclasses
import logging
import pathlib
import shutil
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from dinoseg.errors import UserValueError
from dinoseg.train.optimizer import path_to_str
from dinoseg.train.state import TrainState

log = logging.getLogger("dinoseg.train")

STATE, DATA_ITER, META = "state", "data_iter", "meta"


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of the directory could be restored (each failure is listed)."""


class CorruptCheckpointError(RuntimeError):
  """A checkpoint restored, but its arrays do not match the fingerprints recorded at save time."""


class CheckpointMismatchError(UserValueError):
  """The checkpoints were written for another model or optimizer (array paths or shapes differ)."""


_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(TrainState) if f.name != "model_state")


def state_to_tree(state: TrainState) -> dict:
  """The checkpointed form of a TrainState: model_state's collections beside "params" (module docstring)."""
  tree = {name: getattr(state, name) for name in _STATE_FIELDS}
  for collection, value in dict(state.model_state).items():
    if collection in tree:
      raise ValueError(f"the Flax collection {collection!r} clashes with the TrainState field of that name")
    tree[collection] = value
  return tree


def tree_to_state(tree: Mapping, like: TrainState) -> TrainState:
  """Inverse of `state_to_tree`; `like` (e.g. the abstract state) names the model_state collections."""
  return TrainState(**{name: tree[name] for name in _STATE_FIELDS},
                    model_state={collection: tree[collection] for collection in dict(like.model_state)})


def _leaf_hash(x: jax.Array) -> jax.Array:
  """Wrapping uint32 sum over elements of bits(x) * (2 * flat_index + 1)."""
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  elif x.dtype.itemsize == 4:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  elif x.dtype.itemsize in (1, 2):
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(jnp.uint32)
  else:  # 8-byte types: bitcast adds a trailing axis of two uint32 words.
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  if bits.ndim == 0:
    return bits
  index = jnp.zeros(bits.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(bits.ndim)):  # Flat row-major index, built without reshaping the array.
    index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride % 2 ** 32)
    stride *= bits.shape[axis]
  return jnp.sum(bits * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)


@jax.jit
def _hashes(leaves):
  return [_leaf_hash(x) for x in leaves]


def fingerprint(tree) -> dict[str, int]:
  """{'/'-joined leaf path: uint32 fingerprint} of every array leaf of `tree`."""
  items = jax.tree_util.tree_leaves_with_path(tree)
  if not items:
    return {}
  values = jax.device_get(_hashes([leaf for _, leaf in items]))
  return {path_to_str(path): int(v) for (path, _), v in zip(items, values)}


@dataclasses.dataclass
class Restored:
  """A restored checkpoint: the state (on the target shardings), its step and its meta JSON."""
  state: Any
  step: int
  meta: dict


def _short(error: BaseException, limit: int = 300) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


class Checkpointer:
  """Saves and restores `(TrainState, data iterator, meta)` under one directory (module docstring).

  Args:
    directory: `<workdir>/checkpoints`.
    keep_last: newest checkpoints kept (>= 1).
    keep_best: best checkpoints kept in addition, by `best_metric` (0 = none).
    best_metric: an eval result key; `best_mode`: "max" or "min".
    async_save: write in the background (default) or block in `save`.
    echo: called (on process 0) with each human-readable message; default: the "dinoseg.train" logger.
  """

  def __init__(self, directory, *, keep_last: int = 3, keep_best: int = 0, best_metric: str = "",
               best_mode: str = "max", async_save: bool = True, echo: Callable[[str], None] | None = None):
    if keep_last < 1:
      raise UserValueError(f"train.keep_last must be >= 1, got {keep_last}")
    if keep_best < 0:
      raise UserValueError(f"train.keep_best must be >= 0, got {keep_best}")
    if keep_best and not best_metric:
      raise UserValueError("train.keep_best > 0 needs train.best_metric (an eval result key)")
    if best_mode not in ("max", "min"):
      raise UserValueError(f"train.best_mode must be 'max' or 'min', got {best_mode!r}")
    self.directory = pathlib.Path(directory).resolve()
    self.best_metric = best_metric
    self._echo = echo
    policy = ocm.LatestN(n=keep_last)
    if keep_best:
      policy = ocm.AnyPreservationPolicy([policy, ocm.BestN(
          get_metric_fn=lambda metrics: metrics[best_metric], reverse=best_mode == "min", n=keep_best,
          keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
        create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, DATA_ITER, META))

  def _say(self, message: str) -> None:
    if self._echo is None:
      log.warning(message)
    elif jax.process_index() == 0:
      self._echo(message)

  def steps(self) -> list[int]:
    """Committed checkpoint steps, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def step_dir(self, step: int) -> pathlib.Path:
    return self.directory / str(step)

  def save(self, step: int, state, data_iter=None, *, metrics: Mapping[str, Any] | None = None) -> None:
    """Starts saving `state` (and the iterator position) as checkpoint `step`.

    Args:
      metrics: eval results of this step; `best_metric` among them ranks it for keep-best.
    """
    import grain  # noqa: PLC0415
    if step in self._manager.all_steps():
      raise ValueError(f"checkpoint step {step} already exists in {self.directory}")
    if self.step_dir(step).exists():  # left by an unusable checkpoint that a restore skipped
      self._quarantine([step])
    metrics = dict(metrics or {})
    tree = state_to_tree(state)
    meta = {"step": int(step), "fingerprints": fingerprint(tree), "metrics": _jsonable(metrics),
            "time": time.time(), "process_count": jax.process_count()}
    items = {STATE: ocp.args.StandardSave(tree), META: ocp.args.JsonSave(meta)}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
    ranked = {self.best_metric: float(metrics[self.best_metric])} if self.best_metric in metrics else None
    self._manager.save(int(step), args=ocp.args.Composite(**items), metrics=ranked, force=True)

  def wait(self) -> None:
    """Blocks until every started save is committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def saved_shapes(self, step: int) -> dict[str, tuple[int, ...]] | None:
    """{'/'-joined path: shape} of checkpoint `step`'s state, from its metadata (None if unreadable)."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
      metadata = handler.metadata(self.step_dir(step) / STATE)
    except Exception:  # noqa: BLE001  An unreadable checkpoint is reported by the restore itself.
      return None
    finally:
      handler.close()
    tree = getattr(metadata, "tree", metadata)
    return {path_to_str(path): tuple(getattr(leaf, "shape", ()))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

  def check_layout(self, step: int, target) -> None:
    """Raises CheckpointMismatchError when checkpoint `step` does not fit `target` (paths or shapes).

    Compared before anything is restored, from the checkpoint's metadata; an unreadable one passes
    (its restore reports it).
    """
    saved = self.saved_shapes(step)
    if saved is None:
      return
    expected = {path_to_str(path): tuple(leaf.shape)
                for path, leaf in jax.tree_util.tree_leaves_with_path(state_to_tree(target))}
    differ = [(k, saved[k], v) for k, v in expected.items() if k in saved and saved[k] != v]
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if not (differ or missing or unexpected):
      return
    # The model's own variables first: optimizer moments and EMA repeat the same shapes.
    model = sorted((d for d in differ if not d[0].startswith(("opt_state/", "ema_params/"))),
                   key=lambda d: (not d[0].startswith("params/"), d[0])) or differ
    parts = []
    if differ:
      shown = ", ".join(f"{k} saved {tuple(a)} vs expected {tuple(b)}" for k, a, b in model[:4])
      what = "optimizer / EMA arrays" if model is differ else "model variables"
      parts.append(f"{len(model)} {what} differ in shape ({shown}{', ...' if len(model) > 4 else ''})")
    if missing:
      parts.append(f"{len(missing)} expected arrays are not in it ({', '.join(missing[:4])}"
                   f"{', ...' if len(missing) > 4 else ''})")
    if unexpected:
      parts.append(f"{len(unexpected)} saved arrays are not in the configured state ({', '.join(unexpected[:4])}"
                   f"{', ...' if len(unexpected) > 4 else ''})")
    config_json = self.directory.parent / "config.json"
    raise CheckpointMismatchError(
        f"checkpoint {self.step_dir(step)} does not fit the configured model: {'; '.join(parts)}. "
        f"The checkpoints in {self.directory} were written by a run with another config"
        + (f" (its config: {config_json})" if config_json.is_file() else "")
        + "; resume with that config, or train in another --workdir")

  def _restore_step(self, step: int, target, data_iter) -> Restored:
    import grain  # noqa: PLC0415
    items = {STATE: ocp.args.StandardRestore(state_to_tree(target)), META: ocp.args.JsonRestore()}
    if data_iter is not None:
      items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    meta = dict(restored[META] or {})
    expected = meta.get("fingerprints")
    if expected is None:
      self._say(f"checkpoint {self.step_dir(step)} has no fingerprints; its contents cannot be verified")
    else:
      actual = fingerprint(dict(restored[STATE]))
      bad = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
      if bad:
        raise CorruptCheckpointError(
            f"{len(bad)} arrays differ from the fingerprints recorded at save time: {', '.join(bad[:5])}"
            + (" ..." if len(bad) > 5 else ""))
    return Restored(state=tree_to_state(restored[STATE], target), step=int(step), meta=meta)

  def restore(self, target, data_iter=None, step: int | None = None) -> Restored | None:
    """Restores the newest usable checkpoint (or exactly `step`) onto `target`'s shardings.

    Args:
      target: abstract TrainState whose leaves are ShapeDtypeStructs with shardings
        (`state.with_shardings`).
      data_iter: iterator whose position is restored in place (None: not restored).
      step: a specific step; then a failure raises instead of falling back.
    Returns:
      The restored checkpoint, or None when the directory holds none.
    Raises:
      CheckpointRestoreError: checkpoints exist but none is usable.
      CheckpointMismatchError: a checkpoint was written for another model (before anything is restored).
    """
    self._manager.reload()
    candidates = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    if step is not None and step not in self._manager.all_steps():
      raise CheckpointRestoreError(f"no checkpoint step {step} in {self.directory} (have {self.steps()})")
    failures: list[tuple[int, str]] = []
    for s in candidates:
      self.check_layout(s, target)
      try:
        restored = self._restore_step(s, target, data_iter)
      except Exception as e:  # noqa: BLE001  Any failure makes this checkpoint unusable; try the previous.
        reason = _short(e)
        failures.append((s, reason))
        if step is None:
          self._say(f"checkpoint {self.step_dir(s)} is unusable ({reason}); falling back to the previous one")
        continue
      if failures:
        self._quarantine([f for f, _ in failures])
        self._say(f"restored checkpoint step {s} after skipping unusable step(s) {[f for f, _ in failures]}")
      return restored
    if failures:
      listing = "; ".join(f"step {s}: {r}" for s, r in failures)
      raise CheckpointRestoreError(f"no usable checkpoint in {self.directory} ({listing})")
    return None

  def _quarantine(self, steps) -> None:
    """Moves unusable step directories to <workdir>/corrupt_checkpoints/<step>-<time> (process 0)."""
    from jax.experimental import multihost_utils  # noqa: PLC0415
    if jax.process_index() == 0:
      target_root = self.directory.parent / "corrupt_checkpoints"
      target_root.mkdir(parents=True, exist_ok=True)
      for s in steps:
        src = self.step_dir(s)
        if src.exists():
          dst = target_root / f"{s}-{time.strftime('%Y%m%d-%H%M%S')}"
          shutil.move(str(src), str(dst))
          self._say(f"moved unusable checkpoint {src} to {dst}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("dinoseg_checkpoint_quarantine")
    self._manager.reload()


def _jsonable(tree):
  if isinstance(tree, Mapping):
    return {str(k): _jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_jsonable(v) for v in tree]
  if isinstance(tree, (np.generic, np.ndarray, jax.Array)):
    arr = np.asarray(tree)
    return arr.item() if arr.ndim == 0 else arr.tolist()
  return tree


__all__ = ["Checkpointer", "Restored", "state_to_tree", "tree_to_state", "CheckpointRestoreError",
           "CorruptCheckpointError", "CheckpointMismatchError", "fingerprint",
           "STATE", "DATA_ITER", "META"]
