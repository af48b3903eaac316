"""SegNext checkpoints (uncbiag/SegNext `PlainVitModel` state dicts) <-> Flax `SegNext` params.

Key layout (reference/keys/segnext_sax2_keys.txt; sax1 lacks `fusion_blocks.1.*`):

| torch key | Flax path | transform |
|---|---|---|
| `backbone.pos_embed` (1, 1+g*g, D) | `backbone/pos_embed` | as is |
| `backbone.patch_embed.proj.weight` (D, 3, 16, 16) | `backbone/patch_embed/proj/kernel` | OIHW -> HWIO |
| `backbone.blocks.{i}.{norm1,norm2}.{weight,bias}` | `backbone/blocks_{i}/{norm1,norm2}/{scale,bias}` | as is |
| `backbone.blocks.{i}.{attn.qkv,attn.proj,mlp.fc1,mlp.fc2}.weight` | `.../{attn/qkv,...}/kernel` | transpose |
| `backbone.fc_norm.{weight,bias}` (unused by the model) | `backbone/fc_norm/{scale,bias}` | as is |
| `visual_prompts_encoder.proj.{weight,bias}` | `visual_prompts_encoder/proj/{kernel,bias}` | OIHW -> HWIO |
| `fusion_blocks.{i}.*` | `fusion_blocks_{i}/*` | as a backbone block |
| `neck.down_{s}.{j}.weight` ConvTranspose2d (in, out, 2, 2) | `neck/down_{s}_{j}/kernel` (2, 2, in, out) | (2, 3, 0, 1) |
| `neck.down_{s}.{j}.weight` Conv2d (out, in, k, k) | `neck/down_{s}_{j}/kernel` | OIHW -> HWIO |
| `neck.down_{s}.{j}.weight` GroupNorm (C,) | `neck/down_{s}_{j}/scale` | as is |
| `head.convs.{i}.conv.*`, `head.fusion_conv.conv.*` (out, in, 1, 1) | `head/convs_{i}/*`, `head/fusion_conv/*` | -> (in, out) |
| `head.seg_conv.*` | `head/seg_conv/*` | -> (in, out) |

New parameters (not in the released layout), listed in `NEW_PARAMS`:
`extra_prompts_encoder/kernel` (16, 16, 3, D), the box / scribble prompt embedding. Import
sets it to zero (released outputs unchanged); export drops it and refuses to do so silently
when it is non-zero (the reference cannot represent it), unless `drop_new_params=True`.

Both directions check the full key set and every shape: missing or unexpected keys raise
KeyError listing them, wrong shapes ValueError. `read_checkpoint` loads a reference `.pth`
(`{"state_dict", "config"}`) through `dinoseg.convert.readers` (no code from the file runs);
`write_checkpoint` writes one the reference's `load_is_model` accepts (state dict + config).
"""
import dataclasses
import json
import re
from typing import Any, Mapping

import numpy as np

from dinoseg.convert.keymap import ConversionError, KeyMismatchError
from dinoseg.convert.registry import ModelConverter, register

NEW_PARAMS = ("extra_prompts_encoder/kernel",)

_BLOCK_PARTS = {
    "norm1.weight": ("norm1", "scale"), "norm1.bias": ("norm1", "bias"),
    "norm2.weight": ("norm2", "scale"), "norm2.bias": ("norm2", "bias"),
    "attn.qkv.weight": ("attn", "qkv", "kernel"), "attn.qkv.bias": ("attn", "qkv", "bias"),
    "attn.proj.weight": ("attn", "proj", "kernel"), "attn.proj.bias": ("attn", "proj", "bias"),
    "mlp.fc1.weight": ("mlp", "fc1", "kernel"), "mlp.fc1.bias": ("mlp", "fc1", "bias"),
    "mlp.fc2.weight": ("mlp", "fc2", "kernel"), "mlp.fc2.bias": ("mlp", "fc2", "bias"),
}
# SimpleFPN sequential index -> layer kind.
_NECK_LAYERS = {
    "down_4": {0: "convT", 1: "gn", 3: "convT", 4: "gn", 5: "conv", 6: "gn"},
    "down_8": {0: "convT", 1: "gn", 2: "conv", 3: "gn"},
    "down_16": {0: "conv", 1: "gn"},
    "down_32": {0: "conv", 1: "gn", 2: "conv", 3: "gn"},
}


