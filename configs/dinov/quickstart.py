"""DINOv quickstart: a small DINOv trained from scratch on synthetic shapes, prompted with examples, on the CPU.

`dinoseg quickstart dinov` (dinoseg/commands/quickstart_dinov.py) writes the Mask DINO quickstart's synthetic
shapes dataset (5 categories, COCO layout, prepared as ArrayRecord shards), trains this config through the shared
trainer (task "dinov": the generic and the referring task every step), builds a prompt bank from the *training*
images only, scores mask AP on the held-out images with the generic protocol (16 seeded bank draws averaged per
category), tracks the objects of a few synthetic moving-shapes videos (DAVIS-2017 layout, written by the command)
with the VOS protocol and scores J&F, and writes overlays; nothing is downloaded:

  dinoseg quickstart dinov --workdir=/tmp/dinoseg_quickstart_dinov
  dinoseg quickstart --system=dinov --workdir=/tmp/dinoseg_quickstart_dinov --config.train.num_steps=300

Measured (docs/dinov.md, "Quickstart"): 1000 steps of 4 + 4 images at 128 x 128 gave mask AP 46.7 (AP50 64.8) on
the 64 held-out images with prompts from the train images and J&F 77.3 on the 8 synthetic videos, in 14:06 wall
on 2 idle CPU cores (AMD EPYC; 126 s of it compiling the train step, 0.63-0.67 s per step).

The model keeps the structure of configs/dinov/swint_sam_coco.py (a Swin backbone, res3-res5 + one extra level,
low2high, 300 -> 16 learned queries and anchors without two-stage selection, class-agnostic denoising, the prompt
encoder, the similarity classifier, 6 multi-granularity click tokens with the IoU head) at CPU widths, like its
`:tiny` variant: a 1-block-per-stage Swin of width 48 trained from scratch, a 64-wide pixel decoder (1 encoder
layer) and decoder.

The training mix. Every step holds both of the reference's tasks, as `config.task = "dinov"` always does:
- the generic task (`visual_openset`, the main one here) on the shapes' instance annotations (`data.coco`, data
  task "instance": the 5 shapes are the classes; no stuff classes, the metric is mask AP): class prompts averaged
  over 1..4 instances of the batch, as the reference;
- the referring task (`visual_refer`) on the same images as class-agnostic masks (`data.sam`: the same prepared
  dataset read with another shuffle seed, every mask one "SA-1B" object). It costs a second forward / backward
  per step but is what the VOS protocol decodes with (click grid, IoU head, `class_embed`), so J&F needs it.
  Its content prompts are the full instance masks (`prompts.use_shape_sampler=False`) instead of the reference's
  scribbles: in this job every prompt at inference is a full mask (bank entries and VOS memories), and
  scribble strokes sized for 1024-px SA-1B images cover most of a 128-px shape anyway.
Clicks per image 12 (the shapes hold at most 4 objects + a crowd; the reference's 50 is for SA-1B's ~100 masks),
4 content prompts, the VOS click grid 10 x 10 (spacing 12.8 px for shapes of 13-32 px radius; the reference's
20 x 20 gives 2400 click tokens per frame, a 4x slower greedy NMS on the CPU).

`quickstart.*` holds the data the command synthesizes and what it writes. The same config trains with the
generic commands once the data exist (the command sets both paths to <workdir>/data):

  dinoseg train --config=configs/dinov/quickstart.py --workdir=/tmp/qs/train \\
      --config.data.coco.path=/tmp/qs/data --config.data.sam.path=/tmp/qs/data

Tiny variant (a few steps on a few small images and videos; the test of the command):

  dinoseg quickstart dinov --config=configs/dinov/quickstart.py:tiny --workdir=/tmp/dinoseg_quickstart_dinov_tiny
"""
import pathlib

import ml_collections

from dinoseg.config import load_config
from dinoseg.models.dinov import defaults

RELEASED_CONFIG = pathlib.Path(__file__).with_name("swint_sam_coco.py")


def validate(c: ml_collections.ConfigDict) -> None:
  """DINOv's checks (defaults.validate) and the command's settings (raised as a ConfigError by dinoseg.config)."""
  defaults.validate(c)
  q = c.quickstart
  if int(q.num_frames) < 3:
    raise ValueError(f"quickstart.num_frames must be >= 3 (DAVIS scores neither the first nor the last frame), "
                     f"got {q.num_frames}")
  for key in ("num_train_images", "num_val_images", "num_videos", "video_max_objects", "max_objects"):
    if int(q[key]) < 1:
      raise ValueError(f"quickstart.{key} must be >= 1, got {q[key]}")
  for key in ("bank_images", "num_overlays", "num_vos_overlays", "vos_min_area"):
    if int(q[key]) < 0:
      raise ValueError(f"quickstart.{key} must be >= 0, got {q[key]}")
  if int(q.video_size) < 32:
    raise ValueError(f"quickstart.video_size must be >= 32, got {q.video_size}")
  if int(q.video_max_objects) > 255:
    raise ValueError(f"quickstart.video_max_objects must be <= 255 (DAVIS ids are 8-bit), got {q.video_max_objects}")


