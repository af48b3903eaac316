"""DINOv Swin-T on the CPU: generic inference with 80 prompt categories at 1024 px and prompt-bank build
throughput; dinoseg beside the reference in one run.

    python scripts/bench_dinov.py [--dinov /tmp/ref_dinov] [--maskdino /tmp/ref_maskdino] \
        [--detectron2 /tmp/ref_detectron2] [--threads 1] [--size 1024] [--categories 80] [--iters 2] \
        [--bank-images 3] [--bank-instances 8] [--sections generic,bank] [--smoke]

Model: configs/dinov/swint_sam_coco.py at full size (Swin-T, Mask DINO's deformable encoder with 6 layers over
4 levels, the DINOv decoder with 300 generic queries and 9 layers, hidden 256, projection 512), float32,
random weights, the same on both sides. Each side runs in its own subprocess (own peak RSS, thread settings in
place before JAX / PyTorch start), one after the other.

Reference: UX-Decoder/DINOv's own head (`dinov/body/general_head.py`: the Mask DINO pixel decoder and
`DINOvOpenSet`) on CPU PyTorch through scripts/dinov_reference_standin.py (the deformable attention takes the
reference's PyTorch fallback), behind IDEA-Research/MaskDINO's `D2SwinTransformer` (DINOv's
`dinov/backbone/swin.py` is the same file plus its registry / logging lines and a dtype cast of the attention
mask), executed from the checkouts with scripts/backbone_references.py (needs a detectron2 checkout). Weights:
the Swin's own initialisation under `torch.manual_seed(--seed)`, the head's the deterministic values of
scripts/make_dinov_fixtures.py; the state dict is saved and converted for dinoseg by `dinov.convert.to_flax`
(the path `dinoseg convert` takes).

generic: one `--size` x `--size` image (already at the test size: no resize), `--categories` prompt categories.
  - reference: normalise, backbone, the head in eval with task "visual_openset", which reads its prompt bank
    from OUTPUT_DIR (one safetensors file per category, INFERENCE_EXAMPLE 1 as in the fixture script: each
    category's prompt is its one stored embedding) on every call, as the reference's `evaluate_visual_openset`
    does before its post-processing.
  - dinoseg: `DINOv.apply(task="generic", prompts, prompt_valid)` jitted, the same K embeddings as prompts.
  - dinoseg predictor: `DINOvPredictor.predict` (forward + instance and, with test.panoptic_on, panoptic
    post-processing with masks at the image size, device -> host), with the same K embeddings as a
    one-example-per-category bank. No reference row: the reference's post-processing lives in its
    meta-architecture, which does not import without detectron2.
  Median of `--iters` calls after one warm-up call (dinoseg's first call includes its compilation). The final
  logits, boxes and masks of the generic queries are compared (max |dinoseg - reference| / max |reference|).

bank: prompt-bank building (the reference's `get_content` step: every ground-truth mask of an image is
  encoded as a visual prompt on its image) of `--bank-images` synthetic images of 480 x 640 with
  `--bank-instances` masks each (random ellipses, random categories among `--categories`), test resize
  (shortest edge 800, longest <= 1333 -> 800 x 1067, padded to 800 x 1088).
  - reference: normalise, backbone, pixel decoder, `DINOvOpenSet` with task "get_content" (the prompt
    encoder's `prepare_visual_prompt`), then one safetensors file per instance, as its train_net.py does.
  - dinoseg, same canvas: `PromptBankEncoder(canvas_hw=(800, 1088))` on the same canvases and masks
    (embeddings compared with the reference's).
  - dinoseg, the library's path: `build_bank` + `write_bank` from the raw images on the encoder's default
    static canvas (test.max_size rounded up to 32, square: 1344 x 1344), what `dinoseg dinov bank` runs.
  Instances per second over a second pass (the first pass compiles: reported apart).

`--smoke`: tiny sizes (a 1-block-per-stage Swin of width 32, 10 queries, 2 decoder layers, 64 x 64 image,
4 categories, 2 bank images of 2 masks), every side in this process: the test of this script.
"""
import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
DEFAULT_CONFIG = "configs/dinov/swint_sam_coco.py"
RESULT_TAG = "BENCH_DINOV "
SECTIONS = ("generic", "bank")
SWITCH = {"part": False, "whole": True, "seg": True, "det": True}
BANK_IMAGE_HW = (480, 640)

