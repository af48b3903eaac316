"""`dinoseg talk2dino JOB --config=FILE.py[:variant]`: Talk2DINO jobs (each job has its own flags).

- `extract --split=train|val`: the feature pre-extraction job. Runs the frozen DINOv2 over the
  images of `config.features.dataset` (COCO 2014 captions) and the CLIP text tower over their
  captions, and writes the pooled image features (`avg_self_attn_out`, `disentangled_self_attn`)
  with the caption embeddings as ArrayRecord shards under `config.features.out_dir/<split>`
  (resumable: re-running continues at the first missing shard; a progress bar shows the images
  done). Training reads these shards through grain.
- `train --workdir=DIR`: projection training on the extracted features: the shared trainer (`dinoseg
  train`, task "talk2dino": checkpoints, resume from DIR, `config.init.projection`, stop signals) run for
  the reference's `data.num_epochs` epochs (validation and a checkpoint every epoch by default), then the
  projection exported as DIR/projection.safetensors (reference layout) and DIR/projection.msgpack.
- `eval [--weights=FILE|DIR] [--benchmarks=voc,ade20k] [--output=DIR]`: mIoU per benchmark, the paper's
  table, and the JSON results in DIR/talk2dino_eval.json (or `--config.eval.output=FILE`).
- `predict --weights=... --input=IMAGE --classes="cat,dog" --output=DIR [--with-background]`: writes
  DIR/<input file name>.png (colours + legend) and DIR/<input file name>_labels.png (for `cat.jpg`:
  `cat.jpg.png`, `cat.jpg_labels.png`), named like the outputs of `dinoseg predict`.

`--output` is a directory, as in every dinoseg command; nothing is written into the working directory
unless asked. `train`, `eval` and `predict` are the same code paths the generic `dinoseg train / eval /
predict` commands (and `dinoseg.load`) reach through the Talk2DINO task and predictor.
"""
import pathlib

from dinoseg.commands import train
from dinoseg.config import load_config
from dinoseg.errors import UserValueError

HELP = "Talk2DINO jobs: extract (training features), train, eval (benchmarks), predict (one image)"
DESCRIPTION = "Talk2DINO jobs. `dinoseg talk2dino JOB --help` lists the flags of one job."
EVAL_RESULTS = "talk2dino_eval.json"


def add_arguments(parser):
  jobs = parser.add_subparsers(dest="action", metavar="JOB")

  def job(name: str, description: str):
    p = jobs.add_parser(name, help=description, description=description)
    p.add_argument("--config", required=True, help="config file, optionally with :variant")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p

  p = job("extract", "pre-extract DINOv2 image features and CLIP caption embeddings as ArrayRecord shards")
  p.add_argument("--split", default="train", help="which split of config.features.splits (train, val)")
  p.add_argument("--output", "--out-dir", dest="out_dir", default=None,
                 help="output directory (default: config.features.out_dir/<split>)")
  description = ("train the projection on the extracted features for config.data.num_epochs epochs (the shared "
                 "trainer: the flags of `dinoseg train`; resumes from the workdir)")
  p = jobs.add_parser("train", help=description, description=description)
  train.add_arguments(p)  # --config, --workdir and the trainer's other flags
  p.add_argument("--no-progress", action="store_true", help="hide progress bars")
  p = job("eval", "mIoU on the open-vocabulary benchmarks, printed as the paper's table")
  p.add_argument("--weights", default=None,
                 help="projection weights (.pth/.safetensors/.msgpack or a training workdir; default: "
                      "config.init.projection.file)")
  p.add_argument("--benchmarks", default=None, help="comma-separated benchmark keys (default: config.eval.benchmarks)")
  p.add_argument("--output", default=None,
                 help=f"directory for the JSON results ({EVAL_RESULTS}); without it nothing is written unless "
                      "--config.eval.output=FILE is given")
  p = job("predict", "segment one image with free-form class names")
  p.add_argument("--weights", default=None,
                 help="projection weights (.pth/.safetensors/.msgpack or a training workdir; default: "
                      "config.init.projection.file)")
  p.add_argument("--input", required=True, help="input image")
  p.add_argument("--classes", required=True, help="comma-separated class names, e.g. 'cat,dog,grass'")
  p.add_argument("--with-background", action="store_true",
                 help="background cleaning + a constant background class (config.predict.bg_thresh)")
  p.add_argument("--output", required=True,
                 help="output directory (created): <input file name>.png and <input file name>_labels.png")


