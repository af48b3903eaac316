"""Loading the three parts of a Talk2DINO model from weight files.

`config.weights` names one file per part; each is converted through the converter registry:

| part | key | converter | reference file |
|---|---|---|---|
| DINOv2 | `weights.dinov2` | `config.model.dinov2` (e.g. dinov2_vitb14_reg) | hub `dinov2_vitb14_reg4_pretrain.pth` |
| CLIP text | `weights.clip_text` | `clip_vitb16_text` | the state dict of OpenAI `ViT-B-16.pt` (see below) |
| projection | `weights.projection` | `talk2dino_vit{b,l}_mlp_infonce` | `weights/vitb_mlp_infonce.pth` |

`weights.projection` may also be a training workdir (its `projection.msgpack`). Accepted files:
`.safetensors`, `.npz` (torch key names), `.pth`/`.pt`/`.bin` (read safely by
`dinoseg.convert.readers`, with or without PyTorch; OpenAI's TorchScript `ViT-B-16.pt` must first be
re-saved as `torch.jit.load(path).state_dict()`), and `.msgpack` (Flax parameters of that part as written by `save_flax_params`). Everything is cast to
float32. An empty path leaves the part randomly initialized only when `weights.allow_random` is
True (tiny/test configs); otherwise it is an error.
"""
import os
import pathlib
from typing import Any, Mapping

import jax
import numpy as np

PARTS = ("dinov2", "clip_text", "projection")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A torch-layout state dict {key: np.ndarray} from .safetensors / .npz / .pth / .pt / .bin.

  Files are read with `dinoseg.convert.readers.read_checkpoint` (safe: nothing in them is
  executed). TorchScript archives (OpenAI's `ViT-B-16.pt`) are refused: save
  `torch.jit.load(path, map_location="cpu").state_dict()` as .safetensors / .pth first.
  """
  from dinoseg.convert.readers import read_checkpoint  # noqa: PLC0415
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weights file {path} not found")
  if path.suffix.lower() == ".npz":
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  if path.suffix.lower() not in (".safetensors", ".pth", ".pt", ".bin"):
    raise ValueError(f"unsupported weights file {path} (expected .safetensors, .npz, .pth, .pt, .bin or .msgpack)")
  try:
    state = read_checkpoint(path)
  except Exception as error:  # noqa: BLE001
    if zipfile_has(path, "constants.pkl"):
      raise ValueError(f"{path} is a TorchScript archive: save torch.jit.load(path, map_location='cpu').state_dict() "
                       "as .safetensors or .pth and use that file") from None
    raise ValueError(f"could not read {path}: {error}") from None
  if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
    state = state["state_dict"]
  if not isinstance(state, Mapping):
    raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
  return {k: np.asarray(v) for k, v in state.items()}


def zipfile_has(path: pathlib.Path, member: str) -> bool:
  """Whether a zip archive holds a member named `member` (at any depth)."""
  import zipfile  # noqa: PLC0415
  try:
    with zipfile.ZipFile(path) as z:
      return any(n.split("/")[-1] == member for n in z.namelist())
  except zipfile.BadZipFile:
    return False


def save_flax_params(params: Mapping, path: str | os.PathLike) -> None:
  """Writes a part's Flax parameters as msgpack (float32 numpy)."""
  from flax import serialization  # noqa: PLC0415
  tree = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), dict(params))
  pathlib.Path(path).write_bytes(serialization.msgpack_serialize(tree))


def load_flax_params(path: str | os.PathLike) -> dict:
  from flax import serialization  # noqa: PLC0415
  return serialization.msgpack_restore(pathlib.Path(path).read_bytes())


def check_tree(part: str, loaded: Mapping, expected: Mapping) -> None:
  """ValueError unless `loaded` has exactly the paths and shapes of `expected` (arrays or ShapeDtypeStructs)."""
  shapes = lambda t: jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), dict(t))  # noqa: E731
  got, want = shapes(loaded), shapes(expected)
  if got != want:
    flat_got = dict(jax.tree_util.tree_leaves_with_path(got, is_leaf=lambda x: isinstance(x, tuple)))
    flat_want = dict(jax.tree_util.tree_leaves_with_path(want, is_leaf=lambda x: isinstance(x, tuple)))
    diff = sorted(jax.tree_util.keystr(k) for k in set(flat_got) ^ set(flat_want))
    bad = sorted(jax.tree_util.keystr(k) for k in set(flat_got) & set(flat_want) if flat_got[k] != flat_want[k])
    raise ValueError(f"{part} weights do not fit the configured model: paths only on one side {diff[:10]}, "
                     f"shape mismatches {bad[:10]}")


def load_part(part: str, path: str, to_flax, expected: Mapping) -> dict:
  """One part's Flax params from `path` (a .msgpack of Flax params, or a state dict converted by `to_flax`)."""
  if str(path).endswith(".msgpack"):
    params = load_flax_params(path)
  else:
    params = to_flax(read_state_dict(path))
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
  check_tree(part, params, expected)
  return params


def resolve_projection_path(path: str | os.PathLike) -> str:
  """A projection weights file, or a training workdir holding `projection.msgpack` / `.safetensors`."""
  path = pathlib.Path(path)
  if path.is_dir():
    for name in ("projection.msgpack", "projection.safetensors"):
      if (path / name).is_file():
        return str(path / name)
    raise FileNotFoundError(f"{path} holds no projection.msgpack or projection.safetensors")
  return str(path)


def load_model_params(model, config, rng: jax.Array | None = None, image_size: int = 28) -> dict[str, Any]:
  """Parameters of a Talk2Dino model from `config.weights` (see the module doc).

  Args:
    model: Talk2Dino (as built by `model.build_model(config.model)`).
    config: a config with `model` and `weights` groups (weights.dinov2 / clip_text / projection
      paths and `allow_random`).
    rng: for parts left random.
  Raises:
    ValueError: an empty path while `weights.allow_random` is False, or weights that do not fit.
  """
  from dinoseg.models.talk2dino.model import init_params  # noqa: PLC0415
  weights = config.weights
  rng = jax.random.key(int(config.get("seed", 0))) if rng is None else rng
  abstract = jax.eval_shape(lambda: init_params(model, rng, image_size=image_size))
  params = {}
  missing = [p for p in PARTS if not weights.get(p, "")]
  if missing and not weights.get("allow_random", False):
    raise ValueError(f"config.weights.{missing[0]} is empty: give a weights file for every part "
                     f"({', '.join(missing)} missing) or set config.weights.allow_random=True")
  if missing:
    params = jax.tree_util.tree_map(np.asarray, init_params(model, rng, image_size=image_size))
  from dinoseg.convert import get  # noqa: PLC0415
  from dinoseg.models.talk2dino.convert import projection_to_flax  # noqa: PLC0415
  converters = {
      "dinov2": get(config.model.dinov2).to_flax,
      "clip_text": get(config.model.get("clip_text", "clip_vitb16_text")).to_flax,
      "projection": lambda state: projection_to_flax(state, int(model.projection.embed_dim),
                                                     int(model.clip_text.embed_dim))}
  for part in PARTS:
    path = weights.get(part, "")
    if path:
      if part == "projection":
        path = resolve_projection_path(path)
      params[part] = load_part(part, path, converters[part], abstract[part])
  return params


__all__ = ["read_state_dict", "save_flax_params", "load_flax_params", "load_part", "load_model_params",
           "resolve_projection_path", "PARTS"]
