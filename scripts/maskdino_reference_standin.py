"""A small stand-in for the parts of detectron2 / fvcore / torchvision / timm that the Mask DINO
reference modeling code imports, so that it runs on a CPU-only PyTorch without those packages.

Used by scripts/make_maskdino_fixtures.py and scripts/bench_maskdino.py only (never by dinoseg).
`install(maskdino_root)` registers the stand-in modules in `sys.modules` and makes the reference
`maskdino` sub-packages importable without running their `__init__` files (which pull in the
data and evaluation code). Written from the detectron2 documentation of each name's behaviour:

- `layers.Conv2d`: nn.Conv2d plus optional `norm` and `activation` applied in that order.
- `layers.get_norm("GN", C)`: GroupNorm(32, C); "" or None: no norm.
- `structures.BitMasks.get_bounding_boxes`: (x0, y0, last x + 1, last y + 1), zeros when empty.
- `structures.ImageList.from_tensors`: zero-pads to the batch maximum rounded up to the
  size divisibility.
- `postprocessing.sem_seg_postprocess`: crop the valid region, bilinear resize (align_corners=False).
- PointRend `point_sample` / `get_uncertain_point_coords_with_randomness`; the latter records
  its uniform draws in `RECORDER` so that a JAX port can be fed the same points.
- `fvcore.nn.weight_init.c2_xavier_fill`: kaiming_uniform_(a=1), zero bias.
"""
import functools
import os
import sys
import types
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn


class Recorder:
  """Collects the random draws made inside the reference code (see make_maskdino_fixtures.py)."""

  def __init__(self):
    self.enabled = False
    self.point_draws = []  # (candidates (N, S, 2), random (N, R, 2)) per call

  def reset(self):
    self.point_draws = []


RECORDER = Recorder()


class CfgNode(dict):
  """Attribute dict; reading a missing upper-case key creates an empty child node."""

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    if name not in self:
      self[name] = CfgNode()
    return self[name]

  def __setattr__(self, name, value):
    self[name] = value


def configurable(init_func):
  @functools.wraps(init_func)
  def wrapped(self, *args, **kwargs):
    if args and isinstance(args[0], CfgNode):
      init_func(self, **type(self).from_config(*args, **kwargs))
    else:
      init_func(self, *args, **kwargs)
  return wrapped


class Registry:
  def __init__(self, name):
    self.name = name
    self._obj = {}

  def register(self, obj=None):
    if obj is None:
      def deco(o):
        self._obj[o.__name__] = o
        return o
      return deco
    self._obj[obj.__name__] = obj
    return obj

  def get(self, name):
    return self._obj[name]


ShapeSpec = namedtuple("ShapeSpec", ["channels", "height", "width", "stride"], defaults=(None,) * 4)


class Conv2d(nn.Conv2d):
  def __init__(self, *args, **kwargs):
    norm = kwargs.pop("norm", None)
    activation = kwargs.pop("activation", None)
    super().__init__(*args, **kwargs)
    self.norm = norm
    self.activation = activation

  def forward(self, x):
    x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
    if self.norm is not None:
      x = self.norm(x)
    if self.activation is not None:
      x = self.activation(x)
    return x


def get_norm(norm, out_channels):
  if norm is None or norm == "":
    return None
  if norm == "GN":
    return nn.GroupNorm(32, out_channels)
  raise NotImplementedError(f"stand-in get_norm supports 'GN' only, got {norm!r}")


def cat(tensors, dim=0):
  return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


class Backbone(nn.Module):
  @property
  def size_divisibility(self):
    return 0

  def output_shape(self):
    return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features}


class Boxes:
  def __init__(self, tensor):
    self.tensor = tensor

  def to(self, device):
    return self


class BitMasks:
  def __init__(self, tensor):
    self.tensor = tensor.bool() if isinstance(tensor, torch.Tensor) else torch.as_tensor(tensor).bool()

  def get_bounding_boxes(self):
    boxes = torch.zeros(self.tensor.shape[0], 4, dtype=torch.float32)
    x_any = self.tensor.any(dim=1)
    y_any = self.tensor.any(dim=2)
    for i in range(self.tensor.shape[0]):
      xs = torch.nonzero(x_any[i]).flatten()
      ys = torch.nonzero(y_any[i]).flatten()
      if len(xs) and len(ys):
        boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return Boxes(boxes)


