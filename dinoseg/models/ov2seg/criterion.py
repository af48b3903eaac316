"""OV2Seg's training objective: the reference's `ov2seg/modeling/criterion.py` + `matcher.py` (haochenheheda/LVVIS
cc3cdf4; shared/reference/ov2seg.md sections 2 and 11), on static shapes.

Per prediction p (P = 7: the learnable queries' prediction, then the 6 layers; deep supervision on all):

- Matching (Hungarian per image, `dinoseg.matching` on device): cost (B, Q, T) =
  class_weight * -sqrt(sigmoid(logit[q, label_t]) * softmax(objectness[q])[object]) + mask_weight * mean point BCE
  + dice_weight * point dice, the mask terms on `num_points` uniform points shared by every query and target of
  an image (Mask DINO's `mask_costs`). Padded targets (`valid` False) are never matched.
- `loss_ce`, the federated sigmoid classification loss: target_classes (B, Q) = the matched target's label or
  the background C. The category set S = the labels of the matched targets, plus the background when some
  query is unmatched (so S counts it, as the reference does), plus `num_sample_cats - |S|` categories drawn
  without replacement with probability ∝ `class_weights` (LVIS image_count ** 0.5, rare categories 0;
  `federated_category_weights`) among those not yet in S; the background column never takes part. loss_ce =
  federated_scale (1.7) * sum over matched queries and categories c in S of BCE(logit[b, q, c], onehot) / (B * Q).
  The draw is a Gumbel top-k (equal in distribution to torch.multinomial without replacement) with a static
  count of candidates; the number of drawn categories is an on-device value.
- `loss_object_ce`: 2-way softmax cross-entropy over all queries, target 0 (object) for matched queries and 1
  (no object) otherwise, class weights (1, no_object_weight = 0.4), weighted mean (PyTorch's F.cross_entropy).
- `loss_mask` / `loss_dice`: point BCE / dice of the matched masks on importance-sampled points (oversample 3,
  importance 0.75; Mask DINO's mask-loss code, padded rows skipped on the CPU), / num_masks = max(valid targets
  in the global batch, 1) (the reference's all-reduced average over devices, which gives the same gradients).

Names: final `loss_ce`, `loss_object_ce`, `loss_mask`, `loss_dice`; prediction i < P - 1: `<name>_{i}` (the
reference's `aux_outputs[i]`); the weights (2, 2, 5, 5) are multiplied in, as `OV2Seg.forward` returns them.

Random draws (`draws(name, kind, shape)`, dinoseg.models.maskdino.criterion.random_draws) for prediction p,
named "pred{p}": "match" (B, num_points, 2) the matcher's points; "cand" / "rand" (B, T, S, 2) / (B, T, R, 2)
the mask loss's candidate and random points of target slot t; "federated" (C,) the uniforms of the Gumbel
draw. The parity test feeds the reference's points through `draws` and its drawn categories through
`sampled_categories` (P, C) bool.

One difference by design: the reference draws the federated categories and averages the objectness CE per
device (its batch is per-GPU); here the batch is the global one, so the draw sees every image's classes and
the objectness mean runs over the global batch (equal on one device).
"""
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dinoseg.models.maskdino import criterion as md
from dinoseg.models.maskdino import defaults as md_defaults
from dinoseg.ops import point_sample, sigmoid_bce_with_logits, softmax_cross_entropy
from dinoseg.structures import PaddedInstances

LARGE_COST = md.LARGE_COST
LOSS_NAMES = ("loss_ce", "loss_object_ce", "loss_mask", "loss_dice")


