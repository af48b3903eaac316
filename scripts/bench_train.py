"""Train-step time and examples/s of a config on 1 and on 8 fake CPU devices (the trainer's own step).

  python scripts/bench_train.py --config=configs/toy/toy_segmentation.py [--config.a.b=value ...] \
      [--devices 1,8] [--steps 20] [--warmup 3] [--threads 0]

For each device count a fresh subprocess runs with
`XLA_FLAGS=--xla_force_host_platform_device_count=N JAX_PLATFORMS=cpu` (fake devices share the host's
cores, so the 8-device rows measure the cost of sharding the step, not a speed-up). In it the script
builds exactly what `dinoseg train` builds (`trainer.build_run`: task, mesh from `config.mesh`,
optimizer, sharded state layout; `Run.create_state`; `Run.train_step`, the jitted step with donated
state and the mesh's in/out shardings), takes `--warmup + --steps` distinct batches from the task's
own training iterator (`task.train_iterator(0, 1)`) and places them as global batch-sharded arrays
(`Run.global_batch`) before timing. Reported per device count:

  state init s   `build_run` + `create_state` (tracing the model, compiling and running its sharded init)
  compile s      the first step (trace + XLA compile + one execution)
  step ms        median wall time of one step over --steps steps after --warmup (blocked on the
                 metrics, batches already on the devices: the model's compute, the optimizer and
                 the step's collectives, without the input pipeline)
  p10-p90 ms     spread of those steps
  examples/s     global batch / median step time
  data ms/batch  mean wall time of `next(train_iterator)` + `Run.global_batch` for one batch (the host
                 input pipeline the trainer's loop waits for; it is not overlapped with the step here)

The global batch is the task's (e.g. `config.data.batch_size`); it must be divisible by every device
count's batch shards (override it with --config.data.batch_size=...). Nothing is written to disk.
"""
import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _worker(args, overrides) -> dict:
  """Runs inside the subprocess (JAX sees `--devices` fake CPU devices); returns the measurements."""
  import absl.flags  # noqa: PLC0415  (grain worker processes read absl flags)
  if not absl.flags.FLAGS.is_parsed():
    absl.flags.FLAGS.mark_as_parsed()
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from dinoseg.config import load_config  # noqa: PLC0415
  from dinoseg.train import trainer  # noqa: PLC0415

  config = load_config(args.config, list(overrides) + ["train.progress=false"])
  started = time.perf_counter()
  run = trainer.build_run(config)
  state = run.create_state()
  jax.block_until_ready(state)
  setup_s = time.perf_counter() - started

  iterator = run.task.train_iterator(0, 1)
  batches, data_times = [], []
  for _ in range(args.warmup + args.steps + 1):
    t0 = time.perf_counter()
    batch = run.global_batch(next(iterator))
    jax.block_until_ready(batch)
    data_times.append(time.perf_counter() - t0)
    batches.append(batch)
  if hasattr(iterator, "close"):
    iterator.close()
  batch_size = int(jax.tree.leaves(batches[0])[0].shape[0])
  from dinoseg import parallel  # noqa: PLC0415
  parallel.check_batch_divisible(batch_size, run.mesh, run.batch_axes)

  times = []
  with run.context():
    t0 = time.perf_counter()
    state, metrics = run.train_step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for i, batch in enumerate(batches[1:]):
      t0 = time.perf_counter()
      state, metrics = run.train_step(state, batch)
      jax.block_until_ready(metrics)
      if i >= args.warmup:
        times.append(time.perf_counter() - t0)
  last = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
  median = statistics.median(times)
  q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
  return {
      "devices": jax.device_count(), "mesh": dict(zip(run.mesh.axis_names, (int(s) for s in run.mesh.devices.shape))),
      "batch_size": batch_size, "setup_s": setup_s, "compile_s": compile_s, "step_ms": 1000 * median,
      "p10_ms": 1000 * q[0], "p90_ms": 1000 * q[-1], "examples_per_s": batch_size / median,
      "data_ms": 1000 * float(np.mean(data_times[1:])), "steps": len(times),
      "loss": last.get("loss"), "skipped": last.get("nonfinite_total"),
      "compute_dtype": run.settings["compute_dtype"], "grad_accum_steps": run.optimizer.grad_accum_steps,
  }


def _child_env(devices: int, threads: int) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={devices}")
  if threads:
    flags += [f"--xla_cpu_multi_thread_eigen={'false' if threads == 1 else 'true'}",
              f"intra_op_parallelism_threads={threads}"]
  env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def _run_child(args, overrides, devices: int) -> dict:
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", f"--config={args.config}",
         f"--steps={args.steps}", f"--warmup={args.warmup}"] + [f"--config.{o}" for o in overrides]
  proc = subprocess.run(cmd, env=_child_env(devices, args.threads), capture_output=True, text=True,
                        timeout=args.timeout)
  if proc.returncode != 0:
    raise RuntimeError(f"{devices}-device run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
  lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_TRAIN ")]
  if not lines:
    raise RuntimeError(f"{devices}-device run printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
  return json.loads(lines[-1][len("BENCH_TRAIN "):])


def _table(rows: list[dict]) -> str:
  head = ("| devices | mesh | global batch | state init s | compile s | step ms | p10-p90 ms | examples/s "
          "| data ms/batch |\n|---|---|---|---|---|---|---|---|---|")
  body = []
  for r in rows:
    mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items() if v != 1) or "1"
    body.append(f"| {r['devices']} | {mesh} | {r['batch_size']} | {r['setup_s']:.1f} | {r['compile_s']:.1f} | "
                f"{r['step_ms']:.1f} | {r['p10_ms']:.1f}-{r['p90_ms']:.1f} | {r['examples_per_s']:.1f} | "
                f"{r['data_ms']:.1f} |")
  return "\n".join([head] + body)


def main(argv=None) -> int:
  sys.path.insert(0, str(ROOT))
  from dinoseg.config import split_config_args  # noqa: PLC0415
  argv, overrides = split_config_args(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="config file[:variant], as for `dinoseg train`")
  parser.add_argument("--devices", default="1,8", help="comma-separated fake CPU device counts (default 1,8)")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per device count (default 20)")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the compiling one (default 3)")
  parser.add_argument("--threads", type=int, default=0,
                      help="XLA CPU threads (0: XLA's default; 1 avoids stalls on a busy shared machine)")
  parser.add_argument("--timeout", type=int, default=1800, help="seconds per device count (default 1800)")
  parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    parser.error("--steps must be >= 1 and --warmup >= 0")
  if args.worker:
    print("BENCH_TRAIN " + json.dumps(_worker(args, overrides)), flush=True)
    return 0
  rows = []
  for devices in (int(d) for d in args.devices.split(",") if d.strip()):
    print(f"running {devices} device(s) ...", file=sys.stderr, flush=True)
    rows.append(_run_child(args, overrides, devices))
  import jax  # noqa: PLC0415
  first = rows[0]
  print(f"config {args.config} {' '.join('--config.' + o for o in overrides)}".rstrip())
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"jax {jax.__version__}; compute dtype {first['compute_dtype']}, grad_accum_steps "
        f"{first['grad_accum_steps']}; {args.steps} timed steps after {args.warmup} warm-up steps; "
        f"XLA threads: {args.threads or 'default'}")
  print(_table(rows))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
