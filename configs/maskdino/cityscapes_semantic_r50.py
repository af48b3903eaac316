"""Mask DINO: Cityscapes semantic segmentation (19 classes), ResNet-50, 3 scales high2low, 100 learned queries, softmax CE, 90k iterations. The reference trains its backbone with SyncBN; dinoseg's ResNet uses FrozenBN (see docs/maskdino.md).

Reference config: IDEA-Research/MaskDINO configs/cityscapes/semantic-segmentation/maskdino_R50_bs16_90k_steplr.yaml
(shared/reference/maskdino.md section 1). Released checkpoint: maskdino_r50_50ep_100q_celoss_hid1024_3s_semantic_cityscapes_79.8miou.pth

Train (prepared dataset in config.data.path, see docs/data.md; ImageNet ResNet-50 in config.init.backbone.file),
evaluate, predict:

  dinoseg train --config=configs/maskdino/cityscapes_semantic_r50.py --workdir=/tmp/maskdino_cityscapes_semantic_r50 \\
      --config.data.path=/data/prepared/cityscapes --config.init.backbone.file=weights/R-50.pkl
  dinoseg eval --config=configs/maskdino/cityscapes_semantic_r50.py --weights=maskdino_r50_50ep_100q_celoss_hid1024_3s_semantic_cityscapes_79.8miou.pth --config.data.path=/data/prepared/cityscapes
  dinoseg predict --config=configs/maskdino/cityscapes_semantic_r50.py --weights=maskdino_r50_50ep_100q_celoss_hid1024_3s_semantic_cityscapes_79.8miou.pth --input=images/ --output=out/

Tiny CPU variant (same structure at tiny widths, synthetic data of the same layout, no backbone init):

  dinoseg data synth --layout=cityscapes --out=/tmp/dinoseg_maskdino_tiny_raw
  dinoseg data prepare --dataset=cityscapes --raw=/tmp/dinoseg_maskdino_tiny_raw --out=/tmp/dinoseg_maskdino_tiny_data
  dinoseg train --config=configs/maskdino/cityscapes_semantic_r50.py:tiny --workdir=/tmp/maskdino_tiny
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
  m = defaults.model_config(num_classes=19)  # Cityscapes train ids
  m.semantic_ce_loss = True  # softmax cross-entropy with a no-object logit
  m.backbone.name = "resnet50"
  m.pixel_decoder.transformer_in_features = ("res3", "res4", "res5")
  m.pixel_decoder.total_num_feature_levels = 3  # no extra level
  m.pixel_decoder.feature_order = "high2low"
  m.pixel_decoder.dim_feedforward = 1024
  m.decoder.two_stage = False  # learned content queries and boxes
  m.decoder.num_queries = 100
  m.decoder.initialize_box_type = "no"
  m.decoder.dn_group_images = 4  # DN groups per GPU: batch 16 on 4 GPUs (README)
  c.model = m
  c.loss = defaults.loss_config()
  c.test = defaults.test_config()
  c.test.instance_on, c.test.panoptic_on, c.test.semantic_on = False, False, True
  c.test.object_mask_threshold = 0.8
  c.test.min_size, c.test.max_size = 1024, 2048
  c.test.eval_output_hw = (1024, 2048)

  c.dataset = ml_collections.ConfigDict(dict(class_names=categories.CITYSCAPES_NAMES, category_ids=()))
  # Shortest edge resized to one of 512..2048 (max 4096), 512 x 1024 crops, flips, batch 16; one target per class
  # present. Evaluation at short edge 1024 (max 2048).
  c.data = pipeline.default_config()
  c.data.update(dict(
      task="semantic", name="cityscapes", batch_size=16, augment="resize_crop", image_size=(512, 1024),
      train_short_sizes=tuple(int(x * 0.1 * 1024) for x in range(5, 21)), train_max_size=4096,
      max_instances=32, mask_stride=1,
      eval_image_size=(1024, 2048), eval_short_edge=1024, eval_max_size=2048, eval_batch_size=4))

  # 90k steps of 16 images, lr x0.1 at steps 80,000 and 87,000.
  c.train = train_defaults.train_config(num_steps=90_000, checkpoint_every_steps=5000, eval_every_steps=5000)
  c.optimizer = train_defaults.optimizer_config(
      name="adamw", learning_rate=1e-4, weight_decay=0.05, lr_multipliers=((r"^backbone/", 0.1),),
      no_weight_decay=defaults.NO_WEIGHT_DECAY, clip_grad_norm=0.01, schedule="step",
      decay_steps=(80_000, 87_000))

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
