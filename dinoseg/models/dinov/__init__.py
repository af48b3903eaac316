"""DINOv (UX-Decoder/DINOv, visual in-context prompting) in JAX, built from Mask DINO's pieces: the model
(Swin -> Mask DINO pixel decoder -> prompt encoder + decoder with prompt-similarity classification, generic
and referring tasks), conversion of the released checkpoints, and the released model settings
(defaults.py, configs/dinov/). docs/dinov.md."""
