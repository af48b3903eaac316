"""Predictor throughput over COCO-like image sizes: `dinoseg predict`'s Mask DINO predictor beside the reference
model run the way detectron2's `DefaultPredictor` runs it (issue 19).

    python scripts/bench_predict.py [--num-images 50] [--threads 1] [--size-scale 1.0] [--no-reference] \
        [--maskdino .refs/MaskDINO] [--detectron2 .refs/detectron2] [--config FILE.py[:variant]] \
        [--json out.json] [--config.a.b=value ...]

Images: `--num-images` synthetic RGB JPEGs (seeded smooth noise with a few filled ellipses and rectangles), their
(height, width) cycling through `COCO_SIZES` (ten frequent COCO val2017 sizes), written once into a temporary
directory that both sides read. `--size-scale s` multiplies every size: the images' and the test resize's
(short edge `test.min_size`, long-edge cap `test.max_size`: 800 / 1333 for the released configs, as the
reference's `INPUT.MIN_SIZE_TEST` / `MAX_SIZE_TEST`), so s = 0.5 is the same benchmark at a quarter of the
pixels.

Both sides run in their own subprocess (each one's peak memory is its own), one after the other, with the
same CPU threads (`--threads`: torch.set_num_threads and XLA's CPU pool, as scripts/bench_maskdino.py):

1. reference (skipped with `--no-reference`): IDEA-Research/MaskDINO's `MaskDINO` meta-architecture from its
   checkout on CPU PyTorch with detectron2's R50 (built as scripts/bench_maskdino.py builds it, from
   `reference_settings` of the dinoseg config), random weights from `torch.manual_seed(--seed)`, saved as a
   `.pth` state dict for the other side. Per image, what `DefaultPredictor.__call__` does: read the file as
   detectron2's `read_image(format="BGR")` does (PIL, EXIF orientation, BGR), flip to RGB (MaskDINO's
   configs say `INPUT.FORMAT: RGB`), `ResizeShortestEdge(min_size, max_size)` (PIL bilinear on uint8), a
   float32 CHW tensor, `model([{"image", "height", "width"}])[0]` under `torch.no_grad()` in eval mode.
2. dinoseg: `dinoseg.load(config, weights.pth)` (the `dinoseg predict --weights` route: the registered
   converter, weights put on the device once) -> `MaskDINOPredictor`; per image what `dinoseg predict` does:
   `predict.read_image(path)`, `predictor.predict(image)` (resize, pad to 32, the jitted forward of that
   padded shape, the jitted postprocessing of that (padded shape, 64-multiple output bucket), results as
   host arrays). `--write-outputs` adds `predictor.write` (overlay PNG, COCO results) to each image, as the
   command does. Without a reference (`--no-reference`), the weights are the config's random initialisation.

Measured per side: two passes over the same files. Pass 1 (end to end, everything included: reading,
preprocessing, forward, postprocessing, and for dinoseg the compilation of each new padded input shape):
images/s and the first image's latency. Pass 2 (steady state: every program already compiled): images/s.
Compiled programs (dinoseg): counted from jax's compile events (`jax.monitoring`, by function name: the
predictor's `forward` and postprocessing `run`), per pass, and from the predictor's own caches (one jitted
forward per padded input shape, one postprocessing per (padded shape, output bucket)); the script checks that
each padded input bucket compiled its forward exactly once and that pass 2 compiled nothing. Peak RSS: the
process's VmHWM over the two passes (reset just before pass 1) and over the whole process. The closing check
compares the sorted top-20 instance scores of both sides on the first `--check-images` images.

The persistent compilation cache is switched off in the dinoseg process (JAX_COMPILATION_CACHE_DIR removed)
so that the first pass pays for every compilation.
"""
import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))
import bench_maskdino  # noqa: E402  (peak-RSS helpers, the reference's spec and its default config)

DEFAULT_CONFIG = bench_maskdino.DEFAULT_CONFIG
# (height, width) of ten frequent COCO val2017 image sizes.
COCO_SIZES = ((480, 640), (427, 640), (640, 480), (375, 500), (640, 427), (424, 640), (612, 612), (333, 500),
              (500, 375), (640, 512))
