"""One-command GPU benchmark (H100 / H200): dinoseg beside the reference PyTorch code on the same GPU.

Through the device tool (`run`), from the repository root, with `carry: [".whl", ".refs"]` and
`timeout_s: 600` (one command line, folded here):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && \
        python3 scripts/bench_gpu.py --json-out $OUT/bench_gpu.json 2>&1 | tee $OUT/bench_gpu.log

The GPU machine's stock image (python3 = /opt/torch/.venv, Python 3.12: jax 0.11 with the CUDA 13 plugin,
flax, optax, orbax-checkpoint, absl-py, PyYAML, etils, protobuf, scipy, torch 2.11 CUDA, triton) lacks five
packages the timed code paths import: ml_collections (configs), grain and array_record (imported by the Mask
DINO configs through data_pipelines.pipeline), pycocotools (dinoseg.ops.masks), portpicker (grain). They
travel as wheels in `.whl/` (git-ignored), fetched once on the development machine as
/work/.library/device/README.md describes:

    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        ml_collections==1.1.0 pycocotools==2.0.11 grain==0.2.18 array_record==0.8.6 portpicker==1.6.0

dinoseg itself is not installed: the working tree on PYTHONPATH is enough (dinoseg/__init__.py maps
`dinoseg.kernels` / `dinoseg.data_pipelines` onto the checkout's kernels/ and data_pipelines/; the workers get
the repository root prepended to PYTHONPATH). `--smoke` runs the same code paths at tiny sizes on a CPU.

Sections (`--sections`, default all), each in its own subprocess (its own device-memory peak, JAX not
preallocating, so that PyTorch can share the GPU), each with a time budget: a section that fails or runs
past its budget prints one line and the others still run; time a section leaves unused passes on to
the next; the whole stays under `--total-budget` (default 470 s, the sum of the budgets below; with the
wheel install, ~10 s, the device command stays under 8 minutes). Every result is also written to `--json-out`.

  env        device, versions, peak figures, measured device-to-device copy bandwidth (a 1 GiB x + 1).
             ~10 s.
  msda       multi-scale deformable attention forward and forward + backward at Mask DINO sizes (batch 2,
             1024 x 1024, 4 levels of strides 8..64 = 21760 tokens, 8 heads, 4 points, 32 channels):
             decoder side (400 queries) and encoder side (21760 queries): dinoseg Pallas (the Triton
             kernel on GPU), dinoseg XLA (its twin), the reference's PyTorch grid_sample formulation on
             CUDA (scripts/bench_kernels.py `measure_msda`), and the bandwidth floor = the least bytes a
             fused kernel must move (`msda_floor_bytes`: read value, locations and weights and write the
             output once in the forward; read them and the output's gradient again and write the three
             gradients once in the backward; float32) / the device's peak HBM bandwidth (data sheet:
             H100 SXM 3.35 TB/s, H200 4.8 TB/s; the measured copy bandwidth where the device is not in the
             table). Work: the encoder fwd+bwd moves ~2.1 GB of sampled values (~1 ms at the floor);
             compile of 2 sides x 2 implementations x 2 programs dominates. Budget 75 s.
  maskdino   Mask DINO R50 (configs/maskdino/coco_instance_r50_3s_d1_2048.py) train step at 1024 x 1024,
             batch 8, `train.compute_dtype=bfloat16`, random initialisation, the trainer's jitted step
             (scripts/bench_maskdino.py `run_dinoseg`): median step time and the device allocator's peak
             (`jax.devices()[0].memory_stats()["peak_bytes_in_use"]`, whole subprocess). Work: ~0.5 TFLOP
             forward per image (R50 ~0.09, the 6 deformable encoder layers over 21760 tokens ~0.34, the
             300-query mask products over 256 x 256 ~0.1), x 3 for the step, x 8 images = ~12 TFLOP, a few
             tenths of a second at realistic utilisation; compiling the step (~1-2 min) dominates. Budget
             170 s; on a device out-of-memory error it retries at batch 4 if 90 s of the total remain.
  maskdino_reference
             the reference (IDEA-Research/MaskDINO through scripts/maskdino_reference_standin.py, detectron2's
             R50) on CUDA with bfloat16 autocast (AMP), same sizes and batch (`run_reference`):
             `torch.cuda.max_memory_allocated()` over the timed steps. Eager, no compile: budget 60 s.
  segnext    SegNext ViT-B sax2 at 1024 (scripts/bench_segnext.py `bench_dinoseg` / `bench_reference`),
             DAVIS-size image 480 x 854: image embedding and one click (goal <= 10 ms per click), beside the
             reference BasePredictor on CUDA. Work: ~0.5 TFLOP for the embedding (ViT-B over 4096 tokens),
             a few GFLOP per click; compile ~30-60 s. Budget 70 s. The reference imports mmcv (its
             `ConvModule`), which the GPU image lacks: without it that column is one "skipped" line.
  backbones  DINOv2-B/14-reg at 448 (scripts/bench_dinov2_clip.py `bench_dinov2`: full attention and query
             chunks) and Swin-L at 384 (scripts/bench_backbones.py `bench`), batch 8, forward images/s,
             beside the reference modules on CUDA (TF32 allowed on both sides: JAX's default precision on
             GPU, `torch.backends.{cuda.matmul,cudnn}.allow_tf32`). Work: DINOv2-B ~0.2 TFLOP and Swin-L
             ~0.3 TFLOP per image; compile ~20 s each. Budget 70 s.

Reference checkouts (each optional; a reference whose checkout is missing prints one "skipped" line):
`--refs DIR` (default `.refs` in the repository root) holding `detectron2/` (facebookresearch/detectron2),
`MaskDINO/` (IDEA-Research/MaskDINO), `SegNext/` (uncbiag/SegNext) and `dinov2/` (facebookresearch/dinov2),
or the single flags `--detectron2`, `--maskdino`, `--segnext`, `--dinov2`. On the development machine:
`echo /.refs/ >> .git/info/exclude`, copy the checkouts (without their `.git`) there, and name `.refs` in the
device tool's `carry` (the working tree and carried paths together stay under 64 MiB).

Prints one Markdown table per section; no figure is reported for a section that failed.
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
RESULT_TAG = "BENCH_GPU_RESULT "

# Data-sheet peaks by device_kind substring: (HBM bytes/s, dense bf16 FLOP/s).
PEAKS = {"H200": (4.8e12, 989e12), "H100": (3.35e12, 989e12), "A100": (2.04e12, 312e12)}

SECTIONS = ("env", "msda", "maskdino", "maskdino_reference", "segnext", "backbones")
# Seconds per section (sum 470); time a section leaves unused passes on to the next ones.
BUDGETS = {"env": 25, "msda": 75, "maskdino": 170, "maskdino_reference": 60, "segnext": 70, "backbones": 70}
# --smoke on a CPU: generous, since a shared development machine may be loaded several times over.
SMOKE_BUDGETS = {"env": 120, "msda": 300, "maskdino": 600, "maskdino_reference": 300, "segnext": 300,
                 "backbones": 300}


def sizes(smoke: bool) -> dict:
  """The benchmark's sizes: full (GPU) or the tiny ones of `--smoke` (CPU)."""
  if smoke:
    return {"copy_mib": 64, "msda_image": 64, "msda_batch": 1, "msda_decoder_queries": 50, "repeats": 1,
            "maskdino_config": "configs/maskdino/coco_instance_r50_3s_d1_2048.py:tiny", "maskdino_size": 64,
            # The reference side builds detectron2's full R50 and the stand-in's heads from the full config
            # (scripts/bench_maskdino.py reference_spec): eager, cheap at 128 x 128 (the smallest size whose
            # 340 encoder tokens cover its top-300 proposals).
            "maskdino_reference_config": "configs/maskdino/coco_instance_r50_3s_d1_2048.py",
            "maskdino_reference_size": 128,
            "maskdino_batch": 2, "segnext_tiny": True, "segnext_hw": (96, 128), "sat_side": 2,
            "dinov2_size": 112, "dinov2_batch": 1, "swin": "swin_tiny", "swin_size": 64, "backbone_batch": 1}
  return {"copy_mib": 1024, "msda_image": 1024, "msda_batch": 2, "msda_decoder_queries": 400, "repeats": 5,
          "maskdino_config": "configs/maskdino/coco_instance_r50_3s_d1_2048.py", "maskdino_size": 1024,
          "maskdino_reference_config": "configs/maskdino/coco_instance_r50_3s_d1_2048.py",
          "maskdino_reference_size": 1024,
          "maskdino_batch": 8, "segnext_tiny": False, "segnext_hw": (480, 854), "sat_side": 4,
          "dinov2_size": 448, "dinov2_batch": 8, "swin": "swin_large", "swin_size": 384, "backbone_batch": 8}


