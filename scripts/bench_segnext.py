"""SegNext latency: image embedding, per-click prediction and the SAT protocol, dinoseg beside the reference.

Both models get the same random weights (`convert.random_reference_state_dict`), so the script
also reports how far their logits are apart. Timings exclude compilation (reported separately)
and are medians over `--repeats` runs after one warm-up.

- embed: dinoseg `embed_image` (normalize + stretch + ViT) vs reference `BasePredictor.set_image`.
- click: one `predict` with one click and the previous mask (P = 1, the per-click path) vs the
  reference `BasePredictor.predict`.
- SAT (notebooks/eval_sat_latency.ipynb): `set_image` + a grid of `--sat-side`^2 single positive clicks
  in one run, no warm-up for the reference (as the notebook), one prompt at a time on both sides
  ("sat_serial"), and dinoseg with the prompts batched by `--sat-batch` ("sat_batched").

Usage:
  python scripts/bench_segnext.py --reference /tmp/segnext_ref                 # ViT-B sax2 at 1024
  python scripts/bench_segnext.py --fusion-depth 1 --sat-side 16 --no-reference  # GPU, dinoseg only
  python scripts/bench_segnext.py --tiny --reference /tmp/segnext_ref            # quick check

Prints a table (milliseconds) and, with --json, writes the numbers.
"""
import argparse
import importlib.util
import json
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_ms(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(1000 * (time.perf_counter() - start))
  return statistics.median(times)


def _fixture_script():
  spec = importlib.util.spec_from_file_location("make_segnext_fixtures", ROOT / "scripts" / "make_segnext_fixtures.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def bench_dinoseg(arch, heads, freq, image, args, state_dict):
  import jax  # noqa: PLC0415

  from dinoseg.models.segnext import convert  # noqa: PLC0415
  from dinoseg.models.segnext.clicker import Click  # noqa: PLC0415
  from dinoseg.models.segnext.model import SegNext  # noqa: PLC0415
  from dinoseg.models.segnext.predictor import SegNextPredictor, sat_grid_clicks  # noqa: PLC0415
  model = SegNext(image_size=arch.image_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim,
                  depth=arch.depth, num_heads=heads, global_atten_freq=freq, fusion_depth=arch.fusion_depth,
                  neck_dims=arch.neck_dims, head_channels=arch.head_channels, dtype=args.dtype)
  params = jax.device_put(convert.segnext_to_flax(state_dict))
  predictor = SegNextPredictor(model, params, min_points=args.min_points)
  h, w = image.shape[:2]
  click = [Click(True, (h // 2, w // 2), 0)]
  out = {"device": str(jax.devices()[0]), "jax": jax.__version__}

  start = time.perf_counter()
  state = predictor.set_image(image)
  jax.block_until_ready(state.features)
  out["embed_first_ms"] = 1000 * (time.perf_counter() - start)
  out["embed_ms"] = _median_ms(lambda: jax.block_until_ready(predictor.set_image(image).features), args.repeats)

  start = time.perf_counter()
  prob = predictor.predict(state, clicks=click)
  out["click_first_ms"] = 1000 * (time.perf_counter() - start)
  out["click_ms"] = _median_ms(lambda: predictor.predict(state, clicks=click, prev_prob=prob), args.repeats)
  logits = np.log(prob) - np.log1p(-prob)

  grid = sat_grid_clicks(args.sat_side, (h, w), arch.image_size)

  def sat_serial():
    s = predictor.set_image(image)
    return [predictor.predict(s, clicks=c) for c in grid]

  out["sat_serial_ms"] = _median_ms(sat_serial, 1)

  def sat_batched():
    s = predictor.set_image(image)
    probs = []
    for i in range(0, len(grid), args.sat_batch):
      chunk = grid[i:i + args.sat_batch]
      chunk = chunk + [chunk[-1]] * (args.sat_batch - len(chunk))  # one compiled batch size
      probs.append(predictor.predict_batch(s, predictor.build_prompts(chunk)))
    return probs

  sat_batched()  # compile the batched shape
  out["sat_batched_ms"] = _median_ms(sat_batched, 1)
  return out, logits


def bench_reference(reference, arch, heads, freq, image, args, state_dict):
  """The reference BasePredictor's timings; on `args.torch_device` ("cpu" unless set, e.g. "cuda" by
  scripts/bench_gpu.py), synchronized after each timed call."""
  import torch  # noqa: PLC0415
  fixtures = _fixture_script()
  torch.set_num_threads(args.torch_threads or torch.get_num_threads())
  device = getattr(args, "torch_device", "cpu")
  model = fixtures.build_reference_model(pathlib.Path(reference), arch, heads, freq)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  model.eval().to(device)
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
  from isegm.inference.clicker import Clicker  # noqa: PLC0415
  from isegm.inference.predictor import BasePredictor  # noqa: PLC0415
  predictor = BasePredictor(model)
  h, w = image.shape[:2]
  gt = np.zeros((h, w), np.int32)
  gt[h // 2, w // 2] = 1  # the clicker's first click lands on the only object pixel
  out = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
  with torch.no_grad():
    # The SAT notebook measures a single cold run (no warm-up), so it runs first.
    start = time.perf_counter()
    predictor.set_image(image)
    predictor.predict_sat(points_per_side=args.sat_side)
    out["sat_serial_ms"] = 1000 * (time.perf_counter() - start)
    out["embed_ms"] = _median_ms(lambda: (predictor.set_image(image), sync()), args.repeats)
    clicker = Clicker(gt_mask=gt)
    clicker.make_next_click(np.zeros((h, w), bool))
    predictor.set_image(image)
    prob = predictor.predict(clicker)
    out["click_ms"] = _median_ms(lambda: predictor.predict(clicker), args.repeats)
    predictor.set_image(image)
    prob = predictor.predict(clicker)
  logits = np.log(prob) - np.log1p(-prob)
  return out, logits


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reference", type=pathlib.Path, help="uncbiag/SegNext checkout (runs the torch model too)")
  parser.add_argument("--no-reference", action="store_true")
  parser.add_argument("--fusion-depth", type=int, default=2, help="1 = sax1, 2 = sax2")
  parser.add_argument("--tiny", action="store_true", help="the test suite's tiny model (448 px, width 64)")
  parser.add_argument("--image-hw", type=int, nargs=2, default=(480, 854), help="image size (DAVIS: 480 854)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--sat-side", type=int, default=16, help="SAT grid side (the protocol: 16)")
  parser.add_argument("--sat-batch", type=int, default=16, help="prompt sets per batch in sat_batched")
  parser.add_argument("--min-points", type=int, default=24, help="click slots per polarity (padding)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--torch-threads", type=int, default=0)
  parser.add_argument("--json", type=pathlib.Path)
  args = parser.parse_args()

  from dinoseg.models.segnext.convert import SegNextArch, random_reference_state_dict  # noqa: PLC0415
  if args.tiny:
    arch = SegNextArch(image_size=448, embed_dim=64, depth=4, fusion_depth=args.fusion_depth,
                       neck_dims=(16, 32, 48, 64), head_channels=32)
    heads, freq = 4, 2
  else:
    arch, heads, freq = SegNextArch(fusion_depth=args.fusion_depth), 12, 3
  state_dict = random_reference_state_dict(arch, seed=0)
  h, w = args.image_hw
  image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
  results = {"machine": f"{platform.machine()} {platform.processor() or ''} ({platform.node()})".strip(),
             "model": f"{'tiny' if args.tiny else 'ViT-B'} sax{arch.fusion_depth} at {arch.image_size}",
             "image_hw": [h, w], "sat_side": args.sat_side, "dtype": args.dtype}
  results["dinoseg"], logits = bench_dinoseg(arch, heads, freq, image, args, state_dict)
  if args.reference and not args.no_reference:
    results["reference"], ref_logits = bench_reference(args.reference, arch, heads, freq, image, args, state_dict)
    results["max_abs_logit_diff"] = float(np.abs(logits - ref_logits).max())
    results["max_abs_ref_logit"] = float(np.abs(ref_logits).max())

  d, r = results["dinoseg"], results.get("reference", {})
  rows = [("image embedding (set_image)", "embed_ms"), ("one click (predict)", "click_ms"),
          (f"SAT {args.sat_side}x{args.sat_side} serial (embed + clicks)", "sat_serial_ms"),
          (f"SAT {args.sat_side}x{args.sat_side} batched x{args.sat_batch}", "sat_batched_ms")]
  print(f"SegNext {results['model']}, image {h}x{w}, {results['dinoseg']['device']}, {args.dtype}")
  print(f"{'measurement':44s} {'dinoseg ms':>12s} {'reference ms':>13s} {'speed-up':>9s}")
  for label, key in rows:
    ref = r.get(key)
    speed = f"{ref / d[key]:8.2f}x" if ref else ""
    print(f"{label:44s} {d[key]:12.1f} {ref if ref else float('nan'):13.1f} {speed:>9s}")
  print(f"compile + first call: embed {d['embed_first_ms']:.0f} ms, click {d['click_first_ms']:.0f} ms")
  if "max_abs_logit_diff" in results:
    print(f"logits: max |dinoseg - reference| = {results['max_abs_logit_diff']:.2e} "
          f"(max |reference| = {results['max_abs_ref_logit']:.2f})")
  if args.json:
    args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
