"""SegNext ViT-B/16 at 1024 with 2 fusion blocks (sax2), trained on COCO+LVIS (uncbiag/SegNext).

The reference recipe (`models/default/plainvit_base1024_cocolvis_sax2.py`): MAE ViT-B backbone
(position grid resized 14 -> 64 bicubically), normalized focal loss (alpha 0.5, gamma 2), up to
24 initial clicks per polarity (RITM MultiPointSampler), 0-3 extra no-grad click rounds per batch,
Adam lr 5e-5 (betas 0.9/0.999, eps 1e-8, no weight decay) x0.1 at epochs 50 and 90 of 100,
30,000 samples per epoch, batch 16. Beyond the reference: box and scribble prompts sampled from
the ground truth (`prompts.box_prob` / `scribble_prob`), as extra dense channels.

Data: `dinoseg data prepare` the COCO+LVIS annotations (RITM's combined set, e.g. as LVIS) into
`data.path`, DAVIS-345 / HQSeg-44K into the `eval.datasets` directories (docs/data.md).

  dinoseg train --config=configs/segnext/vitb_sax2.py --workdir=/tmp/segnext_sax2 \\
      --config.data.path=data/cocolvis --config.init.backbone.file=weights/mae_pretrain_vit_base.pth
  dinoseg eval --config=configs/segnext/vitb_sax2.py --workdir=/tmp/segnext_sax2
  dinoseg eval --config=configs/segnext/vitb_sax2.py --weights=weights/vitb_sa2_cocolvis_epoch_90.pth
  dinoseg demo segnext --weights=weights/vitb_sa2_cocolvis_epoch_90.pth --port=8008

`--weights` takes a released checkpoint (.pth, converted on the fly) or an Orbax directory; `dinoseg eval`
evaluates it on `eval.datasets` (curves to `eval.output_dir` when set; see docs/segnext.md).
Tiny CPU variant (128 px, width 32, random init, synthetic data prepared into /tmp):

  dinoseg data synth --layout hqseg44k --out /tmp/segnext_raw --num-images 16
  dinoseg data prepare --dataset hqseg44k --raw /tmp/segnext_raw --out /tmp/dinoseg_segnext_tiny_data
  dinoseg train --config=configs/segnext/vitb_sax2.py:tiny --workdir=/tmp/segnext_tiny
  dinoseg demo segnext --config=configs/segnext/vitb_sax2.py:tiny --random-init
"""
import ml_collections

from dinoseg.train import defaults

SAMPLES_PER_EPOCH = 30_000  # the reference's epoch_len


