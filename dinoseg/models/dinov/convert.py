"""DINOv checkpoints: reference state dicts <-> dinoseg Flax variables.

Layout of a released checkpoint (UX-Decoder/DINOv; shared/reference/dinov.md section 9): every key is
under `model.` (the reference's `BaseModel.from_pretrained` strips it), then
- `backbone.*`: Swin-T / Swin-L in Mask DINO's D2 Swin layout (`relative_position_index` buffers
  rebuilt, not loaded): the backbone converters (dinoseg/convert/backbones.py);
- `sem_seg_head.pixel_decoder.*`: Mask DINO's pixel decoder (dinoseg.models.maskdino.convert);
- `sem_seg_head.predictor.*`: Mask DINO's decoder keys without two-stage (`query_feat`, `query_embed`)
  plus `class_embed` / `class_embed_part` / `class_embed_openset` (d, DIM_PROJ) plain parameters,
  `iou_prediction_head`, `mask_tokens`, `pb_embedding`, `label_enc` (2 rows), the prompt encoder
  (`content_tokens`, `pos_embed`, `project_cross_attention_layers.{i}`); no `criterion.*` buffer.
- Tied tensors as in Mask DINO: `_bbox_embed` = `bbox_embed.{i}` = `decoder.bbox_embed.{i}`,
  `decoder_norm` = `decoder.norm`: one Flax variable each, import checks the copies agree, export
  writes every copy.
Both directions are strict; torch -> Flax -> torch is bit-exact. The map is built from a model config
(configs/dinov/*.py), so the export is exactly the state dict the reference builds for that config.
"""
import functools
from typing import Any, Mapping

import ml_collections
import numpy as np

from dinoseg.convert import registry
from dinoseg.convert.keymap import KeyMap, layer_norm_rules, one, strip_prefix
from dinoseg.models.maskdino.convert import (backbone_keymap, bbox_embed_rules, decoder_layer_rules, decoder_norm_rules,
                                             mlp_rules, multihead_attention_rules, pixel_decoder_keymap)

HEAD = "sem_seg_head."
RELEASED_PREFIX = "model."  # every key of the released checkpoints


def predictor_keymap(model: ml_collections.ConfigDict) -> KeyMap:
  """Torch keys under `sem_seg_head.predictor.` <-> Flax ("params", "predictor", ...), in the reference's
  state-dict order."""
  n_layers = model.decoder.dec_layers
  n_levels = model.pixel_decoder.total_num_feature_levels
  t, f = HEAD + "predictor", ("params", "predictor")
  rules = [one(f"{t}.{name}", f + (name,)) for name in ("class_embed", "class_embed_part", "class_embed_openset")]
  rules += mlp_rules(f"{t}.mask_embed", f + ("mask_embed",), 3)
  rules += decoder_norm_rules(t, f)
  for i in range(n_layers):  # Mask DINO's decoder layers and box MLP (maskdino/convert.py)
    rules += decoder_layer_rules(f"{t}.decoder.layers.{i}", f + ("decoder", f"layers_{i}"))
  rules += mlp_rules(f"{t}.decoder.ref_point_head", f + ("decoder", "ref_point_head"), 2)
  rules += bbox_embed_rules(t, f, n_layers, decoder_copies_first=True)
  rules += mlp_rules(f"{t}.iou_prediction_head", f + ("iou_prediction_head",), 3)
  for name in ("mask_tokens", "pb_embedding", "label_enc"):
    rules.append(one(f"{t}.{name}.weight", f + (name, "embedding")))
  pe = f + ("prompt_encoder",)
  for name in ("content_tokens", "pos_embed"):
    rules.append(one(f"{t}.{name}.weight", pe + (name, "embedding")))
  for i in range(n_levels):
    lt, lf = f"{t}.project_cross_attention_layers.{i}", pe + (f"project_cross_attention_layers_{i}",)
    rules += multihead_attention_rules(f"{lt}.multihead_attn", lf + ("multihead_attn",))
    rules += layer_norm_rules(f"{lt}.norm", lf + ("norm",))
  rules += [one(f"{t}.query_feat.weight", f + ("query_feat", "embedding")),
            one(f"{t}.query_embed.weight", f + ("query_embed", "embedding"))]
  return KeyMap(rules)


def head_keymap(model: ml_collections.ConfigDict) -> KeyMap:
  """pixel decoder + predictor (keys under `sem_seg_head.`)."""
  return pixel_decoder_keymap(model) + predictor_keymap(model)


