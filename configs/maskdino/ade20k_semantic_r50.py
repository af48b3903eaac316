"""Mask DINO: ADE20K semantic segmentation (150 classes), ResNet-50, 3 scales high2low, 100 learned queries (no two-stage), softmax CE, 160k iterations.

Reference config: IDEA-Research/MaskDINO configs/ade20k/semantic-segmentation/maskdino_R50_bs16_160k_steplr.yaml
(shared/reference/maskdino.md section 1). Released checkpoint: maskdino_r50_50ep_100q_celoss_hid1024_3s_semantic_ade20k_48.7miou.pth

Train (prepared dataset in config.data.path; see docs/data.md), evaluate, predict:

  dinoseg train --config=configs/maskdino/ade20k_semantic_r50.py --workdir=/tmp/maskdino_ade20k_semantic_r50 \\
      --config.data.path=/data/prepared/ade20k
  dinoseg eval --config=configs/maskdino/ade20k_semantic_r50.py --weights=maskdino_r50_50ep_100q_celoss_hid1024_3s_semantic_ade20k_48.7miou.pth --config.data.path=/data/prepared/ade20k
  dinoseg predict --config=configs/maskdino/ade20k_semantic_r50.py --weights=maskdino_r50_50ep_100q_celoss_hid1024_3s_semantic_ade20k_48.7miou.pth --input=images/ --output=out/

Tiny CPU variant (same structure at tiny widths, synthetic data of the same layout):

  dinoseg data synth --layout=ade20k --out=/tmp/dinoseg_maskdino_tiny_raw
  dinoseg data prepare --dataset=ade20k --raw=/tmp/dinoseg_maskdino_tiny_raw --out=/tmp/dinoseg_maskdino_tiny_data
  dinoseg train --config=configs/maskdino/ade20k_semantic_r50.py:tiny --workdir=/tmp/maskdino_tiny
"""
from dinoseg.models.maskdino import defaults


def get_config(variant=None):
  return defaults.get_released("ade20k_semantic_r50", variant)