def federated_category_weights(image_counts, frequencies=None, power: float = 0.5) -> np.ndarray:
  """(C,) float32 sampling weights of the federated loss: image_count ** power, 0 for rare ('r') categories
  (the reference's `load_class_freq(cat_info, 0.5)`).

  Args:
    image_counts: (C,) images per category in the training split, in contiguous-label order.
    frequencies: (C,) LVIS frequency letters ('r', 'c', 'f') or None (no category is rare).
  """
  counts = np.asarray(image_counts, np.float64)
  if counts.ndim != 1 or np.any(counts < 0):
    raise ValueError(f"image_counts must be a 1-D array of non-negative counts, got shape {counts.shape}")
  if frequencies is not None:
    rare = np.asarray([str(f) == "r" for f in frequencies], bool)
    if rare.shape != counts.shape:
      raise ValueError(f"frequencies has {rare.shape[0]} entries, image_counts {counts.shape[0]}")
    counts = np.where(rare, 0.0, counts)
  return (counts ** power).astype(np.float32)


def draw_federated_categories(uniform: jax.Array, present: jax.Array, num_extra: jax.Array,
                              class_weights: jax.Array) -> jax.Array:
  """Categories drawn without replacement, probability ∝ class_weights, among those not `present`.

  Gumbel top-k: key_c = log(w_c) - log(-log(u_c)); the `num_extra` largest keys of the eligible categories
  (weight > 0, not present). Equal in distribution to `torch.multinomial(w * ~present, num_extra, False)`.

  Args:
    uniform: (C,) uniforms in [0, 1).
    present: (C,) bool, categories already in the set (never drawn).
    num_extra: int scalar (traced), how many to draw (fewer when fewer categories are eligible).
    class_weights: (C,) non-negative weights.
  Returns:
    (C,) bool, the drawn categories.
  """
  eligible = (class_weights > 0) & ~present
  u = jnp.clip(uniform.astype(jnp.float32), 1e-12, 1.0 - 1e-7)
  keys = jnp.where(eligible, jnp.log(jnp.where(eligible, class_weights, 1.0)) - jnp.log(-jnp.log(u)), -jnp.inf)
  order = jnp.argsort(-keys)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
  return eligible & (rank < num_extra)


