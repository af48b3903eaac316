"""DETR-family losses with validity masks for padded targets.

Every loss takes `valid`, a boolean mask over its leading (instance or query) axes; rows
with valid=False contribute nothing. Normalizers (`num_boxes`, `num_masks`) are passed in,
usually `instance_normalizer(targets.valid)`.
"""
import jax
import jax.numpy as jnp

from dinoseg.ops._checks import check_last_dim, check_same_shape
from dinoseg.ops.boxes import box_cxcywh_to_xyxy, elementwise_generalized_box_iou


def instance_normalizer(valid: jax.Array) -> jax.Array:
  """max(number of valid instances, 1) as float32: the `num_boxes` of DETR criteria.

  Under SPMD the sum runs over the global batch, which equals the reference's
  all-reduced count averaged over workers followed by gradient averaging.
  """
  return jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)


def _apply_valid(loss: jax.Array, valid: jax.Array | None) -> jax.Array:
  """loss (V..., rest...) with rows where valid (V...) is False set to 0."""
  if valid is None:
    return loss
  if valid.shape != loss.shape[:valid.ndim]:
    raise ValueError(f"valid must have shape {loss.shape[:valid.ndim]} (leading axes of the loss), "
                     f"got {valid.shape}")
  valid = valid.reshape(valid.shape + (1,) * (loss.ndim - valid.ndim))
  return jnp.where(valid, loss, 0.0)


def sigmoid_bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Elementwise binary cross-entropy on logits, PyTorch's stable formula."""
  return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, *, num_boxes, alpha: float = 0.25,
                       gamma: float = 2.0, valid: jax.Array | None = None) -> jax.Array:
  """Sigmoid focal loss (Lin et al.) summed over every element, divided by `num_boxes`.

  Args:
    logits, targets: (..., C), targets one-hot (or soft) in [0, 1].
    num_boxes: normalizer.
    alpha: weight of positives; a negative value disables alpha weighting.
    valid: optional mask over leading axes of `logits`.
  Returns:
    scalar. Equals DETR's `sigmoid_focal_loss(...) * num_queries`, i.e.
    `loss.mean(1).sum() / num_boxes * Q`, for (B, Q, C) inputs.
  """
  check_same_shape("logits", logits, "targets", targets)
  prob = jax.nn.sigmoid(logits)
  ce = sigmoid_bce_with_logits(logits, targets)
  p_t = prob * targets + (1 - prob) * (1 - targets)
  loss = ce * (1 - p_t) ** gamma
  if alpha >= 0:
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
  return jnp.sum(_apply_valid(loss, valid)) / num_boxes


def dice_per_mask(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Dice loss with +1 smoothing of each mask: logits (N, ...) vs binary targets (N, ...) -> (N,)."""
  check_same_shape("logits", logits, "targets", targets)
  prob = jax.nn.sigmoid(logits).reshape(logits.shape[0], -1)
  targets = targets.reshape(targets.shape[0], -1)
  numerator = 2 * jnp.sum(prob * targets, axis=-1)
  denominator = jnp.sum(prob, axis=-1) + jnp.sum(targets, axis=-1)
  return 1 - (numerator + 1) / (denominator + 1)


def dice_loss(logits: jax.Array, targets: jax.Array, *, num_masks, valid: jax.Array | None = None) -> jax.Array:
  """Dice loss with +1 smoothing on mask logits (N, P) vs binary targets (N, P), / num_masks."""
  return jnp.sum(_apply_valid(dice_per_mask(logits, targets), valid)) / num_masks


def sigmoid_ce_per_mask(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Binary cross-entropy of each mask, mean over its points: logits (N, ...) vs targets -> (N,)."""
  check_same_shape("logits", logits, "targets", targets)
  return sigmoid_bce_with_logits(logits, targets).reshape(logits.shape[0], -1).mean(axis=-1)


def sigmoid_ce_loss(logits: jax.Array, targets: jax.Array, *, num_masks,
                    valid: jax.Array | None = None) -> jax.Array:
  """Binary cross-entropy on mask logits (N, P): mean over points, sum over masks, / num_masks."""
  return jnp.sum(_apply_valid(sigmoid_ce_per_mask(logits, targets), valid)) / num_masks


def box_l1_loss(pred_boxes: jax.Array, target_boxes: jax.Array, *, num_boxes,
                valid: jax.Array | None = None) -> jax.Array:
  """L1 between matched boxes (..., 4) (any one format), summed, / num_boxes."""
  check_same_shape("pred_boxes", pred_boxes, "target_boxes", target_boxes)
  check_last_dim("pred_boxes", pred_boxes, 4)
  return jnp.sum(_apply_valid(jnp.abs(pred_boxes - target_boxes), valid)) / num_boxes


def giou_loss(pred_boxes: jax.Array, target_boxes: jax.Array, *, num_boxes,
              valid: jax.Array | None = None) -> jax.Array:
  """sum(1 - GIoU) over matched cxcywh boxes (..., 4), / num_boxes."""
  check_same_shape("pred_boxes", pred_boxes, "target_boxes", target_boxes)
  check_last_dim("pred_boxes", pred_boxes, 4)
  giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes))
  return jnp.sum(_apply_valid(1 - giou, valid)) / num_boxes


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *, class_weight: jax.Array | None = None,
                          valid: jax.Array | None = None) -> jax.Array:
  """PyTorch `F.cross_entropy(logits, labels, weight)` with reduction "mean".

  Args:
    logits: (..., K); labels: (...) int in [0, K).
    class_weight: optional (K,) weights; the mean is weighted by weight[label].
  Returns:
    scalar: sum(w[y] * ce) / sum(w[y]) over valid rows.
  """
  if labels.shape != logits.shape[:-1]:
    raise ValueError(f"labels must have shape {logits.shape[:-1]}, got {labels.shape}")
  logp = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  w = jnp.ones_like(ce) if class_weight is None else jnp.asarray(class_weight, ce.dtype)[labels]
  if valid is not None:
    w = _apply_valid(w, valid)
  return jnp.sum(w * ce) / jnp.sum(w)


__all__ = ["instance_normalizer", "sigmoid_bce_with_logits", "sigmoid_focal_loss", "dice_loss",
           "sigmoid_ce_loss", "dice_per_mask", "sigmoid_ce_per_mask", "box_l1_loss", "giou_loss", "softmax_cross_entropy"]