# --smoke: the `:tiny` backbone; the reference decoder's sine embeddings need hidden 256.
SMOKE_MODEL = dict(backbone=dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=4),
                   hidden_dim=256, dim_proj=32, num_queries=10, dec_layers=2, enc_layers=1, dim_feedforward=64,
                   dn_num=8)


def _sibling(name: str):
  """scripts/<name>.py as a module."""
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


common = _sibling("bench_ov2seg")  # time_calls, peak RSS, rel_max_diff, machine_line, thread_env, parse helpers


# ----------------------------------------------------------------------------- configs


def load_dinov_config(args):
  """The dinoseg config (--config; in --smoke the SMOKE_MODEL sizes), test size = the benchmark's."""
  from dinoseg.config import load_config  # noqa: PLC0415
  config = load_config(args.config)
  m = config.model
  if args.smoke:
    s = SMOKE_MODEL
    m.backbone.kwargs = dict(s["backbone"], drop_path_rate=0.0)
    p, d = m.pixel_decoder, m.decoder
    p.conv_dim = p.mask_dim = d.hidden_dim = s["hidden_dim"]
    p.num_encoder_layers = s["enc_layers"]
    p.dim_feedforward = d.dim_feedforward = s["dim_feedforward"]
    d.dim_proj, d.num_queries, d.dec_layers, d.dn_num = s["dim_proj"], s["num_queries"], s["dec_layers"], s["dn_num"]
    config.test.min_size, config.test.max_size = 64, 96
  return config


