"""Multi-scale deformable attention with Pallas kernels, differentiable through `jax.custom_vjp`.

The sampling plan (`plan.py`: rows and coefficients, (R, K) each) is computed in XLA; the kernels of
a backend do the memory-bound parts:

  forward   out = gather_weighted_sum(value_rows, rows, coeff)
  backward  dcoeff = gather_dot(value_rows, rows, dout)       -> d locations, d weights (plan VJP)
            dvalue = scatter_add(rows, coeff, dout)

Residuals are the inputs only (the plan is recomputed in the backward). The backward's tensors are
(R, K) (plan, dcoeff: 4 / D of the forward's sampled values (N, Lq, M, L, P, D) each), (R, D),
value-sized ones, and on TPU one chunk of the value-gradient scatter (a quarter of the sampled
values); see docs/kernels.md.

Backends (`BACKENDS`): "triton" (GPU: gathers and atomic scatter in the kernel) and "mosaic_tpu"
(TPU: rows fetched by DMA; value gradient by an XLA scatter). Either runs on CPU with
`interpret=True`.
"""
import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from dinoseg.kernels.ms_deform_attn import tpu_kernels, triton_kernels
from dinoseg.kernels.ms_deform_attn.plan import sampling_plan
from dinoseg.kernels.ms_deform_attn.xla import accelerator_chunk, flat_queries, scatter_add_rows


@dataclasses.dataclass(frozen=True)
class PallasBackend:
  """The three row kernels of one Pallas backend (signatures as in `triton_kernels`)."""
  gather_weighted_sum: Callable
  gather_dot: Callable
  scatter_add: Callable
  block_rows: int


def _xla_scatter_add(num_value_rows, rows, coeff, dout, *, block_rows, interpret):
  del block_rows, interpret
  return scatter_add_rows(num_value_rows, rows, coeff, dout, accelerator_chunk(rows.shape[0]))


BACKENDS: dict[str, PallasBackend] = {
    "triton": PallasBackend(triton_kernels.gather_weighted_sum, triton_kernels.gather_dot,
                            triton_kernels.scatter_add, triton_kernels.BLOCK_ROWS),
    "mosaic_tpu": PallasBackend(tpu_kernels.gather_weighted_sum, tpu_kernels.gather_dot,
                                _xla_scatter_add, tpu_kernels.BLOCK_ROWS),
}


def _plan(value, sampling_locations, attention_weights, spatial_shapes):
  locations, weights, base = flat_queries(value, sampling_locations, attention_weights)
  plan = functools.partial(sampling_plan, base=base, spatial_shapes=spatial_shapes,
                           num_heads=value.shape[2])
  return plan, locations, weights


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4, 5))
def _msda(spatial_shapes, value, sampling_locations, attention_weights, backend, interpret):
  kernels = BACKENDS[backend]
  n, s, m, d = value.shape
  plan, locations, weights = _plan(value, sampling_locations, attention_weights, spatial_shapes)
  coeff, rows = plan(locations, weights)
  out = kernels.gather_weighted_sum(value.reshape(n * s * m, d), rows, coeff,
                                    block_rows=kernels.block_rows, interpret=interpret)
  return out.astype(value.dtype).reshape(n, sampling_locations.shape[1], m * d)


def _msda_fwd(spatial_shapes, value, sampling_locations, attention_weights, backend, interpret):
  out = _msda(spatial_shapes, value, sampling_locations, attention_weights, backend, interpret)
  return out, (value, sampling_locations, attention_weights)


def _msda_bwd(spatial_shapes, backend, interpret, residuals, dout):
  value, sampling_locations, attention_weights = residuals
  kernels = BACKENDS[backend]
  n, s, m, d = value.shape
  value_rows = value.reshape(n * s * m, d)
  plan, locations, weights = _plan(value, sampling_locations, attention_weights, spatial_shapes)
  coeff, plan_vjp, rows = jax.vjp(plan, locations, weights, has_aux=True)
  dout = dout.reshape(-1, d).astype(jnp.float32)
  dcoeff = kernels.gather_dot(value_rows, rows, dout, block_rows=kernels.block_rows, interpret=interpret)
  dloc, dweights = plan_vjp(dcoeff)
  dvalue = kernels.scatter_add(value_rows.shape[0], rows, coeff, dout, block_rows=kernels.block_rows,
                               interpret=interpret)
  return (dvalue.reshape(value.shape).astype(value.dtype),
          dloc.reshape(sampling_locations.shape).astype(sampling_locations.dtype),
          dweights.reshape(attention_weights.shape).astype(attention_weights.dtype))


_msda.defvjp(_msda_fwd, _msda_bwd)


def ms_deform_attn_pallas(value: jax.Array, spatial_shapes: Sequence[tuple[int, int]],
                          sampling_locations: jax.Array, attention_weights: jax.Array, *,
                          backend: str = "triton", interpret: bool = False) -> jax.Array:
  """Multi-scale deformable attention with the Pallas kernels of `backend` (arguments as
  `ms_deform_attn`).

  Args:
    backend: a key of BACKENDS ("triton" for GPU, "mosaic_tpu" for TPU).
    interpret: run the kernels in Pallas interpret mode (any platform, e.g. CPU tests).
  Returns:
    (N, Lq, M * D) in value's dtype.
  """
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
  spatial_shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
  return _msda(spatial_shapes, value, sampling_locations, attention_weights, backend, bool(interpret))
