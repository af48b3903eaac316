"""`dinoseg dinov JOB --config=FILE.py[:variant]`: DINOv inference protocols (each job has its own flags).

- `bank --weights=W --data=D --out=DIR [--split=S]`: the prompt bank (dinoseg.models.dinov.bank): every
  ground-truth instance of D encoded as one prompt embedding, one `category_<id>.npz` per category plus
  `index.json` in DIR (created; an existing non-empty DIR is refused). D is a prepared dataset
  (`dinoseg data prepare` output; split S, default `config.data.coco.eval_split`), a directory of images with
  mask PNGs `<image file name>__<category>[__<n>].png`, or a COCO JSON.
- `eval --protocol=generic --weights=W --bank=DIR [--data=D] [--num-examples=16] [--seed=0]`: the generic
  open-set evaluation (dinoseg.models.dinov.evaluate): per category the mean of N seeded bank draws, COCO
  PQ / mask AP / box AP / mIoU on D (default `config.data.coco.path`).
- `eval --protocol=vos --weights=W --vos=D [--split=S]` (`--vos` alone implies the protocol; `--data` works
  too): video object segmentation (dinoseg.models.dinov.vos) on D, the unpacked DAVIS-2017 download
  (JPEGImages/480p, Annotations/480p, ImageSets/2017/<split>.txt; default split val) or a prepared video
  dataset's tracks, scored with the DAVIS-2017 J&F. Objects enter on their first annotated frame.

`eval` prints the metrics as JSON on stdout and, with `--output=FILE` (a new file), writes them there.
`--random-init` replaces --weights with random weights (smoke tests only).

  dinoseg dinov bank --config=configs/dinov/swint_sam_coco.py --weights=dinov_swint.pth \\
      --data=/data/coco_panoptic_prepared --out=/tmp/dinov_bank_val
  dinoseg dinov eval --protocol=generic --config=configs/dinov/swint_sam_coco.py --weights=dinov_swint.pth \\
      --bank=/tmp/dinov_bank_val --num-examples=16 --config.data.coco.path=/data/coco_panoptic_prepared
  dinoseg dinov eval --config=configs/dinov/swint_sam_coco.py --weights=dinov_swint.pth --vos=/data/DAVIS

`dinoseg eval --config=... --weights=W` (or --workdir) runs the protocols `config.evaluation` names (the
generic one with a bank built from data.coco's train split, and VOS when `evaluation.vos_path` is set).
"""
import json
import pathlib

from dinoseg.errors import UserValueError

HELP = "DINOv jobs: bank (prompt bank from examples), eval (generic open-set or video object segmentation)"
DESCRIPTION = "DINOv inference protocols. `dinoseg dinov JOB --help` lists the flags of one job."
PROTOCOLS = ("generic", "vos")


def add_arguments(parser):
  jobs = parser.add_subparsers(dest="action", metavar="JOB")

  def job(name: str, description: str):
    p = jobs.add_parser(name, help=description, description=description)
    p.add_argument("--config", required=True, help="a DINOv config file, optionally with :variant")
    p.add_argument("--weights", default=None, help="DINOv weights: a released .pth, a .msgpack or a checkpoint dir")
    p.add_argument("--random-init", action="store_true", help="random weights instead of --weights (smoke tests)")
    return p

  p = job("bank", "encode every ground-truth instance of a dataset (or of example images) into a prompt bank")
  p.add_argument("--data", required=True,
                 help="a prepared dataset, a directory of images + <image>__<category>.png masks, or a COCO JSON")
  p.add_argument("--split", default=None, help="split of a prepared dataset (default: config.data.coco.eval_split)")
  p.add_argument("--out", required=True, help="output directory (created; must not exist or be empty)")
  p.add_argument("--slots", type=int, default=16, help="prompts encoded per call (static)")
  p = job("eval", "evaluate a protocol: generic (COCO PQ / AP through a bank) or vos (DAVIS J&F)")
  p.add_argument("--protocol", default=None, choices=PROTOCOLS, help="the protocol (default: vos with --vos)")
  p.add_argument("--vos", default=None,
                 help="vos: a DAVIS-2017 root (JPEGImages/, Annotations/, ImageSets/) or a prepared video dataset")
  p.add_argument("--bank", default=None, help="generic: the prompt bank directory (`dinoseg dinov bank`)")
  p.add_argument("--data", default=None,
                 help="a prepared dataset (generic default: config.data.coco.path; vos: a video dataset)")
  p.add_argument("--split", default=None,
                 help="the split (default: config.data.coco.eval_split; vos: config.evaluation.vos_split)")
  p.add_argument("--num-examples", type=int, default=None,
                 help="generic: bank draws averaged per category (default: config.prompts.inference_example)")
  p.add_argument("--seed", type=int, default=0, help="generic: seed of the bank draws")
  p.add_argument("--max-batches", type=int, default=0, help="generic: stop after N eval batches (0: all)")
  p.add_argument("--max-videos", type=int, default=0, help="vos: stop after N videos (0: all)")
  p.add_argument("--output", default=None, help="also write the metrics to this JSON file (must not exist)")