class ImageList:
  def __init__(self, tensor, image_sizes):
    self.tensor = tensor
    self.image_sizes = image_sizes

  @staticmethod
  def from_tensors(tensors, size_divisibility=0, pad_value=0.0):
    image_sizes = [tuple(t.shape[-2:]) for t in tensors]
    h = max(s[0] for s in image_sizes)
    w = max(s[1] for s in image_sizes)
    if size_divisibility > 1:
      h = (h + size_divisibility - 1) // size_divisibility * size_divisibility
      w = (w + size_divisibility - 1) // size_divisibility * size_divisibility
    batch = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], h, w), pad_value)
    for i, t in enumerate(tensors):
      batch[i, ..., :t.shape[-2], :t.shape[-1]] = t
    return ImageList(batch, image_sizes)


class Instances:
  def __init__(self, image_size, **fields):
    object.__setattr__(self, "image_size", image_size)
    object.__setattr__(self, "_fields", dict(fields))

  def __setattr__(self, name, value):
    self._fields[name] = value

  def __getattr__(self, name):
    if name.startswith("_") or name not in self._fields:
      raise AttributeError(name)
    return self._fields[name]

  def to(self, device):
    return self

  def get_fields(self):
    return self._fields


class _Metadata(types.SimpleNamespace):
  pass


class MetadataCatalog:
  _data = {}

  @classmethod
  def get(cls, name):
    return cls._data.setdefault(name, _Metadata())


def sem_seg_postprocess(result, img_size, output_height, output_width):
  result = result[:, :img_size[0], :img_size[1]].expand(1, -1, -1, -1)
  return F.interpolate(result, size=(output_height, output_width), mode="bilinear", align_corners=False)[0]


def point_sample(input, point_coords, **kwargs):
  squeeze = point_coords.dim() == 3
  if squeeze:
    point_coords = point_coords.unsqueeze(2)
  out = F.grid_sample(input, 2.0 * point_coords - 1.0, **kwargs)
  return out.squeeze(3) if squeeze else out


def get_uncertain_point_coords_with_randomness(coarse_logits, uncertainty_func, num_points, oversample_ratio,
                                               importance_sample_ratio):
  n = coarse_logits.shape[0]
  num_sampled = int(num_points * oversample_ratio)
  num_uncertain = int(importance_sample_ratio * num_points)
  num_random = num_points - num_uncertain
  candidates = torch.rand(n, num_sampled, 2)
  uncertainty = uncertainty_func(point_sample(coarse_logits, candidates, align_corners=False))
  idx = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1)[1]
  coords = torch.gather(candidates, 1, idx[..., None].expand(-1, -1, 2))
  random = torch.rand(n, num_random, 2)
  if RECORDER.enabled:
    RECORDER.point_draws.append((candidates.clone(), random.clone()))
  return torch.cat([coords, random], dim=1) if num_random > 0 else coords


def c2_xavier_fill(module):
  nn.init.kaiming_uniform_(module.weight, a=1)
  if module.bias is not None:
    nn.init.constant_(module.bias, 0)


def box_area(boxes):
  return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


class DropPath(nn.Module):
  def __init__(self, drop_prob=0.0):
    super().__init__()
    self.drop_prob = drop_prob

  def forward(self, x):
    if self.drop_prob == 0.0 or not self.training:
      return x
    keep = 1 - self.drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def to_2tuple(x):
  return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
  return nn.init.trunc_normal_(tensor, mean, std, a, b)


def _module(name, **attrs):
  mod = types.ModuleType(name)
  mod.__dict__.update(attrs)
  sys.modules[name] = mod
  return mod


def _package(name, path=None, **attrs):
  mod = _module(name, **attrs)
  mod.__path__ = [path] if path else []
  return mod


SEM_SEG_HEADS_REGISTRY = Registry("SEM_SEG_HEADS")
META_ARCH_REGISTRY = Registry("META_ARCH")
BACKBONE_REGISTRY = Registry("BACKBONE")


def build_backbone(cfg):
  return BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, None)


def build_sem_seg_head(cfg, input_shape):
  return SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(cfg, input_shape)


