"""Makes the DINOv reference modeling code (UX-Decoder/DINOv, tested at 53bf20d) importable on a CPU-only
PyTorch without detectron2, fvcore, timm, omegaconf or the CUDA deformable-attention op.

Used by scripts/make_dinov_fixtures.py only (never by dinoseg). It reuses the detectron2 / fvcore /
timm stand-ins of scripts/maskdino_reference_standin.py (same behaviour, see that file) and adds:

- `omegaconf`: the names `dinov/utils/config.py` imports (`configurable` only tests
  `isinstance(cfg, dict)`, so plain nested dicts drive the reference's `from_config`).
- the `dinov`, `dinov.utils` and `dinov.modules` packages registered without running their
  `__init__` files (they pull in the meta-architecture, the data code, kornia and torchvision);
  `dinov.utils.configurable` and `dinov.modules.PositionEmbeddingSine` are taken from their own
  reference files. Everything under `dinov.body` (pixel decoder, decoders, head) is imported as is.
- the `.cuda()` / `.to("cuda")` calls of the reference stay on the CPU (as for Mask DINO).
"""
import importlib
import os
import sys
import types

import maskdino_reference_standin as md


def _install_runtime() -> None:
  """detectron2 / fvcore / timm / omegaconf stand-ins and the empty CUDA op module."""
  if "detectron2" in sys.modules and getattr(sys.modules["detectron2"], "_dinoseg_standin", False):
    return
  md._package("detectron2", _dinoseg_standin=True)
  md._module("detectron2.config", configurable=md.configurable, CfgNode=md.CfgNode)
  md._module("detectron2.layers", Conv2d=md.Conv2d, ShapeSpec=md.ShapeSpec, get_norm=md.get_norm, cat=md.cat)
  md._package("detectron2.modeling", SEM_SEG_HEADS_REGISTRY=md.SEM_SEG_HEADS_REGISTRY,
              META_ARCH_REGISTRY=md.META_ARCH_REGISTRY, BACKBONE_REGISTRY=md.BACKBONE_REGISTRY,
              Backbone=md.Backbone, ShapeSpec=md.ShapeSpec)
  md._package("fvcore")
  md._package("fvcore.nn")
  md._module("fvcore.nn.weight_init", c2_xavier_fill=md.c2_xavier_fill)
  sys.modules["fvcore.nn"].weight_init = sys.modules["fvcore.nn.weight_init"]
  md._package("timm")
  md._package("timm.models")
  md._module("timm.models.layers", DropPath=md.DropPath, to_2tuple=md.to_2tuple, trunc_normal_=md.trunc_normal_)
  md._module("MultiScaleDeformableAttention")  # empty: the reference falls back to its PyTorch core

  class _OmegaConfType:  # never instantiated: only the isinstance checks of `configurable` see it
    pass
  md._module("omegaconf", DictConfig=_OmegaConfType, ListConfig=_OmegaConfType, OmegaConf=_OmegaConfType)
  md._patch_cuda_calls()


def install(dinov_root: str) -> None:
  """Registers the stand-ins and the reference `dinov` packages (without their heavy __init__ files)."""
  _install_runtime()
  if "dinov.utils" in sys.modules:
    return
  root = os.path.join(os.path.abspath(dinov_root), "dinov")
  md._package("dinov", root)
  md._package("dinov.utils", os.path.join(root, "utils"))
  md._package("dinov.modules", os.path.join(root, "modules"))
  sys.modules["dinov.utils"].configurable = importlib.import_module("dinov.utils.config").configurable
  sys.modules["dinov.modules"].PositionEmbeddingSine = importlib.import_module(
      "dinov.modules.position_encoding").PositionEmbeddingSine


def import_reference():
  """Imports the reference modules (after `install`); returns them in a namespace."""
  names = {
      "head": "dinov.body.general_head",
      "encoder": "dinov.body.encoder.encoder_deform",
      "openset": "dinov.body.decoder.dinov_openset_decoder",
      "refer": "dinov.body.decoder.dinov_refer_decoder",
      "blocks": "dinov.body.transformer_blocks",
  }
  return types.SimpleNamespace(**{k: importlib.import_module(v) for k, v in names.items()})


__all__ = ["install", "import_reference"]
