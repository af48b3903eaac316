"""OV2Seg on the CPU: per-frame inference, the association of a video, memory of a long video; dinoseg beside
the reference in one run.

    python scripts/bench_ov2seg.py [--lvvis /tmp/ref_lvvis] [--threads 1] [--size 480,854] [--frames 100] \
        [--memory-frames 100,500] [--memory-size 240,427] [--sections frame,association,memory] [--smoke]

Three sections (`--sections`), each side in its own subprocess (so that each peak RSS is its own and the
thread settings are in place before JAX / PyTorch start), one after the other:

frame: the R50 model (configs/ov2seg/r50_lvis.py at full size: timm-layout ResNet-50, Mask2Former pixel decoder
  with 6 deformable encoder layers, 6 masked-attention decoder layers, 100 queries, the zero-shot classifier)
  on one frame of `--size` (480 x 854, DAVIS / LV-VIS 480p; zero-padded to 480 x 864 as the predictor and the
  reference's ImageList pad to 32), batch 1, a vocabulary of `--classes` (1196, LV-VIS) random 512-d
  embeddings, float32.
  - reference: haochenheheda/LVVIS's own pixel decoder, decoder and zero-shot classifier run on CPU PyTorch
    through scripts/ov2seg_reference_standin.py (the deformable attention takes the reference's PyTorch
    fallback), behind the timm-layout ResNet-50 of scripts/make_ov2seg_fixtures.py (`timm_resnet_class`,
    written from timm 0.5.4; timm is not installed); normalise, zero-pad, backbone, `forward_features`,
    predictor, as the reference's `run_window_inference` does for a window of one frame. Weights: the
    deterministic random values of scripts/make_ov2seg_fixtures.py (`model_weight`), saved for the other side.
  - dinoseg: the same state dict through the registered converter (`ov2seg.convert.to_flax`), the
    predictor's jitted per-frame function (`predict.frame_predictions`) on the 0-255 canvas with its valid size.
  Median of `--iters` calls after one warm-up call (dinoseg's first call includes its compilation). The
  final predictions of the two are compared (relative max difference: max |dinoseg - reference| / max |ref|).

association: the video post-processing of `--frames` (100) frames on given per-frame outputs (the same arrays
  for both sides, made by `synthetic_video_outputs`: Q = 100 tracks whose query embeddings drift from frame to
  frame and are shuffled among the queries of every frame; C + 1 class logits, objectness, stride-4 mask logits
  of the `--size` canvas).
  - reference: `OV2SegVideo.post_processing` (the host loop: per frame, cosine cost on the CPU, scipy
    `linear_sum_assignment`, alignment of logits / masks / embeddings, memory update) and `instance_inference`
    (top-50, frame blanking, mask scores), executed from the checkout (scripts/ov2seg_association_oracle.py).
  - dinoseg: `video.associate` (one jitted `lax.scan` with the on-device Hungarian), `video.video_instances`
    (association + scoring, jitted), and the predictor's streaming path (`predict.StreamingAssociation`, windows
    of 10 frames, spilled to disk, then `finish`).
  The tracks (the (T, Q) assignment of every frame) of both sides are compared with each other and with the
  generated ones; the instance scores and labels too.

memory: `dinoseg predict`-style inference (`OV2SegVideoPredictor.predict`, then `write`: overlays, GIF,
  results.json) of synthetic frames directories of each count in `--memory-frames` (100 and 500), frames of
  `--memory-size` (240 x 427, test.min_size set to its height so the frames are not upscaled to 480: a short
  run), R50 at full width with random weights (`--memory-config`, `--memory-override` to change); peak RSS (VmHWM)
  of each run, which must not grow with the number of frames.

`--smoke`: tiny sizes everywhere (a tiny ResNet, 10 queries, 2 decoder layers, 64 x 96 frames, 6 frames, the
`:tiny` config for the memory runs), every side in this process: the test of this script.
"""
import argparse
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
DEFAULT_CONFIG = "configs/ov2seg/r50_lvis.py"
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
RESULT_TAG = "BENCH_OV2SEG "
SECTIONS = ("frame", "association", "memory")

# --smoke: a tiny ResNet (the one of make_ov2seg_fixtures' model fixture), the reference head at its fixed
# 256-wide classifier input, 10 queries, 2 decoder layers.
SMOKE_MODEL = dict(stage_blocks=(1, 1, 1, 1), stem_channels=16, bottleneck_channels=8, hidden_dim=256,
                   num_queries=10, nheads=8, dim_feedforward=64, dec_layers=2, enc_layers=1, enc_dim_feedforward=64)


def _sibling(name: str):
  """scripts/<name>.py as a module."""
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


# ----------------------------------------------------------------------------- shared helpers


# The peak-RSS counter of this process: scripts/bench_maskdino.py's.
reset_peak_rss = _sibling("bench_maskdino").reset_peak_rss
peak_rss_mb = _sibling("bench_maskdino").peak_rss_mb


def _status_mb(field: str) -> float:
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1]) / 1024
  return float("nan")


def rss_mb() -> float:
  """VmRSS of this process in MiB."""
  return _status_mb("VmRSS")


