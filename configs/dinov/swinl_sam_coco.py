"""DINOv, Swin-L, trained on SA-1B (referring task) + COCO panoptic (generic task): the released Swin-L model.

Reference config: UX-Decoder/DINOv configs/dinov_sam_coco_swinl_train.yaml (shared/reference/dinov.md section 7):
the Swin-T recipe with Swin-L 384 (window 12), the encoder on res2-res5 (5 levels) and the match-score loss
as a sigmoid focal loss (`softmax: False`). Released checkpoint: the README's Swin-L model (COCO PQ 57.7);
keys under `model.`.

What works now: the model (dinoseg.models.dinov: both tasks, prompt encoder), reading and writing the
released checkpoint, parity with the reference (tests/models/dinov). Once the converter module is
registered (dinoseg.convert.registry), convert the released weights (and back):

  dinoseg convert --model=dinov_swinl_sam_coco --from=weights/dinov_swinl.pth --to=/tmp/dinov_swinl_orbax
  dinoseg convert --model=dinov_swinl_sam_coco --from=/tmp/dinov_swinl_orbax --to=/tmp/dinov_swinl_again.pth

Training (`config.task = "dinov"`, dinoseg.models.dinov.task; docs/dinov.md "Training"): every step one COCO
panoptic batch (generic task, class prompts averaged over the global batch) and one SA-1B batch (referring task:
clicks, level targets, scribble content prompts), the reference's criteria. With prepared datasets:

  dinoseg train --config=configs/dinov/swinl_sam_coco.py --workdir=runs/dinov_swinl \\
      --config.data.coco.path=/data/coco_panoptic --config.data.sam.path=/data/sa1b \\
      --config.init.backbone.file=weights/swin_large_patch4_window12_384_22k.pth

Inference protocols (prompt bank, generic evaluation, video object segmentation) and what is not implemented
yet: docs/dinov.md. `dinoseg eval` runs them on a checkpoint; with `--config.train.eval_every_steps=N` the
training run runs them every N steps too (the `evaluation` group; `--config.evaluation.bank_max_images` bounds
the bank build, `--config.train.best_metric=PQ` with `keep_best` keeps the best checkpoints).

Tiny CPU variant (same structure at tiny widths, 64 px images, batches of 2 + 2; data under
/tmp/dinoseg_dinov_tiny_{coco,sam}, see docs/dinov.md "Training" for making them with `dinoseg data synth`):

  dinoseg config show --config=configs/dinov/swinl_sam_coco.py:tiny
  dinoseg train --config=configs/dinov/swinl_sam_coco.py:tiny --workdir=/tmp/dinov_swinl_tiny
"""
import ml_collections

from dinoseg.data_pipelines import categories, pipeline
from dinoseg.models.dinov import defaults
from dinoseg.train import defaults as train_defaults

validate = defaults.validate


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.task = "dinov"
  c.seed = 0
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  # The reference's common values (hidden 256, projection 512, 300 queries, 9 layers, DN; defaults.py), then this model.
  m = defaults.model_config()
  m.backbone.name = "swin_large"  # embed 192, depths (2, 2, 18, 2), heads (6, 12, 24, 48), window 12, drop path 0.3
  m.pixel_decoder.transformer_in_features = ("res2", "res3", "res4", "res5")
  m.pixel_decoder.total_num_feature_levels = 5  # + one stride-2 level made from res5
  m.pixel_decoder.feature_order = "low2high"
  m.pixel_decoder.dim_feedforward = 2048  # DECODER.DIM_FEEDFORWARD (the encoder reads the decoder's value)
  c.model = m
  c.prompts = defaults.prompt_config()
  c.prompts.match_softmax = False  # `softmax: False`: the match-score loss is a sigmoid focal loss
  c.prompts.coco_track = False  # `COCO_TRACK: False`: COCO does not feed the referring task (task.py)
  c.loss = defaults.loss_config()
  c.test = defaults.test_config()
  c.evaluation = defaults.evaluation_config()  # `dinoseg eval`: generic protocol (+ VOS with evaluation.vos_path)
  c.test.davis_min_size = 800

  # Per GPU one SA-1B image (referring task) and one COCO image (generic task); 64 GPUs in the reference recipe.
  c.dataset = ml_collections.ConfigDict(dict(class_names=categories.COCO_PANOPTIC_NAMES,
                                             category_ids=categories.COCO_PANOPTIC_IDS))
  c.data = ml_collections.ConfigDict()
  c.data.coco = pipeline.default_config()
  c.data.coco.update(dict(
      task="panoptic", name="coco_panoptic", batch_size=64, augment="lsj", image_size=(1024, 1024), min_scale=0.1,
      max_scale=2.0, max_instances=100, filter_empty=False, eval_image_size=(1344, 1344), eval_short_edge=800,
      eval_max_size=1333, eval_batch_size=8))
  c.data.sam = pipeline.default_config()
  c.data.sam.update(dict(
      task="instance", name="sa1b", batch_size=64, augment="lsj", image_size=(1024, 1024), min_scale=0.99,
      max_scale=1.01, max_instances=100, filter_empty=False))

  # 168,750 steps, lr x0.1 at steps 67,778 and 105,092 (the released yaml; see dinov.md section 7 on "50 epochs").
  c.train = train_defaults.train_config(num_steps=168_750, checkpoint_every_steps=5000, eval_every_steps=0)
  c.optimizer = train_defaults.optimizer_config(
      name="adamw", learning_rate=1e-4, weight_decay=0.05, lr_multipliers=((r"^backbone/", 0.1),),
      no_weight_decay=defaults.NO_WEIGHT_DECAY, clip_grad_norm=0.01, schedule="step", decay_steps=(67_778, 105_092))

  # ImageNet-22k Swin-L at 384: swin_large_patch4_window12_384_22k.pth (microsoft/Swin-Transformer release).
  # The reference trains the backbone with gradient checkpointing (USE_CHECKPOINT: true).
  c.init = ml_collections.ConfigDict()
  c.init.backbone = ml_collections.ConfigDict(dict(file="", converter="backbone", target="backbone", strict=True))
  # The released DINOv Swin-L checkpoint (the whole model) to fine-tune from.
  c.init.checkpoint = ml_collections.ConfigDict(dict(file="", converter="dinov_swinl_sam_coco", target="",
                                                     strict=True))

  if variant == "tiny":
    return defaults.tiny(c)
  if variant is not None:
    raise ValueError(f"unknown variant {variant!r} (known: tiny)")
  return c