def base_config(fusion_depth: int = 2, batch_size: int = 16, num_epochs: int = 100) -> ml_collections.ConfigDict:
  """The shared SegNext config (ViT-B/16 at 1024; `fusion_depth` 1 = sax1, 2 = sax2)."""
  steps_per_epoch = SAMPLES_PER_EPOCH // batch_size
  c = ml_collections.ConfigDict()
  c.task = "segnext"
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(
      name=f"segnext_vitb_sax{fusion_depth}", image_size=1024, patch_size=16, embed_dim=768, depth=12,
      num_heads=12, mlp_ratio=4.0, global_atten_freq=3, window_size_px=224, fusion_depth=fusion_depth,
      neck_dims=(128, 256, 512, 1024), head_channels=256, dropout_rate=0.1, norm_radius=5.0,
      extra_prompts=True, scribble_radius=3.0, dtype="float32"))
  # Pretrained initialisation (dinoseg.convert.init), applied by the trainer to a fresh run. checkpoint: a full
  # SegNext checkpoint (.pth or Orbax directory) to fine-tune; backbone: MAE ViT-B weights
  # (mae_pretrain_vit_base.pth), position grid resized 14 -> 64, partial as the reference's strict=False
  # (cls_token and norm unused, fc_norm stays random). One of them is required (a checkpoint covers the backbone).
  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = defaults.init_entry(converter="task", target="", strict=True)
  c.init.backbone = defaults.init_entry(converter="backbone", target="backbone", strict=False, required=True)
  # The data pipelines' "interactive" task (one object per example, longest side resized to the
  # canvas x U(0.75, 1.40), flips, top-left zero padding) + the "segnext" prompt sampler: RITM
  # MultiPointSampler clicks as SegNext sets them, plus GT boxes and scribbles.
  c.data = ml_collections.ConfigDict(dict(
      task="interactive", name="cocolvis", path="", train_split="train", batch_size=batch_size,
      image_size=(1024, 1024), min_scale=0.75, max_scale=1.40, flip_prob=0.5, num_workers=2,
      prompt_sampler="segnext", extra_modules=("dinoseg.models.segnext.data",),
      prompt_sampler_options=ml_collections.ConfigDict(dict(
          max_num_points=24, prob_gamma=0.80, merge_objects_prob=0.15, max_num_merged_objects=2,
          box_prob=0.25, scribble_prob=0.25, keep_clicks_prob=0.5, box_jitter=0.1, num_scribbles=2,
          scribble_length=16))))
  # Iterative training: 0..max_rounds no-grad click rounds per batch; normalized focal loss.
  c.segnext = ml_collections.ConfigDict(dict(max_rounds=3, loss_alpha=0.5, loss_gamma=2.0, edt_row_chunk=64))
  c.train = defaults.train_config(num_steps=num_epochs * steps_per_epoch, log_every_steps=25,
                                  checkpoint_every_steps=10 * steps_per_epoch, eval_at_end=False)
  # Adam (adamw with weight_decay 0), lr 5e-5, x0.1 at epochs 50 and 90 (MultiStepLR).
  c.optimizer = defaults.optimizer_config(
      name="adamw", learning_rate=5e-5, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, schedule="step",
      decay_steps=(50 * steps_per_epoch, 90 * steps_per_epoch), decay_factor=0.1)
  # Click protocol evaluation: datasets "label=prepared_dir[:split]" (DAVIS-345: val; HQSeg-44K: val),
  # 20 clicks, threshold 0.49, NoC@85/90/95, NoF, mIoU@k, curves to output_dir; one-round box / scribble.
  c.eval = ml_collections.ConfigDict(dict(
      datasets=("DAVIS=data/davis345:val", "HQSeg44K=data/hqseg44k:val"), batch_size=8, max_clicks=20,
      pred_threshold=0.49, noc_thresholds=(0.85, 0.90, 0.95), prompt_types=("box", "scribble"),
      max_examples=0, output_dir=""))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Tiny CPU variant: 128 px (2x2 windows of 64 px), width 32, random init, synthetic interactive data."""
  c.model.update(dict(image_size=128, window_size_px=64, embed_dim=32, depth=2, num_heads=2, global_atten_freq=2,
                      neck_dims=(8, 16, 24, 32), head_channels=16))
  c.init.checkpoint.required = c.init.backbone.required = False  # random init
  c.data.update(dict(name="synthetic_interactive", path="/tmp/dinoseg_segnext_tiny_data", batch_size=8,
                     image_size=(128, 128), num_workers=0))
  c.data.prompt_sampler_options.update(dict(max_num_points=6, scribble_length=8))
  c.segnext.edt_row_chunk = 0
  c.train = defaults.train_config(num_steps=20, log_every_steps=5, checkpoint_every_steps=10, eval_at_end=False,
                                  progress=False)
  c.optimizer.update(dict(learning_rate=1e-3, decay_steps=(15,)))
  c.eval.update(dict(datasets=("synthetic=/tmp/dinoseg_segnext_tiny_data:val",), max_clicks=5, max_examples=8))
  return c


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  c = base_config(2)
  if variant == "tiny":
    return tiny(c)
  if variant is not None:
    raise ValueError(f"unknown variant {variant!r} (known: tiny)")
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  m = config.model
  if m.image_size % m.patch_size:
    raise ValueError(f"model.image_size={m.image_size} must be a multiple of model.patch_size={m.patch_size}")
  if m.fusion_depth < 0:
    raise ValueError(f"model.fusion_depth must be >= 0, got {m.fusion_depth}")
  if tuple(config.data.image_size) != (m.image_size, m.image_size):
    raise ValueError(f"data.image_size {tuple(config.data.image_size)} must equal the model frame "
                     f"({m.image_size}, {m.image_size})")
  p = config.data.prompt_sampler_options
  if p.box_prob < 0 or p.scribble_prob < 0 or p.box_prob + p.scribble_prob > 1:
    raise ValueError(f"box_prob + scribble_prob must be in [0, 1], got {p.box_prob}, {p.scribble_prob}")
  if (p.box_prob > 0 or p.scribble_prob > 0) and not m.extra_prompts:
    raise ValueError("box / scribble prompts need model.extra_prompts=True")
  if config.segnext.max_rounds < 0:
    raise ValueError(f"segnext.max_rounds must be >= 0, got {config.segnext.max_rounds}")
  if config.eval.max_clicks <= 0:
    raise ValueError(f"eval.max_clicks must be positive, got {config.eval.max_clicks}")