SWIN_SIZES = {"swin_tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)}


def reference_spec(config, seed: int, bank_dir: str) -> dict:
  """make_dinov_fixtures.build_head's spec and the Swin's sizes, from the dinoseg config."""
  m = config.model
  p, d = m.pixel_decoder, m.decoder
  if m.backbone.name not in SWIN_SIZES:
    raise ValueError(f"the reference side builds a D2 Swin ({sorted(SWIN_SIZES)}), the config's is {m.backbone.name}")
  swin = dict(SWIN_SIZES[m.backbone.name], **{k: v for k, v in dict(m.backbone.get("kwargs") or {}).items()
                                              if k in ("embed_dim", "depths", "num_heads", "window_size")})
  if p.dim_feedforward != d.dim_feedforward:
    raise ValueError("the reference's encoder reads DECODER.DIM_FEEDFORWARD: the two widths must agree")
  if p.conv_dim != d.hidden_dim or p.mask_dim != d.hidden_dim or p.nheads != d.nheads:
    raise ValueError("build_head uses one width and head count for the pixel decoder and the decoder")
  channels = {f"res{i + 2}": int(swin["embed_dim"]) * 2 ** i for i in range(4)}
  return dict(swin={k: list(v) if isinstance(v, tuple) else v for k, v in swin.items()}, channels=channels,
              encoder_in=list(p.transformer_in_features), total_levels=p.total_num_feature_levels,
              feature_order=p.feature_order, hidden_dim=d.hidden_dim, dim_proj=d.dim_proj,
              num_queries=d.num_queries, nheads=d.nheads, enc_layers=p.num_encoder_layers,
              dim_feedforward=d.dim_feedforward, dec_layers=d.dec_layers, dn_num=d.dn_num,
              noise_scale=d.dn_noise_scale, num_mask_tokens=d.num_mask_tokens,
              num_content_tokens=d.num_content_tokens, content_independent=bool(d.content_independent),
              seed=seed, bank_dir=bank_dir)


def prompt_bank(categories: int, dim: int, seed: int) -> np.ndarray:
  """(K, d) the one stored embedding of each category (N(0, 1) rows)."""
  return np.random.default_rng([seed, 41]).standard_normal((categories, dim)).astype(np.float32)


def generic_image(size: int, seed: int) -> np.ndarray:
  """(S, S, 3) uint8 test image."""
  return common.synthetic_frame((size, size), seed).astype(np.uint8)


def bank_examples(num_images: int, num_instances: int, categories: int, hw: tuple[int, int], seed: int) -> list:
  """[(image (H, W, 3) uint8, masks (N, H, W) bool, category ids (N,))]: random ellipses, random categories."""
  rng = np.random.default_rng([seed, 43])
  h, w = hw
  yy, xx = np.mgrid[0:h, 0:w]
  out = []
  for i in range(num_images):
    image = common.synthetic_frame(hw, seed + 100 + i).astype(np.uint8)
    masks = np.zeros((num_instances, h, w), bool)
    for j in range(num_instances):
      cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
      ry, rx = rng.uniform(0.05, 0.25) * h, rng.uniform(0.05, 0.25) * w
      masks[j] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    out.append((image, masks, rng.integers(1, categories + 1, num_instances)))
  return out


def reference_canvas(config, hw: tuple[int, int]) -> tuple[int, int]:
  """The reference's test canvas of an image of `hw`: shortest edge test.min_size, longest <= max_size, padded to 32."""
  from dinoseg.predict import resize_shortest_edge  # noqa: PLC0415
  nh, nw = resize_shortest_edge(hw[0], hw[1], int(config.test.min_size), int(config.test.max_size))
  return common.padded((nh, nw))


# ----------------------------------------------------------------------------- reference side


def build_reference(args, workdir: pathlib.Path, torch):
  """(swin, head, spec): the reference modules with the benchmark's weights (saved to weights.npz once)."""
  if str(SCRIPTS) not in sys.path:  # the stand-ins import maskdino_reference_standin by name
    sys.path.insert(0, str(SCRIPTS))
  refs = _sibling("backbone_references")
  fx = _sibling("make_dinov_fixtures")
  spec = json.loads((workdir / "reference_spec.json").read_text())
  torch.manual_seed(spec["seed"])
  sw = spec["swin"]
  swin = refs.build_reference_swin(args.maskdino, args.detectron2, embed_dim=sw["embed_dim"], depths=sw["depths"],
                                   num_heads=sw["num_heads"], window_size=sw["window_size"])
  standin = _sibling("dinov_reference_standin")
  standin.install(args.dinov)
  head, head_keys = fx.build_head(standin, spec, torch)
  head.eval()
  if not (workdir / "weights.npz").is_file():
    state = {"backbone." + k: v.numpy().copy() for k, v in swin.state_dict().items()}
    head_state = head.state_dict()
    state.update({k: head_state[k[len("sem_seg_head."):]].numpy().copy() for k, _ in head_keys})
    np.savez(workdir / "weights.npz", **state)
  return swin, head, spec


def write_reference_bank(spec, bank: np.ndarray) -> None:
  """OUTPUT_DIR/<category>/id_0_idx_0.safetensors per category (the reference's get_content layout)."""
  import torch  # noqa: PLC0415
  from safetensors.torch import save_file  # noqa: PLC0415
  root = pathlib.Path(spec["bank_dir"])
  for k, emb in enumerate(bank):
    (root / str(k)).mkdir(parents=True, exist_ok=True)
    save_file({"embedding": torch.from_numpy(emb.copy())}, str(root / str(k) / "id_0_idx_0.safetensors"))


def run_generic_reference(args, workdir: pathlib.Path) -> dict:
  import torch  # noqa: PLC0415
  if args.threads:
    torch.set_num_threads(args.threads)
  t0 = time.perf_counter()
  swin, head, spec = build_reference(args, workdir, torch)
  build_s = time.perf_counter() - t0
  write_reference_bank(spec, prompt_bank(args.categories, spec["hidden_dim"], spec["seed"]))
  image = torch.from_numpy(generic_image(args.size, args.seed).astype(np.float32)).permute(2, 0, 1)
  mean = torch.tensor(common.PIXEL_MEAN)[:, None, None]
  std = torch.tensor(common.PIXEL_STD)[:, None, None]

  def forward():
    with torch.no_grad():
      x = ((image - mean) / std)[None]  # already a multiple of 32: ImageList adds no padding
      out, _ = head(swin(x), targets={"generic": None, "content": None}, task="visual_openset", extra=SWITCH)
      return out

  first, median, times, rss = common.time_calls(forward, args.iters)
  out = forward()
  np.savez(workdir / "generic_reference.npz", logits=out["pred_logits"].numpy(), boxes=out["pred_boxes"].numpy(),
           masks=out["pred_masks"].numpy())
  return {"side": "reference", "first_s": first, "median_s": median, "times_s": times, "rss_mb": rss,
          "process_rss_mb": common.peak_rss_mb(), "build_s": build_s, "threads": torch.get_num_threads(),
          "torch": torch.__version__}


def run_bank_reference(args, workdir: pathlib.Path) -> dict:
  import torch  # noqa: PLC0415
  from safetensors.torch import save_file  # noqa: PLC0415
  if args.threads:
    torch.set_num_threads(args.threads)
  swin, head, spec = build_reference(args, workdir, torch)
  with np.load(workdir / "bank_inputs.npz") as f:
    inputs = {k: f[k] for k in f.files}
  mean = torch.tensor(common.PIXEL_MEAN)[:, None, None]
  std = torch.tensor(common.PIXEL_STD)[:, None, None]
  out_root = workdir / "reference_bank_out"
  calls = {"n": 0}

  def encode_all():
    calls["n"] += 1
    embeddings = []
    for i in range(len(inputs["canvases"])):
      canvas = torch.from_numpy(inputs["canvases"][i]).permute(2, 0, 1)
      h, w = (int(v) for v in inputs["valid_hw"][i])
      x = torch.zeros((1,) + tuple(canvas.shape))
      x[0, :, :h, :w] = (canvas[:, :h, :w] - mean) / std  # normalise, then zero-pad
      masks = torch.from_numpy(inputs["masks"][i])
      n = masks.shape[0]
      target = {"pb": torch.ones(n), "boxes_dn": torch.tensor([[0.0, 0.0, 1.0, 1.0]] * n), "rand_shape": masks,
                "sampled_examples_by_catetory": {"0": torch.arange(n)}}
      with torch.no_grad():
        tokens, _ = head(swin(x), targets={"content": [target], "generic": [target]}, task="get_content",
                         extra={"part": False, "whole": False, "seg": True, "det": True})
      for j, (emb, cat) in enumerate(zip(tokens, inputs["categories"][i])):
        folder = out_root / str(calls["n"]) / str(int(cat))
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"embedding": emb.contiguous()}, str(folder / f"id_{i}_idx_{j}.safetensors"))
      embeddings.append(tokens.numpy())
    return embeddings

  t0 = time.perf_counter()
  embeddings = encode_all()
  first = time.perf_counter() - t0
  common.reset_peak_rss()
  t0 = time.perf_counter()
  encode_all()
  second = time.perf_counter() - t0
  np.savez(workdir / "bank_reference.npz", embeddings=np.concatenate(embeddings))
  n = int(sum(len(m) for m in inputs["masks"]))
  return {"side": "reference", "instances": n, "first_s": first, "second_s": second, "rss_mb": common.peak_rss_mb(),
          "canvas": list(inputs["canvases"].shape[1:3])}


