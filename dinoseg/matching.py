"""Bipartite matching of predictions to targets: the assignment step of DETR-style criteria.

`assign(cost, target_valid, matcher=...)` solves one minimum-cost assignment per image and
returns a fixed-shape `Matching`; `match(...)` computes the cost with
`dinoseg.kernels.matching_cost` first. Matchers (`MATCHERS`, chosen by name from the config):

  "hungarian_device"  exact Hungarian algorithm on the accelerator (optax's jit-able
                      implementation, vmapped over images). Stays inside the jitted step; under
                      a mesh it runs in `jax.shard_map`, every device solving its own images.
  "scipy_host"        `scipy.optimize.linear_sum_assignment` on the host through
                      `jax.pure_callback`. Under a mesh (argument, or `jax.set_mesh` context) it
                      runs inside `jax.shard_map` over the batch axes, so each device ships only
                      its local images to its host; replicas along other mesh axes (e.g. tensor)
                      skip the callback and receive the result by a psum.

Both are exact (same total cost as scipy on the valid targets); ties may be broken differently.

Output convention (`Matching`, all arrays fixed-shape, indexed by TARGET slot):
  pred_index[b, j]    the query matched to target slot j (0 where not valid)
  target_index[b, j]  the target slot j itself (= arange(T) for both matchers; use it, do not
                      assume it, when gathering targets)
  valid[b, j]         True iff target j is a real target (target_valid) and got a query; with
                      Q >= T every real target is matched; with Q < T only Q of them are
  target_of_pred[b, q] the target slot matched to query q, or -1 (unmatched queries)
So matched pairs are (pred_index[b, j], target_index[b, j]) where valid[b, j]; the loss for a
target slot j uses query pred_index[b, j], and the classification target of query q is
labels[b, target_of_pred[b, q]] if target_of_pred[b, q] >= 0, else "no object".
"""
from typing import Any, Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from dinoseg.kernels import sharding
from dinoseg.kernels.matching_cost import CostWeights, matching_cost
from dinoseg.parallel import BATCH_AXES

# Costs are clamped to +-COST_LIMIT before solving (NaN and +inf count as +COST_LIMIT).
COST_LIMIT = 1e30


@flax.struct.dataclass
class Matching:
  """pred_index, target_index (B, T) int32; valid (B, T) bool; target_of_pred (B, Q) int32.

  See the module docstring for the convention.
  """
  pred_index: Any
  target_index: Any
  valid: Any
  target_of_pred: Any

  def num_matched(self):
    """(B,) number of matched pairs per image."""
    return jnp.sum(self.valid, axis=-1)


def _from_pairs(pred_index, valid, num_queries: int) -> Matching:
  """Builds a Matching from per-target-slot pred_index (B, T) and valid (B, T)."""
  b, t = pred_index.shape
  pred_index = jnp.where(valid, pred_index, 0).astype(jnp.int32)
  target_index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  rows = jnp.where(valid, pred_index, num_queries)  # Invalid slots write out of bounds (dropped).
  target_of_pred = jnp.full((b, num_queries), -1, jnp.int32)
  target_of_pred = jax.vmap(lambda o, r, v: o.at[r].set(v, mode="drop"))(target_of_pred, rows, target_index)
  return Matching(pred_index, target_index, valid.astype(bool), target_of_pred)


def solver_cost(cost: jax.Array, target_valid: jax.Array) -> jax.Array:
  """The cost handed to a solver: finite, on the scale of the real costs.

  Non-finite entries are clamped (NaN, +inf -> +COST_LIMIT; -inf -> -COST_LIMIT). Padded columns
  get `max(real costs) + max(1, |max|)`, strictly above every real cost: with Q >= T any
  constant column leaves the optimum over the real columns unchanged, and with Q < T a value
  above all real costs makes the solver use as many real columns as it can. (A huge constant
  such as matching_cost's pad_cost would wreck float32 dual potentials.)

  Args:
    cost: (..., Q, T); target_valid: (..., T) bool.
  Returns:
    (..., Q, T) float32.
  """
  cost = jnp.nan_to_num(cost.astype(jnp.float32), nan=COST_LIMIT, posinf=COST_LIMIT, neginf=-COST_LIMIT)
  cost = jnp.clip(cost, -COST_LIMIT, COST_LIMIT)
  valid = target_valid[..., None, :]
  top = jnp.max(jnp.where(valid, cost, -jnp.inf), axis=(-2, -1), keepdims=True)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  return jnp.where(valid, cost, top + jnp.maximum(1.0, jnp.abs(top)))


