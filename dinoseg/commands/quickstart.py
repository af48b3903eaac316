"""`dinoseg quickstart [--workdir DIR] [--config FILE[:variant]] [--config.a.b=value ...]`: the main job.

Trains a small Mask DINO from scratch on synthetic shapes, on whatever JAX runs on (a CPU is
enough), from the embedded config configs/maskdino/quickstart.py; nothing is downloaded. Phases:

  data      `quickstart.*` -> dinoseg.data_pipelines.synth ("coco" layout, train + val) into DIR/raw,
            prepared as ArrayRecord shards (+ manifest.json) in DIR/data
  train     the shared trainer (dinoseg.train.trainer) in DIR/train: Orbax checkpoints, TensorBoard
            events, metrics.jsonl, config.json; a progress bar
  eval      COCO box / mask AP (pycocotools, the evaluator of `dinoseg eval`) on the val split:
            DIR/eval/step_<N>.json
  export    the trained weights as a reference (detectron2 / IDEA-Research MaskDINO) state dict
            through the Mask DINO converter: DIR/export/maskdino.pth (written without PyTorch)
  overlays  the predictor of `dinoseg predict`, loading DIR/export/maskdino.pth, on the first
            `quickstart.num_overlays` val images: DIR/overlays/<image file name>.png + predictions.json
            (named as `dinoseg predict` names them)

and a short report (seconds per phase, APs, paths), also written as DIR/report.json.
`dinoseg quickstart ov2seg` (or `--system=ov2seg`) runs OV2Seg's job instead (synthetic videos, video AP with
base / novel classes, overlay GIFs: dinoseg/commands/quickstart_ov2seg.py) and `dinoseg quickstart dinov` DINOv's
(synthetic shapes, mask AP with visual prompts from the training images, J&F on synthetic DAVIS-layout videos:
dinoseg/commands/quickstart_dinov.py) under the same workdir rules. Running it
again reuses the data when `quickstart.*` is unchanged (else rebuilds everything) and resumes
training from DIR/train's checkpoints; `--fresh` starts over. `config.data.path` is always DIR/data.

Other people's files are safe: the quickstart marks a directory it writes in with DIR/quickstart.json
(`claim_workdir`) and only ever clears (with `--fresh`, or when the data settings change) its own
outputs (`OUTPUTS`) in a directory so marked; a directory that holds any of those names without the
mark is refused (exit status 2) before anything is touched. DIR is locked while the command runs
(DIR/dinoseg.lock; a second quickstart on it is refused). SIGTERM or Ctrl-C during training saves a
checkpoint and stops the whole command (exit status 128 + N: 130 Ctrl-C, 143 SIGTERM; the same
command resumes); a second one stops at once. Compiled programs are cached in DIR/compile_cache
(`--compile-cache`; kept by `--fresh`), so a rerun compiles much faster. Phase messages are log
records (stderr); the report is printed to stdout.
"""
import datetime
import json
import logging
import math
import pathlib
import platform
import shutil
import signal
import time

from dinoseg import compile_cache, jsonio
from dinoseg.errors import UserValueError

logger = logging.getLogger(__name__)

HELP = ("the main job: synthetic shapes -> train a small Mask DINO on the CPU -> evaluate, export, overlays "
        "(`quickstart ov2seg`: OV2Seg on synthetic videos -> video AP base / novel, overlay GIFs; "
        "`quickstart dinov`: DINOv on synthetic shapes -> mask AP with visual prompts, J&F on synthetic videos)")
DEFAULT_CONFIG = "configs/maskdino/quickstart.py"
DEFAULT_WORKDIR = "dinoseg_quickstart"
OUTPUTS = ("raw", "data", "train", "eval", "export", "overlays", "report.json")
DATA_STAMP = "quickstart_data.json"
WORKDIR_STAMP = "quickstart.json"


# `dinoseg quickstart [SYSTEM]` / `--system=SYSTEM`: the job of each system, with its default config and workdir
# (Mask DINO without an argument; "ov2seg": dinoseg/commands/quickstart_ov2seg.py; "dinov":
# dinoseg/commands/quickstart_dinov.py).
SYSTEMS = {"maskdino": (DEFAULT_CONFIG, DEFAULT_WORKDIR),
           "ov2seg": ("configs/ov2seg/quickstart.py", "dinoseg_quickstart_ov2seg"),
           "dinov": ("configs/dinov/quickstart.py", "dinoseg_quickstart_dinov")}
