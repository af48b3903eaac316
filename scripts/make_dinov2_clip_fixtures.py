"""Writes the DINOv2 / CLIP-text / CLIP-tokenizer parity fixtures by running the reference code.

    python scripts/make_dinov2_clip_fixtures.py --dinov2 /tmp/ref_dinov2 --clip /tmp/ref_clip

`--dinov2` is a checkout of facebookresearch/dinov2, `--clip` one of openai/CLIP. Nothing
is downloaded: the models get random weights and run on CPU with the checkouts' own code.
xformers is disabled (XFORMERS_DISABLED=1), so DINOv2 attention is PyTorch SDPA. CLIP's
`clip/__init__.py` imports torchvision for image transforms that tokenization does not use;
a stand-in `torchvision` module is registered so the checkout's `clip.tokenize` runs
without it.

Outputs (under --out, default tests/fixtures/backbones/):
- dinov2_{reg,noreg,swiglu}_tiny.npz: tiny-width models (config, weights under the
  reference key names, inputs, outputs incl. the last block's q/k/attention maps, and
  gradients of a fixed scalar function of the outputs).
- clip_text_tiny.npz: the same for a tiny CLIP text tower.
- tokenizer_ids.json: `clip.tokenize` ids for hard strings (truncate=True), the untruncated
  encodings, and whether `truncate=False` raises.
- reference_layouts.json: the full-size state-dict key/shape layouts of all eight hub
  DINOv2 models and of CLIP ViT-B/16's text tower (built on the meta device), with the
  per-block keys written once under a `{i}` pattern.

Weights and images are rounded to float16-representable values and stored as float16 (the
values are exact in float32), which halves the fixture size.
"""
import argparse
import json
import math
import os
import pathlib
import sys
import types

import numpy as np

HARD_STRINGS = [
    "",
    "a photo of the small traffic sign.",
    "itap of a tvmonitor.",
    "a origami pottedplant.",
    "a bad photo of a cat in a video game.",
    "  Leading and trailing   whitespace\t\n\r tabs and\nnewlines  ",
    "UPPER lower MiXeD CaSe",
    "Ünïcödé façade naïve café — “curly quotes” ‘single’ … ellipsis",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Arabic العربية, Hebrew עברית, Thai ภาษาไทย, Devanagari हिन्दी, Greek ΑΒΓ αβγ",
    "emoji 😀🚀👍🏽 family 👨‍👩‍👧 and a flag 🇫🇷",
    "HTML &amp;amp; entities &lt;b&gt;bold&lt;/b&gt; &#39;quoted&#39; &nbsp; &eacute;",
    "mojibake: The Mona Lisa doesnâ€™t have eyebrows.",
    "Contractions: I'm, you're, we've, they'll, she'd, it's, don't, CAN'T, Y'ALL'D",
    "numbers 1234567890 3.14159 1,000,000 2nd 3rd ４５６ ٣٤",
    "punctuation!!! ??? ... --- ((())) [[]] {{}} @#$%^&*_+=|\\/<>~`",
    "<|startoftext|> special tokens <|endoftext|> inside <|STARTOFTEXT|>",
    "zero\u200bwidth\u00a0nbsp\u3000ideographic\u2028line separator",
    "combining e\u0301 vs \u00e9, ligatures \ufb01 \ufb02, fullwidth ＡＢＣ",
    "tab\tcontrol\x07bell\x1b[31mansi\x00nul",
    "a " * 75,
    "a " * 76,
    "a very long caption that keeps going " * 12,
    "😀" * 100,
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
]


def _fp16_exact(t):
  return t.half().float()