def feature_dir(config, split: str, out_dir: str | None = None) -> pathlib.Path:
  """Where the features of `split` live: out_dir or config.features.out_dir/<split>."""
  return pathlib.Path(out_dir) if out_dir else pathlib.Path(config.features.out_dir) / split


def main(args, overrides) -> int:
  if getattr(args, "action", None) is None:
    raise UserValueError("name a job: extract, train, eval or predict (dinoseg talk2dino JOB --help)")
  overrides = list(overrides)
  if args.action == "eval":
    if args.output:
      overrides.append(f"eval.output={pathlib.Path(args.output) / EVAL_RESULTS}")
    elif not any(o.split("=", 1)[0].strip().removeprefix("config.") == "eval.output" for o in overrides):
      overrides.append("eval.output=")  # written only where asked
  config = load_config(args.config, overrides)
  if config.get("task") != "talk2dino":
    raise UserValueError(f"{args.config} is not a Talk2DINO config (task={config.get('task')!r})")
  if args.action == "train":
    return _train(args, config, overrides)
  return {"extract": _extract, "eval": _eval, "predict": _predict}[args.action](args, config)


def _extract(args, config) -> int:
  splits = dict(config.features.splits)
  if args.split not in splits:
    raise UserValueError(f"--split must be one of {sorted(splits)}, got {args.split!r}")
  import jax  # noqa: PLC0415

  from dinoseg.models.talk2dino.features import FeatureExtractor, extract_features  # noqa: PLC0415
  from dinoseg.models.talk2dino.model import build_model  # noqa: PLC0415
  from dinoseg.models.talk2dino.sources import build_source  # noqa: PLC0415
  from dinoseg.models.talk2dino.weights import load_model_params  # noqa: PLC0415

  source = build_source(config.features, splits[args.split])
  if config.features.max_images and len(source) > config.features.max_images:
    source = _Prefix(source, config.features.max_images)
  model = build_model(config.model)
  params = load_model_params(model, config, jax.random.key(config.seed), without=("projection",))
  out = feature_dir(config, args.split, args.out_dir)
  extractor = FeatureExtractor(model, params, config.features.image_batch, config.features.text_batch)
  manifest = extract_features(
      source, extractor, out, shard_size=config.features.shard_size, image_size=config.features.image_size,
      image_dtype=config.features.image_dtype, progress=not args.no_progress,
      metadata={"dinov2": config.model.dinov2, "clip_text": config.model.clip_text,
                "weights": {k: config.init[k].file for k in ("dinov2", "clip_text") if k in config.init},
                "dataset": config.features.dataset, "split": splits[args.split]})
  n_caps = sum(sum(v) for v in manifest["shards"].values())
  print(f"{out}: {manifest['settings']['num_images']} images, {n_caps} captions in {len(manifest['shards'])} shards")
  return 0


def _train(args, config, overrides) -> int:
  """`dinoseg train` with the epochs as steps (`task.epoch_overrides`), then the projection exported."""
  from dinoseg.models.talk2dino.task import Talk2DinoTask, epoch_overrides, export_projection  # noqa: PLC0415
  overrides = epoch_overrides(config) + list(overrides) + (["train.progress=False"] if args.no_progress else [])
  status = train.main(args, overrides)
  if status != 0:
    return status
  config = load_config(args.config, overrides)
  exported = export_projection(Talk2DinoTask(config).variables_from_weights(args.workdir)["params"], args.workdir)
  print(f"exported {exported['safetensors']} and {exported['msgpack']}")
  return 0


def _eval(args, config) -> int:
  from dinoseg.models.talk2dino.evaluate import run_evaluation  # noqa: PLC0415
  benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()] if args.benchmarks else None
  run_evaluation(config, args.weights, benchmarks, progress=not args.no_progress)
  if config.eval.output:
    print(f"wrote {config.eval.output}")
  return 0


def _predict(args, config) -> int:
  from dinoseg import predict  # noqa: PLC0415
  from dinoseg.models.talk2dino.predict import parse_classes  # noqa: PLC0415
  classes = parse_classes(args.classes)
  image = predict.read_image(args.input)
  predictor = predict.build_predictor(config, args.weights)
  result = predictor.predict(image, class_names=classes, with_background=args.with_background)
  paths = predictor.write(result, image, args.output, predict.output_name(args.input))
  print(f"wrote {paths[0]} and {paths[1]}")
  return 0


class _Prefix:
  """The first n items of a random-access source."""

  def __init__(self, source, n: int):
    self.source, self.n = source, int(n)

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.source[i]
