"""OV2Seg checkpoints: reference (detectron2) state dicts <-> dinoseg Flax variables, both directions, strict.

Layout of the released R50 checkpoint (`{"model": state_dict}`; shared/reference/ov2seg.md section 8 and
shared/reference/keys/ov2seg_head_keys.txt):
- `backbone.base.*`: timm's ResNet-50 (`conv1`, `bn1`, `layer{1..4}.{i}.{conv,bn}{1,2,3}`,
  `layer{k}.0.downsample.{0,1}`; FrozenBN buffers weight / bias / running_mean / running_var) <->
  dinoseg's ResNet (`params` + `frozen_bn` under "backbone"): the same network (stride on the 3x3 conv,
  projection shortcut on the first block of every stage), only the names differ. `num_batches_tracked`
  counters (saved by newer detectron2) are accepted and dropped. The Swin-B layout (`:swinb` variant, no
  released weights) is Mask2Former's D2SwinTransformer under `backbone.` (dinoseg/convert/backbones.py).
- `sem_seg_head.pixel_decoder.*`: Mask2Former's pixel decoder, the key layout of Mask DINO's encoder with 3
  levels (`input_proj.0` reads res5): Mask DINO's map (dinoseg/models/maskdino/convert.py) is reused.
- `sem_seg_head.predictor.*`: the masked-attention decoder (`predictor_keymap`).
- Dropped on import, whatever their shape: `sem_seg_head.predictor.class_embed.zs_weight` (the (512, C + 1)
  class embeddings of the training vocabulary: the model takes the vocabulary as an input instead) and the
  criterion's buffers `criterion.{empty_weight, empty_object_weight, freq_weight}`. Their absence is not an
  error either. Every other key must be present with the model's shape.
- Export (`to_torch`) writes every model key; `zs_weight` is written when a vocabulary (C, 512) is given
  (columns L2-normalised, a zero background column appended, as the reference builds it) and the criterion
  buffers when the LVIS per-category image counts are given (`freq_weight` = counts ** 0.5, `empty_weight`
  ones with a 0 for the background, `empty_object_weight` = [1, 0.4]). The registered command-line converter
  writes neither: detectron2's checkpointer loads such a file (non-strict) and keeps the buffers the reference
  builds from its own CLIP_PATH / category file; `torch.load_state_dict(strict=True)` needs both, i.e.
  `to_torch(variables, config, vocabulary=np.load("fg_bg_5_10_lvis_ens.npy"), category_image_counts=...)`.
"""
import functools
from typing import Any, Mapping

import ml_collections
import numpy as np

from dinoseg.convert import registry
from dinoseg.convert.keymap import (CONV, LINEAR, ConversionError, KeyMap, buffer, frozen_bn_rules, layer_norm_rules,
                                    linear_rules, one)
from dinoseg.errors import UserValueError
from dinoseg.models.maskdino.convert import load_state_dict, pixel_decoder_keymap

HEAD = "sem_seg_head."
PREDICTOR = HEAD + "predictor"
ZS_WEIGHT = PREDICTOR + ".class_embed.zs_weight"
CRITERION_BUFFERS = ("criterion.empty_weight", "criterion.empty_object_weight", "criterion.freq_weight")
NO_OBJECT_WEIGHT = 0.4  # the objectness CE's no-object class weight (criterion.empty_object_weight[1])
DROPPED_ON_IMPORT = ("^" + ZS_WEIGHT.replace(".", r"\.") + "$",
                     *("^" + k.replace(".", r"\.") + "$" for k in CRITERION_BUFFERS))
TIMM_BACKBONE_PREFIX = "backbone.base."


def _mlp_rules(t: str, f: tuple, num_layers: int) -> list:
  return [r for i in range(num_layers) for r in linear_rules(f"{t}.layers.{i}", f + (f"layers_{i}",))]


def _attention_rules(t: str, f: tuple) -> list:
  """torch.nn.MultiheadAttention <-> dinoseg.models.maskdino.decoder.MultiheadAttention."""
  return ([one(f"{t}.in_proj_weight", f + ("in_proj_kernel",), LINEAR), one(f"{t}.in_proj_bias", f + ("in_proj_bias",))]
          + linear_rules(f"{t}.out_proj", f + ("out_proj",)))