def _randomize(model, torch, seed):
  """Random float16-exact weights: LayerNorms near 1, Linear ~ 1/sqrt(fan_in), LayerScale in [0.5, 1.5]."""
  gen = torch.Generator().manual_seed(seed)
  state = {}
  for name, p in model.state_dict().items():
    shape = tuple(p.shape)
    randn = torch.randn(shape, generator=gen)
    if name.endswith("gamma"):
      value = 0.5 + torch.rand(shape, generator=gen)
    elif ("norm" in name or "ln_" in name) and name.endswith("weight"):
      value = 1.0 + 0.1 * randn
    elif name.endswith("bias") or name.endswith("in_proj_bias"):
      value = 0.1 * randn
    elif p.ndim >= 2 and ("weight" in name or name == "text_projection"):
      fan_in = int(np.prod(shape[1:])) if name != "text_projection" else shape[0]
      value = randn / math.sqrt(fan_in)
    else:  # tokens, position embeddings, token embedding
      value = 0.5 * randn
    state[name] = _fp16_exact(value)
  model.load_state_dict(state, strict=True)
  return state


def _weights(x, torch):
  """Fixed cotangent-like weights cos(0.37 * i) over the flattened array (same in the tests)."""
  return torch.cos(0.37 * torch.arange(x.numel(), dtype=torch.float64)).float().reshape(x.shape)