def _hungarian_one(cost: jax.Array, target_valid: jax.Array):
  """One image: cost (Q, T), target_valid (T,) -> pred_index (T,), valid (T,)."""
  q, t = cost.shape
  rows, cols = optax.assignment.hungarian_algorithm(solver_cost(cost, target_valid))
  pred_index = jnp.zeros((t,), jnp.int32).at[cols].set(rows.astype(jnp.int32))
  matched = jnp.zeros((t,), bool).at[cols].set(True)
  return pred_index, matched & target_valid


def hungarian_device(cost: jax.Array, target_valid: jax.Array, *, mesh=None,
                     batch_axes: Sequence[str] = BATCH_AXES, **unused) -> Matching:
  """Exact on-device assignment (jit / vmap-able). cost (B, Q, T), target_valid (B, T).

  Under a mesh (argument or `jax.set_mesh` context) each device solves its own images
  (`jax.shard_map` over the batch axes).
  """
  del unused
  b, q, t = cost.shape
  if q == 0 or t == 0:
    return _from_pairs(jnp.zeros((b, t), jnp.int32), jnp.zeros((b, t), bool), q)
  solve = jax.vmap(_hungarian_one)
  mesh = sharding.resolve_mesh(mesh)
  batch = sharding.spec_entry(sharding.split_axes(mesh, batch_axes, b)) if mesh is not None else None
  if batch is not None:
    solve = sharding.shard_map(solve, mesh, (P(batch), P(batch)), (P(batch), P(batch)))
  pred_index, valid = solve(cost, target_valid)
  return _from_pairs(pred_index, valid, q)


def solve_on_host(cost: np.ndarray, target_valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """scipy `linear_sum_assignment` per image on the valid target columns (NumPy, host).

  Args:
    cost: (..., Q, T) float; target_valid: (..., T) bool.
  Returns:
    pred_index (..., T) int32, valid (..., T) bool.
  """
  from scipy.optimize import linear_sum_assignment

  cost = np.asarray(cost, np.float64)
  target_valid = np.asarray(target_valid, bool)
  lead, (q, t) = cost.shape[:-2], cost.shape[-2:]
  cost = cost.reshape(-1, q, t)
  target_valid = np.broadcast_to(target_valid, (*lead, t)).reshape(-1, t)
  pred_index = np.zeros((cost.shape[0], t), np.int32)
  valid = np.zeros((cost.shape[0], t), bool)
  for i in range(cost.shape[0]):
    cols = np.flatnonzero(target_valid[i])
    if q == 0 or cols.size == 0:
      continue
    sub = np.clip(np.nan_to_num(cost[i][:, cols], nan=COST_LIMIT, posinf=COST_LIMIT, neginf=-COST_LIMIT),
                  -COST_LIMIT, COST_LIMIT)
    rows, picked = linear_sum_assignment(sub)
    pred_index[i, cols[picked]] = rows
    valid[i, cols[picked]] = True
  return pred_index.reshape(*lead, t), valid.reshape(*lead, t)


def _host_callback(cost, target_valid):
  out_shapes = (jax.ShapeDtypeStruct(target_valid.shape, jnp.int32),
                jax.ShapeDtypeStruct(target_valid.shape, jnp.bool_))
  return jax.pure_callback(solve_on_host, out_shapes, cost, target_valid, vmap_method="broadcast_all")


def scipy_host(cost: jax.Array, target_valid: jax.Array, *, mesh=None,
               batch_axes: Sequence[str] = BATCH_AXES, **unused) -> Matching:
  """Exact assignment by scipy on the host, one device shard at a time.

  Args:
    cost: (B, Q, T); target_valid: (B, T).
    mesh: the device mesh (jax.sharding.Mesh or AbstractMesh); None uses the `jax.set_mesh`
      context, and without one the whole batch goes through a single callback.
    batch_axes: mesh axes the batch is split over (those the mesh lacks are ignored).
  Returns:
    Matching.
  Raises:
    ValueError: if B is not divisible by the number of batch shards.
  """
  del unused
  b, q, t = cost.shape
  cost = jax.lax.stop_gradient(cost)
  mesh = sharding.resolve_mesh(mesh)
  if mesh is None or q == 0 or t == 0:
    pred_index, valid = _host_callback(cost, target_valid)
    return _from_pairs(pred_index, valid, q)
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  batch = tuple(a for a in batch_axes if a in sizes)
  others = tuple(a for a in mesh.axis_names if a not in batch and sizes[a] > 1)
  shards = int(np.prod([sizes[a] for a in batch]))
  if b % shards:
    raise ValueError(f"batch size {b} is not divisible by the {shards} shards of mesh axes {batch}")
  spec = P(batch if batch else None)

  def local(cost_l, valid_l):
    if not others:
      return _host_callback(cost_l, valid_l)
    # One replica per batch shard calls the host; the others add zeros.
    first = jax.lax.axis_index(others) == 0
    zeros = (jnp.zeros(valid_l.shape, jnp.int32), jnp.zeros(valid_l.shape, jnp.int32))
    pred_l, ok_l = jax.lax.cond(first, lambda: tuple(x.astype(jnp.int32) for x in _host_callback(cost_l, valid_l)),
                                lambda: zeros)
    pred_l, ok_l = jax.lax.psum((pred_l, ok_l), others)
    return pred_l, ok_l.astype(bool)

  pred_index, valid = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec), out_specs=(spec, spec),
                                    check_vma=False)(cost, target_valid)
  return _from_pairs(pred_index, valid, q)


