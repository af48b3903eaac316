"""Mask DINO's set criterion: Hungarian matching of every prediction, focal (or CE) class loss,
L1 + GIoU box losses, point-sampled mask BCE + dice, denoising losses (reference `criterion.py`,
`matcher.py`; docs/maskdino.md).

Loss policies. The decoder returns predictions per query group (dinoseg.models.query_groups); the
criterion applies one loss policy per group: `HungarianLoss` (Mask DINO's matching queries and the
two-stage encoder prediction), `FixedAssignmentLoss` (the denoising queries: the assignment comes
with the group). A policy is any callable `policy(criterion, group, outputs, targets, normalizer,
draws) -> (weighted losses, indices)`, so a system adds its own (e.g. DINOv's many-to-many
matching) without editing this file; it can reuse `matched_losses` / `assigned_losses` / `weighted`.

Static-shape conventions:
- Targets are `PaddedInstances` with T rows per image (`valid` marks real ones); masks live on the
  padded input canvas (any resolution: points are sampled in normalized coordinates).
- Matching returns, for every target slot (b, t), the matched query; padded targets carry a large
  finite cost, so the assignment of the real ones is the unpadded optimum. Queries a group marks
  invalid are never matched and take no part in the class loss.
- Denoising slots follow denoising.FixedAssignment (the reference's groups, computed on device).

Losses and names (weights multiplied in, as `MaskDINO.forward` returns them):
  final prediction: loss_ce, loss_mask, loss_dice, loss_bbox, loss_giou
  prediction i < last: *_{i}; two-stage encoder prediction: *_interm;
  denoising final / i: *_dn / *_dn_{i} (with two-stage from i = 0, else from i = 1, as the reference).
Normalizers: num_masks = max(number of valid targets in the global batch, 1); denoising terms use
num_masks * groups. Class loss: sigmoid focal (alpha 0.25, gamma 2) summed over queries and classes
/ num_masks, or with `semantic_ce_loss` softmax CE over C + 1 logits weighted by (1, ..., 1,
no_object_weight). Any number of classes works (no COCO-specific thing/stuff split).

Random draws: the matcher's uniform points (B, P, 2) per output, and the mask loss's oversampled
candidates (B, N, P * oversample, 2) and extra random points (B, N, P - P * importance, 2) per output
(N = T for matched outputs, the slot count for fixed assignments) come from
`draws(output_name, kind, shape)`; `random_draws(key)` gives jax.random ones. The parity test feeds
the reference's draws through the same hook. With factored mask logits the mask-loss points of each
row are drawn inside its chunk from a per-row key (`RandomDraws.row_keys`; providers without
`row_keys`, such as the parity fixtures, give the arrays up front).
"""
import zlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from dinoseg.kernels import sharding
from dinoseg.models.maskdino import denoising
from dinoseg.models.maskdino.decoder import MATCHING_GROUP, DecoderOutputs
from dinoseg.models.maskdino import mask_logits
from dinoseg.models.maskdino.mask_logits import FactoredMasks
from dinoseg.ops import (bilinear_gather, box_cxcywh_to_xyxy, box_l1_loss, importance_point_counts, largest_k_indices,
                         point_sample, sigmoid_focal_loss, softmax_cross_entropy)
from dinoseg.ops.losses import dice_per_mask, sigmoid_ce_per_mask
from dinoseg.parallel import BATCH_AXES
from dinoseg.structures import PaddedInstances

Draws = Callable[[str, str, tuple], jax.Array]
# assign(cost (B, Q, T), valid (B, T)) -> (B, T) int32 index of the query matched to each target.
AssignFn = Callable[[jax.Array, jax.Array], jax.Array]
LARGE_COST = 1e6


class RandomDraws:
  """Uniform [0, 1) draws keyed by (output name, kind), independent across names and kinds: `draws(name, kind,
  shape)`. `row_keys(name, kind, rows)` gives one key per row instead (uint32 key data, rows + (2,) for the default
  PRNG), for draws made where they are used (`row_points`): the factored mask losses draw each chunk's candidate
  points inside the chunk, so the (M, B, N, S, 2) candidates of every slot, padded ones included, never exist."""

  def __init__(self, key: jax.Array):
    self.key = key

  def _sub(self, name: str, kind: str) -> jax.Array:
    return jax.random.fold_in(self.key, zlib.crc32(f"{name}/{kind}".encode()) & 0x7FFFFFFF)

  def __call__(self, name: str, kind: str, shape: tuple) -> jax.Array:
    return jax.random.uniform(self._sub(name, kind), shape, jnp.float32)

  def row_keys(self, name: str, kind: str, rows: tuple) -> jax.Array:
    sub = self._sub(name, kind)
    count = int(np.prod(rows))
    data = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(sub, i)))(jnp.arange(count, dtype=jnp.uint32))
    return data.reshape(tuple(rows) + data.shape[1:])


