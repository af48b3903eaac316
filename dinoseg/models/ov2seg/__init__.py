"""OV2Seg (haochenheheda/LVVIS, open-vocabulary video instance segmentation) in JAX: the per-frame model
(ResNet-50 or Swin -> Mask2Former deformable pixel decoder -> masked-attention decoder with a class-agnostic
objectness head and a zero-shot classifier whose class embeddings are an input), the checkpoint converter
and the released settings (defaults.py, configs/ov2seg/). docs/ov2seg.md."""
