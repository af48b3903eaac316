"""dinoseg.kernels: Pallas kernels with plain-XLA twins (installed as `dinoseg.kernels`).

- `ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights, *, impl="auto")`:
  multi-scale deformable attention (Deformable DETR / Mask DINO), differentiable.
- `matching_cost(*, pred_logits, target_labels, target_valid, pred_boxes=None, ...)`: the fused
  Hungarian-matching cost; `CostWeights` holds its weights. Assignment lives in `dinoseg.matching`.

`impl="auto"` runs Pallas on CUDA, ROCm and TPU and XLA on CPU (see docs/kernels.md).
"""
from dinoseg.kernels.matching_cost import CostWeights, matching_cost
from dinoseg.kernels.ms_deform_attn import ms_deform_attn

__all__ = ["CostWeights", "matching_cost", "ms_deform_attn"]
