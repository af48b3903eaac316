"""The SegFormer-style all-MLP segmentation head of SegNext (reference `SegmentationHead`).

Per pyramid level a 1x1 conv + ReLU (mmcv `ConvModule`, no norm) to `channels`, bilinear
resize (align_corners=False) to the first level's size, concatenation in level order, a 1x1
conv + ReLU (`fusion_conv`), Dropout2d (whole channels, training only) and a 1x1 conv to
`num_classes` logits (`seg_conv`).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinoseg.ops import interpolate


class SegmentationHead(nn.Module):
  """[(B, h_i, w_i, C_i)] -> (B, h_0, w_0, num_classes) logits.

  Attributes:
    channels: width of every 1x1 projection (reference `out_channels`, 256).
    num_classes: output channels (1).
    dropout_rate: Dropout2d rate before `seg_conv` (0.1); uses the "dropout" RNG.
  """
  channels: int = 256
  num_classes: int = 1
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], deterministic: bool = True) -> jax.Array:
    size = features[0].shape[1:3]
    outs = []
    for i, f in enumerate(features):
      y = nn.relu(nn.Dense(self.channels, dtype=self.dtype, name=f"convs_{i}")(f))
      if y.shape[1:3] != size:
        y = interpolate(y, size, mode="bilinear", align_corners=False)
      outs.append(y)
    y = nn.relu(nn.Dense(self.channels, dtype=self.dtype, name="fusion_conv")(jnp.concatenate(outs, -1)))
    # Dropout2d on NHWC: one Bernoulli draw per (sample, channel).
    y = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2))(y, deterministic=deterministic)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="seg_conv")(y)
