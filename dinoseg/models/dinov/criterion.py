"""DINOv's losses (reference `dinov/modules/criterion_visual_openset.py`, `criterion_visual_refer_many2many.py`,
`matcher_many2many.py`; shared/reference/dinov.md sections 4, 5 and 12), built on Mask DINO's criterion
(dinoseg.models.maskdino.criterion: `SetCriterion` and its per-group loss policies).

Generic task (`visual_openset`, COCO): `generic_policies()` for the groups of a generic training output:
- "queries": `PromptHungarianLoss`: Mask DINO's Hungarian matching (focal class cost on the similarity
  logits, mask BCE / dice on shared uniform points, L1, GIoU) of the 300 generic queries against the targets,
  whose labels are the class-prompt slots (0..K-1); focal class loss over the K valid prompt columns (the
  columns of invalid prompt slots take no part), point-sampled mask BCE / dice, L1, GIoU; every layer.
  Names: final `loss_ce`, `loss_mask`, `loss_dice`, `loss_bbox`, `loss_giou`; prediction k < last `*_{k}`.
- "dn": `BoxMaskFixedAssignmentLoss`: class-agnostic DN gets the mask and box losses only (no class loss),
  from prediction 1 on (the reference's layer-0 rule without an interm output): `loss_{mask,dice,bbox,giou}_dn`
  and `*_dn_{k}`.
- "prompts": no loss.
The reference's names map as: loss_mask_cls_0 = loss_ce, loss_mask_bce_0 = loss_mask, loss_mask_dice_0 =
loss_dice, loss_bbox_0 / loss_giou_0 the same; its aux layer i gets the suffix _{i+1} where dinoseg writes _{i}
(dinoseg counts predictions from 0, the reference names the final one 0). 77 terms at 9 layers.

Referring task (`visual_refer`, SA-1B): `ManyToManyLoss`, the policy of the "clicks" group:
- Many-to-many matching (final prediction only; every layer reuses it): the T = 6 tokens of click c against
  the <= T "level targets" of c (the instances containing the click): cost = mask BCE + dice (shared uniform
  points) + L1 + GIoU, weighted by the cost weights; the reference's global assignment with 1e6 outside each
  click's block equals one T x T assignment per click (what is solved here).
- Per layer: mask BCE / dice of the matched pairs (importance-sampled points), L1 / GIoU, the IoU-score loss
  sum((iou_pred - (1 - dice))^2) (target not detached, as the reference), all divided by the global number of
  level targets (at least 1).
- Match-score loss per layer: NMS (`nms_keep`, a fixed-size on-device NMS at `nms_threshold` over the click
  tokens' boxes scored by their predicted IoU); each content prompt's target mask is matched to one surviving
  proposal (mask BCE + dice cost on fresh uniform points); then `match_softmax` True: softmax cross-entropy
  over the surviving proposals of the prompt's logits, mean over matched prompts of an image, mean over images
  (Swin-T); False: sigmoid focal loss over (matched prompts x surviving proposals) / the level-target count
  (Swin-L).
  Names: `loss_mask`, `loss_dice`, `loss_bbox`, `loss_giou`, `loss_iou`, `loss_match` (reference
  loss_mask_bce_0, loss_mask_dice_0, loss_bbox_0, loss_giou_0, iou_score_loss_0, loss_match_score_0), `*_{k}`.

Random draws (`draws(name, kind, shape)`, maskdino.criterion.random_draws): generic "pred{k}" / "dn{k}" as
Mask DINO's; referring: ("m2m", "match") (B, P, 2) the matcher's points, ("refer{k}", "cand") /
("refer{k}", "rand") (B, C * T, S, 2) / (B, C * T, R, 2) the mask-loss points of slot c * T + t,
("refer{k}", "content") (B, P, 2) the content matcher's points. The parity test feeds the reference's draws.
"""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from dinoseg.kernels import sharding
from dinoseg.models.dinov.decoder import CLICKS, DN, PROMPTS, QUERIES
from dinoseg.models.maskdino import criterion as md
from dinoseg.ops import box_cxcywh_to_xyxy, point_sample, sigmoid_focal_loss
from dinoseg.parallel import BATCH_AXES
from dinoseg.structures import PaddedInstances

MASKED_LOGIT = -1e4  # logit of a column that takes no part: sigmoid 0, focal and softmax terms exactly 0


