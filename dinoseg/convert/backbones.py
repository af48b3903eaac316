"""Key maps and registered converters for the ResNet, Swin and SegNext-ViT backbones.

Torch layouts (the reference checkpoints; `backbone.` prefix as in Mask DINO / SegNext files):
- ResNet (detectron2): `stem.conv1.{weight, norm.*}`, `res{2..5}.{i}.conv{1,2,3}.{weight, norm.*}`,
  `res{k}.0.shortcut.{weight, norm.*}`; FrozenBN `norm.{weight, bias, running_mean, running_var}`
  <-> the "frozen_bn" collection. Converters: `resnet50`, `resnet101` (variables = params +
  frozen_bn). Import also accepts torchvision ImageNet state dicts (`conv1`, `bn1`, `layerN.i.bnK`,
  `downsample.{0,1}`), renamed as detectron2's `tools/convert-torchvision-to-d2.py` does; the
  classification head (`fc.*` / `stem.fc.*`) and `num_batches_tracked` are dropped.
- Swin (MaskDINO `D2SwinTransformer`): `patch_embed.{proj, norm}`, `layers.{s}.blocks.{b}.{norm1,
  attn.{qkv, proj, relative_position_bias_table}, norm2, mlp.{fc1, fc2}}`, `layers.{s}.downsample.{norm,
  reduction}`, `norm{0..3}`; `attn.relative_position_index` (int64) is checked on import and rebuilt
  on export. Converters: `swin_tiny`, `swin_small`, `swin_base`, `swin_base_224`, `swin_large`,
  `swin_large_224` (params only). `swin_*_imagenet` import the ImageNet classification checkpoints
  (Swin repository `.pth` or MaskDINO's converted `.pkl`) for training: `head.*`, the final `norm.*` and
  `attn_mask` buffers are dropped and the output norms `norm{0..3}`, which those files lack, are set to
  weight 1 / bias 0 (torch's LayerNorm init, what detectron2 leaves them at); export writes the D2 layout.
- SegNext ViT: `pos_embed`, `patch_embed.proj`, `blocks.{i}.{norm1, attn.{qkv, proj}, norm2, mlp.{fc1,
  fc2}}`, `fc_norm` (unused by the model, carried). Converter: `segnext_vit_b` (params only).
  `resize_pos_embed` fits other position grids (MAE's 14 x 14 -> SegNext's 64 x 64), as `config.init`'s
  "backbone" converter does (dinoseg.convert.init).

Import (`to_flax`) unwraps `{"model": ...}` / `{"state_dict": ...}` checkpoints, strips a `backbone.`
prefix when every key has it, and checks every shape against the model built by
`jax.eval_shape`. Export (`to_torch`) writes the keys without prefix; `keymap(...).prefixed(
"backbone.", ("backbone",))` gives the map as a part of a system's checkpoint.
"""
import functools
import re
from typing import Any, Mapping

import numpy as np

from dinoseg.convert.keymap import (CONV, KeyMap, KeyMismatchError, Rule, buffer, check_against, conv_rules,
                                    frozen_bn_rules, layer_norm_rules, linear_rules, one, strip_prefix)
from dinoseg.convert.registry import ModelConverter, register

BACKBONE_PREFIX = "backbone."
_TV_STAGE = re.compile(r"^layer([1-4])\.")


def unwrap_checkpoint(obj: Mapping[str, Any]) -> dict[str, Any]:
  """A state dict from a loaded checkpoint: `{"model": sd, ...}` (detectron2), `{"state_dict": sd, ...}`
  (SegNext, Lightning) or a plain state dict (its non-array entries, e.g. `__author__`, are an error
  for the key map to report)."""
  for key in ("model", "state_dict"):
    if key in obj and isinstance(obj[key], Mapping):
      return dict(obj[key])
  return dict(obj)


# ----------------------------------------------------------------------------- ResNet

def is_torchvision_resnet(state: Mapping[str, Any]) -> bool:
  return "conv1.weight" in state and any(_TV_STAGE.match(k) for k in state)


def torchvision_to_detectron2(state: Mapping[str, Any]) -> dict[str, Any]:
  """torchvision ResNet keys -> detectron2 keys (the renaming of detectron2's convert-torchvision-to-d2)."""
  out = {}
  for key, value in state.items():
    new = key if key.startswith("layer") else "stem." + key
    for t in (1, 2, 3, 4):
      new = new.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
      new = new.replace(f"bn{t}", f"conv{t}.norm")
    new = new.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    out[new] = value
  return out