def random_draws(key: jax.Array) -> RandomDraws:
  """jax.random draws for the criterion (`RandomDraws`)."""
  return RandomDraws(key)


def row_points(keys: jax.Array, shape: tuple) -> jax.Array:
  """Per-row uniform [0, 1) draws: keys (R, K) from `RandomDraws.row_keys` -> (R,) + shape float32."""
  return jax.vmap(lambda k: jax.random.uniform(jax.random.wrap_key_data(k), shape, jnp.float32))(keys)


MASK_POINTS = "mask_loss_points"  # checkpoint name of a mask row's points, target samples and logits


def _tall_targets(masks: jax.Array) -> jax.Array:
  """(B, T, H, W) masks -> (1, B * T * (H + 1) * W, 1): stacked with a zero row after each mask, so the
  bilinear taps of one mask never reach the next (`_sample_tall`). Binary masks stay one byte per pixel
  (the taps become float when weighted: the same samples as from float32 masks, a quarter of the memory)."""
  b, t, h, w = masks.shape
  dtype = jnp.uint8 if masks.dtype in (jnp.bool_, jnp.uint8) else jnp.float32
  return jnp.pad(masks.astype(dtype), ((0, 0), (0, 0), (0, 1), (0, 0))).reshape(1, b * t * (h + 1) * w, 1)


def _sample_tall(tall: jax.Array, hw: tuple[int, int], row: jax.Array, points: jax.Array) -> jax.Array:
  """Samples mask `row[r]` of a `_tall_targets` map at points[r]: row (R,), points (R, P, 2) in [0, 1]
  -> (R, P), equal to `sample_masks` on the gathered masks."""
  h, w = hw
  r, p = points.shape[:2]
  px = points[..., 0] * w - 0.5
  py = points[..., 1] * h - 0.5 + (row * (h + 1)).astype(jnp.float32)[:, None]
  n = tall.shape[1] // ((h + 1) * w)
  return bilinear_gather(tall, (n * (h + 1), w), px.reshape(1, r * p), py.reshape(1, r * p)).reshape(r, p)


def _map_valid_chunks(fn: Callable, valid: jax.Array, args: tuple, chunk: int, remat: bool = False):
  """fn(*args) for args with R leading rows, computed in chunks of `chunk` rows; a chunk without a
  valid row is skipped (`lax.cond`) and gives zeros. valid: (R,) bool. Returns fn's outputs, (R, ...).
  With `remat`, each chunk is recomputed in the backward pass (`jax.checkpoint` around the loop body, so
  only the chunk's inputs and the values fn names `MASK_POINTS` are kept; the arrays fn closes over stay loop
  constants, never per-chunk copies)."""
  r = valid.shape[0]
  pad = (-r) % chunk
  split = lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(  # noqa: E731
      (r + pad) // chunk, chunk, *x.shape[1:])
  chunks = tuple(split(a) for a in args)
  shapes = jax.eval_shape(fn, *(c[0] for c in chunks))

  def body(xs):
    v, parts = xs
    return jax.lax.cond(jnp.any(v), lambda p: fn(*p),
                        lambda p: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), parts)

  if remat:
    body = jax.checkpoint(body, policy=jax.checkpoint_policies.save_only_these_names(MASK_POINTS))
  out = jax.lax.map(body, (split(valid), chunks))
  return jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:])[:r], out)


# ----------------------------------------------------------------------------- costs and box ops