@flax.struct.dataclass
class ReferTargets:
  """The referring task's targets beyond the image's instances (PaddedInstances with N rows).

  level_index: (B, C, T) int32 instance row of level target t of click c (the instances containing the click).
  level_valid: (B, C, T) bool.
  content_index: (B, K) int32 instance row whose full mask is content prompt k's target.
  content_valid: (B, K) bool.
  """
  level_index: Any
  level_valid: Any
  content_index: Any
  content_valid: Any


def _loss_config(loss: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(loss.to_dict() if hasattr(loss, "to_dict") else dict(loss))
  for key, value in (("box_loss", True), ("matcher", "hungarian_device"), ("no_object_weight", 0.1)):
    if key not in cfg:
      cfg[key] = value
  return cfg


def nms_keep(boxes: jax.Array, scores: jax.Array, valid: jax.Array, threshold: float) -> jax.Array:
  """Greedy NMS as torchvision.ops.nms, in a fixed-size loop: boxes (B, Q, 4) xyxy, scores (B, Q), valid (B, Q)
  -> keep (B, Q) bool. A box is dropped when its IoU with a kept higher-scoring box exceeds `threshold`."""
  b, q = scores.shape
  order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), axis=1, stable=True)
  sb = jnp.take_along_axis(boxes, order[..., None], axis=1)
  sv = jnp.take_along_axis(valid, order, axis=1)
  area = (sb[..., 2] - sb[..., 0]) * (sb[..., 3] - sb[..., 1])
  lt = jnp.maximum(sb[:, :, None, :2], sb[:, None, :, :2])
  rb = jnp.minimum(sb[:, :, None, 2:], sb[:, None, :, 2:])
  wh = jnp.clip(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area[:, :, None] + area[:, None, :] - inter
  over = inter > threshold * union  # IoU > threshold without dividing (union > 0 for real boxes)
  earlier = jnp.arange(q)[None, :] < jnp.arange(q)[:, None]  # [i, j]: j before i

  def body(i, keep):
    suppressed = jnp.any(keep & over[:, i, :] & earlier[i][None], axis=1)
    return keep.at[:, i].set(sv[:, i] & ~suppressed)

  keep_sorted = jax.lax.fori_loop(0, q, body, jnp.zeros((b, q), bool))
  return jnp.zeros((b, q), bool).at[jnp.arange(b)[:, None], order].set(keep_sorted)


def slot_mask_terms(criterion: md.SetCriterion, masks, query_idx, target, valid, tgt_masks, cand, rand):
  """Per-slot point-sampled mask BCE and dice of M predictions (Mask DINO's `_mask_losses` without the sum).

  Args:
    masks: (M, B, Q, h, w) mask logits; query_idx / target / valid: (B, N) the query, instance row and reality
      of each slot; tgt_masks (B, T, H, W); cand (M, B, N, S, 2), rand (M, B, N, R, 2).
  Returns:
    (bce (M, B, N), dice (M, B, N)); invalid slots hold zeros or meaningless values (mask them).
  """
  m, b, n = masks.shape[0], query_idx.shape[0], query_idx.shape[1]
  src = jnp.take_along_axis(masks, jnp.broadcast_to(query_idx[None], (m, b, n))[..., None, None], axis=2)
  per_slot = criterion._mask_slot_terms  # noqa: SLF001 (the shared per-slot body)
  mesh = sharding.resolve_mesh(None)
  axes = sharding.split_axes(mesh, BATCH_AXES, b) if mesh is not None else ()
  if axes:
    one, lead = P(sharding.spec_entry(axes)), P(None, sharding.spec_entry(axes))
    per_slot = sharding.shard_map(per_slot, mesh, (lead, one, one, one, lead, lead), (lead, lead))
  return per_slot(src, target, valid, tgt_masks, cand, rand)


def _take_rows(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x (B, N, ...) gathered at idx (B, ...) -> (B, ..., x.shape[2:])."""
  b = x.shape[0]
  flat = idx.reshape(b, -1)
  out = jnp.take_along_axis(x, flat.reshape(flat.shape + (1,) * (x.ndim - 2)), axis=1)
  return out.reshape(idx.shape + x.shape[2:])


def _sample_instance_masks(masks: jax.Array, points: jax.Array) -> jax.Array:
  """masks (B, N, H, W) (any dtype), points (B, P, 2) -> (B, N, P) bilinear samples."""
  return point_sample(masks.astype(jnp.float32).transpose(0, 2, 3, 1), points).transpose(0, 2, 1)


class PromptHungarianLoss(md.HungarianLoss):
  """Mask DINO's Hungarian policy on similarity logits (P, B, Q, K): the columns of invalid prompt slots
  (`outputs.groups["prompts"].valid`) take no part in the class cost or loss."""

  def __call__(self, criterion, group, outputs, targets, normalizer, draws):
    preds = outputs.groups[group]
    prompt_valid = outputs.groups[PROMPTS].valid
    logits = jnp.where(prompt_valid[None, :, None, :], preds.logits, MASKED_LOGIT)
    outputs = outputs.replace(groups={**outputs.groups, group: preds.replace(logits=logits)})
    return super().__call__(criterion, group, outputs, targets, normalizer, draws)


class BoxMaskFixedAssignmentLoss(md.FixedAssignmentLoss):
  """Mask DINO's fixed-assignment policy without the class loss (DINOv's class-agnostic DN)."""

  def __call__(self, criterion, group, outputs, targets, normalizer, draws):
    losses, indices = super().__call__(criterion, group, outputs, targets, normalizer, draws)
    return {k: v for k, v in losses.items() if not k.startswith("loss_ce")}, indices


class ManyToManyLoss:
  """Loss policy of the "clicks" group (module docstring); `targets` of the call are the image instances."""

  def __init__(self, refer: ReferTargets, iou: jax.Array, *, match_softmax: bool, nms_threshold: float):
    """refer: ReferTargets; iou: (P, B, C, T) predicted IoU of every click token (DINOvOutputs.iou)."""
    self.refer, self.iou = refer, iou
    self.match_softmax, self.nms_threshold = match_softmax, nms_threshold

  def assign(self, criterion: md.SetCriterion, boxes, masks, targets: PaddedInstances, valid, points):
    """Many-to-many matching of one prediction: boxes (B, C*T, 4), masks (B, C*T, h, w), valid (B, C, T),
    points (B, P, 2) -> (B, C, T) token matched to each level target."""
    rt = self.refer
    b, c, t = rt.level_index.shape
    npts = points.shape[1]
    pred = point_sample(masks.astype(jnp.float32).transpose(0, 2, 3, 1), points).transpose(0, 2, 1)
    tgt = _take_rows(_sample_instance_masks(targets.masks, points), rt.level_index)  # (B, C, T, P)
    bce, dice = md.mask_costs(pred.reshape(b * c, t, npts), tgt.reshape(b * c, t, npts))
    pb = boxes.astype(jnp.float32).reshape(b, c, t, 4)
    tb = _take_rows(targets.boxes.astype(jnp.float32), rt.level_index)  # (B, C, T, 4)
    l1 = jnp.sum(jnp.abs(pb[:, :, :, None] - tb[:, :, None]), -1).reshape(b * c, t, t)
    giou = md.generalized_box_iou_eps(pb, tb).reshape(b * c, t, t)
    w = criterion.cost_weights
    cost = w.mask_weight * bce + w.dice_weight * dice + w.bbox_weight * l1 - w.giou_weight * giou
    idx = criterion.assign(jax.lax.stop_gradient(cost), valid.reshape(b * c, t))
    return jax.lax.stop_gradient(idx).astype(jnp.int32).reshape(b, c, t)

  def match_score(self, criterion, boxes, scores, query_valid, masks, logits, content_masks, content_valid,
                  points, normalizer):
    """Match-score loss of one prediction (module docstring).

    boxes (B, Q, 4) cxcywh, scores (B, Q) predicted IoU, query_valid (B, Q), masks (B, Q, h, w),
    logits (B, Q, K), content_masks (B, K, H, W), content_valid (B, K), points (B, P, 2). Returns a scalar.
    """
    keep = nms_keep(jax.lax.stop_gradient(box_cxcywh_to_xyxy(boxes.astype(jnp.float32))),
                    jax.lax.stop_gradient(scores.astype(jnp.float32)), query_valid, self.nms_threshold)
    pred = point_sample(jax.lax.stop_gradient(masks).astype(jnp.float32).transpose(0, 2, 3, 1), points)
    bce, dice = md.mask_costs(pred.transpose(0, 2, 1), _sample_instance_masks(content_masks, points))
    w = criterion.cost_weights
    cost = jnp.where(keep[..., None], w.mask_weight * bce + w.dice_weight * dice, md.LARGE_COST)
    idx = jax.lax.stop_gradient(criterion.assign(cost, content_valid)).astype(jnp.int32)  # (B, K)
    matched = content_valid & jnp.take_along_axis(keep, idx, axis=1)
    lg = jnp.where(keep[:, None, :], logits.astype(jnp.float32).transpose(0, 2, 1), MASKED_LOGIT)  # (B, K, Q)
    if self.match_softmax:
      ce = jax.nn.logsumexp(lg, axis=-1) - jnp.take_along_axis(lg, idx[..., None], axis=-1)[..., 0]
      count = jnp.sum(matched, axis=1)
      per_image = jnp.sum(jnp.where(matched, ce, 0.0), axis=1) / jnp.maximum(count, 1)
      return jnp.sum(per_image) / jnp.maximum(jnp.sum(count > 0), 1)
    onehot = jax.nn.one_hot(idx, lg.shape[-1], dtype=jnp.float32)
    return sigmoid_focal_loss(lg, onehot, num_boxes=normalizer, alpha=criterion.cfg.focal_alpha, valid=matched)

  def __call__(self, criterion: md.SetCriterion, group, outputs, targets: PaddedInstances, normalizer, draws):
    del normalizer  # the referring task counts level targets
    preds = outputs.groups[group]
    rt = self.refer
    b, c, t = rt.level_index.shape
    n = c * t
    last = preds.logits.shape[0] - 1
    ks = list(range(last + 1)) if criterion.cfg.deep_supervision else [last]
    sel = np.asarray(ks)
    click_valid = preds.valid.reshape(b, c, t)[..., 0]
    level_valid = rt.level_valid & click_valid[..., None]
    num_levels = jnp.maximum(jnp.sum(level_valid.astype(jnp.float32)), 1.0)
    points = draws("m2m", "match", (b, criterion.cfg.num_points, 2))
    token = self.assign(criterion, preds.boxes[last], preds.masks[last], targets, level_valid, points)
    query_idx = (jnp.arange(c, dtype=jnp.int32)[None, :, None] * t + token).reshape(b, n)
    target = rt.level_index.reshape(b, n).astype(jnp.int32)
    valid = level_valid.reshape(b, n)
    names = [f"refer{k}" for k in ks]
    cand, rand = criterion._point_draws(names, draws, b, n)  # noqa: SLF001
    bce, dice = slot_mask_terms(criterion, preds.masks[sel], query_idx, target, valid, targets.masks, cand, rand)
    iou = self.iou[sel].reshape(len(ks), b, n)
    iou = jnp.take_along_axis(iou, jnp.broadcast_to(query_idx[None], iou.shape), axis=2)
    weight = jnp.where(valid, 1.0 / num_levels, 0.0)[None]
    tboxes = _take_rows(targets.boxes.astype(jnp.float32), target)
    l1, giou = jax.vmap(lambda bx: criterion._box_losses(bx, query_idx, tboxes, valid, 1.0 / num_levels))(  # noqa: SLF001
        preds.boxes[sel])
    content_masks = _take_rows(targets.masks, rt.content_index)
    match = jnp.stack([
        self.match_score(criterion, preds.boxes[k], self.iou[k].reshape(b, n), preds.valid, preds.masks[k],
                         preds.logits[k], content_masks, rt.content_valid,
                         draws(f"refer{k}", "content", (b, criterion.cfg.num_points, 2)), num_levels) for k in ks])
    values = {"loss_mask": jnp.sum(bce * weight, axis=(1, 2)), "loss_dice": jnp.sum(dice * weight, axis=(1, 2)),
              "loss_bbox": l1, "loss_giou": giou,
              "loss_iou": jnp.sum((iou.astype(jnp.float32) - (1.0 - dice)) ** 2 * weight, axis=(1, 2)),
              "loss_match": match}
    suffixes = ["" if k == last else f"_{k}" for k in ks]
    return criterion.weighted(values, suffixes), {"m2m": query_idx}


class OneToOneLoss(ManyToManyLoss):
  """Loss policy of the "clicks" group for COCO fed to the referring task (`prompts.coco_track`; the reference's
  `SetCriterionReferOne`, `criterion_visual_refer_one2one.py`); `targets` of the call are the image instances.

  Every click has one target, the instance it was drawn in; all T tokens of the click are compared with it. Per
  prediction: point-sampled mask BCE and dice of every (click, token) pair (importance-sampled points of each
  pair), the token with the smallest BCE + dice is the click's output (first on ties, as torch's `min`); its
  BCE, dice, L1, GIoU and IoU-score loss (predicted IoU vs 1 - its dice, target not detached) over the global
  number of valid clicks (at least 1); the match-score loss as `ManyToManyLoss.match_score` (sigmoid variant
  normalised by the click count). Names as the many-to-many policy's. Draw names "track{k}" ("cand", "rand"
  (B, C * T, ., 2) the points of slot c * T + t; "content" (B, P, 2) the content matcher's points).
  """

  def __init__(self, click_index, content_index, content_valid, iou, *, match_softmax: bool, nms_threshold: float):
    """click_index (B, C) int instance row of each click; content_index / content_valid (B, K): the content
    prompts' instance rows; iou (P, B, C, T) predicted IoU of every click token (DINOvOutputs.iou)."""
    self.click_index, self.content_index, self.content_valid = click_index, content_index, content_valid
    self.iou = iou
    self.match_softmax, self.nms_threshold = match_softmax, nms_threshold

  def __call__(self, criterion: md.SetCriterion, group, outputs, targets: PaddedInstances, normalizer, draws):
    del normalizer  # counts clicks
    preds = outputs.groups[group]
    b, c = self.click_index.shape
    n = preds.valid.shape[1]
    t = n // c
    last = preds.logits.shape[0] - 1
    ks = list(range(last + 1)) if criterion.cfg.deep_supervision else [last]
    sel = np.asarray(ks)
    m = len(ks)
    click_valid = preds.valid.reshape(b, c, t)[..., 0]
    num_clicks = jnp.maximum(jnp.sum(click_valid.astype(jnp.float32)), 1.0)
    query_idx = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None], (b, n))
    target = jnp.repeat(self.click_index.astype(jnp.int32), t, axis=1)
    valid = jnp.repeat(click_valid, t, axis=1)
    cand, rand = criterion._point_draws([f"track{k}" for k in ks], draws, b, n)  # noqa: SLF001
    bce, dice = slot_mask_terms(criterion, preds.masks[sel], query_idx, target, valid, targets.masks, cand, rand)
    bce, dice = bce.reshape(m, b, c, t), dice.reshape(m, b, c, t)
    token = jax.lax.stop_gradient(jnp.argmin(bce + dice, axis=-1)).astype(jnp.int32)  # (M, B, C)

    def chosen(x):
      return jnp.take_along_axis(x, token[..., None], axis=-1)[..., 0]

    weight = jnp.where(click_valid, 1.0 / num_clicks, 0.0)[None]
    bce_c, dice_c = chosen(bce), chosen(dice)
    iou_c = chosen(self.iou[sel].astype(jnp.float32).reshape(m, b, c, t))
    chosen_query = jnp.arange(c, dtype=jnp.int32)[None, None] * t + token  # (M, B, C)
    tboxes = _take_rows(targets.boxes.astype(jnp.float32), self.click_index.astype(jnp.int32))
    box_losses = criterion._box_losses  # noqa: SLF001 (the shared box-loss body)
    l1, giou = jax.vmap(lambda bx, qi: box_losses(bx, qi, tboxes, click_valid, 1.0 / num_clicks))(
        preds.boxes[sel], chosen_query)
    content_masks = _take_rows(targets.masks, self.content_index)
    match = jnp.stack([
        self.match_score(criterion, preds.boxes[k], self.iou[k].reshape(b, n), preds.valid, preds.masks[k],
                         preds.logits[k], content_masks, self.content_valid,
                         draws(f"track{k}", "content", (b, criterion.cfg.num_points, 2)), num_clicks) for k in ks])
    values = {"loss_mask": jnp.sum(bce_c * weight, axis=(1, 2)), "loss_dice": jnp.sum(dice_c * weight, axis=(1, 2)),
              "loss_bbox": l1, "loss_giou": giou,
              "loss_iou": jnp.sum((iou_c - (1.0 - dice_c)) ** 2 * weight, axis=(1, 2)),
              "loss_match": match}
    suffixes = ["" if k == last else f"_{k}" for k in ks]
    return criterion.weighted(values, suffixes), {"one2one": chosen_query[-1]}


