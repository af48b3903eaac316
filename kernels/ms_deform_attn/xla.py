"""Multi-scale deformable attention in plain XLA: chunked row gathers with a hand-written VJP.

The forward runs the sampling plan (`plan.py`) and a gather-weight-sum over chunks of query-head
rows (`jax.lax.map`); the backward is a `jax.lax.scan` over the same chunks that, per chunk,
recomputes the plan, gathers the value rows once, and produces

  d coeff  = <value_rows[rows], d out>            -> d locations, d attention_weights (VJP of the plan)
  d value  += scatter-add of coeff * d out         (into one (N * S * M, D) float32 accumulator)

Nothing is saved between forward and backward except the inputs, and the largest intermediate of
either pass is one chunk's gathered rows (chunk, K, D). Chunks are small on CPU (cache-resident
gathers: XLA's CPU gather costs ~8 ns per element when its result goes to memory, ~2 ns when it
stays in cache) and 1/16 of the rows elsewhere, so that no intermediate is larger than a quarter
of the forward's sampled values (N, Lq, M, L, P, D) (K = 4 L P: a chunk's gather holds
16 / 4 = 4 times fewer values than the sampled values).
"""
import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from dinoseg.kernels.ms_deform_attn.plan import base_rows, pad_rows, sampling_plan

# Query-head rows per step on CPU (measured best of 64 / 256 / 680 at Mask DINO encoder size).
CPU_QUERY_CHUNK = 64
# Steps elsewhere: one step's (R / 16, 4 * L * P, D) gather is a quarter of the sampled values.
ACCELERATOR_STEPS = 16


