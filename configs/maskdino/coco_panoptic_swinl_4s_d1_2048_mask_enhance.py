"""Mask DINO: COCO panoptic segmentation (133 classes), Swin-L, 5 scales, encoder FFN 2048, mask-enhanced box init (bitmask).

Reference config: IDEA-Research/MaskDINO configs/coco/panoptic-segmentation/swin/maskdino_R50_bs16_50ep_4s_dowsample1_maskEnhance_2048.yaml
(shared/reference/maskdino.md section 1). No checkpoint of its own is released; the parameters are those of the
panoptic Swin-L model (maskdino_swinl_50ep_300q_hid2048_3sd1_panoptic_58.3pq.pth loads into it: box init has none).

Train (prepared dataset in config.data.path; see docs/data.md), evaluate, predict:

  dinoseg train --config=configs/maskdino/coco_panoptic_swinl_4s_d1_2048_mask_enhance.py --workdir=/tmp/maskdino_coco_panoptic_swinl_4s_d1_2048_mask_enhance \\
      --config.data.path=/data/prepared/coco_panoptic
  dinoseg eval --config=configs/maskdino/coco_panoptic_swinl_4s_d1_2048_mask_enhance.py --weights=WEIGHTS.pth --config.data.path=/data/prepared/coco_panoptic
  dinoseg predict --config=configs/maskdino/coco_panoptic_swinl_4s_d1_2048_mask_enhance.py --weights=WEIGHTS.pth --input=images/ --output=out/

Tiny CPU variant (same structure at tiny widths, synthetic data of the same layout):

  dinoseg data synth --layout=coco_panoptic --out=/tmp/dinoseg_maskdino_tiny_raw
  dinoseg data prepare --dataset=coco_panoptic --raw=/tmp/dinoseg_maskdino_tiny_raw --out=/tmp/dinoseg_maskdino_tiny_data
  dinoseg train --config=configs/maskdino/coco_panoptic_swinl_4s_d1_2048_mask_enhance.py:tiny --workdir=/tmp/maskdino_tiny
"""
from dinoseg.models.maskdino import defaults


def get_config(variant=None):
  return defaults.get_released("coco_panoptic_swinl_4s_d1_2048_mask_enhance", variant)
