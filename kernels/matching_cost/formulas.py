"""The terms of the DETR / Mask DINO matching cost, as broadcasting jnp code.

Written with elementwise ops, reductions and matmuls only, so the same functions run in the XLA twin
and inside the Pallas kernels (Triton and Mosaic). Shapes in the docstrings are those of the XLA
twin; the kernels call them on tiles.
"""
import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

CLASS_COSTS = ("focal", "softmax")
# Bounds tiny/huge values inside the kernels: padded logits and points use NEG_PAD so that
# sigmoid = 0, softplus = 0 and x * 0 = 0 exactly.
NEG_PAD = -1e4
HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class CostWeights:
  """Weights and variants of the matching cost (defaults: Mask DINO's matcher).

  Attributes:
    class_weight, bbox_weight, giou_weight, mask_weight, dice_weight: term weights.
    class_cost: "focal" (sigmoid focal cost, Deformable DETR / DINO / Mask DINO) or "softmax"
      (-softmax(logits)[target class], Mask2Former / Mask DINO's ADE semantic config).
    focal_alpha, focal_gamma: focal cost parameters.
    pad_cost: the cost of padded targets (target_valid False) and of any non-finite entry.
  """
  class_weight: float = 4.0
  bbox_weight: float = 5.0
  giou_weight: float = 2.0
  mask_weight: float = 5.0
  dice_weight: float = 5.0
  class_cost: str = "focal"
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  pad_cost: float = 1e6

  def __post_init__(self):
    if self.class_cost not in CLASS_COSTS:
      raise ValueError(f"class_cost must be one of {CLASS_COSTS}, got {self.class_cost!r}")
    if not (abs(self.pad_cost) < float("inf")):
      raise ValueError(f"pad_cost must be finite, got {self.pad_cost}")

  @classmethod
  def create(cls, weights: "CostWeights | Mapping[str, Any] | None") -> "CostWeights":
    """Accepts a CostWeights, a mapping of its fields (e.g. a ConfigDict) or None (defaults)."""
    if weights is None:
      return cls()
    if isinstance(weights, cls):
      return weights
    if hasattr(weights, "to_dict"):
      weights = weights.to_dict()
    if not isinstance(weights, Mapping):
      raise ValueError(f"weights must be a CostWeights or a mapping, got {type(weights).__name__}")
    unknown = set(weights) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"weights has unknown fields {sorted(unknown)}")
    return cls(**weights)


def sigmoid(x):
  return 1.0 / (1.0 + jnp.exp(-x))


def softplus(x):
  """log(1 + exp(x)) = binary cross-entropy of logit x against target 0."""
  return jnp.maximum(x, 0.0) + jnp.log(1.0 + jnp.exp(-jnp.abs(x)))


def _power(x, gamma: float):
  return x ** int(gamma) if float(gamma).is_integer() else jnp.power(x, gamma)


def class_cost_table(logits, weights: CostWeights):
  """Per-class classification cost, (..., C) logits -> (..., C).

  focal: alpha (1 - p)^gamma (-log(p + 1e-8)) - (1 - alpha) p^gamma (-log(1 - p + 1e-8)), p = sigmoid.
  softmax: -softmax(logits) over the last axis.
  """
  if weights.class_cost == "softmax":
    e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    return -e / jnp.sum(e, axis=-1, keepdims=True)
  p = sigmoid(logits)
  alpha, gamma = weights.focal_alpha, weights.focal_gamma
  pos = alpha * _power(1.0 - p, gamma) * -jnp.log(p + 1e-8)
  neg = (1.0 - alpha) * _power(p, gamma) * -jnp.log(1.0 - p + 1e-8)
  return pos - neg


def _safe_divide(num, den):
  nonzero = den != 0
  return jnp.where(nonzero, num / jnp.where(nonzero, den, 1.0), 0.0)


def box_costs(pred, target):
  """Pairwise L1 (cxcywh) and -GIoU costs.

  Args:
    pred: 4 arrays (cx, cy, w, h), each broadcasting as a column, e.g. (..., Q, 1).
    target: 4 arrays (cx, cy, w, h), each broadcasting as a row, e.g. (..., 1, T).
  Returns:
    (l1, neg_giou), each of the broadcast shape (..., Q, T). Degenerate boxes give finite values
    (a zero denominator makes its ratio 0, as in `dinoseg.ops.generalized_box_iou`).
  """
  l1 = sum(jnp.abs(p - t) for p, t in zip(pred, target))
  (pcx, pcy, pw, ph), (tcx, tcy, tw, th) = pred, target
  px0, py0, px1, py1 = pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph
  tx0, ty0, tx1, ty1 = tcx - 0.5 * tw, tcy - 0.5 * th, tcx + 0.5 * tw, tcy + 0.5 * th
  area_p = (px1 - px0) * (py1 - py0)
  area_t = (tx1 - tx0) * (ty1 - ty0)
  inter = (jnp.maximum(jnp.minimum(px1, tx1) - jnp.maximum(px0, tx0), 0.0)
           * jnp.maximum(jnp.minimum(py1, ty1) - jnp.maximum(py0, ty0), 0.0))
  union = area_p + area_t - inter
  enclosing = (jnp.maximum(jnp.maximum(px1, tx1) - jnp.minimum(px0, tx0), 0.0)
               * jnp.maximum(jnp.maximum(py1, ty1) - jnp.minimum(py0, ty0), 0.0))
  giou = _safe_divide(inter, union) - _safe_divide(enclosing - union, enclosing)
  return l1, -giou


def mask_costs(softplus_sum, logit_dot_target, prob_sum, prob_dot_target, target_sum, num_points: int):
  """Sigmoid BCE and dice costs over K points from their sufficient statistics.

  With x the predicted logits (Q, K) and t the targets (T, K) in [0, 1]:
    BCE  = (sum_k softplus(x) - x @ t^T) / K            (= mean_k BCE(x, t), expanded)
    dice = 1 - (2 sigmoid(x) @ t^T + 1) / (sum_k sigmoid(x) + sum_k t + 1)

  Args:
    softplus_sum, prob_sum: (..., Q, 1); logit_dot_target, prob_dot_target: (..., Q, T);
    target_sum: (..., 1, T); num_points: K.
  Returns:
    (bce, dice), each (..., Q, T).
  """
  bce = (softplus_sum - logit_dot_target) / num_points
  dice = 1.0 - (2.0 * prob_dot_target + 1.0) / (prob_sum + target_sum + 1.0)
  return bce, dice


def finalize(cost, target_valid, pad_cost: float):
  """Padded targets and non-finite entries -> pad_cost. cost (..., Q, T), target_valid (..., 1, T)."""
  cost = jnp.where(jnp.isnan(cost) | (jnp.abs(cost) == jnp.inf), pad_cost, cost)
  return jnp.where(target_valid, cost, pad_cost)
