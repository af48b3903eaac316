"""Where a Mask DINO train step (or inference) spends its time on this machine: the top XLA ops of one call.

    python scripts/profile_maskdino_step.py [--size 128] [--mode train|inference] [--top 25] [--threads 1] \
        [--config.a.b=value ...]

Builds the task of `--config` (default: the R50 COCO instance config at full width) at `--size` x
`--size`, batch `--batch` (default 1), random weights and 8 random ground-truth objects padded to `data.max_instances`,
compiles the gradient of the training loss (forward, criterion with matching, backward; no optimizer),
or with `--mode inference` the task's jitted prediction (eval forward + postprocessing, as
`dinoseg eval` runs it), times one call after a warm-up, then records one more call with
`jax.profiler` (perfetto trace) and prints the ops with the largest total duration. The trace directory is kept (`--trace-dir`) for
TensorBoard / Perfetto.
"""
import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/maskdino/coco_instance_r50_3s_d1_2048.py"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=DEFAULT_CONFIG)
  parser.add_argument("--size", type=int, default=128, help="square image size (default 128)")
  parser.add_argument("--mode", choices=("train", "inference"), default="train",
                      help="train: gradient of the training loss; inference: the task's predict_fn")
  parser.add_argument("--batch", type=int, default=1, help="images per step (default 1)")
  parser.add_argument("--top", type=int, default=25, help="ops to print (default 25)")
  parser.add_argument("--threads", type=int, default=1, help="XLA:CPU threads (default 1; 0 = XLA's default)")
  parser.add_argument("--trace-dir", default=None, help="where the profile goes (default: a new temporary directory)")
  args, rest = parser.parse_known_args()
  overrides = [a[len("--config."):] for a in rest if a.startswith("--config.")]
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  if args.threads:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                               + ("false" if args.threads == 1 else "true")
                               + f" intra_op_parallelism_threads={args.threads}").strip()
  sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
  import absl.flags  # noqa: PLC0415  (grain reads absl flags)
  if not absl.flags.FLAGS.is_parsed():
    absl.flags.FLAGS.mark_as_parsed()
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  import bench_maskdino  # noqa: PLC0415
  from dinoseg.config import load_config  # noqa: PLC0415
  from dinoseg.train import task as task_lib  # noqa: PLC0415

  config = load_config(args.config, [f"data.image_size=({args.size}, {args.size})", f"data.batch_size={args.batch}"] + overrides)
  # As scripts/bench_maskdino.py: the denoising groups are formed over the whole (small) batch.
  dec = config.model.get("decoder")
  if (dec is not None and dec.get("dn_group_images") and args.batch % int(dec.dn_group_images)
      and not any(o.startswith("model.decoder.dn_group_images=") for o in overrides)):
    dec.dn_group_images = args.batch
  task = task_lib.build(config)
  variables = jax.jit(task.init_variables)(jax.random.key(0))
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  images, _, padded = bench_maskdino.make_inputs(args.size, args.batch, min(8, config.data.max_instances), config.model.num_classes,
                                                 config.data.max_instances, 0)
  batch = {"image": jnp.asarray(images, jnp.float32), "valid_hw": jnp.full((args.batch, 2), args.size, jnp.int32),
           **{k: jnp.asarray(padded[k]) for k in ("labels", "boxes", "valid", "masks")}}
  if args.mode == "train":
    fn = jax.grad(lambda p, b, r: task.loss_fn(p, model_state, b, r)[0])
    call_args = (params, batch, jax.random.key(1))
  else:
    fn = lambda p, b: task.predict_fn(p, model_state, b)  # noqa: E731
    call_args = (params, {"image": batch["image"], "valid_hw": batch["valid_hw"], "original_hw": batch["valid_hw"]})
  t = time.perf_counter()
  step = jax.jit(fn).lower(*call_args).compile()
  compile_s = time.perf_counter() - t
  jax.block_until_ready(step(*call_args))
  t = time.perf_counter()
  jax.block_until_ready(step(*call_args))
  step_s = time.perf_counter() - t
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="maskdino_profile_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    jax.block_until_ready(step(*call_args))
  traces = sorted(pathlib.Path(trace_dir).rglob("*.trace.json.gz"))
  if not traces:
    raise SystemExit(f"no perfetto trace was written under {trace_dir}")
  with gzip.open(traces[-1]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    # Complete events of XLA ops (the Python frames and the executor's own spans are not ops).
    if e.get("ph") == "X" and not name.startswith(("$", "ThunkExecutor")):
      total[name] += e.get("dur", 0)
      count[name] += 1
  print(f"config {args.config} {' '.join(overrides)}; {args.size}x{args.size}, batch {args.batch}, {args.threads or 'default'} "
        f"thread(s), jax {jax.__version__} ({jax.default_backend()})")
  what = "one gradient step" if args.mode == "train" else "one inference call"
  print(f"compile {compile_s:.1f} s, {what} {step_s:.3f} s; trace: {traces[-1]}")
  # Which JAX operation each HLO instruction came from (its metadata op_name).
  source = dict(re.findall(r'^\s*%?([\w.\-]+) = .*?op_name="([^"]*)"', step.as_text(), re.M))
  print("| op | calls | total ms | share of the call | from |\n|---|---|---|---|---|")
  for name, us in total.most_common(args.top):
    print(f"| {name[:50]} | {count[name]} | {us / 1e3:.1f} | {us / 1e6 / step_s:.1%} | {source.get(name, '')[-70:]} |")
  # The same time grouped by where it comes from: pass (forward / backward) x model part.
  groups = collections.Counter()
  for name, us in total.items():
    src = source.get(name, "")
    direction = "backward" if "transpose(" in src else "forward"
    part = next((p for p in ("backbone", "pixel_decoder", "self_attn", "cross_attn", "predictor", "criterion")
                 if p in src), "while-loops (matching)" if "/while/" in src else "other" if src else "unattributed")
    groups[f"{direction} {part}"] += us
  print("\n| pass / part | total ms | share |\n|---|---|---|")
  for key, us in groups.most_common():
    print(f"| {key} | {us / 1e3:.1f} | {us / 1e6 / step_s:.1%} |")
  # And by JAX scope (the op_name without its last component), the largest first.
  scopes = collections.Counter()
  for name, us in total.items():
    scopes[source.get(name, "(unattributed)").rsplit("/", 1)[0]] += us
  print("\n| scope | total ms | share |\n|---|---|---|")
  for key, us in scopes.most_common(args.top):
    print(f"| {key[-120:]} | {us / 1e3:.1f} | {us / 1e6 / step_s:.1%} |")


if __name__ == "__main__":
  main()