def _peaks(device_kind: str):
  for key, value in PEAKS.items():
    if key in device_kind:
      return value
  return None


def _torch_device() -> str:
  import torch  # noqa: PLC0415
  return "cuda" if torch.cuda.is_available() else "cpu"


def _checkout(args, name: str):
  """A reference checkout path, or None where it is missing."""
  path = getattr(args, name) or (pathlib.Path(args.refs) / {"detectron2": "detectron2", "maskdino": "MaskDINO",
                                                             "segnext": "SegNext", "dinov2": "dinov2"}[name])
  path = pathlib.Path(path)
  return path if path.is_dir() else None


# ----------------------------------------------------------------------------- sections (in the worker)


def section_env(args, cfg) -> dict:
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  device = jax.devices()[0]
  n = cfg["copy_mib"] * 2 ** 20 // 4
  x = jnp.ones((n,), jnp.float32)
  add = jax.jit(lambda v: v + 1)
  jax.block_until_ready(add(x))
  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    jax.block_until_ready(add(x))
    times.append(time.perf_counter() - t0)
  copy_bw = 2 * 4 * n / min(times)  # read + write
  peaks = _peaks(device.device_kind)
  out = {"backend": jax.default_backend(), "device_kind": device.device_kind, "jax": jax.__version__,
         "python": platform.python_version(), "copy_bandwidth": copy_bw,
         "peak_bandwidth": peaks[0] if peaks else None, "peak_bf16_flops": peaks[1] if peaks else None}
  try:
    import torch  # noqa: PLC0415
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
  except ImportError:
    out["torch"] = None
  return out


