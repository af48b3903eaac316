"""`dinoseg data ...`: prepare ArrayRecord datasets, write synthetic raw data, inspect prepared data.

  dinoseg data prepare --dataset coco_instances --raw /data/coco --out /data/coco_prepared [--workers 8]
  dinoseg data synth --layout coco --out /tmp/shapes_raw [--num-images 64] [--image-size 128,192]
  dinoseg data inspect /data/coco_prepared [--verify] [--show 0]
  dinoseg data list

See docs/data.md for the record schema, the raw layouts and the batch formats.
"""
import json
import pathlib

from dinoseg.errors import UserError, UserFileNotFoundError, UserValueError

HELP = "prepare datasets as ArrayRecord shards, write synthetic raw datasets, inspect prepared data"
DESCRIPTION = ("Prepares raw datasets (official layouts) as ArrayRecord shards, writes small synthetic raw "
               "datasets, and inspects prepared ones. `dinoseg data SUBCOMMAND --help` lists its flags.")


def _subcommand(sub, name: str, text: str):
  return sub.add_parser(name, help=text, description=text)


def add_arguments(parser):
  sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
  p = _subcommand(sub, "prepare", "convert a raw dataset (official layout) into ArrayRecord shards")
  p.add_argument("--dataset", required=True, help="dataset name (see `dinoseg data list`)")
  p.add_argument("--raw", required=True, help="the dataset's raw root directory")
  p.add_argument("--output", "--out", dest="out", required=True, help="output directory (shards + manifest.json)")
  p.add_argument("--split", action="append", dest="splits", help="split to prepare (repeatable; default: all)")
  shards = p.add_mutually_exclusive_group()
  shards.add_argument("--num-shards", type=int, help="number of shards per split")
  shards.add_argument("--examples-per-shard", type=int, help="records per shard (default 1024)")
  p.add_argument("--workers", type=int, default=1, help="parallel processes writing shards")
  p.add_argument("--strict", action="store_true", help="stop at the first bad example/annotation instead of "
                                                      "skipping it (skips are always counted in the manifest)")
  p.add_argument("--overwrite", action="store_true", help="discard an unfinished preparation made with other arguments")
  p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                 help="preparer option (e.g. annotations=annotations/instances_{split}2017.json); JSON values ok")
  p.add_argument("--format", choices=("array_record", "tfds"), default="array_record",
                 help="tfds: write a TFDS ArrayRecord dataset (instance datasets; read with tfds.data_source)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")

  s = _subcommand(sub, "synth", "write a small synthetic raw dataset in an official layout")
  s.add_argument("--layout", required=True, help="raw layout name (see `dinoseg data list`)")
  s.add_argument("--output", "--out", dest="out", required=True, help="output directory")
  s.add_argument("--num-images", type=int, default=8, help="images (videos) per split")
  s.add_argument("--image-size", default="128,192", help="MIN,MAX side length in pixels, or one size")
  s.add_argument("--seed", type=int, default=0, help="random seed")
  s.add_argument("--splits", default="train,val", help="comma-separated splits")
  s.add_argument("--max-objects", type=int, default=6, help="maximum shapes per image")
  s.add_argument("--num-frames", type=int, default=6, help="frames per video (video layouts)")
  s.add_argument("--corrupt", action="store_true", help="add one case of each kind of bad raw data (coco layout)")

  i = _subcommand(sub, "inspect", "summarize a prepared dataset (counts, skipped data, checksums)")
  i.add_argument("dir", help="prepared dataset directory")
  i.add_argument("--verify", action="store_true", help="check every shard's SHA-256 against the manifest")
  i.add_argument("--show", type=int, default=None, metavar="INDEX", help="print a summary of one decoded record")
  i.add_argument("--split", default=None, help="split for --show (default: the first)")

  _subcommand(sub, "list", "list the dataset names and synthetic layouts")


def _parse_options(items) -> dict:
  options = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise UserValueError(f"--option must be KEY=VALUE, got {item!r}")
    try:
      options[key] = json.loads(value)
    except json.JSONDecodeError:
      options[key] = value
  return options


