"""Mask DINO: COCO instance segmentation, Swin-L, 5 scales, encoder FFN 2048, no mask-enhanced box init.

Reference config: IDEA-Research/MaskDINO configs/coco/instance-segmentation/swin/maskdino_R50_bs16_50ep_4s_dowsample1_2048_no_maskEnhance.yaml
(shared/reference/maskdino.md section 1). Released checkpoint: maskdino_swinl_50ep_300q_hid2048_3sd1_instance_mask52.1ap_box58.3ap.pth

Train (prepared dataset in config.data.path, see docs/data.md; ImageNet-22k Swin-L in config.init.backbone.file),
evaluate, predict:

  dinoseg train --config=configs/maskdino/coco_instance_swinl_4s_d1_2048_no_mask_enhance.py --workdir=/tmp/maskdino_coco_instance_swinl_4s_d1_2048_no_mask_enhance \\
      --config.data.path=/data/prepared/coco --config.init.backbone.file=weights/swin_large_patch4_window12_384_22k.pth
  dinoseg eval --config=configs/maskdino/coco_instance_swinl_4s_d1_2048_no_mask_enhance.py --weights=maskdino_swinl_50ep_300q_hid2048_3sd1_instance_mask52.1ap_box58.3ap.pth --config.data.path=/data/prepared/coco
  dinoseg predict --config=configs/maskdino/coco_instance_swinl_4s_d1_2048_no_mask_enhance.py --weights=maskdino_swinl_50ep_300q_hid2048_3sd1_instance_mask52.1ap_box58.3ap.pth --input=images/ --output=out/

Tiny CPU variant (same structure at tiny widths, synthetic data of the same layout, no backbone init):

  dinoseg data synth --layout=coco --out=/tmp/dinoseg_maskdino_tiny_raw
  dinoseg data prepare --dataset=coco_instances --raw=/tmp/dinoseg_maskdino_tiny_raw --out=/tmp/dinoseg_maskdino_tiny_data
  dinoseg train --config=configs/maskdino/coco_instance_swinl_4s_d1_2048_no_mask_enhance.py:tiny --workdir=/tmp/maskdino_tiny
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
  m.backbone.name = "swin_large"  # embed 192, depths (2, 2, 18, 2), window 12, drop path 0.3
  m.pixel_decoder.transformer_in_features = ("res2", "res3", "res4", "res5")
  m.pixel_decoder.total_num_feature_levels = 5  # + one stride-2 level made from res5
  m.pixel_decoder.feature_order = "low2high"
  m.pixel_decoder.dim_feedforward = 2048
  m.decoder.two_stage = True
  m.decoder.num_queries = 300
  m.decoder.initialize_box_type = "no"  # boxes of the two-stage proposals, not of the masks
  m.decoder.dn_group_images = 2  # DN groups per GPU: batch 16 on 8 GPUs (README)
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

  # ImageNet-22k Swin-L at 384: swin_large_patch4_window12_384_22k.pth (microsoft/Swin-Transformer release).
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
