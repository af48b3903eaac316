"""Loading SegNext weights for inference, evaluation and the demo.

`load_model(model_config, weights, random_init=False)` returns (SegNext, params):
- a reference checkpoint (`.pth`/`.pt`, `.safetensors`; `{"state_dict", "config"}` or a bare state
  dict) is converted with `convert.segnext_to_flax` (strict); the architecture is read from the
  tensor shapes and, for the head count and the global-attention frequency, from the file's
  serialized config when present (else from `model_config`);
- an Orbax directory (`dinoseg convert --to DIR`, or a trainer step directory) holding `params`;
- `random_init=True`: random params from `model_config` (a smoke test; the demo labels it).
"""
import dataclasses
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.models.segnext import convert
from dinoseg.models.segnext import prompts as prompt_lib
from dinoseg.models.segnext.model import SegNext, build_segnext

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def init_params(model: SegNext, seed: int = 0) -> Any:
  """Random params (the extra prompt kernel starts at zero)."""
  s = model.image_size
  return jax.jit(lambda key: model.init(key, jnp.zeros((1, s, s, 3)), jnp.asarray([[s, s]], jnp.int32),
                                        prompt_lib.empty_prompts(1), jnp.zeros((1, s, s)))["params"])(
                                            jax.random.key(seed))


def _with_arch(model_config: Mapping[str, Any], arch: convert.SegNextArch, reference_config: Mapping | None):
  kwargs = dict(model_config)
  kwargs.update(image_size=arch.image_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim,
                depth=arch.depth, mlp_ratio=arch.mlp_ratio, fusion_depth=arch.fusion_depth,
                neck_dims=tuple(arch.neck_dims), head_channels=arch.head_channels)
  try:
    params = reference_config["params"]
    kwargs["num_heads"] = int(params["backbone_params"]["value"]["num_heads"])
    kwargs["global_atten_freq"] = int(params["backbone_params"]["value"]["global_atten_freq"])
    kwargs["norm_radius"] = float(params["norm_radius"]["value"])
  except (KeyError, TypeError):
    pass
  return kwargs


def load_model(model_config: Mapping[str, Any], weights: str | None = None, *, random_init: bool = False,
               seed: int = 0) -> tuple[SegNext, Any]:
  """(model, params) from a checkpoint or random init (see the module docstring).

  Raises:
    UserValueError: neither weights nor random_init, or an unreadable / mismatching checkpoint.
    UserFileNotFoundError: `weights` does not exist.
  """
  if random_init:
    if weights:
      raise UserValueError("pass either weights or random_init, not both")
    model = build_segnext(model_config)
    return model, init_params(model, seed)
  if not weights:
    raise UserValueError("weights are required (a SegNext .pth or an Orbax directory), or random_init=True")
  path = pathlib.Path(weights)
  if not path.exists():
    raise UserFileNotFoundError(f"no such weights: {path}")
  if path.is_dir():
    from dinoseg.convert import readers  # noqa: PLC0415
    tree = readers.read_orbax(path)
    params = tree.get("params")
    if params is None and isinstance(tree.get("state"), Mapping):
      params = tree["state"].get("params")
    if params is None:
      raise UserValueError(f"{path}: the Orbax tree has no 'params' (top-level keys: {sorted(tree)})")
    flat = {"/".join(k): v for k, v in convert._flatten(params).items()}
    kwargs = _with_arch(model_config, convert.infer_arch_from_flax(flat), None)
    kwargs["extra_prompts"] = "extra_prompts_encoder/kernel" in flat
    return build_segnext(kwargs), jax.tree.map(jnp.asarray, params)
  if path.suffix.lower() not in _TORCH_SUFFIXES:
    raise UserValueError(f"{path}: expected a .pth/.pt/.safetensors SegNext checkpoint or an Orbax directory")
  state, reference_config = convert.read_checkpoint(str(path))
  arch = convert.infer_arch(state)
  kwargs = _with_arch(model_config, arch, reference_config)
  extra = bool(kwargs.get("extra_prompts", True))
  params = convert.segnext_to_flax(state, extra_prompts=extra)
  return build_segnext(kwargs), jax.tree.map(jnp.asarray, params)


def describe(model: SegNext) -> str:
  fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(SegNext) if f.name in (
      "image_size", "embed_dim", "depth", "fusion_depth", "extra_prompts")}
  return ", ".join(f"{k}={v}" for k, v in fields.items())
