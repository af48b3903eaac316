"""The matching cost in plain XLA (the twin of the Pallas kernels, and the CPU default)."""
import jax
import jax.numpy as jnp

from dinoseg.kernels.matching_cost.formulas import (HIGHEST, CostWeights, box_costs, class_cost_table,
                                                    finalize, mask_costs, sigmoid, softplus)


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
    x, t = pred_mask_points, target_mask_points
    prob = sigmoid(x)
    dot = lambda a, b: jnp.einsum("bqk,btk->bqt", a, b, precision=HIGHEST)
    bce, dice = mask_costs(jnp.sum(softplus(x), -1, keepdims=True), dot(x, t),
                           jnp.sum(prob, -1, keepdims=True), dot(prob, t),
                           jnp.sum(t, -1)[:, None, :], x.shape[-1])
    cost = cost + weights.mask_weight * bce + weights.dice_weight * dice
  return finalize(cost, target_valid[:, None, :], weights.pad_cost)
