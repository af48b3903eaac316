"""Mask DINO checkpoints: reference (detectron2) state dicts <-> dinoseg Flax variables.

Layout of a released checkpoint (`{"model": state_dict}`; key dumps in shared/reference/keys):
- `backbone.*`: ResNet (detectron2 names, FrozenBN buffers) or Swin (its `relative_position_index`
  buffers are rebuilt, not loaded): handled by the backbone converters (dinoseg/convert/backbones.py).
- `sem_seg_head.pixel_decoder.*`, `sem_seg_head.predictor.*`: the head (map below).
- Tied tensors: `predictor._bbox_embed.*` = `predictor.bbox_embed.{i}.*` = `predictor.decoder.bbox_embed.{i}.*`
  (one box MLP for all layers, 2L + 1 copies) and `predictor.decoder_norm.*` = `predictor.decoder.norm.*`:
  one Flax variable each; import checks the copies agree, export writes every copy.
- `criterion.empty_weight` (C + 1): a buffer of the loss; dropped on import, rebuilt on export
  (ones, last = no_object_weight).
The map is built from a model config (configs/maskdino/*.py), so every released layout (3 / 4 / 5
levels, hid1024 / 2048, two-stage or learned queries, CE or focal classes) is covered by the config
that describes it, and the export is exactly the state dict the reference builds for that config
(`torch.load_state_dict(strict=True)` accepts it).
"""
import functools
from typing import Any, Mapping

import ml_collections
import numpy as np

from dinoseg.convert import registry
from dinoseg.convert.keymap import (IDENTITY, LINEAR, KeyMap, buffer, conv_rules, layer_norm_rules, linear_rules,
                                    one, strip_prefix, tied)
from dinoseg.errors import UserValueError

HEAD = "sem_seg_head."


def mlp_rules(t: str, f: tuple, num_layers: int) -> list:
  """An MLP of `num_layers` linears (`{t}.layers.{i}`) <-> Flax `f + ("layers_{i}",)` (dinoseg.ops MLP)."""
  rules = []
  for i in range(num_layers):
    rules += linear_rules(f"{t}.layers.{i}", f + (f"layers_{i}",))
  return rules


def msda_rules(t: str, f: tuple) -> list:
  """Multi-scale deformable attention (`sampling_offsets`, `attention_weights`, `value_proj`, `output_proj`)."""
  rules = []
  for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
    rules += linear_rules(f"{t}.{name}", f + (name,))
  return rules


def multihead_attention_rules(t: str, f: tuple) -> list:
  """torch nn.MultiheadAttention (packed `in_proj_weight` / `in_proj_bias`, `out_proj`) <->
  dinoseg.models.maskdino.decoder.MultiheadAttention (`in_proj_kernel`, `in_proj_bias`, `out_proj`)."""
  return [one(f"{t}.in_proj_weight", f + ("in_proj_kernel",), LINEAR), one(f"{t}.in_proj_bias", f + ("in_proj_bias",)),
          *linear_rules(f"{t}.out_proj", f + ("out_proj",))]


def decoder_layer_rules(t: str, f: tuple) -> list:
  """One deformable decoder layer (`{t}` = `...decoder.layers.{i}`): cross_attn (MSDA), norm1, self_attn,
  norm2, linear1, linear2, norm3, in the reference's state-dict order."""
  rules = msda_rules(f"{t}.cross_attn", f + ("cross_attn",))
  rules += layer_norm_rules(f"{t}.norm1", f + ("norm1",))
  rules += multihead_attention_rules(f"{t}.self_attn", f + ("self_attn",))
  rules += layer_norm_rules(f"{t}.norm2", f + ("norm2",))
  rules += linear_rules(f"{t}.linear1", f + ("linear1",))
  rules += linear_rules(f"{t}.linear2", f + ("linear2",))
  rules += layer_norm_rules(f"{t}.norm3", f + ("norm3",))
  return rules


def decoder_norm_rules(t: str, f: tuple) -> list:
  """The decoder's final LayerNorm, tied: `{t}.decoder_norm` = `{t}.decoder.norm` <-> f + ("decoder_norm",)."""
  return [tied([f"{t}.decoder_norm.{p}", f"{t}.decoder.norm.{p}"],
               f + ("decoder_norm", "scale" if p == "weight" else "bias")) for p in ("weight", "bias")]


