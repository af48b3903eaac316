"""Benchmarks deformable attention and matching: dinoseg (XLA, Pallas) beside the PyTorch formulations.

  python scripts/bench_kernels.py                 # full Mask DINO sizes (minutes on a 2-core CPU)
  python scripts/bench_kernels.py --quick         # small sizes, seconds
  python scripts/bench_kernels.py --only msda --pallas-max-queries 0   # skip Pallas

Deformable attention (Mask DINO sizes: batch 2, 1024x1024 input, 4 levels at strides 8..64 =
128^2 + 64^2 + 32^2 + 16^2 = 21760 tokens, 8 heads, 4 points, 32 channels per head):
  decoder side  --decoder-queries (300 queries + 100 denoising queries), 4-d reference boxes
  encoder side  every token is a query (21760), offsets around its own position
Rows: dinoseg XLA, dinoseg Pallas (on a CPU host this is Pallas *interpret* mode, a correctness
tool, not a fast path), and the reference's pure-PyTorch formulation (grid_sample per level,
written here from the semantics), forward and forward + backward.

Matching (batch 16, 300 queries, 100 targets, 80 classes, 12544 points): matching cost + assignment
with the device Hungarian, with the host scipy path, and the reference procedure (per image: the
cost in PyTorch, then scipy's linear_sum_assignment). Point sampling is excluded everywhere: all
three start from the same sampled point logits and targets. The row "before issue 19" is dinoseg's
previous XLA cost (`previous_xla_matching_cost`), timed in the same rounds for the comparison.

  python scripts/bench_kernels.py --only matching --no-match-pallas --repeats 5   # matching rows only

Prints Markdown tables: medians of --repeats timed runs after one warm-up. The runs of the compared
implementations are interleaved (one run of each, then the next round), so that a machine shared
with other jobs loads them alike; the load average is printed with the results.
"""
import argparse
import os
import platform
import statistics
import time

import numpy as np


