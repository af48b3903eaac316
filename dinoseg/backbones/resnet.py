"""ResNet-50/101 as detectron2's `build_resnet_backbone` builds them (bottleneck blocks, FrozenBN).

Structure (detectron2 `modeling/backbone/resnet.py`, the Mask DINO R50 setting):
- Stem: conv 7x7 s2 p3 (no bias) -> FrozenBN -> ReLU -> max-pool 3x3 s2 p1.
- Stages res2..res5 of bottleneck blocks (1x1 -> 3x3 -> 1x1, each conv bias-free + FrozenBN,
  ReLU after the first two and after the residual sum). The first block of every stage has
  a projection shortcut (1x1 conv + FrozenBN) because its channels change; it carries the
  stage stride (1 for res2, 2 otherwise), on the 3x3 conv (`stride_in_1x1=False`, torchvision
  style, Mask DINO) or on the first 1x1 conv (`stride_in_1x1=True`, MSRA style).
- Outputs res2..res5: 256/512/1024/2048 channels at strides 4/8/16/32 (ResNet-50/101).
- FrozenBN (eps 1e-5): statistics in the non-trainable collection "frozen_bn" (see
  `dinoseg.backbones.layers.FrozenBatchNorm`); conv kernels in "params".

`freeze_at` follows detectron2: 1 freezes the stem, k >= 2 also freezes res2..res{k}. Here it is
`jax.lax.stop_gradient` on the output of the last frozen stage, which gives frozen parameters a
zero gradient (and skips their backward pass); `frozen_modules(freeze_at)` names their top-level
modules so optimizers can exclude them (masking matters with weight decay).

Input: NHWC float images, already normalized by the system (detectron2 subtracts
PIXEL_MEAN and divides by PIXEL_STD before the backbone; the backbone does not).

Variables (Flax paths mirror the torch keys, `.` -> `/`, block `resK.i` -> `resK_i`):
  params/stem/conv1/kernel (7, 7, 3, 64)          <- backbone.stem.conv1.weight (64, 3, 7, 7)
  frozen_bn/stem/conv1/norm/{weight,bias,running_mean,running_var}
  params/res2_0/{conv1,conv2,conv3,shortcut}/kernel, frozen_bn/res2_0/conv1/norm/...
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dinoseg.backbones.layers import FrozenBatchNorm
from dinoseg.ops.conv import conv_general_dilated

STAGE_NAMES = ("res2", "res3", "res4", "res5")
STAGE_STRIDES = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}

# Name -> ResNet keyword arguments (detectron2 defaults otherwise: 64 stem channels, 256 res2
# channels, 64 bottleneck channels, stride on the 3x3 conv, FrozenBN).
RESNET_VARIANTS: dict[str, dict[str, Any]] = {
    "resnet50": dict(stage_blocks=(3, 4, 6, 3)),
    "resnet101": dict(stage_blocks=(3, 4, 23, 3)),
}

# detectron2's c2_msra_fill: kaiming normal, fan_out, ReLU gain.
_MSRA_FILL = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvNorm(nn.Module):
  """detectron2 `Conv2d(..., bias=False, norm=FrozenBN)`: a bias-free conv followed by FrozenBN.

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    stride, padding, dilation, groups: as torch.nn.Conv2d (symmetric padding).
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  groups: int = 1
  norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, H, W, Cin) -> (B, H', W', features)."""
    cin = x.shape[-1]
    if cin % self.groups:
      raise ValueError(f"input channels {cin} are not divisible by groups={self.groups}")
    k = self.kernel_size
    kernel = self.param("kernel", _MSRA_FILL, (k, k, cin // self.groups, self.features), jnp.float32)
    y = conv_general_dilated(  # XLA's op, with a CPU-fast kernel gradient (dinoseg/ops/conv.py)
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(self.stride,) * 2,
        padding=((self.padding, self.padding),) * 2, rhs_dilation=(self.dilation,) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)
    return FrozenBatchNorm(eps=self.norm_eps, dtype=self.dtype, name="norm")(y)


class BasicStem(nn.Module):
  """detectron2 BasicStem: conv1 (7x7 s2 p3) + FrozenBN -> ReLU -> max-pool 3x3 s2 p1."""
  channels: int = 64
  norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ConvNorm(self.channels, 7, stride=2, padding=3, norm_eps=self.norm_eps, dtype=self.dtype,
                 name="conv1")(x)
    x = nn.relu(x)
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class BottleneckBlock(nn.Module):
  """detectron2 BottleneckBlock (1x1 -> 3x3 -> 1x1 + shortcut), FrozenBN after each conv."""
  out_channels: int
  bottleneck_channels: int
  stride: int = 1
  num_groups: int = 1
  stride_in_1x1: bool = False
  dilation: int = 1
  norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, H, W, Cin) -> (B, H/stride, W/stride, out_channels)."""
    conv = lambda *a, **kw: ConvNorm(*a, norm_eps=self.norm_eps, dtype=self.dtype, **kw)  # noqa: E731
    stride_1x1, stride_3x3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    out = nn.relu(conv(self.bottleneck_channels, 1, stride=stride_1x1, name="conv1")(x))
    out = nn.relu(conv(self.bottleneck_channels, 3, stride=stride_3x3, padding=self.dilation,
                       dilation=self.dilation, groups=self.num_groups, name="conv2")(out))
    out = conv(self.out_channels, 1, name="conv3")(out)
    if x.shape[-1] != self.out_channels:
      shortcut = conv(self.out_channels, 1, stride=self.stride, name="shortcut")(x)
    else:
      shortcut = x.astype(out.dtype)
    return nn.relu(out + shortcut)


