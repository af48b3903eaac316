"""Mask DINO R50 train-step and inference time, dinoseg (JAX) beside the reference PyTorch model.

    python scripts/bench_maskdino.py [--size 1024] [--iters 2] [--batch 1] [--num-gt 8] [--threads 1] \
        [--maskdino /work/refs/MaskDINO] [--detectron2 /work/refs/detectron2] [--config.a.b=value ...]

Model: configs/maskdino/coco_instance_r50_3s_d1_2048.py (`--config` to change it) at `--size` x `--size`
(the training resolution is the LSJ crop, 1024 x 1024), float32, batch `--batch`.

Both sides run in one invocation of this script on the same machine, each in its own subprocess (so
that each one's peak memory is its own), one after the other:

1. reference: IDEA-Research/MaskDINO's `MaskDINO` meta-architecture executed from its checkout on
   CPU PyTorch through scripts/maskdino_reference_standin.py (no detectron2 build, no CUDA op: the
   deformable attention takes the reference's own PyTorch fallback), with detectron2's
   `build_resnet_backbone` R50 (FrozenBN) executed from its checkout (scripts/backbone_references.py).
   Its config is built by scripts/make_maskdino_fixtures.py's `build_cfg` from the dinoseg config's
   values. Weights: the reference's own random initialization (`torch.manual_seed(--seed)`); its state
   dict is saved for the other side.
2. dinoseg: the same state dict through the registered converter (`maskdino.convert.to_flax`, the
   path `dinoseg convert` takes), the same images and ground truth.

What is timed (median of `--iters` calls after one untimed warm-up call; wall time, results blocked on):

- train step, reference: `model.train()`; `losses = model(batched_inputs)` (backbone, pixel decoder,
  decoder with denoising queries, Hungarian matching of every output with scipy, the weighted loss
  dictionary of `SetCriterion`), `sum(losses).backward()`, `clip_grad_norm_(all params, 0.01)`
  (detectron2's "full_model" clipping) and `torch.optim.AdamW.step()` (backbone lr x 0.1, weight
  decay 0.05), `zero_grad`. The reference trains with AMP on GPUs; here both sides run float32.
- train step, dinoseg: the trainer's jitted step (`trainer.build_run(config).train_step`: forward,
  loss, backward, clipping, AdamW with the config's parameter groups, donated state) on a global batch
  already on the device.
- inference, reference: `model.eval()`, `torch.no_grad()`, `model([{"image", "height", "width"}])`:
  forward + mask upsampling + instance postprocessing (top-100 over queries x classes) at size x size.
- inference, dinoseg: the trainer's jitted eval step (`MaskDINOTask.predict_fn`: forward + instance
  postprocessing into a size x size output canvas).
- first call: the reference's first (eager) call; dinoseg's `jit(...).lower(...).compile()` time.
- peak RSS: the process's peak resident memory (VmHWM) over the timed calls of each phase (reset
  through /proc/self/clear_refs before the phase), and over the whole process (setup, weight
  conversion, compilation included).

Ground truth: `--num-gt` random ellipses / rectangles per image with random classes
(make_maskdino_fixtures.make_ground_truth); the reference gets them as detectron2 `Instances`
(full-resolution bit masks, xyxy boxes), dinoseg as padded targets of the config's `data.max_instances`
rows (T = 100) with the same full-resolution masks. Static shapes make dinoseg's denoising part
dn_num // T = 1 group of T slots where the reference makes dn_num // num_gt groups of num_gt
(100 vs 96 denoising queries for 8 objects). The closing check line compares the top instance scores
of both sides on the same image (largest absolute difference of the sorted top-20 scores).
"""
import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
DEFAULT_CONFIG = "configs/maskdino/coco_instance_r50_3s_d1_2048.py"


# ----------------------------------------------------------------------------- helpers shared by both sides


def reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS counter (VmHWM) of this process; False where that is not allowed."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def peak_rss_mb() -> float:
  """VmHWM of this process in MiB (ru_maxrss where /proc is unavailable)."""
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_calls(fn, iters: int) -> tuple[float, float, float]:
  """(first call s, median s of `iters` later calls, peak RSS MiB over those calls)."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  reset_peak_rss()
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times), peak_rss_mb()


def make_inputs(size: int, batch: int, num_gt: int, num_classes: int, max_instances: int, seed: int):
  """Images (B, S, S, 3) uint8 and ground truth: per-image lists (reference) and padded arrays (dinoseg)."""
  sys.path.insert(0, str(SCRIPTS))
  import make_maskdino_fixtures as fx  # noqa: PLC0415
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  per_image, padded = fx.make_ground_truth(rng, [(size, size)] * batch, [num_gt] * batch, (size, size), num_classes,
                                           max_instances)
  return images, per_image, padded


def load_dinoseg_config(args, overrides):
  sys.path.insert(0, str(ROOT))
  from dinoseg.config import load_config  # noqa: PLC0415
  extra = [f"data.image_size=({args.size}, {args.size})", f"data.eval_image_size=({args.size}, {args.size})",
           f"test.eval_output_hw=({args.size}, {args.size})", f"data.batch_size={args.batch}", "train.progress=false"]
  config = load_config(args.config, extra + list(overrides))
  # The whole batch runs in one process, like the reference's one process: its denoising groups are formed over
  # the batch (the released configs say 4 images per GPU, which a batch of 1 or 2 cannot divide).
  if not any(o.startswith("model.decoder.dn_group_images=") for o in overrides) and "decoder" in config.model:
    if config.model.decoder.get("dn_group_images") and args.batch % int(config.model.decoder.dn_group_images):
      config.model.decoder.dn_group_images = args.batch
  return config


# ----------------------------------------------------------------------------- reference side


def reference_spec(config) -> dict:
  """The fixture-script spec (make_maskdino_fixtures.build_cfg) of a dinoseg Mask DINO config."""
  m, loss, t = config.model, config.loss, config.test
  enc, dec = m.pixel_decoder, m.decoder
  if enc.conv_dim != dec.hidden_dim or enc.mask_dim != dec.hidden_dim or enc.nheads != dec.nheads:
    raise ValueError("build_cfg uses one width and head count for the pixel decoder and the decoder")
  return dict(channels={}, num_classes=m.num_classes, thing_classes=list(range(m.num_classes)),
              hidden_dim=dec.hidden_dim, num_queries=dec.num_queries, nheads=dec.nheads,
              enc_layers=enc.num_encoder_layers, enc_ffn=enc.dim_feedforward, dec_layers=dec.dec_layers,
              dec_ffn=dec.dim_feedforward, dn_num=dec.dn_num, noise_scale=dec.dn_noise_scale,
              num_points=loss.num_points, oversample_ratio=loss.oversample_ratio,
              importance_sample_ratio=loss.importance_sample_ratio, detections_per_image=t.detections_per_image,
              object_mask_threshold=t.object_mask_threshold, overlap_threshold=t.overlap_threshold,
              pano_temperature=t.pano_temperature, encoder_in=list(enc.transformer_in_features),
              total_levels=enc.total_num_feature_levels, feature_order=enc.feature_order,
              box_init=dec.initialize_box_type, two_stage=dec.two_stage, semantic_ce=m.semantic_ce_loss,
              instance_on=t.instance_on, panoptic_on=t.panoptic_on, semantic_on=t.semantic_on)


def reference_settings(config) -> dict:
  """What the reference side needs from the dinoseg config (written to JSON by the driver, so that the
  reference process imports neither JAX nor dinoseg and its memory is the reference's own)."""
  if config.model.backbone.name != "resnet50":
    raise ValueError(f"the reference side builds detectron2's R50, the config's backbone is "
                     f"{config.model.backbone.name}")
  return {"spec": reference_spec(config), "learning_rate": float(config.optimizer.learning_rate),
          "weight_decay": float(config.optimizer.weight_decay), "clip": float(config.optimizer.clip_grad_norm),
          "num_classes": int(config.model.num_classes), "max_instances": int(config.data.max_instances)}


def run_reference(args, overrides, workdir: pathlib.Path) -> dict:
  """The reference side (module docstring). Beyond the CLI's flags, `args` may carry `device` ("cpu" or
  "cuda"), `amp` (bfloat16 autocast of the forward, as detectron2's AMP trainer; CUDA only) and
  `train_only` (skip the inference phase); scripts/bench_gpu.py sets them."""
  del overrides  # already applied by the driver (reference.json)
  import torch  # noqa: PLC0415
  sys.path.insert(0, str(SCRIPTS))
  import backbone_references as refs  # noqa: PLC0415
  import make_maskdino_fixtures as fx  # noqa: PLC0415
  import maskdino_reference_standin as standin  # noqa: PLC0415

  torch.set_num_threads(args.threads or torch.get_num_threads())
  settings = json.loads((workdir / "reference.json").read_text())
  # detectron2's real ResNet files first, then the stand-in package the MaskDINO modules import from.
  refs.load_detectron2(pathlib.Path(args.detectron2))
  standin.install(args.maskdino)
  ref = standin.import_reference()

  def BenchResNet50(cfg, input_shape):  # noqa: N802  (the registry key is the function name)
    del cfg, input_shape
    return refs.build_reference_resnet(args.detectron2, depth=50, freeze_at=0)

  standin.BACKBONE_REGISTRY.register(BenchResNet50)
  cfg = fx.build_cfg(standin, settings["spec"])
  cfg.MODEL.BACKBONE.NAME = "BenchResNet50"
  torch.manual_seed(args.seed)
  t0 = time.perf_counter()
  model = ref.meta_arch.MaskDINO(cfg)
  build_s = time.perf_counter() - t0
  state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  np.savez(workdir / "weights.npz", **state)
  if getattr(args, "no_reference", False):  # only the shared weights
    return {"side": "reference", "scores": [], "torch": torch.__version__,
            "num_params": int(sum(p.numel() for p in model.parameters()))}
  device = getattr(args, "device", "cpu")
  cuda = device.startswith("cuda")
  amp = bool(getattr(args, "amp", False))
  model.to(device)

  images, per_image, _ = make_inputs(args.size, args.batch, args.num_gt, settings["num_classes"],
                                     settings["max_instances"], args.seed)
  train_inputs = []
  for image, gt in zip(images, per_image):
    # The stand-in's Instances.to() keeps tensors where they are: create them on the device.
    inst = standin.Instances((args.size, args.size),
                             gt_classes=torch.as_tensor(gt["labels"], dtype=torch.int64, device=device),
                             gt_boxes=standin.Boxes(torch.as_tensor(gt["xyxy"], device=device)),
                             gt_masks=torch.as_tensor(gt["masks"], device=device))
    train_inputs.append({"image": torch.from_numpy(image).permute(2, 0, 1).float(), "instances": inst})
  eval_inputs = [{"image": x["image"], "height": args.size, "width": args.size} for x in train_inputs]

  backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
  others = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
  lr = settings["learning_rate"]
  opt = torch.optim.AdamW([{"params": backbone, "lr": lr * 0.1}, {"params": others, "lr": lr}], lr=lr,
                          weight_decay=settings["weight_decay"])
  clip = settings["clip"]
  params = list(model.parameters())

  marks = {}  # --breakdown: time stamps of the train step's phases (reference_breakdown)
  if getattr(args, "breakdown", False):
    _add_breakdown_hooks(torch, model, marks)

  def train_step():
    model.train()
    marks.clear()
    marks["start"] = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=amp):
      losses = model(train_inputs)
    total = sum(losses.values())
    marks["forward_end"] = time.perf_counter()
    total.backward()
    marks["backward_end"] = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    marks["end"] = time.perf_counter()
    return float(total)  # synchronizes with the device

  def infer():
    model.eval()
    with torch.no_grad():
      out = model(eval_inputs)
    if cuda:
      torch.cuda.synchronize()
    return out

  # Inference first (the weights saved above are the ones evaluated), then training.
  first_eval = eval_s = eval_rss = float("nan")
  scores = []
  if not getattr(args, "train_only", False):
    first_eval, eval_s, eval_rss = time_calls(infer, args.iters)
    results = infer()
    scores = [np.sort(r["instances"].scores.float().cpu().numpy())[::-1].tolist() for r in results]
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  first_train, train_s, train_rss = time_calls(train_step, args.iters)
  breakdown = reference_breakdown(marks) if getattr(args, "breakdown", False) else None  # of the last timed call
  device_peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None
  return {"side": "reference", "build_s": build_s, "train_s": train_s, "train_first_s": first_train,
          "train_rss_mb": train_rss, "eval_s": eval_s, "eval_first_s": first_eval, "eval_rss_mb": eval_rss,
          "process_rss_mb": process_peak_mb(), "scores": scores, "threads": torch.get_num_threads(),
          "torch": torch.__version__, "num_params": int(sum(p.numel() for p in params)), "device": device,
          "amp": amp, "train_device_peak_mb": device_peak, "breakdown": breakdown}


