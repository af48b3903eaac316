"""Writes the ResNet / Swin / SegNext-ViT parity fixtures by running the reference code.

    python scripts/make_backbone_fixtures.py --detectron2 /tmp/ref_detectron2 \
        --maskdino /tmp/ref_maskdino --segnext /tmp/ref_segnext

Checkouts: facebookresearch/detectron2 (ResNet, and the detectron2 names Swin imports),
IDEA-Research/MaskDINO (`D2SwinTransformer`), uncbiag/SegNext (`VisionTransformer`). Nothing is
downloaded or installed: `scripts/backbone_references.py` executes the reference files from the
checkouts with small stand-ins for fvcore/timm helpers. Models get random weights and run on CPU
in float32.

Outputs (under --out, default tests/fixtures/backbones/):
- resnet_tiny.npz: detectron2 `build_resnet_backbone` (depth 50 block counts, stem 4, res2 8,
  bottleneck 2 channels), FrozenBN; outputs res2..res5 for the default setting and for
  stride_in_1x1=True + res5_dilation=2 (same weights); gradients w.r.t. the input and some weights.
- swin_tiny.npz: `D2SwinTransformer` (embed 6, depths 2-2-2-2, heads 1-2-3-6, window 7, MLP ratio 2)
  on a 45x62 input (patch-embed padding, window padding, odd patch merging, windows larger than
  the map); outputs res2..res5, attention probabilities of every block (3 query rows per window:
  first, middle, last), parameter gradients.
- vit_tiny.npz: SegNext `VisionTransformer` (width 16, depth 4, 2 heads, global_atten_freq 2) on
  448x336 inputs (2x1 windows of 14x21 tokens); output map, attention probabilities of blocks 0
  (window) and 1 (global) at 3 query rows, parameter gradients. The input is not stored: it is
  `vit_input(shape)` below (the test recomputes it; a checksum is stored).

- backbone_layouts.json.gz: the full-size state-dict layouts ([key, shape, dtype] in state-dict order)
  of detectron2 ResNet-50/101 (FrozenBN, stride on the 3x3 conv), MaskDINO Swin-T (window 7) and
  Swin-L (window 12), and SegNext's ViT-B/16 at 1024, built on the meta device (Swin on the CPU:
  it calls .item() while building).

Every .npz holds `config` (JSON: dinoseg constructor kwargs, the reference state-dict keys),
`param/<reference key>` (random float16-exact weights stored as float16; buffers as saved by
torch), `out/...`, `attn/...`, `grad/...` (torch autograd gradients of
sum_outputs sum_i cos(0.37 i) * output_i over each output flattened in NCHW order).
"""
import argparse
import gzip
import json
import math
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import backbone_references as refs  # noqa: E402

RESNET_CFG = dict(stem_channels=4, res2_channels=8, bottleneck_channels=2, stage_blocks=(3, 4, 6, 3))
SWIN_CFG = dict(embed_dim=6, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 6), window_size=7, mlp_ratio=2.0)
VIT_CFG = dict(img_size=(448, 336), patch_size=16, embed_dim=16, depth=4, num_heads=2, mlp_ratio=4.0,
               global_atten_freq=2)


def vit_input(shape) -> np.ndarray:
  """The ViT fixture's input (B, 3, H, W) as a formula (448x336 images are too big to store)."""
  i = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
  return (1.5 * np.sin(0.0137 * i + 0.3) + 0.25 * np.cos(0.00071 * i)).astype(np.float32)


def _weights(x, torch):
  """Fixed weights cos(0.37 * i) over the flattened array (same in the tests)."""
  return torch.cos(0.37 * torch.arange(x.numel(), dtype=torch.float64)).float().reshape(x.shape)


def _randomize(model, torch, seed):
  """Random float16-exact weights for every float tensor of the state dict; loads them; returns the state."""
  gen = torch.Generator().manual_seed(seed)
  state = {}
  for name, t in model.state_dict().items():
    shape = tuple(t.shape)
    if not t.is_floating_point():
      state[name] = t.clone()
      continue
    randn = torch.randn(shape, generator=gen)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
      value = 0.5 + torch.rand(shape, generator=gen)
    elif leaf == "running_mean":
      value = 0.1 * randn
    elif t.ndim == 1 and leaf == "weight":  # norm scales
      value = 1.0 + 0.1 * randn
    elif leaf == "bias":
      value = 0.1 * randn
    elif leaf in ("relative_position_bias_table", "pos_embed"):
      value = 0.5 * randn
    else:  # conv / linear weights
      value = randn / math.sqrt(int(np.prod(shape[1:])))
    state[name] = value.half().float()
  model.load_state_dict(state, strict=True)
  return state