def bbox_embed_rules(t: str, f: tuple, num_layers: int, decoder_copies_first: bool = False) -> list:
  """The one box MLP (3 layers) shared by every decoder layer, tied over its 2L + 1 copies `{t}._bbox_embed`,
  `{t}.bbox_embed.{i}`, `{t}.decoder.bbox_embed.{i}` (written in this order, or with the `decoder.` copies
  first: DINOv's state-dict order) <-> f + ("bbox_embed",)."""
  rules = []
  for k in range(3):
    for p in ("weight", "bias"):
      head = [f"{t}._bbox_embed.layers.{k}.{p}"] + [f"{t}.bbox_embed.{i}.layers.{k}.{p}" for i in range(num_layers)]
      inner = [f"{t}.decoder.bbox_embed.{i}.layers.{k}.{p}" for i in range(num_layers)]
      rules.append(tied(inner + head if decoder_copies_first else head + inner,
                        f + ("bbox_embed", f"layers_{k}", "kernel" if p == "weight" else "bias"),
                        LINEAR if p == "weight" else IDENTITY))
  return rules


_mlp_rules, _msda_rules = mlp_rules, msda_rules  # the former private names


def pixel_decoder_keymap(model: ml_collections.ConfigDict) -> KeyMap:
  """Torch keys under `sem_seg_head.pixel_decoder.` <-> Flax ("params", "pixel_decoder", ...)."""
  enc = model.pixel_decoder
  t, f = HEAD + "pixel_decoder", ("params", "pixel_decoder")
  rules = []
  for i in range(enc.total_num_feature_levels):
    rules += conv_rules(f"{t}.input_proj.{i}.0", f + (f"input_proj_{i}", "0"))
    rules += layer_norm_rules(f"{t}.input_proj.{i}.1", f + (f"input_proj_{i}", "1"))
  rules.append(one(f"{t}.transformer.level_embed", f + ("level_embed",)))
  for i in range(enc.num_encoder_layers):
    lt, lf = f"{t}.transformer.encoder.layers.{i}", f + (f"encoder_layers_{i}",)
    rules += msda_rules(f"{lt}.self_attn", lf + ("self_attn",))
    rules += layer_norm_rules(f"{lt}.norm1", lf + ("norm1",))
    rules += linear_rules(f"{lt}.linear1", lf + ("linear1",))
    rules += linear_rules(f"{lt}.linear2", lf + ("linear2",))
    rules += layer_norm_rules(f"{lt}.norm2", lf + ("norm2",))
  rules += conv_rules(f"{t}.mask_features", f + ("mask_features",))
  for name in ("adapter_1", "layer_1"):
    rules += conv_rules(f"{t}.{name}", f + (name, "conv"), bias=False)
    rules += layer_norm_rules(f"{t}.{name}.norm", f + (name, "norm"))
  return KeyMap(rules)


def predictor_keymap(model: ml_collections.ConfigDict) -> KeyMap:
  """Torch keys under `sem_seg_head.predictor.` <-> Flax ("params", "predictor", ...)."""
  dec = model.decoder
  n_layers = dec.dec_layers
  t, f = HEAD + "predictor", ("params", "predictor")
  rules = []
  if not dec.two_stage or dec.learn_tgt:
    rules.append(one(f"{t}.query_feat.weight", f + ("query_feat", "embedding")))
  if not dec.two_stage and dec.initialize_box_type == "no":
    rules.append(one(f"{t}.query_embed.weight", f + ("query_embed", "embedding")))
  if dec.two_stage:
    rules += linear_rules(f"{t}.enc_output", f + ("enc_output",))
    rules += layer_norm_rules(f"{t}.enc_output_norm", f + ("enc_output_norm",))
  rules += linear_rules(f"{t}.class_embed", f + ("class_embed",))
  rules.append(one(f"{t}.label_enc.weight", f + ("label_enc", "embedding")))
  rules += mlp_rules(f"{t}.mask_embed", f + ("mask_embed",), 3)
  rules += decoder_norm_rules(t, f)
  for i in range(n_layers):
    rules += decoder_layer_rules(f"{t}.decoder.layers.{i}", f + ("decoder", f"layers_{i}"))
  rules += mlp_rules(f"{t}.decoder.ref_point_head", f + ("decoder", "ref_point_head"), 2)
  rules += bbox_embed_rules(t, f, n_layers)
  return KeyMap(rules)


def empty_weight(model: ml_collections.ConfigDict, no_object_weight: float = 0.1) -> np.ndarray:
  w = np.ones(model.num_classes + 1, np.float32)
  w[-1] = no_object_weight
  return w