def _bandwidth(cfg) -> tuple[float, str]:
  """(bytes/s, how it was obtained) for the floor: the data sheet's peak, else the measured copy."""
  import jax  # noqa: PLC0415
  kind = jax.devices()[0].device_kind
  peaks = _peaks(kind)
  if peaks:
    return peaks[0], f"data-sheet peak of {kind}"
  env = section_env(None, cfg)
  return env["copy_bandwidth"], f"measured copy bandwidth of {kind}"


def section_msda(args, cfg) -> dict:
  import numpy as np  # noqa: PLC0415
  sys.path.insert(0, str(SCRIPTS))
  import bench_kernels  # noqa: PLC0415
  ns = argparse.Namespace(image_size=cfg["msda_image"], batch=cfg["msda_batch"],
                          decoder_queries=cfg["msda_decoder_queries"], repeats=cfg["repeats"],
                          pallas_max_queries=cfg["msda_decoder_queries"] if args.smoke else 1 << 30)
  bandwidth, how = _bandwidth(cfg)
  rows = bench_kernels.measure_msda(ns, np.random.default_rng(0), torch_device=_torch_device())
  for r in rows:
    r["floor_fwd_s"] = r["floor_bytes_fwd"] / bandwidth
    r["floor_all_s"] = r["floor_bytes_all"] / bandwidth
  return {"rows": rows, "bandwidth": bandwidth, "bandwidth_source": how, "image_size": ns.image_size,
          "batch": ns.batch}