PARTS = ("backbone", "pixel_decoder", "predictor")


def _add_breakdown_hooks(torch, model, marks: dict) -> None:
  """Time stamps for `reference_breakdown`: each part's forward start / end (module hooks) and the moment the
  gradients of all its outputs are complete in the backward pass (tensor hooks; the backward pass runs
  criterion -> predictor -> pixel decoder -> backbone, one after the other on the CPU)."""
  def tensors(out):
    if torch.is_tensor(out):
      yield out
    elif isinstance(out, dict):
      for v in out.values():
        yield from tensors(v)
    elif isinstance(out, (list, tuple)):
      for v in out:
        yield from tensors(v)

  def on_grad(name):
    def hook(grad):
      marks[f"{name}.grads_ready"] = time.perf_counter()  # the last output's gradient: the part's backward starts
      return grad
    return hook

  # The pixel decoder is called through its forward_features method (MaskDINOHead), the others through forward:
  # wrap those methods on the instances.
  for name, (module, method) in {"backbone": (model.backbone, "forward"),
                                 "pixel_decoder": (model.sem_seg_head.pixel_decoder, "forward_features"),
                                 "predictor": (model.sem_seg_head.predictor, "forward")}.items():
    def wrapped(*a, _inner=getattr(module, method), _name=name, **k):
      marks[f"{_name}.forward_start"] = time.perf_counter()
      out = _inner(*a, **k)
      marks[f"{_name}.forward_end"] = time.perf_counter()
      if torch.is_grad_enabled():
        for t in tensors(out):
          if t.requires_grad:
            t.register_hook(on_grad(_name))
      return out
    setattr(module, method, wrapped)