RESULT_PREFIX = "BENCH_PREDICT "
TOP_SCORES = 20


# ----------------------------------------------------------------------------- images


def scaled(x: int, scale: float) -> int:
  """round(x * scale) (halves up), at least 1."""
  return max(1, int(x * scale + 0.5))


def image_sizes(num_images: int, scale: float) -> list[tuple[int, int]]:
  """(height, width) of each image: COCO_SIZES cycled, each side times `scale`."""
  return [tuple(scaled(v, scale) for v in COCO_SIZES[i % len(COCO_SIZES)]) for i in range(num_images)]


def synthetic_image(hw: tuple[int, int], seed: int) -> np.ndarray:
  """(H, W, 3) uint8: smooth colour noise (a coarse random grid, bicubic-upsampled) with 3-8 filled shapes."""
  from PIL import Image, ImageDraw  # noqa: PLC0415
  h, w = hw
  rng = np.random.default_rng(seed)
  coarse = rng.integers(40, 216, (max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
  pil = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
  draw = ImageDraw.Draw(pil)
  for _ in range(int(rng.integers(3, 9))):
    x0, y0 = float(rng.uniform(0, w * 0.8)), float(rng.uniform(0, h * 0.8))
    x1, y1 = x0 + float(rng.uniform(0.08, 0.5)) * w, y0 + float(rng.uniform(0.08, 0.5)) * h
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
  return np.asarray(pil)


def write_images(directory: pathlib.Path, num_images: int, scale: float, seed: int) -> list[str]:
  """Writes the benchmark's JPEGs (quality 90) into `directory`; returns their paths in order."""
  from PIL import Image  # noqa: PLC0415
  paths = []
  for i, hw in enumerate(image_sizes(num_images, scale)):
    path = directory / f"{i:04d}_{hw[0]}x{hw[1]}.jpg"
    Image.fromarray(synthetic_image(hw, seed * 100_003 + i)).save(path, quality=90)
    paths.append(str(path))
  return paths


# ----------------------------------------------------------------------------- shared by both sides


def run_passes(predict_one, paths: list[str], on_pass_start=None) -> dict:
  """Two passes of `predict_one(path) -> sorted scores` over `paths`, timed per image (wall clock).

  Returns {"pass1_s", "pass2_s": lists of per-image seconds, "scores": each image's scores of pass 1,
  "loop_rss_mb": VmHWM over both passes}."""
  bench_maskdino.reset_peak_rss()
  times, scores = [[], []], []
  for p in range(2):
    if on_pass_start is not None:
      on_pass_start(p)
    for path in paths:
      t0 = time.perf_counter()
      s = predict_one(path)
      times[p].append(time.perf_counter() - t0)
      if p == 0:
        scores.append(s)
  return {"pass1_s": times[0], "pass2_s": times[1], "scores": scores, "loop_rss_mb": bench_maskdino.peak_rss_mb()}


# ----------------------------------------------------------------------------- reference side


def reference_output_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
  """detectron2's ResizeShortestEdge.get_output_shape (data_pipelines.transforms.shortest_edge_size)."""
  sys.path.insert(0, str(ROOT))
  from dinoseg.data_pipelines.transforms import shortest_edge_size  # noqa: PLC0415
  return shortest_edge_size((h, w), short, max_size)


def build_reference_model(job: dict, maskdino: str, detectron2: str, seed: int):
  """The reference MaskDINO (eval mode) with detectron2's R50, random weights from `torch.manual_seed(seed)`."""
  import torch  # noqa: PLC0415
  import backbone_references as refs  # noqa: PLC0415
  import make_maskdino_fixtures as fx  # noqa: PLC0415
  import maskdino_reference_standin as standin  # noqa: PLC0415

  refs.load_detectron2(pathlib.Path(detectron2))
  standin.install(maskdino)
  ref = standin.import_reference()

  def BenchResNet50(cfg, input_shape):  # noqa: N802  (the registry key is the function name)
    del cfg, input_shape
    return refs.build_reference_resnet(detectron2, depth=50, freeze_at=0)

  standin.BACKBONE_REGISTRY.register(BenchResNet50)
  cfg = fx.build_cfg(standin, job["settings"]["spec"])
  cfg.MODEL.BACKBONE.NAME = "BenchResNet50"
  torch.manual_seed(seed)
  return ref.meta_arch.MaskDINO(cfg).eval()


def run_reference(args, workdir: pathlib.Path) -> dict:
  """The reference side (module docstring); writes workdir/weights.pth."""
  import torch  # noqa: PLC0415
  from PIL import Image, ImageOps  # noqa: PLC0415

  torch.set_num_threads(args.threads or torch.get_num_threads())
  job = json.loads((workdir / "job.json").read_text())
  t0 = time.perf_counter()
  model = build_reference_model(job, args.maskdino, args.detectron2, args.seed)
  build_s = time.perf_counter() - t0
  torch.save(model.state_dict(), workdir / "weights.pth")
  short, max_size = job["min_size"], job["max_size"]

  def read_bgr(path):  # detectron2.data.detection_utils.read_image(path, format="BGR")
    with Image.open(path) as im:
      return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))[:, :, ::-1]

  def predict_one(path):  # DefaultPredictor.__call__ with cfg.INPUT.FORMAT == "RGB"
    with torch.no_grad():
      original = read_bgr(path)[:, :, ::-1]
      h, w = original.shape[:2]
      nh, nw = reference_output_shape(h, w, short, max_size)
      resized = np.asarray(Image.fromarray(np.ascontiguousarray(original)).resize((nw, nh), Image.BILINEAR))
      image = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
      out = model([{"image": image, "height": h, "width": w}])[0]
      return np.sort(out["instances"].scores.float().numpy())[::-1][:TOP_SCORES].tolist()

  res = run_passes(predict_one, job["paths"])
  return {"side": "reference", "build_s": build_s, **res, "process_rss_mb": bench_maskdino.process_peak_mb(),
          "threads": torch.get_num_threads(), "torch": torch.__version__,
          "num_params": int(sum(p.numel() for p in model.parameters()))}


