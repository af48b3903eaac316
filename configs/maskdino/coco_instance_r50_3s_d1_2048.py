"""Mask DINO: COCO instance segmentation, ResNet-50, res3-res5 + one extra downsampled level, encoder FFN 2048, low2high, mask2box box init.

Reference config: IDEA-Research/MaskDINO configs/coco/instance-segmentation/maskdino_R50_bs16_50ep_3s_dowsample1_2048.yaml
(shared/reference/maskdino.md section 1). Released checkpoint: maskdino_r50_50ep_300q_hid2048_3sd1_instance_maskenhance_mask46.3ap_box51.7ap.pth

Train (prepared dataset in config.data.path; see docs/data.md), evaluate, predict:

  dinoseg train --config=configs/maskdino/coco_instance_r50_3s_d1_2048.py --workdir=/tmp/maskdino_coco_instance_r50_3s_d1_2048 \\
      --config.data.path=/data/prepared/coco
  dinoseg eval --config=configs/maskdino/coco_instance_r50_3s_d1_2048.py --weights=maskdino_r50_50ep_300q_hid2048_3sd1_instance_maskenhance_mask46.3ap_box51.7ap.pth --config.data.path=/data/prepared/coco
  dinoseg predict --config=configs/maskdino/coco_instance_r50_3s_d1_2048.py --weights=maskdino_r50_50ep_300q_hid2048_3sd1_instance_maskenhance_mask46.3ap_box51.7ap.pth --input=images/ --output=out/

Tiny CPU variant (same structure at tiny widths, synthetic data of the same layout):

  dinoseg data synth --layout=coco --out=/tmp/dinoseg_maskdino_tiny_raw
  dinoseg data prepare --dataset=coco_instances --raw=/tmp/dinoseg_maskdino_tiny_raw --out=/tmp/dinoseg_maskdino_tiny_data
  dinoseg train --config=configs/maskdino/coco_instance_r50_3s_d1_2048.py:tiny --workdir=/tmp/maskdino_tiny
"""
from dinoseg.models.maskdino import defaults


def get_config(variant=None):
  return defaults.get_released("coco_instance_r50_3s_d1_2048", variant)
