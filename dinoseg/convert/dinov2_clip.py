"""Weight converters for DINOv2 (hub checkpoints) and the CLIP ViT-B/16 text tower.

Every tensor moves through an explicit table (torch key -> Flax path, layout change):
- "linear": torch (out, in) <-> Flax Dense kernel (in, out). Packed projections (DINOv2
  `attn.qkv`, CLIP `attn.in_proj_weight`) stay packed: rows [q; k; v] (head-major inside
  each) become the kernel's columns in the same order, which is how the Flax modules split
  them.
- "conv": torch OIHW <-> Flax HWIO (DINOv2 patch embedding).
- "same": no change (LayerNorm weight -> `scale`, biases, LayerScale `gamma`, tokens,
  position embeddings, CLIP `text_projection` (W, E) which both sides apply as x @ P).

DINOv2 (`dinov2_vit{s,b,l,g}14[_reg]`): the keys of the facebookresearch/dinov2 hub
checkpoints (`block_chunks=0`): `cls_token`, `pos_embed`, `register_tokens` (reg models),
`mask_token`, `patch_embed.proj.*`, `blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2,
mlp.fc1, mlp.fc2 | mlp.w12, mlp.w3, ls2.gamma}`, `norm.*`. No buffers.

CLIP text (`clip_vitb16_text`): the text-side keys of OpenAI CLIP's state dict:
`token_embedding.weight`, `positional_embedding`, `transformer.resblocks.{i}.{ln_1, attn.in_proj_weight,
attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final.*`, `text_projection`.
A full CLIP checkpoint is accepted: `visual.*`, `logit_scale` and the JIT archive's
`input_resolution` / `context_length` / `vocab_size` entries are dropped (they are not part
of the text tower); export writes the text keys only.

Conversion never changes dtypes (OpenAI's JIT weights are float16; cast afterwards if
needed), and torch -> Flax -> torch is bit-exact.
"""
import functools
from typing import Iterable, Mapping

import numpy as np

from dinoseg.convert.keymap import KeyMismatchError
from dinoseg.convert.registry import ModelConverter, register

_TO_FLAX = {
    "same": lambda a: a,
    "linear": lambda a: np.ascontiguousarray(np.swapaxes(a, 0, 1)),
    "conv": lambda a: np.ascontiguousarray(np.transpose(a, (2, 3, 1, 0))),  # OIHW -> HWIO
}
_TO_TORCH = {
    "same": lambda a: a,
    "linear": lambda a: np.ascontiguousarray(np.swapaxes(a, 0, 1)),
    "conv": lambda a: np.ascontiguousarray(np.transpose(a, (3, 2, 0, 1))),  # HWIO -> OIHW
}

# One table row: torch key -> (Flax path, layout).
KeyTable = dict[str, tuple[tuple[str, ...], str]]

CLIP_IGNORED_KEYS = ("logit_scale", "input_resolution", "context_length", "vocab_size")
CLIP_IGNORED_PREFIXES = ("visual.",)


def _linear(table: KeyTable, torch_prefix: str, flax_path: tuple[str, ...], bias: bool = True) -> None:
  table[f"{torch_prefix}.weight"] = (flax_path + ("kernel",), "linear")
  if bias:
    table[f"{torch_prefix}.bias"] = (flax_path + ("bias",), "same")


def _layer_norm(table: KeyTable, torch_prefix: str, flax_path: tuple[str, ...]) -> None:
  table[f"{torch_prefix}.weight"] = (flax_path + ("scale",), "same")
  table[f"{torch_prefix}.bias"] = (flax_path + ("bias",), "same")


def dinov2_key_table(depth: int, ffn: str = "mlp", num_register_tokens: int = 0) -> KeyTable:
  """The full torch-key -> Flax-path table of a DINOv2 model (`dinoseg.backbones.dinov2.DinoV2`)."""
  if ffn not in ("mlp", "swiglu"):
    raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {ffn!r}")
  table: KeyTable = {"cls_token": (("cls_token",), "same"), "pos_embed": (("pos_embed",), "same"),
                     "mask_token": (("mask_token",), "same")}
  if num_register_tokens:
    table["register_tokens"] = (("register_tokens",), "same")
  table["patch_embed.proj.weight"] = (("patch_embed", "kernel"), "conv")
  table["patch_embed.proj.bias"] = (("patch_embed", "bias"), "same")
  for i in range(depth):
    t, f = f"blocks.{i}", (f"blocks_{i}",)
    _layer_norm(table, f"{t}.norm1", f + ("norm1",))
    _linear(table, f"{t}.attn.qkv", f + ("attn", "qkv"))
    _linear(table, f"{t}.attn.proj", f + ("attn", "proj"))
    table[f"{t}.ls1.gamma"] = (f + ("ls1", "gamma"), "same")
    _layer_norm(table, f"{t}.norm2", f + ("norm2",))
    for name in (("fc1", "fc2") if ffn == "mlp" else ("w12", "w3")):
      _linear(table, f"{t}.mlp.{name}", f + ("mlp", name))
    table[f"{t}.ls2.gamma"] = (f + ("ls2", "gamma"), "same")
  _layer_norm(table, "norm", ("norm",))
  return table


