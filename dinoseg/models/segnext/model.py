"""SegNext: interactive segmentation with a plain ViT, dense prompt maps and sax fusion blocks.

An exact port of uncbiag/SegNext `PlainVitModel` (self-attention fusion), split into the two
entry points an interactive tool needs:

- `embed_image(images, image_hw)` runs once per image: ImageNet normalization, the stretch of
  the valid (H, W) region to `image_size` x `image_size` (aspect ratio ignored, as the
  reference's inference `preprocess`), and the ViT (window + global blocks) ->
  (B, g, g, D) features, g = image_size / 16.
- `predict(features, prompts, prev_mask, original_hw)` runs per interaction: the dense prompt
  map [previous-mask probability resized to the model frame, positive disks, negative disks]
  -> its own 16x16 patch embedding (`visual_prompts_encoder`) added to the image features ->
  `fusion_depth` global ViT blocks (LayerNorm eps 1e-5; sax1 = 1, sax2 = 2) -> SimpleFPN ->
  SegFormer head (stride-4 logits) -> bilinear align_corners=True to the model frame ->
  bilinear align_corners=False to the original (H, W), written top-left on a fixed canvas.
  Several prompt sets for one image are a batch: features (1, ...) broadcast over P prompts.

Beyond the released code: with `extra_prompts=True` a second, bias-free patch embedding
(`extra_prompts_encoder`) of the [box, positive scribble, negative scribble] maps is added to
the prompt embedding. It is zero-initialized when released (click-only) weights are imported,
so their outputs are unchanged (see convert.py and docs/segnext.md).

Layouts: images NHWC float in [0, 1] (the reference's `ToTensor` scale) on a canvas with valid
(H, W) = `image_hw`; masks and logits (P, Hc, Wc); prompts as in prompts.py.
"""
import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinoseg.backbones.vit import PlainViT, VitBlock
from dinoseg.models.segnext import prompts as prompt_lib
from dinoseg.models.segnext import resize
from dinoseg.models.segnext.head import SegmentationHead
from dinoseg.models.segnext.neck import PatchConv, SimpleFPN
from dinoseg.ops import interpolate, pixels

FUSION_NORM_EPS = 1e-5  # torch's LayerNorm default in the fusion blocks (the backbone uses 1e-6)


class PromptPatchEmbed(nn.Module):
  """The prompt maps' 16x16 stride-16 patch embedding with bias (`proj`, the reference `PatchEmbed`).

  Same parameters as `dinoseg.backbones.vit.PatchEmbed` (`proj/kernel` (p, p, Cin, D), `proj/bias`),
  computed as a patchify + matmul (`PatchConv`), which is faster than XLA CPU's convolution on
  the per-click path: (P, S, S, Cin) -> (P, S/p, S/p, D).
  """
  patch_size: int = 16
  embed_dim: int = 768
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, maps: jax.Array) -> jax.Array:
    return PatchConv(self.embed_dim, self.patch_size, kernel_init=nn.initializers.xavier_uniform(),
                     dtype=self.dtype, name="proj")(maps)