def accelerator_chunk(num_rows: int) -> int:
  """Rows per step off CPU: ceil(R / ACCELERATOR_STEPS), at least 8."""
  return max(8, -(-num_rows // ACCELERATOR_STEPS))


def _chunks(x: jax.Array, chunk: int) -> jax.Array:
  x = pad_rows(x, chunk)
  return x.reshape(x.shape[0] // chunk, chunk, *x.shape[1:])


def _map(fn, xs, num_chunks: int):
  if num_chunks == 1:
    return jax.tree.map(lambda y: y[None], fn(jax.tree.map(lambda x: x[0], xs)))
  return jax.lax.map(fn, xs)


def flat_queries(value, sampling_locations, attention_weights):
  """(R, L, P, 2) locations, (R, L, P) weights and (R,) base rows for R = N * Lq * M query-head rows."""
  n, s, m, _ = value.shape
  _, lq, _, num_levels, num_points, _ = sampling_locations.shape
  num_rows = n * lq * m
  locations = sampling_locations.reshape(num_rows, num_levels, num_points, 2)
  weights = attention_weights.reshape(num_rows, num_levels, num_points)
  base = base_rows(jnp.arange(num_rows, dtype=jnp.int32), num_queries=lq, num_heads=m, num_values=s)
  return locations, weights, base


def gather_rows(value_rows: jax.Array, rows: jax.Array) -> jax.Array:
  """value_rows (V, D), rows (...) int32 in [0, V) -> (..., D) float32."""
  return jnp.take(value_rows, rows, axis=0, mode="clip").astype(jnp.float32)


def scatter_add_rows(num_value_rows: int, rows: jax.Array, coeff: jax.Array, dout: jax.Array,
                     chunk: int) -> jax.Array:
  """d value_rows = sum over (r, k) of coeff[r, k] * dout[r] into row rows[r, k], chunk by chunk.

  Args:
    num_value_rows: V.
    rows, coeff: (R, K) the sampling plan.
    dout: (R, D) output cotangent.
    chunk: rows of the plan per scan step; the step's update tensor is (chunk * K, D).
  Returns:
    (V, D) float32.
  """
  d = dout.shape[-1]
  xs = (_chunks(rows, chunk), _chunks(coeff, chunk), _chunks(dout.astype(jnp.float32), chunk))

  def step(acc, x):
    rows_c, coeff_c, dout_c = x
    updates = (coeff_c[..., None] * dout_c[:, None, :]).reshape(-1, d)
    return acc.at[rows_c.reshape(-1)].add(updates, mode="clip"), None

  acc, _ = jax.lax.scan(step, jnp.zeros((num_value_rows, d), jnp.float32), xs)
  return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def _msda(spatial_shapes, value, sampling_locations, attention_weights, chunk):
  n, s, m, d = value.shape
  lq = sampling_locations.shape[1]
  value_rows = value.reshape(n * s * m, d)
  locations, weights, base = flat_queries(value, sampling_locations, attention_weights)
  num_rows = base.shape[0]
  xs = (_chunks(locations, chunk), _chunks(weights, chunk), _chunks(base, chunk))

  def step(x):
    coeff, rows = sampling_plan(*x, spatial_shapes=spatial_shapes, num_heads=m)
    return jnp.sum(gather_rows(value_rows, rows) * coeff[..., None], axis=1)

  out = _map(step, xs, xs[0].shape[0]).reshape(-1, d)[:num_rows]
  return out.astype(value.dtype).reshape(n, lq, m * d)


def _msda_fwd(spatial_shapes, value, sampling_locations, attention_weights, chunk):
  out = _msda(spatial_shapes, value, sampling_locations, attention_weights, chunk)
  return out, (value, sampling_locations, attention_weights)


def _msda_bwd(spatial_shapes, chunk, residuals, dout):
  value, sampling_locations, attention_weights = residuals
  n, s, m, d = value.shape
  value_rows = value.reshape(n * s * m, d)
  locations, weights, base = flat_queries(value, sampling_locations, attention_weights)
  num_rows = base.shape[0]
  dout = dout.reshape(num_rows, d).astype(jnp.float32)
  xs = (_chunks(locations, chunk), _chunks(weights, chunk), _chunks(base, chunk), _chunks(dout, chunk))

  def step(dvalue, x):
    loc_c, w_c, base_c, dout_c = x
    plan = functools.partial(sampling_plan, base=base_c, spatial_shapes=spatial_shapes, num_heads=m)
    coeff, plan_vjp, rows = jax.vjp(plan, loc_c, w_c, has_aux=True)
    dcoeff = jnp.sum(gather_rows(value_rows, rows) * dout_c[:, None, :], axis=-1)
    dloc, dweights = plan_vjp(dcoeff)
    updates = (coeff[..., None] * dout_c[:, None, :]).reshape(-1, d)
    dvalue = dvalue.at[rows.reshape(-1)].add(updates, mode="clip")
    return dvalue, (dloc, dweights)

  dvalue, (dloc, dweights) = jax.lax.scan(step, jnp.zeros((n * s * m, d), jnp.float32), xs)
  dloc = dloc.reshape(-1, *dloc.shape[2:])[:num_rows].reshape(sampling_locations.shape)
  dweights = dweights.reshape(-1, *dweights.shape[2:])[:num_rows].reshape(attention_weights.shape)
  return (dvalue.reshape(value.shape).astype(value.dtype), dloc.astype(sampling_locations.dtype),
          dweights.astype(attention_weights.dtype))


_msda.defvjp(_msda_fwd, _msda_bwd)


def ms_deform_attn_xla(value: jax.Array, spatial_shapes: Sequence[tuple[int, int]],
                       sampling_locations: jax.Array, attention_weights: jax.Array, *,
                       query_chunk: int | None = None) -> jax.Array:
  """Multi-scale deformable attention with XLA gathers (arguments as `ms_deform_attn`).

  Args:
    query_chunk: query-head rows per step; None picks CPU_QUERY_CHUNK on CPU and
      `accelerator_chunk` on other platforms (chosen when lowering, per platform).
  Returns:
    (N, Lq, M * D) in value's dtype (accumulation in float32).
  """
  spatial_shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
  if query_chunk is not None:
    return _msda(spatial_shapes, value, sampling_locations, attention_weights, int(query_chunk))
  num_rows = value.shape[0] * sampling_locations.shape[1] * value.shape[2]
  other_chunk = accelerator_chunk(num_rows)
  cpu_chunk = min(CPU_QUERY_CHUNK, other_chunk)
  run = lambda chunk: lambda *args: _msda(spatial_shapes, *args, chunk)
  if cpu_chunk == other_chunk:
    return run(other_chunk)(value, sampling_locations, attention_weights)
  return jax.lax.platform_dependent(value, sampling_locations, attention_weights,
                                    cpu=run(cpu_chunk), default=run(other_chunk))
