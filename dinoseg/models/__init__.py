"""The segmentation systems (one sub-package each): maskdino, dinov, talk2dino, ov2seg, segnext."""