def reference_breakdown(marks: dict) -> dict:
  """Seconds per phase of one reference train step from `_add_breakdown_hooks`' time stamps."""
  m = marks
  out = {"forward backbone": m["backbone.forward_end"] - m["backbone.forward_start"],
         "forward pixel_decoder": m["pixel_decoder.forward_end"] - m["pixel_decoder.forward_start"],
         "forward predictor": m["predictor.forward_end"] - m["predictor.forward_start"],
         "forward criterion (matching, losses) and the rest": (m["forward_end"] - m["start"]) - sum(
             m[f"{p}.forward_end"] - m[f"{p}.forward_start"] for p in PARTS),
         "backward criterion": m["predictor.grads_ready"] - m["forward_end"],
         "backward predictor": m["pixel_decoder.grads_ready"] - m["predictor.grads_ready"],
         "backward pixel_decoder": m["backbone.grads_ready"] - m["pixel_decoder.grads_ready"],
         "backward backbone": m["backward_end"] - m["backbone.grads_ready"],
         "clip + AdamW": m["end"] - m["backward_end"]}
  return {k: round(v, 3) for k, v in out.items()}


# ----------------------------------------------------------------------------- dinoseg side


def run_dinoseg(args, overrides, workdir: pathlib.Path) -> dict:
  """The dinoseg side (module docstring). Without `workdir/weights.npz` the state is the trainer's random
  initialisation (`Run.create_state`). `args.train_only` (optional) skips the inference phase; the
  result's `device_peak_mb` is the device allocator's peak (`memory_stats()["peak_bytes_in_use"]`, over
  the whole process: state, compilation scratch and the timed steps; None where the backend has no stats)."""
  import absl.flags  # noqa: PLC0415  (grain reads absl flags)
  if not absl.flags.FLAGS.is_parsed():
    absl.flags.FLAGS.mark_as_parsed()
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from dinoseg.models.maskdino import convert  # noqa: PLC0415
  from dinoseg.train import state as state_lib, trainer  # noqa: PLC0415

  config = load_dinoseg_config(args, overrides)
  t0 = time.perf_counter()
  run = trainer.build_run(config)
  if (workdir / "weights.npz").is_file():
    with np.load(workdir / "weights.npz") as f:
      torch_state = {k: f[k] for k in f.files}
    variables = convert.to_flax(torch_state, config.model)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    state = state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=run.optimizer.tx.init(params),
        rng=jax.random.key_data(jax.random.key(args.seed)), model_state=model_state, ema_params=None,
        nonfinite_total=jnp.zeros((), jnp.int32), nonfinite_streak=jnp.zeros((), jnp.int32))
    state = jax.device_put(state, run.shardings)
    del torch_state, variables
  else:
    state = run.create_state()
    params = state.params
  jax.block_until_ready(state)
  build_s = time.perf_counter() - t0
  train_only = bool(getattr(args, "train_only", False))

  images, _, padded = make_inputs(args.size, args.batch, args.num_gt, config.model.num_classes,
                                  config.data.max_instances, args.seed)
  hw = np.full((args.batch, 2), args.size, np.int32)
  train_batch = run.global_batch({"image": images, "valid_hw": hw, "labels": padded["labels"],
                                  "boxes": padded["boxes"], "valid": padded["valid"], "masks": padded["masks"]})
  eval_batch = run.global_batch({"image": images, "valid_hw": hw, "original_hw": hw,
                                 "image_id": np.arange(args.batch, dtype=np.int64)})

  with run.context():
    eval_compile = eval_s = eval_rss = float("nan")
    scores = []
    if not train_only:
      t0 = time.perf_counter()
      predict = run.predict.lower(state.params, state.model_state, eval_batch).compile()
      eval_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    step = run.train_step.lower(state, train_batch).compile()
    train_compile = time.perf_counter() - t0

    if not train_only:
      def infer():
        return jax.block_until_ready(predict(state.params, state.model_state, eval_batch))

      _, eval_s, eval_rss = time_calls(infer, args.iters)
      out = jax.device_get(infer())
      for b in range(args.batch):
        s = np.asarray(out["inst_scores"][b])[np.asarray(out["inst_valid"][b])]
        scores.append(np.sort(s)[::-1].tolist())

    holder = {"state": state}

    def train_step():
      holder["state"], metrics = step(holder["state"], train_batch)
      return float(jax.block_until_ready(metrics["loss"]))

    _, train_s, train_rss = time_calls(train_step, args.iters)
  stats = jax.devices()[0].memory_stats() or {}
  device_peak = stats["peak_bytes_in_use"] / 2 ** 20 if "peak_bytes_in_use" in stats else None
  return {"side": "dinoseg", "device_peak_mb": device_peak, "compute_dtype": run.settings["compute_dtype"], "build_s": build_s, "train_s": train_s, "train_first_s": train_compile,
          "train_rss_mb": train_rss, "eval_s": eval_s, "eval_first_s": eval_compile, "eval_rss_mb": eval_rss,
          "process_rss_mb": process_peak_mb(), "scores": scores, "backend": jax.default_backend(),
          "jax": jax.__version__, "devices": jax.device_count(),
          "num_params": int(sum(np.size(x) for x in jax.tree.leaves(params)))}


