"""Forward throughput of the dinoseg backbones beside the reference PyTorch models (same weights, same run).

    python scripts/bench_backbones.py --detectron2 /tmp/ref_detectron2 --maskdino /tmp/ref_maskdino \
        --segnext /tmp/ref_segnext [--models resnet50,swin_tiny] [--size resnet50=800x1344] [--iters 3]

For each entry the reference model is built from its checkout (scripts/backbone_references.py) with
random weights; the same weights go through `dinoseg convert`'s converter into the Flax model, which runs
jitted. Both run batch 1 (or --batch) in float32 on the same machine, one after the other; the table
gives images/s (median of --iters timed calls, the two sides alternating, after --warmup calls; the
first Flax call, the compilation, is reported separately) and the largest output difference relative
to the largest output.
Without a checkout the reference column is left empty. JAX runs on its default backend (the GPU when
one is present); the reference runs on CUDA when torch sees one, else on the CPU.

Entries live in `BENCHES` (`register_bench`); other backbones add theirs there.
"""
import argparse
import dataclasses
import os
import pathlib
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import backbone_references as refs  # noqa: E402


@dataclasses.dataclass(frozen=True)
class BenchEntry:
  """One row: a registered dinoseg backbone and how to build / run its reference.

  Attributes:
    name: row name (also the --models key).
    backbone: dinoseg backbone / converter name.
    size: default (H, W).
    checkouts: the command-line checkout arguments the reference needs.
    reference: (args) -> torch module in eval mode, or None.
    run_reference: (module, images NCHW tensor) -> list of NCHW tensors.
    run_flax: (outputs of the Flax apply) -> list of NHWC arrays in the reference's order.
    note: shown under the table.
  """
  name: str
  backbone: str
  size: tuple[int, int]
  checkouts: tuple[str, ...]
  reference: Callable[[argparse.Namespace], Any] | None
  run_reference: Callable[[Any, Any], list]
  run_flax: Callable[[Any], list]
  note: str = ""


BENCHES: dict[str, BenchEntry] = {}


def register_bench(entry: BenchEntry) -> None:
  BENCHES[entry.name] = entry


def _dict_outputs(out):
  return [out[k] for k in ("res2", "res3", "res4", "res5")]


def _swin_reference(cfg):
  return lambda args: refs.build_reference_swin(args.maskdino, args.detectron2, **cfg)


def _register_defaults() -> None:
  from dinoseg.backbones.swin import SWIN_VARIANTS  # noqa: PLC0415
  register_bench(BenchEntry(
      "resnet50", "resnet50", (1024, 1024), ("detectron2",),
      lambda args: refs.build_reference_resnet(args.detectron2, depth=50),
      lambda m, x: _dict_outputs(m(x)), _dict_outputs, "detectron2 R50, FrozenBN, Mask DINO LSJ size"))
  for name, size in (("swin_tiny", 224), ("swin_base", 384), ("swin_large", 384)):
    kw = SWIN_VARIANTS[name]
    cfg = {k: kw[k] for k in ("embed_dim", "depths", "num_heads", "window_size")}
    register_bench(BenchEntry(name, name, (size, size), ("maskdino", "detectron2"), _swin_reference(cfg),
                              lambda m, x: _dict_outputs(m(x)), _dict_outputs,
                              f"MaskDINO D2SwinTransformer, window {kw['window_size']}, pretraining size"))
  register_bench(BenchEntry(
      "segnext_vit_b", "segnext_vit_b", (1024, 1024), ("segnext",),
      lambda args: refs.build_reference_vit(args.segnext, img_size=(1024, 1024)),
      lambda m, x: [m(x, keep_shape=True)], lambda out: [out], "SegNext ViT-B/16, 4x4 windows + 4 global blocks"))


