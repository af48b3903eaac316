"""`dinoseg eval`: evaluate a training checkpoint or a weights file.

  dinoseg eval --config=FILE.py[:variant] --workdir=DIR [--step=N]
  dinoseg eval --config=FILE.py[:variant] --weights=FILE_OR_DIR [--workdir=DIR]

With --workdir only: restores the newest usable checkpoint of DIR/checkpoints (or step N) onto the
config's mesh, runs the task's evaluation (EMA params when the run keeps them) and writes the
results to DIR/eval/step_<N>.json. The run's saved DIR/config.json is the config it was trained with,
so it is the base: its values replace the --config file's (which still gives the keys, types and
validation), and --config.a.b=value overrides apply last. With --weights: the task reads the file (a
released PyTorch checkpoint, converted strictly, or an Orbax directory; see each system's docs) and
evaluates it with the --config file's settings; results go to DIR/eval/weights_<name>.json when
--workdir is given. Results are also printed as strict JSON (undefined metrics are null). A task with an
evaluation protocol of its own (`Task.evaluate`, e.g. DINOv's prompt bank + generic / VOS protocols,
`config.evaluation`) runs it in place of the eval-batch loop.
Compiled programs are cached as for `dinoseg train` (`--compile-cache DIR`, default
<workdir>/compile_cache when --workdir is given). Multi-process flags as for `dinoseg train`.
Exit status: 0 done, 1 no checkpoint of the workdir could be restored, 2 bad input.
"""
import json
import logging
import pathlib

from dinoseg import compile_cache
from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.train import distributed

logger = logging.getLogger(__name__)

HELP = "evaluate a checkpoint of a workdir or a weights file; results as JSON"
DESCRIPTION = ("Evaluates the newest (or --step) checkpoint of a training workdir, with the run's saved "
               "config.json over the --config file, or a weights file (--weights: a released checkpoint or "
               "an Orbax directory). Results are printed as JSON and written to WORKDIR/eval/.")


def add_arguments(parser):
  parser.add_argument("--config", required=True,
                      help="config file, optionally with :variant (with --workdir, the run's config.json "
                           "supplies the values)")
  parser.add_argument("--workdir", default=None, help="run directory holding checkpoints/ (results go to its eval/)")
  parser.add_argument("--weights", default=None,
                      help="a weights file or directory to evaluate instead of the workdir's checkpoints")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest usable)")
  compile_cache.add_argument(parser)
  distributed.add_arguments(parser)


def saved_config(workdir: str | pathlib.Path) -> dict | None:
  """The config a run saved (`<workdir>/config.json`, written by the trainer), or None."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise UserValueError(f"{path} is not a readable config ({e}); move it away to use the --config file alone") \
        from None


def main(args, overrides) -> int:
  if not args.workdir and not args.weights:
    raise UserValueError("give --workdir (evaluate its checkpoints) or --weights (evaluate a file)")
  if args.weights and args.step is not None:
    raise UserValueError("--step selects a workdir checkpoint; it cannot be used with --weights")
  if args.weights and not pathlib.Path(args.weights).exists():
    raise UserFileNotFoundError(f"--weights: no such file or directory: {args.weights}")
  base = None
  if not args.weights:
    checkpoints = pathlib.Path(args.workdir) / "checkpoints"
    if not checkpoints.is_dir() or not any(p.name.isdigit() for p in checkpoints.iterdir()):
      raise UserFileNotFoundError(f"--workdir: {args.workdir} holds no checkpoints (expected {checkpoints}/<step>)")
    base = saved_config(args.workdir)
  from dinoseg.config import load_config  # noqa: PLC0415
  config = load_config(args.config, overrides, base=base)
  if base is not None:
    logger.info("using the run's %s over %s", pathlib.Path(args.workdir) / "config.json", args.config)
  settings = distributed.from_args(args)
  distributed.initialize(settings)
  import jax  # noqa: PLC0415

  from dinoseg import jsonio  # noqa: PLC0415
  from dinoseg.train import checkpointing, trainer  # noqa: PLC0415
  with compile_cache.use(args.compile_cache, args.workdir):
    if args.weights:
      out = trainer.evaluate_weights(config, args.weights, workdir=args.workdir)
    else:
      try:
        out = trainer.evaluate_checkpoint(config, args.workdir, step=args.step)
      except checkpointing.CheckpointRestoreError as e:
        if args.step is not None:  # no such step
          raise UserValueError(f"--step={args.step}: {e}") from None
        logger.error("dinoseg eval: %s", e)  # no checkpoint of the run could be restored
        return 1
  if jax.process_index() == 0:
    print(jsonio.dumps(out, indent=2, sort_keys=True))
  return 0