def _image_size(text: str) -> tuple[int, int]:
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError:
    raise UserValueError(f"--image-size must be MIN,MAX or one int, got {text!r}") from None
  if len(values) == 1:
    values = values * 2
  if len(values) != 2 or not 16 <= values[0] <= values[1]:
    raise UserValueError(f"--image-size must be MIN,MAX (16 <= MIN <= MAX) or one int >= 16, got {text!r}")
  return values[0], values[1]


def _check_prepare(args) -> None:
  """The checks of `prepare`'s arguments that need no data (user errors before any work)."""
  from dinoseg.data_pipelines import preparers  # noqa: PLC0415
  if args.dataset not in preparers.names():
    raise UserValueError(f"unknown dataset {args.dataset!r}; known: {', '.join(preparers.names())}")
  if not pathlib.Path(args.raw).is_dir():
    raise UserFileNotFoundError(f"--raw: {args.raw} is not a directory")
  raw, out = pathlib.Path(args.raw).resolve(), pathlib.Path(args.out).resolve()
  if out == raw or out.is_relative_to(raw):  # the shards and manifest would land among the raw files
    raise UserValueError(f"--output={args.out} is inside --raw={args.raw}: the raw data is the input and is not "
                         "written to; choose an output directory outside it")
  for flag, value in (("--num-shards", args.num_shards), ("--examples-per-shard", args.examples_per_shard),
                      ("--workers", args.workers)):
    if value is not None and value < 1:
      raise UserValueError(f"{flag} must be >= 1, got {value}")


def _prepare(args) -> int:
  from dinoseg.data_pipelines.preparers.base import BadRawData  # noqa: PLC0415
  _check_prepare(args)
  try:
    return _run_prepare(args)
  except BadRawData as e:  # --strict stops at the first bad example: the raw data is the input
    raise UserValueError(str(e)) from None
  except FileNotFoundError as e:  # a file the raw layout needs (annotations, split lists) is missing
    raise UserFileNotFoundError(f"{e} (is --raw the dataset's root, and --split right?)") from None


def _run_prepare(args) -> int:
  options = _parse_options(args.option)
  if args.format == "tfds":
    try:
      from dinoseg.data_pipelines import tfds_builders  # noqa: PLC0415  (imports tensorflow_datasets)
    except ModuleNotFoundError as e:
      if e.name != "tensorflow_datasets":
        raise
      raise UserError("--format tfds needs tensorflow-datasets: pip install 'dinoseg[tfds]'") from None
    builder = tfds_builders.prepare_tfds(args.dataset, args.raw, args.out, splits=args.splits, options=options,
                                         strict=args.strict)
    for split, issues in builder.issues.items():
      print(f"{split}: {json.dumps(issues['counts'])}")
    print(f"tfds.data_source('dinoseg_instances/{args.dataset}', data_dir={args.out!r})")
    return 0
  from dinoseg.data_pipelines import writer  # noqa: PLC0415
  manifest = writer.prepare(args.dataset, args.raw, args.out, splits=args.splits, options=options,
                            num_shards=args.num_shards, examples_per_shard=args.examples_per_shard,
                            num_workers=args.workers, strict=args.strict, overwrite=args.overwrite,
                            progress=not args.no_progress)
  _print_summary(manifest)
  return 0


def _print_summary(manifest: dict) -> None:
  print(f"dataset {manifest['dataset']} (record schema {manifest['schema']})")
  for split, entry in manifest["splits"].items():
    counts = entry["issues"]["counts"]
    print(f"  {split}: {entry['num_records']} records of {entry['num_items']} in {len(entry['shards'])} shards, "
          f"{sum(s['bytes'] for s in entry['shards']) / 2 ** 20:.1f} MiB")
    for kind in ("skipped_examples", "dropped_annotations", "repaired"):
      if counts.get(kind):
        print(f"    {kind.replace('_', ' ')}: " + ", ".join(f"{k} {v}" for k, v in counts[kind].items()))