# ----------------------------------------------------------------------------- dinoseg side


def dinoseg_model(args, workdir: pathlib.Path):
  import jax  # noqa: PLC0415

  from dinoseg.models.dinov import convert  # noqa: PLC0415
  from dinoseg.models.dinov.model import build_model  # noqa: PLC0415
  config = load_dinov_config(args)
  with np.load(workdir / "weights.npz") as f:
    state = {k: f[k] for k in f.files}
  variables = jax.device_put(convert.to_flax(state, config.model))
  return config, build_model(config.model), variables


def run_generic_dinoseg(args, workdir: pathlib.Path) -> dict:
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from dinoseg.models.dinov import bank as bank_lib  # noqa: PLC0415
  from dinoseg.models.dinov.decoder import QUERIES  # noqa: PLC0415
  from dinoseg.models.dinov.predict import DINOvPredictor  # noqa: PLC0415
  t0 = time.perf_counter()
  config, model, variables = dinoseg_model(args, workdir)
  jax.block_until_ready(variables)
  build_s = time.perf_counter() - t0
  spec = json.loads((workdir / "reference_spec.json").read_text())
  bank = prompt_bank(args.categories, spec["hidden_dim"], spec["seed"])
  image_u8 = generic_image(args.size, args.seed)
  image = jnp.asarray(image_u8.astype(np.float32))[None]
  valid_hw = jnp.asarray([[args.size, args.size]], jnp.int32)
  prompts, prompt_valid = jnp.asarray(bank)[None], jnp.ones((1, len(bank)), bool)

  @jax.jit
  def forward_fn(variables, image, valid_hw, prompts, prompt_valid):
    out = model.apply(variables, image, valid_hw, task="generic", prompts=prompts, prompt_valid=prompt_valid)
    g = out.groups[QUERIES]
    return {"logits": g.logits[-1], "boxes": g.boxes[-1], "masks": g.masks[-1]}

  def forward():
    return jax.block_until_ready(forward_fn(variables, image, valid_hw, prompts, prompt_valid))

  first, median, times, rss = common.time_calls(forward, args.iters)
  out = jax.device_get(forward())
  q = spec["num_queries"]
  np.savez(workdir / "generic_dinoseg.npz", **{k: np.asarray(v)[:, :q] for k, v in out.items()})

  config.test.min_size = config.test.max_size = args.size  # the image is already at the test size
  predictor = DINOvPredictor(config, variables, num_examples=1)
  predictor.set_examples(bank_lib.bank_from_embeddings({f"category_{k}": e for k, e in enumerate(bank)},
                                                        spec["hidden_dim"]))
  p_first, p_median, p_times, p_rss = common.time_calls(lambda: predictor.predict(image_u8), args.iters)
  result = predictor.predict(image_u8)
  return {"side": "dinoseg", "first_s": first, "median_s": median, "times_s": times, "rss_mb": rss,
          "predict_first_s": p_first, "predict_s": p_median, "predict_rss_mb": p_rss, "instances": len(result.scores),
          "process_rss_mb": common.peak_rss_mb(), "build_s": build_s, "jax": jax.__version__,
          "backend": jax.default_backend()}


