"""`dinoseg eval --config=FILE.py[:variant] --workdir=DIR [--step=N]`: evaluate a checkpoint.

Restores the newest usable checkpoint of DIR/checkpoints (or step N) onto the config's mesh,
runs the task's evaluation (EMA params when the run keeps them) and writes the results to
DIR/eval/step_<N>.json; they are also printed as JSON. Multi-process flags as for `dinoseg train`.
"""
import json
import sys

from dinoseg.train import distributed

HELP = "evaluate the newest (or a given) checkpoint of a workdir; results as JSON in the workdir"


def add_arguments(parser):
  parser.add_argument("--config", required=True, help="config file, optionally with :variant")
  parser.add_argument("--workdir", required=True, help="run directory holding checkpoints/")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest usable)")
  distributed.add_arguments(parser)


def main(args, overrides) -> int:
  from dinoseg.config import load_config  # noqa: PLC0415
  config = load_config(args.config, overrides)
  settings = distributed.from_args(args)
  distributed.initialize(settings)
  import jax  # noqa: PLC0415

  from dinoseg.train import checkpointing, trainer  # noqa: PLC0415
  try:
    out = trainer.evaluate_checkpoint(config, args.workdir, step=args.step)
  except checkpointing.CheckpointRestoreError as e:
    print(f"dinoseg eval: {e}", file=sys.stderr)
    return 1
  if jax.process_index() == 0:
    print(json.dumps(out, indent=2, sort_keys=True))
  return 0
