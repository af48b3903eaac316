"""Imports the reference PyTorch backbones from checkouts, for fixtures and benchmarks.

- ResNet: facebookresearch/detectron2 `detectron2/modeling/backbone/resnet.py` with the checkout's
  real `layers/{wrappers, batch_norm, blocks, shape_spec}.py`, `modeling/backbone/backbone.py` and
  `utils/{env, comm}.py`. detectron2 is not installed (its C++ ops do not build here): the package
  skeleton is created in `sys.modules` and these files are executed from the checkout. The few
  names they import from elsewhere are stand-ins defined below: fvcore's `c2_msra_fill` /
  `c2_xavier_fill` (initializers; every fixture overwrites the weights), fvcore's
  `differentiable_all_reduce` (SyncBN only), the backbone registry (a decorator that returns its
  argument) and the deformable-conv classes (unused by plain ResNets).
- Swin: IDEA-Research/MaskDINO `maskdino/modeling/backbone/swin.py` (`D2SwinTransformer`), with
  timm's `DropPath`, `to_2tuple` and `trunc_normal_` replaced by stand-ins (drop-path is 0 in
  fixtures and benchmarks) and the detectron2 names above.
- Plain ViT: uncbiag/SegNext `segnext/isegm/model/modeling/models_vit.py` (`VisionTransformer`).

Nothing of these repositories is copied: the files are executed from the checkout paths given.
"""
import importlib.util
import pathlib
import sys
import types


def _package(name: str) -> types.ModuleType:
  if name in sys.modules:
    return sys.modules[name]
  module = types.ModuleType(name)
  module.__path__ = []
  sys.modules[name] = module
  parent, _, child = name.rpartition(".")
  if parent:
    setattr(_package(parent), child, module)
  return module


def _stub(name: str, **attrs) -> types.ModuleType:
  module = types.ModuleType(name)
  module.__dict__.update(attrs)
  sys.modules[name] = module
  parent, _, child = name.rpartition(".")
  if parent:
    setattr(_package(parent), child, module)
  return module


def _exec_file(name: str, path: pathlib.Path) -> types.ModuleType:
  if not path.is_file():
    raise FileNotFoundError(f"reference file not found: {path}")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  parent, _, child = name.rpartition(".")
  if parent:
    setattr(_package(parent), child, module)
  spec.loader.exec_module(module)
  return module


def _fvcore_stubs(torch):
  def c2_msra_fill(module):
    torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
      torch.nn.init.constant_(module.bias, 0)

  def c2_xavier_fill(module):
    torch.nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
      torch.nn.init.constant_(module.bias, 0)

  _package("fvcore")
  _package("fvcore.nn")
  _stub("fvcore.nn.weight_init", c2_msra_fill=c2_msra_fill, c2_xavier_fill=c2_xavier_fill)
  _stub("fvcore.nn.distributed", differentiable_all_reduce=lambda x: x)


class _Registry:
  """Stand-in for detectron2's BACKBONE_REGISTRY: `register()` returns the class unchanged."""

  def register(self, obj=None):
    return obj if obj is not None else (lambda o: o)


def load_detectron2(d2_dir: pathlib.Path):
  """Executes the detectron2 files the ResNet and Swin backbones need; returns the resnet module."""
  if "detectron2.modeling.backbone.resnet" in sys.modules:
    return sys.modules["detectron2.modeling.backbone.resnet"]
  import torch  # noqa: PLC0415
  root = pathlib.Path(d2_dir) / "detectron2"
  _fvcore_stubs(torch)
  _package("detectron2")
  _package("detectron2.utils")
  _exec_file("detectron2.utils.env", root / "utils/env.py")
  _exec_file("detectron2.utils.comm", root / "utils/comm.py")
  layers = _package("detectron2.layers")
  wrappers = _exec_file("detectron2.layers.wrappers", root / "layers/wrappers.py")
  batch_norm = _exec_file("detectron2.layers.batch_norm", root / "layers/batch_norm.py")
  shape_spec = _exec_file("detectron2.layers.shape_spec", root / "layers/shape_spec.py")
  blocks = _exec_file("detectron2.layers.blocks", root / "layers/blocks.py")

  class _NoDeformConv(torch.nn.Module):  # deformable convs are not used by plain ResNets
    def __init__(self, *args, **kwargs):
      raise NotImplementedError("deformable convolutions are not available in this stand-in")

  layers.__dict__.update(
      CNNBlockBase=blocks.CNNBlockBase, Conv2d=wrappers.Conv2d, ShapeSpec=shape_spec.ShapeSpec,
      get_norm=batch_norm.get_norm, FrozenBatchNorm2d=batch_norm.FrozenBatchNorm2d,
      DeformConv=_NoDeformConv, ModulatedDeformConv=_NoDeformConv)
  modeling = _package("detectron2.modeling")
  _package("detectron2.modeling.backbone")
  backbone = _exec_file("detectron2.modeling.backbone.backbone", root / "modeling/backbone/backbone.py")
  registry = _Registry()
  _stub("detectron2.modeling.backbone.build", BACKBONE_REGISTRY=registry)
  modeling.__dict__.update(BACKBONE_REGISTRY=registry, Backbone=backbone.Backbone, ShapeSpec=shape_spec.ShapeSpec)
  return _exec_file("detectron2.modeling.backbone.resnet", root / "modeling/backbone/resnet.py")