def _maskdino_namespace(args, cfg, batch: int, device: str = "cpu") -> argparse.Namespace:
  return argparse.Namespace(config=cfg["maskdino_config"], size=cfg["maskdino_size"], batch=batch,
                            iters=1 if args.smoke else 3, num_gt=8, seed=0, threads=0, train_only=True,
                            maskdino=str(_checkout(args, "maskdino") or ""),
                            detectron2=str(_checkout(args, "detectron2") or ""), device=device,
                            amp=device.startswith("cuda"))  # AMP on the GPU; float32 in --smoke on a CPU


def section_maskdino(args, cfg) -> dict:
  import tempfile  # noqa: PLC0415
  sys.path.insert(0, str(SCRIPTS))
  import bench_maskdino  # noqa: PLC0415
  ns = _maskdino_namespace(args, cfg, args.batch or cfg["maskdino_batch"])
  with tempfile.TemporaryDirectory(prefix="bench_gpu_maskdino_") as tmp:  # empty: random initialisation
    result = bench_maskdino.run_dinoseg(ns, ["train.compute_dtype=bfloat16"], pathlib.Path(tmp))
  result.update(size=ns.size, batch=ns.batch, config=ns.config)
  return result


def section_maskdino_reference(args, cfg) -> dict:
  import tempfile  # noqa: PLC0415
  if not (_checkout(args, "maskdino") and _checkout(args, "detectron2")):
    return {"skipped": f"no MaskDINO and detectron2 checkouts under {args.refs} (--maskdino, --detectron2)"}
  sys.path.insert(0, str(SCRIPTS))
  import bench_maskdino  # noqa: PLC0415
  ns = _maskdino_namespace(args, cfg, args.batch or cfg["maskdino_batch"], _torch_device())
  ns.config, ns.size = cfg["maskdino_reference_config"], cfg["maskdino_reference_size"]
  settings = bench_maskdino.reference_settings(bench_maskdino.load_dinoseg_config(ns, []))
  with tempfile.TemporaryDirectory(prefix="bench_gpu_maskdino_ref_") as tmp:
    (pathlib.Path(tmp) / "reference.json").write_text(json.dumps(settings))
    result = bench_maskdino.run_reference(ns, [], pathlib.Path(tmp))
  result.update(size=ns.size, batch=ns.batch)
  return result


def section_segnext(args, cfg) -> dict:
  import numpy as np  # noqa: PLC0415
  sys.path.insert(0, str(SCRIPTS))
  import bench_segnext  # noqa: PLC0415

  from dinoseg.models.segnext.convert import SegNextArch, random_reference_state_dict  # noqa: PLC0415
  if cfg["segnext_tiny"]:
    arch = SegNextArch(image_size=448, embed_dim=64, depth=4, fusion_depth=2, neck_dims=(16, 32, 48, 64),
                       head_channels=32)
    heads, freq = 4, 2
  else:
    arch, heads, freq = SegNextArch(fusion_depth=2), 12, 3
  ns = argparse.Namespace(dtype="float32", min_points=24, repeats=cfg["repeats"], sat_side=cfg["sat_side"],
                          sat_batch=cfg["sat_side"] ** 2, torch_threads=0, torch_device=_torch_device())
  state_dict = random_reference_state_dict(arch, seed=0)
  h, w = cfg["segnext_hw"]
  image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
  out = {"model": f"{'tiny' if cfg['segnext_tiny'] else 'ViT-B'} sax2 at {arch.image_size}", "image_hw": [h, w]}
  out["dinoseg"], logits = bench_segnext.bench_dinoseg(arch, heads, freq, image, ns, state_dict)
  reference = _checkout(args, "segnext")
  if reference is None:
    out["reference_skipped"] = f"no SegNext checkout under {args.refs} (--segnext)"
  else:
    try:
      out["reference"], ref_logits = bench_segnext.bench_reference(reference, arch, heads, freq, image, ns,
                                                                    state_dict)
      out["max_abs_logit_diff"] = float(np.abs(logits - ref_logits).max())
    except Exception as e:  # noqa: BLE001  (the reference's own dependencies may be missing on the machine)
      out["reference_skipped"] = f"reference failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  return out