def resnet_keymap(model) -> KeyMap:
  """The detectron2 key map of a `dinoseg.backbones.resnet.ResNet` (its built stages and shortcuts)."""
  from dinoseg.backbones.resnet import STAGE_NAMES  # noqa: PLC0415
  rules: list[Rule] = [one("stem.conv1.weight", ("params", "stem", "conv1", "kernel"), CONV)]
  rules += frozen_bn_rules("stem.conv1.norm", ("stem", "conv1", "norm"))
  last = max({"stem": 1, "res2": 2, "res3": 3, "res4": 4, "res5": 5}[f] for f in model.out_features)
  in_ch, out_ch = model.stem_channels, model.res2_channels
  for idx, (stage, n) in enumerate(zip(STAGE_NAMES, model.stage_blocks), start=2):
    if idx > last:
      break
    for i in range(n):
      t, f = f"{stage}.{i}", f"{stage}_{i}"
      # detectron2 creates `shortcut` before conv1..3 (state-dict order).
      convs = (["shortcut"] if i == 0 and in_ch != out_ch else []) + ["conv1", "conv2", "conv3"]
      for conv in convs:
        rules.append(one(f"{t}.{conv}.weight", ("params", f, conv, "kernel"), CONV))
        rules += frozen_bn_rules(f"{t}.{conv}.norm", (f, conv, "norm"))
    in_ch, out_ch = out_ch, out_ch * 2
  return KeyMap(rules, ignore=[r"\.num_batches_tracked$", r"^stem\.fc\.(weight|bias)$"])


# ----------------------------------------------------------------------------- Swin

def swin_keymap(model, output_norms: bool = True) -> KeyMap:
  """The D2SwinTransformer key map of a `dinoseg.backbones.swin.SwinTransformer` (without `norm{i}`
  when `output_norms` is False: the ImageNet classification layout lacks them)."""
  from dinoseg.backbones.swin import relative_position_index  # noqa: PLC0415
  p = ("params",)
  rules = conv_rules("patch_embed.proj", p + ("patch_embed", "proj"))
  if model.patch_norm:
    rules += layer_norm_rules("patch_embed.norm", p + ("patch_embed", "norm"))
  index = functools.partial(relative_position_index, model.window_size)
  for s, depth in enumerate(model.depths):
    for b in range(depth):
      t, f = f"layers.{s}.blocks.{b}", p + (f"layers_{s}", f"blocks_{b}")
      rules += layer_norm_rules(f"{t}.norm1", f + ("norm1",))
      rules.append(one(f"{t}.attn.relative_position_bias_table", f + ("attn", "relative_position_bias_table")))
      rules.append(buffer(f"{t}.attn.relative_position_index", index))
      rules += linear_rules(f"{t}.attn.qkv", f + ("attn", "qkv"), bias=model.qkv_bias)
      rules += linear_rules(f"{t}.attn.proj", f + ("attn", "proj"))
      rules += layer_norm_rules(f"{t}.norm2", f + ("norm2",))
      rules += linear_rules(f"{t}.mlp.fc1", f + ("mlp", "fc1"))
      rules += linear_rules(f"{t}.mlp.fc2", f + ("mlp", "fc2"))
    if s < len(model.depths) - 1:
      t, f = f"layers.{s}.downsample", p + (f"layers_{s}", "downsample")
      rules += linear_rules(f"{t}.reduction", f + ("reduction",), bias=False)
      rules += layer_norm_rules(f"{t}.norm", f + ("norm",))
  if output_norms:
    for i in range(len(model.depths)):
      rules += layer_norm_rules(f"norm{i}", p + (f"norm{i}",))
  return KeyMap(rules)


# Keys of Swin ImageNet classification checkpoints (the Swin repository's `{"model": ...}` .pth, or the
# .pkl that MaskDINO's `convert-pretrained-swin-model-to-d2.py` makes of it, keys unchanged) that the
# detection backbone does not use: the classifier, its final norm, the shifted-window mask buffers.
SWIN_CLASSIFICATION_IGNORED = (r"^head\.(weight|bias)$", r"^norm\.(weight|bias)$", r"\.attn_mask$")