@dataclasses.dataclass(frozen=True)
class SegNextArch:
  """The shape-determining hyper-parameters of a SegNext checkpoint.

  Defaults: the released ViT-B/16 at 1024 with sax2.
  """
  image_size: int = 1024
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  mlp_ratio: float = 4.0
  fusion_depth: int = 2
  neck_dims: tuple[int, ...] = (128, 256, 512, 1024)
  head_channels: int = 256
  in_chans: int = 3

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  def neck_channels(self) -> dict[str, dict[int, tuple[int, int]]]:
    """(in, out) channels of every neck conv / (C, C) of every GroupNorm, by level and index."""
    d, o = self.embed_dim, self.neck_dims
    c4, c8, c32 = max(o[0] * 2, d // 2), max(o[1], d // 2), max(o[3], d * 2)
    return {
        "down_4": {0: (d, c4), 1: (c4, c4), 3: (c4, c4 // 2), 4: (c4 // 2, c4 // 2), 5: (c4 // 2, o[0]),
                   6: (o[0], o[0])},
        "down_8": {0: (d, c8), 1: (c8, c8), 2: (c8, o[1]), 3: (o[1], o[1])},
        "down_16": {0: (d, o[2]), 1: (o[2], o[2])},
        "down_32": {0: (d, c32), 1: (c32, c32), 2: (c32, o[3]), 3: (o[3], o[3])},
    }


def _block_shapes(prefix: str, d: int, mlp: int) -> dict[str, tuple]:
  return {f"{prefix}.norm1.weight": (d,), f"{prefix}.norm1.bias": (d,), f"{prefix}.norm2.weight": (d,),
          f"{prefix}.norm2.bias": (d,), f"{prefix}.attn.qkv.weight": (3 * d, d), f"{prefix}.attn.qkv.bias": (3 * d,),
          f"{prefix}.attn.proj.weight": (d, d), f"{prefix}.attn.proj.bias": (d,),
          f"{prefix}.mlp.fc1.weight": (mlp, d), f"{prefix}.mlp.fc1.bias": (mlp,),
          f"{prefix}.mlp.fc2.weight": (d, mlp), f"{prefix}.mlp.fc2.bias": (d,)}


def reference_shapes(arch: SegNextArch = SegNextArch()) -> dict[str, tuple[int, ...]]:
  """{torch key: shape} of a reference checkpoint with this architecture (insertion order = the reference's)."""
  d, p, mlp = arch.embed_dim, arch.patch_size, int(arch.embed_dim * arch.mlp_ratio)
  shapes = {"backbone.pos_embed": (1, arch.grid ** 2 + 1, d), "backbone.patch_embed.proj.weight": (d, 3, p, p),
            "backbone.patch_embed.proj.bias": (d,)}
  for i in range(arch.depth):
    shapes.update(_block_shapes(f"backbone.blocks.{i}", d, mlp))
  shapes.update({"backbone.fc_norm.weight": (d,), "backbone.fc_norm.bias": (d,)})
  for level, layers in arch.neck_channels().items():
    for j, (cin, cout) in layers.items():
      kind = _NECK_LAYERS[level][j]
      key = f"neck.{level}.{j}"
      if kind == "convT":
        shapes[f"{key}.weight"] = (cin, cout, 2, 2)
      elif kind == "conv":
        k = 2 if level == "down_32" and j == 0 else 1
        shapes[f"{key}.weight"] = (cout, cin, k, k)
      else:
        shapes[f"{key}.weight"] = (cout,)
      shapes[f"{key}.bias"] = (cout,)
  c = arch.head_channels
  for i, cin in enumerate(arch.neck_dims):
    shapes[f"head.convs.{i}.conv.weight"] = (c, cin, 1, 1)
    shapes[f"head.convs.{i}.conv.bias"] = (c,)
  shapes.update({"head.fusion_conv.conv.weight": (c, c * len(arch.neck_dims), 1, 1),
                 "head.fusion_conv.conv.bias": (c,), "head.seg_conv.weight": (1, c, 1, 1), "head.seg_conv.bias": (1,),
                 "visual_prompts_encoder.proj.weight": (d, arch.in_chans, p, p),
                 "visual_prompts_encoder.proj.bias": (d,)})
  for i in range(arch.fusion_depth):
    shapes.update(_block_shapes(f"fusion_blocks.{i}", d, mlp))
  return shapes


def infer_arch(state: Mapping[str, Any]) -> SegNextArch:
  """Reads the architecture from a reference state dict's shapes (KeyError if it is not SegNext)."""
  for key in ("backbone.pos_embed", "backbone.patch_embed.proj.weight", "backbone.blocks.0.mlp.fc1.weight",
              "neck.down_4.5.weight", "neck.down_8.2.weight", "neck.down_16.0.weight", "neck.down_32.2.weight",
              "head.convs.0.conv.weight"):
    if key not in state:
      raise KeyMismatchError(f"not a SegNext state dict: missing {key!r}")
  shape = lambda k: tuple(np.shape(state[k]))  # noqa: E731
  d, _, p, _ = shape("backbone.patch_embed.proj.weight")
  grid = int(round((shape("backbone.pos_embed")[1] - 1) ** 0.5))
  depth = 1 + max(int(m.group(1)) for m in map(re.compile(r"^backbone\.blocks\.(\d+)\.").match, state) if m)
  fusion = [int(m.group(1)) for m in map(re.compile(r"^fusion_blocks\.(\d+)\.").match, state) if m]
  neck_dims = tuple(shape(k)[0] for k in ("neck.down_4.5.weight", "neck.down_8.2.weight", "neck.down_16.0.weight",
                                          "neck.down_32.2.weight"))
  return SegNextArch(image_size=grid * p, patch_size=p, embed_dim=d, depth=depth,
                     mlp_ratio=shape("backbone.blocks.0.mlp.fc1.weight")[0] / d,
                     fusion_depth=1 + max(fusion) if fusion else 0, neck_dims=neck_dims,
                     head_channels=shape("head.convs.0.conv.weight")[0])


def _check_keys(state: Mapping[str, Any], shapes: Mapping[str, tuple], what: str) -> None:
  missing, unexpected = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
  if missing or unexpected:
    raise KeyMismatchError(f"{what}: missing keys {missing}; unexpected keys {unexpected}")
  for key, want in shapes.items():
    if tuple(np.shape(state[key])) != tuple(want):
      raise ConversionError(f"{what}: {key} has shape {tuple(np.shape(state[key]))}, expected {tuple(want)}")


def _oihw_to_hwio(w):
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def _hwio_to_oihw(w):
  return np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1)))


