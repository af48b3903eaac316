"""Backbone registry: name -> Flax module constructor.

Every backbone family lives in its own module and exposes
  * a variants dict `{name: constructor keyword arguments}` (e.g. `RESNET_VARIANTS`), and
  * a factory `factory(name, **overrides) -> nn.Module` that raises ValueError on unknown names.

A family is registered with ONE line in `BACKBONE_FAMILIES` below: (module, variants attribute,
factory attribute). Modules are imported lazily, the first time a name is looked up, so importing
`dinoseg.backbones` stays cheap.

Usage:
  from dinoseg import backbones
  model = backbones.build("resnet50", freeze_at=2)  # an nn.Module
  backbones.names()  # every registered name

Systems normalize images (mean/std) themselves; backbones take already-normalized NHWC float images.
"""
import functools
import importlib
from typing import Any

# (module, variants dict attribute, factory attribute). One line per family.
BACKBONE_FAMILIES: list[tuple[str, str, str]] = [
    ("dinoseg.backbones.resnet", "RESNET_VARIANTS", "resnet"),
    ("dinoseg.backbones.swin", "SWIN_VARIANTS", "swin"),
    ("dinoseg.backbones.vit", "VIT_VARIANTS", "vit"),
    ("dinoseg.backbones.dinov2", "DINOV2_VARIANTS", "dinov2"),
    ("dinoseg.backbones.clip_text", "CLIP_TEXT_VARIANTS", "clip_text"),
]


@functools.lru_cache(maxsize=None)
def _families() -> dict[str, tuple[Any, dict]]:
  """Imports every family; returns {backbone name: (factory, default kwargs)}."""
  table = {}
  for module_name, variants_attr, factory_attr in BACKBONE_FAMILIES:
    module = importlib.import_module(module_name)
    factory = getattr(module, factory_attr)
    for name, kwargs in getattr(module, variants_attr).items():
      if name in table:
        raise ValueError(f"backbone name {name!r} is registered twice (second time by {module_name})")
      table[name] = (factory, kwargs)
  return table


def names() -> list[str]:
  """All registered backbone names, sorted."""
  return sorted(_families())


def variant_kwargs(name: str) -> dict[str, Any]:
  """The constructor keyword arguments registered under `name` (a copy)."""
  table = _families()
  if name not in table:
    raise ValueError(f"unknown backbone name {name!r}; known: {', '.join(sorted(table))}")
  return dict(table[name][1])


def build(name: str, **overrides):
  """Builds the backbone registered under `name`; `overrides` replace module fields."""
  table = _families()
  if name not in table:
    raise ValueError(f"unknown backbone name {name!r}; known: {', '.join(sorted(table))}")
  return table[name][0](name, **overrides)
