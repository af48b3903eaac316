"""`dinoseg train --config=FILE.py[:variant] --workdir=DIR [--config.a.b=value ...]`: train a config.

The task named by `config.task` is trained with the shared trainer (dinoseg.train.trainer). A
workdir that already holds checkpoints is resumed from its newest usable one; a fresh run starts
from the pretrained weights of `config.init` (e.g. `--config.init.backbone.file=R-50.pkl`; reported
in <workdir>/init_report.json). The workdir is locked while the run trains in it
(<workdir>/dinoseg.lock): a second `dinoseg train` on it is refused at once. SIGTERM or Ctrl-C
(SIGINT) finishes the current step, saves a checkpoint and stops; a second one stops at once
without saving. Multi-process runs pass the same command to every process with
`--coordinator-address/--num-processes/--process-id` (or the DINOSEG_* environment variables, or
`--distributed` for JAX's cluster auto-detection). Compiled programs are kept in a persistent
compilation cache (`--compile-cache DIR`, default <workdir>/compile_cache; `none` turns it off), so a
rerun or a resume of the same config compiles much faster.

Exit status: 0 done, 1 the run diverged or no checkpoint could be restored, 2 bad input (a bad
setting, a workdir in use or not creatable, checkpoints of another config), 128 + N after a stop
requested by signal N (130 Ctrl-C / SIGINT, 143 SIGTERM; the checkpoint is saved), 130 for a
Ctrl-C before training started.
"""
import logging
import signal

from dinoseg import compile_cache
from dinoseg.train import distributed

logger = logging.getLogger(__name__)

HELP = "train a config in a workdir (resumes from its checkpoints; SIGTERM / Ctrl-C saves and stops)"


def add_arguments(parser):
  parser.add_argument("--config", required=True, help="config file, optionally with :variant")
  parser.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics, eval results)")
  compile_cache.add_argument(parser)
  distributed.add_arguments(parser)


def _prepare_absl() -> None:
  import absl.flags  # noqa: PLC0415  (grain worker processes read absl flags)
  if not absl.flags.FLAGS.is_parsed():
    absl.flags.FLAGS.mark_as_parsed()


def main(args, overrides) -> int:
  try:
    return _main(args, overrides)
  except KeyboardInterrupt:  # Ctrl-C before the trainer watched for it (loading, start-up): nothing trained
    logger.warning("dinoseg train: interrupted before training started; nothing was trained")
    return 128 + signal.SIGINT


def _main(args, overrides) -> int:
  from dinoseg.config import load_config  # noqa: PLC0415
  config = load_config(args.config, overrides)
  settings = distributed.from_args(args)
  _prepare_absl()
  distributed.initialize(settings)
  from dinoseg.train import checkpointing, preemption, trainer  # noqa: PLC0415
  try:
    with compile_cache.use(getattr(args, "compile_cache", None), args.workdir):  # other commands delegate here
      result = trainer.train(config, args.workdir)
  except (trainer.TrainingDivergedError, checkpointing.CheckpointRestoreError) as e:
    logger.error("dinoseg train: %s", e)
    return 1
  import jax  # noqa: PLC0415
  if result.stop_signal is not None:  # the trainer's message says where the checkpoint is
    return preemption.exit_status(result.stop_signal)
  if jax.process_index() == 0:
    print(f"{result.stopped_by} at step {result.step}; checkpoints in {result.workdir / 'checkpoints'}")
  return 0
