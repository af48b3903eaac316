"""`dinoseg eval`: evaluate a training checkpoint or a weights file.

  dinoseg eval --config=FILE.py[:variant] --workdir=DIR [--step=N]
  dinoseg eval --config=FILE.py[:variant] --weights=FILE_OR_DIR [--workdir=DIR]

With --workdir only: restores the newest usable checkpoint of DIR/checkpoints (or step N) onto the
config's mesh, runs the task's evaluation (EMA params when the run keeps them) and writes the
results to DIR/eval/step_<N>.json. With --weights: the task reads the file (a released PyTorch
checkpoint, converted strictly, or an Orbax directory; see each system's docs) and evaluates it;
results go to DIR/eval/weights_<name>.json when --workdir is given. Results are also printed as
JSON. Multi-process flags as for `dinoseg train`.
"""
import json
import sys

from dinoseg.train import distributed

HELP = "evaluate a checkpoint of a workdir or a weights file; results as JSON"


def add_arguments(parser):
  parser.add_argument("--config", required=True, help="config file, optionally with :variant")
  parser.add_argument("--workdir", default=None, help="run directory holding checkpoints/ (results go to its eval/)")
  parser.add_argument("--weights", default=None,
                      help="a weights file or directory to evaluate instead of the workdir's checkpoints")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest usable)")
  distributed.add_arguments(parser)


def main(args, overrides) -> int:
  if not args.workdir and not args.weights:
    print("dinoseg eval: give --workdir (evaluate its checkpoints) or --weights (evaluate a file)", file=sys.stderr)
    return 2
  if args.weights and args.step is not None:
    print("dinoseg eval: --step selects a workdir checkpoint; it cannot be used with --weights", file=sys.stderr)
    return 2
  from dinoseg.config import load_config  # noqa: PLC0415
  config = load_config(args.config, overrides)
  settings = distributed.from_args(args)
  distributed.initialize(settings)
  import jax  # noqa: PLC0415

  from dinoseg.train import checkpointing, trainer  # noqa: PLC0415
  try:
    if args.weights:
      out = trainer.evaluate_weights(config, args.weights, workdir=args.workdir)
    else:
      out = trainer.evaluate_checkpoint(config, args.workdir, step=args.step)
  except (checkpointing.CheckpointRestoreError, FileNotFoundError, ValueError) as e:
    print(f"dinoseg eval: {e}", file=sys.stderr)
    return 1
  if jax.process_index() == 0:
    print(json.dumps(out, indent=2, sort_keys=True, default=float))
  return 0