def frozen_modules(freeze_at: int, stage_blocks: Sequence[int] = (3, 4, 6, 3)) -> tuple[str, ...]:
  """Top-level module names whose parameters `freeze_at` freezes (detectron2 semantics).

  Returns:
    e.g. ("stem", "res2_0", "res2_1", "res2_2") for freeze_at=2 on ResNet-50.
  """
  names = ["stem"] if freeze_at >= 1 else []
  for idx, (stage, n) in enumerate(zip(STAGE_NAMES, stage_blocks), start=2):
    if freeze_at >= idx:
      names += [f"{stage}_{i}" for i in range(n)]
  return tuple(names)


class ResNet(nn.Module):
  """detectron2 ResNet (bottleneck variant) returning a dict of NHWC feature maps.

  Attributes:
    stage_blocks: blocks per stage res2..res5 ((3, 4, 6, 3) = R50, (3, 4, 23, 3) = R101).
    stem_channels: STEM_OUT_CHANNELS (64).
    res2_channels: RES2_OUT_CHANNELS (256); doubles every stage.
    bottleneck_channels: NUM_GROUPS * WIDTH_PER_GROUP (64); doubles every stage.
    num_groups: groups of the 3x3 convs (1; ResNeXt > 1).
    stride_in_1x1: put the stage stride on the first 1x1 conv (MSRA) instead of the 3x3 (False).
    res5_dilation: 1 or 2 (2 keeps res5 at stride 16).
    freeze_at: 0 = nothing frozen, 1 = stem, k = stem + res2..res{k} (see module docstring).
    out_features: which of "stem", "res2".."res5" to return; stages after the last one
      requested are not built (as detectron2).
    norm_eps: FrozenBN eps (1e-5).
    dtype: compute dtype (params and statistics stay float32).
  """
  stage_blocks: Sequence[int] = (3, 4, 6, 3)
  stem_channels: int = 64
  res2_channels: int = 256
  bottleneck_channels: int = 64
  num_groups: int = 1
  stride_in_1x1: bool = False
  res5_dilation: int = 1
  freeze_at: int = 0
  out_features: Sequence[str] = STAGE_NAMES
  norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  def _check(self) -> None:
    if len(self.stage_blocks) != 4 or min(self.stage_blocks) < 1:
      raise ValueError(f"stage_blocks must be 4 positive counts, got {self.stage_blocks}")
    if self.res5_dilation not in (1, 2):
      raise ValueError(f"res5_dilation must be 1 or 2, got {self.res5_dilation}")
    if not 0 <= self.freeze_at <= 5:
      raise ValueError(f"freeze_at must be in 0..5, got {self.freeze_at}")
    unknown = set(self.out_features) - {"stem", *STAGE_NAMES}
    if unknown or not self.out_features:
      raise ValueError(f"out_features must be a non-empty subset of stem, res2..res5, got {self.out_features}")

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Runs the backbone.

    Args:
      images: (B, H, W, 3) normalized images (any H, W; strides use floor division as torch).
    Returns:
      {name: (B, H/stride, W/stride, C)} for `out_features`, e.g. res2 (B, H/4, W/4, 256).
    """
    self._check()
    if images.ndim != 4:
      raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
    outputs = {}
    x = BasicStem(self.stem_channels, self.norm_eps, self.dtype, name="stem")(images)
    if self.freeze_at >= 1:
      x = jax.lax.stop_gradient(x)
    if "stem" in self.out_features:
      outputs["stem"] = x
    last = max({"stem": 1, "res2": 2, "res3": 3, "res4": 4, "res5": 5}[f] for f in self.out_features)
    out_ch, bott_ch = self.res2_channels, self.bottleneck_channels
    for idx, (stage, num_blocks) in enumerate(zip(STAGE_NAMES, self.stage_blocks), start=2):
      if idx > last:
        break
      dilation = self.res5_dilation if stage == "res5" else 1
      first_stride = 1 if idx == 2 or (stage == "res5" and dilation == 2) else 2
      for i in range(num_blocks):
        x = BottleneckBlock(out_ch, bott_ch, stride=first_stride if i == 0 else 1, num_groups=self.num_groups,
                            stride_in_1x1=self.stride_in_1x1, dilation=dilation, norm_eps=self.norm_eps,
                            dtype=self.dtype, name=f"{stage}_{i}")(x)
      if self.freeze_at >= idx:
        x = jax.lax.stop_gradient(x)
      if stage in self.out_features:
        outputs[stage] = x
      out_ch, bott_ch = out_ch * 2, bott_ch * 2
    return outputs


def resnet(name: str = "resnet50", **overrides) -> ResNet:
  """Builds a named ResNet ("resnet50", "resnet101"); `overrides` set ResNet fields."""
  if name not in RESNET_VARIANTS:
    raise ValueError(f"name must be one of {sorted(RESNET_VARIANTS)}, got {name!r}")
  return ResNet(**{**RESNET_VARIANTS[name], **overrides})