def _set(tree: dict, path: tuple, value) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple):
  for name in path:
    tree = tree[name]
  return tree


def _flatten(tree: Mapping, prefix=()) -> dict[tuple, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _mapping(arch: SegNextArch) -> dict[str, tuple[tuple, str]]:
  """{torch key: (Flax path, transform)}; transform in {"id", "T", "conv", "convT", "dense1x1"}."""
  table: dict[str, tuple[tuple, str]] = {
      "backbone.pos_embed": (("backbone", "pos_embed"), "id"),
      "backbone.patch_embed.proj.weight": (("backbone", "patch_embed", "proj", "kernel"), "conv"),
      "backbone.patch_embed.proj.bias": (("backbone", "patch_embed", "proj", "bias"), "id"),
      "backbone.fc_norm.weight": (("backbone", "fc_norm", "scale"), "id"),
      "backbone.fc_norm.bias": (("backbone", "fc_norm", "bias"), "id"),
      "visual_prompts_encoder.proj.weight": (("visual_prompts_encoder", "proj", "kernel"), "conv"),
      "visual_prompts_encoder.proj.bias": (("visual_prompts_encoder", "proj", "bias"), "id"),
      "head.fusion_conv.conv.weight": (("head", "fusion_conv", "kernel"), "dense1x1"),
      "head.fusion_conv.conv.bias": (("head", "fusion_conv", "bias"), "id"),
      "head.seg_conv.weight": (("head", "seg_conv", "kernel"), "dense1x1"),
      "head.seg_conv.bias": (("head", "seg_conv", "bias"), "id"),
  }
  blocks = [(f"backbone.blocks.{i}", ("backbone", f"blocks_{i}")) for i in range(arch.depth)]
  blocks += [(f"fusion_blocks.{i}", (f"fusion_blocks_{i}",)) for i in range(arch.fusion_depth)]
  for tprefix, fprefix in blocks:
    for part, path in _BLOCK_PARTS.items():
      table[f"{tprefix}.{part}"] = (fprefix + path, "T" if path[-1] == "kernel" else "id")
  for level, layers in _NECK_LAYERS.items():
    for j, kind in layers.items():
      name = f"{level}_{j}"
      weight_name = "scale" if kind == "gn" else "kernel"
      transform = {"convT": "convT", "conv": "conv", "gn": "id"}[kind]
      table[f"neck.{level}.{j}.weight"] = (("neck", name, weight_name), transform)
      table[f"neck.{level}.{j}.bias"] = (("neck", name, "bias"), "id")
  for i in range(len(arch.neck_dims)):
    table[f"head.convs.{i}.conv.weight"] = (("head", f"convs_{i}", "kernel"), "dense1x1")
    table[f"head.convs.{i}.conv.bias"] = (("head", f"convs_{i}", "bias"), "id")
  return table


_TO_FLAX = {"id": lambda w: w, "T": lambda w: np.ascontiguousarray(w.T), "conv": _oihw_to_hwio,
            "convT": lambda w: np.ascontiguousarray(np.transpose(w, (2, 3, 0, 1))),
            "dense1x1": lambda w: np.ascontiguousarray(w[:, :, 0, 0].T)}
_TO_TORCH = {"id": lambda w: w, "T": lambda w: np.ascontiguousarray(w.T), "conv": _hwio_to_oihw,
             "convT": lambda w: np.ascontiguousarray(np.transpose(w, (2, 3, 0, 1))),
             "dense1x1": lambda w: np.ascontiguousarray(w.T[:, :, None, None])}


def segnext_to_flax(state: Mapping[str, Any], *, extra_prompts: bool = True) -> dict:
  """Reference state dict -> `SegNext` params (nested dict of numpy arrays).

  Args:
    state: {torch key: array} (numpy or torch tensors), the full `state_dict` of a reference
      checkpoint; the architecture is read from its shapes.
    extra_prompts: also create the new `extra_prompts_encoder/kernel` (zeros), for a model
      built with `extra_prompts=True` (the default).
  Raises:
    KeyError / ValueError: missing, unexpected or mis-shaped keys (nothing is converted partially).
  """
  state = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state.items()}
  arch = infer_arch(state)
  _check_keys(state, reference_shapes(arch), "SegNext state dict")
  params: dict = {}
  for key, (path, transform) in _mapping(arch).items():
    _set(params, path, _TO_FLAX[transform](state[key]))
  if extra_prompts:
    p, d = arch.patch_size, arch.embed_dim
    _set(params, ("extra_prompts_encoder", "kernel"), np.zeros((p, p, 3, d), state["backbone.pos_embed"].dtype))
  return params