class FixedNormalizer:
  """A loss policy run with a given normalizer (a () array) in place of the criterion's target count."""

  def __init__(self, policy, normalizer):
    self.policy, self.normalizer = policy, normalizer

  def __call__(self, criterion, group, outputs, targets, normalizer, draws):
    del normalizer
    return self.policy(criterion, group, outputs, targets, jnp.asarray(self.normalizer, jnp.float32), draws)


class DINOvCriterion:
  """DINOv's two criteria on one Mask DINO `SetCriterion` (its matching, point sampling and loss bodies).

  Args:
    loss: the `loss` config (configs/dinov: weights, cost weights, point sampling, deep supervision).
    prompts: the `prompts` config (`match_softmax`, `nms_threshold`).
    dn: "seg" or "no" (generic task).
  """

  def __init__(self, loss: ml_collections.ConfigDict, prompts: ml_collections.ConfigDict, *, dn: str = "seg"):
    self.base = md.SetCriterion(1, _loss_config(loss), dn=dn)
    self.base.weights.update(loss_iou=float(loss.iou_weight), loss_match=float(loss.match_class_weight))
    self.dn = dn
    self.match_softmax = bool(prompts.match_softmax)
    self.nms_threshold = float(prompts.nms_threshold)

  def generic(self, outputs, targets: PaddedInstances, draws: md.Draws, return_indices: bool = False, *,
              normalizer=None, image_active=None):
    """Generic-task losses (weighted dict). targets: labels (B, T) = class-prompt slot of each instance,
    boxes (B, T, 4) cxcywh, masks (B, T, H, W), valid (B, T); outputs: a generic training DINOvOutputs.

    normalizer: () the divisor of every term (None: the number of valid targets, at least 1);
    image_active: (B,) bool, None for all: an inactive image's prompt columns take no part in the class loss
      (its focal terms are exactly 0), so with its targets invalid it adds nothing to any loss (the reference's
      `fake` targets, sampling.generic_prompts).
    """
    if image_active is not None:
      prompts = outputs.groups[PROMPTS]
      active = jnp.asarray(image_active).astype(bool)[:, None]
      outputs = outputs.replace(groups={**outputs.groups, PROMPTS: prompts.replace(valid=prompts.valid & active)})
    policies = {QUERIES: PromptHungarianLoss(interm=False), PROMPTS: None}
    if DN in outputs.groups:
      policies[DN] = BoxMaskFixedAssignmentLoss(first_layer=1)
    if normalizer is not None:
      policies = {name: None if policy is None else FixedNormalizer(policy, normalizer)
                  for name, policy in policies.items()}
    return self.base(outputs, targets, draws, return_indices=return_indices, policies=policies)

  def refer(self, outputs, instances: PaddedInstances, refer: ReferTargets, draws: md.Draws,
            return_indices: bool = False):
    """Referring-task losses (weighted dict). instances: the image's instances (masks (B, N, H, W), boxes
    (B, N, 4), valid (B, N); labels unused); refer: ReferTargets; outputs: a referring training DINOvOutputs."""
    policy = ManyToManyLoss(refer, outputs.iou, match_softmax=self.match_softmax, nms_threshold=self.nms_threshold)
    return self.base(outputs, instances, draws, return_indices=return_indices,
                     policies={CLICKS: policy, PROMPTS: None})

  def track(self, outputs, instances: PaddedInstances, click_index, content_index, content_valid, draws: md.Draws,
            return_indices: bool = False):
    """Losses (weighted dict) of COCO fed to the referring task (`prompts.coco_track`, the reference's
    `SetCriterionReferOne`): instances as `refer`; click_index (B, C) the instance of each click; content_index /
    content_valid (B, K); outputs: a referring training DINOvOutputs (its click validity marks the real clicks)."""
    policy = OneToOneLoss(click_index, content_index, content_valid, outputs.iou, match_softmax=self.match_softmax,
                          nms_threshold=self.nms_threshold)
    return self.base(outputs, instances, draws, return_indices=return_indices,
                     policies={CLICKS: policy, PROMPTS: None})


__all__ = ["DINOvCriterion", "ReferTargets", "ManyToManyLoss", "PromptHungarianLoss", "BoxMaskFixedAssignmentLoss",
           "OneToOneLoss", "FixedNormalizer", "nms_keep", "slot_mask_terms", "MASKED_LOGIT"]