def predictor_keymap(model: ml_collections.ConfigDict) -> KeyMap:
  """Torch keys under `sem_seg_head.predictor.` <-> Flax ("params", "predictor", ...), reference order."""
  t, f = PREDICTOR, ("params", "predictor")
  rules = []
  n = model.decoder.dec_layers
  for i in range(n):
    lt, lf = f"{t}.transformer_self_attention_layers.{i}", f + (f"transformer_self_attention_layers_{i}",)
    rules += _attention_rules(f"{lt}.self_attn", lf + ("self_attn",)) + layer_norm_rules(f"{lt}.norm", lf + ("norm",))
  for i in range(n):
    lt, lf = f"{t}.transformer_cross_attention_layers.{i}", f + (f"transformer_cross_attention_layers_{i}",)
    rules += (_attention_rules(f"{lt}.multihead_attn", lf + ("multihead_attn",))
              + layer_norm_rules(f"{lt}.norm", lf + ("norm",)))
  for i in range(n):
    lt, lf = f"{t}.transformer_ffn_layers.{i}", f + (f"transformer_ffn_layers_{i}",)
    rules += (linear_rules(f"{lt}.linear1", lf + ("linear1",)) + linear_rules(f"{lt}.linear2", lf + ("linear2",))
              + layer_norm_rules(f"{lt}.norm", lf + ("norm",)))
  rules += layer_norm_rules(f"{t}.decoder_norm", f + ("decoder_norm",))
  for name in ("query_feat", "query_embed", "level_embed"):
    rules.append(one(f"{t}.{name}.weight", f + (name, "embedding")))
  for i in (0, 2):
    rules += linear_rules(f"{t}.class_embed.linear.{i}", f + ("class_embed", f"linear_{i}"))
  rules += _mlp_rules(f"{t}.object_embed", f + ("object_embed",), 2)
  rules += _mlp_rules(f"{t}.mask_embed", f + ("mask_embed",), 3)
  return KeyMap(rules)


def timm_resnet_keymap(module) -> KeyMap:
  """timm ResNet names (`conv1`, `bn1`, `layer{k}.{i}.conv{j}` / `bn{j}`, `downsample.{0,1}`; timm's state-dict
  order) <-> a `dinoseg.backbones.resnet.ResNet` (params + frozen_bn), without prefix."""
  from dinoseg.backbones.resnet import STAGE_NAMES  # noqa: PLC0415
  if list(module.out_features) != list(STAGE_NAMES):
    raise UserValueError(f"the timm ResNet layout needs all four stages, got out_features={module.out_features}")
  rules = [one("conv1.weight", ("params", "stem", "conv1", "kernel"), CONV)]
  rules += frozen_bn_rules("bn1", ("stem", "conv1", "norm"))
  in_ch, out_ch = module.stem_channels, module.res2_channels
  for k, (stage, blocks) in enumerate(zip(STAGE_NAMES, module.stage_blocks), start=1):
    for i in range(blocks):
      t, f = f"layer{k}.{i}", f"{stage}_{i}"
      for j in (1, 2, 3):
        rules.append(one(f"{t}.conv{j}.weight", ("params", f, f"conv{j}", "kernel"), CONV))
        rules += frozen_bn_rules(f"{t}.bn{j}", (f, f"conv{j}", "norm"))
      if i == 0 and in_ch != out_ch:
        rules.append(one(f"{t}.downsample.0.weight", ("params", f, "shortcut", "kernel"), CONV))
        rules += frozen_bn_rules(f"{t}.downsample.1", (f, "shortcut", "norm"))
    in_ch, out_ch = out_ch, out_ch * 2
  return KeyMap(rules, ignore=[r"\.num_batches_tracked$"])


def backbone_keymap(model: ml_collections.ConfigDict) -> KeyMap:
  """`backbone.base.*` (timm ResNet) or `backbone.*` (D2 Swin) <-> ("backbone", ...)."""
  from dinoseg.convert import backbones as backbone_convert  # noqa: PLC0415
  from dinoseg.models.maskdino.model import build_backbone  # noqa: PLC0415
  module = build_backbone(model.backbone)
  name = model.backbone.name
  if name.startswith("resnet"):
    return timm_resnet_keymap(module).prefixed(TIMM_BACKBONE_PREFIX, ("backbone",))
  if name.startswith("swin"):
    return backbone_convert.swin_keymap(module).prefixed("backbone.", ("backbone",))
  raise UserValueError(f"no checkpoint layout for backbone {name!r} (OV2Seg uses resnet* or swin*)")


def zs_weight(vocabulary: np.ndarray) -> np.ndarray:
  """The reference's `zs_weight` buffer of a vocabulary (C, E): (E, C + 1), columns L2-normalised, the last 0."""
  vocabulary = np.asarray(vocabulary, np.float32)
  if vocabulary.ndim != 2 or vocabulary.shape[0] == 0:
    raise ConversionError(f"the vocabulary must be a non-empty (C, E) array, got shape {vocabulary.shape}")
  w = np.concatenate([vocabulary.T, np.zeros((vocabulary.shape[1], 1), np.float32)], 1)
  return (w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), np.float32(1e-12))).astype(np.float32)


def criterion_buffers(num_classes: int, category_image_counts: np.ndarray) -> dict[str, np.ndarray]:
  """The reference criterion's persistent buffers: empty_weight (C + 1) ones with 0 last, empty_object_weight
  [1, 0.4], freq_weight = image counts ** 0.5 (per category, sorted by id; 1203 for LVIS)."""
  empty = np.ones(num_classes + 1, np.float32)
  empty[-1] = 0.0
  counts = np.asarray(category_image_counts, np.float32)
  return {"criterion.empty_weight": empty,
          "criterion.empty_object_weight": np.array([1.0, NO_OBJECT_WEIGHT], np.float32),
          "criterion.freq_weight": (counts ** 0.5).astype(np.float32)}


