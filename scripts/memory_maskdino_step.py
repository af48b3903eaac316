"""What the Mask DINO train step keeps in memory: XLA's memory analysis and its largest buffers, by source.

    python scripts/memory_maskdino_step.py [--size 1024] [--batch 1] [--top 30] [--config.a.b=value ...]

Compiles (does not run) the trainer's jitted train step of `--config` (default: the R50 COCO instance
config, as scripts/bench_maskdino.py builds it: random weights, 8 ground-truth objects padded to
`data.max_instances`) at `--size` x `--size` with XLA's buffer assignment dumped, then prints

- `memory_analysis()`: argument, output, alias (donated) and temporary bytes of the compiled step;
- the largest values that live in the step's temporary allocation (shape, size, the JAX operation they
  come from);
- the top of XLA's memory-usage report: the allocation's offset ranges, largest first, each with the
  values that share it over time (what the temporary total is made of).

Compilation only, so the figures do not depend on the machine's load. Compare configurations with
`--config.` overrides (e.g. `--config.model.remat=...`).
"""
import argparse
import os
import pathlib
import re
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

VALUE = re.compile(r"^\s*value: <\d+ ([\w.\-]+)(?:\{[\d,]*\})? @\d+> \(size=(\d+),offset=\d+\): (.*)$")
ALLOCATION = re.compile(r"^allocation \d+: size (\d+),(.*)$")


def temp_values(buffer_assignment: str) -> list[tuple[str, int, str]]:
  """(instruction name, bytes, shape) of each value in the temporary allocation(s) of a buffer-assignment dump."""
  values, in_temp = [], False
  for line in buffer_assignment.splitlines():
    m = ALLOCATION.match(line)
    if m:
      in_temp = "preallocated-temp" in m.group(2)
      continue
    m = VALUE.match(line)
    if m and in_temp:
      values.append((m.group(1), int(m.group(2)), m.group(3).strip()))
  return values


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/maskdino/coco_instance_r50_3s_d1_2048.py")
  parser.add_argument("--size", type=int, default=1024)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--num-gt", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--top", type=int, default=30)
  parser.add_argument("--dump-dir", default=None, help="where XLA's dump goes (default: a new temporary directory)")
  args, rest = parser.parse_known_args()
  overrides = [a[len("--config."):] for a in rest if a.startswith("--config.")]
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  dump = args.dump_dir or tempfile.mkdtemp(prefix="maskdino_memory_")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump}"
                             " --xla_dump_hlo_module_re=jit_step").strip()
  sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
  import absl.flags  # noqa: PLC0415  (grain reads absl flags)
  if not absl.flags.FLAGS.is_parsed():
    absl.flags.FLAGS.mark_as_parsed()
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  import bench_maskdino  # noqa: PLC0415
  from dinoseg.train import trainer  # noqa: PLC0415

  config = bench_maskdino.load_dinoseg_config(args, overrides)
  run = trainer.build_run(config)
  state = run.create_state()
  images, _, padded = bench_maskdino.make_inputs(args.size, args.batch, args.num_gt, config.model.num_classes,
                                                 config.data.max_instances, args.seed)
  hw = np.full((args.batch, 2), args.size, np.int32)
  batch = run.global_batch({"image": images, "valid_hw": hw, **{k: padded[k] for k in ("labels", "boxes", "valid", "masks")}})
  t = time.perf_counter()
  with run.context():
    step = run.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  ma = step.memory_analysis()
  gib = 2 ** 30
  print(f"config {args.config} {' '.join(overrides)}; {args.size}x{args.size}, batch {args.batch}; jax {jax.__version__}; "
        f"compile {compile_s:.1f} s")
  print(f"argument {ma.argument_size_in_bytes / gib:.2f} GiB, output {ma.output_size_in_bytes / gib:.2f} GiB, "
        f"alias {ma.alias_size_in_bytes / gib:.2f} GiB, temp {ma.temp_size_in_bytes / gib:.2f} GiB; "
        f"argument + output - alias + temp = "
        f"{(ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes + ma.temp_size_in_bytes) / gib:.2f} GiB")
  files = sorted(pathlib.Path(dump).glob("*jit_step*buffer-assignment.txt"), key=lambda p: p.stat().st_size)
  if not files:
    print(f"no buffer-assignment dump under {dump}")
    return
  values = temp_values(files[-1].read_text())
  source = dict(re.findall(r'^\s*%?([\w.\-]+) = .*?op_name="([^"]*)"', step.as_text(), re.M))
  print(f"\n{len(values)} values in the temporary allocation; the largest:\n")
  print("| bytes MiB | shape | from |\n|---|---|---|")
  for name, size, shape in sorted(values, key=lambda v: -v[1])[:args.top]:
    print(f"| {size / 2 ** 20:.1f} | {shape[:60]} | {source.get(name, name)[-100:]} |")
  report = sorted(pathlib.Path(dump).glob("*jit_step*memory-usage-report.txt"))
  if report:
    print(f"\nXLA's memory-usage report (offset ranges of the allocation, each with the values that share it; "
          f"{report[-1]}), its first {args.top} rows:\n")
    print("\n".join(report[-1].read_text().splitlines()[:args.top + 4]))


if __name__ == "__main__":
  main()
