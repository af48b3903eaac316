"""The DINOv model: backbone (Swin) -> Mask DINO's pixel decoder -> the DINOv predictor.

`DINOv` takes images on the 0-255 RGB scale on a zero-padded canvas (dinoseg/structures.py), normalizes
them, zeroes the padding (the reference pads after normalizing) and runs one task of the predictor
(decoder.py): "generic" (open-set segmentation against K prompts) or "refer" (clicks against K
prompts). Prompts are embeddings (B, K, d) or masks on the canvas (B, K, H, W). Build it from a config
with `build_model(config.model)` (configs/dinov/*.py document the fields).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dinoseg.models.dinov.decoder import DINOvDecoder, DINOvOutputs
from dinoseg.models.maskdino.model import build_backbone
from dinoseg.models.maskdino.pixel_decoder import MaskDINOEncoder
from dinoseg.ops import pixels


class DINOv(nn.Module):
  """Backbone + MaskDINOEncoder + DINOvDecoder.

  Attributes:
    backbone: a Flax backbone returning {"res2": ..., "res5": ...} NHWC maps (dinoseg.backbones).
    pixel_decoder: MaskDINOEncoder; predictor: DINOvDecoder.
    pixel_mean / pixel_std: RGB normalization on the 0-255 scale.
  """
  backbone: nn.Module
  pixel_decoder: MaskDINOEncoder
  predictor: DINOvDecoder
  pixel_mean: Sequence[float] = pixels.IMAGENET_MEAN_255
  pixel_std: Sequence[float] = pixels.IMAGENET_STD_255

  def features(self, images: jax.Array, valid_hw: jax.Array | None = None):
    """(B, H, W, 3) images -> (mask_features (B, H/4, W/4, mask_dim), encoder levels (B, h_l, w_l, d))."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
    if images.shape[1] % 32 or images.shape[2] % 32:
      raise ValueError(f"image canvas {images.shape[1:3]} must be a multiple of 32 (SIZE_DIVISIBILITY)")
    return self.pixel_decoder(self.backbone(pixels.normalize(images, self.pixel_mean, self.pixel_std, valid_hw)))

  def __call__(self, images: jax.Array, valid_hw: jax.Array | None = None, **kwargs) -> DINOvOutputs:
    """Runs the model on images (B, H, W, 3), H and W multiples of 32; `kwargs` are the predictor's
    (task, prompts or prompt_masks, prompt_valid, train, targets, dn_noise, clicks, ...: DINOvDecoder)."""
    mask_features, multi_scale = self.features(images, valid_hw)
    return self.predictor(multi_scale, mask_features, **kwargs)

  def head(self, features, **kwargs) -> DINOvOutputs:
    """The `sem_seg_head` part: backbone features {"res2".."res5"} -> DINOvOutputs."""
    mask_features, multi_scale = self.pixel_decoder(features)
    return self.predictor(multi_scale, mask_features, **kwargs)

  def prompt_embeddings(self, images: jax.Array, prompt_masks: jax.Array, valid_hw: jax.Array | None = None
                        ) -> jax.Array:
    """Prompt embeddings (B, K, d) of masks (B, K, H, W) on the images' canvas (the reference's
    `get_content` step that fills the inference prompt bank)."""
    _, multi_scale = self.features(images, valid_hw)
    return self.predictor.encode_prompts(multi_scale, prompt_masks)


def build_model(config: ml_collections.ConfigDict, dtype: Any = None) -> DINOv:
  """Builds DINOv from `config.model` (see configs/dinov/*.py for the fields)."""
  dtype = dtype or (jnp.bfloat16 if config.get("dtype", "float32") == "bfloat16" else jnp.float32)
  enc, dec = config.pixel_decoder, config.decoder
  if dec.num_content_tokens != 1:
    raise ValueError(f"num_content_tokens must be 1 (the released models), got {dec.num_content_tokens}")
  pixel_decoder = MaskDINOEncoder(
      transformer_in_features=tuple(enc.transformer_in_features),
      total_num_feature_levels=enc.total_num_feature_levels, feature_order=enc.feature_order,
      conv_dim=enc.conv_dim, mask_dim=enc.mask_dim, dim_feedforward=enc.dim_feedforward,
      num_encoder_layers=enc.num_encoder_layers, nheads=enc.nheads, common_stride=enc.common_stride,
      msda_impl=config.msda_impl, dtype=dtype)
  predictor = DINOvDecoder(
      hidden_dim=dec.hidden_dim, dim_proj=dec.dim_proj, num_queries=dec.num_queries, nheads=dec.nheads,
      dim_feedforward=dec.dim_feedforward, dec_layers=dec.dec_layers, mask_dim=enc.mask_dim, dn=dec.dn,
      dn_num=dec.dn_num, noise_scale=dec.dn_noise_scale, dn_group_images=dec.dn_group_images,
      num_mask_tokens=dec.num_mask_tokens, content_independent=dec.content_independent,
      query_pad_multiple=dec.query_pad_multiple, total_num_feature_levels=enc.total_num_feature_levels,
      msda_impl=config.msda_impl, dtype=dtype)
  return DINOv(backbone=build_backbone(config.backbone), pixel_decoder=pixel_decoder, predictor=predictor,
               pixel_mean=tuple(config.pixel_mean), pixel_std=tuple(config.pixel_std))


__all__ = ["DINOv", "build_model", "normalize_images"]