def head_keymap(model: ml_collections.ConfigDict) -> KeyMap:
  """pixel decoder + predictor, `zs_weight` and the criterion buffers dropped on import."""
  km = pixel_decoder_keymap(model) + predictor_keymap(model)
  return KeyMap(km.rules, ignore=km.ignore + DROPPED_ON_IMPORT)


def ov2seg_keymap(model: ml_collections.ConfigDict) -> KeyMap:
  """The full checkpoint: backbone + head."""
  return backbone_keymap(model) + head_keymap(model)


def _model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return config.model if "model" in config else config


def to_flax(state: Mapping[str, Any], config: ml_collections.ConfigDict, expected: Mapping | None = None,
            head_only: bool = False) -> dict:
  """Reference state dict / checkpoint -> Flax variables {"params": ..., "frozen_bn": ...} (ResNet).

  Args:
    state: {"model": state_dict} or a state dict (torch tensors or arrays).
    config: the config or its `model` group.
    expected: abstract variables to check shapes and dtypes against (default: `abstract_variables(config)`,
      computed with jax.eval_shape; its head part when `head_only`).
    head_only: `sem_seg_head.*` keys only (no backbone).
  Raises:
    ConversionError (KeyMismatchError): a missing, unexpected or wrongly shaped key, named.
  """
  model = _model_config(config)
  km = head_keymap(model) if head_only else ov2seg_keymap(model)
  if expected is None:
    expected = abstract_variables(model)
    if head_only:
      expected = {"params": {k: v for k, v in expected["params"].items() if k in ("pixel_decoder", "predictor")}}
  return km.to_flax(load_state_dict(state), expected=expected)


def to_torch(variables: Mapping, config: ml_collections.ConfigDict, head_only: bool = False,
             vocabulary: np.ndarray | None = None,
             category_image_counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Flax variables -> the reference state dict (reference key names, layouts and order).

  Args:
    vocabulary: optional (C, 512) class embeddings (e.g. a DetPro `*_ens.npy`): adds `zs_weight`.
    category_image_counts: optional per-category image counts (LVIS `image_count` sorted by id): adds the
      criterion buffers (their class count is the vocabulary's C when given, else the counts' length).
  """
  model = _model_config(config)
  km = head_keymap(model) if head_only else ov2seg_keymap(model)
  extra = []
  if vocabulary is not None:
    extra.append(buffer(ZS_WEIGHT, zs_weight(vocabulary), check=False))
  if category_image_counts is not None:
    num_classes = np.asarray(vocabulary).shape[0] if vocabulary is not None else len(category_image_counts)
    extra += [buffer(k, v, check=False) for k, v in criterion_buffers(num_classes, category_image_counts).items()]
  return (km + KeyMap(extra)).to_torch(variables)


def abstract_variables(model_config: ml_collections.ConfigDict, hw: int = 64) -> dict:
  """jax.eval_shape of the model's init (no weights allocated): the shapes the converter checks against."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from dinoseg.models.ov2seg.model import build_model  # noqa: PLC0415
  model_config = model_config.copy_and_resolve_references()
  model_config.msda_impl = "xla"
  model = build_model(model_config)
  embeddings = jnp.zeros((1, model_config.classifier.embed_dim))
  return dict(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, hw, hw, 3)), embeddings))


# Released layouts (configs/ov2seg/r50_lvis.py[:variant]) registered as converters.
RELEASED_CONFIGS = {
    "ov2seg_r50_lvis": ("r50_lvis.py", "OV2Seg R50 (timm ResNet-50), configs/ov2seg/r50_lvis.py; "
                                       "zs_weight / criterion buffers dropped"),
    "ov2seg_swinb_lvis": ("r50_lvis.py:swinb", "OV2Seg Swin-B layout (no released weights), "
                                               "configs/ov2seg/r50_lvis.py:swinb"),
}


@functools.lru_cache(maxsize=None)
def released_model_config(name: str) -> ml_collections.ConfigDict:
  from dinoseg.config import load_config  # noqa: PLC0415
  return load_config(f"configs/ov2seg/{RELEASED_CONFIGS[name][0]}").model


def converter(name: str) -> registry.ModelConverter:
  """The ModelConverter of a RELEASED_CONFIGS entry."""
  return registry.ModelConverter(
      name=name, to_flax=lambda state: to_flax(state, released_model_config(name)),
      to_torch=lambda variables: to_torch(variables, released_model_config(name)),
      variables=True, description=RELEASED_CONFIGS[name][1],
      abstract=lambda: abstract_variables(released_model_config(name)))


def _register() -> None:
  for name in RELEASED_CONFIGS:
    if name not in registry.CONVERTERS:
      registry.register(converter(name))


_register()

__all__ = ["ov2seg_keymap", "head_keymap", "predictor_keymap", "backbone_keymap", "timm_resnet_keymap", "to_flax",
           "to_torch", "zs_weight", "criterion_buffers", "abstract_variables", "converter", "RELEASED_CONFIGS",
           "released_model_config", "DROPPED_ON_IMPORT", "ZS_WEIGHT", "CRITERION_BUFFERS"]
