"""OV2Seg, ResNet-50 (timm layout, ImageNet-21K MIIL initialisation), trained on LVIS v1 without rare categories:
the released R50 model (LV-VIS val AP 14.2).

Reference config: haochenheheda/LVVIS (cc3cdf4) configs/lvvis/instance-segmentation/ov2seg_R50_bs16_50ep_lvis.yaml
with the overrides of scripts/train.sh / eval_video.sh: 100 queries, DEC_LAYERS 7, CLIP_CLASSIFIER True, batch 16
(shared/reference/ov2seg.md sections 1-3). Released checkpoint: model_final.pth ({"model": state dict};
`backbone.base.*` + `sem_seg_head.*`, key layout in shared/reference/keys/ov2seg_head_keys.txt).

What works: the per-frame model (dinoseg.models.ov2seg), reading and writing the released checkpoint, parity with
the reference (tests/models/ov2seg), and training on LVIS (task "ov2seg", dinoseg/models/ov2seg/task.py): the
reference's criterion (Hungarian matcher with the sqrt(sigmoid(class) * p_object) cost, the federated sigmoid class
loss over 50 categories drawn ∝ image_count ** 0.5, objectness CE with no-object weight 0.4, point-sampled mask BCE /
dice, deep supervision over the 7 predictions; parity <= 1e-4 with the reference, docs/ov2seg.md "Training"), LVIS v1
train without rare annotations (`data.drop_rare`, the reference's lvis_v1_train_norare), LSJ 1024,
repeat-factor sampling with threshold 0.001 (`data.repeat_threshold`, data_pipelines/sampling.py).

Convert the released weights (and back; the vocabulary-dependent `zs_weight` buffer and the criterion buffers are
dropped on import, docs/ov2seg.md):

  dinoseg convert --config=configs/ov2seg/r50_lvis.py --from=weights/ov2seg_r50/model_final.pth \
      --to=/tmp/ov2seg_r50_orbax
  dinoseg convert --model=ov2seg_r50_lvis --from=/tmp/ov2seg_r50_orbax --to=/tmp/ov2seg_r50_again.pth

Train (LVIS v1 prepared with `dinoseg data prepare --dataset=lvis`, the DetPro LVIS vocabulary
datasets/metadata/fg_bg_5_10_lvis_ens.npy of the reference repository, the ImageNet-21K MIIL ResNet-50):

  dinoseg train --config=configs/ov2seg/r50_lvis.py --workdir=/tmp/ov2seg_r50 --config.data.path=/data/lvis \
      --config.vocabulary.train_file=fg_bg_5_10_lvis_ens.npy --config.init.backbone.file=resnet50_miil_21k.pth

The trainer does not evaluate during training (the training data are LVIS images; the evaluation is on videos):
evaluate a checkpoint with `dinoseg eval --config=... --config.data.path=<prepared LV-VIS> --config.vocabulary.file=
fg_bg_5_10_lvvis_ens.npy --weights=<workdir>` (dinoseg/models/ov2seg/evaluate.py).

Variants: `:swinb` is the paper's Swin-B model (Mask2Former's D2 Swin-B, window 12; no weights are released,
haochenheheda/LVVIS#13); `:tiny` is the CPU variant (same structure at tiny widths) that trains a few steps on the
synthetic LVIS layout with random class embeddings (vocabulary.source "random"):

  dinoseg data synth --layout=lvis --out=/tmp/dinoseg_ov2seg_tiny_raw --image-size=64
  dinoseg data prepare --dataset=lvis --raw=/tmp/dinoseg_ov2seg_tiny_raw --out=/tmp/dinoseg_ov2seg_tiny_data
  dinoseg train --config=configs/ov2seg/r50_lvis.py:tiny --workdir=/tmp/ov2seg_tiny

Differences from the reference by design: the batch is the global one, so the federated categories are drawn once
per step over all images and the objectness CE is averaged over the global batch (per GPU in the reference); at
most `data.max_instances` (100 = the queries) annotations per image are kept (the reference matches min(Q, T)).
"""
import ml_collections

from dinoseg.data_pipelines import pipeline
from dinoseg.models.maskdino import defaults as md_defaults
from dinoseg.models.ov2seg import defaults
from dinoseg.train import defaults as train_defaults

validate = defaults.validate


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.task = "ov2seg"
  c.seed = 0
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # timm ResNet-50 (FrozenBN everywhere, TIMM.FREEZE_AT 0), Mask2Former pixel decoder and decoder, 100 queries.
  c.model = defaults.model_config()
  c.loss = defaults.loss_config()
  c.test = defaults.test_config()
  # The training vocabulary: DetPro embeddings of the 1203 LVIS classes (datasets/metadata/fg_bg_5_10_lvis_ens.npy,
  # 512-d rows); evaluation on LV-VIS uses fg_bg_5_10_lvvis_ens.npy (1196 classes) with the same weights.
  c.vocabulary = defaults.vocabulary_config()

  # LSJ at 1024 (scale 0.1-2.0), batch 16, RepeatFactorTrainingSampler threshold 0.001, LVIS v1 train without rare
  # annotations; AdamW 1e-4, weight decay 0.05, backbone x 0.1, full-model clipping 0.01; 368,750 steps, lr x 0.1 at
  # 327,778 and 355,092 (AMP in the reference).
  c.data = pipeline.default_config()
  c.data.update(dict(
      task="instance", name="lvis_v1_train_norare", train_split="train", eval_split="val", batch_size=16,
      augment="lsj", image_size=(1024, 1024), min_scale=0.1, max_scale=2.0, flip_prob=0.5,
      max_instances=100, mask_stride=2,  # GT masks at 512 x 512 (the losses sample points)
      drop_rare=True, repeat_threshold=0.001, filter_empty=True))
  c.train = train_defaults.train_config(num_steps=368_750, checkpoint_every_steps=5000, eval_every_steps=0,
                                        eval_at_end=False)
  # Mask2Former's optimizer groups: no weight decay for norms and nn.Embedding weights (query_feat / query_embed /
  # the decoder's level_embed); biases and the pixel decoder's level_embed parameter are decayed.
  c.optimizer = train_defaults.optimizer_config(
      name="adamw", learning_rate=1e-4, weight_decay=0.05, lr_multipliers=((r"^backbone/", 0.1),),
      no_weight_decay=md_defaults.NO_WEIGHT_DECAY, clip_grad_norm=0.01, schedule="step",
      decay_steps=(327_778, 355_092))

  # ImageNet-21K MIIL ResNet-50 (resnet50_miil_21k.pth, timm names; the `resnet50` converter reads torchvision /
  # timm ResNet keys and drops the classifier).
  c.init = ml_collections.ConfigDict()
  c.init.backbone = ml_collections.ConfigDict(dict(file="", converter="backbone", target="backbone", strict=True))
  c.init.checkpoint = ml_collections.ConfigDict(dict(file="", converter="ov2seg_r50_lvis", target="", strict=True))

  if variant == "tiny":
    return defaults.tiny(c)
  if variant == "swinb":
    c.model.name = "ov2seg_swinb_lvis"
    c.model.backbone.name = "swin_base"  # embed 128, depths (2, 2, 18, 2), window 12, drop path 0.3
    c.init.checkpoint.converter = "ov2seg_swinb_lvis"
    return c
  if variant is not None:
    raise ValueError(f"unknown variant {variant!r} (known: tiny, swinb)")
  return c
