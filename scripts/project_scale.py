"""Projects the Mask DINO Swin-L training step at 1024 x 1024 onto 8 x H100 and a TPU v5p-64 slice.

    python scripts/project_scale.py [--size 1024] [--devices 8] [--per-device-batch 1] [--modes dp,fsdp] \
        [--config configs/maskdino/coco_instance_swinl_4s_d1_2048.py] [--dtype bfloat16] [--json-out F]

Nothing runs a step: for each parallel layout a fresh subprocess with `--devices` fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N JAX_PLATFORMS=cpu`, scripts/bench_train.py's
`_child_env`) builds exactly what `dinoseg train` builds (`trainer.build_run`: task, mesh, optimizer,
sharded state layout), and lowers and compiles the trainer's jitted step (`Run.train_step`, donated state,
the mesh's in/out shardings) on abstract inputs: the sharded state (`Run.restore_target()`) and a
batch-sharded global batch of `devices x per-device-batch` images (uint8 images, `data.max_instances`
target rows with masks at `1 / data.mask_stride` of the image, as the data pipeline makes them).
From the compiled per-device (SPMD partition) program it reads

  `compiled.cost_analysis()`    "flops" and "bytes accessed" of one device's program
  `compiled.memory_analysis()`  argument / output / alias (donated) / temporary bytes on one device

Layouts (`--modes`): dp = mesh {data: N} (state replicated, gradients all-reduced); fsdp = mesh
{fsdp: N} (state sharded ZeRO-3 style over the N devices, dinoseg.parallel: parameters above
`train.fsdp_min_size` elements along their largest divisible dimension).

Projection (printed as a Markdown table; every figure below is a stated assumption, not a measurement):

- Step time, lower bound = max(flops / peak bf16 FLOP/s, bytes accessed / peak HBM bandwidth) + the
  gradient / parameter traffic over the interconnect, assumed not overlapped with compute:
  dp: ring all-reduce of the float32 gradients, 2 (n - 1) / n x P bytes; fsdp: all-gather of the
  parameters for forward and backward plus reduce-scatter of the gradients, 3 (n - 1) / n x P bytes;
  divided by the per-device interconnect bandwidth. The per-device program is the one compiled for N
  fake devices at per-device batch b: on a slice of n devices with the same b it does the same work
  (batch-sharded data parallelism), so flops and bytes carry over; only the collectives' n changes.
- Memory per device = argument + output - alias + temporary bytes of the compiled program (the peak
  an allocator needs if nothing is freed early). For fsdp on n devices the sharded state scales as 1 / n:
  memory(n) = memory(N) - state_per_device(N) + state_total / n (state_total = the replicated state of
  the dp layout).
- Hardware (vendor data sheets): H100 SXM: 989 TFLOP/s dense bf16, 3.35 TB/s HBM3, 80 GB, NVLink 450 GB/s
  per direction. TPU v5p: 459 TFLOP/s bf16, 2.76 TB/s HBM, 95 GB per chip, ICI 600 GB/s per chip;
  "v5p-64" = 64 TensorCores = 32 chips (the unit the table calls a device).
- XLA:CPU's cost model stands in for the GPU / TPU compilers': flops of convolutions and matrix products
  are exact counts; "bytes accessed" depends on the CPU compiler's fusion decisions (the GPU/TPU fusers
  fuse more, so this overestimates HBM traffic), and gathers/scatters (deformable attention, point
  sampling) count their touched bytes, not the cache lines they load.
- A roofline bound: real steps are slower (kernel launch gaps, the device Hungarian's sequential
  iterations, the host input pipeline are not in it).

`--size` below 1024 compiles a smaller image (less CPU time and memory); the table then also shows the
1024 figures scaled by (1024 / size)^2 for flops, bytes and temporary memory (what grows with the image:
backbone, pixel decoder, mask features; the decoder's 300 queries do not), marked as extrapolated.
"""
import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
DEFAULT_CONFIG = "configs/maskdino/coco_instance_swinl_4s_d1_2048.py"

# Vendor data-sheet figures: name -> (devices, bf16 FLOP/s, HBM B/s, HBM bytes, interconnect B/s per device).
HARDWARE = {
    "8 x H100 SXM": (8, 989e12, 3.35e12, 80e9, 450e9),
    "TPU v5p-64 (32 chips)": (32, 459e12, 2.765e12, 95e9, 600e9),
}