MATCHERS: dict[str, Callable[..., Matching]] = {
    "hungarian_device": hungarian_device,
    "scipy_host": scipy_host,
}


def assign(cost: jax.Array, target_valid: jax.Array, *, matcher: str = "hungarian_device", mesh=None,
           batch_axes: Sequence[str] = BATCH_AXES) -> Matching:
  """Minimum-cost assignment of queries to the valid targets of each image.

  Args:
    cost: (B, Q, T) matching cost (e.g. `dinoseg.kernels.matching_cost`); no gradient flows.
    target_valid: (B, T) bool.
    matcher: a key of MATCHERS ("hungarian_device" | "scipy_host").
    mesh, batch_axes: the device mesh (None: the `jax.set_mesh` context, if any) and the mesh
      axes the batch is split over; each device solves its own images.
  Returns:
    Matching (see the module docstring).
  Raises:
    ValueError: for an unknown matcher or inconsistent shapes.
  """
  if matcher not in MATCHERS:
    raise ValueError(f"matcher must be one of {tuple(MATCHERS)}, got {matcher!r}")
  if getattr(cost, "ndim", None) != 3:
    raise ValueError(f"cost must have shape (B, Q, T), got {getattr(cost, 'shape', None)}")
  if tuple(getattr(target_valid, "shape", ())) != (cost.shape[0], cost.shape[2]):
    raise ValueError(f"target_valid must have shape {(cost.shape[0], cost.shape[2])}, "
                     f"got {getattr(target_valid, 'shape', None)}")
  cost = jax.lax.stop_gradient(jnp.asarray(cost, jnp.float32))
  return MATCHERS[matcher](cost, jnp.asarray(target_valid, bool), mesh=mesh, batch_axes=batch_axes)


def match(*, pred_logits, target_labels, target_valid, pred_boxes=None, target_boxes=None,
          pred_mask_points=None, target_mask_points=None, target_box_valid=None,
          weights: CostWeights | Mapping[str, Any] | None = None, matcher: str = "hungarian_device",
          cost_impl: str = "auto", mesh=None, batch_axes: Sequence[str] = BATCH_AXES) -> Matching:
  """`matching_cost` (arguments as there) followed by `assign`."""
  cost = matching_cost(pred_logits=pred_logits, target_labels=target_labels, target_valid=target_valid,
                       pred_boxes=pred_boxes, target_boxes=target_boxes, pred_mask_points=pred_mask_points,
                       target_mask_points=target_mask_points, target_box_valid=target_box_valid,
                       weights=weights, impl=cost_impl, mesh=mesh, batch_axes=batch_axes)
  return assign(cost, target_valid, matcher=matcher, mesh=mesh, batch_axes=batch_axes)
