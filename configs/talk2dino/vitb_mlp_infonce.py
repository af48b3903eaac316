"""Talk2DINO, ViT-B: DINOv2-B/14 with registers + CLIP ViT-B/16 text + MLP projection (InfoNCE).

The reference recipe (lorebianchi98/Talk2DINO `configs/vitb_mlp_infonce.yaml`): projection
Linear(512 -> 768) -> tanh -> Linear(768 -> 768) trained on cached COCO-2014 caption features,
Adam lr 1e-4, batch 128, 100 epochs, seed 123, fixed temperature 0.07, max-score head selection.

Run (features once, then training; evaluation and prediction use the same config):

  dinoseg talk2dino extract --config=configs/talk2dino/vitb_mlp_infonce.py --split=train
  dinoseg talk2dino extract --config=configs/talk2dino/vitb_mlp_infonce.py --split=val
  dinoseg train --config=configs/talk2dino/vitb_mlp_infonce.py --workdir=/tmp/t2d_vitb
  (or in the reference's epochs: dinoseg talk2dino train --config=... --workdir=/tmp/t2d_vitb)
  dinoseg eval --config=configs/talk2dino/vitb_mlp_infonce.py --weights=weights/vitb_mlp_infonce.pth
  dinoseg predict --config=configs/talk2dino/vitb_mlp_infonce.py --weights=weights/vitb_mlp_infonce.pth \\
      --input=cat.jpg --classes="cat,dog,grass" --with-background

`--config.init.dinov2.file` / `init.clip_text.file` name the backbone files (hub
`dinov2_vitb14_reg4_pretrain.pth`, the state dict of OpenAI `ViT-B-16.pt`, or converted
.safetensors/.msgpack), e.g. `--config.init.dinov2.file=weights/dinov2_vitb14_reg4_pretrain.pth
--config.init.clip_text.file=weights/clip_vitb16_text.safetensors`; `--weights` (or
`init.projection.file`) the projection. Tiny CPU variant (random backbones, synthetic captions and images):

  dinoseg talk2dino extract --config=configs/talk2dino/vitb_mlp_infonce.py:tiny --split=train
  dinoseg train --config=configs/talk2dino/vitb_mlp_infonce.py:tiny --workdir=/tmp/t2d_tiny
"""
import ml_collections

from dinoseg.train import defaults

BENCHMARK_KEYS = ("voc20", "context59", "coco_stuff", "cityscapes", "ade20k", "voc", "context", "coco_object")


