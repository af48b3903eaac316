"""Registry of per-model weight converters (PyTorch state dict <-> Flax params).

Each model family registers a `ModelConverter` under a name (e.g. "resnet50",
"dinov2_vitb14_reg", "maskdino_r50_instance") in `CONVERTERS` (a `dinoseg.registry.Registry`).
`dinoseg convert --model NAME`, `config.init` converter names and `Task.weights_converter` (by
`config.model.name`) use this registry; nothing else dispatches on model names.

Conventions:
- torch side: a flat dict {key: np.ndarray} with the reference checkpoint's key names.
- Flax side: the nested `params` dict (plain dicts of np.ndarray / jax.Array), as
  `model.init(...)["params"]` returns it; other Flax collections (e.g. frozen batch-norm
  statistics) are included under their collection name only when the model has them,
  in which case `to_flax` returns {"params": ..., "<collection>": ...} and sets
  `variables=True`.
- Both directions must fail loudly on missing or unexpected keys and wrong shapes, never load
  partially, with `dinoseg.convert.keymap.ConversionError` (a UserError: the data does not fit).
- `abstract`, when given, returns the model's abstract variables in the converter's Flax layout
  (params, or variables when `variables`), e.g. `jax.eval_shape` of the model's init; `dinoseg
  convert` then checks every converted shape against it (`keymap.check_shapes`).
"""
import dataclasses
from typing import Callable, Mapping

import numpy as np

from dinoseg.registry import Registry

StateDict = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class ModelConverter:
  """Converts one model family's weights in both directions.

  Attributes:
    name: registry key.
    to_flax: torch state dict -> Flax params (or variables, see `variables`).
    to_torch: Flax params (or variables) -> torch state dict with the reference key names
      and shapes (tied tensors written under every key the reference has).
    variables: True if the Flax side is a full variables dict ({"params": ..., ...}).
    description: one line for `dinoseg convert --list`.
    abstract: optional; () -> the model's abstract Flax tree (leaves with .shape / .dtype) in the
      layout `to_flax` returns, for shape checks.
  """
  name: str
  to_flax: Callable[[Mapping[str, np.ndarray]], dict]
  to_torch: Callable[[Mapping], StateDict]
  variables: bool = False
  description: str = ""
  abstract: Callable[[], Mapping] | None = None


# Modules that register converters when imported (on the first lookup). Each family appends its module here.
BUILTIN_CONVERTER_MODULES: list[str] = [
    "dinoseg.convert.dinov2_clip",  # DINOv2, CLIP text
    "dinoseg.models.talk2dino.convert",  # Talk2DINO projection
    "dinoseg.models.segnext.convert",  # SegNext ViT-B sax1/sax2
    "dinoseg.convert.backbones",  # ResNet, Swin, SegNext ViT
    "dinoseg.models.toy.convert",  # the trainer's toy example
    "dinoseg.models.maskdino.convert",  # Mask DINO (all released layouts)
    "dinoseg.models.dinov.convert",  # DINOv Swin-T / Swin-L
    "dinoseg.models.ov2seg.convert",  # OV2Seg R50 / Swin-B
]
CONVERTERS = Registry("model", hint=" for conversion", modules=BUILTIN_CONVERTER_MODULES)
get = CONVERTERS.get  # the converter registered under a name (UserValueError naming the known ones)
names = CONVERTERS.names


def register(converter: ModelConverter) -> ModelConverter:
  """Registers `converter` under its `name` (ValueError when the name is taken)."""
  return CONVERTERS.register(converter.name, converter)