def bench(entry: BenchEntry, args, size: tuple[int, int]) -> dict:
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from dinoseg import backbones  # noqa: PLC0415
  from dinoseg.convert import registry  # noqa: PLC0415
  model = backbones.build(entry.backbone)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(args.batch, 3, *size)).astype(np.float32)
  row = {"name": entry.name, "input": f"{args.batch}x{size[0]}x{size[1]}", "note": entry.note}
  have_reference = entry.reference is not None and all(getattr(args, c) for c in entry.checkouts)
  torch_model = None
  if have_reference:
    import torch  # noqa: PLC0415
    torch_model = entry.reference(args)
    state = {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}
    tree = registry.get(entry.backbone).to_flax(state)
    variables = tree if registry.get(entry.backbone).variables else {"params": tree}
  else:
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *size, 3), jnp.float32))
    variables.pop("intermediates", None)
  variables = jax.device_put(variables)
  x = jax.device_put(jnp.asarray(images.transpose(0, 2, 3, 1)))
  forward = jax.jit(model.apply)
  start = time.perf_counter()
  out = jax.block_until_ready(forward(variables, x))
  row["compile_s"] = time.perf_counter() - start
  row["jax_device"] = str(jax.devices()[0].platform)
  runs = {"flax": lambda: jax.block_until_ready(forward(variables, x))}
  if have_reference:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_model = torch_model.to(device)
    xt = torch.from_numpy(images).to(device)

    def run_reference():
      with torch.inference_mode():
        result = entry.run_reference(torch_model, xt)
      if device == "cuda":
        torch.cuda.synchronize()
      return result

    runs["ref"] = run_reference
    row["torch_device"] = device
    ref = [r.detach().cpu().numpy() for r in run_reference()]
    got = [np.asarray(o).transpose(0, 3, 1, 2) for o in entry.run_flax(out)]
    row["rel_diff"] = max(float(np.abs(g - r).max() / np.abs(r).max()) for g, r in zip(got, ref))
  for _ in range(args.warmup):
    for fn in runs.values():
      fn()
  times = {k: [] for k in runs}
  for _ in range(args.iters):  # alternate, so that load changes hit both sides alike
    for k, fn in runs.items():
      start = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - start)
  for k, t in times.items():
    row[f"{k}_ips"] = args.batch / statistics.median(t)
  return row


def _fmt(value, spec):
  return "–" if value is None else format(value, spec)


def main():
  _register_defaults()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--detectron2", type=pathlib.Path, help="facebookresearch/detectron2 checkout")
  parser.add_argument("--maskdino", type=pathlib.Path, help="IDEA-Research/MaskDINO checkout")
  parser.add_argument("--segnext", type=pathlib.Path, help="uncbiag/SegNext checkout")
  parser.add_argument("--models", default=",".join(BENCHES), help=f"comma-separated, from {', '.join(BENCHES)}")
  parser.add_argument("--size", action="append", default=[], help="NAME=HxW, e.g. resnet50=800x1344 (repeatable)")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--threads", type=int, default=None,
                      help="CPU threads for both sides (torch.set_num_threads and XLA's CPU thread pool); on a "
                           "shared machine 1 gives steadier figures than oversubscribed cores")
  args = parser.parse_args()
  names = [n.strip() for n in args.models.split(",") if n.strip()]
  unknown = [n for n in names if n not in BENCHES]
  if unknown:
    parser.error(f"unknown models {unknown}; known: {', '.join(BENCHES)}")
  sizes = {}
  for spec in args.size:
    name, _, hw = spec.partition("=")
    try:
      sizes[name] = tuple(int(v) for v in hw.lower().split("x"))
    except ValueError:
      parser.error(f"--size must look like NAME=HxW, got {spec!r}")
  if args.threads:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                               f"{'false' if args.threads == 1 else 'true'} "
                               f"intra_op_parallelism_threads={args.threads}").strip()
    try:
      import torch  # noqa: PLC0415
      torch.set_num_threads(args.threads)
    except ImportError:
      pass
  import jax  # noqa: PLC0415
  jax.config.update("jax_default_matmul_precision", "highest")
  print("| model | input (BxHxW) | dinoseg img/s | reference img/s | ratio | compile s | rel. max diff |")
  print("|---|---|---|---|---|---|---|")
  rows = []
  for name in names:
    row = bench(BENCHES[name], args, sizes.get(name, BENCHES[name].size))
    rows.append(row)
    ratio = row["flax_ips"] / row["ref_ips"] if "ref_ips" in row else None
    print(f"| {row['name']} | {row['input']} | {row['flax_ips']:.3f} | {_fmt(row.get('ref_ips'), '.3f')} | "
          f"{_fmt(ratio, '.2f')}{'x' if ratio else ''} | {row['compile_s']:.1f} | "
          f"{_fmt(row.get('rel_diff'), '.1e')} |",
          flush=True)
  devices = {(r["jax_device"], r.get("torch_device", "-")) for r in rows}
  print(f"\nJAX backend / torch device: {', '.join(f'{j} / {t}' for j, t in sorted(devices))}; "
        f"median of {args.iters} calls after {args.warmup} warm-up call(s); "
        f"threads: {args.threads or 'default'}.")
  for row in rows:
    print(f"- {row['name']}: {row['note']}")


if __name__ == "__main__":
  main()
