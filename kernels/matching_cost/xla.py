"""The matching cost in plain XLA (the twin of the Pallas kernels, and the CPU default).

The mask terms dominate (B * Q * K logits; 60 M at Mask DINO's 16 x 300 x 12544): two (B, Q, K) x
(B, T, K) contractions plus a sigmoid and a softplus per logit. For the CPU (issue 19) the sigmoid is
written as (1 + tanh(x / 2)) / 2, which XLA computes inside the fusion of its dot (written as
1 / (1 + exp(-x)) or lax.logistic next to the grouped softplus, XLA 0.10 materialized a full-size
broadcast of the constant 1: 240 MB per call), and the softplus row sums take one exp per logit and
one log per SOFTPLUS_GROUP logits (`softplus_row_sums`). The two contractions (2 x 12 GFLOP at
those sizes) are most of the remaining time; docs/benchmarks.md has the measurements.
"""
import jax
import jax.numpy as jnp

from dinoseg.kernels.matching_cost.formulas import (HIGHEST, CostWeights, box_costs, class_cost_table,
                                                    finalize, mask_costs)

# Logits per log in softplus_row_sums: a product of this many factors in (1, 2] stays below 2^16.
SOFTPLUS_GROUP = 16


def _columns(boxes):
  return tuple(boxes[..., i, None] for i in range(4))  # (B, Q, 1) each


def _rows(boxes):
  return tuple(boxes[..., None, :, i] for i in range(4))  # (B, 1, T) each


def missing_box_means(pred_boxes, target_boxes, box_mask):
  """Per-image means of the L1 and -GIoU costs over all queries and the targets in `box_mask`.

  The reference's panoptic matcher gives targets without a box (stuff) these means as box costs
  (0 when the image has no target with a box).

  Args:
    pred_boxes: (B, Q, 4); target_boxes: (B, T, 4); box_mask: (B, T) bool.
  Returns:
    (mean_l1, mean_giou), each (B,) float32.
  """
  l1, giou = box_costs(_columns(pred_boxes), _rows(target_boxes))
  mask = box_mask[:, None, :]
  count = jnp.sum(mask, axis=(1, 2)) * pred_boxes.shape[1]
  mean = lambda x: jnp.where(count > 0, jnp.sum(jnp.where(mask, x, 0.0), axis=(1, 2))
                             / jnp.maximum(count, 1), 0.0)
  return mean(l1), mean(giou)


def sigmoid_via_tanh(x):
  """sigmoid(x) = (1 + tanh(x / 2)) / 2, elementwise.

  Same values as 1 / (1 + exp(-x)) up to float rounding (absolute error a few 1e-8). On CPU, XLA
  fuses it into the dot that consumes it, where 1 / (1 + exp(-x)) and lax.logistic make XLA
  materialize a full-size broadcast of the constant 1.
  """
  return 0.5 * jnp.tanh(0.5 * x) + 0.5


def softplus_row_sums(x, group: int = SOFTPLUS_GROUP):
  """sum_k softplus(x[..., k]) with one exp per element and one log per `group` elements.

  softplus(x) = max(x, 0) + log(1 + exp(-|x|)), and the sum of logs of `group` consecutive factors
  1 + exp(-|x|), each in (1, 2], is the log of their product (<= 2^group, no overflow for group
  < 128; rounding of the same order as summing the separate logs). A remainder of K % group
  elements takes separate log1p's.

  Args:
    x: (..., K) float32 logits.
  Returns:
    (..., 1) float32.
  """
  k = x.shape[-1]
  grouped = k - k % group
  total = jnp.sum(jnp.maximum(x, 0.0), axis=-1, keepdims=True)
  if grouped:
    grouped_x = x[..., :grouped].reshape(*x.shape[:-1], grouped // group, group)
    products = jnp.prod(1.0 + jnp.exp(-jnp.abs(grouped_x)), axis=-1)
    total = total + jnp.sum(jnp.log(products), axis=-1, keepdims=True)
  if grouped < k:
    total = total + jnp.sum(jnp.log1p(jnp.exp(-jnp.abs(x[..., grouped:]))), axis=-1, keepdims=True)
  return total


def mask_point_costs(pred_mask_points, target_mask_points):
  """BCE and dice costs of `formulas.mask_costs` from point logits (B, Q, K) and targets (B, T, K).

  Returns:
    (bce, dice), each (B, Q, T) float32.
  """
  x, t = pred_mask_points, target_mask_points
  prob = sigmoid_via_tanh(x)
  dot = lambda a: jnp.einsum("bqk,btk->bqt", a, t, precision=HIGHEST)
  return mask_costs(softplus_row_sums(x), dot(x), jnp.sum(prob, -1, keepdims=True), dot(prob),
                    jnp.sum(t, -1)[:, None, :], x.shape[-1])


def matching_cost_xla(pred_logits, pred_boxes, pred_mask_points, target_labels, target_boxes,
                      target_mask_points, target_valid, target_box_valid, weights: CostWeights):
  """Arguments as `matching_cost` (already validated, float32); returns (B, Q, T) float32."""
  table = class_cost_table(pred_logits, weights)  # (B, Q, C)
  labels = jnp.clip(target_labels, 0, pred_logits.shape[-1] - 1)
  index = jnp.broadcast_to(labels[:, None, :], (*pred_logits.shape[:2], labels.shape[-1]))
  cost = weights.class_weight * jnp.take_along_axis(table, index, axis=-1)
  if pred_boxes is not None:
    l1, giou = box_costs(_columns(pred_boxes), _rows(target_boxes))
    if target_box_valid is not None:
      mean_l1, mean_giou = missing_box_means(pred_boxes, target_boxes, target_box_valid & target_valid)
      has_box = target_box_valid[:, None, :]
      l1 = jnp.where(has_box, l1, mean_l1[:, None, None])
      giou = jnp.where(has_box, giou, mean_giou[:, None, None])
    cost = cost + weights.bbox_weight * l1 + weights.giou_weight * giou
  if pred_mask_points is not None:
    bce, dice = mask_point_costs(pred_mask_points, target_mask_points)
    cost = cost + weights.mask_weight * bce + weights.dice_weight * dice
  return finalize(cost, target_valid[:, None, :], weights.pad_cost)