def _cost_dict(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per partition
    cost = cost[0] if cost else {}
  return dict(cost or {})


def abstract_batch(config, global_batch: int, sharding):
  """ShapeDtypeStructs of a Mask DINO training batch as the data pipeline makes it (see module doc)."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  h, w = (int(v) for v in config.data.image_size)
  t = int(config.data.max_instances)
  stride = int(config.data.get("mask_stride", 1))
  spec = {"image": ((global_batch, h, w, 3), np.uint8), "valid_hw": ((global_batch, 2), np.int32),
          "labels": ((global_batch, t), np.int32), "boxes": ((global_batch, t, 4), np.float32),
          "valid": ((global_batch, t), np.bool_), "masks": ((global_batch, t, h // stride, w // stride), np.uint8)}
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for k, (shape, dtype) in spec.items()}


def _worker(args, overrides) -> dict:
  """In the subprocess (`--devices` fake CPU devices): compile the step of one layout, return its analyses."""
  import absl.flags  # noqa: PLC0415  (grain reads absl flags)
  if not absl.flags.FLAGS.is_parsed():
    absl.flags.FLAGS.mark_as_parsed()
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from dinoseg import parallel  # noqa: PLC0415
  from dinoseg.config import load_config  # noqa: PLC0415
  from dinoseg.train import trainer  # noqa: PLC0415

  n = jax.device_count()
  mesh = "mesh.data=-1" if args.mode == "dp" else "mesh.fsdp=-1"
  extra = [f"data.image_size=({args.size}, {args.size})", f"data.batch_size={n * args.per_device_batch}",
           f"train.compute_dtype={args.dtype}", "train.progress=false", "mesh.data=1", "mesh.fsdp=1",
           "mesh.tensor=1", mesh]
  config = load_config(args.config, extra + list(overrides))
  t0 = time.perf_counter()
  run = trainer.build_run(config)
  target = run.restore_target()
  batch = abstract_batch(config, n * args.per_device_batch, parallel.batch_sharding(run.mesh, run.batch_axes))
  with run.context():
    lowered = run.train_step.lower(target, batch)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
  cost = _cost_dict(compiled)
  mem = compiled.memory_analysis()

  def per_device_bytes(tree) -> int:
    total = 0
    for leaf in jax.tree.leaves(tree):
      shard = leaf.sharding.shard_shape(leaf.shape)
      total += int(np.prod(shard, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total

  params = run.abstract.params
  return {
      "mode": args.mode, "devices": n, "mesh": dict(zip(run.mesh.axis_names, (int(s) for s in run.mesh.devices.shape))),
      "size": args.size, "per_device_batch": args.per_device_batch, "dtype": args.dtype,
      "lower_s": lower_s, "compile_s": compile_s,
      "flops": float(cost.get("flops", float("nan"))), "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
      "transcendentals": float(cost.get("transcendentals", 0.0)),
      "argument_bytes": int(mem.argument_size_in_bytes), "output_bytes": int(mem.output_size_in_bytes),
      "alias_bytes": int(mem.alias_size_in_bytes), "temp_bytes": int(mem.temp_size_in_bytes),
      "generated_code_bytes": int(mem.generated_code_size_in_bytes),
      "num_params": int(sum(int(np.prod(x.shape, dtype=np.int64)) for x in jax.tree.leaves(params))),
      "param_bytes": int(sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
                             for x in jax.tree.leaves(params))),
      "state_bytes_total": int(sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
                                   for x in jax.tree.leaves(run.abstract))),
      "state_bytes_per_device": per_device_bytes(target),
      "jax": jax.__version__,
  }


def _run_child(args, overrides, mode: str) -> dict:
  sys.path.insert(0, str(SCRIPTS))
  import bench_train  # noqa: PLC0415  (the fake-device environment of the trainer benchmark)
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", f"--mode={mode}", f"--config={args.config}",
         f"--size={args.size}", f"--per-device-batch={args.per_device_batch}", f"--dtype={args.dtype}"]
  cmd += [f"--config.{o}" for o in overrides]
  proc = subprocess.run(cmd, env=bench_train._child_env(args.devices, 0), capture_output=True, text=True,
                        timeout=args.timeout)
  if proc.returncode != 0:
    raise RuntimeError(f"{mode} compile failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
  lines = [line for line in proc.stdout.splitlines() if line.startswith("PROJECT_SCALE ")]
  if not lines:
    raise RuntimeError(f"{mode} printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
  return json.loads(lines[-1][len("PROJECT_SCALE "):])


def project(rows: list[dict], target_size: int) -> list[dict]:
  """Per (layout, hardware): step-time bound and memory per device at `target_size` (see module doc)."""
  out = []
  for r in rows:
    scale = (target_size / r["size"]) ** 2
    flops, nbytes, temp = r["flops"] * scale, r["bytes_accessed"] * scale, r["temp_bytes"] * scale
    # The batch shard of the inputs also grows with the image; the state does not.
    batch_args = r["argument_bytes"] - r["state_bytes_per_device"]
    mem_n = r["state_bytes_per_device"] + batch_args * scale + r["output_bytes"] - r["alias_bytes"] + temp
    for hw, (n, peak, bw, hbm, link) in HARDWARE.items():
      compute_s, memory_s = flops / peak, nbytes / bw
      grad_bytes = 4 * r["num_params"]  # float32 gradients / parameters
      comm_factor = 2 if r["mode"] == "dp" else 3
      comm_s = comm_factor * (n - 1) / n * grad_bytes / link
      if r["mode"] == "fsdp":
        mem = mem_n - r["state_bytes_per_device"] + r["state_bytes_total"] / n
      else:
        mem = mem_n
      out.append({"mode": r["mode"], "hardware": hw, "devices": n, "global_batch": n * r["per_device_batch"],
                  "tflops_per_device": flops / 1e12, "gbytes_per_device": nbytes / 1e9,
                  "compute_ms": 1e3 * compute_s, "hbm_ms": 1e3 * memory_s, "comm_ms": 1e3 * comm_s,
                  "step_ms": 1e3 * (max(compute_s, memory_s) + comm_s),
                  "images_per_s": n * r["per_device_batch"] / (max(compute_s, memory_s) + comm_s),
                  "memory_gb": mem / 1e9, "hbm_gb": hbm / 1e9, "extrapolated": scale != 1.0})
  return out


def _tables(rows, projection, args) -> str:
  lines = ["| layout | fake devices | image | per-device batch | compile s | GFLOP / device | GB accessed / device "
           "| argument GB | output GB | alias GB | temp GB | state GB / device | parameters |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['mode']} | {r['devices']} | {r['size']}x{r['size']} | {r['per_device_batch']} | "
                 f"{r['lower_s'] + r['compile_s']:.0f} | {r['flops'] / 1e9:,.0f} | {r['bytes_accessed'] / 1e9:.1f} | "
                 f"{r['argument_bytes'] / 1e9:.2f} | {r['output_bytes'] / 1e9:.2f} | {r['alias_bytes'] / 1e9:.2f} | "
                 f"{r['temp_bytes'] / 1e9:.2f} | {r['state_bytes_per_device'] / 1e9:.2f} | {r['num_params']:,} |")
  lines += ["", f"Projection at {args.target_size}x{args.target_size}"
            + (" (extrapolated from the compiled size by (target / size)^2)" if projection and projection[0]["extrapolated"]
               else "") + ":", "",
            "| layout | hardware | global batch | TFLOP / device | compute ms | HBM ms | interconnect ms "
            "| step ms (bound) | images/s (bound) | memory / device GB | HBM GB |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
  for p in projection:
    lines.append(f"| {p['mode']} | {p['hardware']} | {p['global_batch']} | {p['tflops_per_device']:.2f} | "
                 f"{p['compute_ms']:.1f} | {p['hbm_ms']:.1f} | {p['comm_ms']:.1f} | {p['step_ms']:.1f} | "
                 f"{p['images_per_s']:.1f} | {p['memory_gb']:.1f} | {p['hbm_gb']:.0f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  sys.path.insert(0, str(ROOT))
  from dinoseg.config import split_config_args  # noqa: PLC0415
  argv, overrides = split_config_args(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=DEFAULT_CONFIG)
  parser.add_argument("--size", type=int, default=1024, help="compiled square image size (default 1024)")
  parser.add_argument("--target-size", type=int, default=1024, help="projected image size (default 1024)")
  parser.add_argument("--devices", type=int, default=8, help="fake CPU devices (default 8)")
  parser.add_argument("--per-device-batch", type=int, default=1)
  parser.add_argument("--modes", default="dp,fsdp", help="comma-separated from dp, fsdp")
  parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"), help="train.compute_dtype")
  parser.add_argument("--timeout", type=int, default=3600, help="seconds per layout (default 3600)")
  parser.add_argument("--json-out", default=None)
  parser.add_argument("--from-json", nargs="+", default=None,
                      help="print the tables from the rows of earlier --json-out files (e.g. dp and fsdp compiled "
                           "by two runs side by side) instead of compiling")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--mode", choices=("dp", "fsdp"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.size % 32 or args.size <= 0 or args.target_size % 32 or args.target_size <= 0:
    parser.error("--size and --target-size must be positive multiples of 32")
  if args.worker:
    print("PROJECT_SCALE " + json.dumps(_worker(args, overrides)), flush=True)
    return 0
  modes = [m.strip() for m in args.modes.split(",") if m.strip()]
  if not modes or any(m not in ("dp", "fsdp") for m in modes):
    parser.error("--modes takes dp and/or fsdp")
  rows = []
  if args.from_json:
    for path in args.from_json:
      rows += [r for r in json.loads(pathlib.Path(path).read_text())["rows"] if r["mode"] in modes]
  for mode in ([] if args.from_json else modes):
    print(f"compiling the {mode} step on {args.devices} fake devices ...", file=sys.stderr, flush=True)
    rows.append(_run_child(args, overrides, mode))
  projection = project(rows, args.target_size)
  cpu = platform.processor() or platform.machine()
  try:
    cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
  except (OSError, StopIteration):
    pass
  print(f"Mask DINO {args.config} {' '.join('--config.' + o for o in overrides)}".rstrip())
  print(f"compiled on {cpu} ({os.cpu_count()} cores), jax {rows[0]['jax']}, {time.strftime('%Y-%m-%d')}; "
        f"compute dtype {args.dtype}")
  print(_tables(rows, projection, args))
  if args.json_out:
    pathlib.Path(args.json_out).write_text(json.dumps({"args": vars(args), "overrides": overrides, "rows": rows,
                                                       "projection": projection}, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
