"""Image normalisation, written once: RGB pixels on the 0..255 scale -> float32 (x - mean) / std.

The reference systems reach the same ImageNet statistics two ways, and each keeps its own float32
arithmetic here so that results stay bit-identical to its reference:
- detectron2 (Mask DINO, DINOv): statistics on the 0..255 scale applied to the pixels as they are,
  `normalize(pixels, IMAGENET_MEAN_255, IMAGENET_STD_255)`;
- torchvision `ToTensor` + `Normalize` (DINOv2 in Talk2DINO, SegNext): pixels / 255 first (`to_unit_range`),
  statistics on the 0..1 scale, `normalize_pixels(pixels)`.
Every function takes NumPy or JAX arrays (uint8 or float, channels last) and returns the same array type.
"""
from typing import Sequence

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, 0..1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)  # the same on the 0..255 scale (255 x the above in float32)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def to_unit_range(pixels):
  """(..., C) pixels on the 0..255 scale -> float32 on 0..1 (`x / 255` in float32, torchvision ToTensor)."""
  return pixels.astype(np.float32) / np.float32(255)


def normalize(images, mean: Sequence[float], std: Sequence[float], valid_hw=None):
  """(..., C) images -> float32 (x - mean) / std, the statistics on the scale of `images`.

  With `valid_hw` ((B, 2) image sizes inside (B, H, W, C) canvases, the padding convention of
  dinoseg/structures.py) the padding is set to 0 after normalizing, as detectron2 pads (a JAX array).
  """
  x = (images.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  if valid_hw is None:
    return x
  import jax.numpy as jnp  # noqa: PLC0415
  h, w = images.shape[1:3]
  inside = ((jnp.arange(h)[None, :, None] < valid_hw[:, 0, None, None]) &
            (jnp.arange(w)[None, None, :] < valid_hw[:, 1, None, None]))
  return jnp.where(inside[..., None], x, 0.0)


def normalize_pixels(pixels, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
  """(..., C) pixels on the 0..255 scale -> float32 (x / 255 - mean) / std, statistics on the 0..1 scale."""
  return normalize(to_unit_range(pixels), mean, std)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_MEAN_255", "IMAGENET_STD_255", "to_unit_range", "normalize",
           "normalize_pixels"]