# The `config.task` each system's job trains (a config without `task` counts as Mask DINO's) and the module whose
# `run(args, overrides, config, workdir, start, stop)` runs the job (None: `_run` below).
SYSTEM_TASKS = {"maskdino": "maskdino", "ov2seg": "ov2seg", "dinov": "dinov"}
SYSTEM_JOBS = {"maskdino": None, "ov2seg": "dinoseg.commands.quickstart_ov2seg",
               "dinov": "dinoseg.commands.quickstart_dinov"}


def add_arguments(parser):
  parser.add_argument("system", nargs="?", choices=tuple(SYSTEMS), default=None,
                      help="which system's quickstart: maskdino (default), ov2seg (synthetic videos, video AP) or "
                           "dinov (visual prompts: mask AP, J&F)")
  parser.add_argument("--system", dest="system_option", choices=tuple(SYSTEMS), default=None,
                      help="the same as the positional SYSTEM")
  parser.add_argument("--workdir", default=None,
                      help=f"output directory (default ./{DEFAULT_WORKDIR}; ov2seg: ./{SYSTEMS['ov2seg'][1]}; "
                           f"dinov: ./{SYSTEMS['dinov'][1]})")
  parser.add_argument("--config", default=None,
                      help=f"config file with a `quickstart` group, optionally :variant (default {DEFAULT_CONFIG}; "
                           f"ov2seg: {SYSTEMS['ov2seg'][0]}; dinov: {SYSTEMS['dinov'][0]})")
  parser.add_argument("--fresh", action="store_true", help="delete the workdir's outputs first (no reuse, no resume)")
  compile_cache.add_argument(parser)


def _say(text: str) -> None:
  logger.info(text)


def claim_workdir(workdir: pathlib.Path, check_only: bool = False) -> None:
  """Marks `workdir` as the quickstart's (DIR/quickstart.json), which lets it clear its `OUTPUTS` there.

  A directory already marked (or holding the data stamp of an earlier quickstart) is the
  quickstart's; an unmarked one is claimed only when it holds none of the `OUTPUTS` names.
  `check_only`: only raise, write nothing.

  Raises:
    UserError: `workdir` holds some of the `OUTPUTS` names but was not created by the quickstart.
  """
  stamp = workdir / WORKDIR_STAMP
  if stamp.is_file():
    return
  if not (workdir / "data" / DATA_STAMP).is_file():
    present = [name for name in OUTPUTS if (workdir / name).exists()]
    if present:
      raise UserValueError(
          f"--workdir={workdir} already holds {', '.join(present)}, which dinoseg quickstart did not create "
          f"(no {WORKDIR_STAMP} there) and would replace; nothing was changed. Choose another --workdir "
          "(e.g. a new directory) or move those entries away")
  if not check_only:
    stamp.write_text(json.dumps({"created_by": "dinoseg quickstart", "outputs": list(OUTPUTS),
                                 "time": datetime.datetime.now().isoformat(timespec="seconds")}) + "\n")


def _clear(workdir: pathlib.Path, names=OUTPUTS, why: str = "") -> None:
  """Removes the quickstart's own outputs `names` from a workdir it has claimed (`claim_workdir`)."""
  if not (workdir / WORKDIR_STAMP).is_file():  # never reached through main(): a last guard
    raise RuntimeError(f"refusing to clear {workdir}: it has no {WORKDIR_STAMP}")
  present = [name for name in names if (workdir / name).exists()]
  if present:
    _say(f"[quickstart] removing {', '.join(present)} from {workdir}{why}")
  for name in present:
    path = workdir / name
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path)
    else:
      path.unlink()


def data_options(config) -> dict:
  """The synthetic dataset `config.quickstart` asks for (also the stamp of a prepared DIR/data)."""
  q = config.quickstart
  lo, hi = (int(v) for v in q.image_size)
  return {"layout": "coco", "num_train_images": int(q.num_train_images), "num_val_images": int(q.num_val_images),
          "image_size": [lo, hi], "max_objects": int(q.max_objects), "seed": int(q.seed)}