def segnext_to_torch(params: Mapping, *, drop_new_params: bool = False) -> dict[str, np.ndarray]:
  """`SegNext` params -> reference state dict (strict-loadable into `PlainVitModel`).

  Args:
    params: the Flax params (with or without `extra_prompts_encoder`).
    drop_new_params: allow dropping a non-zero `extra_prompts_encoder` (box / scribble
      training is lost: the reference has no such input). Zero values are dropped silently.
  Raises:
    KeyError: missing or unexpected parameters; ValueError: non-zero new params without
    `drop_new_params`, or inconsistent shapes.
  """
  flat = {"/".join(k): np.asarray(v) for k, v in _flatten(params).items()}
  new = {k: flat.pop(k) for k in NEW_PARAMS if k in flat}
  for key, value in new.items():
    if np.any(value != 0) and not drop_new_params:
      raise ConversionError(f"{key} is non-zero (box/scribble prompts were trained); the reference layout cannot "
                       "hold it. Pass drop_new_params=True to export the click-only part.")
  arch = infer_arch_from_flax(flat)
  table = _mapping(arch)
  expected = {"/".join(path) for path, _ in table.values()}
  missing, unexpected = sorted(expected - set(flat)), sorted(set(flat) - expected)
  if missing or unexpected:
    raise KeyMismatchError(f"SegNext params: missing {missing}; unexpected {unexpected}")
  state = {key: _TO_TORCH[transform](flat["/".join(path)]) for key, (path, transform) in table.items()}
  shapes = reference_shapes(arch)
  _check_keys(state, shapes, "exported SegNext state dict")
  return {k: state[k] for k in shapes}  # the reference's key order


