"""The OV2Seg per-frame model: backbone -> Mask2Former deformable pixel decoder -> masked-attention decoder
with the objectness head and the zero-shot classifier (shared/reference/ov2seg.md section 1).

`OV2Seg` takes images on the 0-255 RGB scale on a zero-padded canvas (dinoseg/structures.py convention),
normalises them with the configured mean / std, zeroes the padding (detectron2 pads after normalising) and
returns `OV2SegOutputs`. The vocabulary is an input: `class_embeddings` (C, E) (E = 512 for the released
DetPro / CLIP embeddings), one row per class, the same for every image of the batch; it is never a
parameter, so changing the vocabulary needs no retraining and no new checkpoint.

Pixel decoder: the reference's Mask2Former `MSDeformAttnPixelDecoder` computes what Mask DINO's
`MaskDINOEncoder` computes with feature_order "high2low" (levels coarse -> fine, `input_proj.0` reads res5),
no extra downsampled level (total_num_feature_levels = 3) and FFN 1024: no padding mask (all-valid
reference points), the same sine positions, FPN lateral from res2 upsampling the finest encoder level, and
the first 3 maps returned. So it is `dinoseg.models.maskdino.pixel_decoder.MaskDINOEncoder` with those
settings (no option was added).

Build it from a config with `build_model(config.model)` (configs/ov2seg/*.py document the fields).
"""
from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from dinoseg.models.maskdino.defaults import PIXEL_MEAN, PIXEL_STD
from dinoseg.models.maskdino.model import build_backbone
from dinoseg.models.maskdino.pixel_decoder import MaskDINOEncoder
from dinoseg.models.ov2seg.decoder import MaskedAttentionDecoder
from dinoseg.ops import pixels


@flax.struct.dataclass
class OV2SegOutputs:
  """Per-frame predictions (P = dec_layers + 1 predictions, the last is the final one; B frames; Q queries).

  logits: (P, B, Q, C + 1) class logits against the given class embeddings; the last column is the
    background, always 0. Class probabilities are per-class sigmoids.
  objectness: (P, B, Q, 2) class-agnostic logits [object, no-object] (softmax).
  masks: (P, B, Q, H/4, W/4) mask logits at stride 4 of the padded canvas.
  embeddings: (B, Q, d) the last layer's queries after the decoder norm (the reference's `pred_embds`,
    used to associate queries across frames).
  """
  logits: jax.Array
  objectness: jax.Array
  masks: jax.Array
  embeddings: jax.Array

  FIELDS = ("logits", "objectness", "masks", "embeddings")

  def __getitem__(self, name: str) -> jax.Array:
    """outputs["logits"] etc.: the mapping access the video functions (video.last_prediction) use."""
    if name not in self.FIELDS:
      raise KeyError(name)
    return getattr(self, name)

  def as_dict(self) -> dict[str, jax.Array]:
    return {name: getattr(self, name) for name in self.FIELDS}


class OV2Seg(nn.Module):
  """Backbone + pixel decoder + masked-attention decoder.

  Attributes:
    backbone: a Flax backbone returning {"res2": ..., "res5": ...} NHWC maps (dinoseg.backbones).
    pixel_decoder: MaskDINOEncoder with Mask2Former's settings (module docstring).
    predictor: MaskedAttentionDecoder.
    pixel_mean / pixel_std: RGB normalisation on the 0-255 scale.
  """
  backbone: nn.Module
  pixel_decoder: MaskDINOEncoder
  predictor: MaskedAttentionDecoder
  pixel_mean: Sequence[float] = PIXEL_MEAN
  pixel_std: Sequence[float] = PIXEL_STD

  def __call__(self, images: jax.Array, class_embeddings: jax.Array,
               valid_hw: jax.Array | None = None) -> OV2SegOutputs:
    """Runs the model on a batch of frames.

    Args:
      images: (B, H, W, 3) 0-255 RGB on the padded canvas (H, W multiples of 32).
      class_embeddings: (C, E) class embeddings (one row per class; normalised inside).
      valid_hw: (B, 2) image sizes inside the canvas (None: all valid).
    Returns:
      OV2SegOutputs.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
    if images.shape[1] % 32 or images.shape[2] % 32:
      raise ValueError(f"image canvas {images.shape[1:3]} must be a multiple of 32 (SIZE_DIVISIBILITY)")
    features = self.backbone(pixels.normalize(images, self.pixel_mean, self.pixel_std, valid_hw))
    return self.head(features, class_embeddings)

  def head(self, features, class_embeddings: jax.Array) -> OV2SegOutputs:
    """The `sem_seg_head` part: features {"res2": (B, H/4, W/4, C2), ..., "res5"} -> OV2SegOutputs."""
    mask_features, multi_scale = self.pixel_decoder(features)
    logits, objectness, masks, embeddings = self.predictor(multi_scale, mask_features, class_embeddings)
    return OV2SegOutputs(logits=logits, objectness=objectness, masks=masks, embeddings=embeddings)


def build_pixel_decoder(config: ml_collections.ConfigDict, dtype: Any = jnp.float32) -> MaskDINOEncoder:
  """Mask2Former's pixel decoder from `config.model.pixel_decoder` (Mask DINO's encoder, high2low, 3 levels)."""
  enc = config.pixel_decoder
  return MaskDINOEncoder(
      transformer_in_features=tuple(enc.transformer_in_features),
      total_num_feature_levels=enc.total_num_feature_levels, feature_order=enc.feature_order,
      conv_dim=enc.conv_dim, mask_dim=enc.mask_dim, dim_feedforward=enc.dim_feedforward,
      num_encoder_layers=enc.num_encoder_layers, nheads=enc.nheads, common_stride=enc.common_stride,
      msda_impl=config.msda_impl, dtype=dtype)


def build_predictor(config: ml_collections.ConfigDict, dtype: Any = jnp.float32) -> MaskedAttentionDecoder:
  dec = config.decoder
  return MaskedAttentionDecoder(
      hidden_dim=dec.hidden_dim, num_queries=dec.num_queries, nheads=dec.nheads,
      dim_feedforward=dec.dim_feedforward, dec_layers=dec.dec_layers, mask_dim=config.pixel_decoder.mask_dim,
      embed_dim=config.classifier.embed_dim, temperature=config.classifier.temperature, dtype=dtype)


def build_model(config: ml_collections.ConfigDict, dtype: Any = None) -> OV2Seg:
  """Builds OV2Seg from `config.model` (see configs/ov2seg/*.py for the fields)."""
  dtype = dtype or (jnp.bfloat16 if config.get("dtype", "float32") == "bfloat16" else jnp.float32)
  return OV2Seg(backbone=build_backbone(config.backbone), pixel_decoder=build_pixel_decoder(config, dtype),
                predictor=build_predictor(config, dtype), pixel_mean=tuple(config.pixel_mean),
                pixel_std=tuple(config.pixel_std))


__all__ = ["OV2Seg", "OV2SegOutputs", "build_model", "build_pixel_decoder", "build_predictor"]
