"""The Talk2DINO model: frozen DINOv2 (with registers) + frozen CLIP text tower + the trained projection.

One Flax module holds the three parts so that one parameter tree
{"dinov2": ..., "clip_text": ..., "projection": ...} describes a full model; only
`projection` is ever trained. Methods (call with `model.apply(variables, ..., method=...)`):

- `encode_image(images)`: normalized images (B, H, W, 3) -> `ImageFeatures` (final-LayerNorm
  patch tokens on the patch grid and the raw CLS -> patch logits of the last block, with the
  reference's 0.125 query scale and the CLS/register keys dropped);
- `encode_text(ids)`: CLIP token ids (B, L) -> (B, 512) `encode_text` embeddings (not normalized);
- `project_text(text_embeds)`: (..., 512) -> (..., D) (not normalized);
- `__call__(images, ids)`: all three (used to initialize every parameter at once).
"""
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dinoseg.backbones.clip_text import ClipTextTransformer, clip_text
from dinoseg.backbones.dinov2 import DinoV2, dinov2
from dinoseg.models.talk2dino.pooling import REFERENCE_ATTENTION_SCALE, cls_patch_logits
from dinoseg.models.talk2dino.projection import TextProjection
from dinoseg.ops import pixels


@flax.struct.dataclass
class ImageFeatures:
  """What Talk2DINO reads from DINOv2 (B images, h x w patches, D width, H heads).

  Attributes:
    patch_tokens: (B, h, w, D) final-LayerNorm patch tokens (`x_norm_patchtokens`).
    cls_logits: (B, H, h*w) raw CLS -> patch attention logits of the last block.
  """
  patch_tokens: jax.Array
  cls_logits: jax.Array


def normalize_images(images: jax.Array) -> jax.Array:
  """RGB in [0, 255] (..., 3) -> ImageNet-normalized float32 (x / 255 - mean) / std (`ops.pixels`)."""
  return pixels.normalize_pixels(images)


class Talk2Dino(nn.Module):
  """DINOv2 + CLIP text + projection.

  Attributes:
    dinov2: the vision backbone (`dinoseg.backbones.dinov2.DinoV2`).
    clip_text: the text tower (`dinoseg.backbones.clip_text.ClipTextTransformer`).
    projection: the text -> DINOv2-space projection.
    attention_scale: multiplies the CLS query of the pooling logits (the reference's 0.125).
  """
  dinov2: DinoV2
  clip_text: ClipTextTransformer
  projection: TextProjection
  attention_scale: float = REFERENCE_ATTENTION_SCALE

  def encode_image(self, images: jax.Array) -> ImageFeatures:
    """images: (B, H, W, 3) ImageNet-normalized, H and W multiples of 14 -> ImageFeatures."""
    out = self.dinov2(images)
    prefix = 1 + self.dinov2.num_register_tokens
    logits = cls_patch_logits(out.last_q, out.last_k, prefix, self.attention_scale)
    return ImageFeatures(patch_tokens=out.patch_tokens, cls_logits=logits)

  def encode_text(self, ids: jax.Array) -> jax.Array:
    """ids: (B, L) CLIP token ids -> (B, E) text embeddings (`encode_text`, not normalized)."""
    return self.clip_text(ids).text_embeds

  def project_text(self, text_embeds: jax.Array) -> jax.Array:
    """(..., E) CLIP text embeddings -> (..., D) in the DINOv2 space (not normalized)."""
    return self.projection(text_embeds)

  def __call__(self, images: jax.Array, ids: jax.Array) -> tuple[ImageFeatures, jax.Array]:
    return self.encode_image(images), self.project_text(self.encode_text(ids))


def build_model(config: ml_collections.ConfigDict | dict) -> Talk2Dino:
  """Builds Talk2Dino from a `config.model` group.

  Keys: `dinov2` (hub name), `dinov2_overrides` (DinoV2 fields, e.g. tiny widths),
  `clip_text` (name), `clip_text_overrides`, `embed_dim` (projection width, must equal the
  DINOv2 width), `num_hidden_layers`, `activation`, `attention_scale`, `dtype` ("float32" or
  "bfloat16": backbone compute dtype).
  """
  cfg = dict(config)
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(cfg.get("dtype", "float32"))
  if dtype is None:
    raise ValueError(f"model.dtype must be 'float32' or 'bfloat16', got {cfg.get('dtype')!r}")
  vision = dinov2(cfg["dinov2"], dtype=dtype, **dict(cfg.get("dinov2_overrides", {}) or {}))
  text = clip_text(cfg.get("clip_text", "clip_vitb16_text"), dtype=dtype,
                   **dict(cfg.get("clip_text_overrides", {}) or {}))
  embed_dim = int(cfg.get("embed_dim", vision.embed_dim))
  if embed_dim != vision.embed_dim:
    raise ValueError(f"model.embed_dim ({embed_dim}) must equal the DINOv2 width ({vision.embed_dim})")
  projection = TextProjection(embed_dim=embed_dim, num_hidden_layers=int(cfg.get("num_hidden_layers", 1)),
                              activation=str(cfg.get("activation", "tanh")))
  return Talk2Dino(dinov2=vision, clip_text=text, projection=projection,
                   attention_scale=float(cfg.get("attention_scale", REFERENCE_ATTENTION_SCALE)))


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _init(model: Talk2Dino, rng: jax.Array, image_size: int, text_length: int):
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  ids = jnp.zeros((1, text_length), jnp.int32)
  return model.init(rng, images, ids)["params"]


def init_params(model: Talk2Dino, rng: jax.Array, image_size: int = 28, text_length: int = 8) -> dict[str, Any]:
  """Random parameters of every part (small dummy inputs; shapes do not depend on them)."""
  return _init(model, rng, image_size, text_length)


__all__ = ["Talk2Dino", "ImageFeatures", "build_model", "init_params", "normalize_images"]
