"""From a host batch (dict of NumPy arrays, docs/data.md) to the foundation's typed containers.

Images travel as uint8 (4x less host->device traffic than float32) and are normalized on the
device: `normalize_images` subtracts the mean, divides by the std and zeroes every pixel outside
`valid_hw` (the padding convention of dinoseg/structures.py).
"""
import jax.numpy as jnp

from dinoseg.structures import PaddedImages, PaddedInstances

# detectron2 / Mask DINO RGB pixel statistics (ImageNet, 0..255 scale).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def normalize_images(images, valid_hw, mean=PIXEL_MEAN, std=PIXEL_STD, dtype=jnp.float32):
  """(B, H, W, 3) uint8 (or float 0..255) -> (B, H, W, 3) normalized, 0 outside each valid_hw (B, 2)."""
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must have shape (B, H, W, 3), got {images.shape}")
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  x = (images.astype(jnp.float32) - mean) / std
  _, h, w, _ = images.shape
  valid_hw = jnp.asarray(valid_hw)
  rows = jnp.arange(h)[None, :, None] < valid_hw[:, 0, None, None]
  cols = jnp.arange(w)[None, None, :] < valid_hw[:, 1, None, None]
  return jnp.where((rows & cols)[..., None], x, 0.0).astype(dtype)


def to_padded(batch, *, mean=PIXEL_MEAN, std=PIXEL_STD, dtype=jnp.float32):
  """An image-task batch -> (PaddedImages, PaddedInstances or None).

  Args:
    batch: dict with image (B, H, W, 3) uint8, valid_hw, original_hw, image_id and, when the batch
      has targets, labels, boxes, valid, masks (+ is_crowd, track_ids).
  Returns:
    PaddedImages with normalized images (module docstring), and PaddedInstances (masks as given,
    uint8) or None for a batch without targets. Works inside jit.
  """
  images = PaddedImages(images=normalize_images(batch["image"], batch["valid_hw"], mean, std, dtype),
                        valid_hw=jnp.asarray(batch["valid_hw"]), original_hw=jnp.asarray(batch["original_hw"]),
                        image_id=batch.get("image_id"))
  if "labels" not in batch:
    return images, None
  instances = PaddedInstances(labels=batch["labels"], boxes=batch["boxes"], valid=batch["valid"],
                              masks=batch.get("masks"), is_crowd=batch.get("is_crowd"),
                              track_ids=batch.get("track_ids"))
  return images, instances


__all__ = ["PIXEL_MEAN", "PIXEL_STD", "normalize_images", "to_padded"]
