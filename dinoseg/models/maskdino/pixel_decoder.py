"""Mask DINO's pixel decoder (`MaskDINOEncoder`): a deformable-attention encoder over multi-scale
backbone maps and the stride-4 mask features.

Levels (reference `maskdino_encoder.py`, see docs/maskdino.md):
- Encoder inputs: the backbone maps named in `transformer_in_features` (e.g. res3..res5), each
  projected by `input_proj[i]` = 1x1 conv + GroupNorm(32). With `feature_order="low2high"`
  `input_proj[0]` is the finest input and the encoder's levels run fine -> coarse
  (R50: [1/8, 1/16, 1/32, 1/64]); with "high2low" `input_proj[0]` is the coarsest and the
  levels run coarse -> fine ([1/32, 1/16, 1/8]).
- `total_num_feature_levels - len(transformer_in_features)` extra levels: 3x3 stride-2 conv + GN,
  the first on the widest backbone map (res5), the next ones on the previous extra level; they
  are appended after (low2high) or before (high2low) the backbone levels, in reverse creation order.
- Positions: normalized sine embedding (128 + 128 channels, y first) of each level's own grid,
  plus a learned `level_embed` row. No padding mask is used (as the reference: every token of the
  padded canvas is valid), and reference points are the pixel centres of each level.
- 6 post-norm encoder layers: src = LN(src + MSDA(src + pos, ref, src)); src = LN(src + FFN(src)).

Mask features: `layer_1(adapter_1(res2) + bilinear_up(finest encoder level))`, then `mask_features`
(1x1 conv). Outputs are NHWC.
"""
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from dinoseg.models.maskdino.deformable_attention import MSDeformAttn
from dinoseg.models.maskdino.layers import ConvNorm, c2_xavier_fill, dense, relu, torch_layer_norm, xavier_uniform
from dinoseg.ops import interpolate, sine_position_embedding
from dinoseg.ops.conv import ConvGeneralDilated

FEATURE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
FEATURE_ORDERS = ("low2high", "high2low")


def feature_stride(name: str) -> int:
  if name not in FEATURE_STRIDES:
    raise ValueError(f"feature names must be res2..res5, got {name!r}")
  return FEATURE_STRIDES[name]


def encoder_reference_points(spatial_shapes: Sequence[tuple[int, int]]) -> np.ndarray:
  """(S, 2) pixel centres ((j + 0.5) / W_l, (i + 0.5) / H_l) of every level, float32, levels concatenated."""
  refs = []
  for h, w in spatial_shapes:
    ys = (np.arange(h, dtype=np.float32) + np.float32(0.5)) / np.float32(h)
    xs = (np.arange(w, dtype=np.float32) + np.float32(0.5)) / np.float32(w)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    refs.append(np.stack([xx.reshape(-1), yy.reshape(-1)], -1))
  return np.concatenate(refs, 0).astype(np.float32)


# The name of each encoder layer's deformable-attention output: the one value a rematerialised layer
# (MaskDINOEncoder.remat_ffn) keeps for the backward pass.
MSDA_OUTPUT = "pixel_decoder_msda_output"


class EncoderLayer(nn.Module):
  """Post-norm deformable encoder layer (`self_attn`, `norm1`, `linear1`, `linear2`, `norm2`)."""
  d_model: int = 256
  d_ffn: int = 1024
  n_levels: int = 4
  n_heads: int = 8
  n_points: int = 4
  msda_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, src, pos, reference_points, spatial_shapes):
    """src, pos (B, S, C); reference_points (B, S, L, 2) -> (B, S, C)."""
    attn = MSDeformAttn(self.d_model, self.n_levels, self.n_heads, self.n_points, impl=self.msda_impl,
                        dtype=self.dtype, name="self_attn")
    attended = checkpoint_name(attn(src + pos, reference_points, src, spatial_shapes), MSDA_OUTPUT)
    src = torch_layer_norm("norm1", self.dtype)(src + attended)
    hidden = relu(dense(self.d_ffn, self.d_model, "linear1", kernel_init=xavier_uniform, dtype=self.dtype)(src))
    src2 = dense(self.d_model, self.d_ffn, "linear2", kernel_init=xavier_uniform, dtype=self.dtype)(hidden)
    return torch_layer_norm("norm2", self.dtype)(src + src2)