def swin_classification_to_flax(model, state: Mapping[str, Any]) -> dict:
  """Swin ImageNet classification weights -> SwinTransformer params (the training initialization).

  Every backbone weight must be present (strict, shapes checked); `head.*`, the final `norm.*` and
  `attn_mask` buffers are dropped. The output norms `norm{i}` do not exist in these checkpoints: they
  are set to weight 1, bias 0, which is how torch initializes them when detectron2 loads such a file
  (and a warning names them).
  """
  import logging  # noqa: PLC0415
  km = swin_keymap(model, output_norms=False)
  km = KeyMap(km.rules, ignore=SWIN_CLASSIFICATION_IGNORED)
  state = strip_prefix(unwrap_checkpoint(state), BACKBONE_PREFIX)
  present = [k for k in state if re.match(r"^norm\d+\.", k)]
  if present:
    raise KeyMismatchError("this looks like a detection checkpoint (it has the output norms); use the swin_* "
                           "converter instead of the classification one", unexpected=present)
  params = km.to_flax(state)["params"]
  for i, c in enumerate(model.num_features):
    params[f"norm{i}"] = {"scale": np.ones((c,), np.float32), "bias": np.zeros((c,), np.float32)}
  logging.getLogger(__name__).warning(
      "norm0..norm%d are not in classification checkpoints: initialized to weight 1, bias 0",
      len(model.depths) - 1)
  check_against({"params": params}, abstract_variables(model, _probe_shape(model)))
  return params


# ----------------------------------------------------------------------------- SegNext ViT

def vit_keymap(model) -> KeyMap:
  """The SegNext `VisionTransformer` key map of a `dinoseg.backbones.vit.PlainViT`."""
  p = ("params",)
  rules = [one("pos_embed", p + ("pos_embed",))]
  rules += conv_rules("patch_embed.proj", p + ("patch_embed", "proj"))
  for i in range(model.depth):
    t, f = f"blocks.{i}", p + (f"blocks_{i}",)
    rules += layer_norm_rules(f"{t}.norm1", f + ("norm1",))
    rules += layer_norm_rules(f"{t}.norm2", f + ("norm2",))
    rules += linear_rules(f"{t}.attn.qkv", f + ("attn", "qkv"), bias=model.qkv_bias)
    rules += linear_rules(f"{t}.attn.proj", f + ("attn", "proj"))
    rules += linear_rules(f"{t}.mlp.fc1", f + ("mlp", "fc1"))
    rules += linear_rules(f"{t}.mlp.fc2", f + ("mlp", "fc2"))
  rules += layer_norm_rules("fc_norm", p + ("fc_norm",))
  return KeyMap(rules)


