"""Mask DINO: COCO instance segmentation, Swin-L, 5 scales, encoder FFN 2048, no mask-enhanced box init.

Reference config: IDEA-Research/MaskDINO configs/coco/instance-segmentation/swin/maskdino_R50_bs16_50ep_4s_dowsample1_2048_no_maskEnhance.yaml
(shared/reference/maskdino.md section 1). Released checkpoint: maskdino_swinl_50ep_300q_hid2048_3sd1_instance_mask52.1ap_box58.3ap.pth

Train (prepared dataset in config.data.path; see docs/data.md), evaluate, predict:

  dinoseg train --config=configs/maskdino/coco_instance_swinl_4s_d1_2048_no_mask_enhance.py --workdir=/tmp/maskdino_coco_instance_swinl_4s_d1_2048_no_mask_enhance \\
      --config.data.path=/data/prepared/coco
  dinoseg eval --config=configs/maskdino/coco_instance_swinl_4s_d1_2048_no_mask_enhance.py --weights=maskdino_swinl_50ep_300q_hid2048_3sd1_instance_mask52.1ap_box58.3ap.pth --config.data.path=/data/prepared/coco
  dinoseg predict --config=configs/maskdino/coco_instance_swinl_4s_d1_2048_no_mask_enhance.py --weights=maskdino_swinl_50ep_300q_hid2048_3sd1_instance_mask52.1ap_box58.3ap.pth --input=images/ --output=out/

Tiny CPU variant (same structure at tiny widths, synthetic data of the same layout):

  dinoseg data synth --layout=coco --out=/tmp/dinoseg_maskdino_tiny_raw
  dinoseg data prepare --dataset=coco_instances --raw=/tmp/dinoseg_maskdino_tiny_raw --out=/tmp/dinoseg_maskdino_tiny_data
  dinoseg train --config=configs/maskdino/coco_instance_swinl_4s_d1_2048_no_mask_enhance.py:tiny --workdir=/tmp/maskdino_tiny
"""
from dinoseg.models.maskdino import defaults


def get_config(variant=None):
  return defaults.get_released("coco_instance_swinl_4s_d1_2048_no_mask_enhance", variant)
