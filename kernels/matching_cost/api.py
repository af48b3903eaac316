"""`matching_cost`: the DETR / Mask DINO Hungarian-matching cost, batched over images.

Implementations (`IMPLEMENTATIONS`, picked with `impl=`):
  "xla"     plain XLA (`xla.py`); the CPU default.
  "pallas"  fused Pallas kernel (`pallas.py`): Triton on CUDA / ROCm, Mosaic on TPU, interpret mode
            on CPU. Should a JAX release drop Pallas Triton, GPUs get "xla".
  "auto"    "pallas" on CUDA, ROCm and TPU, "xla" elsewhere; chosen when lowering.
Under a mesh (argument or `jax.set_mesh` context) every device computes the cost of its own
images (`jax.shard_map` over the batch axes).
"""
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dinoseg.kernels import sharding
from dinoseg.kernels.matching_cost.formulas import CostWeights
from dinoseg.kernels.matching_cost.pallas import TRITON_AVAILABLE, matching_cost_pallas
from dinoseg.kernels.matching_cost.xla import matching_cost_xla

_ARGS = ("pred_logits", "pred_boxes", "pred_mask_points", "target_labels", "target_boxes",
         "target_mask_points", "target_valid", "target_box_valid")


def _pallas_on(backend: str, interpret: bool = False) -> Callable:
  return lambda weights: lambda *args: matching_cost_pallas(*args, weights, backend=backend,
                                                            interpret=interpret)


def _xla(weights):
  return lambda *args: matching_cost_xla(*args, weights)


def _per_platform(default: Callable) -> Callable:
  def run(args, weights):
    # platform_dependent wants arrays: pass the present arguments, rebuild the Nones inside.
    present = [a for a in args if a is not None]

    def rebuild(fn):
      def call(*arrays):
        it = iter(arrays)
        return fn([None if a is None else next(it) for a in args])
      return call

    gpu = _pallas_on("triton") if TRITON_AVAILABLE else _xla
    return jax.lax.platform_dependent(
        *present, cuda=rebuild(lambda a: gpu(weights)(*a)), rocm=rebuild(lambda a: gpu(weights)(*a)),
        tpu=rebuild(lambda a: _pallas_on("mosaic_tpu")(weights)(*a)),
        default=rebuild(lambda a: default(weights)(*a)))
  return run


IMPLEMENTATIONS: dict[str, Callable] = {
    "xla": lambda args, weights: _xla(weights)(*args),
    "pallas": _per_platform(_pallas_on("triton" if TRITON_AVAILABLE else "mosaic_tpu", interpret=True)),
    "auto": _per_platform(_xla),
}


def _shape(x):
  return tuple(getattr(x, "shape", ())) if x is not None else None


def _check(name, x, shape):
  """shape: tuple of ints or None (any)."""
  got = _shape(x)
  if got is None or len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
    want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
    raise ValueError(f"{name} must have shape {want}, got {got}")