class MaskDINOEncoder(nn.Module):
  """The pixel decoder.

  Attributes:
    transformer_in_features: backbone maps fed to the encoder, e.g. ("res3", "res4", "res5").
    total_num_feature_levels: encoder levels including the extra downsampled ones.
    feature_order: "low2high" or "high2low" (see the module docstring).
    conv_dim: encoder width (256); mask_dim: mask-feature channels (256).
    dim_feedforward: encoder FFN width; num_encoder_layers: 6; nheads: 8; n_points: 4.
    common_stride: stride of the mask features (4).
    msda_impl: deformable-attention kernel implementation.
    dtype: compute dtype (the reference runs the encoder in fp32).
    remat_ffn: recompute each encoder layer's FFN and norms in the backward pass, keeping only its deformable-
      attention output (the (B, S, dim_feedforward) FFN activations are not kept: 170 MiB per layer at 1024 px).
  """
  transformer_in_features: Sequence[str] = ("res3", "res4", "res5")
  total_num_feature_levels: int = 4
  feature_order: str = "low2high"
  conv_dim: int = 256
  mask_dim: int = 256
  dim_feedforward: int = 2048
  num_encoder_layers: int = 6
  nheads: int = 8
  n_points: int = 4
  common_stride: int = 4
  msda_impl: str = "auto"
  dtype: Any = jnp.float32
  remat_ffn: bool = False

  def _check(self, features: Mapping[str, jax.Array]):
    if self.feature_order not in FEATURE_ORDERS:
      raise ValueError(f"feature_order must be one of {FEATURE_ORDERS}, got {self.feature_order!r}")
    missing = [f for f in self.transformer_in_features if f not in features]
    if missing:
      raise ValueError(f"features lack {missing} (have {sorted(features)})")
    if self.total_num_feature_levels < len(self.transformer_in_features):
      raise ValueError(f"total_num_feature_levels ({self.total_num_feature_levels}) < number of encoder "
                       f"inputs ({len(self.transformer_in_features)})")

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array]):
    """Runs the pixel decoder.

    Args:
      features: {"res2": (B, H/4, W/4, C2), ..., "res5": (B, H/32, W/32, C5)} NHWC backbone maps.
    Returns:
      mask_features: (B, H/4, W/4, mask_dim).
      multi_scale: list of total_num_feature_levels maps (B, H_l, W_l, conv_dim), encoder order.
    """
    self._check(features)
    low2high = self.feature_order == "low2high"
    names = sorted(self.transformer_in_features, key=lambda f: -feature_stride(f) if low2high else feature_stride(f))
    channels = [features[f].shape[-1] for f in names]
    n_in = len(names)
    n_extra = self.total_num_feature_levels - n_in
    proj = lambda i, k, s, p: ConvNorm(self.conv_dim, k, stride=s, padding=p, norm="GN", conv_name="0",  # noqa: E731
                                       norm_name="1", dtype=self.dtype, name=f"input_proj_{i}")
    # Extra levels from the widest map (reference: `low_resolution_index`).
    extras = []
    if n_extra > 0:
      x = features[names[channels.index(max(channels))]].astype(jnp.float32)
      for k in range(n_extra):
        x = proj(n_in + k, 3, 2, 1)(x)
        extras.append(x)
    extras = extras[::-1]
    srcs = [proj(i, 1, 1, 0)(features[f].astype(jnp.float32)) for i, f in enumerate(names[::-1])]
    srcs = srcs + extras if low2high else extras + srcs
    spatial_shapes = tuple((int(s.shape[1]), int(s.shape[2])) for s in srcs)
    b = srcs[0].shape[0]
    n_levels = len(srcs)
    level_embed = self.param("level_embed", nn.initializers.normal(1.0), (n_levels, self.conv_dim), jnp.float32)
    src_flat, pos_flat = [], []
    for lvl, (src, (h, w)) in enumerate(zip(srcs, spatial_shapes)):
      pos = sine_position_embedding((h, w), num_feats=self.conv_dim // 2)  # (1, h, w, C)
      src_flat.append(src.reshape(b, h * w, self.conv_dim))
      pos_flat.append(pos.reshape(1, h * w, self.conv_dim) + level_embed[lvl][None, None])
    src = jnp.concatenate(src_flat, 1).astype(self.dtype)
    pos = jnp.broadcast_to(jnp.concatenate(pos_flat, 1), src.shape).astype(self.dtype)
    ref = jnp.asarray(encoder_reference_points(spatial_shapes))
    ref = jnp.broadcast_to(ref[None, :, None, :], (b, ref.shape[0], n_levels, 2))
    layer_cls = EncoderLayer
    if self.remat_ffn:  # keep only the attention output; the FFN (and the norms) are recomputed in the backward
      layer_cls = nn.remat(EncoderLayer, policy=jax.checkpoint_policies.save_only_these_names(MSDA_OUTPUT),
                           static_argnums=(4,))
    for i in range(self.num_encoder_layers):
      src = layer_cls(self.conv_dim, self.dim_feedforward, n_levels, self.nheads, self.n_points,
                      self.msda_impl, self.dtype, name=f"encoder_layers_{i}")(src, pos, ref, spatial_shapes)
    out, start = [], 0
    for h, w in spatial_shapes:
      out.append(src[:, start:start + h * w].reshape(b, h, w, self.conv_dim).astype(jnp.float32))
      start += h * w
    # FPN part: lateral inputs are the finest backbone maps (only res2 in every released config).
    in_names = sorted(features, key=feature_stride)
    min_stride = min(feature_stride(f) for f in self.transformer_in_features)
    num_fpn = max(int(np.log2(min_stride) - np.log2(self.common_stride)), 1)
    high_res_index = 0 if low2high else -1
    for pos_idx in reversed(range(num_fpn)):
      f = in_names[pos_idx]
      cur = ConvNorm(self.conv_dim, 1, use_bias=False, norm="GN", kernel_init=c2_xavier_fill, dtype=self.dtype,
                     name=f"adapter_{pos_idx + 1}")(features[f].astype(jnp.float32))
      up = interpolate(out[high_res_index], cur.shape[1:3], mode="bilinear")
      y = ConvNorm(self.conv_dim, 3, padding=1, use_bias=False, norm="GN", activation=nn.relu,
                   kernel_init=c2_xavier_fill, dtype=self.dtype, name=f"layer_{pos_idx + 1}")(cur + up)
      out.append(y.astype(jnp.float32))
    mask_features = nn.Conv(self.mask_dim, (1, 1), kernel_init=c2_xavier_fill, bias_init=nn.initializers.zeros,
                            dtype=self.dtype, param_dtype=jnp.float32, conv_general_dilated_cls=ConvGeneralDilated,
                            name="mask_features")(out[-1])
    return mask_features.astype(jnp.float32), out[:self.total_num_feature_levels]


__all__ = ["MaskDINOEncoder", "EncoderLayer", "encoder_reference_points", "FEATURE_STRIDES"]
