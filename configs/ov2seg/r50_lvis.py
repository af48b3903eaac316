"""OV2Seg, ResNet-50 (timm layout, ImageNet-21K MIIL initialisation), trained on LVIS v1 without rare categories:
the released R50 model (LV-VIS val AP 14.2).

Reference config: haochenheheda/LVVIS (cc3cdf4) configs/lvvis/instance-segmentation/ov2seg_R50_bs16_50ep_lvis.yaml
with the overrides of scripts/train.sh / eval_video.sh: 100 queries, DEC_LAYERS 7, CLIP_CLASSIFIER True, batch 16
(shared/reference/ov2seg.md sections 1-3). Released checkpoint: model_final.pth ({"model": state dict};
`backbone.base.*` + `sem_seg_head.*`, key layout in shared/reference/keys/ov2seg_head_keys.txt).

What works now: the per-frame model (dinoseg.models.ov2seg: backbone, pixel decoder, masked-attention decoder,
objectness and zero-shot heads with the class embeddings as an input), reading and writing the released
checkpoint, parity with the reference (tests/models/ov2seg). Convert the released weights (and back; the
vocabulary-dependent `zs_weight` buffer and the criterion buffers are dropped on import, docs/ov2seg.md):

  dinoseg convert --model=ov2seg_r50_lvis --from=weights/ov2seg_r50/model_final.pth --to=/tmp/ov2seg_r50_orbax
  dinoseg convert --model=ov2seg_r50_lvis --from=/tmp/ov2seg_r50_orbax --to=/tmp/ov2seg_r50_again.pth

Variants: `:swinb` is the paper's Swin-B model (Mask2Former's D2 Swin-B, window 12; no weights are released,
haochenheheda/LVVIS#13); `:tiny` is the CPU variant (same structure at tiny widths):

  dinoseg config show --config=configs/ov2seg/r50_lvis.py:tiny
  dinoseg config show --config=configs/ov2seg/r50_lvis.py:swinb

Not implemented yet (later slices of issue 17): the trainer task "ov2seg" (so `dinoseg train / eval / predict`
refuse this config), the federated loss and matcher, LVIS training data, the video association and scoring,
video AP. The `loss`, `test`, `train` and `optimizer` groups hold the reference's values for them.
"""
import ml_collections

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
  c.vocabulary = ml_collections.ConfigDict(dict(file="", train_file=""))

  # LSJ at 1024 (scale 0.1-2.0), batch 16, RepeatFactorTrainingSampler threshold 0.001, LVIS v1 train without rare
  # annotations; AdamW 1e-4, weight decay 0.05, backbone x 0.1, full-model clipping 0.01; 368,750 steps, lr x 0.1 at
  # 327,778 and 355,092 (AMP in the reference).
  c.data = ml_collections.ConfigDict(dict(
      name="lvis_v1_norare", batch_size=16, augment="lsj", image_size=(1024, 1024), min_scale=0.1, max_scale=2.0,
      repeat_threshold=0.001, filter_empty=True))
  c.train = train_defaults.train_config(num_steps=368_750, checkpoint_every_steps=5000, eval_every_steps=0)
  c.optimizer = train_defaults.optimizer_config(
      name="adamw", learning_rate=1e-4, weight_decay=0.05, lr_multipliers=((r"^backbone/", 0.1),),
      clip_grad_norm=0.01, schedule="step", decay_steps=(327_778, 355_092))

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
