"""Mask DINO: COCO panoptic segmentation (133 classes), Swin-L, 5 scales, encoder FFN 2048, no box init.

Reference config: IDEA-Research/MaskDINO configs/coco/panoptic-segmentation/swin/maskdino_R50_bs16_50ep_4s_dowsample1_2048.yaml
(shared/reference/maskdino.md section 1). Released checkpoint: maskdino_swinl_50ep_300q_hid2048_3sd1_panoptic_58.3pq.pth

Train (prepared dataset in config.data.path; see docs/data.md), evaluate, predict:

  dinoseg train --config=configs/maskdino/coco_panoptic_swinl_4s_d1_2048.py --workdir=/tmp/maskdino_coco_panoptic_swinl_4s_d1_2048 \\
      --config.data.path=/data/prepared/coco_panoptic
  dinoseg eval --config=configs/maskdino/coco_panoptic_swinl_4s_d1_2048.py --weights=maskdino_swinl_50ep_300q_hid2048_3sd1_panoptic_58.3pq.pth --config.data.path=/data/prepared/coco_panoptic
  dinoseg predict --config=configs/maskdino/coco_panoptic_swinl_4s_d1_2048.py --weights=maskdino_swinl_50ep_300q_hid2048_3sd1_panoptic_58.3pq.pth --input=images/ --output=out/

Tiny CPU variant (same structure at tiny widths, synthetic data of the same layout):

  dinoseg data synth --layout=coco_panoptic --out=/tmp/dinoseg_maskdino_tiny_raw
  dinoseg data prepare --dataset=coco_panoptic --raw=/tmp/dinoseg_maskdino_tiny_raw --out=/tmp/dinoseg_maskdino_tiny_data
  dinoseg train --config=configs/maskdino/coco_panoptic_swinl_4s_d1_2048.py:tiny --workdir=/tmp/maskdino_tiny
"""
from dinoseg.models.maskdino import defaults


def get_config(variant=None):
  return defaults.get_released("coco_panoptic_swinl_4s_d1_2048", variant)