def section_backbones(args, cfg) -> dict:
  sys.path.insert(0, str(SCRIPTS))
  import bench_backbones  # noqa: PLC0415
  import bench_dinov2_clip  # noqa: PLC0415
  device = _torch_device()
  if device == "cuda":
    import torch  # noqa: PLC0415
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  out = {"rows": [], "notes": []}
  dinov2_dir = _checkout(args, "dinov2")
  if dinov2_dir is None:
    out["notes"].append(f"DINOv2 reference skipped: no dinov2 checkout under {args.refs} (--dinov2)")
  for name, what, ours, theirs, diff in bench_dinov2_clip.bench_dinov2(
      dinov2_dir, batch=cfg["dinov2_batch"], repeats=cfg["repeats"], query_chunk=128, size=cfg["dinov2_size"],
      torch_device=device):
    out["rows"].append({"model": name, "input": what, "dinoseg_ips": ours,
                        "reference_ips": theirs if theirs == theirs else None, "max_abs_diff": diff if diff == diff else None})
  bench_backbones._register_defaults()
  entry = bench_backbones.BENCHES[cfg["swin"]]
  have = _checkout(args, "maskdino") and _checkout(args, "detectron2")
  if not have:
    out["notes"].append(f"Swin reference skipped: no MaskDINO and detectron2 checkouts under {args.refs}")
  ns = argparse.Namespace(maskdino=_checkout(args, "maskdino") if have else None,
                          detectron2=_checkout(args, "detectron2") if have else None, segnext=None,
                          batch=cfg["backbone_batch"], warmup=1, iters=cfg["repeats"])
  row = bench_backbones.bench(entry, ns, (cfg["swin_size"], cfg["swin_size"]))
  out["rows"].append({"model": f"{cfg['swin']} {cfg['swin_size']}px", "input": row["input"],
                      "dinoseg_ips": row["flax_ips"], "reference_ips": row.get("ref_ips"),
                      "rel_diff": row.get("rel_diff"), "compile_s": row["compile_s"]})
  return out


SECTION_FNS = {"env": section_env, "msda": section_msda, "maskdino": section_maskdino,
               "maskdino_reference": section_maskdino_reference, "segnext": section_segnext,
               "backbones": section_backbones}


# ----------------------------------------------------------------------------- printing


def _ms(seconds):
  return "–" if seconds is None else f"{seconds * 1e3:.2f}"


def _ratio(a, b):
  return "–" if not a or not b else f"{a / b:.2f}x"


