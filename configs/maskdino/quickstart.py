"""Mask DINO quickstart: a small Mask DINO trained from scratch on synthetic shapes, on the CPU.

The README's main job. `dinoseg quickstart` writes the synthetic shapes dataset (5 categories) as
ArrayRecord shards, trains this config, evaluates COCO box/mask AP on the held-out validation split,
exports PyTorch weights (reference key names) and writes overlay PNGs; nothing is downloaded:

  dinoseg quickstart --workdir=/tmp/dinoseg_quickstart
  dinoseg quickstart --workdir=/tmp/dinoseg_quickstart --config.train.num_steps=300   # shorter

900 steps of batch 8 at 128 x 128, learning rate 8e-4: mask AP 56.4 on the 64 validation images in 8:34 and 8:14
(two runs) on 2 idle CPU cores (docs/maskdino.md has the runs and the tuning runs).

The model keeps the structure of configs/maskdino/coco_instance_r50_3s_d1_2048.py (res3-res5 + one
downsampled level, low2high, two-stage queries, mask2box box init, denoising, deep supervision) at
CPU widths: a narrow 1-block-per-stage ResNet trained from scratch, 64-wide pixel decoder and
decoder. `quickstart.*` holds the dataset the command synthesizes (dinoseg.data_pipelines.synth) and
what it writes. The same config also trains with the generic commands once the data exists:

  dinoseg data synth --layout=coco --out=/tmp/qs/raw --num-images=...
  dinoseg data prepare --dataset=coco_instances --raw=/tmp/qs/raw --out=/tmp/qs/data
  dinoseg train --config=configs/maskdino/quickstart.py --workdir=/tmp/qs/train --config.data.path=/tmp/qs/data

Tiny variant (a few steps on a few small images; the test of the command):

  dinoseg quickstart --config=configs/maskdino/quickstart.py:tiny --workdir=/tmp/dinoseg_quickstart_tiny
"""
import pathlib

import ml_collections

from dinoseg.config import load_config

RELEASED_CONFIG = pathlib.Path(__file__).with_name("coco_instance_r50_3s_d1_2048.py")


def get_config(variant=None):
  c = load_config(f"{RELEASED_CONFIG}:tiny")  # the R50 instance model's CPU variant (no backbone init)
  c.unlock()
  m = c.model
  m.backbone.kwargs = ml_collections.ConfigDict(dict(stage_blocks=(1, 1, 1, 1), stem_channels=32,
                                                     res2_channels=64, bottleneck_channels=16))
  p = m.pixel_decoder
  p.conv_dim = p.mask_dim = 64
  p.dim_feedforward = 128
  p.num_encoder_layers = 1
  p.nheads = 4
  p.remat_ffn = False  # at 128 px the FFN activations are small; the measured schedule ran without recomputation
  d = m.decoder
  d.hidden_dim, d.dim_feedforward, d.dec_layers, d.nheads = 64, 128, 2, 4
  d.num_queries = 16
  d.dn_num = 16
  # At 128 px the full (P, B, Q, 32, 32) mask logits are small (~1.5 MB), cheaper than sampling the 64-wide
  # features per slot ("factored", what "auto" picks on the CPU for the full-size configs); the schedule and the
  # figures below were measured with the full logits.
  d.train_mask_logits = "full"
  c.loss.num_points = 256
  c.test.detections_per_image = 50
  c.test.min_size = c.test.max_size = 128
  c.test.eval_output_hw = (128, 128)
  c.data.path = ""  # set by `dinoseg quickstart` (<workdir>/data)
  c.data.image_size = c.data.eval_image_size = (128, 128)
  c.data.eval_short_edge = c.data.eval_max_size = 128
  c.data.min_scale, c.data.max_scale = 0.5, 1.5
  c.data.batch_size, c.data.eval_batch_size = 8, 8
  c.data.max_instances = 8
  c.data.num_workers = 0
  c.train.num_steps = 900
  c.train.log_every_steps = 10
  c.train.checkpoint_every_steps = 500
  c.optimizer.learning_rate = 8e-4
  c.optimizer.lr_multipliers = ()  # from scratch: the backbone learns at the full rate
  c.optimizer.clip_grad_norm = 1.0
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 50
  c.quickstart = ml_collections.ConfigDict(dict(
      num_train_images=512,      # synthetic images per split (dinoseg.data_pipelines.synth, "coco" layout)
      num_val_images=64,
      image_size=(112, 128),     # (min, max) side length of the synthetic images
      max_objects=4,             # shapes per image (1..max_objects, plus sometimes a crowd)
      seed=0,
      num_overlays=8,            # validation images drawn by the predictor into <workdir>/overlays
      score_threshold=0.5,       # instances drawn on the overlays
  ))
  if variant == "tiny":
    m.backbone.kwargs = ml_collections.ConfigDict(dict(stage_blocks=(1, 1, 1, 1), stem_channels=16,
                                                       res2_channels=32, bottleneck_channels=8))
    p.conv_dim = p.mask_dim = p.dim_feedforward = 32
    d.hidden_dim, d.dim_feedforward = 32, 32
    d.num_queries, d.dn_num = 6, 6
    c.loss.num_points = 64
    c.test.detections_per_image = 6
    c.test.min_size = c.test.max_size = 64
    c.test.eval_output_hw = (64, 64)
    c.data.image_size = c.data.eval_image_size = (64, 64)
    c.data.eval_short_edge = c.data.eval_max_size = 64
    c.data.batch_size, c.data.eval_batch_size = 2, 2
    c.train.num_steps, c.train.log_every_steps, c.train.checkpoint_every_steps = 2, 1, 0
    c.optimizer.warmup_steps = 0
    q = c.quickstart
    q.num_train_images, q.num_val_images, q.image_size, q.max_objects, q.num_overlays = 4, 2, (48, 64), 2, 2
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: tiny)")
  return c