# ----------------------------------------------------------------------------- dinoseg side


class CompileCounter:
  """Counts jax's backend compilations (`/jax/core/compile/backend_compile_duration` events) by function name
  and pass."""

  EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    import jax  # noqa: PLC0415
    self.phase = "setup"
    self.events = []  # (phase, function name, seconds)
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event, duration, **kwargs):
    if event == self.EVENT:  # fun_name: "jit(forward)" for a jitted function named forward
      name = str(kwargs.get("fun_name", "?"))
      name = name[4:-1] if name.startswith("jit(") and name.endswith(")") else name
      self.events.append((self.phase, name, float(duration)))

  def names(self, phase: str) -> dict[str, int]:
    out = {}
    for p, n, _ in self.events:
      if p == phase:
        out[n] = out.get(n, 0) + 1
    return out

  def count(self, phase: str, name: str | None = None) -> int:
    return sum(1 for p, n, _ in self.events if p == phase and (name is None or n == name))

  def seconds(self, phase: str) -> float:
    return sum(s for p, _, s in self.events if p == phase)


def run_dinoseg(args, overrides, workdir: pathlib.Path) -> dict:
  """The dinoseg side (module docstring)."""
  import absl.flags  # noqa: PLC0415  (grain, imported by some dinoseg modules, reads absl flags)
  if not absl.flags.FLAGS.is_parsed():
    absl.flags.FLAGS.mark_as_parsed()
  import jax  # noqa: PLC0415

  import dinoseg  # noqa: PLC0415
  from dinoseg import predict as predict_lib  # noqa: PLC0415

  counter = CompileCounter()
  job = json.loads((workdir / "job.json").read_text())
  config = load_config(args, overrides)
  weights = workdir / "weights.pth"
  t0 = time.perf_counter()
  if weights.is_file():
    predictor = dinoseg.load(config, weights)
  else:
    predictor = dinoseg.load(config, allow_random=True)
  jax.block_until_ready(predictor.variables)
  build_s = time.perf_counter() - t0
  if not isinstance(predictor, predict_lib.MaskDINOPredictor):
    raise ValueError(f"the config's predictor is {type(predictor).__name__}, this benchmark times Mask DINO's")
  out_dir = workdir / "outputs"
  out_dir.mkdir(exist_ok=True)

  def predict_one(path):
    image = predict_lib.read_image(path)
    result = predictor.predict(image)
    if args.write_outputs:
      predictor.write(result, image, out_dir, predict_lib.output_name(path))
    return np.sort(result.scores)[::-1][:TOP_SCORES].tolist()

  def on_pass_start(p):
    counter.phase = f"pass{p + 1}"

  res = run_passes(predict_one, job["paths"], on_pass_start)
  if args.write_outputs:
    predictor.finish(out_dir)
  # The predictor's caches: one jitted forward per padded input shape, one postprocessing per (padded shape,
  # output bucket); `_cache_size()` = the executables each one holds (1: compiled once; None where this jax
  # version has no such method, then the compile events alone decide).
  def executables(f):
    size = getattr(f, "_cache_size", None)
    return size() if callable(size) else None

  forwards = {"x".join(map(str, k)): executables(f) for k, f in predictor._forwards.items()}
  post = {"x".join(map(str, k[0])) + "->" + "x".join(map(str, k[1])): executables(f)
          for k, f in predictor._postprocessors.items()}
  images_per_bucket = {}
  for hw in job["sizes"]:
    nh, nw = predict_lib.resize_shortest_edge(hw[0], hw[1], config.test.min_size, config.test.max_size)
    key = f"{-(-nh // 32) * 32}x{-(-nw // 32) * 32}"
    images_per_bucket[key] = images_per_bucket.get(key, 0) + 1
  compiles = {p: {"forward": counter.count(p, "forward"), "postprocess": counter.count(p, "run"),
                  "all": counter.count(p), "seconds": counter.seconds(p), "by_name": counter.names(p)}
              for p in ("setup", "pass1", "pass2")}
  once_per_bucket = (set(forwards) == set(images_per_bucket) and all(v in (1, None) for v in forwards.values())
                     and compiles["pass1"]["forward"] == len(forwards) and compiles["pass2"]["all"] == 0)
  return {"side": "dinoseg", "build_s": build_s, **res, "process_rss_mb": bench_maskdino.process_peak_mb(),
          "forward_programs": forwards, "postprocess_programs": post, "images_per_bucket": images_per_bucket,
          "compiles": compiles, "once_per_bucket": bool(once_per_bucket), "backend": jax.default_backend(),
          "jax": jax.__version__, "weights": "reference" if weights.is_file() else "random init",
          "num_params": int(sum(np.size(x) for x in jax.tree.leaves(predictor.variables.get("params", {}))))}