def dinov_keymap(model: ml_collections.ConfigDict) -> KeyMap:
  """The whole model without the released `model.` prefix: backbone + head."""
  return backbone_keymap(model) + head_keymap(model)


def _model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A config's `model` group (a model group is returned as is)."""
  return config.model if "model" in config else config


def load_state_dict(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Unwraps {"model": state_dict, ...}, converts tensors to NumPy and strips `module.` / `model.` (when
  every key has it)."""
  if "model" in state and isinstance(state["model"], Mapping):
    state = state["model"]
  out = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state.items()}
  return strip_prefix(strip_prefix(out, "module."), RELEASED_PREFIX)


def to_flax(state: Mapping[str, Any], config: ml_collections.ConfigDict, expected: Mapping | None = None,
            head_only: bool = False) -> dict:
  """Reference state dict (released `model.`-prefixed keys, or without the prefix) -> Flax variables
  {"params": ...}. `config`: the config or its `model` group; `head_only`: `sem_seg_head.*` keys only."""
  model = _model_config(config)
  km = head_keymap(model) if head_only else dinov_keymap(model)
  return km.to_flax(load_state_dict(state), expected=expected)


def to_torch(variables: Mapping, config: ml_collections.ConfigDict, head_only: bool = False,
             prefix: str = RELEASED_PREFIX) -> dict[str, np.ndarray]:
  """Flax variables -> the reference state dict, every key under `prefix` (the released `model.`; "" for
  the model's own `state_dict()` keys), every tied copy written."""
  model = _model_config(config)
  km = head_keymap(model) if head_only else dinov_keymap(model)
  return {prefix + k: v for k, v in km.to_torch(variables).items()}


def torch_shapes(abstract: Mapping, config: ml_collections.ConfigDict, head_only: bool = False,
                 prefix: str = RELEASED_PREFIX) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{key: (shape, dtype)} that `to_torch` would write for variables shaped like `abstract` (e.g.
  `abstract_variables(...)`); nothing is allocated, so full-size layouts are cheap to compare."""
  model = _model_config(config)
  km = head_keymap(model) if head_only else dinov_keymap(model)
  return {prefix + k: v for k, v in km.torch_shapes(abstract).items()}


# Released configs (configs/dinov/<file>.py) and the checkpoints they read, registered as "dinov_<file>".
RELEASED_CONFIGS = {"swint_sam_coco": "DINOv Swin-T (COCO + SA-1B), configs/dinov/swint_sam_coco.py",
                    "swinl_sam_coco": "DINOv Swin-L (COCO + SA-1B), configs/dinov/swinl_sam_coco.py"}


@functools.lru_cache(maxsize=None)
def released_model_config(name: str) -> ml_collections.ConfigDict:
  from dinoseg.config import load_config  # noqa: PLC0415
  return load_config(f"configs/dinov/{name}.py").model


def abstract_variables(model_config: ml_collections.ConfigDict, hw: int = 64) -> dict:
  """jax.eval_shape of the model's init (no weights allocated): the shapes the converter checks against."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from dinoseg.models.dinov.model import build_model  # noqa: PLC0415
  model_config = model_config.copy_and_resolve_references()
  model_config.msda_impl = "xla"
  model = build_model(model_config)
  return dict(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, hw, hw, 3))))


def converter(name: str) -> registry.ModelConverter:
  """The ModelConverter of released config `name` (a key of RELEASED_CONFIGS), named "dinov_<name>"."""
  return registry.ModelConverter(
      name=f"dinov_{name}",
      to_flax=lambda state: to_flax(state, released_model_config(name)),
      to_torch=lambda variables: to_torch(variables, released_model_config(name)),
      variables=True, description=RELEASED_CONFIGS[name],
      abstract=lambda: abstract_variables(released_model_config(name)))


CONVERTERS = tuple(converter(name) for name in RELEASED_CONFIGS)


def _register() -> None:
  """Registers CONVERTERS (once) when the registry imports this module."""
  for conv in CONVERTERS:
    if conv.name not in registry.CONVERTERS:
      registry.register(conv)


_register()

__all__ = ["dinov_keymap", "head_keymap", "predictor_keymap", "to_flax", "to_torch", "torch_shapes", "load_state_dict",
           "abstract_variables", "converter", "CONVERTERS", "RELEASED_CONFIGS", "released_model_config"]
