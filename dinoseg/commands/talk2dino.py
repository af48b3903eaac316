"""`dinoseg talk2dino ACTION --config=FILE.py[:variant]`: Talk2DINO jobs.

- `extract --split=train|val`: the feature pre-extraction job. Runs the frozen DINOv2 over the
  images of `config.features.dataset` (COCO 2014 captions) and the CLIP text tower over their
  captions, and writes the pooled image features (`avg_self_attn_out`, `disentangled_self_attn`)
  with the caption embeddings as ArrayRecord shards under `config.features.out_dir/<split>`
  (resumable: re-running continues at the first missing shard; a progress bar shows the images
  done). Training reads these shards through grain.
- `train --workdir=DIR`: projection training on the extracted features (resumes from DIR).
- `eval [--weights=FILE|DIR] [--benchmarks=voc,ade20k]`: mIoU per benchmark, JSON + the paper's table.
- `predict --weights=... --input=IMAGE --classes="cat,dog" [--with-background] [--output=seg.png]`.

`train`, `eval` and `predict` are the same code paths the generic `dinoseg train / eval / predict`
commands reach through the Talk2DINO task and predictor.
"""
import pathlib

from dinoseg.config import load_config

HELP = "Talk2DINO jobs: extract (training features), train, eval (benchmarks), predict (one image)"


def add_arguments(parser):
  parser.add_argument("action", choices=["extract", "train", "eval", "predict"], help="the job to run")
  parser.add_argument("--config", required=True, help="config file, optionally with :variant")
  parser.add_argument("--split", default="train", help="extract: which split of config.features.splits (train, val)")
  parser.add_argument("--out-dir", default=None, help="extract: output directory (default: features.out_dir/<split>)")
  parser.add_argument("--workdir", default=None, help="train: run directory (checkpoints, metrics, exported weights)")
  parser.add_argument("--weights", default=None,
                      help="eval/predict: projection weights (.pth/.safetensors/.msgpack or a training workdir)")
  parser.add_argument("--benchmarks", default=None, help="eval: comma-separated benchmark keys (default: config)")
  parser.add_argument("--input", default=None, help="predict: input image")
  parser.add_argument("--classes", default=None, help="predict: comma-separated class names")
  parser.add_argument("--with-background", action="store_true",
                      help="predict: background cleaning + a constant background class (config.predict.bg_thresh)")
  parser.add_argument("--output", default=None, help="predict: output PNG (default: <input stem>_talk2dino.png)")
  parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def feature_dir(config, split: str, out_dir: str | None = None) -> pathlib.Path:
  """Where the features of `split` live: out_dir or config.features.out_dir/<split>."""
  return pathlib.Path(out_dir) if out_dir else pathlib.Path(config.features.out_dir) / split


def main(args, overrides) -> int:
  config = load_config(args.config, overrides)
  if config.get("task") != "talk2dino":
    raise ValueError(f"{args.config} is not a Talk2DINO config (task={config.get('task')!r})")
  return {"extract": _extract, "train": _train, "eval": _eval, "predict": _predict}[args.action](args, config)


def _extract(args, config) -> int:
  splits = dict(config.features.splits)
  if args.split not in splits:
    raise ValueError(f"--split must be one of {sorted(splits)}, got {args.split!r}")
  import jax  # noqa: PLC0415

  from dinoseg.models.talk2dino.features import FeatureExtractor, extract_features  # noqa: PLC0415
  from dinoseg.models.talk2dino.model import build_model  # noqa: PLC0415
  from dinoseg.models.talk2dino.sources import build_source  # noqa: PLC0415
  from dinoseg.models.talk2dino.weights import load_model_params  # noqa: PLC0415

  source = build_source(config.features, splits[args.split])
  if config.features.max_images and len(source) > config.features.max_images:
    source = _Prefix(source, config.features.max_images)
  model = build_model(config.model)
  params = load_model_params(model, config, jax.random.key(config.seed))
  out = feature_dir(config, args.split, args.out_dir)
  extractor = FeatureExtractor(model, params, config.features.image_batch, config.features.text_batch)
  manifest = extract_features(
      source, extractor, out, shard_size=config.features.shard_size, image_size=config.features.image_size,
      image_dtype=config.features.image_dtype, progress=not args.no_progress,
      metadata={"dinov2": config.model.dinov2, "clip_text": config.model.clip_text,
                "weights": {k: config.weights.get(k, "") for k in ("dinov2", "clip_text")},
                "dataset": config.features.dataset, "split": splits[args.split]})
  n_caps = sum(sum(v) for v in manifest["shards"].values())
  print(f"{out}: {manifest['settings']['num_images']} images, {n_caps} captions in {len(manifest['shards'])} shards")
  return 0


def _train(args, config) -> int:
  if not args.workdir:
    raise ValueError("train needs --workdir")
  from dinoseg.models.talk2dino.task import fit  # noqa: PLC0415
  history = fit(config, args.workdir, progress=not args.no_progress)
  print(f"exported {history['exported']['safetensors']} and {history['exported']['msgpack']}")
  return 0


def _eval(args, config) -> int:
  from dinoseg.models.talk2dino.evaluate import run_evaluation  # noqa: PLC0415
  benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()] if args.benchmarks else None
  run_evaluation(config, args.weights, benchmarks, progress=not args.no_progress)
  if config.eval.output:
    print(f"wrote {config.eval.output}")
  return 0


def _predict(args, config) -> int:
  if not args.input or not args.classes:
    raise ValueError("predict needs --input and --classes")
  from dinoseg.models.talk2dino import predict as pr  # noqa: PLC0415
  classes = pr.parse_classes(args.classes)
  image = pr.read_image(args.input)
  prediction = pr.Talk2DinoPredictor(config, args.weights)(image, classes, args.with_background)
  output = args.output or str(pathlib.Path(args.input).with_name(pathlib.Path(args.input).stem + "_talk2dino.png"))
  paths = pr.save_prediction(image, prediction, output)
  print(f"wrote {paths['visualization']} and {paths['labels']}")
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
