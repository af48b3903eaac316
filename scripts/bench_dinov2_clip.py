"""Forward throughput of DINOv2-B/14-reg (448 px) and the CLIP ViT-B/16 text tower, JAX vs the reference.

    python scripts/bench_dinov2_clip.py --dinov2 /tmp/ref_dinov2 --clip /tmp/ref_clip

`--dinov2` / `--clip` are checkouts of facebookresearch/dinov2 and openai/CLIP; their
PyTorch models run beside dinoseg's in the same process, with the same random weights
(converted with dinoseg's converters; the largest output difference is printed as a check).
Rows:
- dinov2_vitb14_reg, 448x448 (1029 tokens), batch --dino-batch: images/s, with full attention and
  with `query_chunk_size=--query-chunk` (attention for that many queries at a time).
- clip_vitb16_text, a batch of 80 prompts (Talk2DINO's prompt templates x class names):
  prompts/s at the reference's full 77 positions, and for dinoseg also with the context cut to
  the longest prompt (exact under the causal mask).
Times are the median of --repeats timed calls after one warm-up (JAX: jitted, compile excluded).
"""
import argparse
import os
import pathlib
import sys
import time
import types

import numpy as np

TEMPLATES = ["itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.",
             "a {} in a video game.", "art of the {}.", "a photo of the small {}."]
CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog"]


def _median_time(fn, repeats):
  fn()  # warm-up (and compile)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _random_state(model, torch, seed):
  gen = torch.Generator().manual_seed(seed)
  state = {}
  for name, p in model.state_dict().items():
    if name.endswith("gamma"):
      value = 0.5 + torch.rand(p.shape, generator=gen)
    elif p.ndim >= 2:
      value = torch.randn(p.shape, generator=gen) / np.sqrt(np.prod(p.shape[1:]))
    else:
      value = 1.0 + 0.1 * torch.randn(p.shape, generator=gen) if name.endswith("weight") else \
          0.1 * torch.randn(p.shape, generator=gen)
    state[name] = value.float()
  model.load_state_dict(state, strict=True)
  return {k: v.numpy() for k, v in state.items()}


