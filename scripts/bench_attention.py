"""Attention implementations at the shapes dinoseg's models use: time and temporary memory.

    python scripts/bench_attention.py [--repeats 5] [--shapes dinov2_b_448,segnext_global] [--no-grad]

For each shape (batch 1, float32; the Mask DINO decoder and OV2Seg rows batch 2) and each
implementation of `dinoseg.ops.attention.dot_product_attention` — "dense" (the logits in one
piece), "blocked" with several query block sizes, "xla" (jax.nn.dot_product_attention, token-major
inside) and "auto" (what the library picks on this backend) — the table gives the jitted forward and
forward + backward (gradient of sum(out * cotangent) w.r.t. q, k, v) times, the minimum over
--repeats calls after a warm-up call (the minimum, because the machine may be shared), and the
temporary memory XLA reserves for the call (`compiled.memory_analysis().temp_size_in_bytes`), beside
the size of one full (B, H, T, S) float32 logits array. With --rss also the peak resident memory one
forward call adds, measured in a fresh process (XLA does not count the workspace of XLA:CPU's YNNPACK
fusions, which the whole dense forward can become). `max|diff|` is the largest difference of the
forward output from "dense".
"""
import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np

# name: (leading batch dims, heads, queries T, keys S, head dim, extra: "bias" / "mask" / "rowmask" / "causal").
SHAPES = {
    # Swin-L at 384: stage 1 is 96x96 tokens in 8x8 windows of 12x12, 6 heads of 32; relative position bias
    # + shifted-window mask (as an additive bias per window).
    "swin_l_384_window": ((1, 64), 6, 144, 144, 32, "bias"),
    # DINOv2-B/14 with registers at 448 px: 1 + 4 + 32*32 tokens, 12 heads of 64.
    "dinov2_b_448": ((1,), 12, 1029, 1029, 64, None),
    # SegNext ViT-B at 1024: window blocks are 4x4 windows of 16x16 tokens; global blocks 64x64 tokens.
    "segnext_window": ((16,), 12, 256, 256, 64, None),
    "segnext_global": ((1,), 12, 4096, 4096, 64, None),
    # CLIP text tower: 80 prompts x 77 positions, causal mask, 8 heads of 64.
    "clip_text_80x77": ((80,), 8, 77, 77, 64, "causal"),
    # Mask DINO decoder self-attention, batch 2, 8 heads of 32, boolean (denoising) mask.
    "maskdino_self_400": ((2,), 8, 400, 400, 32, "mask"),
    "maskdino_self_1200": ((2,), 8, 1200, 1200, 32, "mask"),
    # OV2Seg masked cross-attention, batch 2, 100 queries onto the 1/8 level of a 1024 input (128 x 128).
    "ov2seg_cross_100x16384": ((2,), 8, 100, 16384, 32, "rowmask"),
}
IMPLEMENTATIONS = [("dense", None), ("blocked", 128), ("blocked", 256), ("blocked", 512), ("xla", None),
                   ("auto", None)]


def _inputs(name, rng):
  lead, h, t, s, d, extra = SHAPES[name]
  q = rng.standard_normal(lead + (h, t, d), dtype=np.float32)
  k = rng.standard_normal(lead + (h, s, d), dtype=np.float32)
  v = rng.standard_normal(lead + (h, s, d), dtype=np.float32)
  bias = mask = None
  if extra == "bias":
    bias = rng.standard_normal(lead[1:] + (h, t, s), dtype=np.float32)
  elif extra == "causal":
    mask = np.tril(np.ones((t, s), bool))
  elif extra == "mask":
    mask = rng.random((t, s)) > 0.2
    np.fill_diagonal(mask, True)
  elif extra == "rowmask":
    mask = rng.random(lead + (1, t, s)) > 0.5
  return q, k, v, bias, mask


def _timed(fn, args, repeats):
  import jax  # noqa: PLC0415
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def _status_mib(field: str) -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  raise RuntimeError(f"no {field} in /proc/self/status")