def run_bank_dinoseg(args, workdir: pathlib.Path) -> dict:
  import jax  # noqa: PLC0415

  from dinoseg.models.dinov import bank as bank_lib  # noqa: PLC0415
  config, model, variables = dinoseg_model(args, workdir)
  with np.load(workdir / "bank_inputs.npz") as f:
    inputs = {k: f[k] for k in f.files}
  canvas_hw = tuple(int(v) for v in inputs["canvases"].shape[1:3])
  same = bank_lib.PromptBankEncoder(model, variables, config, canvas_hw=canvas_hw)

  def encode_same():
    return [same.encode_canvas(c, m, v) for c, m, v in zip(inputs["canvases"], inputs["masks"], inputs["valid_hw"])]

  t0 = time.perf_counter()
  embeddings = encode_same()
  same_first = time.perf_counter() - t0
  common.reset_peak_rss()
  t0 = time.perf_counter()
  encode_same()
  same_s = time.perf_counter() - t0
  same_rss = common.peak_rss_mb()
  np.savez(workdir / "bank_dinoseg.npz", embeddings=np.concatenate(embeddings))

  examples = [bank_lib.Example(image_id=i, image=img, masks=m, category_ids=c, instance_ids=np.arange(len(m)))
              for i, (img, m, c) in enumerate(bank_examples(args.bank_images, args.bank_instances, args.categories,
                                                            tuple(args.bank_image_hw), args.seed))]
  names = {k: f"category_{k}" for k in range(1, args.categories + 1)}
  default = bank_lib.PromptBankEncoder(model, variables, config)
  passes = {"n": 0}

  def build():
    passes["n"] += 1
    bank = bank_lib.build_bank(default, examples, names)
    bank_lib.write_bank(bank, workdir / f"dinoseg_bank_{passes['n']}")
    return bank

  t0 = time.perf_counter()
  build()
  default_first = time.perf_counter() - t0
  common.reset_peak_rss()
  t0 = time.perf_counter()
  bank = build()
  default_s = time.perf_counter() - t0
  n = int(sum(len(m) for m in inputs["masks"]))
  return {"side": "dinoseg", "instances": n, "same_first_s": same_first, "same_s": same_s, "same_rss_mb": same_rss,
          "default_first_s": default_first, "default_s": default_s, "default_rss_mb": common.peak_rss_mb(),
          "default_instances": int(sum(bank.count(c) for c in bank.category_ids)),
          "canvas": list(canvas_hw), "default_canvas": list(default.canvas_hw), "jax": jax.__version__}