def _interleaved_times(fns: dict, repeats: int) -> dict:
  """{name: callable} -> {name: [seconds per round]}; one warm-up each, then rounds of one run each."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def _interleaved_medians(fns: dict, repeats: int) -> dict:
  """{name: callable} -> {name: median seconds} (see _interleaved_times)."""
  return {name: statistics.median(t) for name, t in _interleaved_times(fns, repeats).items()}


# ----------------------------------------------------------------------------- deformable attention


def msda_inputs(rng, batch, shapes, num_queries, heads, points, channels, side):
  """Inputs with realistic locality: offsets of a few pixels around a reference point."""
  s = sum(h * w for h, w in shapes)
  levels = len(shapes)
  value = rng.normal(size=(batch, s, heads, channels)).astype(np.float32)
  if side == "encoder":  # Each token's own pixel centre (in its level), as the pixel decoder does.
    ref = np.concatenate([np.stack(np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h),
                                   -1).reshape(-1, 2) for h, w in shapes])
    ref = np.broadcast_to(ref[None, :, None, None, None, :], (batch, num_queries, 1, 1, 1, 2))
    sizes = np.array([(w, h) for h, w in shapes], np.float32)[None, None, None, :, None, :]
    offsets = rng.normal(scale=2.0, size=(batch, num_queries, heads, levels, points, 2)) / sizes
  else:  # Decoder: reference boxes, offsets within the box (loc = ref_xy + off / P * ref_wh / 2).
    ref = rng.uniform(0.1, 0.9, size=(batch, num_queries, 1, 1, 1, 2))
    wh = rng.uniform(0.05, 0.5, size=(batch, num_queries, 1, 1, 1, 2))
    offsets = rng.normal(scale=2.0, size=(batch, num_queries, heads, levels, points, 2)) / points * wh * 0.5
  loc = (ref + offsets).astype(np.float32)
  logits = rng.normal(size=(batch, num_queries, heads, levels * points))
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  weights = weights.reshape(batch, num_queries, heads, levels, points).astype(np.float32)
  return value, loc, weights


def torch_msda(torch, value, shapes, loc, weights):
  """grid_sample per level, then the attention-weighted sum (the reference's CPU fallback path)."""
  n, _, m, d = value.shape
  lq, num_levels, num_points = loc.shape[1], loc.shape[3], loc.shape[4]
  grids = loc * 2 - 1
  samples = []
  for level, (start, (h, w)) in enumerate(zip(np.cumsum([0] + [h * w for h, w in shapes]), shapes)):
    v = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
    g = grids[:, :, :, level].permute(0, 2, 1, 3, 4).reshape(n * m, lq, num_points, 2)
    samples.append(torch.nn.functional.grid_sample(v, g, mode="bilinear", padding_mode="zeros",
                                                   align_corners=False))
  stacked = torch.stack(samples, dim=-2).reshape(n * m, d, lq, num_levels * num_points)
  a = weights.permute(0, 2, 1, 3, 4).reshape(n * m, 1, lq, num_levels * num_points)
  return (stacked * a).sum(-1).reshape(n, m * d, lq).transpose(1, 2)


def _bytes_accessed(compiled):
  """XLA's "bytes accessed" estimate of a compiled program (None where the backend gives none)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["bytes accessed"]) if cost and "bytes accessed" in cost else None


def msda_floor_bytes(batch, num_tokens, num_queries, heads, levels, points, channels, itemsize=4):
  """Least bytes a fused MSDA forward and forward + backward must move through device memory.

  forward:  read value (N, S, M, D), locations (N, Lq, M, L, P, 2), weights (N, Lq, M, L, P) once,
            write the output (N, Lq, M * D) once.
  backward: read the same three inputs and the output's gradient once more, write the gradients of
            value, locations and weights once.
  Returns {"fwd": bytes, "all": bytes (forward + backward)}.
  """
  value = batch * num_tokens * heads * channels
  loc = batch * num_queries * heads * levels * points * 2
  weights = batch * num_queries * heads * levels * points
  out = batch * num_queries * heads * channels
  fwd = (value + loc + weights + out) * itemsize
  bwd = (value + loc + weights + out + value + loc + weights) * itemsize
  return {"fwd": fwd, "all": fwd + bwd}


def measure_msda(args, rng, torch_device: str = "cpu") -> list[dict]:
  """Times MSDA forward and forward + backward at Mask DINO's decoder and encoder sizes.

  Args:
    args: image_size, batch, decoder_queries, pallas_max_queries, repeats (see main's flags).
    rng: numpy Generator for the inputs (msda_inputs).
    torch_device: where the PyTorch grid_sample formulation runs ("cpu" or "cuda"); None skips it.
  Returns:
    One dict per (side, implementation): side, queries, name, fwd_s, all_s (medians), scratch_mib
    (the backward's temporary memory, "-" for PyTorch), sampled_mib, cost_bytes_fwd / cost_bytes_all
    (XLA's "bytes accessed" of the compiled programs, None for PyTorch), floor_bytes_fwd /
    floor_bytes_all (msda_floor_bytes).
  """
  import jax
  import jax.numpy as jnp

  from dinoseg.kernels import ms_deform_attn

  shapes = tuple((args.image_size // s, args.image_size // s) for s in (8, 16, 32, 64))
  num_tokens = sum(h * w for h, w in shapes)
  rows = []
  for side, num_queries in (("decoder", args.decoder_queries), ("encoder", num_tokens)):
    inputs = msda_inputs(rng, args.batch, shapes, num_queries, 8, 4, 32, side)
    sampled_mb = args.batch * num_queries * 8 * 4 * 4 * 32 * 4 / 2 ** 20
    floor = msda_floor_bytes(args.batch, num_tokens, num_queries, 8, 4, 4, 32)
    jax_inputs = [jnp.asarray(x) for x in inputs]
    fns, info = {}, {}
    impls = ["xla"] + (["pallas"] if num_queries <= args.pallas_max_queries else [])
    for impl in impls:
      name = "dinoseg XLA" if impl == "xla" else (
          "dinoseg Pallas (interpret)" if jax.default_backend() == "cpu" else "dinoseg Pallas")
      fwd = jax.jit(lambda v, l, w, impl=impl: ms_deform_attn(v, shapes, l, w, impl=impl)).lower(
          *jax_inputs).compile()
      loss = lambda v, l, w, impl=impl: jnp.sum(ms_deform_attn(v, shapes, l, w, impl=impl) ** 2)
      fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*jax_inputs).compile()
      info[name] = {"scratch_mib": f"{fwd_bwd.memory_analysis().temp_size_in_bytes / 2 ** 20:.0f}",
                    "cost_bytes_fwd": _bytes_accessed(fwd), "cost_bytes_all": _bytes_accessed(fwd_bwd)}
      fns[(name, "fwd")] = lambda fwd=fwd: jax.block_until_ready(fwd(*jax_inputs))
      fns[(name, "all")] = lambda fwd_bwd=fwd_bwd: jax.block_until_ready(fwd_bwd(*jax_inputs))
    if torch_device is not None:
      import torch
      sync = torch.cuda.synchronize if torch_device.startswith("cuda") else (lambda: None)
      tensors = [torch.tensor(x, device=torch_device) for x in inputs]
      grads = [t.clone().requires_grad_() for t in tensors]

      def torch_fwd():
        with torch.no_grad():
          torch_msda(torch, tensors[0], shapes, tensors[1], tensors[2])
        sync()

      def torch_fwd_bwd():
        out = torch_msda(torch, grads[0], shapes, grads[1], grads[2])
        (out ** 2).sum().backward()
        sync()

      fns[("PyTorch grid_sample", "fwd")] = torch_fwd
      fns[("PyTorch grid_sample", "all")] = torch_fwd_bwd
      info["PyTorch grid_sample"] = {"scratch_mib": "-", "cost_bytes_fwd": None, "cost_bytes_all": None}
    medians = _interleaved_medians(fns, args.repeats)
    for name, extra in info.items():
      rows.append({"side": side, "queries": num_queries, "name": name, "fwd_s": medians[(name, "fwd")],
                   "all_s": medians[(name, "all")], "sampled_mib": sampled_mb, "floor_bytes_fwd": floor["fwd"],
                   "floor_bytes_all": floor["all"], **extra})
  return rows


def bench_msda(args, rng):
  shapes = tuple((args.image_size // s, args.image_size // s) for s in (8, 16, 32, 64))
  rows = measure_msda(args, rng)
  print(f"\n### Deformable attention (batch {args.batch}, {args.image_size}x{args.image_size}, "
        f"levels {shapes}, 8 heads, 4 points, 32 channels)\n")
  print("| side | queries | implementation | forward ms | fwd+bwd ms | PyTorch / this (fwd) "
        "| PyTorch / this (fwd+bwd) | bwd scratch MiB | sampled values MiB |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    ref = next(x for x in rows if x["side"] == r["side"] and x["name"] == "PyTorch grid_sample")
    print(f"| {r['side']} | {r['queries']} | {r['name']} | {r['fwd_s'] * 1e3:.1f} | {r['all_s'] * 1e3:.1f} | "
          f"{ref['fwd_s'] / r['fwd_s']:.2f}x | {ref['all_s'] / r['all_s']:.2f}x | {r['scratch_mib']} | "
          f"{r['sampled_mib']:.0f} |")


# ----------------------------------------------------------------------------------------- matching


def matching_inputs(rng, batch, queries, targets, classes, points):
  masks = (rng.uniform(size=(batch, targets, points)) > 0.7).astype(np.float32)
  return dict(
      pred_logits=rng.normal(size=(batch, queries, classes)).astype(np.float32),
      pred_boxes=rng.uniform(0.1, 0.9, size=(batch, queries, 4)).astype(np.float32),
      pred_mask_points=rng.normal(scale=3.0, size=(batch, queries, points)).astype(np.float32),
      target_labels=rng.integers(0, classes, size=(batch, targets)).astype(np.int32),
      target_boxes=rng.uniform(0.1, 0.9, size=(batch, targets, 4)).astype(np.float32),
      target_mask_points=masks,
      target_valid=np.ones((batch, targets), bool),
  )


def torch_reference_matching(torch, inputs, weights):
  """The reference procedure: per image, the cost in PyTorch (formulas of Mask DINO's
  HungarianMatcher, written here from its definition), then scipy on the host."""
  from scipy.optimize import linear_sum_assignment

  f = torch.nn.functional
  out = []
  for b in range(inputs["pred_logits"].shape[0]):
    prob = inputs["pred_logits"][b].sigmoid()
    labels = inputs["target_labels"][b].long()
    a, g = weights.focal_alpha, weights.focal_gamma
    neg = (1 - a) * prob ** g * -(1 - prob + 1e-8).log()
    pos = a * (1 - prob) ** g * -(prob + 1e-8).log()
    cost_class = pos[:, labels] - neg[:, labels]
    pb, tb = inputs["pred_boxes"][b], inputs["target_boxes"][b]
    cost_bbox = torch.cdist(pb, tb, p=1)
    xyxy = lambda x: torch.cat([x[:, :2] - x[:, 2:] / 2, x[:, :2] + x[:, 2:] / 2], -1)
    p, t = xyxy(pb), xyxy(tb)
    area_p, area_t = (p[:, 2:] - p[:, :2]).prod(-1), (t[:, 2:] - t[:, :2]).prod(-1)
    inter = (torch.min(p[:, None, 2:], t[None, :, 2:]) - torch.max(p[:, None, :2], t[None, :, :2])).clamp(min=0).prod(-1)
    union = area_p[:, None] + area_t[None] - inter
    enclosing = (torch.max(p[:, None, 2:], t[None, :, 2:]) - torch.min(p[:, None, :2], t[None, :, :2])).clamp(min=0).prod(-1)
    giou = inter / union - (enclosing - union) / enclosing
    x, tm = inputs["pred_mask_points"][b], inputs["target_mask_points"][b]
    pos_m = f.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none")
    neg_m = f.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
    cost_mask = (torch.einsum("nc,mc->nm", pos_m, tm) + torch.einsum("nc,mc->nm", neg_m, 1 - tm)) / x.shape[1]
    s = x.sigmoid()
    cost_dice = 1 - (2 * torch.einsum("nc,mc->nm", s, tm) + 1) / (s.sum(-1)[:, None] + tm.sum(-1)[None] + 1)
    cost = (weights.mask_weight * cost_mask + weights.class_weight * cost_class + weights.dice_weight * cost_dice
            + weights.bbox_weight * cost_bbox - weights.giou_weight * giou)
    out.append(linear_sum_assignment(cost.numpy()))
  return out


def previous_xla_matching_cost(inputs, weights):
  """dinoseg's XLA matching cost as it was before issue 19, kept as a labelled row for the comparison.

  Mask terms with sigmoid = 1 / (1 + exp(-x)) and a separate softplus (two exps and a log per point
  logit); class and box terms as `matching_cost_xla`. inputs: matching_inputs' arrays, all targets
  valid (no target_box_valid). Returns (B, Q, T) float32.
  """
  import jax.numpy as jnp

  from dinoseg.kernels.matching_cost import formulas

  logits, labels = inputs["pred_logits"], inputs["target_labels"]
  table = formulas.class_cost_table(logits, weights)
  index = jnp.broadcast_to(labels[:, None, :], (*logits.shape[:2], labels.shape[-1]))
  cost = weights.class_weight * jnp.take_along_axis(table, index, axis=-1)
  pred, target = inputs["pred_boxes"], inputs["target_boxes"]
  l1, giou = formulas.box_costs(tuple(pred[..., i, None] for i in range(4)),
                                tuple(target[..., None, :, i] for i in range(4)))
  cost = cost + weights.bbox_weight * l1 + weights.giou_weight * giou
  x, t = inputs["pred_mask_points"], inputs["target_mask_points"]
  prob = formulas.sigmoid(x)
  dot = lambda a: jnp.einsum("bqk,btk->bqt", a, t, precision=formulas.HIGHEST)
  bce, dice = formulas.mask_costs(jnp.sum(formulas.softplus(x), -1, keepdims=True), dot(x),
                                  jnp.sum(prob, -1, keepdims=True), dot(prob), jnp.sum(t, -1)[:, None, :],
                                  x.shape[-1])
  cost = cost + weights.mask_weight * bce + weights.dice_weight * dice
  return formulas.finalize(cost, inputs["target_valid"][:, None, :], weights.pad_cost)


def bench_matching(args, rng):
  import jax
  import torch

  from dinoseg import matching
  from dinoseg.kernels import CostWeights, matching_cost

  weights = CostWeights()
  inputs = matching_inputs(rng, args.match_batch, args.match_queries, args.match_targets, 80,
                           args.match_points)
  jax_inputs = {k: jax.numpy.asarray(v) for k, v in inputs.items()}
  cost_fn = jax.jit(lambda kw: matching_cost(**kw, weights=weights))
  cost = cost_fn(jax_inputs)
  valid = jax_inputs["target_valid"]
  previous_fn = jax.jit(lambda kw: previous_xla_matching_cost(kw, weights))
  difference = float(jax.numpy.max(jax.numpy.abs(previous_fn(jax_inputs) - cost)) / jax.numpy.max(jax.numpy.abs(cost)))
  fns = {"matching cost only (dinoseg XLA)": lambda: jax.block_until_ready(cost_fn(jax_inputs)),
         "matching cost only (dinoseg XLA before issue 19)": lambda: jax.block_until_ready(previous_fn(jax_inputs))}
  if args.match_pallas:
    pallas_fn = jax.jit(lambda kw: matching_cost(**kw, weights=weights, impl="pallas"))
    name = "matching cost only (dinoseg Pallas%s)" % (" interpret" if jax.default_backend() == "cpu" else "")
    fns[name] = lambda: jax.block_until_ready(pallas_fn(jax_inputs))
  for matcher in matching.MATCHERS:
    solve = jax.jit(lambda c, v, m=matcher: matching.assign(c, v, matcher=m).pred_index)
    fns[f"assignment only ({matcher})"] = lambda solve=solve: jax.block_until_ready(solve(cost, valid))
    full = jax.jit(lambda kw, m=matcher: matching.match(**kw, weights=weights, matcher=m).pred_index)
    fns[f"cost + assignment, dinoseg ({matcher})"] = lambda full=full: jax.block_until_ready(full(jax_inputs))
  tensors = {k: torch.tensor(v) for k, v in inputs.items()}

  def reference_procedure():
    with torch.no_grad():
      torch_reference_matching(torch, tensors, weights)

  fns["cost + assignment, reference procedure (PyTorch cost + scipy per image)"] = reference_procedure
  times = _interleaved_times(fns, args.repeats)
  rows = [(name, statistics.median(t), min(t)) for name, t in times.items()]
  reference, reference_min = rows[-1][1], rows[-1][2]
  print(f"\n### Matching (batch {args.match_batch}, {args.match_queries} queries, {args.match_targets} targets, "
        f"80 classes, {args.match_points} points)\n")
  print("| step | median ms | min ms | reference / this (medians) | reference / this (minima) |")
  print("|---|---|---|---|---|")
  for name, t, fastest in rows:
    print(f"| {name} | {t * 1e3:.1f} | {fastest * 1e3:.1f} | {reference / t:.2f}x | {reference_min / fastest:.2f}x |")
  print(f"\nXLA cost now vs before issue 19: max |difference| / max |cost| = {difference:.1e}")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test of the script)")
  parser.add_argument("--only", choices=("msda", "matching"), default=None)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--image-size", type=int, default=1024)
  parser.add_argument("--decoder-queries", type=int, default=400, help="300 queries + 100 denoising queries")
  parser.add_argument("--pallas-max-queries", type=int, default=1 << 30,
                      help="skip the Pallas rows for sides with more queries (interpret mode is slow on CPU)")
  parser.add_argument("--match-batch", type=int, default=16)
  parser.add_argument("--match-queries", type=int, default=300)
  parser.add_argument("--match-targets", type=int, default=100)
  parser.add_argument("--match-points", type=int, default=12544)
  parser.add_argument("--no-match-pallas", dest="match_pallas", action="store_false")
  args = parser.parse_args()
  if args.quick:
    args.image_size, args.decoder_queries, args.repeats = 256, 100, 1
    args.match_batch, args.match_queries, args.match_targets, args.match_points = 2, 50, 10, 256

  import jax
  import torch
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
        f"({jax.default_backend()}: {jax.devices()[0].device_kind}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)")
  print("load average before: %.1f %.1f %.1f" % os.getloadavg())
  rng = np.random.default_rng(0)
  if args.only in (None, "msda"):
    bench_msda(args, rng)
  if args.only in (None, "matching"):
    bench_matching(args, rng)
  print("\nload average after: %.1f %.1f %.1f" % os.getloadavg())


if __name__ == "__main__":
  main()