def make_data(config, workdir: pathlib.Path, system: str | None = None) -> dict:
  """Synthesizes DIR/raw and prepares DIR/data (reused when its stamp matches). Returns a summary.

  `system`: another quickstart using this dataset (e.g. "dinov"); it is part of the data stamp, so a workdir
  of one system's job is rebuilt, not resumed, by another's (Mask DINO's stamp stays `data_options`).

  Raises:
    UserError: DIR holds entries of `OUTPUTS` that the quickstart did not create (`claim_workdir`).
  """
  from dinoseg.data_pipelines import synth, writer  # noqa: PLC0415
  claim_workdir(workdir)
  options = data_options(config)
  if system is not None and system != "maskdino":
    options = {"system": system, **options}
  raw, data = workdir / "raw", workdir / "data"
  stamp = data / DATA_STAMP
  if stamp.is_file() and json.loads(stamp.read_text()) == options and (data / writer.MANIFEST).is_file():
    manifest = writer.read_manifest(data)
    return {"reused": True, "manifest": manifest}
  _clear(workdir, why=" (its prepared data is missing, incomplete or of other settings; nothing trained on other "
                      "data is kept)")
  common = dict(image_size=tuple(options["image_size"]), seed=options["seed"], max_objects=options["max_objects"])
  for split, key in (("train", "num_train_images"), ("val", "num_val_images")):
    synth.synthesize(options["layout"], str(raw), num_images=options[key], splits=(split,), **common)
  manifest = writer.prepare(synth.PREPARER_FOR_LAYOUT[options["layout"]], str(raw), str(data),
                            splits=["train", "val"], progress=True)
  stamp.write_text(json.dumps(options))
  return {"reused": False, "manifest": manifest}


def trained_variables(state) -> dict:
  """The trained model's variables on the host: the evaluated params (EMA, if kept) and the model state."""
  import jax  # noqa: PLC0415

  from dinoseg.train import trainer  # noqa: PLC0415
  return jax.device_get({"params": trainer.eval_params(None, state), **dict(state.model_state)})


def export_weights(config, state, path: pathlib.Path) -> dict:
  """Writes the (EMA, if kept) params + model_state as a reference state dict; returns it (NumPy)."""
  from dinoseg.convert.pth_writer import write_pth  # noqa: PLC0415
  from dinoseg.models.maskdino import convert  # noqa: PLC0415
  variables = trained_variables(state)
  torch_state = convert.to_torch(variables, config.model, no_object_weight=float(config.loss.no_object_weight))
  write_pth(torch_state, path)
  return torch_state


def write_overlays(config, weights: pathlib.Path, images: list[pathlib.Path], out_dir: pathlib.Path) -> list:
  """Runs the registered predictor (weights from the exported .pth) on `images`; overlay PNGs in out_dir."""
  from dinoseg import predict  # noqa: PLC0415
  out_dir.mkdir(parents=True, exist_ok=True)
  return predict_images(predict.build_predictor(config, weights), images, out_dir,
                        float(config.quickstart.score_threshold))


def predict_images(predictor, images: list[pathlib.Path], out_dir: pathlib.Path, score_threshold: float) -> list:
  """`predictor` (dinoseg.predict's) on each image file: overlays etc. in out_dir (`write`, then `finish`);
  returns the files written."""
  from dinoseg import predict  # noqa: PLC0415
  written = []
  for path in images:
    image = predict.read_image(path)
    written += predictor.write(predictor.predict(image), image, out_dir, predict.output_name(path),
                               score_threshold=score_threshold)
  predictor.finish(out_dir)
  return written


def _metric(results: dict, key: str) -> float:
  value = results.get(key)
  return float(value) if value is not None else float("nan")


def fmt(value) -> str:
  """A figure with one decimal ("nan" for a missing or non-finite one)."""
  return f"{value:.1f}" if value is not None and math.isfinite(float(value)) else "nan"


def phase_lines(title: str, report: dict) -> list[str]:
  """The title and the per-phase seconds of a quickstart report (every system's report starts so)."""
  lines = [f"{title} ({report['config']}), {report['machine']}", f"  {'phase':<9} {'seconds':>8}"]
  for name, seconds in report["seconds"].items():
    lines.append(f"  {name:<9} {seconds:8.1f}   {report['notes'].get(name, '')}")
  return lines


def report_lines(report: dict) -> list[str]:
  """The printed summary of a report dict (see `main`)."""
  r, p = report["results"], report["paths"]
  lines = phase_lines("dinoseg quickstart: Mask DINO on synthetic shapes", report)
  lines.append(f"  box AP {_metric(r, 'bbox/AP'):.1f} (AP50 {_metric(r, 'bbox/AP50'):.1f}), "
               f"mask AP {_metric(r, 'segm/AP'):.1f} (AP50 {_metric(r, 'segm/AP50'):.1f}, "
               f"AP75 {_metric(r, 'segm/AP75'):.1f}) on {r.get('num_images', 0)} synthetic val images, step {report['step']}")
  for name in ("data", "train", "eval", "export", "overlays", "report"):
    lines.append(f"  {name + ':':<10}{p[name]}")
  return lines