def _check_weights(args) -> None:
  from dinoseg.errors import UserFileNotFoundError  # noqa: PLC0415
  if args.weights is None and not args.random_init:
    raise UserValueError("give --weights=FILE (or --random-init for a smoke test)")
  if args.weights is not None and args.random_init:
    raise UserValueError("give either --weights or --random-init, not both")
  if args.weights is not None and not pathlib.Path(args.weights).exists():
    raise UserFileNotFoundError(f"no such weights file or directory: {args.weights}")


def _model(config, args):
  from dinoseg.models.dinov.model import build_model  # noqa: PLC0415
  from dinoseg.models.dinov.predict import load_variables  # noqa: PLC0415
  return build_model(config.model), load_variables(config, args.weights, allow_random=args.random_init)


def _bank(config, args) -> int:
  from dinoseg.models.dinov import bank as bank_lib  # noqa: PLC0415
  data, out = pathlib.Path(args.data), pathlib.Path(args.out)
  if not data.exists():
    raise UserValueError(f"--data={data}: no such dataset, directory or file")
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise UserValueError(f"--out={out} exists and is not an empty directory (nothing is overwritten)")
  if args.slots < 1:
    raise UserValueError(f"--slots must be >= 1, got {args.slots}")
  if (data / "manifest.json").is_file():  # a prepared dataset (dinoseg.data_pipelines)
    split = args.split or config.data.coco.eval_split
    examples, names = bank_lib.examples_from_prepared(data, split)
    source = f"{data}:{split}"
  else:
    examples, names = bank_lib.examples_from_path(data)
    source = str(data)
  model, variables = _model(config, args)
  encoder = bank_lib.PromptBankEncoder(model, variables, config, slots=args.slots)
  bank = bank_lib.build_bank(encoder, examples, names, source=source)
  index = bank_lib.write_bank(bank, out)
  total = sum(bank.count(c) for c in bank.category_ids)
  empty = [bank.names[c] for c in bank.category_ids if bank.count(c) == 0]
  print(f"{total} embeddings of {len(bank.category_ids)} categories in {out} ({index.name})"
        + (f"; no examples of: {', '.join(empty[:10])}" if empty else ""))
  return 0


def _eval(config, args) -> int:
  output = pathlib.Path(args.output) if args.output else None
  if output is not None and output.exists():
    raise UserValueError(f"--output={output} exists (nothing is overwritten)")
  if args.protocol is None:
    if not args.vos:
      raise UserValueError("give --protocol=generic|vos (or --vos=DIR for video object segmentation)")
    args.protocol = "vos"
  if args.vos and args.protocol != "vos":
    raise UserValueError("--vos is the dataset of --protocol=vos")
  if args.vos and args.data and args.vos != args.data:
    raise UserValueError("give the video dataset once: --vos=DIR (or --data=DIR)")
  if args.protocol == "generic":
    from dinoseg.models.dinov import bank as bank_lib, evaluate  # noqa: PLC0415
    if not args.bank:
      raise UserValueError("--protocol=generic needs --bank=DIR (`dinoseg dinov bank` output)")
    if args.num_examples is not None and args.num_examples < 1:
      raise UserValueError(f"--num-examples must be >= 1, got {args.num_examples}")
    data = config.data.coco
    if args.data:
      data.path = args.data
    if args.split:
      data.eval_split = args.split
    bank = bank_lib.read_bank(args.bank, int(config.model.decoder.hidden_dim))
    model, variables = _model(config, args)
    metrics = evaluate.evaluate_generic(model, variables, config, bank, data=data, num_examples=args.num_examples,
                                        seed=args.seed, max_batches=args.max_batches)
  else:
    from dinoseg.models.dinov import vos  # noqa: PLC0415
    path = args.vos or args.data or config.get("evaluation", {}).get("vos_path")
    if not path:
      raise UserValueError("--protocol=vos needs --vos=DIR (a DAVIS-2017 root or a prepared video dataset)")
    if not pathlib.Path(path).is_dir():
      raise UserValueError(f"--vos={path}: no such directory")
    split = args.split or config.get("evaluation", {}).get("vos_split") or "val"
    model, variables = _model(config, args)
    segmenter = vos.VideoObjectSegmenter(model, variables, config)
    metrics = vos.evaluate_vos(segmenter, path, split, max_videos=args.max_videos)
  text = json.dumps({"protocol": args.protocol, "results": metrics}, indent=1, allow_nan=True)
  print(text)
  if output is not None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
  return 0


def main(args, overrides) -> int:
  from dinoseg.config import load_config  # noqa: PLC0415
  if getattr(args, "action", None) is None:
    raise UserValueError("name a job: bank or eval (dinoseg dinov JOB --help)")
  config = load_config(args.config, list(overrides))
  if config.get("task") != "dinov":
    raise UserValueError(f"--config={args.config} is not a DINOv config (task {config.get('task')!r})")
  _check_weights(args)
  return _bank(config, args) if args.action == "bank" else _eval(config, args)
