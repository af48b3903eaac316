"""Mask DINO: Cityscapes semantic segmentation (19 classes), ResNet-50, 3 scales high2low, 100 learned queries, softmax CE, 90k iterations. The reference trains its backbone with SyncBN; dinoseg's ResNet uses FrozenBN (see docs/maskdino.md).

Reference config: IDEA-Research/MaskDINO configs/cityscapes/semantic-segmentation/maskdino_R50_bs16_90k_steplr.yaml
(shared/reference/maskdino.md section 1). Released checkpoint: maskdino_r50_50ep_100q_celoss_hid1024_3s_semantic_cityscapes_79.8miou.pth

Train (prepared dataset in config.data.path; see docs/data.md), evaluate, predict:

  dinoseg train --config=configs/maskdino/cityscapes_semantic_r50.py --workdir=/tmp/maskdino_cityscapes_semantic_r50 \\
      --config.data.path=/data/prepared/cityscapes
  dinoseg eval --config=configs/maskdino/cityscapes_semantic_r50.py --weights=maskdino_r50_50ep_100q_celoss_hid1024_3s_semantic_cityscapes_79.8miou.pth --config.data.path=/data/prepared/cityscapes
  dinoseg predict --config=configs/maskdino/cityscapes_semantic_r50.py --weights=maskdino_r50_50ep_100q_celoss_hid1024_3s_semantic_cityscapes_79.8miou.pth --input=images/ --output=out/

Tiny CPU variant (same structure at tiny widths, synthetic data of the same layout):

  dinoseg data synth --layout=cityscapes --out=/tmp/dinoseg_maskdino_tiny_raw
  dinoseg data prepare --dataset=cityscapes --raw=/tmp/dinoseg_maskdino_tiny_raw --out=/tmp/dinoseg_maskdino_tiny_data
  dinoseg train --config=configs/maskdino/cityscapes_semantic_r50.py:tiny --workdir=/tmp/maskdino_tiny
"""
from dinoseg.models.maskdino import defaults


def get_config(variant=None):
  return defaults.get_released("cityscapes_semantic_r50", variant)
