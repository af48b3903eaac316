"""Makes the OV2Seg reference modeling code (haochenheheda/LVVIS, tested at cc3cdf4) importable on a CPU-only
PyTorch without detectron2, fvcore, timm or the CUDA deformable-attention op.

Used by scripts/make_ov2seg_fixtures.py only (never by dinoseg). It reuses the detectron2 / fvcore stand-ins of
scripts/maskdino_reference_standin.py (see that file for their behaviour) and registers the reference packages
`ov2seg`, `ov2seg.modeling`, `ov2seg.modeling.pixel_decoder` and `ov2seg.modeling.transformer_decoder` without
running their `__init__` files (those pull in the data, evaluation and video code, timm and the backbones).
The pixel decoder (`msdeformattn.py`, with its `ops` package: the empty `MultiScaleDeformableAttention` module
makes `MSDeformAttn` take the reference's `ms_deform_attn_core_pytorch` fallback), the masked-attention decoder
(`mask2former_transformer_decoder.py`) and the zero-shot classifier are then imported and run unchanged.
"""
import importlib
import os
import sys
import types

import maskdino_reference_standin as md


def _install_runtime() -> None:
  if "detectron2" in sys.modules and getattr(sys.modules["detectron2"], "_dinoseg_standin", False):
    return
  md._package("detectron2", _dinoseg_standin=True)
  md._module("detectron2.config", configurable=md.configurable, CfgNode=md.CfgNode)
  md._module("detectron2.layers", Conv2d=md.Conv2d, ShapeSpec=md.ShapeSpec, get_norm=md.get_norm, cat=md.cat,
             Linear=__import__("torch").nn.Linear)
  md._package("detectron2.modeling", SEM_SEG_HEADS_REGISTRY=md.SEM_SEG_HEADS_REGISTRY,
              META_ARCH_REGISTRY=md.META_ARCH_REGISTRY, BACKBONE_REGISTRY=md.BACKBONE_REGISTRY,
              Backbone=md.Backbone, ShapeSpec=md.ShapeSpec)
  md._package("detectron2.utils")
  md._module("detectron2.utils.registry", Registry=md.Registry)
  md._package("fvcore")
  md._package("fvcore.nn")
  md._module("fvcore.nn.weight_init", c2_xavier_fill=md.c2_xavier_fill)
  sys.modules["fvcore.nn"].weight_init = sys.modules["fvcore.nn.weight_init"]
  md._module("MultiScaleDeformableAttention")  # empty: the reference falls back to its PyTorch core
  md._patch_cuda_calls()


def install(lvvis_root: str) -> None:
  """Registers the stand-ins and the reference `ov2seg` packages (without their __init__ files)."""
  _install_runtime()
  if "ov2seg.modeling" in sys.modules:
    return
  root = os.path.join(os.path.abspath(lvvis_root), "ov2seg")
  for pkg in ("", ".modeling", ".modeling.pixel_decoder", ".modeling.transformer_decoder"):
    md._package("ov2seg" + pkg, os.path.join(root, *pkg.split(".")[1:]))


def import_reference():
  """Imports the reference modules (after `install`); returns them in a namespace."""
  names = {
      "pixel_decoder": "ov2seg.modeling.pixel_decoder.msdeformattn",
      "decoder": "ov2seg.modeling.transformer_decoder.mask2former_transformer_decoder",
      "classifier": "ov2seg.modeling.transformer_decoder.zero_shot_classifier",
      "msda": "ov2seg.modeling.pixel_decoder.ops.modules.ms_deform_attn",
  }
  return types.SimpleNamespace(**{k: importlib.import_module(v) for k, v in names.items()})


__all__ = ["install", "import_reference"]


def _nested_masks(tensor_list):
  """Stand-in for `ov2seg.utils.misc.nested_tensor_from_tensor_list` on 3-D tensors: zero-pads every tensor to the
  largest size of each dimension and stacks them; `.decompose()` returns (tensor, padding mask)."""
  import torch  # noqa: PLC0415
  shape = [max(int(t.shape[d]) for t in tensor_list) for d in range(tensor_list[0].dim())]
  out = torch.zeros([len(tensor_list)] + shape, dtype=tensor_list[0].dtype)
  pad = torch.ones([len(tensor_list)] + shape[1:], dtype=torch.bool)
  for i, t in enumerate(tensor_list):
    out[(i,) + tuple(slice(0, s) for s in t.shape)] = t
    pad[(i,) + tuple(slice(0, s) for s in t.shape[1:])] = False
  return types.SimpleNamespace(decompose=lambda: (out, pad))


def install_criterion(lvvis_root: str) -> None:
  """Additionally makes the reference criterion and matcher importable (`ov2seg/modeling/criterion.py`,
  `matcher.py`, `util.py`): detectron2's `utils.comm` (world size 1) and `point_rend` (Mask DINO's stand-ins,
  which record the mask-loss point draws in `maskdino_reference_standin.RECORDER`), and `ov2seg.utils.misc`
  (its real file imports torchvision) with the two helpers the criterion uses."""
  install(lvvis_root)
  if "ov2seg.modeling.criterion" in sys.modules:
    return
  md._module("detectron2.utils.comm", get_world_size=lambda: 1)
  md._package("detectron2.projects")
  md._package("detectron2.projects.point_rend")
  md._module("detectron2.projects.point_rend.point_features", point_sample=md.point_sample,
             get_uncertain_point_coords_with_randomness=md.get_uncertain_point_coords_with_randomness)
  md._package("ov2seg.utils")
  md._module("ov2seg.utils.misc", is_dist_avail_and_initialized=lambda: False,
             nested_tensor_from_tensor_list=_nested_masks)


def import_criterion():
  """Imports the reference criterion, matcher and util modules (after `install_criterion`)."""
  names = {"criterion": "ov2seg.modeling.criterion", "matcher": "ov2seg.modeling.matcher",
           "util": "ov2seg.modeling.util"}
  return types.SimpleNamespace(**{k: importlib.import_module(v) for k, v in names.items()})
