"""Mask DINO (IDEA-Research/MaskDINO) in JAX: model (backbone -> pixel decoder -> decoder), denoising,
criterion, postprocessing, conversion of the released checkpoints, and the trainer task. docs/maskdino.md."""