def resize_pos_embed(pos_embed: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """A ViT position embedding (1, 1 + s*s, C) (CLS slot first, square patch grid s x s) -> (1, 1 + gh*gw, C)
  for `grid` = (gh, gw): the patch part resized bicubically (align_corners=False, MAE's / SegNext's
  `interpolate_pos_embed`), the CLS slot kept. Returned unchanged when the grid already fits, or when the
  token count is not 1 + a square (the shape check then reports it)."""
  from dinoseg.ops import interpolate  # noqa: PLC0415
  pe = np.asarray(pos_embed)
  side = int(round((pe.shape[1] - 1) ** 0.5)) if pe.ndim == 3 else 0
  if pe.ndim != 3 or side * side != pe.shape[1] - 1 or (side, side) == tuple(grid):
    return pe
  tokens = pe[:, 1:].reshape(1, side, side, pe.shape[-1]).astype(np.float32)
  tokens = np.asarray(interpolate(tokens, tuple(grid), mode="bicubic", align_corners=False)).astype(pe.dtype)
  return np.concatenate([pe[:, :1], tokens.reshape(1, grid[0] * grid[1], -1)], 1)


# ----------------------------------------------------------------------------- converters

def abstract_variables(model, image_shape) -> dict:
  """jax.eval_shape of `model.init` on zeros of `image_shape` (no computation, no memory)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(image_shape, jnp.float32))
  variables = dict(variables)
  variables.pop("intermediates", None)
  return variables


def _probe_shape(model) -> tuple[int, ...]:
  img_size = getattr(model, "img_size", None)
  return (1, *img_size, 3) if img_size is not None else (1, 64, 64, 3)


def keymap_for(model) -> KeyMap:
  """The key map of a ResNet, SwinTransformer or PlainViT instance."""
  from dinoseg.backbones.resnet import ResNet  # noqa: PLC0415
  from dinoseg.backbones.swin import SwinTransformer  # noqa: PLC0415
  from dinoseg.backbones.vit import PlainViT  # noqa: PLC0415
  for cls, make in ((ResNet, resnet_keymap), (SwinTransformer, swin_keymap), (PlainViT, vit_keymap)):
    if isinstance(model, cls):
      return make(model)
  raise ValueError(f"no backbone key map for {type(model).__name__}")


def backbone_to_flax(model, state: Mapping[str, Any]) -> dict:
  """A torch state dict / checkpoint -> Flax variables (ResNet: params + frozen_bn) or params (Swin, ViT).

  Unwraps {"model": ...} / {"state_dict": ...}, strips a `backbone.` prefix present on every key,
  renames torchvision ResNet keys, and checks every shape against `model`.
  """
  from dinoseg.backbones.layers import FROZEN_BN  # noqa: PLC0415
  km = keymap_for(model)
  state = unwrap_checkpoint(state)
  under = sum(k.startswith(BACKBONE_PREFIX) for k in state)
  if 0 < under < len(state):
    others = sorted({k.split(".", 1)[0] + "." for k in state if not k.startswith(BACKBONE_PREFIX)})
    raise KeyMismatchError(f"{under} of {len(state)} keys are under {BACKBONE_PREFIX!r}, the others under "
                           f"{', '.join(others[:5])}: this is a full system checkpoint; select the backbone "
                           f"(dinoseg convert --select-prefix {BACKBONE_PREFIX})",
                           unexpected=[k for k in state if not k.startswith(BACKBONE_PREFIX)])
  state = strip_prefix(state, BACKBONE_PREFIX)
  if is_torchvision_resnet(state):
    state = torchvision_to_detectron2(state)
  variables = km.to_flax(state, expected=abstract_variables(model, _probe_shape(model)))
  return variables if FROZEN_BN in variables else variables["params"]


def backbone_to_torch(model, tree: Mapping) -> dict[str, np.ndarray]:
  """Flax variables (ResNet) or params (Swin, ViT; {"params": ...} accepted too) -> torch state dict."""
  from dinoseg.backbones.resnet import ResNet  # noqa: PLC0415
  if not isinstance(model, ResNet) and set(tree) != {"params"}:
    tree = {"params": tree}
  return keymap_for(model).to_torch(tree)


def backbone_converter(name: str, model, description: str = "") -> ModelConverter:
  """A ModelConverter for a backbone instance (ResNet, SwinTransformer or PlainViT)."""
  from dinoseg.backbones.resnet import ResNet  # noqa: PLC0415
  return ModelConverter(name=name, to_flax=functools.partial(backbone_to_flax, model),
                        to_torch=functools.partial(backbone_to_torch, model),
                        variables=isinstance(model, ResNet), description=description)


def _register_builtin() -> None:
  from dinoseg.backbones.resnet import RESNET_VARIANTS  # noqa: PLC0415
  from dinoseg.backbones.swin import SWIN_VARIANTS  # noqa: PLC0415
  from dinoseg.backbones.vit import VIT_VARIANTS  # noqa: PLC0415
  descriptions = {
      **{n: f"ResNet-{n[6:]} (detectron2 layout, FrozenBN; torchvision ImageNet keys accepted)"
         for n in RESNET_VARIANTS},
      **{n: f"Swin-{n.split('_')[1][0].upper()}, window {kw['window_size']} "
            f"({384 if kw['window_size'] == 12 else 224}-px checkpoints; MaskDINO D2SwinTransformer layout)"
         for n, kw in SWIN_VARIANTS.items()},
      **{n: "SegNext plain ViT-B/16 at 1024 (uncbiag/SegNext backbone layout)" for n in VIT_VARIANTS},
  }
  from dinoseg import backbones  # noqa: PLC0415
  for name, description in descriptions.items():
    register(backbone_converter(name, backbones.build(name), description))
  for name in SWIN_VARIANTS:
    model = backbones.build(name)
    register(ModelConverter(
        name=f"{name}_imagenet", to_flax=functools.partial(swin_classification_to_flax, model),
        to_torch=functools.partial(backbone_to_torch, model),
        description=f"{descriptions[name].split(' (')[0]}: ImageNet classification weights -> backbone params "
                    f"(norm0..3 set to 1/0; export writes the {name} layout)"))


_register_builtin()
