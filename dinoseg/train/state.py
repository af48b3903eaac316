"""The train state pytree and its creation directly in its sharded layout.

`TrainState` holds everything a run needs to continue bit for bit, except the data-iterator
position (checkpointed beside it, see `checkpointing`):

  step              () int32    train steps taken (batches consumed, skipped steps included)
  params            pytree      float32 master weights (optimized)
  opt_state         pytree      optax state (moments mirror `params` and share its shardings)
  rng               (2,) uint32 raw PRNG key data, split once per step
  model_state       dict        other Flax collections (e.g. "frozen_bn"); carried, not optimized
  ema_params        pytree|None exponential moving average of `params` (config.train.ema_decay > 0)
  nonfinite_total   () int32    steps skipped because the loss or gradient norm was not finite
  nonfinite_streak  () int32    consecutive skipped steps up to now

The checkpoint contract: Orbax item `state` holds this state as a dict whose top level has the
Flax collections side by side, `params` and model_state's (e.g. `frozen_bn`), next to the other
fields (`checkpointing.state_to_tree`); that is what `dinoseg convert --from
<workdir>/checkpoints/<step>` reads.

Creation never materializes an unsharded copy: `jax.eval_shape` gives the structure,
`parallel.param_shardings` (logical rules + fsdp) places params and model_state, optimizer moments
follow their params (`optax.tree_map_params`), scalars are replicated, and `jax.jit(init,
out_shardings=...)` builds the arrays in place. `with_variables` then puts pretrained values
(`config.init`) into a fresh state, each device taking only its shards.
"""
import contextlib
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dinoseg import parallel


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules=None):
  """`jax.set_mesh(mesh)` plus the (mesh-filtered) logical axis rules: where steps and inits run."""
  with jax.set_mesh(mesh), parallel.logical_axis_rules(rules, mesh):
    yield


@flax.struct.dataclass
class TrainState:
  """See the module docstring for each field's meaning and shape."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  model_state: Any
  ema_params: Any
  nonfinite_total: jax.Array
  nonfinite_streak: jax.Array


def split_variables(variables) -> tuple[Any, dict]:
  """Flax variables -> (params, {other collection: tree})."""
  variables = dict(variables)
  if "params" not in variables:
    raise ValueError(f"init_variables must return a 'params' collection, got {sorted(variables)}")
  params = variables.pop("params")
  return params, variables


def make_init_fn(task, tx: optax.GradientTransformation, *, ema: bool):
  """rng key data (2,) uint32 -> TrainState (unboxed), for jax.eval_shape / jax.jit."""

  def init(rng_data):
    rng = jax.random.wrap_key_data(rng_data)
    init_rng, train_rng = jax.random.split(rng)
    params, model_state = split_variables(nn.meta.unbox(task.init_variables(init_rng)))
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
        rng=jax.random.key_data(train_rng), model_state=model_state,
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        nonfinite_total=jnp.zeros((), jnp.int32), nonfinite_streak=jnp.zeros((), jnp.int32))

  return init


def seed_key_data(seed: int) -> jax.Array:
  """Raw key data ((2,) uint32 for the default threefry) of the run's seed (what `make_init_fn`'s init takes)."""
  return jax.random.key_data(jax.random.key(int(seed)))


def state_shardings(task, tx: optax.GradientTransformation, mesh: Mesh, rules=None, *, ema: bool,
                    fsdp_min_size: int = 2 ** 14) -> tuple[TrainState, TrainState]:
  """(abstract state of ShapeDtypeStructs, matching tree of NamedShardings) without allocating.

  Args:
    task: a `dinoseg.train.task.Task`.
    tx: the optimizer transformation.
    mesh: the run's mesh; `rules`: logical axis rules (None = parallel.DEFAULT_RULES).
    ema: whether the state carries EMA params.
    fsdp_min_size: see `parallel.param_shardings`.
  """
  rng_data = jax.eval_shape(lambda: seed_key_data(0))
  with mesh_context(mesh, rules):
    boxed = jax.eval_shape(lambda r: task.init_variables(jax.random.wrap_key_data(r)), rng_data)
    abstract = jax.eval_shape(make_init_fn(task, tx, ema=ema), rng_data)
  boxed_params, boxed_model_state = split_variables(boxed)
  param_sh = parallel.param_shardings(boxed_params, mesh, rules, fsdp_min_size=fsdp_min_size)
  model_state_sh = parallel.param_shardings(boxed_model_state, mesh, rules, fsdp_min_size=fsdp_min_size)
  replicated = NamedSharding(mesh, P())
  opt_sh = optax.tree_map_params(tx, lambda _, sharding: sharding, abstract.opt_state, param_sh,
                                 transform_non_params=lambda _: replicated)
  shardings = TrainState(
      step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated, model_state=model_state_sh,
      ema_params=param_sh if ema else None, nonfinite_total=replicated, nonfinite_streak=replicated)
  return abstract, shardings


def with_shardings(abstract, shardings):
  """ShapeDtypeStructs carrying `shardings` (an Orbax restore target for this mesh)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def create_train_state(task, tx: optax.GradientTransformation, shardings: TrainState, mesh: Mesh, rules=None, *,
                       seed: int, ema: bool) -> TrainState:
  """A fresh state from `seed`, created in its sharded layout (jit with out_shardings)."""
  init = jax.jit(make_init_fn(task, tx, ema=ema), out_shardings=shardings)
  with mesh_context(mesh, rules):
    return init(seed_key_data(seed))


def with_variables(state: TrainState, arrays, shardings: TrainState, tx: optax.GradientTransformation, mesh: Mesh,
                   rules=None) -> TrainState:
  """`state` with some variables replaced by host arrays (pretrained initialisation, `config.init`).

  Args:
    state: a fresh state (created sharded).
    arrays: {(collection, *path): np.ndarray of that variable's shape and dtype}; "params" paths go to
      params (and, when kept, the EMA params, which start equal to the params), other collections to
      model_state. Every process passes the same arrays; each device takes its shard of them.
    shardings: the state's shardings; tx: the optimizer, whose state is created again from the new params.
  """
  def replace(tree, shardings_tree, collection):
    def leaf(path, value, sharding):
      key = (collection,) + tuple(str(k.key) for k in path)
      if key not in arrays:
        return value
      host = arrays[key]
      return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return jax.tree_util.tree_map_with_path(leaf, tree, shardings_tree)

  params = replace(state.params, shardings.params, "params")
  model_state = {c: replace(t, shardings.model_state[c], c) for c, t in state.model_state.items()}
  ema = None if state.ema_params is None else replace(state.ema_params, shardings.ema_params, "params")
  with mesh_context(mesh, rules):
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  return state.replace(params=params, model_state=model_state, ema_params=ema, opt_state=opt_state)


__all__ = ["TrainState", "mesh_context", "split_variables", "make_init_fn", "seed_key_data", "state_shardings", "with_shardings",
           "create_train_state", "with_variables"]