def prepare_bank_inputs(args, config, workdir: pathlib.Path) -> None:
  """workdir/bank_inputs.npz: canvases (I, Hc, Wc, 3) float32, masks (I, N, Hc, Wc) float32, valid_hw (I, 2),
  categories (I, N) on the reference's test canvas (dinoseg's resize_for_model, so both sides get the same)."""
  from dinoseg.models.dinov.bank import resize_for_model  # noqa: PLC0415
  examples = bank_examples(args.bank_images, args.bank_instances, args.categories, tuple(args.bank_image_hw),
                           args.seed)
  canvas_hw = reference_canvas(config, tuple(args.bank_image_hw))
  canvases, masks, valid = [], [], []
  for image, m, _ in examples:
    c, cm, v = resize_for_model(image, m, config, canvas_hw)
    canvases.append(c)
    masks.append(cm)
    valid.append(v)
  np.savez(workdir / "bank_inputs.npz", canvases=np.stack(canvases), masks=np.stack(masks), valid_hw=np.stack(valid),
           categories=np.stack([c for _, _, c in examples]))


# ----------------------------------------------------------------------------- driver


SIDES = {"generic_reference": run_generic_reference, "generic_dinoseg": run_generic_dinoseg,
         "bank_reference": run_bank_reference, "bank_dinoseg": run_bank_dinoseg}