# ----------------------------------------------------------------------------- driver


def load_config(args, overrides):
  """The dinoseg config with the overrides, its test resize times `--size-scale`."""
  sys.path.insert(0, str(ROOT))
  from dinoseg.config import load_config as load  # noqa: PLC0415
  config = load(args.config, list(overrides))
  if args.size_scale != 1.0:  # existing fields stay writable in a locked ConfigDict
    config.test.min_size = scaled(config.test.min_size, args.size_scale)
    config.test.max_size = scaled(config.test.max_size, args.size_scale)
  return config


def child_env(threads: int) -> dict:
  """bench_maskdino's side environment (checkout on PYTHONPATH, thread settings), without a persistent
  compilation cache."""
  env = bench_maskdino.child_env(threads)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


def _child(args, overrides, side: str, workdir: pathlib.Path) -> dict:
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--side={side}", f"--workdir={workdir}",
         f"--config={args.config}", f"--size-scale={args.size_scale}", f"--seed={args.seed}",
         f"--threads={args.threads}", f"--maskdino={args.maskdino}", f"--detectron2={args.detectron2}"]
  cmd += ["--write-outputs"] if args.write_outputs else []
  cmd += [f"--config.{o}" for o in overrides]
  print(f"running the {side} side ...", file=sys.stderr, flush=True)
  proc = subprocess.run(cmd, env=child_env(args.threads), capture_output=True, text=True, timeout=args.timeout)
  if proc.returncode != 0:
    raise RuntimeError(f"the {side} side failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
  lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
  if not lines:
    raise RuntimeError(f"the {side} side printed no result:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len(RESULT_PREFIX):])


def summarize(row: dict) -> dict:
  """images/s of pass 1 (end to end) and pass 2 (steady), first-image seconds."""
  n = len(row["pass1_s"])
  return {"images": n, "end_to_end_ips": n / sum(row["pass1_s"]), "steady_ips": n / sum(row["pass2_s"]),
          "first_image_s": row["pass1_s"][0]}


def table(rows: list[dict]) -> str:
  head = ("| side | images | images/s end to end (pass 1) | steady images/s (pass 2) | first image s "
          "| programs compiled (forward / postprocessing) | peak RSS MiB (passes / process) |\n"
          "|---|---|---|---|---|---|---|")
  names = {"dinoseg": "dinoseg (`MaskDINOPredictor`, jit)", "reference": "reference (`DefaultPredictor`-style, "
                                                                          "PyTorch eager)"}
  body = []
  for r in rows:
    s = summarize(r)
    programs = (f"{len(r['forward_programs'])} / {len(r['postprocess_programs'])}" if r["side"] == "dinoseg"
                else "none (eager)")
    body.append(f"| {names[r['side']]} | {s['images']} | {s['end_to_end_ips']:.3f} | {s['steady_ips']:.3f} | "
                f"{s['first_image_s']:.1f} | {programs} | {r['loop_rss_mb']:.0f} / {r['process_rss_mb']:.0f} |")
  by = {r["side"]: summarize(r) for r in rows}
  if len(by) == 2:
    d, t = by["dinoseg"], by["reference"]
    body.append(f"| dinoseg / reference images/s | | {d['end_to_end_ips'] / t['end_to_end_ips']:.2f}x | "
                f"{d['steady_ips'] / t['steady_ips']:.2f}x | | | |")
  return "\n".join([head] + body)


def score_differences(ours: dict, reference: dict, num_images: int) -> list[float]:
  """max |sorted top-20 scores, dinoseg - reference| of each of the first `num_images` images."""
  out = []
  for a, b in list(zip(ours["scores"], reference["scores"]))[:num_images]:
    k = min(len(a), len(b), TOP_SCORES)
    out.append(float(np.max(np.abs(np.asarray(a[:k]) - np.asarray(b[:k])))) if k else float("nan"))
  return out


def machine_line() -> str:
  model = "unknown CPU"
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return f"{model}, {os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}"


def load_line() -> str:
  try:
    return "load average %.2f %.2f %.2f" % os.getloadavg()
  except OSError:
    return "load average unavailable"


def main(argv=None) -> int:
  sys.path.insert(0, str(ROOT))
  from dinoseg.config import split_config_args  # noqa: PLC0415
  argv, overrides = split_config_args(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"Mask DINO config (default {DEFAULT_CONFIG})")
  parser.add_argument("--num-images", type=int, default=50, help="images (default 50)")
  parser.add_argument("--size-scale", type=float, default=1.0,
                      help="multiplies the image sizes and the test resize (default 1.0; 0.5: a quarter of the pixels)")
  parser.add_argument("--threads", type=int, default=1,
                      help="CPU threads of both sides (torch.set_num_threads, XLA's CPU pool); 0: library defaults")
  parser.add_argument("--seed", type=int, default=0, help="images and the reference's weights")
  parser.add_argument("--check-images", type=int, default=2, help="images whose top-20 scores are compared")
  parser.add_argument("--maskdino", default=".refs/MaskDINO", help="checkout of IDEA-Research/MaskDINO")
  parser.add_argument("--detectron2", default=".refs/detectron2", help="checkout of facebookresearch/detectron2")
  parser.add_argument("--no-reference", action="store_true",
                      help="dinoseg only, with the config's random initialisation (no torch, no checkouts)")
  parser.add_argument("--write-outputs", action="store_true",
                      help="dinoseg also writes each image's overlay and the COCO results, as `dinoseg predict`")
  parser.add_argument("--timeout", type=int, default=7200, help="seconds per side (default 7200)")
  parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
  parser.add_argument("--side", choices=("reference", "dinoseg"), help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.num_images < 1:
    parser.error("--num-images must be >= 1")
  if not 0 < args.size_scale <= 4:
    parser.error("--size-scale must be in (0, 4]")
  if args.threads < 0 or args.check_images < 0:
    parser.error("--threads and --check-images must be >= 0")
  if args.side:
    workdir = pathlib.Path(args.workdir)
    row = run_reference(args, workdir) if args.side == "reference" else run_dinoseg(args, overrides, workdir)
    print(RESULT_PREFIX + json.dumps(row), flush=True)
    return 0

  config = load_config(args, overrides)
  if config.get("task") != "maskdino":
    parser.error(f"--config: a Mask DINO config is needed (config.task is {config.get('task')!r})")
  load_before = load_line()
  with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
    workdir = pathlib.Path(tmp)
    (workdir / "images").mkdir()
    paths = write_images(workdir / "images", args.num_images, args.size_scale, args.seed)
    job = {"paths": paths, "sizes": image_sizes(args.num_images, args.size_scale),
           "min_size": int(config.test.min_size), "max_size": int(config.test.max_size)}
    if not args.no_reference:
      job["settings"] = bench_maskdino.reference_settings(config)
    (workdir / "job.json").write_text(json.dumps(job))
    rows = [] if args.no_reference else [_child(args, overrides, "reference", workdir)]  # writes weights.pth
    rows.insert(0, _child(args, overrides, "dinoseg", workdir))
  ours = rows[0]
  print(f"Mask DINO {args.config} {' '.join('--config.' + o for o in overrides)}".rstrip())
  print(f"{args.num_images} JPEGs, sizes {sorted(set(map(tuple, job['sizes'])))} cycled; test resize short edge "
        f"{job['min_size']}, max {job['max_size']}; float32; {ours['num_params']:,} parameters; weights: "
        f"{ours['weights']}; threads {args.threads or 'default'}")
  print(f"machine: {machine_line()}; jax {ours['jax']} ({ours['backend']})"
        + (f", torch {rows[1]['torch']}" if len(rows) > 1 else ""))
  print(f"{load_before} before, {load_line()} after")
  print(table(rows))
  c = ours["compiles"]
  print(f"dinoseg padded input buckets (images): {ours['images_per_bucket']}")
  print(f"dinoseg compiled forwards per bucket: {ours['forward_programs']}; postprocessing programs "
        f"(padded -> output bucket): {len(ours['postprocess_programs'])}")
  print(f"dinoseg backend compilations: pass 1 {c['pass1']['all']} ({c['pass1']['forward']} forward, "
        f"{c['pass1']['postprocess']} postprocessing, "
        f"{c['pass1']['all'] - c['pass1']['forward'] - c['pass1']['postprocess']} small eager ops; "
        f"{c['pass1']['seconds']:.1f} s), pass 2 {c['pass2']['all']}, "
        f"setup {c['setup']['all']}")
  print("check: each padded input bucket compiled its forward once, pass 2 compiled nothing: "
        + ("yes" if ours["once_per_bucket"] else "NO"))
  if len(rows) > 1 and args.check_images:
    diffs = score_differences(ours, rows[1], args.check_images)
    print(f"check: max |top-{TOP_SCORES} instance scores, dinoseg - reference| per image = "
          + ", ".join(f"{d:.2e}" for d in diffs))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps({"args": vars(args), "overrides": overrides, "job": job,
                                                   "load_before": load_before, "load_after": load_line(),
                                                   "rows": rows}, indent=1) + "\n")
  return 0 if ours["once_per_bucket"] else 1


if __name__ == "__main__":
  sys.exit(main())
