"""The fused matching cost as Pallas kernels (Triton for GPU, Mosaic for TPU).

One program computes a (query block, all targets) tile of one image's cost:
  class   table(logits tile) @ one_hot(labels)       (a matmul selects each target's class column)
  boxes   pairwise L1 and -GIoU from a column of predicted boxes and rows of target boxes
  masks   x @ t^T and sigmoid(x) @ t^T accumulated over chunks of the K points, plus row sums
and combines them with `formulas.py` (shared with the XLA twin). Mosaic walks the point chunks as
the last ("arbitrary") grid axis with VMEM accumulators; Triton, which has no sequential grid axis,
loops over them inside the program. Inputs are padded to kernel-friendly sizes (targets and classes
to powers of two >= 16, queries and points to the block sizes) with values that contribute
exactly nothing (logits and points at NEG_PAD, targets at 0), and the result is cropped.
"""
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
try:  # Deprecated since JAX 0.11 and slated for removal; GPUs then get the XLA implementation.
  from jax.experimental.pallas import triton as pltriton
except ImportError:  # pragma: no cover
  pltriton = None
TRITON_AVAILABLE = pltriton is not None

from dinoseg.kernels.matching_cost.formulas import (HIGHEST, NEG_PAD, CostWeights, box_costs,
                                                    class_cost_table, finalize, mask_costs, sigmoid,
                                                    softplus)
from dinoseg.kernels.matching_cost.xla import missing_box_means

# Rows of the per-image target table (B, TARGET_ROWS, Tp).
_BOX, _VALID, _HAS_BOX, _POINT_SUM, _MEAN_L1, _MEAN_GIOU = 0, 4, 5, 6, 7, 8
TARGET_ROWS = 16
NT = (((1,), (1,)), ((), ()))  # a @ b^T


def _pow2(n: int, minimum: int = 16) -> int:
  return max(minimum, 1 << max(n - 1, 0).bit_length())


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _pad(x, shape, value=0.0):
  return jnp.pad(x, [(0, s - d) for d, s in zip(x.shape, shape)], constant_values=value)


def _tile_cost(logits, onehot, pred_box_ref, target_ref, mask_stats, *, weights: CostWeights,
               has_boxes, has_box_valid, num_points):
  """Cost of one (query block, Tp) tile from loaded class inputs, box refs and mask statistics."""
  row = lambda i: target_ref[i:i + 1, :]
  table = class_cost_table(logits, weights)
  cost = weights.class_weight * jax.lax.dot(table, onehot, precision=HIGHEST,
                                            preferred_element_type=jnp.float32)
  if has_boxes:
    pred = tuple(pred_box_ref[:, i:i + 1] for i in range(4))
    l1, giou = box_costs(pred, tuple(row(_BOX + i) for i in range(4)))
    if has_box_valid:
      has_box = row(_HAS_BOX) > 0.5
      l1 = jnp.where(has_box, l1, row(_MEAN_L1))
      giou = jnp.where(has_box, giou, row(_MEAN_GIOU))
    cost = cost + weights.bbox_weight * l1 + weights.giou_weight * giou
  if mask_stats is not None:
    softplus_sum, logit_dot, prob_sum, prob_dot = mask_stats
    bce, dice = mask_costs(softplus_sum, logit_dot, prob_sum, prob_dot, row(_POINT_SUM), num_points)
    cost = cost + weights.mask_weight * bce + weights.dice_weight * dice
  return finalize(cost, row(_VALID) > 0.5, weights.pad_cost)


def _point_stats(x, t):
  """Partial sums of one chunk of points: x (Qb, Kb) logits, t (Tp, Kb) targets."""
  prob = sigmoid(x)
  dot = lambda a: jax.lax.dot_general(a, t, NT, precision=HIGHEST, preferred_element_type=jnp.float32)
  return (jnp.sum(softplus(x), axis=1, keepdims=True), dot(x), jnp.sum(prob, axis=1, keepdims=True), dot(prob))


