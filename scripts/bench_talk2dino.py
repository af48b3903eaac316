"""Talk2DINO open-vocabulary inference: time per image, dinoseg beside the reference, one run.

    python scripts/bench_talk2dino.py --talk2dino /tmp/ref_t2d --dinov2 /tmp/ref_dinov2 --clip /tmp/ref_clip

A VOC-sized image (375 x 500, resized to 448 x 597: two 448 x 448 windows) with the VOC21
settings (20 classes + background channel, background cleaning, PAMR 10 iterations with
dilations 1..24) through:
- the reference: DINOText.generate_masks inside DINOTextSegInference and the mmseg 0.x sliding
  window (the stand-ins of scripts/make_talk2dino_fixtures.py), DINOv2 ViT-B/14 with registers
  at full size with random weights (xformers disabled: PyTorch SDPA), windows one after the other;
- dinoseg: the same weights converted, both windows through DINOv2 as one jitted batch, PAMR,
  stitching, the resize to the original size and the argmax jitted.
Both start from the resized image (the test-time resize belongs to the data pipeline; dinoseg's
host-side resize is timed separately). Median of --repeats calls after a warm-up call (which
includes dinoseg's compilation, reported apart). The label maps of the two are compared.

Class embeddings are random unit vectors (the text side runs once per benchmark, not per image).
`--device gpu` runs dinoseg on the default JAX backend and the reference on CUDA when available.
"""
import argparse
import importlib.util
import pathlib
import statistics
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
VITB_REG = dict(embed_dim=768, depth=12, num_heads=12, num_register_tokens=4, pos_embed_grid=37)
TINY_CLIP = dict(width=16, num_heads=2, depth=1, embed_dim=512, context_length=77, vocab_size=49408)


def _fixture_helpers():
  spec = importlib.util.spec_from_file_location("make_talk2dino_fixtures", HERE / "make_talk2dino_fixtures.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _timed(fn, repeats):
  t0 = time.perf_counter()
  out = fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return out, first, statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--talk2dino", required=True, type=pathlib.Path)
  parser.add_argument("--dinov2", required=True, type=pathlib.Path)
  parser.add_argument("--clip", required=True, type=pathlib.Path)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--classes", type=int, default=20)
  parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
  parser.add_argument("--skip-reference", action="store_true")
  parser.add_argument("--no-pamr", action="store_true", help="both pipelines without PAMR")
  args = parser.parse_args()
  helpers = _fixture_helpers()
  import jax  # noqa: PLC0415
  import torch  # noqa: PLC0415

  from dinoseg.backbones.clip_text import clip_text  # noqa: PLC0415
  from dinoseg.backbones.dinov2 import dinov2  # noqa: PLC0415
  from dinoseg.convert import get  # noqa: PLC0415
  from dinoseg.models.talk2dino import inference as inf  # noqa: PLC0415
  from dinoseg.models.talk2dino.model import Talk2Dino  # noqa: PLC0415
  from dinoseg.models.talk2dino.projection import TextProjection  # noqa: PLC0415

  jax.config.update("jax_default_matmul_precision", "highest")
  rng = np.random.default_rng(0)
  h0, w0 = args.size
  blocks = rng.integers(0, 256, (8, 10, 3))
  image = np.repeat(np.repeat(blocks, -(-h0 // 8), 0), -(-w0 // 10), 1)[:h0, :w0]
  image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
  settings = inf.InferenceSettings(with_background=True, bg_thresh=0.55, bg_clean=True, pamr=not args.no_pamr)
  resized = inf.resize_short_side(image, settings.short_side, settings.max_long_side)
  text = rng.normal(size=(args.classes, 768)).astype(np.float32)
  text /= np.linalg.norm(text, axis=-1, keepdims=True)

  # The reference, assembled with the fixture script's stand-ins, full-size DINOv2-B/14-reg.
  import os  # noqa: PLC0415
  cwd = os.getcwd()
  os.chdir(args.talk2dino.resolve())
  try:
    ref = helpers._import_reference(argparse.Namespace(talk2dino=args.talk2dino.resolve(), dinov2=args.dinov2.resolve(),
                                                       clip=args.clip.resolve()), torch)
    m, dino_state, _, proj_state = helpers._build_dinotext(ref, torch, with_bg_clean=True, dino_cfg=VITB_REG,
                                                           clip_cfg=TINY_CLIP, window=448)
  finally:
    os.chdir(cwd)
  threads = torch.get_num_threads()
  seg_ref = ref.DINOTextSegInference(m, torch.tensor(text), [str(i) for i in range(args.classes)], with_bg=True,
                                     test_cfg=dict(mode="slide", stride=(224, 224), crop_size=(448, 448)),
                                     pamr=not args.no_pamr, bg_thresh=0.55)
  img_bgr = torch.tensor(resized, dtype=torch.float32).permute(2, 0, 1)[None, [2, 1, 0]]
  img_meta = [{"ori_shape": (h0, w0, 3), "img_shape": resized.shape}]

  # dinoseg with the same weights.
  model = Talk2Dino(dinov2=dinov2("dinov2_vitb14_reg"), clip_text=clip_text(), projection=TextProjection(768))
  params = {"dinov2": jax.device_put(get("dinov2_vitb14_reg").to_flax({k: v.numpy() for k, v in dino_state.items()})),
            "projection": get("talk2dino_vitb_mlp_infonce").to_flax({k: v.numpy() for k, v in proj_state.items()})}
  seg = inf.Talk2DinoSegmenter(model, params, settings)
  seg.set_text_embeddings(text)
  prepared = inf.prepare_resized(resized, (h0, w0), settings)

  def ours():
    return seg.segment_prepared(prepared)

  labels, ours_first, ours_median = _timed(ours, args.repeats)
  _, _, resize_median = _timed(lambda: inf.resize_short_side(image), args.repeats)
  rows = [("dinoseg (jit, 1 batch of windows)", ours_median, ours_first)]
  agree = None
  if not args.skip_reference:
    with torch.no_grad():
      ref_labels, ref_first, ref_median = _timed(lambda: seg_ref.simple_test(img_bgr, img_meta)[0].numpy(),
                                                 args.repeats)
    rows.append(("reference (PyTorch, window loop)", ref_median, ref_first))
    agree = float((labels == ref_labels).mean())
  print(f"image {h0}x{w0} -> {resized.shape[0]}x{resized.shape[1]}, {len(prepared.boxes)} windows of 448, "
        f"{args.classes} classes + background, bg cleaning, "
        f"{'no PAMR' if args.no_pamr else 'PAMR 10 x (1,2,4,8,12,24)'}; "
        f"JAX backend {jax.default_backend()}, torch threads {threads}")
  print("| pipeline | s / image (median) | first call (s) |")
  print("|---|---|---|")
  for name, median, first in rows:
    print(f"| {name} | {median:.2f} | {first:.1f} |")
  print(f"| dinoseg host resize 375x500 -> 448x597 | {resize_median:.3f} | - |")
  if agree is not None:
    print(f"speed-up {rows[1][1] / rows[0][1]:.2f}x; identical labels on {100 * agree:.3f}% of the pixels")
  return 0


if __name__ == "__main__":
  sys.exit(main())