def infer_arch_from_flax(flat: Mapping[str, Any]) -> SegNextArch:
  """Architecture from flattened ("a/b/c") Flax params."""
  try:
    kh, _, _, d = np.shape(flat["backbone/patch_embed/proj/kernel"])
    grid = int(round((np.shape(flat["backbone/pos_embed"])[1] - 1) ** 0.5))
    depth = 1 + max(int(m.group(1)) for m in map(re.compile(r"^backbone/blocks_(\d+)/").match, flat) if m)
    fusion = [int(m.group(1)) for m in map(re.compile(r"^fusion_blocks_(\d+)/").match, flat) if m]
    neck_dims = tuple(np.shape(flat[k])[-1] for k in ("neck/down_4_5/kernel", "neck/down_8_2/kernel",
                                                        "neck/down_16_0/kernel", "neck/down_32_2/kernel"))
    return SegNextArch(image_size=grid * kh, patch_size=kh, embed_dim=d, depth=depth,
                       mlp_ratio=np.shape(flat["backbone/blocks_0/mlp/fc1/kernel"])[1] / d,
                       fusion_depth=1 + max(fusion) if fusion else 0, neck_dims=neck_dims,
                       head_channels=np.shape(flat["head/convs_0/kernel"])[1])
  except KeyError as e:
    raise KeyMismatchError(f"not SegNext params: missing {e}") from None


def arch_from_model_config(model_config: Mapping[str, Any]) -> SegNextArch:
  """SegNextArch of a `config.model` (SegNext attribute names)."""
  defaults = SegNextArch()
  get = lambda k: model_config.get(k, getattr(defaults, k))  # noqa: E731
  return SegNextArch(image_size=get("image_size"), patch_size=get("patch_size"), embed_dim=get("embed_dim"),
                     depth=get("depth"), mlp_ratio=get("mlp_ratio"), fusion_depth=get("fusion_depth"),
                     neck_dims=tuple(get("neck_dims")), head_channels=get("head_channels"))