def main(args, overrides) -> int:
  try:
    return _main(args, overrides)
  except KeyboardInterrupt:  # Ctrl-C during start-up, before the stop handler (`_run`) was installed
    logger.warning("dinoseg quickstart: interrupted before it started; nothing was changed")
    return 128 + signal.SIGINT


def resolve_system(args) -> str:
  """The system asked for (positional SYSTEM or --system; "maskdino" without either); fills in its default
  `args.config` / `args.workdir` where they were not given.

  Raises:
    UserValueError: the positional SYSTEM and --system name different systems.
  """
  given = [s for s in (getattr(args, "system", None), getattr(args, "system_option", None)) if s]
  if len(set(given)) > 1:
    raise UserValueError(f"two systems given: {given[0]} and --system={given[1]}; name one")
  system = given[0] if given else "maskdino"
  config, workdir = SYSTEMS[system]
  if getattr(args, "config", None) is None:
    args.config = config
  if getattr(args, "workdir", None) is None:
    args.workdir = workdir
  return system


def _main(args, overrides) -> int:
  from dinoseg.commands.train import _prepare_absl  # noqa: PLC0415
  from dinoseg.config import load_config  # noqa: PLC0415
  from dinoseg.train.workdir import WorkdirLock, prepare  # noqa: PLC0415
  start = time.perf_counter()
  system = resolve_system(args)
  config = load_config(args.config, overrides)
  if "quickstart" not in config:
    raise UserValueError(f"{args.config} has no `quickstart` group (data and output settings of this command)")
  task = config.get("task") or SYSTEM_TASKS["maskdino"]
  if task != SYSTEM_TASKS[system]:
    owner = [name for name, t in SYSTEM_TASKS.items() if t == task]
    raise UserValueError(f"--config={args.config} is a config of task {config.get('task')!r}, not one of the "
                         f"{system} quickstart" + (f"; run `dinoseg quickstart {owner[0]}` for its configs"
                                                   if owner else ""))
  _prepare_absl()
  import jax  # noqa: PLC0415
  if jax.default_backend() == "cpu":
    # XLA:CPU compiles each random-number op of the partitionable threefry for seconds (the model init
    # has one per parameter); one CPU process does not need partitionable keys.
    try:
      jax.config.update("jax_threefry_partitionable", False)
    except AttributeError:  # a JAX without the option (the partitionable form is then the only one)
      pass
  from dinoseg.train.preemption import PreemptionHandler  # noqa: PLC0415
  workdir = prepare(args.workdir)
  claim_workdir(workdir, check_only=True)  # refuse before anything (even the lock file) is written there
  with WorkdirLock(workdir), PreemptionHandler() as stop, compile_cache.use(args.compile_cache, workdir):
    claim_workdir(workdir)
    if args.fresh:
      _clear(workdir, why=" (--fresh)")
    if SYSTEM_JOBS[system] is not None:
      import importlib  # noqa: PLC0415
      return importlib.import_module(SYSTEM_JOBS[system]).run(args, overrides, config, workdir, start, stop)
    return _run(args, overrides, config, workdir, start, stop)


def _stopped(signum: int, after: str) -> int:
  """Reports a stop request (SIGTERM / SIGINT) and returns the command's exit status."""
  from dinoseg.train import preemption  # noqa: PLC0415
  _say(f"[quickstart] stopped by {preemption.signal_name(signum)} {after}; the remaining phases were not run. "
       "Run the same command to go on")
  return preemption.exit_status(signum)