def _patch_cuda_calls():
  """The reference's training code calls .cuda() / .to('cuda'): keep everything on the CPU."""
  torch.Tensor.cuda = lambda self, *a, **k: self
  original_to = torch.Tensor.to
  def to(self, *args, **kwargs):
    if args and isinstance(args[0], str) and args[0].startswith("cuda"):
      args = ("cpu",) + args[1:]
    if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith("cuda"):
      kwargs["device"] = "cpu"
    return original_to(self, *args, **kwargs)
  torch.Tensor.to = to


def install(maskdino_root: str) -> None:
  """Registers the stand-ins and the reference `maskdino` packages (without their __init__)."""
  if "detectron2" in sys.modules and getattr(sys.modules["detectron2"], "_dinoseg_standin", False):
    return
  _package("detectron2", _dinoseg_standin=True)
  _module("detectron2.config", configurable=configurable, CfgNode=CfgNode)
  _module("detectron2.layers", Conv2d=Conv2d, ShapeSpec=ShapeSpec, get_norm=get_norm, cat=cat)
  _package("detectron2.modeling", SEM_SEG_HEADS_REGISTRY=SEM_SEG_HEADS_REGISTRY,
           META_ARCH_REGISTRY=META_ARCH_REGISTRY, BACKBONE_REGISTRY=BACKBONE_REGISTRY,
           build_backbone=build_backbone, build_sem_seg_head=build_sem_seg_head, Backbone=Backbone,
           ShapeSpec=ShapeSpec)
  _module("detectron2.modeling.backbone", Backbone=Backbone)
  _module("detectron2.modeling.postprocessing", sem_seg_postprocess=sem_seg_postprocess)
  _package("detectron2.utils")
  _module("detectron2.utils.registry", Registry=Registry)
  _module("detectron2.utils.comm", get_world_size=lambda: 1)
  _module("detectron2.utils.memory", retry_if_cuda_oom=lambda f: f)
  _module("detectron2.structures", BitMasks=BitMasks, Boxes=Boxes, ImageList=ImageList, Instances=Instances)
  _module("detectron2.data", MetadataCatalog=MetadataCatalog)
  _package("detectron2.projects")
  _package("detectron2.projects.point_rend")
  _module("detectron2.projects.point_rend.point_features", point_sample=point_sample,
          get_uncertain_point_coords_with_randomness=get_uncertain_point_coords_with_randomness)
  _package("fvcore")
  _package("fvcore.nn")
  _module("fvcore.nn.weight_init", c2_xavier_fill=c2_xavier_fill)
  sys.modules["fvcore.nn"].weight_init = sys.modules["fvcore.nn.weight_init"]
  _package("torchvision", _is_tracing=lambda: False)
  _package("torchvision.ops")
  _module("torchvision.ops.boxes", box_area=box_area)
  _package("timm")
  _package("timm.models")
  _module("timm.models.layers", DropPath=DropPath, to_2tuple=to_2tuple, trunc_normal_=trunc_normal_)
  # The CUDA op is absent: an empty module makes the reference fall back to its PyTorch core.
  _module("MultiScaleDeformableAttention")
  root = os.path.join(os.path.abspath(maskdino_root), "maskdino")
  for pkg in ("", ".modeling", ".modeling.pixel_decoder", ".modeling.transformer_decoder",
              ".modeling.meta_arch", ".modeling.backbone", ".utils"):
    _package("maskdino" + pkg, os.path.join(root, *pkg.split(".")[1:]))
  _patch_cuda_calls()


def import_reference():
  """Imports the reference modules (after `install`); returns them in a namespace."""
  import importlib  # noqa: PLC0415
  names = {
      "encoder": "maskdino.modeling.pixel_decoder.maskdino_encoder",
      "decoder": "maskdino.modeling.transformer_decoder.maskdino_decoder",
      "head": "maskdino.modeling.meta_arch.maskdino_head",
      "criterion": "maskdino.modeling.criterion",
      "matcher": "maskdino.modeling.matcher",
      "meta_arch": "maskdino.maskdino",
      "config": "maskdino.config",
      "msda": "maskdino.modeling.pixel_decoder.ops.modules.ms_deform_attn",
  }
  return types.SimpleNamespace(**{k: importlib.import_module(v) for k, v in names.items()})


__all__ = ["install", "import_reference", "RECORDER", "CfgNode", "BACKBONE_REGISTRY", "Backbone", "ShapeSpec",
           "MetadataCatalog", "Instances", "Boxes"]