def report(name: str, result: dict) -> str:
  """Markdown for one section's result."""
  if "skipped" in result:
    return f"{name}: skipped ({result['skipped']})"
  if name == "env":
    peak = f"{result['peak_bandwidth'] / 1e9:,.0f} GB/s" if result["peak_bandwidth"] else "not in the table"
    return (f"device: {result['device_kind']} ({result['backend']}), jax {result['jax']}, torch {result.get('torch')} "
            f"(CUDA device: {result.get('torch_cuda')}), Python {result['python']}\n"
            f"measured copy bandwidth (read + write of x + 1): {result['copy_bandwidth'] / 1e9:,.1f} GB/s; "
            f"data-sheet HBM peak: {peak}")
  if name == "msda":
    lines = [f"MSDA, batch {result['batch']}, {result['image_size']}x{result['image_size']}, float32; floor = "
             f"least bytes moved / {result['bandwidth'] / 1e9:,.1f} GB/s ({result['bandwidth_source']})", "",
             "| side | queries | implementation | fwd ms | fwd+bwd ms | floor fwd ms | floor fwd+bwd ms "
             "| fwd+bwd / floor | XLA bytes accessed fwd+bwd MB | bwd scratch MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
      cost = f"{r['cost_bytes_all'] / 1e6:.0f}" if r.get("cost_bytes_all") else "–"
      lines.append(f"| {r['side']} | {r['queries']} | {r['name']} | {_ms(r['fwd_s'])} | {_ms(r['all_s'])} | "
                   f"{_ms(r['floor_fwd_s'])} | {_ms(r['floor_all_s'])} | {r['all_s'] / r['floor_all_s']:.1f}x | "
                   f"{cost} | {r['scratch_mib']} |")
    return "\n".join(lines)
  if name in ("maskdino", "maskdino_reference"):
    peak = result.get("device_peak_mb") if name == "maskdino" else result.get("train_device_peak_mb")
    peak_s = f"{peak / 1024:.2f} GiB" if peak else "– (no device memory stats on this backend)"
    what = (f"dinoseg, trainer's jitted step, compute dtype {result.get('compute_dtype')}" if name == "maskdino"
            else f"reference (PyTorch eager on {result.get('device')}, AMP bf16 autocast: {result.get('amp')})")
    return (f"Mask DINO R50 train step, {result['size']}x{result['size']}, batch {result['batch']}: {what}: "
            f"{result['train_s'] * 1e3:.1f} ms/step (first call {result['train_first_s']:.1f} s), "
            f"{result['batch'] / result['train_s']:.2f} images/s, peak device memory {peak_s}, "
            f"peak host RSS {result['train_rss_mb']:.0f} MiB")
  if name == "segnext":
    d, r = result["dinoseg"], result.get("reference", {})
    lines = [f"SegNext {result['model']}, image {result['image_hw'][0]}x{result['image_hw'][1]}, float32, "
             f"{d['device']}", "", "| measurement | dinoseg ms | reference ms | reference / dinoseg |",
             "|---|---|---|---|"]
    for label, key in (("image embedding", "embed_ms"), ("one click (goal <= 10 ms)", "click_ms"),
                       ("SAT grid, serial (embed + clicks)", "sat_serial_ms"),
                       ("SAT grid, batched", "sat_batched_ms")):
      ref = r.get(key)
      lines.append(f"| {label} | {d[key]:.2f} | {'–' if ref is None else f'{ref:.2f}'} | {_ratio(ref, d[key])} |")
    lines.append(f"per-click goal (<= 10 ms): {'met' if d['click_ms'] <= 10 else 'not met'} "
                 f"({d['click_ms']:.2f} ms)")
    if "reference_skipped" in result:
      lines.append(f"reference: {result['reference_skipped']}")
    if "max_abs_logit_diff" in result:
      lines.append(f"max |logit difference| = {result['max_abs_logit_diff']:.2e}")
    return "\n".join(lines)
  if name == "backbones":
    lines = ["| model | input | dinoseg img/s | reference img/s | dinoseg / reference | check |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
      check = (f"max abs diff {r['max_abs_diff']:.1e}" if r.get("max_abs_diff") is not None
               else f"rel. max diff {r['rel_diff']:.1e}" if r.get("rel_diff") is not None else "–")
      ref = r.get("reference_ips")
      lines.append(f"| {r['model']} | {r['input']} | {r['dinoseg_ips']:.2f} | {'–' if ref is None else f'{ref:.2f}'} "
                   f"| {_ratio(r['dinoseg_ips'], ref)} | {check} |")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)
  return json.dumps(result)


# ----------------------------------------------------------------------------- driver


def _worker_env(smoke: bool) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # PyTorch shares the GPU in the same process
  # One device per section (a test runner may have asked for fake CPU devices).
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if smoke:
    env["JAX_PLATFORMS"] = "cpu"
  return env


def run_section(args, name: str, budget: float, extra: list[str] = ()) -> dict:
  """Runs one section in a subprocess within `budget` seconds; {"error": one line} on failure."""
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", name, f"--refs={args.refs}"]
  cmd += [f"--{k}={getattr(args, k)}" for k in ("detectron2", "maskdino", "segnext", "dinov2") if getattr(args, k)]
  cmd += (["--smoke"] if args.smoke else []) + list(extra)
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, env=_worker_env(args.smoke), capture_output=True, text=True, timeout=budget)
  except subprocess.TimeoutExpired:
    return {"error": f"ran past its budget of {budget:.0f} s", "wall_s": time.perf_counter() - t0}
  wall = time.perf_counter() - t0
  lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
  if proc.returncode != 0 or not lines:
    tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
    why = tail[-1] if tail else f"exit {proc.returncode}"
    return {"error": f"exit {proc.returncode}: {why[:400]}", "wall_s": wall,
            "oom": "RESOURCE_EXHAUSTED" in proc.stderr or "out of memory" in proc.stderr.lower()}
  result = json.loads(lines[-1][len(RESULT_TAG):])
  result["wall_s"] = wall
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated from {', '.join(SECTIONS)}")
  parser.add_argument("--smoke", action="store_true", help="the same code paths at tiny sizes on the CPU")
  parser.add_argument("--total-budget", type=float, default=None,
                      help="seconds for all sections together (default 470; --smoke: 1800)")
  parser.add_argument("--refs", default=str(ROOT / ".refs"), help="folder of reference checkouts (see the docstring)")
  for name in ("detectron2", "maskdino", "segnext", "dinov2"):
    parser.add_argument(f"--{name}", default=None, help=f"{name} checkout (default: under --refs)")
  parser.add_argument("--batch", type=int, default=None, help="Mask DINO batch (default 8; --smoke 2)")
  parser.add_argument("--json-out", default=None, help="also write every section's result to this JSON file")
  parser.add_argument("--worker", choices=SECTIONS, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  names = [s.strip() for s in args.sections.split(",") if s.strip()]
  unknown = [s for s in names if s not in SECTIONS]
  if unknown or not names:
    parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
  if args.batch is not None and args.batch < 1:
    parser.error("--batch must be >= 1")
  cfg = sizes(args.smoke)

  if args.worker:
    sys.path.insert(0, str(ROOT))
    if args.worker in ("maskdino", "maskdino_reference"):
      import absl.flags  # noqa: PLC0415  (grain reads absl flags)
      if not absl.flags.FLAGS.is_parsed():
        absl.flags.FLAGS.mark_as_parsed()
    result = SECTION_FNS[args.worker](args, cfg)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0

  total = args.total_budget if args.total_budget is not None else (1800.0 if args.smoke else 470.0)
  budgets = SMOKE_BUDGETS if args.smoke else BUDGETS
  started = time.perf_counter()
  results = {}
  print(f"# bench_gpu{' --smoke' if args.smoke else ''}: {time.strftime('%Y-%m-%d %H:%M:%S')}, "
        f"{platform.node()}, sections {', '.join(names)}, total budget {total:.0f} s", flush=True)
  allotted = 0.0
  for name in names:
    elapsed = time.perf_counter() - started
    left = total - elapsed
    allotted += budgets[name]
    budget = min(allotted - elapsed, left)
    if budget < 10:
      results[name] = {"error": f"not run: {left:.0f} s of the total budget left"}
      print(f"\n## {name}\n{name}: {results[name]['error']}", flush=True)
      continue
    result = run_section(args, name, budget)
    if (name == "maskdino" and result.get("oom") and args.batch is None
        and total - (time.perf_counter() - started) >= 90):
      first = result["error"]
      retry_budget = min(budgets[name], total - (time.perf_counter() - started))
      result = run_section(args, name, retry_budget, [f"--batch={cfg['maskdino_batch'] // 2}"])
      result["note"] = f"batch {cfg['maskdino_batch']} failed ({first[:200]}); retried at batch {cfg['maskdino_batch'] // 2}"
    results[name] = result
    print(f"\n## {name} ({result['wall_s']:.0f} s of a {budget:.0f} s budget)" if "wall_s" in result
          else f"\n## {name}", flush=True)
    if "note" in result:
      print(f"note: {result['note']}")
    print(f"{name}: FAILED, {result['error']}" if "error" in result else report(name, result), flush=True)
  elapsed = time.perf_counter() - started
  failed = [n for n, r in results.items() if "error" in r]
  print(f"\ntotal {elapsed:.0f} s; {len(names) - len(failed)} of {len(names)} sections ran"
        + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
  if args.json_out:
    pathlib.Path(args.json_out).write_text(json.dumps({"smoke": args.smoke, "elapsed_s": elapsed, "sizes": cfg,
                                                       "results": results}, indent=1, default=str) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