def get_config(variant=None):
  c = load_config(f"{RELEASED_CONFIG}:tiny")  # the Swin-T model's CPU variant (no backbone init file)
  c.unlock()
  m = c.model
  m.num_classes = 5  # the synthetic shapes (data_pipelines/synth.py THINGS)
  m.backbone.kwargs = ml_collections.ConfigDict(dict(embed_dim=48, depths=(1, 1, 1, 1), num_heads=(2, 3, 6, 12),
                                                     window_size=4, drop_path_rate=0.0))
  p = m.pixel_decoder
  p.conv_dim = p.mask_dim = 64
  p.dim_feedforward, p.num_encoder_layers, p.nheads = 128, 1, 4
  d = m.decoder
  d.hidden_dim, d.dim_proj, d.dim_feedforward, d.dec_layers, d.nheads = 64, 64, 128, 2, 4
  d.num_queries, d.dn_num = 16, 16
  pr = c.prompts
  pr.max_clicks, pr.max_content, pr.point_per_side = 12, 4, 10
  pr.inference_example = 16  # examples averaged per category (the README's INFERENCE_EXAMPLE=16)
  pr.use_shape_sampler = False  # full-mask content prompts (module docstring)
  c.loss.num_points = 256
  t = c.test
  t.instance_on, t.panoptic_on, t.semantic_on = True, False, False  # things only: COCO mask / box AP
  t.detections_per_image = 50
  t.min_size = t.max_size = t.davis_min_size = 128
  t.eval_output_hw = (128, 128)
  c.dataset.class_names, c.dataset.category_ids = (), ()  # set by the command from the prepared data
  for name, source in c.data.items():
    source.task = "instance"
    source.name = f"quickstart_shapes_{name}"
    source.path = ""  # set by the command (<workdir>/data)
    source.image_size = source.eval_image_size = (128, 128)
    source.eval_short_edge = source.eval_max_size = 128
    source.min_scale, source.max_scale = 0.5, 1.5
    source.batch_size, source.eval_batch_size = 4, 8  # 4 + 4 images per step: 8, as the Mask DINO quickstart
    source.max_instances = 8
    source.filter_empty = True  # every image has an object (the reference's empty-image fallback is not ported)
    source.num_workers = 0
  c.data.sam.seed = 1  # the referring task sees the images in another order than the generic task
  e = c.evaluation
  e.num_examples, e.seed = 16, 0
  c.train.num_steps = 1000
  c.train.log_every_steps = 10
  c.train.checkpoint_every_steps = 500
  c.train.progress = True
  c.train.eval_at_end = False
  o = c.optimizer
  o.learning_rate = 8e-4
  o.lr_multipliers = ()  # from scratch: the backbone learns at the full rate
  o.clip_grad_norm = 1.0
  o.schedule = "cosine"
  o.warmup_steps = 50
  o.decay_steps = ()
  c.quickstart = ml_collections.ConfigDict(dict(
      num_train_images=512,      # synthetic images per split (dinoseg.data_pipelines.synth, "coco" layout)
      num_val_images=64,         # held out: mask AP with prompts from the train images
      image_size=(112, 128),     # (min, max) side length of the synthetic images
      max_objects=4,             # shapes per image (1..max_objects, plus sometimes a crowd)
      seed=0,
      bank_images=256,           # train images whose instances fill the prompt bank (0: all)
      num_videos=8,              # synthetic moving-shapes videos for VOS (DAVIS-2017 layout, <workdir>/raw/davis)
      num_frames=8,              # frames per video (the first and last are not scored, as DAVIS)
      video_size=128,            # square frames
      video_max_objects=3,       # moving shapes per video (2..video_max_objects; some enter after frame 0)
      vos_min_area=4,            # VOS proposals need more positive stride-4 mask pixels than this: the
                                 # reference's 50 at DAVIS's 640 px short edge is 2 at 128 px, where a small
                                 # triangle covers ~14
      num_overlays=4,            # val images drawn with the generic predictions into <workdir>/overlays
      num_vos_overlays=2,        # videos drawn as PNG strips (ground truth over prediction)
      score_threshold=0.25,      # instances drawn on the overlays (the similarity scores peak near 0.35)
  ))
  if variant == "tiny":
    m.backbone.kwargs = ml_collections.ConfigDict(dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                                                       window_size=4, drop_path_rate=0.0))
    d.dim_proj, d.dim_feedforward, d.dec_layers = 32, 64, 2
    d.num_queries, d.dn_num = 8, 8
    p.dim_feedforward = 64
    pr.max_clicks, pr.max_content, pr.point_per_side = 4, 2, 4
    pr.inference_example = 4
    c.loss.num_points = 64
    t.detections_per_image = 8
    t.min_size = t.max_size = t.davis_min_size = 64
    t.eval_output_hw = (64, 64)
    for source in c.data.values():
      source.image_size = source.eval_image_size = (64, 64)
      source.eval_short_edge = source.eval_max_size = 64
      source.batch_size, source.eval_batch_size = 2, 2
      source.max_instances = 4
    e.num_examples = 4
    c.train.num_steps, c.train.log_every_steps, c.train.checkpoint_every_steps = 2, 1, 0
    c.train.progress = False
    o.warmup_steps = 0
    q = c.quickstart
    q.num_train_images, q.num_val_images, q.image_size, q.max_objects = 4, 2, (48, 64), 2
    q.bank_images, q.num_videos, q.num_frames, q.video_size, q.video_max_objects = 0, 2, 3, 64, 2
    q.num_overlays, q.num_vos_overlays = 1, 1
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: tiny)")
  return c
