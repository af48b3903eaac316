"""The jitted train step and eval step around a task's `loss_fn` / `predict_fn`.

One train step, for a global batch (leaves (B, ...), batch axis sharded over ("data", "fsdp")):

1. split the state's key: one key for this step, one carried to the next;
2. forward/backward of `task.loss_fn` with params and the model inputs (`task.compute_dtype_inputs`;
   never the targets) cast to the compute dtype; the cast is inside the differentiated function, so gradients reach the float32 master
   weights as float32. With `grad_accum_steps` = k the batch is split into k interleaved
   micro-batches (rows i, i + k, ... form micro-batch i, so every device keeps an equal share)
   and a `lax.scan` sums their gradients, losses and metrics, then divides by k;
3. `finite = isfinite(loss) & isfinite(global grad norm)`; the optimizer update is computed and
   kept only where finite (`jnp.where`, no host sync): a non-finite step leaves params, optimizer
   state and EMA unchanged, advances `step` and the key, and counts in `nonfinite_total` /
   `nonfinite_streak` (the trainer stops after `max_nonfinite_steps` in a row);
4. optional EMA: ema <- decay * ema + (1 - decay) * params.

Metrics returned per step (replicated scalars): the task's metrics, "loss", "grad_norm" (before
clipping), "learning_rate" (base rate of this update), "skipped" (0/1), "nonfinite_total",
"nonfinite_streak".
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from dinoseg.errors import UserValueError
from dinoseg.train.optimizer import Optimizer
from dinoseg.train.state import TrainState

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def compute_dtype(name: str) -> jnp.dtype:
  if name not in COMPUTE_DTYPES:
    raise UserValueError(f"train.compute_dtype must be one of {COMPUTE_DTYPES}, got {name!r}")
  return jnp.dtype(name)


def cast_floating(tree, dtype):
  """Casts the floating leaves of `tree` to `dtype` (integers, bools and keys untouched)."""
  def cast(x):
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
      return x.astype(dtype)
    return x
  return jax.tree.map(cast, tree)


def cast_inputs(batch, keys: tuple[str, ...], dtype):
  """The batch with the floating leaves under `keys` cast to `dtype` (targets untouched)."""
  return {k: cast_floating(v, dtype) if k in keys else v for k, v in batch.items()}


def split_microbatches(x: jax.Array, k: int, batch_axes: tuple[str, ...] | None) -> jax.Array:
  """(B, ...) -> (k, B / k, ...) with micro-batch i = rows i, i + k, i + 2k, ..."""
  if x.shape[0] % k:
    raise UserValueError(f"optimizer.grad_accum_steps={k} does not divide the global batch size {x.shape[0]}")
  micro = jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
  if batch_axes:
    micro = jax.lax.with_sharding_constraint(micro, P(None, batch_axes))
  return micro


def make_train_step(task, optimizer: Optimizer, *, dtype: str = "float32", ema_decay: float = 0.0,
                    batch_axes: tuple[str, ...] | None = None) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
  """(state, global batch) -> (new state, metrics); jit it with donated state (see trainer).

  Args:
    task: the `Task` whose `loss_fn` is minimized.
    optimizer: from `optimizer.build_optimizer`.
    dtype: compute dtype name ("float32", "bfloat16", "float16").
    ema_decay: > 0 when the state carries EMA params.
    batch_axes: mesh axes of the batch dimension (for the micro-batch sharding constraint).
  """
  cdtype = compute_dtype(dtype)
  inputs = tuple(getattr(task, "compute_dtype_inputs", ("image",)))
  accum = int(optimizer.grad_accum_steps)
  tx = optimizer.tx

  def loss_and_grads(params, model_state, batch, rng):
    def objective(p):
      loss, metrics = task.loss_fn(cast_floating(p, cdtype), model_state, cast_inputs(batch, inputs, cdtype), rng,
                                   train=True)
      metrics = {k: jnp.asarray(v, jnp.float32) for k, v in dict(metrics).items()}
      return jnp.asarray(loss, jnp.float32), metrics

    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return loss, metrics, grads

  def step(state: TrainState, batch) -> tuple[TrainState, dict]:
    rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
    if accum == 1:
      loss, metrics, grads = loss_and_grads(state.params, state.model_state, batch, step_rng)
    else:
      micro = jax.tree.map(lambda x: split_microbatches(x, accum, batch_axes), batch)

      def body(total, xs):
        i, mb = xs
        out = loss_and_grads(state.params, state.model_state, mb, jax.random.fold_in(step_rng, i))
        return jax.tree.map(jnp.add, total, out), None

      first = jax.tree.map(lambda x: x[0], micro)
      shapes = jax.eval_shape(loss_and_grads, state.params, state.model_state, first, step_rng)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
      loss, metrics, grads = jax.tree.map(lambda x: x / accum, total)

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    def keep(new, old):
      return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    params = keep(params, state.params)
    opt_state = keep(opt_state, state.opt_state)
    ema = state.ema_params
    if ema is not None:
      ema = keep(jax.tree.map(lambda e, p: e * ema_decay + (1.0 - ema_decay) * p, ema, params), ema)
    skipped = (~finite).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, rng=jax.random.key_data(rng), ema_params=ema,
        nonfinite_total=state.nonfinite_total + skipped,
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1).astype(jnp.int32))
    out = dict(metrics)
    out.update(loss=loss, grad_norm=grad_norm,
               learning_rate=optimizer.learning_rate(state.step - state.nonfinite_total),
               skipped=skipped, nonfinite_total=new_state.nonfinite_total,
               nonfinite_streak=new_state.nonfinite_streak)
    return new_state, out

  return step


def make_predict_step(task, *, dtype: str = "float32") -> Callable:
  """(params, model_state, global batch) -> task predictions, in the compute dtype; jit it."""
  cdtype = compute_dtype(dtype)
  inputs = tuple(getattr(task, "compute_dtype_inputs", ("image",)))

  def predict(params, model_state, batch):
    return task.predict_fn(cast_floating(params, cdtype), model_state, cast_inputs(batch, inputs, cdtype))

  return predict


__all__ = ["make_train_step", "make_predict_step", "cast_floating", "cast_inputs", "split_microbatches", "compute_dtype",
           "COMPUTE_DTYPES"]