def _run(args, overrides, config, workdir: pathlib.Path, start: float, stop) -> int:
  """The phases, in a locked workdir that the quickstart owns (module docstring); `stop` (a
  PreemptionHandler) ends the command after the phase in progress, training after its current step."""
  import jax  # noqa: PLC0415
  seconds, notes = {}, {}

  # -- data
  t = time.perf_counter()
  _say(f"[quickstart] data: synthetic shapes -> {workdir / 'data'}")
  data = make_data(config, workdir)
  splits = data["manifest"]["splits"]
  categories = data["manifest"].get("metadata", {}).get("categories", [])
  config.data.path = str(workdir / "data")
  if not tuple(config.dataset.class_names) and categories:  # names on the overlays, ids in predictions.json
    config.dataset.class_names = tuple(str(c["name"]) for c in categories)
    config.dataset.category_ids = tuple(int(c["id"]) for c in categories)
  seconds["data"] = time.perf_counter() - t
  notes["data"] = (f"{splits['train']['num_records']} train / {splits['val']['num_records']} val images, "
                   f"{sum(len(s['shards']) for s in splits.values())} shards" + (" (reused)" if data["reused"] else ""))
  if stop.signal_received is not None:
    return _stopped(stop.signal_received, "after the data phase")

  # -- train
  from dinoseg.train import trainer  # noqa: PLC0415
  result, code = train_phase(config, workdir, seconds, notes)
  if result is None:
    return code

  # -- eval
  t = time.perf_counter()
  _say(f"[quickstart] eval: COCO box / mask AP on the {config.data.eval_split} split")
  run = trainer.build_run(config)
  results = trainer.evaluate(run, result.state)
  eval_path = workdir / "eval" / f"step_{result.step}.json"
  eval_path.parent.mkdir(parents=True, exist_ok=True)
  eval_path.write_text(jsonio.dumps({"step": result.step, "split": config.data.eval_split, "results": results},
                                    indent=2, sort_keys=True) + "\n")
  seconds["eval"] = time.perf_counter() - t
  notes["eval"] = f"{results.get('num_images', 0)} images"

  if stop.signal_received is not None:
    return _stopped(stop.signal_received, "after the eval phase")

  # -- export
  t = time.perf_counter()
  weights = workdir / "export" / "maskdino.pth"
  _say(f"[quickstart] export: reference state dict -> {weights}")
  torch_state = export_weights(config, result.state, weights)
  seconds["export"] = time.perf_counter() - t
  notes["export"] = f"{len(torch_state)} tensors, {weights.stat().st_size / 2 ** 20:.1f} MiB"

  if stop.signal_received is not None:
    return _stopped(stop.signal_received, "after the export phase")

  # -- overlays
  t = time.perf_counter()
  images = sorted((workdir / "raw" / "val2017").glob("*.jpg"))[:int(config.quickstart.num_overlays)]
  _say(f"[quickstart] overlays: predictor on {len(images)} val images -> {workdir / 'overlays'}")
  written = write_overlays(config, weights, images, workdir / "overlays")
  seconds["overlays"] = time.perf_counter() - t
  notes["overlays"] = f"{len(written)} PNGs + predictions.json"
  seconds["total"] = time.perf_counter() - start

  report = {
      "config": args.config + "".join(f" --config.{o}" for o in overrides),
      "machine": f"{platform.machine()}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
                 f"{_cpu_count()} CPU cores",
      "step": result.step, "seconds": seconds, "notes": notes, "results": results,
      "paths": {"data": str(workdir / "data"), "train": str(workdir / "train"), "eval": str(eval_path),
                "export": str(weights), "overlays": str(workdir / "overlays"), "report": str(workdir / "report.json")},
  }
  (workdir / "report.json").write_text(jsonio.dumps(report, indent=2) + "\n")
  print("\n".join(report_lines(report)))
  return 0



def train_phase(config, workdir: pathlib.Path, seconds: dict, notes: dict):
  """The quickstart's training phase through the shared trainer in `workdir/train` (evaluation off: the
  quickstart evaluates and times it itself); fills seconds["train"] / notes["train"]. Returns (result, None),
  or (None, exit status) when training diverged, could not resume, or was stopped by a signal (after saving)."""
  import jax  # noqa: PLC0415
  from dinoseg.train import checkpointing, trainer  # noqa: PLC0415
  t = time.perf_counter()
  config.train.eval_at_end = False  # evaluated by the caller, timed as its own phase
  config.train.eval_every_steps = 0
  _say(f"[quickstart] train: {config.train.num_steps} steps in {workdir / 'train'} "
       f"({jax.device_count()} {jax.devices()[0].platform} device(s); the first step compiles)")
  try:
    result = trainer.train(config, workdir / "train")
  except (trainer.TrainingDivergedError, checkpointing.CheckpointRestoreError) as e:
    logger.error("dinoseg quickstart: %s (start over with --fresh)", e)
    return None, 1
  if result.stop_signal is not None:
    saved = workdir / "train" / "checkpoints" / str(result.step)
    return None, _stopped(result.stop_signal, f"during training at step {result.step} (" + (
        f"checkpoint {saved} saved" if saved.is_dir() else "no step trained: nothing new to save") + ")")
  seconds["train"] = time.perf_counter() - t
  rows = (workdir / "train" / "metrics.jsonl").read_text().splitlines()
  last = json.loads(rows[-1]) if rows else {}
  notes["train"] = f"{result.step} steps" + (f", final loss {last['loss']:.2f}" if last.get("loss") is not None else "")
  return result, None

def _cpu_count() -> int:
  import os  # noqa: PLC0415
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