def random_reference_state_dict(arch: SegNextArch = SegNextArch(), seed: int = 0,
                                scale: float = 0.05) -> dict[str, np.ndarray]:
  """Random float32 weights in the reference layout (identical on every platform for a seed).

  Used to run the reference and dinoseg on the same weights (fixtures, benchmarks). Norm
  weights are 1 + noise, everything else noise of std `scale` (the conv/linear weights are
  scaled by 1/sqrt(fan_in) so activations stay O(1)).
  """
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in reference_shapes(arch).items():
    w = rng.standard_normal(shape).astype(np.float32)
    if key == "backbone.pos_embed" or len(shape) == 1:
      is_norm_scale = key.endswith(".weight") and len(shape) == 1
      w = (1.0 if is_norm_scale else 0.0) + np.float32(scale) * w
    else:  # conv / linear weights: std 1/sqrt(fan_in); a k2s2 ConvTranspose sees `in` inputs per output
      fan_in = shape[0] if _is_conv_transpose(key) else int(np.prod(shape[1:]))
      w = w / np.float32(np.sqrt(fan_in))
    state[key] = w.astype(np.float32)
  return state


def _is_conv_transpose(key: str) -> bool:
  m = re.match(r"^neck\.(down_\d+)\.(\d+)\.weight$", key)
  return bool(m) and _NECK_LAYERS[m.group(1)][int(m.group(2))] == "convT"


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict | None]:
  """Loads a reference `.pth` -> (state dict as numpy, its serialized config or None).

  Accepts `{"state_dict": ..., "config": ...}` (the released files) or a bare state dict. Read
  with `dinoseg.convert.readers` (torch's weights_only loader, or the torch-free reader): no code
  from the file is executed.
  """
  from dinoseg.convert import readers  # noqa: PLC0415
  obj = readers.read_checkpoint(path)
  config = None
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    config = obj.get("config")
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path}: expected a state dict or {{'state_dict': ...}}, got {type(obj).__name__}")
  return {k: np.asarray(v) for k, v in obj.items()}, config


def reference_config(arch: SegNextArch, num_heads: int = 12, global_atten_freq: int = 3) -> dict:
  """The serialized `config` entry the reference's `load_model` needs for this architecture."""
  def builtin(value, specified=True):
    return {"type": "builtin", "value": value, "specified": specified}
  return {"class": "isegm.model.is_plainvit_model.PlainVitModel", "params": {
      "backbone_params": builtin({"img_size": [arch.image_size] * 2, "patch_size": [arch.patch_size] * 2,
                                  "in_chans": 3, "embed_dim": arch.embed_dim, "depth": arch.depth,
                                  "global_atten_freq": global_atten_freq, "num_heads": num_heads,
                                  "mlp_ratio": arch.mlp_ratio, "qkv_bias": True}),
      "neck_params": builtin({"in_dim": arch.embed_dim, "out_dims": list(arch.neck_dims)}),
      "head_params": builtin({"in_channels": list(arch.neck_dims), "in_select_index": list(range(4)),
                              "dropout_ratio": 0.1, "num_classes": 1, "out_channels": arch.head_channels}),
      "fusion_params": builtin({"type": "self_attention", "depth": arch.fusion_depth,
                                "params": {"dim": arch.embed_dim, "num_heads": num_heads,
                                           "mlp_ratio": arch.mlp_ratio, "qkv_bias": True}}),
      "use_disks": builtin(True), "norm_radius": builtin(5),
      "cpu_dist_maps": builtin(False, False),
      "norm_mean_std": builtin([[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]], False)}}


def write_checkpoint(path: str, state: Mapping[str, np.ndarray], config: dict | None = None) -> None:
  """Writes `{"state_dict", "config"}` as the reference saves it (loadable with weights_only=True)."""
  import torch  # noqa: PLC0415
  sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
  torch.save({"state_dict": sd, "config": json.loads(json.dumps(config)) if config else {}}, path)


for _name, _desc in (("segnext_vitb_sax1", "SegNext ViT-B/16 1024, 1 fusion block (uncbiag/SegNext)"),
                     ("segnext_vitb_sax2", "SegNext ViT-B/16 1024, 2 fusion blocks (uncbiag/SegNext)")):
  register(ModelConverter(name=_name, to_flax=segnext_to_flax, to_torch=segnext_to_torch, description=_desc))
