"""Mask DINO: COCO instance segmentation, ResNet-50, 3 encoder scales (res3-res5, no extra level), encoder FFN 1024, high2low, bitmask box init.

Reference config: IDEA-Research/MaskDINO configs/coco/instance-segmentation/maskdino_R50_bs16_50ep_3s.yaml
(shared/reference/maskdino.md section 1). Released checkpoint: maskdino_r50_50ep_300q_hid1024_3sd1_instance_maskenhance_mask46.1ap_box51.5ap.pth

Train (prepared dataset in config.data.path; see docs/data.md), evaluate, predict:

  dinoseg train --config=configs/maskdino/coco_instance_r50_3s_hid1024.py --workdir=/tmp/maskdino_coco_instance_r50_3s_hid1024 \\
      --config.data.path=/data/prepared/coco
  dinoseg eval --config=configs/maskdino/coco_instance_r50_3s_hid1024.py --weights=maskdino_r50_50ep_300q_hid1024_3sd1_instance_maskenhance_mask46.1ap_box51.5ap.pth --config.data.path=/data/prepared/coco
  dinoseg predict --config=configs/maskdino/coco_instance_r50_3s_hid1024.py --weights=maskdino_r50_50ep_300q_hid1024_3sd1_instance_maskenhance_mask46.1ap_box51.5ap.pth --input=images/ --output=out/

Tiny CPU variant (same structure at tiny widths, synthetic data of the same layout):

  dinoseg data synth --layout=coco --out=/tmp/dinoseg_maskdino_tiny_raw
  dinoseg data prepare --dataset=coco_instances --raw=/tmp/dinoseg_maskdino_tiny_raw --out=/tmp/dinoseg_maskdino_tiny_data
  dinoseg train --config=configs/maskdino/coco_instance_r50_3s_hid1024.py:tiny --workdir=/tmp/maskdino_tiny
"""
from dinoseg.models.maskdino import defaults


def get_config(variant=None):
  return defaults.get_released("coco_instance_r50_3s_hid1024", variant)
