"""`dinoseg train --config=FILE.py[:variant] --workdir=DIR [--config.a.b=value ...]`: train a config.

The task named by `config.task` is trained with the shared trainer (dinoseg.train.trainer). A
workdir that already holds checkpoints is resumed from its newest usable one. SIGTERM saves a
checkpoint at the current step and exits 0. Multi-process runs pass the same command to every
process with `--coordinator-address/--num-processes/--process-id` (or the DINOSEG_* environment
variables, or `--distributed` for JAX's cluster auto-detection). Exit status: 0 done or
preempted, 1 the run diverged or no checkpoint could be restored, 2 bad input.
"""
import sys

from dinoseg.train import distributed

HELP = "train a config in a workdir (resumes from its checkpoints; SIGTERM saves and exits)"


def add_arguments(parser):
  parser.add_argument("--config", required=True, help="config file, optionally with :variant")
  parser.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics, eval results)")
  distributed.add_arguments(parser)


def _prepare_absl() -> None:
  import absl.flags  # noqa: PLC0415  (grain worker processes read absl flags)
  if not absl.flags.FLAGS.is_parsed():
    absl.flags.FLAGS.mark_as_parsed()


def main(args, overrides) -> int:
  from dinoseg.config import load_config  # noqa: PLC0415
  config = load_config(args.config, overrides)
  settings = distributed.from_args(args)
  _prepare_absl()
  distributed.initialize(settings)
  from dinoseg.train import checkpointing, trainer  # noqa: PLC0415
  try:
    result = trainer.train(config, args.workdir)
  except (trainer.TrainingDivergedError, checkpointing.CheckpointRestoreError) as e:
    print(f"dinoseg train: {e}", file=sys.stderr)
    return 1
  import jax  # noqa: PLC0415
  if jax.process_index() == 0:
    print(f"{result.stopped_by} at step {result.step}; checkpoints in {result.workdir / 'checkpoints'}")
  return 0
