"""ToySegmenter: a tiny conv net producing per-pixel class logits.

  images (B, H, W, 3) -> backbone: conv1 3x3 -> FrozenBatchNorm -> ReLU -> conv2 3x3 -> LayerNorm -> ReLU
                      -> + pos_embed (H, W, C) -> dropout -> classifier 1x1 conv -> logits (B, H, W, K)

Variables: params/backbone/{conv1,conv2}/{kernel,bias}, params/backbone/norm2/{scale,bias},
params/pos_embed, params/classifier/{kernel,bias}; frozen_bn/backbone/norm1/{weight,bias,
running_mean,running_var} (a non-trainable collection, carried as `TrainState.model_state`). Conv
kernels carry logical axis names ("height", "width", "conv_in", "conv_out"). It is small on
purpose, but exercises every kind of variable the trainer handles: parameter groups (backbone),
no-decay params (norm, bias, embed), a frozen collection, logical partitioning, and dropout
(the step's PRNG key).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinoseg.backbones.layers import FrozenBatchNorm, layer_norm

KERNEL_AXES = ("height", "width", "conv_in", "conv_out")


def _conv(features: int, size: int, dtype, name: str) -> nn.Conv:
  return nn.Conv(features, (size, size), padding="SAME", dtype=dtype, name=name,
                 kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), KERNEL_AXES))


class ToyBackbone(nn.Module):
  """conv1 -> FrozenBN -> ReLU -> conv2 -> LayerNorm (eps 1e-5) -> ReLU; (B, H, W, 3) -> (B, H, W, width)."""
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _conv(self.width, 3, self.dtype, "conv1")(x)
    x = nn.relu(FrozenBatchNorm(dtype=self.dtype, name="norm1")(x))
    x = _conv(self.width, 3, self.dtype, "conv2")(x)
    return nn.relu(layer_norm("norm2", 1e-5, self.dtype)(x))


class ToySegmenter(nn.Module):
  """Per-pixel classifier (module docstring).

  Attributes:
    num_classes: K (background included).
    width: channels of the backbone.
    image_size: H = W of the inputs (the positional embedding is (H, W, width)).
    dropout_rate: dropout before the classifier (needs the "dropout" RNG when not deterministic).
    dtype: compute dtype.
  """
  num_classes: int
  width: int
  image_size: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, deterministic: bool = True) -> jax.Array:
    if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f"images must be (B, {self.image_size}, {self.image_size}, 3), got {images.shape}")
    x = ToyBackbone(self.width, self.dtype, name="backbone")(images.astype(self.dtype))
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (self.image_size, self.image_size, self.width))
    x = x + pos.astype(x.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    return nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier",
                   kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), KERNEL_AXES))(x)


def build_model(model_config, dtype: Any = jnp.float32) -> ToySegmenter:
  """ToySegmenter from `config.model` (num_classes, width, image_size, dropout_rate)."""
  return ToySegmenter(num_classes=int(model_config.num_classes), width=int(model_config.width),
                      image_size=int(model_config.image_size), dropout_rate=float(model_config.dropout_rate),
                      dtype=dtype)


__all__ = ["ToySegmenter", "ToyBackbone", "build_model"]