def bench_dinov2(dinov2_dir, *, batch: int, repeats: int, query_chunk: int, size: int = 448,
                 torch_device: str = "cpu") -> list[tuple]:
  """DINOv2-B/14-reg forward throughput, dinoseg (full attention and `query_chunk_size=query_chunk`) beside
  the reference `dinov2_vitb14_reg` from the checkout `dinov2_dir` (None: dinoseg only, random weights).

  Inputs: (batch, size, size, 3) float32 standard-normal images. The reference runs on `torch_device`
  (synchronized after each call on CUDA); JAX on its default backend.
  Returns rows (model, input description, dinoseg images/s, reference images/s or nan, max |diff| or nan).
  """
  os.environ["XFORMERS_DISABLED"] = "1"
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from dinoseg.backbones.dinov2 import dinov2  # noqa: PLC0415
  from dinoseg.convert import get  # noqa: PLC0415

  images = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
  model = dinov2("dinov2_vitb14_reg")
  x_jax = jnp.asarray(images)
  theirs, t_ref = None, float("nan")
  if dinov2_dir is not None:
    import torch  # noqa: PLC0415
    torch.set_grad_enabled(False)
    sys.path.insert(0, str(dinov2_dir))
    from dinov2.hub.backbones import dinov2_vitb14_reg  # noqa: PLC0415
    ref = dinov2_vitb14_reg(pretrained=False).eval()
    state = _random_state(ref, torch, 0)
    params = get("dinov2_vitb14_reg").to_flax(state)
    ref = ref.to(torch_device)
    x_torch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(torch_device)
    sync = torch.cuda.synchronize if torch_device.startswith("cuda") else (lambda: None)
    theirs = ref.forward_features(x_torch)["x_norm_patchtokens"].float().cpu().numpy()

    def run_ref():
      ref.forward_features(x_torch)
      sync()

    t_ref = _median_time(run_ref, repeats)
  else:
    params = jax.jit(model.init)(jax.random.key(0), x_jax[:1])["params"]
  params = jax.device_put(params)
  rows = []
  for what, chunk in ((f"batch {batch}", None), (f"b{batch}, q-chunk {query_chunk}", query_chunk)):
    net = model if chunk is None else dinov2("dinov2_vitb14_reg", query_chunk_size=chunk)
    fwd = jax.jit(lambda p, x, net=net: net.apply({"params": p}, x).patch_tokens)
    ours = np.asarray(fwd(params, x_jax)).reshape(batch, -1, 768)
    diff = float(np.abs(ours - theirs).max()) if theirs is not None else float("nan")
    t_jax = _median_time(lambda fwd=fwd: fwd(params, x_jax).block_until_ready(), repeats)
    rows.append((f"dinov2_vitb14_reg {size}px", what, batch / t_jax, batch / t_ref, diff))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dinov2", required=True, type=pathlib.Path)
  parser.add_argument("--clip", required=True, type=pathlib.Path)
  parser.add_argument("--dino-batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--query-chunk", type=int, default=128, help="DinoV2.query_chunk_size of the second row")
  args = parser.parse_args()

  os.environ["XFORMERS_DISABLED"] = "1"
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import torch  # noqa: PLC0415

  from dinoseg.backbones.clip_text import clip_text  # noqa: PLC0415
  from dinoseg.backbones.clip_tokenizer import tokenize  # noqa: PLC0415
  from dinoseg.convert import get  # noqa: PLC0415

  torch.set_grad_enabled(False)

  # DINOv2-B/14-reg at 448.
  rows = bench_dinov2(args.dinov2, batch=args.dino_batch, repeats=args.repeats, query_chunk=args.query_chunk)

  # CLIP ViT-B/16 text tower, 80 prompts.
  for module in ("torchvision", "torchvision.transforms"):  # clip/__init__ imports image transforms only
    sys.modules.setdefault(module, types.ModuleType(module))
  tv = sys.modules["torchvision.transforms"]
  for attr in ("Compose", "Resize", "CenterCrop", "ToTensor", "Normalize"):
    setattr(tv, attr, getattr(tv, attr, None))
  tv.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")
  sys.path.insert(0, str(args.clip))
  import clip.model  # noqa: PLC0415
  ref = clip.model.CLIP(embed_dim=512, image_resolution=224, vision_layers=1, vision_width=64,
                        vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=512,
                        transformer_heads=8, transformer_layers=12).eval()
  state = _random_state(ref, torch, 1)
  params = get("clip_vitb16_text").to_flax(state)
  model = clip_text()
  prompts = [t.format(c) for c in CLASSES for t in TEMPLATES][:80]
  prompts += [TEMPLATES[0].format(c) for c in CLASSES][:80 - len(prompts)]
  ids = tokenize(prompts)
  n = len(prompts)
  longest = int((ids != 0).sum(1).max())
  enc = jax.jit(lambda p, i: model.apply({"params": p}, i).text_embeds)
  ids_jax, ids_torch = jnp.asarray(ids), torch.from_numpy(ids.astype(np.int64))
  diff = float(np.abs(np.asarray(enc(params, ids_jax)) - ref.encode_text(ids_torch).numpy()).max())
  t_jax = _median_time(lambda: enc(params, ids_jax).block_until_ready(), args.repeats)
  t_ref = _median_time(lambda: ref.encode_text(ids_torch), args.repeats)
  rows.append(("clip_vitb16_text", f"{n} prompts, L=77", n / t_jax, n / t_ref, diff))
  ids_short = ids_jax[:, :longest]
  t_short = _median_time(lambda: enc(params, ids_short).block_until_ready(), args.repeats)
  rows.append(("clip_vitb16_text", f"{n} prompts, L={longest}", n / t_short, float("nan"), float("nan")))

  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs")
  print(f"{'model':26s} {'input':22s} {'dinoseg/s':>10s} {'reference/s':>12s} {'speedup':>8s} {'max|diff|':>10s}")
  for name, what, ours, theirs, diff in rows:
    speed = f"{ours / theirs:7.2f}x" if theirs == theirs else "       -"
    ref_s = f"{theirs:12.2f}" if theirs == theirs else f"{'-':>12s}"
    print(f"{name:26s} {what:22s} {ours:10.2f} {ref_s} {speed} {diff:10.2e}")


if __name__ == "__main__":
  main()