def _giou_parts(a, b):
  """Pairwise GIoU of xyxy boxes (..., N, 4) x (..., M, 4) with the reference's +1e-6 denominators."""
  area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
  area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
  rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
  wh = jnp.clip(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area_a[..., :, None] + area_b[..., None, :] - inter
  iou = inter / (union + 1e-6)
  lt = jnp.minimum(a[..., :, None, :2], b[..., None, :, :2])
  rb = jnp.maximum(a[..., :, None, 2:], b[..., None, :, 2:])
  wh = jnp.clip(rb - lt, 0.0)
  area = wh[..., 0] * wh[..., 1]
  return iou - (area - union) / (area + 1e-6)


def generalized_box_iou_eps(a: jax.Array, b: jax.Array) -> jax.Array:
  """Pairwise GIoU (..., N, M) of cxcywh boxes, as `maskdino/utils/box_ops.py` (eps 1e-6; never NaN)."""
  return _giou_parts(box_cxcywh_to_xyxy(a), box_cxcywh_to_xyxy(b))


def focal_class_cost(logits: jax.Array, labels: jax.Array, alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
  """(B, Q, C) logits, (B, T) labels -> (B, Q, T) focal matching cost (reference `HungarianMatcher`)."""
  prob = jax.nn.sigmoid(logits.astype(jnp.float32))
  neg = (1 - alpha) * (prob ** gamma) * (-jnp.log(1 - prob + 1e-8))
  pos = alpha * ((1 - prob) ** gamma) * (-jnp.log(prob + 1e-8))
  cost = pos - neg
  return jnp.take_along_axis(cost, jnp.broadcast_to(labels[:, None, :], (cost.shape[0], cost.shape[1], labels.shape[1])),
                             axis=2)


def mask_costs(pred_points: jax.Array, tgt_points: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mask BCE and dice costs (B, Q, T) from point logits (B, Q, P) and target point values (B, T, P)."""
  p = pred_points.shape[-1]
  pos = jnp.maximum(pred_points, 0) - pred_points + jnp.log1p(jnp.exp(-jnp.abs(pred_points)))  # BCE(x, 1)
  neg = jnp.maximum(pred_points, 0) + jnp.log1p(jnp.exp(-jnp.abs(pred_points)))  # BCE(x, 0)
  bce = (jnp.einsum("bqp,btp->bqt", pos, tgt_points) + jnp.einsum("bqp,btp->bqt", neg, 1 - tgt_points)) / p
  prob = jax.nn.sigmoid(pred_points)
  numerator = 2 * jnp.einsum("bqp,btp->bqt", prob, tgt_points)
  denominator = prob.sum(-1)[:, :, None] + tgt_points.sum(-1)[:, None, :]
  dice = 1 - (numerator + 1) / (denominator + 1)
  return bce, dice


def sample_masks(masks: jax.Array, points: jax.Array) -> jax.Array:
  """masks (N, H, W) (any dtype), points (N, P, 2) in [0, 1] -> (N, P) bilinear samples (grid_sample, zeros)."""
  return point_sample(masks.astype(jnp.float32)[..., None], points)[..., 0]


def matching_assign(matcher: str = "hungarian_device") -> AssignFn:
  """The assignment of dinoseg.matching (`matcher`: "hungarian_device" or "scipy_host")."""
  def assign(cost: jax.Array, valid: jax.Array) -> jax.Array:
    from dinoseg import matching  # noqa: PLC0415
    return matching.assign(cost, valid, matcher=matcher).pred_index
  return assign


# ----------------------------------------------------------------------------- the criterion

class SetCriterion:
  """Computes the weighted loss dictionary of one batch (a pure function of arrays; jit it).

  Args:
    num_classes: C.
    loss: the `loss` config (configs/maskdino; defaults.loss_config()).
    semantic_ce_loss: softmax CE class loss with a no-object logit (class logits have C + 1 columns).
    dn: "seg" or "no".
    assign: the assignment solver (default: dinoseg.matching with `loss.matcher`).
  """

  def __init__(self, num_classes: int, loss: ml_collections.ConfigDict, *, semantic_ce_loss: bool = False,
               dn: str = "seg", assign: AssignFn | None = None):
    if num_classes <= 0:
      raise ValueError(f"num_classes must be positive, got {num_classes}")
    self.num_classes = num_classes
    self.cfg = loss
    self.semantic_ce_loss = semantic_ce_loss
    self.dn = dn
    self.assign = assign or matching_assign(loss.get("matcher", "hungarian_device"))
    self.num_sampled, self.num_uncertain, self.num_random = importance_point_counts(
        loss.num_points, loss.oversample_ratio, loss.importance_sample_ratio)
    # The reference matcher always uses the sigmoid focal class cost (also with the CE loss).
    from dinoseg.kernels import CostWeights  # noqa: PLC0415
    self.cost_weights = CostWeights(class_weight=loss.cost_class_weight, bbox_weight=loss.cost_box_weight,
                                    giou_weight=loss.cost_giou_weight, mask_weight=loss.cost_mask_weight,
                                    dice_weight=loss.cost_dice_weight, class_cost="focal",
                                    focal_alpha=loss.focal_alpha, pad_cost=LARGE_COST)
    self.weights = {"loss_ce": loss.class_weight, "loss_mask": loss.mask_weight, "loss_dice": loss.dice_weight,
                    "loss_bbox": loss.box_weight, "loss_giou": loss.giou_weight}

  # -- matching
  def matching_cost(self, logits, boxes, masks, targets: PaddedInstances, points) -> jax.Array:
    """(B, Q, T) cost (dinoseg.kernels.matching_cost); padded targets get the kernel's pad cost.

    points (B, P, 2): uniform points shared by every prediction and target of an image (reference).
    """
    from dinoseg.kernels import matching_cost  # noqa: PLC0415
    if isinstance(masks, FactoredMasks):
      pred_pts = masks.at_shared_points(points)  # (B, P, Q)
    else:
      pred_pts = point_sample(masks.transpose(0, 2, 3, 1).astype(jnp.float32), points)  # (B, P, Q)
    tgt_pts = point_sample(targets.masks.astype(jnp.float32).transpose(0, 2, 3, 1), points)  # (B, P, T)
    return matching_cost(pred_logits=logits, target_labels=targets.labels, target_valid=targets.valid,
                         pred_boxes=boxes, target_boxes=targets.boxes,
                         pred_mask_points=pred_pts.transpose(0, 2, 1), target_mask_points=tgt_pts.transpose(0, 2, 1),
                         weights=self.cost_weights, impl=self.cfg.get("matching_cost_impl", "auto"))

  # -- losses for an assignment: query index (B, N) and target index (B, N) per slot
  def _class_loss(self, logits, query_idx, tgt_labels, valid, image_weight, query_valid):
    """Class loss of one prediction.

    logits (B, Q, C'); query_idx / tgt_labels / valid (B, N): the query, label and reality of each
    slot; image_weight: scalar or (B,) divisor-inverse of each image's focal terms; query_valid
    (B, Q): queries that take part (the others count nowhere).
    """
    b, q, _ = logits.shape
    bidx = jnp.broadcast_to(jnp.arange(b)[:, None], query_idx.shape)
    if self.semantic_ce_loss:  # a weighted mean over the taking-part queries (no normalizer)
      target_classes = jnp.full((b, q), self.num_classes, jnp.int32)
      target_classes = target_classes.at[bidx, jnp.where(valid, query_idx, q)].set(tgt_labels, mode="drop")
      weight = jnp.ones(self.num_classes + 1, jnp.float32).at[-1].set(self.cfg.no_object_weight)
      return softmax_cross_entropy(logits.astype(jnp.float32), target_classes, class_weight=weight,
                                   valid=query_valid)
    onehot = jnp.zeros(logits.shape, jnp.float32)
    onehot = onehot.at[bidx, jnp.where(valid, query_idx, q), tgt_labels].set(1.0, mode="drop")
    per_image = jax.vmap(lambda lg, oh, v: sigmoid_focal_loss(lg, oh, num_boxes=1.0, alpha=self.cfg.focal_alpha,
                                                              valid=v))(logits.astype(jnp.float32), onehot,
                                                                        query_valid)
    return jnp.sum(per_image * image_weight)

  def _box_losses(self, boxes, query_idx, tgt_boxes, valid, image_weight):
    """L1 and 1 - GIoU of the slots' boxes, per image weighted by image_weight, summed."""
    src = jnp.take_along_axis(boxes, query_idx[..., None], axis=1).astype(jnp.float32)
    l1 = jax.vmap(lambda s, t, v: box_l1_loss(s, t, num_boxes=1.0, valid=v))(src, tgt_boxes, valid)
    a, b = box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt_boxes)
    giou = _giou_parts(a[..., None, :], b[..., None, :])[..., 0, 0]
    return jnp.sum(l1 * image_weight), jnp.sum(jnp.sum(jnp.where(valid, 1 - giou, 0.0), axis=1) * image_weight)

  def _mask_row_terms(self, src, tall, hw, row, cand, rand):
    """Per-row mask terms before normalization.

    Args:
      src: (R, h, w) predicted mask logits of the rows.
      tall: (1, N * (H + 1) * W, 1) every target mask of the batch stacked (`_tall_targets`); hw: (H, W).
      row: (R,) int32 index of each row's target mask among the N = B * T.
      cand: (R, S, 2) oversampled candidate points; rand: (R, Rn, 2) extra random points (either may instead be
        (R, K) uint32 per-row keys, `RandomDraws.row_keys`: the points are then drawn here).
    Returns:
      (bce (R,), dice (R,)): mean point BCE and dice of each row.
    """
    sample = lambda pts: sample_masks(src.astype(jnp.float32), pts)  # noqa: E731
    sample_sg = lambda pts: sample_masks(jax.lax.stop_gradient(src).astype(jnp.float32), pts)  # noqa: E731
    if not jnp.issubdtype(cand.dtype, jnp.floating):
      cand = row_points(cand, (self.num_sampled, 2))
    if not jnp.issubdtype(rand.dtype, jnp.floating):
      rand = row_points(rand, (self.num_random, 2))
    uncertainty = -jnp.abs(sample_sg(cand))
    # The most uncertain candidates as a set (the terms are means over the points; lax.top_k's order is not needed)
    top = largest_k_indices(uncertainty, self.num_uncertain)
    coords = jnp.take_along_axis(cand, top[..., None], axis=1)
    if self.num_random:
      coords = jnp.concatenate([coords, rand], axis=1)
    # Named for the factored path's rematerialisation policy (`_map_valid_chunks`): the backward pass keeps a row's
    # points, target samples and logits ((R, P) each) instead of redoing the uncertainty sampling and selection.
    coords = checkpoint_name(jax.lax.stop_gradient(coords), MASK_POINTS)
    labels = checkpoint_name(jax.lax.stop_gradient(_sample_tall(tall, hw, row, coords)), MASK_POINTS)
    logits = checkpoint_name(sample(coords), MASK_POINTS)
    return sigmoid_ce_per_mask(logits, labels), dice_per_mask(logits, labels)

  def _skip_padded(self) -> bool:
    mode = self.cfg.get("padded_mask_rows", "auto")
    if mode not in ("auto", "skip", "compute"):
      raise ValueError(f"loss.padded_mask_rows must be 'auto', 'skip' or 'compute', got {mode!r}")
    return mode == "skip" or (mode == "auto" and jax.default_backend() == "cpu")

  def _mask_losses(self, masks, query_idx, target, valid, tgt_masks, row_weight, cand, rand):
    """Point-sampled mask BCE and dice of M predictions at once.

    Args:
      masks: (M, B, Q, h, w) predicted mask logits; query_idx: (M, B, N) query of each slot.
      target: (B, N) target row t of each slot; valid: (B, N) real slots.
      tgt_masks: (B, T, H, W); row_weight: (B, N) (or broadcastable) weight of each slot's terms;
      cand (M, B, N, S, 2), rand (M, B, N, Rn, 2).
    Returns:
      (bce (M,), dice (M,)): weighted sums over valid slots.

    Rows of padded slots are masked out of the sums. With `loss.padded_mask_rows` "skip" (what
    "auto" picks on the CPU) rows are processed in chunks of `loss.mask_row_chunk` under `lax.cond`,
    so chunks without a real slot cost nothing; with "compute" (accelerators) all rows run as one
    batch: parallel devices prefer the wide op to a sequential loop. Under a mesh whose batch axes
    split B, every device computes the rows of its own images (`shard_map`): a `lax.cond` whose
    branch the partitioner filled with collectives would otherwise let devices that skip a chunk
    and devices that do not wait on different collectives (the 8-device XLA:CPU abort).
    """
    m, b, n = query_idx.shape
    factored = isinstance(masks, FactoredMasks)
    if factored:  # (M, B, N, C) embeddings of the slots' queries; the features are sampled per row
      src = jnp.take_along_axis(masks.embed, query_idx[..., None], axis=2)
      extra = (masks.features,)
    else:
      src = jnp.take_along_axis(masks, query_idx[..., None, None], axis=2)  # (M, B, N, h, w)
      extra = ()
    per_slot = self._mask_slot_terms
    mesh = sharding.resolve_mesh(None)
    axes = sharding.split_axes(mesh, BATCH_AXES, b) if mesh is not None else ()
    if axes:
      one, lead = P(sharding.spec_entry(axes)), P(None, sharding.spec_entry(axes))
      per_slot = sharding.shard_map(per_slot, mesh, (lead, one, one, one, lead, lead) + (one,) * len(extra),
                                    (lead, lead))
    bce, dice = per_slot(src, target, valid, tgt_masks, cand, rand, *extra)
    weight = jnp.where(valid, jnp.broadcast_to(row_weight, (b, n)), 0.0)[None]
    return jnp.sum(bce * weight, axis=(1, 2)), jnp.sum(dice * weight, axis=(1, 2))

  def _mask_slot_terms(self, src, target, valid, tgt_masks, cand, rand, features=None):
    """Mask BCE and dice (M, B, N) of each slot (zeros for invalid slots; shapes as `_mask_losses`,
    with src (M, B, N, h, w) the slots' predicted masks, or with `features` (B, h, w, C) given, src
    (M, B, N, C) the slots' mask embeddings: `mask_logits.FactoredMasks`)."""
    m, b, n = src.shape[:3]
    t = tgt_masks.shape[1]
    tall, hw = _tall_targets(tgt_masks), tuple(tgt_masks.shape[2:])
    row = jnp.arange(b, dtype=jnp.int32)[:, None] * t + target.astype(jnp.int32)
    if features is not None:
      return self._factored_terms(src, row, valid, tall, hw, cand, rand, features)
    rows = m * b * n
    args = (src.reshape(rows, *src.shape[3:]), jnp.broadcast_to(row[None], (m, b, n)).reshape(rows),
            cand.reshape(rows, *cand.shape[3:]), rand.reshape(rows, *rand.shape[3:]))
    valid_rows = jnp.broadcast_to(valid[None], (m, b, n)).reshape(rows)
    fn = lambda s, r, c, rd: self._mask_row_terms(s, tall, hw, r, c, rd)  # noqa: E731
    if self._skip_padded():
      bce, dice = _map_valid_chunks(fn, valid_rows, args, int(self.cfg.get("mask_row_chunk", 8)))
    else:
      bce, dice = fn(*args)
    return bce.reshape(m, b, n), dice.reshape(m, b, n)

  def _factored_terms(self, embed, row, valid, tall, hw, cand, rand, features):
    """`_mask_slot_terms` of factored masks: image by image (`lax.map`), each chunk of `factored_mask_row_chunk`
    rows of its M * N rows that holds a valid row makes its (rows, h, w) logits as one matmul of the rows'
    embeddings with the image's (h, w, C) features and samples them as the full-logits path does; chunks
    without a valid row are skipped, and each chunk is rematerialised in the backward pass (only its inputs are
    kept), so the step never holds more than a chunk's logits.

    Sampling features at the points and dotting them with an embedding gives the same values (bilinear
    sampling is linear), but the (rows, 4 x 3 x num_points, C) gathers of the uncertainty candidates it needs
    were 3-5x slower on the CPU than the matmuls (2 in the backward pass) and held (rows, 3 x num_points, C).

    embed (M, B, N, C); row, valid (B, N); cand (M, B, N, S, 2) or (M, B, N, K) keys, rand likewise;
    features (B, h, w, C). Returns (bce, dice), each (M, B, N)."""
    m, b, n = embed.shape[:3]
    per_image = lambda x: jnp.moveaxis(x, 1, 0).reshape(b, m * n, *x.shape[3:])  # noqa: E731  (M, B, N, ...) -> (B, M * N, ...)
    rows = jnp.broadcast_to(row[None], (m, b, n))
    valid_rows = jnp.broadcast_to(valid[None], (m, b, n))
    chunk = int(self.cfg.get("factored_mask_row_chunk", 4))

    def image_terms(xs):
      feats, e, r, c, rd, v = xs
      flat = feats.astype(jnp.float32).reshape(-1, feats.shape[-1])  # (h * w, C)

      def fn(e, r, c, rd):
        maps = jnp.dot(e.astype(jnp.float32), flat.T).reshape(e.shape[0], *feats.shape[:2])  # (rows, h, w)
        return self._mask_row_terms(maps, tall, hw, r, c, rd)
      return _map_valid_chunks(fn, v, (e, r, c, rd), chunk, remat=True)

    bce, dice = jax.lax.map(image_terms, (features, per_image(embed), per_image(rows), per_image(cand),
                                          per_image(rand), per_image(valid_rows)))
    back = lambda x: jnp.moveaxis(x.reshape(b, m, n), 0, 1)  # noqa: E731
    return back(bce), back(dice)

  def _losses(self, logits, boxes, query_idx, tgt_labels, tgt_boxes, valid, image_weight, query_valid,
              with_boxes=True):
    out = {"loss_ce": self._class_loss(logits, query_idx, tgt_labels, valid, image_weight, query_valid)}
    if with_boxes:
      out["loss_bbox"], out["loss_giou"] = self._box_losses(boxes, query_idx, tgt_boxes, valid, image_weight)
    return out

  def _point_draws(self, names, draws: Draws, b: int, n: int, per_row: bool = False):
    """Candidate (M, B, N, S, 2) and extra random (M, B, N, Rn, 2) points of M outputs; with `per_row` and a
    provider that has `row_keys` (RandomDraws), per-row keys (M, B, N, K) instead, drawn where they are used."""
    if per_row and hasattr(draws, "row_keys"):
      cand = jnp.stack([draws.row_keys(nm, "cand", (b, n)) for nm in names])
      rand = jnp.stack([draws.row_keys(nm, "rand", (b, n)) for nm in names]) if self.num_random else \
          jnp.zeros((len(names), b, n, 0, 2), jnp.float32)
      return cand, rand
    cand = jnp.stack([draws(nm, "cand", (b, n, self.num_sampled, 2)) for nm in names])
    if self.num_random:
      rand = jnp.stack([draws(nm, "rand", (b, n, self.num_random, 2)) for nm in names])
    else:
      rand = jnp.zeros((len(names), b, n, 0, 2), jnp.float32)
    return cand, rand

  def matched_losses(self, names, logits, boxes, masks, targets: PaddedInstances, normalizer, draws: Draws,
                     query_valid=None):
    """Hungarian matching + losses of M predictions at once (vmapped: one compiled body for all).

    Args:
      names: M output names (for the draws); logits (M, B, Q, C), boxes (M, B, Q, 4), masks (M, B, Q, h, w).
      query_valid: (B, Q) queries that may be matched and take part in the class loss (None: all).
    Returns:
      ({loss name: (M,)} unweighted, (M, B, T) matched query per target).
    """
    m, b, q = len(names), logits.shape[1], logits.shape[2]
    t = targets.labels.shape[1]
    if query_valid is None:
      query_valid = jnp.ones((b, q), bool)
    points = jnp.stack([draws(nm, "match", (b, self.cfg.num_points, 2)) for nm in names])
    if isinstance(masks, FactoredMasks):
      features = masks.features
      cost = lambda lg, bx, e, tg, pt: self.matching_cost(lg, bx, FactoredMasks(e, features), tg, pt)  # noqa: E731
      costs = jax.vmap(cost, in_axes=(0, 0, 0, None, 0))(logits, boxes, masks.embed, targets, points)
    else:
      costs = jax.vmap(self.matching_cost, in_axes=(0, 0, 0, None, 0))(logits, boxes, masks, targets, points)
    costs = jax.lax.stop_gradient(jnp.where(query_valid[None, :, :, None], costs, LARGE_COST))
    valid = jnp.broadcast_to(targets.valid[None], (m,) + targets.valid.shape)
    idx = self.assign(costs.reshape(m * b, *costs.shape[2:]), valid.reshape(m * b, t))
    idx = jax.lax.stop_gradient(idx).astype(jnp.int32).reshape(m, b, t)
    cand, rand = self._point_draws(names, draws, b, t, per_row=isinstance(masks, FactoredMasks))
    target = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
    weight = 1.0 / normalizer

    def one(lg, bx, qi):
      return self._losses(lg, bx, qi, targets.labels, targets.boxes, targets.valid, weight, query_valid,
                          with_boxes=self.cfg.box_loss)
    out = jax.vmap(one)(logits, boxes, idx)
    out["loss_mask"], out["loss_dice"] = self._mask_losses(masks, idx, target, targets.valid, targets.masks, weight,
                                                           cand, rand)
    return out, idx

  def assigned_losses(self, names, logits, boxes, masks, targets: PaddedInstances, assignment, normalizer,
                      draws: Draws):
    """Losses of M predictions of a group with a fixed assignment (denoising.FixedAssignment):
    query n of image b <-> target assignment.target[b, n] where assignment.matched; image b's terms
    are divided by normalizer * assignment.normalizer_scale[b]. Returns {loss name: (M,)} unweighted."""
    b, n = assignment.target.shape
    m = len(names)
    query_idx = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None], (b, n))
    take = lambda x: jnp.take_along_axis(x, assignment.target.reshape((b, n) + (1,) * (x.ndim - 2)), axis=1)  # noqa: E731
    labels, tboxes, matched = take(targets.labels), take(targets.boxes), assignment.matched
    weight = 1.0 / (normalizer * assignment.normalizer_scale)
    cand, rand = self._point_draws(names, draws, b, n, per_row=isinstance(masks, FactoredMasks))

    def one(lg, bx):
      return self._losses(lg, bx, query_idx, labels, tboxes, matched, weight, assignment.active)
    out = jax.vmap(one)(logits, boxes)
    out["loss_mask"], out["loss_dice"] = self._mask_losses(
        masks, jnp.broadcast_to(query_idx[None], (m, b, n)), assignment.target, matched, targets.masks,
        weight[:, None], cand, rand)
    return out

  def weighted(self, values: Mapping[str, jax.Array], suffixes) -> dict[str, jax.Array]:
    """{loss name + suffix: value[i] * weight} for the i-th suffix of (M,) values."""
    return {k + suffix: v[i] * self.weights[k] for i, suffix in enumerate(suffixes) for k, v in values.items()}

  def default_policies(self, outputs: DecoderOutputs) -> dict[str, Any]:
    """Mask DINO's losses: Hungarian matching of the matching queries (with the interm
    prediction), fixed assignment of the denoising queries (from layer 0 with two-stage, else 1)."""
    policies = {MATCHING_GROUP: HungarianLoss()}
    if self.dn != "no":
      policies[denoising.GROUP_NAME] = FixedAssignmentLoss(first_layer=0 if outputs.interm is not None else 1)
    return policies

  def __call__(self, outputs: DecoderOutputs, targets: PaddedInstances, draws: Draws,
               return_indices: bool = False, policies: Mapping[str, Any] | None = None):
    """The weighted loss dictionary (and, with `return_indices`, the matched query per target per output).

    Args:
      outputs: training-mode DecoderOutputs (masks for every prediction).
      targets: PaddedInstances with labels (B, T), boxes (B, T, 4) cxcywh, masks (B, T, H, W), valid (B, T).
      draws: the random-draw provider (`random_draws(key)`).
      policies: {group name: loss policy or None (no loss)} for every group of `outputs`
        (default: `default_policies`); a policy is called as
        `policy(criterion, group_name, outputs, targets, normalizer, draws)` -> (losses, indices).
    """
    if targets.masks is None:
      raise ValueError("targets.masks is required by the mask losses")
    if outputs.masks.shape[0] != outputs.logits.shape[0]:
      raise ValueError("outputs must come from training mode (masks for every prediction)")
    policies = self.default_policies(outputs) if policies is None else policies
    missing = sorted(set(outputs.groups) - set(policies))
    if missing:
      raise ValueError(f"no loss policy for query group(s) {missing}; give one (or None for no loss)")
    normalizer = jnp.maximum(jnp.sum(targets.valid.astype(jnp.float32)), 1.0)
    losses, indices = {}, {}
    for name in outputs.groups:
      if policies[name] is not None:
        group_losses, group_indices = policies[name](self, name, outputs, targets, normalizer, draws)
        losses.update(group_losses)
        indices.update(group_indices)
    return (losses, indices) if return_indices else losses


class HungarianLoss:
  """Loss policy: every prediction of a group (and, with `interm`, the two-stage encoder
  prediction) is Hungarian-matched to the targets (Mask DINO's matching queries).

  Loss names: final `loss_x`, prediction k `loss_x_{k}`, interm `loss_x_interm` (with `tag`:
  `loss_x_{tag}`, `loss_x_{tag}_{k}`); draws are keyed `{draw_prefix}{k}` and "interm". Indices:
  {draw name: (B, T) matched query}. Deep supervision follows `loss.deep_supervision`.
  """

  def __init__(self, interm: bool = True, tag: str = "", draw_prefix: str = "pred"):
    self.interm, self.tag, self.draw_prefix = interm, tag, draw_prefix

  def __call__(self, criterion: SetCriterion, group: str, outputs: DecoderOutputs, targets, normalizer, draws):
    preds = outputs.groups[group]
    last = preds.logits.shape[0] - 1
    ks = list(range(last + 1)) if criterion.cfg.deep_supervision else [last]
    tag = f"_{self.tag}" if self.tag else ""
    names = [f"{self.draw_prefix}{k}" for k in ks]
    suffixes = [tag if k == last else f"{tag}_{k}" for k in ks]
    sel = np.asarray(ks)
    logits, boxes, masks = preds.logits[sel], preds.boxes[sel], preds.masks[sel]
    if self.interm and outputs.interm is not None:
      names.append("interm")
      suffixes.append("_interm")
      logits = jnp.concatenate([logits, outputs.interm.logits])
      boxes = jnp.concatenate([boxes, outputs.interm.boxes])
      masks = mask_logits.concatenate([masks, outputs.interm.masks])
    values, idx = criterion.matched_losses(names, logits, boxes, masks, targets, normalizer, draws,
                                           query_valid=preds.valid)
    return criterion.weighted(values, suffixes), {name: idx[i] for i, name in enumerate(names)}


class FixedAssignmentLoss:
  """Loss policy: a fixed query <-> target assignment, read from the group's
  `aux["assignment"]` (denoising.FixedAssignment); Mask DINO's denoising queries.

  Predictions k >= `first_layer` (and always the final one) get losses named `loss_x_{tag}`
  (final) and `loss_x_{tag}_{k}`; draws are keyed `{draw_prefix}{k}`. No indices are returned.
  """

  def __init__(self, first_layer: int = 0, tag: str = "dn", draw_prefix: str = "dn"):
    self.first_layer, self.tag, self.draw_prefix = first_layer, tag, draw_prefix

  def __call__(self, criterion: SetCriterion, group: str, outputs: DecoderOutputs, targets, normalizer, draws):
    preds = outputs.groups[group]
    last = preds.logits.shape[0] - 1
    ks = [k for k in range(last + 1) if k == last or (k >= self.first_layer and criterion.cfg.deep_supervision)]
    sel = np.asarray(ks)
    values = criterion.assigned_losses([f"{self.draw_prefix}{k}" for k in ks], preds.logits[sel], preds.boxes[sel],
                                       preds.masks[sel], targets, preds.aux["assignment"], normalizer, draws)
    return criterion.weighted(values, [f"_{self.tag}" if k == last else f"_{self.tag}_{k}" for k in ks]), {}


def total_loss(losses: Mapping[str, jax.Array]) -> jax.Array:
  return sum(losses.values())


__all__ = ["SetCriterion", "HungarianLoss", "FixedAssignmentLoss", "RandomDraws", "random_draws", "row_points", "focal_class_cost", "mask_costs", "generalized_box_iou_eps",
           "sample_masks", "matching_assign", "total_loss", "LARGE_COST"]