def _forward_peak_rss(name: str, impl: str, chunk: int | None) -> float:
  """Child-process body: the resident-memory rise (MiB) of one forward call after compiling it.

  XLA's own accounting (`memory_analysis`) misses the workspace of XLA:CPU's YNNPACK fusions (the whole
  dense attention can become one), so the forward's memory is measured as the peak RSS above the RSS
  just before the first call, in a fresh process (Linux: /proc/self/clear_refs resets the peak).
  """
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from dinoseg.ops.attention import dot_product_attention  # noqa: PLC0415

  q, k, v, bias, mask = (None if x is None else jnp.asarray(x) for x in _inputs(name, np.random.default_rng(0)))
  fwd = jax.jit(lambda q, k, v, bias, mask: dot_product_attention(
      q, k, v, bias=bias, mask=mask, implementation=impl, query_chunk_size=chunk))
  compiled = fwd.lower(q, k, v, bias, mask).compile()
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
  base = _status_mib("VmRSS")
  jax.block_until_ready(compiled(q, k, v, bias, mask))
  return _status_mib("VmHWM") - base


def _peak_rss_in_child(name: str, impl: str, chunk: int | None) -> float:
  code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
          f"import bench_attention as b; print(b._forward_peak_rss({name!r}, {impl!r}, {chunk!r}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return float(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per cell (the minimum is reported)")
  parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated from {', '.join(SHAPES)}")
  parser.add_argument("--no-grad", action="store_true", help="forward only")
  parser.add_argument("--rss", action="store_true",
                      help="also measure each forward's peak resident memory in a fresh process (slow)")
  parser.add_argument("--threads", type=int, default=None, help="XLA CPU threads (default: all)")
  args = parser.parse_args()
  if args.threads:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'}"
                               f" intra_op_parallelism_threads={args.threads}")
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from dinoseg.ops.attention import dot_product_attention  # noqa: PLC0415

  names = [n.strip() for n in args.shapes.split(",") if n.strip()]
  unknown = sorted(set(names) - set(SHAPES))
  if unknown:
    parser.error(f"unknown shapes {unknown}; choose from {list(SHAPES)}")
  print(f"backend {jax.default_backend()}, jax {jax.__version__}, {platform.processor() or platform.machine()}, "
        f"load average at start {os.getloadavg()[0]:.2f}")
  print("| shape | B x H x T x S x hd | implementation | fwd ms | fwd+bwd ms | fwd temp MiB | fwd+bwd temp MiB "
        "| fwd peak RSS MiB | logits MiB | max\\|diff\\| |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for name in names:
    lead, h, t, s, d, _ = SHAPES[name]
    q, k, v, bias, mask = (None if x is None else jnp.asarray(x) for x in _inputs(name, rng))
    cot = jnp.asarray(rng.standard_normal(q.shape, dtype=np.float32))
    logits_mib = int(np.prod(lead)) * h * t * s * 4 / 2**20
    reference = None
    for impl, chunk in IMPLEMENTATIONS:
      if impl == "blocked" and chunk >= t:
        continue

      # bias and mask are arguments (closed over, XLA would constant-fold them at compile time).
      def forward(q, k, v, bias, mask, impl=impl, chunk=chunk):
        return dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=impl, query_chunk_size=chunk)

      def loss(q, k, v, bias, mask, forward=forward):
        return jnp.sum(forward(q, k, v, bias, mask) * cot)

      fwd = jax.jit(forward)
      grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
      call_args = (q, k, v, bias, mask)
      out = np.asarray(fwd(*call_args))
      if reference is None:
        reference = out
      fwd_ms = 1e3 * _timed(fwd, call_args, args.repeats)
      fwd_mem = fwd.lower(*call_args).compile().memory_analysis().temp_size_in_bytes / 2**20
      if args.no_grad:
        bwd_ms, bwd_mem = float("nan"), float("nan")
      else:
        bwd_ms = 1e3 * _timed(grad, call_args, args.repeats)
        bwd_mem = grad.lower(*call_args).compile().memory_analysis().temp_size_in_bytes / 2**20
      rss = _peak_rss_in_child(name, impl, chunk) if args.rss else float("nan")
      label = impl if chunk is None else f"{impl} {chunk}"
      dims = f"{int(np.prod(lead))}x{h}x{t}x{s}x{d}"
      print(f"| {name} | {dims} | {label} | {fwd_ms:.2f} | {bwd_ms:.2f} | {fwd_mem:.0f} | {bwd_mem:.0f} | {rss:.0f} | "
            f"{logits_mib:.0f} | {np.max(np.abs(out - reference)):.1e} |", flush=True)


if __name__ == "__main__":
  main()