def backbone_keymap(model: ml_collections.ConfigDict) -> KeyMap:
  """The backbone's map under `backbone.` / ("backbone",), from the backbone converters."""
  from dinoseg.convert import backbones as backbone_convert  # noqa: PLC0415
  from dinoseg.models.maskdino.model import build_backbone  # noqa: PLC0415
  module = build_backbone(model.backbone)
  name = model.backbone.name
  if name.startswith("resnet"):
    km = backbone_convert.resnet_keymap(module)
  elif name.startswith("swin"):
    km = backbone_convert.swin_keymap(module)
  else:
    raise UserValueError(f"no checkpoint layout for backbone {name!r} (Mask DINO uses resnet* or swin*)")
  return km.prefixed("backbone.", ("backbone",))


def head_keymap(model: ml_collections.ConfigDict, no_object_weight: float = 0.1) -> KeyMap:
  """pixel decoder + predictor + `criterion.empty_weight` (no backbone)."""
  return (pixel_decoder_keymap(model) + predictor_keymap(model)
          + KeyMap([buffer("criterion.empty_weight", empty_weight(model, no_object_weight), check=False)]))


def maskdino_keymap(model: ml_collections.ConfigDict, no_object_weight: float = 0.1) -> KeyMap:
  """The full checkpoint: backbone + head."""
  return head_keymap(model, no_object_weight) + backbone_keymap(model)


def load_state_dict(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Unwraps detectron2's {"model": state_dict, ...} and converts tensors to NumPy."""
  if "model" in state and isinstance(state["model"], Mapping):
    state = state["model"]
  out = {}
  for k, v in state.items():
    if hasattr(v, "detach"):
      v = v.detach().cpu().numpy()
    out[k] = np.asarray(v)
  return strip_prefix(out, "module.")


def to_flax(state: Mapping[str, Any], model: ml_collections.ConfigDict, expected: Mapping | None = None,
            head_only: bool = False) -> dict:
  """Reference state dict -> Flax variables ({"params": ..., "frozen_bn": ...})."""
  km = head_keymap(model) if head_only else maskdino_keymap(model)
  return km.to_flax(load_state_dict(state), expected=expected)


def to_torch(variables: Mapping, model: ml_collections.ConfigDict, head_only: bool = False,
             no_object_weight: float = 0.1) -> dict[str, np.ndarray]:
  """Flax variables -> the reference state dict (every tied copy, `criterion.empty_weight` rebuilt)."""
  km = head_keymap(model, no_object_weight) if head_only else maskdino_keymap(model, no_object_weight)
  return km.to_torch(variables)


# Released configs (configs/maskdino/<file>.py) registered as converters "maskdino_<file>".
RELEASED_CONFIGS = (
    "coco_instance_r50_3s_hid1024", "coco_instance_r50_3s_d1_2048", "coco_instance_swinl_4s_d1_2048",
    "coco_instance_swinl_4s_d1_2048_no_mask_enhance", "coco_panoptic_r50_3s_d1_2048", "coco_panoptic_swinl_4s_d1_2048",
    "coco_panoptic_swinl_4s_d1_2048_mask_enhance", "ade20k_semantic_r50", "cityscapes_semantic_r50",
)


@functools.lru_cache(maxsize=None)
def released_model_config(name: str) -> ml_collections.ConfigDict:
  from dinoseg.config import load_config  # noqa: PLC0415
  return load_config(f"configs/maskdino/{name}.py").model


def _register() -> None:
  for name in RELEASED_CONFIGS:
    conv_name = f"maskdino_{name}"
    if conv_name in registry.CONVERTERS:
      continue
    registry.register(registry.ModelConverter(
        name=conv_name,
        to_flax=functools.partial(lambda state, n: to_flax(state, released_model_config(n)), n=name),
        to_torch=functools.partial(lambda variables, n: to_torch(variables, released_model_config(n)), n=name),
        variables=True,
        description=f"Mask DINO, configs/maskdino/{name}.py (backbone + pixel decoder + predictor)"))


_register()

__all__ = ["maskdino_keymap", "head_keymap", "pixel_decoder_keymap", "predictor_keymap", "backbone_keymap",
           "mlp_rules", "msda_rules", "multihead_attention_rules", "decoder_layer_rules", "decoder_norm_rules",
           "bbox_embed_rules",
           "to_flax", "to_torch", "load_state_dict", "empty_weight", "RELEASED_CONFIGS", "released_model_config"]