def _loss(outputs, torch):
  return sum((_weights(o, torch) * o).sum() for o in outputs)


def _save(path: pathlib.Path, arrays: dict) -> None:
  np.savez_compressed(path, **arrays)
  print(f"wrote {path.name} ({path.stat().st_size} bytes)")


def _params(state, arrays):
  for key, value in state.items():
    value = value.numpy()
    arrays[f"param/{key}"] = value.astype(np.float16) if value.dtype == np.float32 else value


def _query_rows(n):
  return [0, n // 2, n - 1]


def resnet_fixture(d2_dir, out, torch):
  cfg = RESNET_CFG
  common = dict(depth=50, stem_channels=cfg["stem_channels"], res2_channels=cfg["res2_channels"],
                width_per_group=cfg["bottleneck_channels"])
  model = refs.build_reference_resnet(d2_dir, **common)
  state = _randomize(model, torch, 11)
  gen = torch.Generator().manual_seed(12)
  images = torch.randn(2, 3, 37, 50, generator=gen).half().float().requires_grad_(True)
  names = ("res2", "res3", "res4", "res5")
  feats = model(images)
  _loss([feats[n] for n in names], torch).backward()
  arrays = {"config": np.array(json.dumps(dict(resnet=cfg, state_keys=list(state)))),
            "images_nchw": images.detach().numpy().astype(np.float16),
            "grad/images_nchw": images.grad.numpy()}
  _params(state, arrays)
  for n in names:
    arrays[f"out/{n}"] = feats[n].detach().numpy()
  named = dict(model.named_parameters())
  for key in ("stem.conv1.weight", "res2.0.shortcut.weight", "res4.2.conv2.weight", "res5.2.conv3.weight"):
    arrays[f"grad/{key}"] = named[key].grad.numpy()
  # MSRA-style stride placement and a dilated res5, same weights.
  variant = refs.build_reference_resnet(d2_dir, stride_in_1x1=True, res5_dilation=2, **common)
  variant.load_state_dict(state, strict=True)
  with torch.no_grad():
    feats = variant(images.detach())
  for n in names:
    arrays[f"out_stride1x1_dil2/{n}"] = feats[n].numpy()
  _save(out / "resnet_tiny.npz", arrays)


def swin_fixture(maskdino_dir, d2_dir, out, torch):
  cfg = SWIN_CFG
  model = refs.build_reference_swin(maskdino_dir, d2_dir, **cfg)
  state = _randomize(model, torch, 21)
  gen = torch.Generator().manual_seed(22)
  images = torch.randn(2, 3, 45, 62, generator=gen).half().float()
  captured = {}
  for s, layer in enumerate(model.layers):
    for b, block in enumerate(layer.blocks):
      key = f"layers.{s}.blocks.{b}"
      block.attn.attn_drop.register_forward_hook(lambda m, i, o, key=key: captured.__setitem__(key, o))
  feats = model(images)
  names = ("res2", "res3", "res4", "res5")
  _loss([feats[n] for n in names], torch).backward()
  arrays = {"config": np.array(json.dumps(dict(swin=cfg, state_keys=list(state)))),
            "images_nchw": images.numpy().astype(np.float16)}
  _params(state, arrays)
  for n in names:
    arrays[f"out/{n}"] = feats[n].detach().numpy()
  for key, attn in captured.items():  # (B * windows, heads, N, N)
    arrays[f"attn/{key}"] = attn.detach()[:, :, _query_rows(attn.shape[2])].numpy()
  named = dict(model.named_parameters())
  for key in ("patch_embed.proj.weight", "layers.0.blocks.1.attn.relative_position_bias_table",
              "layers.0.blocks.1.attn.qkv.weight", "layers.1.downsample.reduction.weight",
              "layers.2.blocks.1.mlp.fc1.bias", "norm3.weight"):
    arrays[f"grad/{key}"] = named[key].grad.numpy()
  _save(out / "swin_tiny.npz", arrays)


def vit_fixture(segnext_dir, out, torch):
  cfg = VIT_CFG
  model = refs.build_reference_vit(segnext_dir, **cfg)
  state = _randomize(model, torch, 31)
  shape = (2, 3) + tuple(cfg["img_size"])
  images = torch.from_numpy(vit_input(shape))
  captured = {}
  for i in (0, 1):
    model.blocks[i].attn.attn_drop.register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, o))
  feats = model(images, keep_shape=True)  # (B, C, h, w)
  _loss([feats], torch).backward()
  arrays = {"config": np.array(json.dumps(dict(vit=cfg, state_keys=list(state),
                                               input_shape=list(shape), input_sum=float(vit_input(shape).sum()))))}
  _params(state, arrays)
  arrays["out/features"] = feats.detach().numpy()
  for i, attn in captured.items():
    arrays[f"attn/blocks.{i}"] = attn.detach()[:, :, _query_rows(attn.shape[2])].numpy()
  named = dict(model.named_parameters())
  for key in ("pos_embed", "patch_embed.proj.bias", "blocks.0.attn.qkv.weight", "blocks.1.attn.proj.bias",
              "blocks.3.mlp.fc2.weight", "blocks.2.norm1.weight"):
    arrays[f"grad/{key}"] = named[key].grad.numpy()
  _save(out / "vit_tiny.npz", arrays)


