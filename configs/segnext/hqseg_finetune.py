"""SegNext sax2 fine-tuned on HQSeg-44K (uncbiag/SegNext `plainvit_base1024_hqseg44k_sax2.py`).

Starts from the COCO+LVIS sax2 checkpoint (`init.checkpoint`, required), same recipe otherwise, batch 12 on the
HQSeg-44K training split (44,320 images: DIS-TR, ThinObject5K train, FSS, DUTS, ECSSD, MSRA-10K).
The released `..._hq44k_epoch_0.pth` appears to be the result of one 30k-sample epoch (unverified);
`train.num_steps` covers the reference config's 100 epochs of 30,000 samples.

  dinoseg train --config=configs/segnext/hqseg_finetune.py --workdir=/tmp/segnext_hq \\
      --config.data.path=data/hqseg44k --config.init.checkpoint.file=weights/vitb_sa2_cocolvis_epoch_90.pth
  dinoseg eval --config=configs/segnext/hqseg_finetune.py --weights=weights/vitb_sa2_cocolvis_hq44k_epoch_0.pth

Tiny CPU variant:

  dinoseg train --config=configs/segnext/hqseg_finetune.py:tiny --workdir=/tmp/segnext_hq_tiny
"""
import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("_segnext_vitb_sax2_config",
                                               pathlib.Path(__file__).with_name("vitb_sax2.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)
validate = _base.validate


def get_config(variant: str | None = None):
  c = _base.base_config(2, batch_size=12)
  c.data.name = "hqseg44k"
  c.init.checkpoint.required, c.init.backbone.required = True, False
  if variant == "tiny":
    return _base.tiny(c)
  if variant is not None:
    raise ValueError(f"unknown variant {variant!r} (known: tiny)")
  return c
