"""Talk2DINO, ViT-L: DINOv2-L/14 with registers + CLIP ViT-B/16 text + MLP projection (InfoNCE).

Same recipe as vitb_mlp_infonce.py with D = 1024 (reference `configs/vitl_mlp_infonce.yaml`) and
background threshold 0.54 (the reference's ViT-L eval configs).

  dinoseg talk2dino extract --config=configs/talk2dino/vitl_mlp_infonce.py --split=train
  dinoseg talk2dino extract --config=configs/talk2dino/vitl_mlp_infonce.py --split=val
  dinoseg train --config=configs/talk2dino/vitl_mlp_infonce.py --workdir=/tmp/t2d_vitl
  dinoseg eval --config=configs/talk2dino/vitl_mlp_infonce.py --weights=weights/vitl_mlp_infonce.pth

Tiny CPU variant:

  dinoseg train --config=configs/talk2dino/vitl_mlp_infonce.py:tiny --workdir=/tmp/t2d_tiny_l
"""
import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("_talk2dino_vitb_config", pathlib.Path(__file__).with_name(
    "vitb_mlp_infonce.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)
validate = _base.validate


def get_config(variant: str | None = None):
  c = _base.base_config("vitl")
  if variant == "tiny":
    return _base.tiny(c)
  if variant is not None:
    raise ValueError(f"unknown variant {variant!r} (known: tiny)")
  return c
