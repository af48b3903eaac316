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


def nms(boxes, scores, iou_threshold):
  """torchvision.ops.nms on the CPU: indices of the kept xyxy boxes, by decreasing score (greedy; a box is
  dropped when its IoU with a kept one exceeds the threshold)."""
  import torch  # noqa: PLC0415
  order = torch.argsort(scores, descending=True)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  keep, suppressed = [], torch.zeros(len(order), dtype=torch.bool)
  for a, i in enumerate(order.tolist()):
    if suppressed[a]:
      continue
    keep.append(i)
    for b in range(a + 1, len(order)):
      j = int(order[b])
      lt = torch.maximum(boxes[i, :2], boxes[j, :2])
      rb = torch.minimum(boxes[i, 2:], boxes[j, 2:])
      wh = (rb - lt).clamp(min=0)
      inter = wh[0] * wh[1]
      if inter / (area[i] + area[j] - inter) > iou_threshold:
        suppressed[b] = True
  return torch.as_tensor(keep, dtype=torch.int64)


def install_criteria(dinov_root: str) -> None:
  """Additionally makes the reference criteria and matchers importable (`dinov/modules/criterion_*.py`,
  `matcher*.py`, `dinov/utils/misc.py`, `box_ops.py`): detectron2's `utils.comm` and `point_rend` (Mask DINO's
  stand-ins, which record the point draws in `maskdino_reference_standin.RECORDER`), torchvision's `nms`
  (`nms` above) and `box_area`, `timm.loss`, and the DINOv repository's top-level `utils` package without its
  `__init__` (misc.py reads `utils.constants`)."""
  install(dinov_root)
  if "dinov.modules.criterion_visual_openset" in sys.modules:
    return
  md._package("detectron2.utils")
  md._module("detectron2.utils.comm", get_world_size=lambda: 1)
  md._package("detectron2.projects")
  md._package("detectron2.projects.point_rend")
  md._module("detectron2.projects.point_rend.point_features", point_sample=md.point_sample,
             get_uncertain_point_coords_with_randomness=md.get_uncertain_point_coords_with_randomness)
  md._package("torchvision", _is_tracing=lambda: False)
  md._package("torchvision.ops")
  md._module("torchvision.ops.boxes", box_area=md.box_area, nms=nms)
  md._module("timm.loss", SoftTargetCrossEntropy=object)
  md._package("utils", os.path.join(os.path.abspath(dinov_root), "utils"))


def import_criteria():
  """Imports the reference criteria and matchers (after `install_criteria`); returns them in a namespace."""
  names = {
      "openset": "dinov.modules.criterion_visual_openset",
      "refer_many": "dinov.modules.criterion_visual_refer_many2many",
      "matcher": "dinov.modules.matcher",
      "matcher_many": "dinov.modules.matcher_many2many",
  }
  return types.SimpleNamespace(**{k: importlib.import_module(v) for k, v in names.items()})


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


__all__ = ["install", "import_reference", "install_criteria", "import_criteria", "nms"]