def layouts_fixture(d2_dir, maskdino_dir, segnext_dir, out, torch):
  swin_t = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
  swin_l = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12)
  builders = {
      "resnet50": lambda: refs.build_reference_resnet(d2_dir, depth=50),
      "resnet101": lambda: refs.build_reference_resnet(d2_dir, depth=101),
      "swin_tiny": lambda: refs.build_reference_swin(maskdino_dir, d2_dir, **swin_t),
      "swin_large": lambda: refs.build_reference_swin(maskdino_dir, d2_dir, **swin_l),
      "segnext_vit_b": lambda: refs.build_reference_vit(segnext_dir, img_size=(1024, 1024)),
  }
  layouts = {}
  for name, build in builders.items():
    # Swin calls .item() while building, which meta tensors cannot do: build it on the CPU.
    with torch.device("cpu" if name.startswith("swin") else "meta"):
      model = build()
    layouts[name] = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()]
  path = out / "backbone_layouts.json.gz"
  with gzip.GzipFile(path, "wb", mtime=0) as f:
    f.write((json.dumps(layouts, separators=(",", ":")) + "\n").encode())
  print(f"wrote {path.name} ({path.stat().st_size} bytes)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--detectron2", required=True, type=pathlib.Path,
                      help="facebookresearch/detectron2 checkout")
  parser.add_argument("--maskdino", required=True, type=pathlib.Path, help="IDEA-Research/MaskDINO checkout")
  parser.add_argument("--segnext", required=True, type=pathlib.Path, help="uncbiag/SegNext checkout")
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "backbones")
  args = parser.parse_args()
  for path, marker in ((args.detectron2, "detectron2/modeling/backbone/resnet.py"),
                       (args.maskdino, "maskdino/modeling/backbone/swin.py")):
    if not (path / marker).is_file():
      parser.error(f"{path} is not a checkout with {marker}")
  if not any((args.segnext / p / "isegm/model/modeling/models_vit.py").is_file() for p in ("", "segnext")):
    parser.error(f"{args.segnext} is not a SegNext checkout (no segnext/isegm/model/modeling/models_vit.py)")
  import warnings  # noqa: PLC0415

  import torch  # noqa: PLC0415
  warnings.filterwarnings("ignore", message="torch.meshgrid")
  torch.set_num_threads(1)
  args.out.mkdir(parents=True, exist_ok=True)
  resnet_fixture(args.detectron2, args.out, torch)
  swin_fixture(args.maskdino, args.detectron2, args.out, torch)
  vit_fixture(args.segnext, args.out, torch)
  layouts_fixture(args.detectron2, args.maskdino, args.segnext, args.out, torch)


if __name__ == "__main__":
  main()