# ----------------------------------------------------------------------------- driver


def child_env(threads: int) -> dict:
  """The environment of a side's process: this checkout first on PYTHONPATH; with `threads`, XLA's CPU pool and
  OpenMP limited to that many threads."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if threads:
    flags = env.get("XLA_FLAGS", "")
    flags += (f" --xla_cpu_multi_thread_eigen={'false' if threads == 1 else 'true'}"
              f" intra_op_parallelism_threads={threads}")
    env["XLA_FLAGS"] = flags.strip()
    env.setdefault("OMP_NUM_THREADS", str(threads))
  return env


def _child(args, overrides, side: str, workdir: pathlib.Path) -> dict:
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--side={side}", f"--workdir={workdir}",
         f"--config={args.config}", f"--size={args.size}", f"--iters={args.iters}", f"--batch={args.batch}",
         f"--num-gt={args.num_gt}", f"--seed={args.seed}", f"--threads={args.threads}",
         f"--maskdino={args.maskdino}", f"--detectron2={args.detectron2}"] + [f"--config.{o}" for o in overrides]
  if args.no_reference:
    cmd.append("--no-reference")
  if args.breakdown:
    cmd.append("--breakdown")
  env = child_env(args.threads)
  print(f"running the {side} side{' (weights only)' if side == 'reference' and args.no_reference else ''} ...",
        file=sys.stderr, flush=True)
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
  if proc.returncode != 0:
    raise RuntimeError(f"the {side} side failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
  lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_MASKDINO ")]
  if not lines:
    raise RuntimeError(f"the {side} side printed no result:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("BENCH_MASKDINO "):])


def _table(rows: list[dict], args) -> str:
  head = ("| side | train step s | inference s | first call s (train / infer) | peak RSS MiB train / infer "
          "| process peak RSS MiB |\n|---|---|---|---|---|---|")
  names = {"dinoseg": "dinoseg (JAX, jit; first call = compile)", "reference": "reference (PyTorch eager)"}
  body = [f"| {names[r['side']]} | {r['train_s']:.2f} | {r['eval_s']:.2f} | {r['train_first_s']:.1f} / "
          f"{r['eval_first_s']:.1f} | {r['train_rss_mb']:.0f} / {r['eval_rss_mb']:.0f} | {r['process_rss_mb']:.0f} |"
          for r in rows]
  by = {r["side"]: r for r in rows}
  if len(by) == 2:
    d, t = by["dinoseg"], by["reference"]
    body.append(f"| reference / dinoseg time | {t['train_s'] / d['train_s']:.2f}x | {t['eval_s'] / d['eval_s']:.2f}x "
                "| | | |")
  return "\n".join([head] + body)


def main(argv=None) -> int:
  sys.path.insert(0, str(ROOT))
  from dinoseg.config import split_config_args  # noqa: PLC0415
  argv, overrides = split_config_args(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"Mask DINO R50 config (default {DEFAULT_CONFIG})")
  parser.add_argument("--size", type=int, default=1024, help="square image size, a multiple of 32 (default 1024)")
  parser.add_argument("--iters", type=int, default=2, help="timed calls per phase after one warm-up (default 2)")
  parser.add_argument("--batch", type=int, default=1, help="images per step (default 1)")
  parser.add_argument("--num-gt", type=int, default=8, help="ground-truth objects per image (default 8)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=1,
                      help="CPU threads of both sides (torch.set_num_threads, XLA's CPU pool); 0: library defaults")
  parser.add_argument("--maskdino", default="/work/refs/MaskDINO", help="checkout of IDEA-Research/MaskDINO")
  parser.add_argument("--detectron2", default="/work/refs/detectron2", help="checkout of facebookresearch/detectron2")
  parser.add_argument("--no-reference", action="store_true", help="time dinoseg only (random weights from the "
                                                                   "reference are still needed: give --maskdino)")
  parser.add_argument("--breakdown", action="store_true",
                      help="also print the reference train step's time per part (forward / backward of the backbone, "
                           "pixel decoder, predictor, criterion); dinoseg's: scripts/profile_maskdino_step.py")
  parser.add_argument("--timeout", type=int, default=3600, help="seconds per side (default 3600)")
  parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
  parser.add_argument("--side", choices=("reference", "dinoseg"), help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.size % 32 or args.size <= 0:
    parser.error("--size must be a positive multiple of 32")
  if args.iters < 1 or args.batch < 1 or args.num_gt < 1:
    parser.error("--iters, --batch and --num-gt must be >= 1")
  if args.side:
    fn = run_reference if args.side == "reference" else run_dinoseg
    print("BENCH_MASKDINO " + json.dumps(fn(args, overrides, pathlib.Path(args.workdir))), flush=True)
    return 0

  with tempfile.TemporaryDirectory(prefix="bench_maskdino_") as tmp:
    workdir = pathlib.Path(tmp)
    settings = reference_settings(load_dinoseg_config(args, overrides))
    (workdir / "reference.json").write_text(json.dumps(settings))
    reference = _child(args, overrides, "reference", workdir)  # also writes the shared weights
    ours = _child(args, overrides, "dinoseg", workdir)
  rows = [ours] if args.no_reference else [ours, reference]
  diffs = [float(np.max(np.abs(np.asarray(a[:20]) - np.asarray(b[:20]))))
           for a, b in zip(ours["scores"], reference["scores"]) if min(len(a), len(b)) >= 20]
  print(f"Mask DINO {args.config} {' '.join('--config.' + o for o in overrides)}".rstrip())
  print(f"{args.size}x{args.size}, batch {args.batch}, {args.num_gt} objects per image, float32, "
        f"{ours['num_params']:,} parameters (reference {reference['num_params']:,}); median of {args.iters} "
        f"call(s) after one warm-up; threads {args.threads or 'default'}")
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"jax {ours['jax']} ({ours['backend']}), torch {reference['torch']}")
  print(_table(rows, args))
  if reference.get("breakdown"):
    total = sum(reference["breakdown"].values())
    print("\nreference train step by part (the last timed call; hooks on its modules):\n\n| part | s | share |\n|---|---|---|")
    for part, sec in reference["breakdown"].items():
      print(f"| {part} | {sec:.2f} | {sec / total:.1%} |")
  if diffs:
    print(f"check: max |top-20 instance scores, dinoseg - reference| = {max(diffs):.2e}")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps({"args": vars(args), "overrides": overrides,
                                                   "rows": [ours, reference]}, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