def build_reference_resnet(d2_dir, *, depth=50, stem_channels=64, res2_channels=256, width_per_group=64,
                           stride_in_1x1=False, res5_dilation=1, freeze_at=0,
                           out_features=("res2", "res3", "res4", "res5")):
  """detectron2 `build_resnet_backbone` with FrozenBN and the given settings (eval mode)."""
  resnet = load_detectron2(d2_dir)
  ns = types.SimpleNamespace
  cfg = ns(MODEL=ns(
      BACKBONE=ns(FREEZE_AT=freeze_at),
      RESNETS=ns(NORM="FrozenBN", STEM_OUT_CHANNELS=stem_channels, OUT_FEATURES=list(out_features), DEPTH=depth,
                 NUM_GROUPS=1, WIDTH_PER_GROUP=width_per_group, RES2_OUT_CHANNELS=res2_channels,
                 STRIDE_IN_1X1=stride_in_1x1, RES5_DILATION=res5_dilation,
                 DEFORM_ON_PER_STAGE=[False] * 4, DEFORM_MODULATED=False, DEFORM_NUM_GROUPS=1)))
  return resnet.build_resnet_backbone(cfg, ns(channels=3)).eval()


def load_maskdino_swin(maskdino_dir: pathlib.Path, d2_dir: pathlib.Path):
  """Executes MaskDINO's swin.py (timm helpers replaced by stand-ins); returns the module."""
  if "maskdino_reference_swin" in sys.modules:
    return sys.modules["maskdino_reference_swin"]
  import torch  # noqa: PLC0415
  load_detectron2(d2_dir)

  class DropPath(torch.nn.Module):
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

  _package("timm")
  _package("timm.models")
  _stub("timm.models.layers", DropPath=DropPath, to_2tuple=to_2tuple,
        trunc_normal_=lambda t, std=1.0: torch.nn.init.trunc_normal_(t, std=std))
  return _exec_file("maskdino_reference_swin", pathlib.Path(maskdino_dir) / "maskdino/modeling/backbone/swin.py")


def build_reference_swin(maskdino_dir, d2_dir, *, embed_dim, depths, num_heads, window_size, mlp_ratio=4.0,
                         drop_path_rate=0.0, out_features=("res2", "res3", "res4", "res5")):
  """MaskDINO's `D2SwinTransformer` from a detectron2-style config (eval mode)."""
  swin = load_maskdino_swin(maskdino_dir, d2_dir)
  ns = types.SimpleNamespace
  cfg = ns(MODEL=ns(SWIN=ns(
      PRETRAIN_IMG_SIZE=224, PATCH_SIZE=4, EMBED_DIM=embed_dim, DEPTHS=list(depths), NUM_HEADS=list(num_heads),
      WINDOW_SIZE=window_size, MLP_RATIO=mlp_ratio, QKV_BIAS=True, QK_SCALE=None, DROP_RATE=0.0,
      ATTN_DROP_RATE=0.0, DROP_PATH_RATE=drop_path_rate, APE=False, PATCH_NORM=True, USE_CHECKPOINT=False,
      OUT_FEATURES=list(out_features))))
  model = swin.D2SwinTransformer(cfg, None)
  model.eval()  # SwinTransformer.train() returns None, so eval() cannot be chained
  return model


def load_segnext_vit(segnext_dir: pathlib.Path):
  """Executes SegNext's models_vit.py (and pos_embed.py); returns the module."""
  name = "isegm.model.modeling.models_vit"
  if name in sys.modules:
    return sys.modules[name]
  root = pathlib.Path(segnext_dir)
  if (root / "segnext").is_dir():
    root = root / "segnext"
  modeling = root / "isegm/model/modeling"
  _package("isegm.model.modeling")
  _exec_file("isegm.model.modeling.pos_embed", modeling / "pos_embed.py")
  return _exec_file(name, modeling / "models_vit.py")


def build_reference_vit(segnext_dir, *, img_size, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                        mlp_ratio=4.0, global_atten_freq=3):
  """SegNext's `VisionTransformer` (eval mode)."""
  vit = load_segnext_vit(segnext_dir)
  return vit.VisionTransformer(img_size=tuple(img_size), patch_size=(patch_size, patch_size), embed_dim=embed_dim,
                               depth=depth, global_atten_freq=global_atten_freq, num_heads=num_heads,
                               mlp_ratio=mlp_ratio, qkv_bias=True).eval()