class SegNext(nn.Module):
  """SegNext model (see the module docstring).

  Attributes:
    image_size: side of the square model frame (1024).
    patch_size, embed_dim, depth, num_heads, mlp_ratio: the ViT (ViT-B/16: 16, 768, 12, 12, 4).
    global_atten_freq: every f-th ViT block (and the last) attends globally (3).
    window_size_px: the reference's window size in pixels (224 -> 4x4 windows at 1024).
    fusion_depth: number of fusion blocks (sax1 = 1, sax2 = 2).
    neck_dims: SimpleFPN output widths.
    head_channels: SegFormer head width (256).
    dropout_rate: head Dropout2d rate (0.1, training only).
    norm_radius: click disk radius in model-frame pixels (5).
    extra_prompts: add the box / scribble channels (`extra_prompts_encoder`).
    scribble_radius: scribble brush radius in model-frame pixels.
    pixel_mean, pixel_std: normalization on the [0, 1] scale.
    dtype: compute dtype (float32; bfloat16 as a config switch). Params stay float32.
  """
  image_size: int = 1024
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  global_atten_freq: int = 3
  window_size_px: int = 224
  fusion_depth: int = 2
  neck_dims: Sequence[int] = (128, 256, 512, 1024)
  head_channels: int = 256
  dropout_rate: float = 0.1
  norm_radius: float = 5.0
  extra_prompts: bool = True
  scribble_radius: float = 3.0
  pixel_mean: Sequence[float] = pixels.IMAGENET_MEAN
  pixel_std: Sequence[float] = pixels.IMAGENET_STD
  dtype: Any = jnp.float32

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  def make_backbone(self, **overrides) -> PlainViT:
    """The image encoder (`dinoseg.backbones.vit.PlainViT`) with this model's settings."""
    kwargs = dict(img_size=(self.image_size, self.image_size), patch_size=self.patch_size,
                  embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                  global_atten_freq=self.global_atten_freq, window_size_px=self.window_size_px, dtype=self.dtype)
    return PlainViT(**{**kwargs, **overrides})

  def setup(self):
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
    if self.fusion_depth < 0:
      raise ValueError(f"fusion_depth must be >= 0, got {self.fusion_depth}")
    self.backbone = self.make_backbone()
    self.visual_prompts_encoder = PromptPatchEmbed(self.patch_size, self.embed_dim, dtype=self.dtype)
    if self.extra_prompts:
      p = self.patch_size
      self.extra_prompts_encoder = PatchConv(self.embed_dim, p, use_bias=False, dtype=self.dtype,
                                             kernel_init=nn.initializers.zeros)
    self.fusion_blocks = [VitBlock(self.num_heads, self.mlp_ratio, True, FUSION_NORM_EPS, dtype=self.dtype,
                                   name=f"fusion_blocks_{i}") for i in range(self.fusion_depth)]
    self.neck = SimpleFPN(tuple(self.neck_dims), dtype=self.dtype)
    self.head = SegmentationHead(self.head_channels, 1, self.dropout_rate, dtype=self.dtype)

  # ---------------------------------------------------------------- per image
  def preprocess(self, images: jax.Array, image_hw: jax.Array) -> jax.Array:
    """(B, Hc, Wc, 3) [0, 1] images -> (B, S, S, 3) normalized, the valid region stretched to S x S."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must have shape (B, H, W, 3), got {images.shape}")
    if image_hw.shape != (images.shape[0], 2):
      raise ValueError(f"image_hw must have shape ({images.shape[0]}, 2), got {image_hw.shape}")
    x = pixels.normalize(images, self.pixel_mean, self.pixel_std)
    return resize.to_model_frame(x, image_hw, self.image_size)

  def embed_image(self, images: jax.Array, image_hw: jax.Array) -> jax.Array:
    """Image features, computed once per image.

    Args:
      images: (B, Hc, Wc, 3) float in [0, 1], each image top-left on the canvas.
      image_hw: (B, 2) int32 valid (H, W) of each image.
    Returns:
      (B, g, g, D) features (reference `get_image_feats`, NHWC).
    """
    return self.backbone(self.preprocess(images, image_hw).astype(self.dtype))

  # ---------------------------------------------------------------- per click
  def prompt_maps(self, prompts: prompt_lib.Prompts, prev_mask: jax.Array, original_hw: jax.Array):
    """Dense prompt maps in the model frame.

    Returns:
      clicks (P, S, S, 3) [prev-mask probability, positive disks, negative disks] and
      extras (P, S, S, 3) [box, positive scribble, negative scribble] (None without extra_prompts).
    """
    s = self.image_size
    prev = resize.to_model_frame(prev_mask.astype(jnp.float32)[..., None], original_hw, s)
    disks = prompt_lib.click_maps(prompts.points, original_hw, s, self.norm_radius)
    clicks = jnp.concatenate([prev, disks], -1)
    extras = prompt_lib.extra_maps(prompts, original_hw, s, self.scribble_radius) if self.extra_prompts else None
    return clicks, extras

  def embed_prompts(self, prompts: prompt_lib.Prompts, prev_mask: jax.Array, original_hw: jax.Array) -> jax.Array:
    """(P, g, g, D) prompt features (reference `get_prompt_feats`, plus the extra channels)."""
    clicks, extras = self.prompt_maps(prompts, prev_mask, original_hw)
    feats = self.visual_prompts_encoder(clicks.astype(self.dtype))
    if extras is not None:
      # Click-only prompt sets (all extra maps zero) skip the bias-free extra encoder: its output
      # would be exactly zero. Static shapes either way; on CPU only the taken branch runs.
      # (`nn.cond` cannot create parameters, so `init` calls the encoder directly.)
      extras = extras.astype(self.dtype)
      if self.is_initializing():
        feats = _add_extra_prompts(self, feats, extras)
      else:
        feats = nn.cond(jnp.any(extras != 0), _add_extra_prompts, _keep_features, self, feats, extras)
    return feats

  def decode(self, features: jax.Array, prompt_features: jax.Array, deterministic: bool = True) -> jax.Array:
    """Fusion + neck + head: (B|1, g, g, D) and (P, g, g, D) -> (P, S/4, S/4) stride-4 logits."""
    p = prompt_features.shape[0]
    if features.shape[0] not in (1, p):
      raise ValueError(f"features batch {features.shape[0]} must be 1 or the number of prompt sets {p}")
    x = features.astype(self.dtype) + prompt_features
    _, gh, gw, d = x.shape
    tokens = x.reshape(p, gh * gw, d)
    for block in self.fusion_blocks:
      tokens = block(tokens)
    x = tokens.reshape(p, gh, gw, d)
    logits = self.head(self.neck(x), deterministic=deterministic)
    return logits[..., 0].astype(jnp.float32)

  def predict(self, features: jax.Array, prompts: prompt_lib.Prompts, prev_mask: jax.Array,
              original_hw: jax.Array, *, canvas_hw: tuple[int, int] | None = None,
              deterministic: bool = True) -> jax.Array:
    """Mask logits for P prompt sets.

    Args:
      features: (P, g, g, D) or (1, g, g, D) from `embed_image` (broadcast over prompts).
      prompts: `Prompts` with leading dimension P, coordinates in original pixels.
      prev_mask: (P, Hc, Wc) previous mask probability (zeros before the first click), valid
        region top-left.
      original_hw: (P, 2) int32 original (H, W).
      canvas_hw: static output canvas (default: prev_mask's).
      deterministic: False enables the head's Dropout2d (training; needs a "dropout" RNG).
    Returns:
      (P, Hc, Wc) float32 logits, the (H, W) region top-left, zeros elsewhere.
    """
    if prev_mask.ndim != 3 or prev_mask.shape[0] != prompts.batch_size:
      raise ValueError(f"prev_mask must have shape ({prompts.batch_size}, H, W), got {prev_mask.shape}")
    if original_hw.shape != (prompts.batch_size, 2):
      raise ValueError(f"original_hw must have shape ({prompts.batch_size}, 2), got {original_hw.shape}")
    if features.shape[0] not in (1, prompts.batch_size):
      raise ValueError(f"features batch {features.shape[0]} must be 1 or the number of prompt sets "
                       f"{prompts.batch_size}")
    canvas_hw = tuple(prev_mask.shape[1:3]) if canvas_hw is None else tuple(canvas_hw)
    prompt_features = self.embed_prompts(prompts, prev_mask, original_hw)
    logits = self.decode(features, prompt_features, deterministic)
    s = self.image_size
    logits = interpolate(logits[..., None], (s, s), mode="bilinear", align_corners=True)
    return resize.to_original_frame(logits, original_hw, canvas_hw)[..., 0]

  def __call__(self, images: jax.Array, image_hw: jax.Array, prompts: prompt_lib.Prompts,
               prev_mask: jax.Array, deterministic: bool = True) -> jax.Array:
    """embed_image + predict on matching batches (used by `init` and training)."""
    features = self.embed_image(images, image_hw)
    return self.predict(features, prompts, prev_mask, image_hw, deterministic=deterministic)


def _add_extra_prompts(model: SegNext, feats: jax.Array, extras: jax.Array) -> jax.Array:
  """(P, g, g, D) prompt features + the extra encoder of (P, S, S, 3) extra maps."""
  return feats + model.extra_prompts_encoder(extras)


def _keep_features(model: SegNext, feats: jax.Array, extras: jax.Array) -> jax.Array:
  del model, extras
  return feats


def build_segnext(model_config) -> SegNext:
  """SegNext from a `config.model` ConfigDict: the SegNext attributes, plus `name` (the converter name,
  not a module field). Sequences are made tuples, `dtype` may be a string."""
  kwargs = {k: v for k, v in dict(model_config).items() if k != "name"}
  for key, value in kwargs.items():
    if isinstance(value, list):
      kwargs[key] = tuple(value)
  if isinstance(kwargs.get("dtype"), str):
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(SegNext)})
  if unknown:
    raise ValueError(f"config.model has fields SegNext does not know: {unknown}")
  return SegNext(**kwargs)