def _synth(args) -> int:
  from dinoseg.data_pipelines import synth  # noqa: PLC0415
  if args.layout not in synth.LAYOUTS:
    raise UserValueError(f"unknown layout {args.layout!r}; known: {', '.join(synth.LAYOUTS)}")
  if args.num_images < 1:
    raise UserValueError(f"--num-images must be >= 1, got {args.num_images}")
  if args.corrupt and args.layout != "coco":
    raise UserValueError("--corrupt is only supported for the 'coco' layout")
  summary = synth.synthesize(args.layout, args.out, num_images=args.num_images, image_size=_image_size(args.image_size),
                             seed=args.seed, splits=tuple(s for s in args.splits.split(",") if s),
                             corrupt=args.corrupt, max_objects=args.max_objects, num_frames=args.num_frames)
  print(json.dumps(summary["splits"]))
  print(f"prepare with: dinoseg data prepare --dataset {summary['preparer']} --raw {args.out} --out OUT_DIR")
  return 0


def _inspect(args) -> int:
  from dinoseg.data_pipelines import dataset as dataset_lib, writer  # noqa: PLC0415
  if not (pathlib.Path(args.dir) / writer.MANIFEST).is_file():
    raise UserFileNotFoundError(f"{args.dir} holds no {writer.MANIFEST}: not a prepared dataset "
                                "(dinoseg data prepare writes one)")
  manifest = writer.read_manifest(args.dir)
  _print_summary(manifest)
  meta = manifest.get("metadata", {})
  if meta.get("categories"):
    print(f"  {len(meta['categories'])} categories: " + ", ".join(str(c.get("name", c["id"]))
                                                               for c in meta["categories"][:20]))
  if meta.get("label_maps"):
    print(f"  label maps: {', '.join(meta['label_maps'])}")
  status = 0
  if args.verify:
    for split, problems in writer.verify(args.dir).items():
      print(f"  verify {split}: " + ("ok" if not problems else "; ".join(problems)))
      status |= bool(problems)
  if args.show is not None:
    ds = dataset_lib.open_dataset(args.dir)
    split = args.split or ds.splits[0]
    if split not in ds.splits:
      raise UserValueError(f"--split {split!r} is not prepared in {args.dir}; prepared: {', '.join(ds.splits)}")
    view = ds.split(split)
    if not 0 <= args.show < len(view):
      raise UserValueError(f"--show {args.show} is out of range: {split} has {len(view)} records")
    ex = view[args.show]
    print(f"  {split}[{args.show}]: id {ex['image_id']} {ex['file_name']} size {tuple(int(v) for v in ex['original_hw'])}")
    for key in ("instances", "tracks"):
      if key in ex:
        print(f"    {key}: {len(ex[key]['id'])}, categories {ex[key]['category_id'].tolist()}")
    if "panoptic" in ex:
      print(f"    panoptic segments: {len(ex['panoptic']['segments']['id'])}")
    if "sem_seg" in ex:
      print(f"    sem_seg values: {sorted(set(ex['sem_seg'].ravel().tolist()))}")
    if "captions" in ex:
      for text in ex["captions"]["text"]:
        print(f"    caption: {text}")
  return int(status)


def _list() -> int:
  from dinoseg.data_pipelines import preparers, synth  # noqa: PLC0415
  print("datasets (dinoseg data prepare --dataset NAME):")
  for name in preparers.names():
    print(f"  {name:<18}{preparers.base.PREPARERS[name].description}")
  print("synthetic layouts (dinoseg data synth --layout NAME) -> dataset:")
  for layout, prep in synth.PREPARER_FOR_LAYOUT.items():
    print(f"  {layout:<18}{prep}")
  return 0


def main(args, overrides) -> int:
  command = getattr(args, "data_command", None)
  if command == "prepare":
    return _prepare(args)
  if command == "synth":
    return _synth(args)
  if command == "inspect":
    return _inspect(args)
  if command == "list":
    return _list()
  raise UserValueError("give a subcommand: prepare, synth, inspect or list (dinoseg data SUBCOMMAND --help)")