def run_side(args, side: str, workdir: pathlib.Path) -> dict:
  print(f"running {side} ...", file=sys.stderr, flush=True)
  if args.in_process:
    return SIDES[side](args, workdir)
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--side={side}", f"--workdir={workdir}",
         f"--dinov={args.dinov}", f"--maskdino={args.maskdino}", f"--detectron2={args.detectron2}",
         f"--config={args.config}", f"--size={args.size}", f"--categories={args.categories}",
         f"--iters={args.iters}", f"--bank-images={args.bank_images}", f"--bank-instances={args.bank_instances}",
         f"--bank-image-hw={args.bank_image_hw[0]},{args.bank_image_hw[1]}", f"--seed={args.seed}",
         f"--threads={args.threads}"] + (["--smoke"] if args.smoke else [])
  proc = subprocess.run(cmd, env=common.thread_env(args.threads), capture_output=True, text=True, timeout=args.timeout)
  if proc.returncode != 0:
    raise RuntimeError(f"{side} failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
  lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
  if not lines:
    raise RuntimeError(f"{side} printed no result:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len(RESULT_TAG):])


def generic_parity(workdir: pathlib.Path) -> dict:
  with np.load(workdir / "generic_reference.npz") as r, np.load(workdir / "generic_dinoseg.npz") as d:
    return {k: common.rel_max_diff(d[k], r[k]) for k in ("logits", "boxes", "masks")}


def generic_report(rows: dict, parity: dict, args) -> str:
  d, r = rows["dinoseg"], rows["reference"]
  return "\n".join([
      f"### Generic inference: {args.size}x{args.size} image, {args.categories} prompt categories, batch 1, float32; "
      f"median of {args.iters} call(s) after a warm-up", "",
      "| side | s / image | first call s | peak RSS MiB (timed calls) | process peak RSS MiB |", "|---|---|---|---|---|",
      f"| dinoseg forward (jit; first call = compile + run) | {d['median_s']:.2f} | {d['first_s']:.1f} | "
      f"{d['rss_mb']:.0f} | {d['process_rss_mb']:.0f} |",
      f"| reference forward (PyTorch eager, bank read from files) | {r['median_s']:.2f} | {r['first_s']:.1f} | "
      f"{r['rss_mb']:.0f} | {r['process_rss_mb']:.0f} |",
      f"| reference / dinoseg (forward) | {r['median_s'] / d['median_s']:.2f}x | | | |",
      f"| dinoseg `DINOvPredictor.predict` (forward + post-processing at {args.size}x{args.size}) | "
      f"{d['predict_s']:.2f} | {d['predict_first_s']:.1f} | {d['predict_rss_mb']:.0f} | |",
      "", "parity of the generic queries' final outputs (max |dinoseg - reference| / max |reference|): "
      + ", ".join(f"{k} {v:.1e}" for k, v in parity.items())])


def bank_report(rows: dict, checks: dict, args) -> str:
  d, r = rows["dinoseg"], rows["reference"]
  n = r["instances"]
  hc, wc = r["canvas"]
  dh, dw = d["default_canvas"]
  return "\n".join([
      f"### Prompt-bank build: {args.bank_images} image(s) of {args.bank_image_hw[0]}x{args.bank_image_hw[1]} with "
      f"{args.bank_instances} instance masks each ({n} instances); second pass (the first compiles)", "",
      "| path | canvas | s | instances / s | first pass s | peak RSS MiB |", "|---|---|---|---|---|---|",
      f"| reference `get_content` + one safetensors file per instance | {hc}x{wc} | {r['second_s']:.2f} | "
      f"{n / r['second_s']:.2f} | {r['first_s']:.1f} | {r['rss_mb']:.0f} |",
      f"| dinoseg `PromptBankEncoder`, same canvas | {hc}x{wc} | {d['same_s']:.2f} | {n / d['same_s']:.2f} | "
      f"{d['same_first_s']:.1f} | {d['same_rss_mb']:.0f} |",
      f"| dinoseg `build_bank` + `write_bank` (library path, static square canvas) | {dh}x{dw} | {d['default_s']:.2f} | "
      f"{d['default_instances'] / d['default_s']:.2f} | {d['default_first_s']:.1f} | {d['default_rss_mb']:.0f} |",
      f"| reference / dinoseg, same canvas | | {r['second_s'] / d['same_s']:.2f}x | | | |",
      "", f"parity of the prompt embeddings (same canvas): max |dinoseg - reference| / max |reference| = "
      f"{checks['embeddings']:.1e}"])


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dinov", default=os.environ.get("DINOV_REFERENCE", "/tmp/ref_dinov"),
                      help="checkout of UX-Decoder/DINOv (tested at 53bf20d)")
  parser.add_argument("--maskdino", default="/tmp/ref_maskdino", help="checkout of IDEA-Research/MaskDINO (its swin.py)")
  parser.add_argument("--detectron2", default="/tmp/ref_detectron2", help="checkout of facebookresearch/detectron2")
  parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"DINOv Swin-T config (default {DEFAULT_CONFIG})")
  parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
  parser.add_argument("--size", type=int, default=1024, help="square image side, a multiple of 32 (default 1024)")
  parser.add_argument("--categories", type=int, default=80, help="prompt categories (default 80)")
  parser.add_argument("--iters", type=int, default=2, help="timed calls after one warm-up (default 2)")
  parser.add_argument("--bank-images", type=int, default=3, help="images of the bank section (default 3)")
  parser.add_argument("--bank-instances", type=int, default=8, help="instance masks per bank image (default 8)")
  parser.add_argument("--bank-image-hw", type=common.parse_hw, default=BANK_IMAGE_HW,
                      help="bank image H,W (default 480,640)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=1,
                      help="CPU threads of each side (torch.set_num_threads, XLA's CPU pool); 0: library defaults")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, in this process (the script's test)")
  parser.add_argument("--in-process", action="store_true", help="run every side in this process (no thread settings)")
  parser.add_argument("--timeout", type=int, default=3600, help="seconds per side (default 3600)")
  parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
  parser.add_argument("--side", choices=tuple(SIDES), help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  return parser


def apply_smoke(args, parser) -> None:
  defaults = {a.dest: a.default for a in parser._actions}  # noqa: SLF001
  tiny = dict(size=64, categories=4, iters=1, bank_images=2, bank_instances=2, bank_image_hw=(48, 64))
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
  if args.size < 32 or args.size % 32:
    parser.error("--size must be a positive multiple of 32")
  if min(args.categories, args.iters, args.bank_images, args.bank_instances) < 1:
    parser.error("--categories, --iters, --bank-images and --bank-instances must be >= 1")
  if args.smoke:
    apply_smoke(args, parser)
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  if args.side:
    print(RESULT_TAG + json.dumps(SIDES[args.side](args, pathlib.Path(args.workdir))), flush=True)
    return 0
  for flag, path, marker in (("--dinov", args.dinov, "dinov/body"), ("--maskdino", args.maskdino, "maskdino/modeling"),
                             ("--detectron2", args.detectron2, "detectron2/modeling")):
    if not (pathlib.Path(path) / marker).is_dir():
      parser.error(f"{flag}={path} is not the expected checkout (no {marker}/ folder)")

  print(common.machine_line())
  print(f"threads per side: {args.threads or 'library defaults'}{' (in one process)' if args.in_process else ''}")
  report: dict = {"args": vars(args), "machine": common.machine_line()}
  with tempfile.TemporaryDirectory(prefix="bench_dinov_") as tmp:
    workdir = pathlib.Path(tmp)
    config = load_dinov_config(args)
    (workdir / "reference_spec.json").write_text(json.dumps(reference_spec(config, args.seed,
                                                                           str(workdir / "reference_prompt_bank"))))
    if "generic" in sections:
      rows = {"reference": run_side(args, "generic_reference", workdir)}  # writes the shared weights
      rows["dinoseg"] = run_side(args, "generic_dinoseg", workdir)
      parity = generic_parity(workdir)
      report["generic"] = {"rows": rows, "parity": parity}
      print(generic_report(rows, parity, args), flush=True)
    if "bank" in sections:
      prepare_bank_inputs(args, config, workdir)
      rows = {"reference": run_side(args, "bank_reference", workdir)}
      rows["dinoseg"] = run_side(args, "bank_dinoseg", workdir)
      with np.load(workdir / "bank_reference.npz") as r, np.load(workdir / "bank_dinoseg.npz") as d:
        checks = {"embeddings": common.rel_max_diff(d["embeddings"], r["embeddings"])}
      report["bank"] = {"rows": rows, "checks": checks}
      print(bank_report(rows, checks, args), flush=True)
  print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
