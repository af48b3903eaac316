"""GPU (Pallas Triton) kernels of deformable attention: row gathers and atomic row scatters.

Given the sampling plan (rows (R, K) int32, coeff (R, K) float32; see `plan.py`) and the value rows
(V, D), three kernels cover the forward and the backward:

  gather_weighted_sum  out[r]    = sum_k coeff[r, k] * value[rows[r, k]]          (forward)
  gather_dot           dcoeff[r, k] = <value[rows[r, k]], dout[r]>                (backward)
  scatter_add          dvalue[rows[r, k]] += coeff[r, k] * dout[r]               (backward, atomics)

Each program owns `block_rows` query-head rows and loops over the K samples; value and dvalue stay
in HBM (`pl.ANY`) and are addressed row by row (`value_ref[rows, :]`, `atomic_add`), which the
Triton lowering turns into pointer gathers and `tt.atomic_rmw`. Mosaic GPU (the default `pallas_call`
GPU backend in jax 0.10) rejects in-kernel gathers, so these kernels ask for Triton explicitly with
`pltriton.CompilerParams`.
"""
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
try:  # Deprecated since JAX 0.11 and slated for removal; GPUs then get the XLA implementation.
  from jax.experimental.pallas import triton as pltriton
except ImportError:  # pragma: no cover
  pltriton = None
TRITON_AVAILABLE = pltriton is not None

from dinoseg.kernels.ms_deform_attn.plan import pad_rows

BLOCK_ROWS = 64


def _gather_weighted_sum_kernel(rows_ref, coeff_ref, value_ref, out_ref, *, num_samples):
  acc = jnp.zeros(out_ref.shape, jnp.float32)
  for k in range(num_samples):
    coeff = coeff_ref[:, k]
    acc = acc + coeff[:, None] * value_ref[rows_ref[:, k], :].astype(jnp.float32)
  out_ref[...] = acc


def _gather_dot_kernel(rows_ref, dout_ref, value_ref, dcoeff_ref, *, num_samples):
  dout = dout_ref[...].astype(jnp.float32)
  for k in range(num_samples):
    dcoeff_ref[:, k] = jnp.sum(value_ref[rows_ref[:, k], :].astype(jnp.float32) * dout, axis=1)


def _scatter_add_kernel(rows_ref, coeff_ref, dout_ref, init_ref, dvalue_ref, *, num_samples, block_rows):
  del init_ref  # Aliased with dvalue_ref.
  width = dvalue_ref.shape[1]

  def row(i, carry):
    dout = dout_ref[i, :].astype(jnp.float32)
    for k in range(num_samples):
      pltriton.atomic_add(dvalue_ref, (rows_ref[i, k], pl.ds(0, width)), coeff_ref[i, k] * dout)
    return carry

  jax.lax.fori_loop(0, block_rows, row, 0)


def _pad_width(x: jax.Array) -> jax.Array:
  """Zero-pads the channel axis to a power of 2 (Triton arrays must have power-of-2 sizes)."""
  width = x.shape[1]
  padded = 1 << max(width - 1, 0).bit_length()
  return x if padded == width else jnp.pad(x, ((0, 0), (0, padded - width)))


def _blocked(width: int, block_rows: int) -> pl.BlockSpec:
  return pl.BlockSpec((block_rows, width), lambda i: (i, 0))


def gather_weighted_sum(value_rows: jax.Array, rows: jax.Array, coeff: jax.Array, *,
                        block_rows: int = BLOCK_ROWS, interpret: bool = False) -> jax.Array:
  """value_rows (V, D), rows / coeff (R, K) -> (R, D) float32."""
  num_rows, num_samples = rows.shape
  width = value_rows.shape[1]
  value_p = _pad_width(value_rows)
  rows_p, coeff_p = pad_rows(rows, block_rows), pad_rows(coeff, block_rows)
  out = pl.pallas_call(
      lambda *refs: _gather_weighted_sum_kernel(*refs, num_samples=num_samples),
      out_shape=jax.ShapeDtypeStruct((rows_p.shape[0], value_p.shape[1]), jnp.float32),
      grid=(rows_p.shape[0] // block_rows,),
      in_specs=[_blocked(num_samples, block_rows), _blocked(num_samples, block_rows),
                pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=_blocked(value_p.shape[1], block_rows),
      compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1),
      interpret=interpret,
      name="msda_gather_weighted_sum",
  )(rows_p, coeff_p, value_p)
  return out[:num_rows, :width]


def gather_dot(value_rows: jax.Array, rows: jax.Array, dout: jax.Array, *,
               block_rows: int = BLOCK_ROWS, interpret: bool = False) -> jax.Array:
  """value_rows (V, D), rows (R, K), dout (R, D) -> dcoeff (R, K) float32."""
  num_rows, num_samples = rows.shape
  value_p = _pad_width(value_rows)
  width = value_p.shape[1]
  rows_p, dout_p = pad_rows(rows, block_rows), pad_rows(_pad_width(dout), block_rows)
  out = pl.pallas_call(
      lambda *refs: _gather_dot_kernel(*refs, num_samples=num_samples),
      out_shape=jax.ShapeDtypeStruct(rows_p.shape, jnp.float32),
      grid=(rows_p.shape[0] // block_rows,),
      in_specs=[_blocked(num_samples, block_rows), _blocked(width, block_rows),
                pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=_blocked(num_samples, block_rows),
      compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1),
      interpret=interpret,
      name="msda_gather_dot",
  )(rows_p, dout_p, value_p)
  return out[:num_rows]


def scatter_add(num_value_rows: int, rows: jax.Array, coeff: jax.Array, dout: jax.Array, *,
                block_rows: int = BLOCK_ROWS, interpret: bool = False) -> jax.Array:
  """rows / coeff (R, K), dout (R, D) -> dvalue (num_value_rows, D) float32 (atomic adds)."""
  num_samples = rows.shape[1]
  dout_p = _pad_width(dout)
  width = dout_p.shape[1]
  rows_p, coeff_p, dout_p = (pad_rows(x, block_rows) for x in (rows, coeff, dout_p))
  init = jnp.zeros((num_value_rows, width), jnp.float32)
  dvalue = pl.pallas_call(
      lambda *refs: _scatter_add_kernel(*refs, num_samples=num_samples, block_rows=block_rows),
      out_shape=jax.ShapeDtypeStruct(init.shape, jnp.float32),
      grid=(rows_p.shape[0] // block_rows,),
      in_specs=[_blocked(num_samples, block_rows), _blocked(num_samples, block_rows),
                _blocked(width, block_rows), pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=pl.BlockSpec(memory_space=pl.ANY),
      input_output_aliases={3: 0},
      # One warp: each atomic covers one row of D (= 32 for Mask DINO) channels.
      compiler_params=pltriton.CompilerParams(num_warps=1, num_stages=1),
      interpret=interpret,
      name="msda_scatter_add",
  )(rows_p, coeff_p, dout_p, init)
  return dvalue[:, :dout.shape[1]]