class OV2SegCriterion:
  """The weighted loss dictionary of one batch (module docstring); a pure function of arrays (jit it).

  Args:
    num_classes: C (the training vocabulary's size; logits have C + 1 columns, the last the background).
    loss: the `loss` config (dinoseg.models.ov2seg.defaults.loss_config()).
    class_weights: (C,) federated sampling weights (`federated_category_weights`); None: all 1.
  """

  def __init__(self, num_classes: int, loss: ml_collections.ConfigDict, class_weights=None):
    if num_classes <= 0:
      raise ValueError(f"num_classes must be positive, got {num_classes}")
    self.num_classes = int(num_classes)
    self.cfg = loss
    weights = np.ones(num_classes, np.float32) if class_weights is None else np.asarray(class_weights, np.float32)
    if weights.shape != (num_classes,):
      raise ValueError(f"class_weights must have shape ({num_classes},), got {weights.shape}")
    self.class_weights = weights
    self.weights = {"loss_ce": float(loss.class_weight), "loss_object_ce": float(loss.object_weight),
                    "loss_mask": float(loss.mask_weight), "loss_dice": float(loss.dice_weight)}
    # Mask DINO's criterion supplies the point-sampled mask losses (importance sampling, padded rows skipped).
    md_cfg = md_defaults.loss_config()
    for key in ("num_points", "oversample_ratio", "importance_sample_ratio", "padded_mask_rows", "mask_row_chunk",
                "matcher"):
      if key in loss:
        md_cfg[key] = loss[key]
    self.masks = md.SetCriterion(num_classes, md_cfg, dn="no")
    self.matcher = str(loss.get("matcher", "hungarian_device"))

  # -- matching
  def matching_cost(self, logits, objectness, masks, targets: PaddedInstances, points) -> jax.Array:
    """(B, Q, T) cost of one prediction: logits (B, Q, C + 1), objectness (B, Q, 2), masks (B, Q, h, w),
    points (B, P, 2) uniform in [0, 1]; padded targets cost LARGE_COST."""
    prob = jax.nn.sigmoid(logits[..., :self.num_classes].astype(jnp.float32))
    p_object = jax.nn.softmax(objectness.astype(jnp.float32), axis=-1)[..., :1]
    score = jnp.sqrt(prob * p_object)  # (B, Q, C)
    b, q = score.shape[:2]
    labels = jnp.clip(targets.labels.astype(jnp.int32), 0, self.num_classes - 1)
    cost_class = -jnp.take_along_axis(score, jnp.broadcast_to(labels[:, None, :], (b, q, labels.shape[1])), axis=2)
    pred_pts = point_sample(masks.transpose(0, 2, 3, 1).astype(jnp.float32), points).transpose(0, 2, 1)
    tgt_pts = point_sample(targets.masks.astype(jnp.float32).transpose(0, 2, 3, 1), points).transpose(0, 2, 1)
    cost_mask, cost_dice = md.mask_costs(pred_pts, tgt_pts)
    cost = self.cfg.class_weight * cost_class + self.cfg.mask_weight * cost_mask + self.cfg.dice_weight * cost_dice
    return jnp.where(targets.valid[:, None, :], cost, LARGE_COST)

  def match(self, logits, objectness, masks, targets: PaddedInstances, points) -> jax.Array:
    """(M, B, T) int32 matched query of every target slot for M predictions ((M, B, ...) inputs, points
    (M, B, P, 2))."""
    m, b = logits.shape[:2]
    t = targets.labels.shape[1]
    costs = jax.vmap(self.matching_cost, in_axes=(0, 0, 0, None, 0))(logits, objectness, masks, targets, points)
    valid = jnp.broadcast_to(targets.valid[None], (m, b, t)).reshape(m * b, t)
    assign = md.matching_assign(self.matcher)
    idx = assign(jax.lax.stop_gradient(costs).reshape(m * b, *costs.shape[2:]), valid)
    return jax.lax.stop_gradient(idx).astype(jnp.int32).reshape(m, b, t)

  # -- classification
  def target_classes(self, query_idx, targets: PaddedInstances, num_queries: int) -> jax.Array:
    """(B, Q) int32: the label of the target matched to each query, C where none is."""
    b, t = query_idx.shape
    bidx = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
    out = jnp.full((b, num_queries), self.num_classes, jnp.int32)
    return out.at[bidx, jnp.where(targets.valid, query_idx, num_queries)].set(
        targets.labels.astype(jnp.int32), mode="drop")

  def federated_set(self, target_classes, uniform, sampled=None) -> jax.Array:
    """(C,) bool: the categories the class loss covers (module docstring). `sampled` (C,) bool replaces the
    draw (the reference's drawn categories, for parity); `uniform` (C,) feeds the draw otherwise."""
    c = self.num_classes
    flat = target_classes.reshape(-1)
    present = jnp.zeros(c + 1, bool).at[flat].set(True)
    fg = present[:c]
    if sampled is None:
      num_extra = int(self.cfg.federated_num_classes) - jnp.sum(present.astype(jnp.int32))
      sampled = draw_federated_categories(uniform, fg, num_extra, jnp.asarray(self.class_weights))
    return fg | sampled.astype(bool)

  def class_losses(self, logits, objectness, target_classes, category_set):
    """(loss_ce, loss_object_ce) unweighted for one prediction: logits (B, Q, C + 1), objectness (B, Q, 2),
    target_classes (B, Q), category_set (C,) bool."""
    b, q = target_classes.shape
    c = self.num_classes
    matched = target_classes < c
    onehot = jax.nn.one_hot(target_classes, c + 1, dtype=jnp.float32)[..., :c]
    bce = sigmoid_bce_with_logits(logits[..., :c].astype(jnp.float32), onehot)
    weight = category_set[None, None, :] & matched[:, :, None]
    loss_ce = float(self.cfg.federated_scale) * jnp.sum(jnp.where(weight, bce, 0.0)) / (b * q)
    object_targets = (~matched).astype(jnp.int32)  # 0 = object, 1 = no object
    class_weight = jnp.asarray([1.0, float(self.cfg.no_object_weight)], jnp.float32)
    loss_object = softmax_cross_entropy(objectness.astype(jnp.float32), object_targets, class_weight=class_weight)
    return loss_ce, loss_object

  # -- everything
  def __call__(self, outputs, targets: PaddedInstances, draws: md.Draws, *, sampled_categories=None,
               return_indices: bool = False):
    """The weighted loss dictionary.

    Args:
      outputs: OV2SegOutputs (or a mapping) with logits (P, B, Q, C + 1), objectness (P, B, Q, 2),
        masks (P, B, Q, h, w).
      targets: PaddedInstances: labels (B, T) contiguous in [0, C), valid (B, T), masks (B, T, H, W) on the
        padded canvas (any resolution: points are normalised coordinates).
      draws: random-draw provider (`dinoseg.models.maskdino.criterion.random_draws(key)`).
      sampled_categories: optional (P, C) bool, the federated categories drawn for each prediction (replaces
        the draw).
    Returns:
      {name: scalar} (and, with return_indices, (P, B, T) matched query per target slot).
    """
    logits, objectness, masks = outputs["logits"], outputs["objectness"], outputs["masks"]
    if targets.masks is None:
      raise ValueError("targets.masks is required by the mask losses")
    if logits.shape[-1] != self.num_classes + 1:
      raise ValueError(f"logits have {logits.shape[-1]} columns; the criterion expects C + 1 = "
                       f"{self.num_classes + 1}")
    last = logits.shape[0] - 1
    ks = list(range(last + 1)) if self.cfg.deep_supervision else [last]
    sel = np.asarray(ks)
    logits, objectness, masks = logits[sel], objectness[sel], masks[sel]
    names = [f"pred{k}" for k in ks]
    m, b, q = logits.shape[:3]
    t = targets.labels.shape[1]
    points = jnp.stack([draws(nm, "match", (b, int(self.cfg.num_points), 2)) for nm in names])
    idx = self.match(logits, objectness, masks, targets, points)
    tc = jax.vmap(lambda i: self.target_classes(i, targets, q))(idx)
    if sampled_categories is None:
      uniform = jnp.stack([draws(nm, "federated", (self.num_classes,)) for nm in names])
      sets = jax.vmap(lambda c_, u: self.federated_set(c_, u))(tc, uniform)
    else:
      sampled = jnp.asarray(sampled_categories, bool)[sel]
      sets = jax.vmap(lambda c_, s: self.federated_set(c_, None, s))(tc, sampled)
    loss_ce, loss_object = jax.vmap(self.class_losses)(logits, objectness, tc, sets)
    normalizer = jnp.maximum(jnp.sum(targets.valid.astype(jnp.float32)), 1.0)
    cand, rand = self.masks._point_draws(names, draws, b, t)
    target = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
    loss_mask, loss_dice = self.masks._mask_losses(masks, idx, target, targets.valid, targets.masks,
                                                   1.0 / normalizer, cand, rand)
    values = {"loss_ce": loss_ce, "loss_object_ce": loss_object, "loss_mask": loss_mask, "loss_dice": loss_dice}
    losses = {}
    for i, k in enumerate(ks):
      suffix = "" if k == last else f"_{k}"
      for name, value in values.items():
        losses[name + suffix] = value[i] * self.weights[name]
    return (losses, idx) if return_indices else losses


def total_loss(losses: Mapping[str, Any]) -> jax.Array:
  return sum(losses.values())


__all__ = ["OV2SegCriterion", "federated_category_weights", "draw_federated_categories", "total_loss", "LOSS_NAMES",
           "LARGE_COST"]
