"""ToySegmenter weights <-> a PyTorch state dict (converter "toy_segmenter").

The torch layout is that of the equivalent module (NCHW convs, nn.LayerNorm over channels,
detectron2 FrozenBatchNorm2d buffers):

| torch key | shape | Flax variable |
|---|---|---|
| `backbone.conv1.weight` / `.bias` | (C, 3, 3, 3) / (C,) | `params/backbone/conv1/kernel` (3, 3, 3, C) / `bias` |
| `backbone.norm1.{weight,bias,running_mean,running_var}` | (C,) | `frozen_bn/backbone/norm1/...` |
| `backbone.conv2.weight` / `.bias` | (C, C, 3, 3) / (C,) | `params/backbone/conv2/...` |
| `backbone.norm2.weight` / `.bias` | (C,) | `params/backbone/norm2/scale` / `bias` |
| `pos_embed` | (1, C, H, W) | `params/pos_embed` (H, W, C) |
| `classifier.weight` / `.bias` | (K, C, 1, 1) / (K,) | `params/classifier/kernel` (1, 1, C, K) / `bias` |
"""
import numpy as np

from dinoseg.convert.keymap import CONV, KeyMap, Layout, one
from dinoseg.convert.registry import ModelConverter, register

# torch (1, C, H, W) <-> Flax (H, W, C).
NCHW_EMBED = Layout("nchw_embed", lambda a: np.transpose(a[0], (1, 2, 0)), lambda a: np.transpose(a, (2, 0, 1))[None])


def toy_keymap() -> KeyMap:
  rules = []
  for conv in ("conv1", "conv2"):
    rules += [one(f"backbone.{conv}.weight", ("params", "backbone", conv, "kernel"), CONV),
              one(f"backbone.{conv}.bias", ("params", "backbone", conv, "bias"))]
  rules += [one(f"backbone.norm1.{name}", ("frozen_bn", "backbone", "norm1", name))
            for name in ("weight", "bias", "running_mean", "running_var")]
  rules += [one("backbone.norm2.weight", ("params", "backbone", "norm2", "scale")),
            one("backbone.norm2.bias", ("params", "backbone", "norm2", "bias")),
            one("pos_embed", ("params", "pos_embed"), NCHW_EMBED),
            one("classifier.weight", ("params", "classifier", "kernel"), CONV),
            one("classifier.bias", ("params", "classifier", "bias"))]
  return KeyMap(rules, ignore=[r"\.num_batches_tracked$"])


CONVERTER = register(ModelConverter(
    name="toy_segmenter", to_flax=lambda state: toy_keymap().to_flax(state),
    to_torch=lambda variables: toy_keymap().to_torch(variables), variables=True,
    description="the toy segmentation example of the trainer (dinoseg/models/toy)"))

__all__ = ["toy_keymap", "CONVERTER", "NCHW_EMBED"]
