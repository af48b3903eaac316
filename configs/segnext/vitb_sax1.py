"""SegNext ViT-B/16 at 1024 with 1 fusion block (sax1), trained on COCO+LVIS (uncbiag/SegNext).

Same recipe as vitb_sax2.py (`models/default/plainvit_base1024_cocolvis_sax1.py`) with one fusion block.

  dinoseg train --config=configs/segnext/vitb_sax1.py --workdir=/tmp/segnext_sax1 \\
      --config.init.backbone.file=weights/mae_pretrain_vit_base.pth
  dinoseg eval --config=configs/segnext/vitb_sax1.py --weights=weights/vitb_sa1_cocolvis_epoch_90.pth

Tiny CPU variant:

  dinoseg train --config=configs/segnext/vitb_sax1.py:tiny --workdir=/tmp/segnext_sax1_tiny
"""
import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("_segnext_vitb_sax2_config",
                                               pathlib.Path(__file__).with_name("vitb_sax2.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)
validate = _base.validate


def get_config(variant: str | None = None):
  c = _base.base_config(1)
  if variant == "tiny":
    return _base.tiny(c)
  if variant is not None:
    raise ValueError(f"unknown variant {variant!r} (known: tiny)")
  return c