def clip_text_key_table(depth: int) -> KeyTable:
  """The torch-key -> Flax-path table of the CLIP text tower (`ClipTextTransformer`)."""
  table: KeyTable = {"token_embedding.weight": (("token_embedding", "embedding"), "same"),
                     "positional_embedding": (("positional_embedding",), "same")}
  for i in range(depth):
    t, f = f"transformer.resblocks.{i}", (f"resblocks_{i}",)
    _layer_norm(table, f"{t}.ln_1", f + ("ln_1",))
    table[f"{t}.attn.in_proj_weight"] = (f + ("attn", "in_proj", "kernel"), "linear")
    table[f"{t}.attn.in_proj_bias"] = (f + ("attn", "in_proj", "bias"), "same")
    _linear(table, f"{t}.attn.out_proj", f + ("attn", "out_proj"))
    _layer_norm(table, f"{t}.ln_2", f + ("ln_2",))
    _linear(table, f"{t}.mlp.c_fc", f + ("c_fc",))
    _linear(table, f"{t}.mlp.c_proj", f + ("c_proj",))
  _layer_norm(table, "ln_final", ("ln_final",))
  table["text_projection"] = (("text_projection",), "same")
  return table


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, prefix + (str(key),)))
    else:
      out[prefix + (str(key),)] = value
  return out


def _report(what: str, missing: Iterable[str], unexpected: Iterable[str]) -> None:
  missing, unexpected = sorted(missing), sorted(unexpected)
  if missing or unexpected:
    raise KeyMismatchError(f"{what}: missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''}; "
                           f"unexpected keys {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")


def table_to_flax(state: Mapping[str, np.ndarray], table: KeyTable, ignore=lambda key: False) -> dict:
  """torch state dict -> nested Flax params through `table`; keys where `ignore(key)` are dropped.

  Raises:
    KeyMismatchError (a KeyError): listing missing and unexpected keys (nothing is converted partially).
  """
  keys = {k for k in state if not ignore(k)}
  _report("torch -> Flax", set(table) - keys, keys - set(table))
  params: dict = {}
  for key, (path, layout) in table.items():
    node = params
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = _TO_FLAX[layout](np.asarray(state[key]))
  return params


def table_to_torch(params: Mapping, table: KeyTable) -> dict[str, np.ndarray]:
  """Nested Flax params -> torch state dict (reference key names and layouts) through `table`.

  Raises:
    KeyMismatchError (a KeyError): listing missing and unexpected parameter paths.
  """
  flat = _flatten(params)
  by_path = {path: key for key, (path, _) in table.items()}
  _report("Flax -> torch", {"/".join(p) for p in set(by_path) - set(flat)},
          {"/".join(p) for p in set(flat) - set(by_path)})
  return {key: _TO_TORCH[layout](np.asarray(flat[path])) for key, (path, layout) in table.items()}


def _unwrap(params: Mapping) -> Mapping:
  # Accept {"params": {...}} (a variables dict) as well as the params dict itself.
  return params["params"] if set(params) == {"params"} else params


def _abstract_params(name: str, *example_shape_dtype) -> dict:
  """The params of the registered backbone `name` as shapes (jax.eval_shape of its init)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from dinoseg import backbones  # noqa: PLC0415
  shape, dtype = example_shape_dtype
  return jax.eval_shape(backbones.build(name).init, jax.random.key(0), jnp.zeros(shape, dtype))["params"]


def dinov2_converter(name: str, depth: int, ffn: str = "mlp", num_register_tokens: int = 0,
                     description: str = "", abstract=None) -> ModelConverter:
  """A ModelConverter for one DINOv2 layout (`abstract`: see ModelConverter)."""
  table = dinov2_key_table(depth, ffn, num_register_tokens)
  return ModelConverter(name=name, to_flax=lambda state: table_to_flax(state, table),
                        to_torch=lambda params: table_to_torch(_unwrap(params), table),
                        description=description, abstract=abstract)


def _clip_ignored(key: str) -> bool:
  return key in CLIP_IGNORED_KEYS or key.startswith(CLIP_IGNORED_PREFIXES)


def clip_text_converter(name: str, depth: int, description: str = "", abstract=None) -> ModelConverter:
  """A ModelConverter for a CLIP text tower (full CLIP checkpoints accepted, see module doc)."""
  table = clip_text_key_table(depth)
  return ModelConverter(name=name, to_flax=lambda state: table_to_flax(state, table, _clip_ignored),
                        to_torch=lambda params: table_to_torch(_unwrap(params), table),
                        description=description, abstract=abstract)


def _register_builtin() -> None:
  from dinoseg.backbones.clip_text import CLIP_TEXT_VARIANTS  # noqa: PLC0415
  from dinoseg.backbones.dinov2 import DINOV2_VARIANTS  # noqa: PLC0415
  for name, kw in DINOV2_VARIANTS.items():
    regs = kw.get("num_register_tokens", 0)
    register(dinov2_converter(
        name, kw["depth"], kw.get("ffn", "mlp"), regs,
        description=f"DINOv2 {name.split('_')[1]} (torch.hub checkpoint{', 4 registers' if regs else ''})",
        abstract=functools.partial(_abstract_params, name, (1, 224, 224, 3), np.float32)))
  for name, kw in CLIP_TEXT_VARIANTS.items():
    register(clip_text_converter(name, kw["depth"],
                                 description="OpenAI CLIP ViT-B/16 text tower (text keys of a CLIP state dict)",
                                 abstract=functools.partial(_abstract_params, name, (1, 77), np.int32)))


_register_builtin()
