"""Mask DINO: COCO instance segmentation, ResNet-50, 3 encoder scales (res3-res5, no extra level), encoder FFN 1024, high2low, bitmask box init.

Reference config: IDEA-Research/MaskDINO configs/coco/instance-segmentation/maskdino_R50_bs16_50ep_3s.yaml
(shared/reference/maskdino.md section 1). Released checkpoint: maskdino_r50_50ep_300q_hid1024_3sd1_instance_maskenhance_mask46.1ap_box51.5ap.pth

Train (prepared dataset in config.data.path, see docs/data.md; ImageNet ResNet-50 in config.init.backbone.file),
evaluate, predict:

  dinoseg train --config=configs/maskdino/coco_instance_r50_3s_hid1024.py --workdir=/tmp/maskdino_coco_instance_r50_3s_hid1024 \\
      --config.data.path=/data/prepared/coco --config.init.backbone.file=weights/R-50.pkl
  dinoseg eval --config=configs/maskdino/coco_instance_r50_3s_hid1024.py --weights=maskdino_r50_50ep_300q_hid1024_3sd1_instance_maskenhance_mask46.1ap_box51.5ap.pth --config.data.path=/data/prepared/coco
  dinoseg predict --config=configs/maskdino/coco_instance_r50_3s_hid1024.py --weights=maskdino_r50_50ep_300q_hid1024_3sd1_instance_maskenhance_mask46.1ap_box51.5ap.pth --input=images/ --output=out/

Tiny CPU variant (same structure at tiny widths, synthetic data of the same layout, no backbone init):

  dinoseg data synth --layout=coco --out=/tmp/dinoseg_maskdino_tiny_raw
  dinoseg data prepare --dataset=coco_instances --raw=/tmp/dinoseg_maskdino_tiny_raw --out=/tmp/dinoseg_maskdino_tiny_data
  dinoseg train --config=configs/maskdino/coco_instance_r50_3s_hid1024.py:tiny --workdir=/tmp/maskdino_tiny
"""
import ml_collections

from dinoseg.data_pipelines import categories, pipeline
from dinoseg.models.maskdino import defaults
from dinoseg.train import defaults as train_defaults


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.task = "maskdino"
  c.seed = 0
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # The reference's common values (hidden 256, 6 encoder / 9 decoder layers, denoising; defaults.py), then this model.
  m = defaults.model_config(num_classes=80)
  m.semantic_ce_loss = False  # sigmoid focal classification
  m.backbone.name = "resnet50"
  m.pixel_decoder.transformer_in_features = ("res3", "res4", "res5")
  m.pixel_decoder.total_num_feature_levels = 3  # no extra level
  m.pixel_decoder.feature_order = "high2low"
  m.pixel_decoder.dim_feedforward = 1024
  m.decoder.two_stage = True
  m.decoder.num_queries = 300
  m.decoder.initialize_box_type = "bitmask"
  m.decoder.dn_group_images = 4  # DN groups per GPU: batch 16 on 4 GPUs (README)
  c.model = m
  c.loss = defaults.loss_config()
  c.test = defaults.test_config()
  c.test.instance_on, c.test.panoptic_on, c.test.semantic_on = True, False, False

  c.dataset = ml_collections.ConfigDict(dict(class_names=categories.COCO_THING_NAMES,
                                             category_ids=categories.COCO_THING_IDS))
  # Large-scale jitter to 1024 x 1024 (scale 0.1-2.0, flips), batch 16; evaluation at short edge 800 (max 1333).
  c.data = pipeline.default_config()
  c.data.update(dict(
      task="instance", name="coco", batch_size=16, augment="lsj", image_size=(1024, 1024), min_scale=0.1,
      max_scale=2.0, max_instances=100, mask_stride=2,  # GT masks at 512 x 512 (the loss samples points)
      eval_image_size=(1344, 1344), eval_short_edge=800, eval_max_size=1333, eval_batch_size=8))

  # 50 epochs (368,750 steps of 16 images), lr x0.1 at steps 327,778 and 355,092.
  c.train = train_defaults.train_config(num_steps=368_750, checkpoint_every_steps=5000, eval_every_steps=5000)
  c.optimizer = train_defaults.optimizer_config(
      name="adamw", learning_rate=1e-4, weight_decay=0.05, lr_multipliers=((r"^backbone/", 0.1),),
      no_weight_decay=defaults.NO_WEIGHT_DECAY, clip_grad_norm=0.01, schedule="step",
      decay_steps=(327_778, 355_092))

  # ImageNet ResNet-50: detectron2's ImageNetPretrained/torchvision/R-50.pkl or torchvision's resnet50 .pth.
  c.init = ml_collections.ConfigDict()
  c.init.backbone = ml_collections.ConfigDict(dict(file="", converter="backbone", target="backbone", strict=True))
  # A released Mask DINO checkpoint (.pth) to fine-tune from (the whole model; the backbone entry, if also given,
  # is applied over it).
  c.init.checkpoint = ml_collections.ConfigDict(dict(file="", converter="task", target="", strict=True))

  if variant == "tiny":
    return defaults.tiny(c)
  if variant is not None:
    raise ValueError(f"unknown variant {variant!r} (known: tiny)")
  return c
