"""Talk2DINO projection weights <-> Flax (`TextProjection` parameters).

The published files (`weights/vitb_mlp_infonce.pth`, `vitl_mlp_infonce.pth`) are plain
state dicts of the reference `ProjectionLayer`:

| torch key | shape | Flax path |
|---|---|---|
| `linear_layer.weight` | (D, 512) | `linear_layer/kernel` (512, D) |
| `linear_layer.bias` | (D,) | `linear_layer/bias` |
| `hidden_layers.{i}.weight` | (D, D) | `hidden_layers_{i}/kernel` (transposed) |
| `hidden_layers.{i}.bias` | (D,) | `hidden_layers_{i}/bias` |

Older files name the single hidden layer `linear_layer2.*`; the reference renames it to
`hidden_layers.0.*` on load, and so does `projection_to_flax`. Export always writes the
`hidden_layers.{i}` names. The number of hidden layers is read from the keys. Dtypes are kept.

Registered converters: `talk2dino_vitb_mlp_infonce` (D = 768) and `talk2dino_vitl_mlp_infonce`
(D = 1024); both check the shapes against their width.
"""
import re
from typing import Mapping

import numpy as np

from dinoseg.convert.keymap import ConversionError, KeyMismatchError
from dinoseg.convert.registry import ModelConverter, register

_HIDDEN = re.compile(r"^hidden_layers\.(\d+)\.(weight|bias)$")
_LEGACY = {"linear_layer2.weight": "hidden_layers.0.weight", "linear_layer2.bias": "hidden_layers.0.bias"}


def _rename_legacy(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  state = dict(state)
  if any(k in state for k in _LEGACY):
    if any(_HIDDEN.match(k) for k in state):
      raise KeyMismatchError("the state dict has both `linear_layer2.*` and `hidden_layers.*` keys")
    for old, new in _LEGACY.items():
      if old in state:
        state[new] = state.pop(old)
  return state


def projection_to_flax(state: Mapping[str, np.ndarray], embed_dim: int | None = None,
                       text_dim: int | None = None) -> dict:
  """Reference ProjectionLayer state dict -> `TextProjection` params.

  Args:
    state: {key: array} (torch tensors must be converted to numpy first).
    embed_dim: expected D (checked when given).
    text_dim: expected CLIP width (checked when given).
  Raises:
    KeyError: missing or unexpected keys (nothing is converted partially).
    ValueError: shapes that do not fit.
  """
  state = _rename_legacy({k: np.asarray(v) for k, v in state.items()})
  hidden = sorted({int(m.group(1)) for m in map(_HIDDEN.match, state) if m})
  if hidden != list(range(len(hidden))):
    raise KeyMismatchError(f"hidden layers must be numbered 0..n-1, got {hidden}")
  expected = {"linear_layer.weight", "linear_layer.bias"}
  expected |= {f"hidden_layers.{i}.{p}" for i in hidden for p in ("weight", "bias")}
  missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
  if missing or unexpected:
    raise KeyMismatchError(f"projection weights: missing keys {missing}; unexpected keys {unexpected}")
  w = state["linear_layer.weight"]
  if w.ndim != 2:
    raise ConversionError(f"linear_layer.weight must be 2-D (D, C), got shape {w.shape}")
  d, c = w.shape
  if embed_dim is not None and d != embed_dim:
    raise ConversionError(f"linear_layer.weight has width {d}, expected embed_dim {embed_dim}")
  if text_dim is not None and c != text_dim:
    raise ConversionError(f"linear_layer.weight takes {c}-d text embeddings, expected {text_dim}")
  shapes = {"linear_layer.bias": (d,), **{f"hidden_layers.{i}.weight": (d, d) for i in hidden},
            **{f"hidden_layers.{i}.bias": (d,) for i in hidden}}
  for key, shape in shapes.items():
    if state[key].shape != shape:
      raise ConversionError(f"{key} has shape {state[key].shape}, expected {shape}")
  params = {"linear_layer": {"kernel": np.ascontiguousarray(w.T), "bias": state["linear_layer.bias"]}}
  for i in hidden:
    params[f"hidden_layers_{i}"] = {"kernel": np.ascontiguousarray(state[f"hidden_layers.{i}.weight"].T),
                                    "bias": state[f"hidden_layers.{i}.bias"]}
  return params


def projection_to_torch(params: Mapping) -> dict[str, np.ndarray]:
  """`TextProjection` params (or {"params": ...}, or a full Talk2Dino tree with "projection") -> state dict."""
  if set(params) == {"params"}:
    params = params["params"]
  if "projection" in params:
    params = params["projection"]
  names = set(params)
  hidden = sorted(int(n.split("_")[-1]) for n in names if re.fullmatch(r"hidden_layers_\d+", n))
  expected = {"linear_layer"} | {f"hidden_layers_{i}" for i in hidden}
  if names != expected or hidden != list(range(len(hidden))):
    raise KeyMismatchError(f"projection params: expected {sorted(expected)}, got {sorted(names)}")
  state = {}
  for flax_name, torch_name in [("linear_layer", "linear_layer")] + [(f"hidden_layers_{i}", f"hidden_layers.{i}")
                                                                       for i in hidden]:
    layer = params[flax_name]
    if set(layer) != {"kernel", "bias"}:
      raise KeyMismatchError(f"{flax_name}: expected kernel and bias, got {sorted(layer)}")
    state[f"{torch_name}.weight"] = np.ascontiguousarray(np.asarray(layer["kernel"]).T)
    state[f"{torch_name}.bias"] = np.asarray(layer["bias"])
  return state


def projection_converter(name: str, embed_dim: int, text_dim: int = 512) -> ModelConverter:
  return ModelConverter(
      name=name, to_flax=lambda state: projection_to_flax(state, embed_dim, text_dim),
      to_torch=projection_to_torch,
      description=f"Talk2DINO projection CLIP text {text_dim} -> DINOv2 {embed_dim} (linear_layer, hidden_layers.0)")


register(projection_converter("talk2dino_vitb_mlp_infonce", 768))
register(projection_converter("talk2dino_vitl_mlp_infonce", 1024))

__all__ = ["projection_to_flax", "projection_to_torch", "projection_converter"]