def _split_refs(refs, has_boxes, has_masks):
  refs = list(refs)
  logits_ref, onehot_ref = refs.pop(0), refs.pop(0)
  pred_box_ref = refs.pop(0) if has_boxes else None
  target_ref = refs.pop(0)
  x_ref, t_ref = (refs.pop(0), refs.pop(0)) if has_masks else (None, None)
  out_ref = refs.pop(0)
  return logits_ref, onehot_ref, pred_box_ref, target_ref, x_ref, t_ref, out_ref, refs


def _triton_kernel(*refs, weights, has_boxes, has_box_valid, has_masks, num_points, point_block):
  logits_ref, onehot_ref, pred_box_ref, target_ref, x_ref, t_ref, out_ref, _ = _split_refs(
      refs, has_boxes, has_masks)
  mask_stats = None
  if has_masks:
    block_q, num_t = out_ref.shape

    def chunk(j, acc):
      start = pl.multiple_of(j * point_block, point_block)
      x = x_ref[:, pl.ds(start, point_block)]
      t = t_ref[:, pl.ds(start, point_block)]
      return tuple(a + b for a, b in zip(acc, _point_stats(x, t)))

    zeros = (jnp.zeros((block_q, 1), jnp.float32), jnp.zeros((block_q, num_t), jnp.float32))
    mask_stats = jax.lax.fori_loop(0, x_ref.shape[1] // point_block, chunk, zeros + zeros)
  out_ref[...] = _tile_cost(logits_ref[...], onehot_ref[...], pred_box_ref, target_ref, mask_stats,
                            weights=weights, has_boxes=has_boxes, has_box_valid=has_box_valid,
                            num_points=num_points)


def _tpu_kernel(*refs, weights, has_boxes, has_box_valid, has_masks, num_points):
  logits_ref, onehot_ref, pred_box_ref, target_ref, x_ref, t_ref, out_ref, scratch = _split_refs(
      refs, has_boxes, has_masks)

  def write():
    stats = tuple(acc[...] for acc in scratch) if has_masks else None
    out_ref[...] = _tile_cost(logits_ref[...], onehot_ref[...], pred_box_ref, target_ref, stats,
                              weights=weights, has_boxes=has_boxes, has_box_valid=has_box_valid,
                              num_points=num_points)

  if not has_masks:
    write()
    return
  k = pl.program_id(2)

  @pl.when(k == 0)
  def _():
    for acc in scratch:
      acc[...] = jnp.zeros(acc.shape, jnp.float32)

  for acc, part in zip(scratch, _point_stats(x_ref[...], t_ref[...])):
    acc[...] += part
  pl.when(k == pl.num_programs(2) - 1)(write)


def _prepare(pred_logits, pred_boxes, pred_mask_points, target_labels, target_boxes, target_mask_points,
             target_valid, target_box_valid, *, block_q, point_block):
  """Padded kernel inputs (see module docstring) and the padded sizes."""
  b, q, c = pred_logits.shape
  t = target_labels.shape[1]
  qp, cp, tp = _round_up(q, block_q), _pow2(c), _pow2(t)
  logits = _pad(pred_logits, (b, qp, cp), NEG_PAD)
  labels = jnp.clip(target_labels, 0, c - 1)
  onehot = (labels[:, None, :] == jnp.arange(cp)[None, :, None]).astype(jnp.float32)
  inputs = [logits, _pad(onehot, (b, cp, tp))]
  rows = jnp.zeros((b, TARGET_ROWS, t), jnp.float32)
  rows = rows.at[:, _VALID].set(target_valid.astype(jnp.float32))
  if pred_boxes is not None:
    inputs.append(_pad(pred_boxes, (b, qp, 4)))
    rows = rows.at[:, _BOX:_BOX + 4].set(jnp.swapaxes(target_boxes, 1, 2))
    if target_box_valid is not None:
      mean_l1, mean_giou = missing_box_means(pred_boxes, target_boxes, target_box_valid & target_valid)
      rows = rows.at[:, _HAS_BOX].set(target_box_valid.astype(jnp.float32))
      rows = rows.at[:, _MEAN_L1].set(mean_l1[:, None])
      rows = rows.at[:, _MEAN_GIOU].set(mean_giou[:, None])
  kp = 0
  if pred_mask_points is not None:
    rows = rows.at[:, _POINT_SUM].set(jnp.sum(target_mask_points, axis=-1))
    kp = _round_up(pred_mask_points.shape[-1], point_block)
  inputs.append(_pad(rows, (b, TARGET_ROWS, tp)))
  if pred_mask_points is not None:
    inputs += [_pad(pred_mask_points, (b, qp, kp), NEG_PAD), _pad(target_mask_points, (b, tp, kp))]
  return inputs, (b, qp, cp, tp, kp)


def matching_cost_pallas(pred_logits, pred_boxes, pred_mask_points, target_labels, target_boxes,
                         target_mask_points, target_valid, target_box_valid, weights: CostWeights, *,
                         backend: str = "triton", interpret: bool = False, block_q: int | None = None,
                         point_block: int | None = None):
  """Arguments as `matching_cost` (validated, float32); backend "triton" or "mosaic_tpu".

  Returns:
    (B, Q, T) float32.
  """
  if backend not in ("triton", "mosaic_tpu"):
    raise ValueError(f"backend must be 'triton' or 'mosaic_tpu', got {backend!r}")
  q, t = pred_logits.shape[1], target_labels.shape[1]
  if backend == "triton":
    block_q = block_q or 64
    point_block = point_block or 64
  else:
    block_q = block_q or (_round_up(q, 8) if q <= 512 else 256)
    point_block = point_block or 512
  has_boxes, has_masks = pred_boxes is not None, pred_mask_points is not None
  inputs, (b, qp, cp, tp, kp) = _prepare(
      pred_logits, pred_boxes, pred_mask_points, target_labels, target_boxes, target_mask_points,
      target_valid, target_box_valid, block_q=block_q, point_block=point_block)
  flags = dict(weights=weights, has_boxes=has_boxes, has_box_valid=target_box_valid is not None,
               has_masks=has_masks, num_points=pred_mask_points.shape[-1] if has_masks else 0)
  out_shape = jax.ShapeDtypeStruct((b, qp, tp), jnp.float32)
  if backend == "triton":
    spec = lambda rows, cols, per_query: pl.BlockSpec(
        (None, rows, cols), (lambda i, j: (i, j, 0)) if per_query else (lambda i, j: (i, 0, 0)))
    in_specs = [spec(block_q, cp, True), spec(cp, tp, False)]
    in_specs += [spec(block_q, 4, True)] if has_boxes else []
    in_specs += [spec(TARGET_ROWS, tp, False)]
    in_specs += [spec(block_q, kp, True), spec(tp, kp, False)] if has_masks else []
    out = pl.pallas_call(
        functools.partial(_triton_kernel, point_block=point_block, **flags),
        out_shape=out_shape, grid=(b, qp // block_q), in_specs=in_specs,
        out_specs=spec(block_q, tp, True),
        compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret, name="matching_cost")(*inputs)
  else:
    num_k = max(kp // point_block, 1)
    spec = lambda rows, cols, index: pl.BlockSpec((None, rows, cols), index)
    per_query = lambda i, j, k: (i, j, 0)
    per_image = lambda i, j, k: (i, 0, 0)
    in_specs = [spec(block_q, cp, per_query), spec(cp, tp, per_image)]
    in_specs += [spec(block_q, 4, per_query)] if has_boxes else []
    in_specs += [spec(TARGET_ROWS, tp, per_image)]
    if has_masks:
      in_specs += [spec(block_q, point_block, lambda i, j, k: (i, j, k)),
                   spec(tp, point_block, lambda i, j, k: (i, 0, k))]
    scratch = ([pltpu.VMEM((block_q, 1), jnp.float32), pltpu.VMEM((block_q, tp), jnp.float32)] * 2
               if has_masks else [])
    out = pl.pallas_call(
        functools.partial(_tpu_kernel, **flags),
        out_shape=out_shape, grid=(b, qp // block_q, num_k), in_specs=in_specs,
        out_specs=spec(block_q, tp, per_query), scratch_shapes=scratch,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret, name="matching_cost_tpu")(*inputs)
  return out[:, :q, :t]