def _dinov2_fixtures(dinov2_dir, out, torch):
  os.environ["XFORMERS_DISABLED"] = "1"
  sys.path.insert(0, str(dinov2_dir))
  from functools import partial  # noqa: PLC0415

  from dinov2.layers import MemEffAttention, NestedTensorBlock  # noqa: PLC0415
  from dinov2.models.vision_transformer import DinoVisionTransformer  # noqa: PLC0415

  patch, grid = 14, 3
  cases = {
      # name: (dinoseg DinoV2 config, image (B, H, W), whether to mask random patches)
      "dinov2_reg_tiny": (dict(embed_dim=16, depth=2, num_heads=2, ffn="mlp", num_register_tokens=4,
                               interpolate_antialias=True, interpolate_offset=0.0), (2, 28, 56), False),
      "dinov2_noreg_tiny": (dict(embed_dim=16, depth=2, num_heads=2, ffn="mlp", num_register_tokens=0,
                                 interpolate_antialias=False, interpolate_offset=0.1), (1, 28, 56), True),
      "dinov2_swiglu_tiny": (dict(embed_dim=16, depth=2, num_heads=2, ffn="swiglu", num_register_tokens=4,
                                  interpolate_antialias=True, interpolate_offset=0.0), (1, 42, 42), False),
  }
  for seed, (name, (cfg, (b, h, w), use_masks)) in enumerate(cases.items()):
    torch.manual_seed(seed)
    model = DinoVisionTransformer(
        img_size=patch * grid, patch_size=patch, embed_dim=cfg["embed_dim"], depth=cfg["depth"],
        num_heads=cfg["num_heads"], mlp_ratio=4, init_values=1.0,
        ffn_layer="swiglufused" if cfg["ffn"] == "swiglu" else "mlp", block_chunks=0,
        num_register_tokens=cfg["num_register_tokens"], interpolate_antialias=cfg["interpolate_antialias"],
        interpolate_offset=cfg["interpolate_offset"],
        block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention)).eval()
    state = _randomize(model, torch, 100 + seed)
    gen = torch.Generator().manual_seed(200 + seed)
    images = _fp16_exact(torch.randn(b, 3, h, w, generator=gen)).requires_grad_(True)
    n = (h // patch) * (w // patch)
    masks = (torch.rand(b, n, generator=gen) < 0.3) if use_masks else None

    captured = {}
    model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.__setitem__("qkv", o))
    for p in model.parameters():
      p.requires_grad_(True)
    feats = model.forward_features(images, masks=masks)
    heads, d = cfg["num_heads"], cfg["embed_dim"]
    qkv = captured["qkv"].reshape(b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]  # (B, H, T, hd)
    attn = torch.softmax((q * (d // heads) ** -0.5) @ k.transpose(-2, -1), dim=-1)
    outputs = {"cls_token": feats["x_norm_clstoken"], "register_tokens": feats["x_norm_regtokens"],
               "patch_tokens": feats["x_norm_patchtokens"], "prenorm": feats["x_prenorm"],
               "last_q": q, "last_k": k, "last_attention": attn}
    loss = sum((_weights(outputs[key], torch) * outputs[key]).sum()
               for key in ("cls_token", "register_tokens", "patch_tokens", "last_attention"))
    loss.backward()
    inter = model.get_intermediate_layers(images.detach(), n=[0], norm=True)[0]  # (B, N, D), no CLS

    arrays = {"config": np.array(json.dumps(dict(cfg, pos_embed_grid=grid, patch_size=patch))),
              "images_nhwc": images.detach().permute(0, 2, 3, 1).numpy().astype(np.float16),
              "out/intermediate_0_patches": inter.detach().numpy(),
              "grad/images_nhwc": images.grad.permute(0, 2, 3, 1).numpy()}
    if masks is not None:
      arrays["masks"] = masks.numpy()
    for key, value in state.items():
      arrays[f"param/{key}"] = value.numpy().astype(np.float16)
    for key, value in outputs.items():
      arrays[f"out/{key}"] = value.detach().numpy()
    named = dict(model.named_parameters())
    grad_keys = ["pos_embed", "cls_token", "patch_embed.proj.bias", "blocks.1.attn.qkv.weight",
                 "blocks.0.ls2.gamma", "norm.weight",
                 "blocks.0.mlp.w12.weight" if cfg["ffn"] == "swiglu" else "blocks.0.mlp.fc1.weight"]
    if cfg["num_register_tokens"]:
      grad_keys.append("register_tokens")
    for key in grad_keys:
      arrays[f"grad/{key}"] = named[key].grad.numpy()
    np.savez_compressed(out / f"{name}.npz", **arrays)
    print(f"wrote {name}.npz ({(out / f'{name}.npz').stat().st_size} bytes)")


def _collapse(state_shapes, block_prefix):
  """{key: shape} -> {"num_blocks", "keys"} with the per-block keys written once as `{i}`."""
  blocks, rest = {}, {}
  for key, shape in state_shapes.items():
    if key.startswith(block_prefix):
      index, sub = key[len(block_prefix):].split(".", 1)
      blocks.setdefault(int(index), {})[sub] = shape
    else:
      rest[key] = shape
  first = blocks[0]
  for index, entries in blocks.items():  # collapsing is lossless only if every block is alike
    assert entries == first, f"block {index} differs from block 0"
  rest.update({f"{block_prefix}{{i}}.{sub}": shape for sub, shape in first.items()})
  return {"num_blocks": len(blocks), "keys": rest}


def _layouts(clip_model, torch):
  from dinov2.hub import backbones  # noqa: PLC0415
  layouts = {}
  for arch in ("vits14", "vitb14", "vitl14", "vitg14"):
    for suffix in ("", "_reg"):
      name = f"dinov2_{arch}{suffix}"
      with torch.device("meta"):
        model = getattr(backbones, name)(pretrained=False)
      shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
      layouts[name] = _collapse(shapes, "blocks.")
  with torch.device("meta"):
    model = clip_model.CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                            vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=512,
                            transformer_heads=8, transformer_layers=12)
  shapes = {k: list(v.shape) for k, v in model.state_dict().items()
            if not k.startswith("visual.") and k != "logit_scale"}
  layouts["clip_vitb16_text"] = _collapse(shapes, "transformer.resblocks.")
  layouts["clip_vitb16_text"]["non_text_keys"] = sorted(
      k for k in model.state_dict() if not k.startswith("visual.") and k not in shapes)
  return layouts


def _import_clip(clip_dir):
  """Imports the checkout's `clip` package with a stand-in torchvision (image transforms only)."""
  tv = types.ModuleType("torchvision")
  transforms = types.ModuleType("torchvision.transforms")
  for attr in ("Compose", "Resize", "CenterCrop", "ToTensor", "Normalize"):
    setattr(transforms, attr, lambda *a, **k: None)
  transforms.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")
  tv.transforms = transforms
  sys.modules["torchvision"] = tv
  sys.modules["torchvision.transforms"] = transforms
  sys.path.insert(0, str(clip_dir))
  import clip  # noqa: PLC0415
  import clip.model  # noqa: PLC0415
  import clip.simple_tokenizer  # noqa: PLC0415
  return clip


def _clip_fixtures(clip, out, torch):
  torch.manual_seed(7)
  cfg = dict(vocab_size=64, context_length=16, width=16, num_heads=2, depth=2, embed_dim=12)
  model = clip.model.CLIP(embed_dim=cfg["embed_dim"], image_resolution=32, vision_layers=1, vision_width=64,
                          vision_patch_size=16, context_length=cfg["context_length"],
                          vocab_size=cfg["vocab_size"], transformer_width=cfg["width"],
                          transformer_heads=cfg["num_heads"], transformer_layers=cfg["depth"]).eval()
  state = _randomize(model, torch, 300)
  text_state = {k: v for k, v in state.items() if not k.startswith("visual.")}
  gen = torch.Generator().manual_seed(301)
  sot, eot, length = 62, 63, cfg["context_length"]
  ids = torch.zeros(4, length, dtype=torch.long)
  for row, n_text in enumerate((3, 9, 14, 0)):  # EOT at 4, 10, 15 (last position), 1
    ids[row, 0] = sot
    ids[row, 1:1 + n_text] = torch.randint(1, 62, (n_text,), generator=gen)
    ids[row, 1 + n_text] = eot
  captured = {}
  model.ln_final.register_forward_hook(lambda m, i, o: captured.__setitem__("tokens", o))
  embeds = model.encode_text(ids)
  tokens = captured["tokens"]  # (B, L, W) after ln_final
  loss = (_weights(embeds, torch) * embeds).sum() + (_weights(tokens, torch) * tokens).sum()
  loss.backward()
  named = dict(model.named_parameters())
  arrays = {"config": np.array(json.dumps(cfg)), "ids": ids.numpy().astype(np.int32),
            "out/text_embeds": embeds.detach().numpy(), "out/token_features": tokens.detach().numpy()}
  for key, value in text_state.items():
    arrays[f"param/{key}"] = value.numpy().astype(np.float16)
  for key in ("token_embedding.weight", "positional_embedding", "text_projection",
              "transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.1.mlp.c_proj.bias",
              "ln_final.weight"):
    arrays[f"grad/{key}"] = named[key].grad.numpy()
  np.savez_compressed(out / "clip_text_tiny.npz", **arrays)
  print(f"wrote clip_text_tiny.npz ({(out / 'clip_text_tiny.npz').stat().st_size} bytes)")


def _tokenizer_fixture(clip, out):
  cases = []
  tokenizer = clip.simple_tokenizer.SimpleTokenizer()
  for text in HARD_STRINGS:
    ids = clip.tokenize(text, truncate=True)[0].tolist()
    try:
      clip.tokenize(text)
      raises = False
    except RuntimeError:
      raises = True
    cases.append({"text": text, "ids_truncated": ids, "encode": tokenizer.encode(text), "too_long": raises})
  import ftfy  # noqa: PLC0415
  payload = {"context_length": 77, "ftfy_version": ftfy.__version__, "cases": cases}
  (out / "tokenizer_ids.json").write_text(json.dumps(payload, ensure_ascii=True, indent=None) + "\n")
  print(f"wrote tokenizer_ids.json ({len(cases)} strings)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dinov2", required=True, type=pathlib.Path, help="facebookresearch/dinov2 checkout")
  parser.add_argument("--clip", required=True, type=pathlib.Path, help="openai/CLIP checkout")
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "backbones")
  args = parser.parse_args()
  for path, marker in ((args.dinov2, "dinov2/models/vision_transformer.py"), (args.clip, "clip/model.py")):
    if not (path / marker).is_file():
      parser.error(f"{path} is not a checkout with {marker}")
  import torch  # noqa: PLC0415
  torch.set_num_threads(1)
  args.out.mkdir(parents=True, exist_ok=True)
  _dinov2_fixtures(args.dinov2, args.out, torch)
  clip = _import_clip(args.clip)
  _clip_fixtures(clip, args.out, torch)
  _tokenizer_fixture(clip, args.out)
  layouts = _layouts(clip.model, torch)
  (args.out / "reference_layouts.json").write_text(json.dumps(layouts, indent=1, sort_keys=True) + "\n")
  print("wrote reference_layouts.json")


if __name__ == "__main__":
  main()