def matching_cost(*, pred_logits: jax.Array, target_labels: jax.Array, target_valid: jax.Array,
                  pred_boxes: jax.Array | None = None, target_boxes: jax.Array | None = None,
                  pred_mask_points: jax.Array | None = None, target_mask_points: jax.Array | None = None,
                  target_box_valid: jax.Array | None = None,
                  weights: CostWeights | Mapping[str, Any] | None = None,
                  impl: str = "auto", mesh=None, batch_axes: Sequence[str] = sharding.BATCH_AXES) -> jax.Array:
  """Matching cost between Q predictions and T (padded) targets of each image.

  cost[b, q, t] = class_weight * class cost (focal, or -softmax prob; see CostWeights)
                + bbox_weight * L1(pred_boxes[q], target_boxes[t])            (cxcywh)
                + giou_weight * -GIoU(pred_boxes[q], target_boxes[t])
                + mask_weight * mean over K points of BCE(pred_mask_points[q], target_mask_points[t])
                + dice_weight * dice(sigmoid(pred_mask_points[q]), target_mask_points[t])
  Box terms are skipped when pred_boxes is None, mask terms when pred_mask_points is None.
  Columns of padded targets (target_valid False) and any non-finite entry are `weights.pad_cost`.

  Args:
    pred_logits: (B, Q, C) class logits.
    target_labels: (B, T) int class indices in [0, C).
    target_valid: (B, T) bool, False for padding rows.
    pred_boxes: (B, Q, 4) cxcywh in [0, 1], or None.
    target_boxes: (B, T, 4) cxcywh, required with pred_boxes.
    pred_mask_points: (B, Q, K) mask logits at K sampled points, or None.
    target_mask_points: (B, T, K) target mask values in [0, 1] at the same points, required
      with pred_mask_points.
    target_box_valid: optional (B, T) bool: targets without a box (panoptic "stuff") get the
      image's mean L1 / -GIoU over queries and targets with a box, as the reference panoptic
      matcher does (0 if the image has none).
    weights: CostWeights, a mapping of its fields, or None (Mask DINO defaults).
    impl: "auto" | "xla" | "pallas".
    mesh: device mesh to run on per shard; None uses the `jax.set_mesh` context (if any).
    batch_axes: mesh axes to split B over (when present and dividing B).
  Returns:
    (B, Q, T) float32, finite.
  Raises:
    ValueError: on inconsistent shapes, a missing target for a given prediction, or a bad impl.
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"impl must be one of {tuple(IMPLEMENTATIONS)}, got {impl!r}")
  weights = CostWeights.create(weights)
  _check("pred_logits", pred_logits, (None, None, None))
  b, q, _ = pred_logits.shape
  _check("target_labels", target_labels, (b, None))
  t = target_labels.shape[1]
  _check("target_valid", target_valid, (b, t))
  if not jnp.issubdtype(target_labels.dtype, jnp.integer):
    raise ValueError(f"target_labels must be integers, got {target_labels.dtype}")
  if pred_boxes is not None:
    _check("pred_boxes", pred_boxes, (b, q, 4))
    if target_boxes is None:
      raise ValueError("target_boxes is required when pred_boxes is given")
    _check("target_boxes", target_boxes, (b, t, 4))
  if target_box_valid is not None:
    if pred_boxes is None:
      raise ValueError("target_box_valid needs pred_boxes and target_boxes")
    _check("target_box_valid", target_box_valid, (b, t))
  if pred_mask_points is not None:
    _check("pred_mask_points", pred_mask_points, (b, q, None))
    if target_mask_points is None:
      raise ValueError("target_mask_points is required when pred_mask_points is given")
    _check("target_mask_points", target_mask_points, (b, t, pred_mask_points.shape[-1]))
  f32 = lambda x: None if x is None else jnp.asarray(x, jnp.float32)
  args = (f32(pred_logits), f32(pred_boxes), f32(pred_mask_points),
          jnp.asarray(target_labels, jnp.int32), f32(target_boxes) if pred_boxes is not None else None,
          f32(target_mask_points) if pred_mask_points is not None else None,
          jnp.asarray(target_valid, bool),
          None if target_box_valid is None else jnp.asarray(target_box_valid, bool))
  args = tuple(jax.lax.stop_gradient(a) if a is not None else None for a in args)
  if q == 0 or t == 0:
    return jnp.full((b, q, t), weights.pad_cost, jnp.float32)
  run = lambda *a: IMPLEMENTATIONS[impl](a, weights)
  mesh = sharding.resolve_mesh(mesh)
  batch = sharding.spec_entry(sharding.split_axes(mesh, batch_axes, b)) if mesh is not None else None
  if batch is None:
    return run(*args)
  present = [i for i, a in enumerate(args) if a is not None]

  def local(*arrays):
    full = [None] * len(args)
    for i, a in zip(present, arrays):
      full[i] = a
    return run(*full)

  return sharding.shard_map(local, mesh, tuple(P(batch) for _ in present), P(batch))(
      *(args[i] for i in present))
