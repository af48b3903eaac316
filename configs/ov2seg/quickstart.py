"""OV2Seg quickstart: a small OV2Seg trained from scratch on frames of synthetic videos, evaluated on held-out videos.

`dinoseg quickstart ov2seg` (dinoseg/commands/quickstart_ov2seg.py) synthesizes moving-shapes videos in the LV-VIS
layout (train + val; the 5 shape categories carry LV-VIS partitions, so circle, square and star are base classes
and triangle and hexagon are novel ones), turns the train videos' frames into an LVIS-style image dataset with the
annotations of the base classes only (the novel categories are listed with frequency "r" and never annotated, as
LVIS' rare categories are in the reference's norare training set), trains this config through the shared trainer,
evaluates video AP / APb / APn and a track-identity figure on the val videos and writes animated overlays; nothing
is downloaded:

  dinoseg quickstart ov2seg --workdir=/tmp/dinoseg_quickstart_ov2seg
  dinoseg quickstart --system=ov2seg --workdir=/tmp/dinoseg_quickstart_ov2seg --config.train.num_steps=300

The model keeps the structure of configs/ov2seg/r50_lvis.py (ResNet res2-res5, a 3-level deformable pixel decoder,
the masked-attention decoder with the objectness head, the mask head and the zero-shot classifier, deep
supervision, the federated sigmoid loss) at CPU widths, like its `:tiny` variant but wider: a 1-block-per-stage
ResNet trained from scratch, 64-wide pixel decoder and decoder. There is no CLIP text tower offline, so the class
embeddings are `vocabulary.source="random"`: each category id a fixed random unit vector. The novel classes are
then unseen in training and semantically unrelated to the base ones (their embeddings carry no information about
the shapes), so their AP is expected to be near zero; only the base AP measures what was learned.

Measured (docs/ov2seg.md, Quickstart): 1500 steps of batch 8 at 128 x 128 took 27.4 minutes in all on 2 CPU cores
shared with other jobs (load average 8 -> 5; not measured idle); on the 24 val videos video mask AP 42.8, base APb
71.4, novel APn 0.0, 83 % of the base objects keep one track in all their frames.

`quickstart.*` holds the data the command synthesizes (dinoseg.data_pipelines.synth, "lvvis" layout) and what it
writes. The same config trains with the generic commands once the data exist (paths as the command makes them):

  dinoseg train --config=configs/ov2seg/quickstart.py --workdir=/tmp/qs/train \
      --config.data.path=/tmp/qs/data/frames --config.test.eval_path=/tmp/qs/data/videos

Tiny variant (a few steps on a few small videos; the test of the command):

  dinoseg quickstart ov2seg --config=configs/ov2seg/quickstart.py:tiny --workdir=/tmp/dinoseg_quickstart_ov2seg_tiny
"""
import pathlib

import ml_collections

from dinoseg.config import load_config

RELEASED_CONFIG = pathlib.Path(__file__).with_name("r50_lvis.py")


def get_config(variant=None):
  c = load_config(f"{RELEASED_CONFIG}:tiny")  # the R50 model's CPU variant (random vocabulary, no init files)
  c.unlock()
  m = c.model
  m.backbone.kwargs = ml_collections.ConfigDict(dict(stage_blocks=(1, 1, 1, 1), stem_channels=32,
                                                     res2_channels=64, bottleneck_channels=16))
  p = m.pixel_decoder
  p.conv_dim = p.mask_dim = 64
  p.dim_feedforward, p.num_encoder_layers, p.nheads = 128, 1, 4
  d = m.decoder
  d.hidden_dim, d.dim_feedforward, d.dec_layers, d.nheads, d.num_queries = 64, 128, 3, 4, 16
  m.classifier.embed_dim = 64
  m.num_classes = 5  # the synthetic shapes (data_pipelines/synth.py THINGS)
  c.vocabulary.source = "random"
  c.loss.num_points = 256
  c.data.path = ""  # set by the command (<workdir>/data/frames)
  c.data.name = "quickstart_frames"
  c.data.augment = "lsj"
  c.data.image_size = (128, 128)
  c.data.min_scale, c.data.max_scale = 0.5, 1.5
  c.data.batch_size = 8
  c.data.max_instances = 8
  c.data.mask_stride = 1
  c.data.repeat_threshold = 0.0  # every synthetic category is frequent: no repeat-factor sampling needed
  c.data.num_workers = 0
  c.data.read_threads = 2
  c.train.num_steps = 1500
  c.train.log_every_steps = 10
  c.train.checkpoint_every_steps = 500
  c.train.progress = True
  c.train.eval_at_end = False
  c.optimizer.learning_rate = 4e-4
  c.optimizer.lr_multipliers = ()  # from scratch: the backbone learns at the full rate
  c.optimizer.clip_grad_norm = 1.0
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 50
  c.optimizer.decay_steps = ()
  t = c.test
  t.detections_per_image = 20
  t.min_size = t.max_size = 128  # the videos are 128 x 128: one canvas, one compilation
  t.window_size = 8
  t.eval_path = ""  # set by the command (<workdir>/data/videos)
  c.quickstart = ml_collections.ConfigDict(dict(
      num_train_videos=96,       # synthetic videos per split (dinoseg.data_pipelines.synth, "lvvis" layout);
      num_val_videos=24,         # the train videos' frames are the training images
      num_frames=8,              # frames per video
      image_size=(128, 128),     # (min, max) side length of the videos (equal: one eval canvas)
      max_objects=4,             # moving shapes per video (2..max_objects)
      seed=0,
      num_overlays=3,            # val videos drawn by the predictor into <workdir>/overlays (PNGs + GIF)
      score_threshold=0.3,       # instances drawn on the overlays
      identity_iou=0.5,          # frame IoU a track must keep with its object (track-identity consistency)
  ))
  if variant == "tiny":
    m.backbone.kwargs = ml_collections.ConfigDict(dict(stage_blocks=(1, 1, 1, 1), stem_channels=16,
                                                       res2_channels=32, bottleneck_channels=8))
    p.conv_dim = p.mask_dim = p.dim_feedforward = 32
    d.hidden_dim, d.dim_feedforward, d.dec_layers, d.num_queries = 32, 32, 2, 6
    m.classifier.embed_dim = 16
    c.loss.num_points = 64
    c.data.image_size = (64, 64)
    c.data.batch_size = 2
    c.train.num_steps, c.train.log_every_steps, c.train.checkpoint_every_steps = 2, 1, 0
    c.train.progress = False
    c.optimizer.warmup_steps = 0
    t.detections_per_image = 6
    t.min_size = t.max_size = 64
    t.window_size = 4
    q = c.quickstart
    q.num_train_videos, q.num_val_videos, q.num_frames, q.image_size, q.max_objects = 3, 2, 4, (64, 64), 3
    q.num_overlays = 1
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: tiny)")
  return c
