"""TPU (Pallas Mosaic) kernels of deformable attention: value rows fetched by DMA.

Mosaic TPU has no general in-kernel gather ("Only take_along_axis-like gathers supported"), so a
program fetches the rows it needs from HBM itself: the block's row indices arrive in SMEM (a
(1, 1, block_rows * K) block of the plan), every row is copied by its own DMA into a VMEM buffer
(K, block_rows, D), and the weighted sum / dot products then run as dense vector code on that
buffer:

  gather_weighted_sum  out[r]       = sum_k coeff[r, k] * value[rows[r, k]]     (forward)
  gather_dot           dcoeff[r, k] = <value[rows[r, k]], dout[r]>              (backward)

There is no atomic scatter on TPU: the value gradient is an XLA scatter-add over chunks of rows
(`xla.scatter_add_rows`). The kernels take float32 value rows (single-row DMAs into packed bf16
tiles are avoided); `pallas.py` casts.

Lowering is checked with `jax.export(..., platforms=["tpu"])` on a CPU host; that covers the
Pallas -> Mosaic lowering, not Mosaic's own compilation on a chip (not available here).
"""
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from dinoseg.kernels.ms_deform_attn.plan import pad_rows

BLOCK_ROWS = 32


def _fetch_rows(rows_smem, value_hbm, buf, sem, *, block_rows, num_samples):
  """DMAs value_hbm[rows[i, k]] into buf[k, i] for the block's rows, then waits for all of them."""

  def start_row(i, carry):
    def start_sample(k, carry):
      row = rows_smem[0, i * num_samples + k]
      pltpu.make_async_copy(value_hbm.at[pl.ds(row, 1), :], buf.at[k, pl.ds(i, 1), :], sem).start()
      return carry
    return jax.lax.fori_loop(0, num_samples, start_sample, carry)

  jax.lax.fori_loop(0, block_rows, start_row, 0)

  def wait(_, carry):  # Every copy has the same size: wait on a same-shaped descriptor.
    pltpu.make_async_copy(value_hbm.at[pl.ds(0, 1), :], buf.at[0, pl.ds(0, 1), :], sem).wait()
    return carry

  jax.lax.fori_loop(0, block_rows * num_samples, wait, 0)


def _gather_weighted_sum_kernel(rows_smem, coeff_ref, value_hbm, out_ref, buf, sem, *,
                                block_rows, num_samples):
  _fetch_rows(rows_smem, value_hbm, buf, sem, block_rows=block_rows, num_samples=num_samples)
  coeff = coeff_ref[...]
  acc = jnp.zeros(out_ref.shape, jnp.float32)
  for k in range(num_samples):
    acc = acc + coeff[:, k:k + 1] * buf[k]
  out_ref[...] = acc


def _gather_dot_kernel(rows_smem, dout_ref, value_hbm, dcoeff_ref, buf, sem, *, block_rows, num_samples):
  _fetch_rows(rows_smem, value_hbm, buf, sem, block_rows=block_rows, num_samples=num_samples)
  dout = dout_ref[...].astype(jnp.float32)
  for k in range(num_samples):
    dcoeff_ref[:, k:k + 1] = jnp.sum(buf[k] * dout, axis=1, keepdims=True)


def _call(kernel, out_width, rows, dense, value_rows, block_rows, interpret, name):
  num_rows, num_samples = rows.shape
  width = value_rows.shape[1]
  rows_p, dense_p = pad_rows(rows, block_rows), pad_rows(dense, block_rows)
  num_blocks = rows_p.shape[0] // block_rows
  # Rank-1 and (1, n) blocks are avoided: their TPU lowering queries the chip (fails off-device).
  rows_p = rows_p.reshape(num_blocks, 1, block_rows * num_samples)
  out = pl.pallas_call(
      lambda *refs: kernel(*refs, block_rows=block_rows, num_samples=num_samples),
      out_shape=jax.ShapeDtypeStruct((num_blocks * block_rows, out_width), jnp.float32),
      grid=(num_blocks,),
      in_specs=[pl.BlockSpec((None, 1, block_rows * num_samples), lambda i: (i, 0, 0),
                             memory_space=pltpu.SMEM),
                pl.BlockSpec((block_rows, dense.shape[1]), lambda i: (i, 0)),
                pl.BlockSpec(memory_space=pl.ANY)],
      out_specs=pl.BlockSpec((block_rows, out_width), lambda i: (i, 0)),
      scratch_shapes=[pltpu.VMEM((num_samples, block_rows, width), jnp.float32),
                      pltpu.SemaphoreType.DMA(())],
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
      interpret=interpret,
      name=name,
  )(rows_p, dense_p, value_rows.astype(jnp.float32))
  return out[:num_rows]


def gather_weighted_sum(value_rows: jax.Array, rows: jax.Array, coeff: jax.Array, *,
                        block_rows: int = BLOCK_ROWS, interpret: bool = False) -> jax.Array:
  """value_rows (V, D), rows / coeff (R, K) -> (R, D) float32."""
  return _call(_gather_weighted_sum_kernel, value_rows.shape[1], rows, coeff.astype(jnp.float32),
               value_rows, block_rows, interpret, "msda_gather_weighted_sum_tpu")


def gather_dot(value_rows: jax.Array, rows: jax.Array, dout: jax.Array, *,
               block_rows: int = BLOCK_ROWS, interpret: bool = False) -> jax.Array:
  """value_rows (V, D), rows (R, K), dout (R, D) -> dcoeff (R, K) float32."""
  return _call(_gather_dot_kernel, rows.shape[1], rows, dout.astype(jnp.float32), value_rows,
               block_rows, interpret, "msda_gather_dot_tpu")
