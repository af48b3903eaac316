"""The Mask DINO model: backbone -> pixel decoder -> predictor.

`MaskDINO` takes images on the 0-255 RGB scale on a zero-padded canvas (the padding convention of
dinoseg/structures.py), normalizes them with the configured mean/std, zeroes the padding (as the
reference pads after normalizing), and returns the predictor's `DecoderOutputs`. Build it from a
config with `build_model(config.model)` (configs/maskdino/*.py document the fields).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dinoseg import backbones
from dinoseg.errors import UserValueError
from dinoseg.models.maskdino.decoder import DecoderOutputs, MaskDINODecoder
from dinoseg.models.maskdino.defaults import PIXEL_MEAN, PIXEL_STD
from dinoseg.models.maskdino.denoising import DNNoise
from dinoseg.models.maskdino.pixel_decoder import MaskDINOEncoder
from dinoseg.models.query_groups import QueryGroup
from dinoseg.ops import pixels


class MaskDINO(nn.Module):
  """Backbone + MaskDINOEncoder + MaskDINODecoder.

  Attributes:
    backbone: a Flax backbone returning {"res2": ..., "res5": ...} NHWC maps (dinoseg.backbones).
    pixel_decoder: MaskDINOEncoder.
    predictor: MaskDINODecoder.
    pixel_mean / pixel_std: RGB normalization on the 0-255 scale.
  """
  backbone: nn.Module
  pixel_decoder: MaskDINOEncoder
  predictor: MaskDINODecoder
  pixel_mean: Sequence[float] = PIXEL_MEAN
  pixel_std: Sequence[float] = PIXEL_STD

  def normalize(self, images: jax.Array, valid_hw: jax.Array | None) -> jax.Array:
    """(B, H, W, 3) 0-255 RGB -> normalized, padding (outside valid_hw) set to 0."""
    return pixels.normalize(images, self.pixel_mean, self.pixel_std, valid_hw)

  def __call__(self, images: jax.Array, valid_hw: jax.Array | None = None, *, train: bool = False, targets=None,
               dn_noise: DNNoise | None = None, extra_groups: Sequence[QueryGroup] = ()) -> DecoderOutputs:
    """Runs the model.

    Args:
      images: (B, H, W, 3) 0-255 RGB on the padded canvas (H, W multiples of 32).
      valid_hw: (B, 2) image sizes inside the canvas (None: all valid).
      train: training mode; targets / dn_noise: for the denoising queries (see MaskDINODecoder).
      extra_groups: query groups of another system, decoded with Mask DINO's (dinoseg.models.query_groups).
    Returns:
      DecoderOutputs.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
    if images.shape[1] % 32 or images.shape[2] % 32:
      raise ValueError(f"image canvas {images.shape[1:3]} must be a multiple of 32 (SIZE_DIVISIBILITY)")
    features = self.backbone(self.normalize(images, valid_hw))
    return self.head(features, train=train, targets=targets, dn_noise=dn_noise, extra_groups=extra_groups)

  def head(self, features, *, train: bool = False, targets=None, dn_noise: DNNoise | None = None,
           extra_groups: Sequence[QueryGroup] = ()) -> DecoderOutputs:
    """The `sem_seg_head` part: features {"res2".."res5"} -> DecoderOutputs."""
    mask_features, multi_scale = self.pixel_decoder(features)
    return self.predictor(multi_scale, mask_features, train=train, targets=targets, dn_noise=dn_noise,
                          extra_groups=extra_groups)


def build_backbone(config: ml_collections.ConfigDict) -> nn.Module:
  """`config.backbone`: {name, plus keyword overrides in `config.backbone.kwargs`}."""
  kwargs = dict(config.get("kwargs", {}) or {})
  return backbones.build(config.name, **kwargs)


def build_model(config: ml_collections.ConfigDict, dtype: Any = None) -> MaskDINO:
  """Builds MaskDINO from `config.model` (see configs/maskdino/*.py for the fields)."""
  dtype = dtype or (jnp.bfloat16 if config.get("dtype", "float32") == "bfloat16" else jnp.float32)
  enc, dec = config.pixel_decoder, config.decoder
  pixel_decoder = MaskDINOEncoder(
      transformer_in_features=tuple(enc.transformer_in_features),
      total_num_feature_levels=enc.total_num_feature_levels, feature_order=enc.feature_order,
      conv_dim=enc.conv_dim, mask_dim=enc.mask_dim, dim_feedforward=enc.dim_feedforward,
      num_encoder_layers=enc.num_encoder_layers, nheads=enc.nheads, common_stride=enc.common_stride,
      msda_impl=config.msda_impl, dtype=dtype, remat_ffn=bool(enc.get("remat_ffn", False)))
  predictor = MaskDINODecoder(
      num_classes=config.num_classes, hidden_dim=dec.hidden_dim, num_queries=dec.num_queries, nheads=dec.nheads,
      dim_feedforward=dec.dim_feedforward, dec_layers=dec.dec_layers, mask_dim=enc.mask_dim,
      two_stage=dec.two_stage, initialize_box_type=dec.initialize_box_type, initial_pred=dec.initial_pred,
      learn_tgt=dec.learn_tgt, dn=dec.dn, dn_num=dec.dn_num, noise_scale=dec.dn_noise_scale,
      dn_group_images=dec.get("dn_group_images", 0),
      factored_train_masks=train_mask_logits(dec),
      total_num_feature_levels=enc.total_num_feature_levels, semantic_ce_loss=config.semantic_ce_loss,
      msda_impl=config.msda_impl, dtype=dtype)
  return MaskDINO(backbone=build_backbone(config.backbone), pixel_decoder=pixel_decoder, predictor=predictor,
                  pixel_mean=tuple(config.pixel_mean), pixel_std=tuple(config.pixel_std))


def train_mask_logits(decoder_config) -> bool:
  """Whether `decoder.train_mask_logits` ("auto" | "factored" | "full") gives factored mask logits in training;
  "auto" picks them on the CPU (measured there: docs/maskdino.md), the full logits on accelerators."""
  mode = decoder_config.get("train_mask_logits", "full")
  if mode not in ("auto", "factored", "full"):
    raise UserValueError(f"model.decoder.train_mask_logits must be 'auto', 'factored' or 'full', got {mode!r}")
  return mode == "factored" or (mode == "auto" and jax.default_backend() == "cpu")


__all__ = ["MaskDINO", "build_model", "build_backbone", "PIXEL_MEAN", "PIXEL_STD"]