def base_config(size: str) -> ml_collections.ConfigDict:
  """The shared Talk2DINO config; `size` is "vitb" or "vitl"."""
  width = {"vitb": 768, "vitl": 1024}[size]
  c = ml_collections.ConfigDict()
  c.task = "talk2dino"
  c.seed = 123
  c.model = ml_collections.ConfigDict(dict(
      dinov2=f"dinov2_{size}14_reg", dinov2_overrides=ml_collections.ConfigDict(),
      clip_text="clip_vitb16_text", clip_text_overrides=ml_collections.ConfigDict(),
      embed_dim=width, num_hidden_layers=1, activation="tanh", attention_scale=0.125, dtype="float32"))
  # Weight files of the three parts (dinoseg.convert.init; the converters follow config.model, so any widths).
  # Required: feature extraction reads dinov2 + clip_text, evaluation / prediction all three (`--weights`
  # sets the projection), `dinoseg train` trains the projection (random start unless a file is given).
  c.init = ml_collections.ConfigDict()
  c.init.dinov2 = defaults.init_entry(converter="dinov2", target="dinov2", required=True)
  c.init.clip_text = defaults.init_entry(converter="clip_text", target="clip_text", required=True)
  c.init.projection = defaults.init_entry(converter="projection", target="projection", required=True)
  # Feature pre-extraction (`dinoseg talk2dino extract`).
  c.features = ml_collections.ConfigDict(dict(
      dataset="coco2014_captions", data_dir="", splits=ml_collections.ConfigDict(dict(train="train", val="val")),
      out_dir=f"features/talk2dino_{size}", image_size=448, image_batch=64, text_batch=256, shard_size=1024,
      image_dtype="float32", max_images=0))
  # Projection training on the cached features: the caption pipeline (`data`), the shared
  # trainer's groups (`train`, `optimizer`: Adam = AdamW with weight_decay 0, constant lr, no clipping).
  c.data = ml_collections.ConfigDict(dict(
      batch_size=128, num_epochs=100, shuffle=True, image_feature="disentangled_self_attn",
      val_image_feature="avg_self_attn_out", eval_every_epochs=1, checkpoint_every_epochs=1))
  # COCO 2014 train: 414,113 captions -> 3,236 batches of 128 per epoch, 100 epochs.
  c.train = defaults.train_config(num_steps=323_600, log_every_steps=100, checkpoint_every_steps=3_236,
                                  eval_every_steps=3_236, keep_last=2)
  c.optimizer = defaults.optimizer_config(name="adamw", learning_rate=1e-4, weight_decay=0.0, b1=0.9, b2=0.999,
                                          eps=1e-8, no_weight_decay=(), clip_grad_norm=0.0, schedule="constant")
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # Open-vocabulary evaluation (`dinoseg eval`).
  c.eval = ml_collections.ConfigDict(dict(
      benchmarks=BENCHMARK_KEYS, data_dir="", template_set="sub_imagenet_template", backbone_size=size,
      short_side=448, max_long_side=2048, crop_size=448, stride=224, input_size=448,
      pamr=True, pamr_iters=10, lambda_bg=0.2, max_images=0, output="talk2dino_eval.json", synthetic=False))
  # `dinoseg predict` (sliding windows as in evaluation; --with-background adds the 0.55 channel + cleaning).
  # (classes / with_background are read by the shared `dinoseg predict`; `dinoseg talk2dino predict`
  # takes them as --classes / --with-background.)
  c.predict = ml_collections.ConfigDict(dict(bg_thresh={"vitb": 0.55, "vitl": 0.54}[size],
                                             template_set="sub_imagenet_template", classes="", with_background=False))
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Tiny CPU variant: random tiny backbones, synthetic captions and images, a few epochs."""
  c.model.dinov2_overrides = ml_collections.ConfigDict(dict(embed_dim=16, depth=1, num_heads=2, pos_embed_grid=2))
  c.model.clip_text_overrides = ml_collections.ConfigDict(dict(width=16, depth=1, num_heads=2, embed_dim=16))
  c.model.embed_dim = 16
  for part in ("dinov2", "clip_text", "projection"):
    c.init[part].required = False  # random tiny parts
  c.features.dataset = "synthetic_coco_captions"  # data_pipelines.synth scenes, prepared on first use
  c.features.data_dir = "/tmp/dinoseg_talk2dino_tiny/coco_captions"
  c.features.out_dir = "/tmp/dinoseg_talk2dino_tiny/features"
  c.features.image_size = 28
  c.features.image_batch = 8
  c.features.text_batch = 32
  c.features.shard_size = 16
  c.features.max_images = 32
  c.optimizer.learning_rate = 1e-2
  c.data.batch_size = 16
  c.data.num_epochs = 3
  c.train.num_steps = 30  # 3 epochs of 10 batches (32 images x 5 captions)
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 10
  c.train.eval_every_steps = 10
  c.train.progress = False
  c.eval.benchmarks = ("voc",)  # synthetic VOC layout (data_pipelines.synth), prepared on first use
  c.eval.data_dir = "/tmp/dinoseg_talk2dino_tiny/benchmarks"
  c.eval.synthetic = True
  c.eval.short_side = 28
  c.eval.crop_size = 28
  c.eval.stride = 14
  c.eval.input_size = 28
  c.eval.pamr_iters = 2
  c.eval.max_images = 4
  return c


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  c = base_config("vitb")
  if variant == "tiny":
    return tiny(c)
  if variant is not None:
    raise ValueError(f"unknown variant {variant!r} (known: tiny)")
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  if config.data.image_feature not in ("disentangled_self_attn", "avg_self_attn_out"):
    raise ValueError(f"data.image_feature must be disentangled_self_attn or avg_self_attn_out, "
                     f"got {config.data.image_feature!r}")
  if config.data.batch_size <= 0 or config.data.num_epochs <= 0:
    raise ValueError("data.batch_size and data.num_epochs must be positive")
