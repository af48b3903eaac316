"""Toy segmentation: a tiny conv net learning to segment synthetic squares and disks.

The worked example of the trainer (docs/training.md): every trainer feature runs on it in
seconds on a CPU. Train, evaluate the newest checkpoint, export the weights to PyTorch:

  dinoseg train --config=configs/toy/toy_segmentation.py --workdir=/tmp/toy
  dinoseg eval --config=configs/toy/toy_segmentation.py --workdir=/tmp/toy
  dinoseg convert --config=configs/toy/toy_segmentation.py --from=/tmp/toy/checkpoints/2000 --to=toy.pth

Tiny CPU variant (40 steps, used by the tests and scripts/bench_train.py):

  dinoseg train --config=configs/toy/toy_segmentation.py:tiny --workdir=/tmp/toy_tiny

Overrides take the usual form, e.g. `--config.train.compute_dtype=bfloat16`,
`--config.optimizer.grad_accum_steps=2`, `--config.mesh.fsdp=2`.
"""
import ml_collections

from dinoseg.train import defaults


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "toy_segmentation"
  c.seed = 0
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.model = ml_collections.ConfigDict(dict(name="toy_segmenter", num_classes=3, width=16, image_size=32,
                                           dropout_rate=0.1))
  c.data = ml_collections.ConfigDict(dict(batch_size=32, num_train_examples=4096, num_eval_examples=256, seed=0))
  c.loss = ml_collections.ConfigDict(dict(ce_weight=1.0, dice_weight=0.5))
  c.train = defaults.train_config(num_steps=2000, log_every_steps=50, checkpoint_every_steps=500,
                                  eval_every_steps=500, keep_last=2, keep_best=1, best_metric="mIoU")
  c.optimizer = defaults.optimizer_config(learning_rate=3e-3, weight_decay=1e-4, lr_multipliers=(("backbone", 0.5),),
                                          clip_grad_norm=1.0, schedule="cosine", warmup_steps=50)
  # Pretrained initialisation of a fresh run (docs/training.md): a whole toy model to fine-tune, e.g.
  # --config.init.checkpoint.file=toy.pth (a `dinoseg convert` export) or <workdir>/checkpoints/2000.
  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = defaults.init_entry(converter="task", target="")
  if variant == "tiny":
    c.model.width = 8
    c.model.image_size = 16
    c.data.batch_size = 16
    c.data.num_train_examples = 512
    c.data.num_eval_examples = 40
    c.train.num_steps = 40
    c.train.log_every_steps = 5
    c.train.checkpoint_every_steps = 10
    c.train.eval_every_steps = 20
    c.optimizer.learning_rate = 3e-2
    c.optimizer.warmup_steps = 5
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r} (known: tiny)")
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  if config.model.num_classes != 3:
    raise ValueError(f"model.num_classes must be 3 (background, square, disk), got {config.model.num_classes}")
  if config.model.image_size < 8:
    raise ValueError(f"model.image_size must be >= 8, got {config.model.image_size}")