def time_calls(fn, iters: int) -> tuple[float, float, list[float], float]:
  """(first call s, median s of `iters` later calls, their times, peak RSS MiB over those calls)."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  reset_peak_rss()
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times), times, peak_rss_mb()


def rel_max_diff(ours: np.ndarray, ref: np.ndarray) -> float:
  """max |ours - ref| / max |ref|."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    raise ValueError(f"shapes differ: {ours.shape} vs {ref.shape}")
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def machine_line() -> str:
  model = "unknown CPU"
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), model)
  except (OSError, subprocess.SubprocessError):
    pass
  return (f"machine: {model}, {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def thread_env(threads: int) -> dict:
  """Environment of a child with `threads` CPU threads for XLA and PyTorch (0: library defaults)."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if threads:
    flags = env.get("XLA_FLAGS", "")
    flags += (f" --xla_cpu_multi_thread_eigen={'false' if threads == 1 else 'true'}"
              f" intra_op_parallelism_threads={threads}")
    env["XLA_FLAGS"] = flags.strip()
    env["OMP_NUM_THREADS"] = str(threads)
  return env


def parse_hw(text: str) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in str(text).split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected H,W (e.g. 480,854), got {text!r}") from None
  if h < 8 or w < 8:
    raise argparse.ArgumentTypeError(f"H and W must be >= 8, got {text!r}")
  return h, w


def parse_counts(text: str) -> tuple[int, ...]:
  try:
    counts = tuple(int(v) for v in str(text).split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated frame counts, got {text!r}") from None
  if not counts or min(counts) < 1:
    raise argparse.ArgumentTypeError(f"frame counts must be >= 1, got {text!r}")
  return counts


def padded(hw: tuple[int, int], divisor: int = 32) -> tuple[int, int]:
  return tuple(-(-int(v) // divisor) * divisor for v in hw)


# ----------------------------------------------------------------------------- the model on both sides


def model_config(args):
  """The dinoseg model config (`config.model` of --config; in --smoke the SMOKE_MODEL sizes)."""
  from dinoseg.config import load_config  # noqa: PLC0415
  cfg = load_config(args.config).model
  if args.smoke:
    s = SMOKE_MODEL
    cfg.backbone.kwargs = dict(stage_blocks=s["stage_blocks"], stem_channels=s["stem_channels"],
                               res2_channels=4 * s["bottleneck_channels"], bottleneck_channels=s["bottleneck_channels"])
    p, d = cfg.pixel_decoder, cfg.decoder
    p.conv_dim = p.mask_dim = d.hidden_dim = s["hidden_dim"]
    p.num_encoder_layers, p.dim_feedforward = s["enc_layers"], s["enc_dim_feedforward"]
    d.num_queries, d.nheads, d.dim_feedforward, d.dec_layers = (s["num_queries"], s["nheads"], s["dim_feedforward"],
                                                                s["dec_layers"])
  cfg.num_classes = args.classes
  return cfg


def reference_spec(cfg, seed: int) -> dict:
  """What scripts/make_ov2seg_fixtures.py's `build_head` / `timm_resnet_class` need, from the dinoseg config."""
  p, d, c = cfg.pixel_decoder, cfg.decoder, cfg.classifier
  if cfg.backbone.name != "resnet50":
    raise ValueError(f"the reference side builds a timm-layout ResNet-50; the config's backbone is {cfg.backbone.name}")
  if p.conv_dim != d.hidden_dim or p.mask_dim != d.hidden_dim or p.nheads != d.nheads:
    raise ValueError("build_head uses one width and head count for the pixel decoder and the decoder")
  if d.hidden_dim != 256 or c.embed_dim != 512:
    raise ValueError("the reference's ZeroShotClassifier takes a 256-wide input and 512-d class embeddings")
  kw = dict(cfg.backbone.get("kwargs") or {})
  blocks = tuple(kw.get("stage_blocks", (3, 4, 6, 3)))
  stem = int(kw.get("stem_channels", 64))
  width = int(kw.get("bottleneck_channels", 64))
  planes = tuple(width * 2 ** i for i in range(4))
  if int(kw.get("res2_channels", 4 * width)) != 4 * width:
    raise ValueError("the timm ResNet's res2 width is 4 x its bottleneck width")
  return dict(stem_width=stem, planes=planes, blocks=blocks,
              channels=dict(zip(("res2", "res3", "res4", "res5"), (4 * w for w in planes))),
              hidden_dim=d.hidden_dim, num_queries=d.num_queries, nheads=d.nheads, dim_feedforward=d.dim_feedforward,
              dec_layers=d.dec_layers, enc_layers=p.num_encoder_layers, enc_dim_feedforward=p.dim_feedforward,
              embed_dim=c.embed_dim, temperature=c.temperature, num_classes=cfg.num_classes, seed=seed)


def vocabulary(num_classes: int, dim: int, seed: int) -> np.ndarray:
  """(C, E) random class embeddings (unit rows)."""
  emb = np.random.default_rng([seed, 17]).standard_normal((num_classes, dim)).astype(np.float32)
  return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def synthetic_frame(hw: tuple[int, int], seed: int) -> np.ndarray:
  """(H, W, 3) float32 0-255: smooth colour ramps + noise (what a frame's statistics look like to a network)."""
  rng = np.random.default_rng([seed, 5])
  h, w = hw
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  base = np.stack([127 + 100 * np.sin(x / 37.0 + c) * np.cos(y / 23.0 - c) for c in range(3)], -1)
  return np.clip(base + 20 * rng.standard_normal((h, w, 3)), 0, 255).astype(np.float32)


def run_frame_reference(args, workdir: pathlib.Path) -> dict:
  """The reference side of the `frame` section (module docstring)."""
  import torch  # noqa: PLC0415
  sys.path.insert(0, str(SCRIPTS))
  fx = _sibling("make_ov2seg_fixtures")
  standin = _sibling("ov2seg_reference_standin")
  if args.threads:
    torch.set_num_threads(args.threads)
  spec = json.loads((workdir / "reference_spec.json").read_text())
  standin.install(args.lvvis)
  emb = vocabulary(spec["num_classes"], spec["embed_dim"], spec["seed"])
  clip_path = workdir / "vocabulary.npy"
  np.save(clip_path, emb)
  t0 = time.perf_counter()
  backbone = fx.timm_resnet_class(torch)(spec["stem_width"], spec["planes"], spec["blocks"])
  head, head_keys = fx.build_head(standin, spec, torch, str(clip_path))
  with torch.no_grad():
    for k, v in backbone.state_dict().items():
      v.copy_(torch.from_numpy(fx.model_weight("backbone.base." + k, tuple(v.shape), spec["seed"])))
  backbone.eval()
  head.eval()
  build_s = time.perf_counter() - t0
  state = {"backbone.base." + k: v.numpy().copy() for k, v in backbone.state_dict().items()}
  head_state = head.state_dict()
  state.update({k: head_state[k[len("sem_seg_head."):]].numpy().copy() for k, _ in head_keys})
  np.savez(workdir / "weights.npz", **state)
  num_weights = int(sum(v.size for v in state.values()))  # parameters + FrozenBN buffers, zs_weight excluded

  image = torch.from_numpy(synthetic_frame(args.size, args.seed)).permute(2, 0, 1)
  hp, wp = padded(args.size)
  mean, std = torch.tensor(PIXEL_MEAN)[:, None, None], torch.tensor(PIXEL_STD)[:, None, None]

  def forward():
    with torch.no_grad():
      canvas = torch.zeros((1, 3, hp, wp))  # normalise, then zero-pad (detectron2's ImageList.from_tensors)
      canvas[0, :, :args.size[0], :args.size[1]] = (image - mean) / std
      mask_features, _, multi_scale = head.pixel_decoder.forward_features(backbone(canvas))
      return head.predictor(multi_scale, mask_features, None)

  first, median, times, rss = time_calls(forward, args.iters)
  out = forward()
  np.savez(workdir / "frame_reference.npz", logits=out["pred_logits"].numpy(),
           objectness=out["pred_object_logits"].numpy(), masks=out["pred_masks"].numpy(),
           embeddings=out["pred_embds"].numpy())
  return {"side": "reference", "first_s": first, "median_s": median, "times_s": times, "rss_mb": rss,
          "process_rss_mb": peak_rss_mb(), "build_s": build_s, "threads": torch.get_num_threads(),
          "torch": torch.__version__, "num_weights": num_weights}


def run_frame_dinoseg(args, workdir: pathlib.Path) -> dict:
  """The dinoseg side of the `frame` section (module docstring)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from dinoseg.models.ov2seg import convert  # noqa: PLC0415
  from dinoseg.models.ov2seg.model import build_model  # noqa: PLC0415
  from dinoseg.models.ov2seg.predict import frame_predictions  # noqa: PLC0415
  cfg = model_config(args)
  spec = json.loads((workdir / "reference_spec.json").read_text())
  t0 = time.perf_counter()
  with np.load(workdir / "weights.npz") as f:
    state = {k: f[k] for k in f.files}
  variables = jax.device_put(convert.to_flax({"model": state}, cfg))
  del state
  model = build_model(cfg)
  jax.block_until_ready(variables)
  build_s = time.perf_counter() - t0
  emb = jnp.asarray(vocabulary(spec["num_classes"], spec["embed_dim"], spec["seed"]))
  hp, wp = padded(args.size)
  canvas = np.zeros((1, hp, wp, 3), np.float32)
  canvas[0, :args.size[0], :args.size[1]] = synthetic_frame(args.size, args.seed)
  canvas = jnp.asarray(canvas)
  valid_hw = jnp.asarray([args.size], jnp.int32)

  def forward():
    return jax.block_until_ready(frame_predictions(model, variables, canvas, emb, valid_hw))

  first, median, times, rss = time_calls(forward, args.iters)
  out = jax.device_get(forward())
  np.savez(workdir / "frame_dinoseg.npz", **{k: np.asarray(v) for k, v in out.items()})
  return {"side": "dinoseg", "first_s": first, "median_s": median, "times_s": times, "rss_mb": rss,
          "process_rss_mb": peak_rss_mb(), "build_s": build_s, "jax": jax.__version__,
          "backend": jax.default_backend(),
          "num_weights": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variables)))}


def frame_parity(workdir: pathlib.Path) -> dict:
  """Relative max differences of the final predictions (dinoseg vs reference)."""
  with np.load(workdir / "frame_reference.npz") as r, np.load(workdir / "frame_dinoseg.npz") as d:
    return {k: rel_max_diff(d[k], r[k]) for k in ("logits", "objectness", "masks", "embeddings")}


# ----------------------------------------------------------------------------- association


def synthetic_video_outputs(num_frames: int, num_queries: int, num_classes: int, embed_dim: int,
                            mask_hw: tuple[int, int], seed: int) -> dict:
  """Per-frame outputs of a video whose Q tracks are shuffled among the queries of every frame.

  Track j's embedding drifts (a random walk, step 0.15 per coordinate and frame, on N(0, 1) rows) and frame t
  puts it at query perm[t, j] (perm[0] = arange); its class / objectness logits are a per-track value plus
  per-frame noise. Returns {"embeddings" (T, Q, D), "logits" (T, Q, C+1), "objectness" (T, Q, 2), "masks"
  (T, Q, h, w) N(0, 1) float32, "perm" (T, Q) int64 (the generated tracks: the frame-t query of track j)}.
  """
  rng = np.random.default_rng([seed, 23])
  t, q = num_frames, num_queries
  track = rng.standard_normal((q, embed_dim)).astype(np.float32)
  track_logits = (rng.standard_normal((q, num_classes + 1)) * 1.5 - 4.0).astype(np.float32)
  track_object = (rng.standard_normal((q, 2)) * 1.5).astype(np.float32)
  emb = np.empty((t, q, embed_dim), np.float32)
  logits = np.empty((t, q, num_classes + 1), np.float32)
  objectness = np.empty((t, q, 2), np.float32)
  perm = np.empty((t, q), np.int64)
  for f in range(t):
    if f:
      track = track + np.float32(0.15) * rng.standard_normal(track.shape).astype(np.float32)
    p = np.arange(q) if f == 0 else rng.permutation(q)
    perm[f] = p
    emb[f, p] = track
    logits[f, p] = track_logits + 0.5 * rng.standard_normal(track_logits.shape).astype(np.float32)
    objectness[f, p] = track_object + 0.5 * rng.standard_normal(track_object.shape).astype(np.float32)
  masks = rng.standard_normal((t, q, *mask_hw), dtype=np.float32)
  return {"embeddings": emb, "logits": logits, "objectness": objectness, "masks": masks, "perm": perm}


def association_inputs(args) -> dict:
  hp, wp = padded(args.size)
  return synthetic_video_outputs(args.frames, args.queries, args.classes, args.embed_dim, (hp // 4, wp // 4),
                                 args.seed)


def recover_perm(aligned_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
  """(T, Q) frame query of each track from aligned per-frame logits (Q tracks, T, C+1) and the raw (T, Q, C+1)."""
  t, q = logits.shape[:2]
  perm = np.zeros((t, q), np.int64)
  for f in range(t):
    eq = np.all(aligned_logits[:, f][:, None, :] == logits[f][None, :, :], axis=-1)
    if not (np.all(eq.sum(1) == 1) and np.all(eq.sum(0) == 1)):
      raise RuntimeError(f"frame {f}: the aligned logits are not a permutation of the frame's logits")
    perm[f] = eq.argmax(1)
  return perm


def run_association_reference(args, workdir: pathlib.Path) -> dict:
  """The reference side of the `association` section: post_processing and instance_inference of
  ov2seg_model_video.py, executed from the checkout."""
  import torch  # noqa: PLC0415
  oracle = _sibling("ov2seg_association_oracle")
  if args.threads:
    torch.set_num_threads(args.threads)
  ref = oracle.load_reference(args.lvvis)
  data = association_inputs(args)
  t, q, c1 = data["logits"].shape
  model = ref.video.OV2SegVideo.__new__(ref.video.OV2SegVideo)
  torch.nn.Module.__init__(model)
  model.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), False)
  model.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), False)
  model.num_queries = q
  model.sem_seg_head = type("Head", (), {"num_classes": c1 - 1})()
  model.test_topk_per_image = min(args.detections, q * (c1 - 1))
  model.eval()
  outputs = {"pred_logits": torch.from_numpy(data["logits"]), "pred_object_logits": torch.from_numpy(data["objectness"]),
             "pred_masks": torch.from_numpy(data["masks"]), "pred_embds": torch.from_numpy(data["embeddings"])}
  image_size = padded(args.size)  # unused by instance_inference beyond the Instances record

  def associate():
    with torch.no_grad():
      return model.post_processing(dict(outputs))

  def associate_and_score():
    with torch.no_grad():
      post = model.post_processing(dict(outputs))
      return post, model.instance_inference(post["pred_logits"][0], post["pred_obj_logits"][0],
                                            post["pred_masks"][0], image_size, post["pred_per_frame_logits"],
                                            post["pred_per_frame_obj_logits"])

  assoc_first, assoc_s, _, assoc_rss = time_calls(associate, args.iters)
  full_first, full_s, _, full_rss = time_calls(associate_and_score, args.iters)
  post, inst = associate_and_score()
  perm = recover_perm(post["pred_per_frame_logits"].numpy(), data["logits"])
  np.savez(workdir / "association_reference.npz", perm=perm, scores=inst.scores.numpy(),
           labels=inst.pred_classes.numpy(), class_logits=post["pred_logits"][0].numpy())
  return {"side": "reference", "associate_s": assoc_s, "associate_first_s": assoc_first, "full_s": full_s,
          "full_first_s": full_first, "rss_mb": max(assoc_rss, full_rss), "process_rss_mb": peak_rss_mb(),
          "threads": torch.get_num_threads()}


def run_association_dinoseg(args, workdir: pathlib.Path) -> dict:
  """The dinoseg side of the `association` section (module docstring)."""
  import jax  # noqa: PLC0415

  from dinoseg.models.ov2seg import predict as predict_lib  # noqa: PLC0415
  from dinoseg.models.ov2seg import video  # noqa: PLC0415
  data = association_inputs(args)
  t, q, c1 = data["logits"].shape
  settings = video.VideoInferenceSettings(detections_per_image=min(args.detections, q * (c1 - 1)))
  device = {k: jax.device_put(v) for k, v in data.items() if k != "perm"}
  associate_fn = jax.jit(lambda e, lg, ob: video.associate(e, lg, ob))
  instances_fn = jax.jit(lambda lg, ob, m, e: video.video_instances(lg, ob, m, e, settings=settings))

  def associate():
    return jax.block_until_ready(associate_fn(device["embeddings"], device["logits"], device["objectness"]))

  def associate_and_score():
    return jax.block_until_ready(instances_fn(device["logits"], device["objectness"], device["masks"],
                                              device["embeddings"]))

  window = args.window
  windows = []
  for start in range(0, t, window):  # the predictor's windows: the last one padded to the full length
    n = min(window, t - start)
    w = {}
    for k in ("embeddings", "logits", "objectness", "masks"):
      x = data[k][start:start + n]
      if n < window:
        x = np.concatenate([x, np.repeat(x[-1:], window - n, axis=0)])
      w[k] = jax.device_put(x)
    windows.append((w, n))

  def streaming():
    with predict_lib.StreamingAssociation(settings) as assoc:
      for w, n in windows:
        assoc.add(w, n)
      assoc.finish()
      return assoc.perm, assoc.scores

  assoc_first, assoc_s, _, assoc_rss = time_calls(associate, args.iters)
  full_first, full_s, _, full_rss = time_calls(associate_and_score, args.iters)
  stream_first, stream_s, _, stream_rss = time_calls(streaming, args.iters)
  inst = jax.device_get(associate_and_score())
  stream_perm, stream_scores = streaming()
  np.savez(workdir / "association_dinoseg.npz", perm=np.asarray(inst.association.perm),
           scores=np.asarray(inst.scores), labels=np.asarray(inst.labels),
           class_logits=np.asarray(inst.association.class_logits), stream_perm=np.asarray(stream_perm),
           stream_scores=np.asarray(stream_scores), generated_perm=data["perm"])
  return {"side": "dinoseg", "associate_s": assoc_s, "associate_first_s": assoc_first, "full_s": full_s,
          "full_first_s": full_first, "stream_s": stream_s, "stream_first_s": stream_first,
          "rss_mb": max(assoc_rss, full_rss, stream_rss), "process_rss_mb": peak_rss_mb(),
          "jax": jax.__version__, "backend": jax.default_backend()}


def association_checks(workdir: pathlib.Path) -> dict:
  """Tracks and instances of both sides compared."""
  with np.load(workdir / "association_reference.npz") as r, np.load(workdir / "association_dinoseg.npz") as d:
    r, d = {k: r[k] for k in r.files}, {k: d[k] for k in d.files}
  order_r, order_d = np.argsort(-r["scores"], kind="stable"), np.argsort(-d["scores"], kind="stable")
  return {"frames": int(d["perm"].shape[0]), "queries": int(d["perm"].shape[1]),
          "perm_equal": bool(np.array_equal(r["perm"], d["perm"])),
          "perm_agree": float(np.mean(r["perm"] == d["perm"])),
          "stream_perm_equal": bool(np.array_equal(d["stream_perm"], d["perm"])),
          "generated_equal": bool(np.array_equal(d["perm"], d["generated_perm"])),
          "labels_equal": bool(np.array_equal(r["labels"][order_r], d["labels"][order_d])),
          "score_max_diff": float(np.max(np.abs(r["scores"][order_r] - d["scores"][order_d]))),
          "stream_score_max_diff": float(np.max(np.abs(np.sort(d["stream_scores"]) - np.sort(d["scores"])))),
          "class_logits_rel_diff": rel_max_diff(d["class_logits"], r["class_logits"])}


# ----------------------------------------------------------------------------- memory of a long video


def write_frames(directory: pathlib.Path, count: int, hw: tuple[int, int], seed: int) -> None:
  """`count` JPEG frames of size hw: a colour ramp with three moving rectangles (frame_00000.jpg, ...)."""
  from PIL import Image  # noqa: PLC0415
  directory.mkdir(parents=True, exist_ok=True)
  h, w = hw
  rng = np.random.default_rng([seed, 31])
  base = synthetic_frame(hw, seed).astype(np.uint8)
  boxes = rng.uniform(0.1, 0.6, (3, 2)) * np.asarray([h, w])
  speed = rng.uniform(-2, 2, (3, 2))
  colors = rng.integers(0, 256, (3, 3))
  for f in range(count):
    frame = base.copy()
    for (y, x), (vy, vx), color in zip(boxes, speed, colors):
      y0, x0 = int((y + vy * f) % (h * 0.7)), int((x + vx * f) % (w * 0.7))
      frame[y0:y0 + h // 4, x0:x0 + w // 5] = color
    Image.fromarray(frame).save(directory / f"frame_{f:05d}.jpg", quality=90)


def run_memory(args, workdir: pathlib.Path, num_frames: int) -> dict:
  """`dinoseg predict`-style inference of the frames directory workdir/frames_<num_frames> (module docstring)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from dinoseg.config import load_config  # noqa: PLC0415
  from dinoseg.models.ov2seg.model import build_model  # noqa: PLC0415
  from dinoseg.models.ov2seg.predict import OV2SegVideoPredictor  # noqa: PLC0415
  config = load_config(args.memory_config, list(args.memory_override or ()))
  config.test.min_size = int(min(args.memory_size))
  model = build_model(config.model)
  dim = int(config.model.classifier.embed_dim)
  vocab_file = workdir / f"memory_vocabulary_{dim}.npy"
  if not vocab_file.is_file():
    np.save(vocab_file, vocabulary(args.classes, dim, args.seed))
  variables = jax.jit(model.init)(jax.random.key(args.seed), jnp.zeros((1, 64, 64, 3)), jnp.ones((3, dim)))
  predictor = OV2SegVideoPredictor(config, variables, vocabulary=str(vocab_file))
  frames = workdir / f"frames_{num_frames}"
  out_dir = workdir / f"predict_out_{num_frames}"
  samples = []
  stop = threading.Event()

  def sample():
    t0 = time.perf_counter()
    while not stop.wait(0.2):
      samples.append((time.perf_counter() - t0, rss_mb()))

  reset_peak_rss()
  start_rss = rss_mb()
  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  t0 = time.perf_counter()
  result = predictor.predict(str(frames), video_id=1)
  predict_s = time.perf_counter() - t0
  predict_peak = peak_rss_mb()
  t0 = time.perf_counter()
  predictor.write(result, str(frames), out_dir, score_threshold=0.0)
  predictor.finish(out_dir)
  write_s = time.perf_counter() - t0
  stop.set()
  sampler.join()
  if len(result.frame_names) != num_frames:
    raise RuntimeError(f"predicted {len(result.frame_names)} frames, expected {num_frames}")
  quarter = [max((r for s, r in samples if s <= q * (predict_s + write_s)), default=float("nan"))
             for q in (0.25, 0.5, 0.75, 1.0)]
  return {"frames": num_frames, "size": list(args.memory_size), "predict_s": predict_s, "write_s": write_s,
          "start_rss_mb": start_rss, "predict_peak_mb": predict_peak, "peak_mb": peak_rss_mb(),
          "rss_by_quarter_mb": quarter, "instances": len(result), "config": args.memory_config,
          "overrides": list(args.memory_override or ()), "queries": int(config.model.decoder.num_queries),
          "window": int(predictor.settings.window_size)}


# ----------------------------------------------------------------------------- driver


SIDES = {"frame_reference": run_frame_reference, "frame_dinoseg": run_frame_dinoseg,
         "association_reference": run_association_reference, "association_dinoseg": run_association_dinoseg}


def _forwarded(args) -> list[str]:
  return [f"--lvvis={args.lvvis}", f"--config={args.config}", f"--size={args.size[0]},{args.size[1]}",
          f"--frames={args.frames}", f"--queries={args.queries}", f"--classes={args.classes}",
          f"--embed-dim={args.embed_dim}", f"--detections={args.detections}", f"--window={args.window}",
          f"--iters={args.iters}", f"--seed={args.seed}", f"--threads={args.threads}",
          f"--memory-size={args.memory_size[0]},{args.memory_size[1]}", f"--memory-config={args.memory_config}"] + [
              f"--memory-override={o}" for o in (args.memory_override or ())] + (["--smoke"] if args.smoke else [])


def run_side(args, side: str, workdir: pathlib.Path, num_frames: int | None = None) -> dict:
  """One side in a subprocess (or in this process with --in-process / --smoke)."""
  print(f"running {side}{'' if num_frames is None else f' ({num_frames} frames)'} ...", file=sys.stderr, flush=True)
  if args.in_process:
    return run_memory(args, workdir, num_frames) if side == "memory" else SIDES[side](args, workdir)
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--side={side}", f"--workdir={workdir}"]
  cmd += _forwarded(args) + ([f"--memory-frames={num_frames}"] if num_frames is not None else [])
  proc = subprocess.run(cmd, env=thread_env(args.threads), capture_output=True, text=True, timeout=args.timeout)
  if proc.returncode != 0:
    raise RuntimeError(f"{side} failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
  lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
  if not lines:
    raise RuntimeError(f"{side} printed no result:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len(RESULT_TAG):])


def frame_report(rows: dict, parity: dict, args) -> str:
  hp, wp = padded(args.size)
  d, r = rows["dinoseg"], rows["reference"]
  lines = [f"### Per-frame inference: {args.size[0]}x{args.size[1]} frame on a {hp}x{wp} canvas, batch 1, "
           f"{args.classes} classes, float32; median of {args.iters} call(s) after a warm-up",
           "", "| side | ms / frame | first call s | peak RSS MiB (timed calls) | process peak RSS MiB |",
           "|---|---|---|---|---|"]
  for name, x in (("dinoseg (jit; first call = compile + run)", d), ("reference (PyTorch eager)", r)):
    lines.append(f"| {name} | {1e3 * x['median_s']:.1f} | {x['first_s']:.1f} | {x['rss_mb']:.0f} | "
                 f"{x['process_rss_mb']:.0f} |")
  lines.append(f"| reference / dinoseg | {r['median_s'] / d['median_s']:.2f}x | | | |")
  lines.append("")
  lines.append("parity (max |dinoseg - reference| / max |reference|): "
               + ", ".join(f"{k} {v:.1e}" for k, v in parity.items()))
  if "num_weights" in d and "num_weights" in r:
    lines.append(f"weights: {d['num_weights']:,} values (dinoseg variables), {r['num_weights']:,} (reference state "
                 "dict without zs_weight)")
  return "\n".join(lines)


def association_report(rows: dict, checks: dict, args) -> str:
  d, r = rows["dinoseg"], rows["reference"]
  hp, wp = padded(args.size)
  lines = [f"### Association of a {args.frames}-frame video: {args.queries} queries, {args.classes} classes, "
           f"{args.embed_dim}-d embeddings, masks {hp // 4}x{wp // 4}; median of {args.iters} call(s) after a "
           "warm-up", "", "| step | dinoseg ms | reference ms | reference / dinoseg |", "|---|---|---|---|",
           f"| association (dinoseg `video.associate`, jit; reference `post_processing`, scipy per frame) | "
           f"{1e3 * d['associate_s']:.1f} | {1e3 * r['associate_s']:.1f} | {r['associate_s'] / d['associate_s']:.2f}x |",
           f"| association + scoring (`video_instances`; `post_processing` + `instance_inference`) | "
           f"{1e3 * d['full_s']:.1f} | {1e3 * r['full_s']:.1f} | {r['full_s'] / d['full_s']:.2f}x |",
           f"| predictor path: `StreamingAssociation`, windows of {args.window}, + `finish` | {1e3 * d['stream_s']:.1f} "
           f"| – | {r['full_s'] / d['stream_s']:.2f}x vs association + scoring |",
           "", f"first calls (dinoseg: compile + run): associate {d['associate_first_s']:.2f} s, video_instances "
           f"{d['full_first_s']:.2f} s, streaming {d['stream_first_s']:.2f} s; reference {r['associate_first_s']:.2f}"
           f" / {r['full_first_s']:.2f} s. Peak RSS over the timed calls: dinoseg {d['rss_mb']:.0f} MiB, reference "
           f"{r['rss_mb']:.0f} MiB.",
           f"check: tracks ({checks['frames']} x {checks['queries']} assignments) "
           f"{'identical' if checks['perm_equal'] else 'DIFFER (%.4f agree)' % checks['perm_agree']} on both sides"
           f"{' and equal to the generated ones' if checks['generated_equal'] else ' (the generated ones differ)'}; "
           f"streaming tracks {'identical' if checks['stream_perm_equal'] else 'DIFFER'}; instance labels "
           f"{'identical' if checks['labels_equal'] else 'DIFFER'}; max |score diff| {checks['score_max_diff']:.1e} "
           f"(streaming {checks['stream_score_max_diff']:.1e}); video class logits rel. diff "
           f"{checks['class_logits_rel_diff']:.1e}"]
  return "\n".join(lines)


def memory_report(rows: list[dict]) -> str:
  overrides = rows[0].get("overrides") or []
  lines = [f"### Memory: `dinoseg predict`-style inference ({rows[0]['config']}{' ' if overrides else ''}"
           f"{' '.join(overrides)}, frames "
           f"{rows[0]['size'][0]}x{rows[0]['size'][1]}, windows of {rows[0]['window']})", "",
           "| frames | predict s | frames / s | write s | RSS before MiB | peak RSS after predict MiB | "
           "peak RSS MiB | RSS at 25 / 50 / 75 / 100 % of the run MiB |", "|---|---|---|---|---|---|---|---|"]
  for x in rows:
    lines.append(f"| {x['frames']} | {x['predict_s']:.1f} | {x['frames'] / x['predict_s']:.2f} | {x['write_s']:.1f} | "
                 f"{x['start_rss_mb']:.0f} | {x['predict_peak_mb']:.0f} | {x['peak_mb']:.0f} | "
                 + " / ".join(f"{v:.0f}" for v in x["rss_by_quarter_mb"]) + " |")
  if len(rows) > 1:
    a, b = rows[0], rows[-1]
    lines.append("")
    lines.append(f"peak RSS {b['frames']} frames / {a['frames']} frames: {b['peak_mb'] / a['peak_mb']:.3f}x "
                 f"({b['peak_mb'] - a['peak_mb']:+.0f} MiB for {b['frames'] - a['frames']} more frames)")
  return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lvvis", default=os.environ.get("OV2SEG_REFERENCE", "/tmp/ref_lvvis"),
                      help="checkout of haochenheheda/LVVIS (tested at cc3cdf4; default $OV2SEG_REFERENCE or /tmp/ref_lvvis)")
  parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"OV2Seg R50 config (default {DEFAULT_CONFIG})")
  parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
  parser.add_argument("--size", type=parse_hw, default=(480, 854), help="frame H,W (default 480,854)")
  parser.add_argument("--frames", type=int, default=100, help="frames of the association video (default 100)")
  parser.add_argument("--queries", type=int, default=100, help="queries of the association section (default 100)")
  parser.add_argument("--classes", type=int, default=1196, help="vocabulary size (default 1196, LV-VIS)")
  parser.add_argument("--embed-dim", type=int, default=256, help="query embedding width (default 256)")
  parser.add_argument("--detections", type=int, default=50, help="instances per video (default 50)")
  parser.add_argument("--window", type=int, default=10, help="frames per window of the streaming path (default 10)")
  parser.add_argument("--memory-frames", type=parse_counts, default=(100, 500),
                      help="frame counts of the memory runs (default 100,500)")
  parser.add_argument("--memory-size", type=parse_hw, default=(240, 427), help="memory-run frame H,W (default 240,427)")
  parser.add_argument("--memory-config", default=DEFAULT_CONFIG, help="config of the memory runs (default the R50)")
  parser.add_argument("--memory-override", action="append", default=None, metavar="KEY=VALUE",
                      help="a config override of the memory runs (repeatable), e.g. model.decoder.num_queries=100")
  parser.add_argument("--iters", type=int, default=3, help="timed calls after one warm-up (default 3)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=1,
                      help="CPU threads of each side (torch.set_num_threads, XLA's CPU pool); 0: library defaults")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, in this process (the script's test)")
  parser.add_argument("--in-process", action="store_true", help="run every side in this process (no thread settings)")
  parser.add_argument("--timeout", type=int, default=3600, help="seconds per side (default 3600)")
  parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
  parser.add_argument("--side", choices=tuple(SIDES) + ("memory",), help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  return parser


def apply_smoke(args, parser) -> None:
  """--smoke: tiny sizes unless given, in this process."""
  defaults = {a.dest: a.default for a in parser._actions}  # noqa: SLF001
  tiny = dict(size=(64, 96), frames=6, queries=10, classes=5, detections=10, window=4, memory_frames=(3, 5),
              memory_size=(64, 96), memory_config=DEFAULT_CONFIG + ":tiny", iters=1)
  for k, v in tiny.items():
    if getattr(args, k) == defaults[k]:
      setattr(args, k, v)
  args.in_process = True


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  sections = [s.strip() for s in args.sections.split(",") if s.strip()]
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown or not sections:
    parser.error(f"--sections: unknown {unknown} (known: {', '.join(SECTIONS)})")
  if min(args.frames, args.queries, args.classes, args.iters, args.window, args.detections) < 1 or args.frames < 2:
    parser.error("--frames must be >= 2 and --queries, --classes, --iters, --window, --detections >= 1")
  if args.smoke:
    apply_smoke(args, parser)
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  if args.side:
    workdir = pathlib.Path(args.workdir)
    result = (run_memory(args, workdir, args.memory_frames[0]) if args.side == "memory"
              else SIDES[args.side](args, workdir))
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0
  if ("frame" in sections or "association" in sections) and not (pathlib.Path(args.lvvis) / "ov2seg").is_dir():
    parser.error(f"--lvvis={args.lvvis} is not a checkout of haochenheheda/LVVIS (no ov2seg/ folder)")

  print(machine_line())
  print(f"threads per side: {args.threads or 'library defaults'}{' (in one process)' if args.in_process else ''}")
  report: dict = {"args": {k: v for k, v in vars(args).items()}, "machine": machine_line()}
  with tempfile.TemporaryDirectory(prefix="bench_ov2seg_") as tmp:
    workdir = pathlib.Path(tmp)
    if "frame" in sections:
      (workdir / "reference_spec.json").write_text(json.dumps(reference_spec(model_config(args), args.seed)))
      rows = {"reference": run_side(args, "frame_reference", workdir)}  # writes the shared weights
      rows["dinoseg"] = run_side(args, "frame_dinoseg", workdir)
      parity = frame_parity(workdir)
      report["frame"] = {"rows": rows, "parity": parity}
      print(frame_report(rows, parity, args), flush=True)
    if "association" in sections:
      rows = {"reference": run_side(args, "association_reference", workdir),
              "dinoseg": run_side(args, "association_dinoseg", workdir)}
      checks = association_checks(workdir)
      report["association"] = {"rows": rows, "checks": checks}
      print(association_report(rows, checks, args), flush=True)
    if "memory" in sections:
      longest = max(args.memory_frames)
      write_frames(workdir / f"frames_{longest}", longest, args.memory_size, args.seed)
      for n in args.memory_frames:
        if n != longest:  # the first n frames of the longest video
          (workdir / f"frames_{n}").mkdir()
          for f in range(n):
            name = f"frame_{f:05d}.jpg"
            os.symlink(workdir / f"frames_{longest}" / name, workdir / f"frames_{n}" / name)
      rows = [run_side(args, "memory", workdir, n) for n in args.memory_frames]
      report["memory"] = rows
      print(memory_report(rows), flush=True)
  print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
