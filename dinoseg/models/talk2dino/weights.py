"""Loading the three parts of a Talk2DINO model from weight files: the `config.init` entries.

Each part is one entry of `config.init` (dinoseg.convert.init) whose converter is built from the
configured model (so tiny widths work too):

| part | entry (target) | converter | reference file |
|---|---|---|---|
| DINOv2 | `init.dinov2` | "dinov2": hub keys at the model's depth / ffn / registers | hub `dinov2_vitb14_reg4_pretrain.pth` |
| CLIP text | `init.clip_text` | "clip_text": text keys of a CLIP state dict (`visual.*` ignored) | the state dict of OpenAI `ViT-B-16.pt` (see below) |
| projection | `init.projection` | "projection": `linear_layer.*`, `hidden_layers.{i}.*` | `weights/vitb_mlp_infonce.pth` |

`init.projection.file` is read by the task's weights route (`Talk2DinoTask.variables_from_weights`): also a
training workdir or one of its checkpoints; `--weights` of `dinoseg eval / predict` sets it. Accepted files: `.safetensors`, `.npz` (torch key names),
`.pth`/`.pt`/`.bin` (read safely by `dinoseg.convert.readers`, with or without PyTorch; OpenAI's
TorchScript `ViT-B-16.pt` must first be re-saved as `torch.jit.load(path).state_dict()`), and `.msgpack`
(Flax parameters of that part as written by `save_flax_params`). Everything is cast to float32. An
entry with an empty file leaves its part random (with a warning) unless its `required` is True (the
released configs; the tiny variants set it False), which is an error instead. Feature extraction reads
DINOv2 and CLIP text only; `dinoseg train` only the projection (it trains that part).
"""
import dataclasses
import logging
import os
import pathlib
import re
from typing import Any, Mapping

import jax
import numpy as np

from dinoseg.convert.keymap import ConversionError
from dinoseg.errors import UserError, UserFileNotFoundError, UserValueError

logger = logging.getLogger(__name__)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A torch-layout state dict {key: np.ndarray} from .safetensors / .npz / .pth / .pt / .bin.

  Files are read with `dinoseg.convert.readers.read_checkpoint` (safe: nothing in them is
  executed). TorchScript archives (OpenAI's `ViT-B-16.pt`) are refused: save
  `torch.jit.load(path, map_location="cpu").state_dict()` as .safetensors / .pth first.
  """
  from dinoseg.convert.readers import read_checkpoint  # noqa: PLC0415
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserFileNotFoundError(f"weights file {path} not found")
  if path.suffix.lower() == ".npz":
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  if path.suffix.lower() not in (".safetensors", ".pth", ".pt", ".bin"):
    raise UserValueError(f"unsupported weights file {path} (expected .safetensors, .npz, .pth, .pt, .bin or .msgpack)")
  try:
    state = read_checkpoint(path)
  except UserError:  # unreadable or unsafe: name the TorchScript case, which has a fix
    if zipfile_has(path, "constants.pkl"):
      raise UserValueError(f"{path} is a TorchScript archive: save torch.jit.load(path, map_location='cpu')"
                           ".state_dict() as .safetensors or .pth and use that file") from None
    raise
  if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
    state = state["state_dict"]
  if not isinstance(state, Mapping):
    raise UserValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
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
  """ConversionError (a ValueError) unless `loaded` has exactly the paths and shapes of `expected` (arrays or ShapeDtypeStructs)."""
  shapes = lambda t: jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), dict(t))  # noqa: E731
  got, want = shapes(loaded), shapes(expected)
  if got != want:
    flat_got = dict(jax.tree_util.tree_leaves_with_path(got, is_leaf=lambda x: isinstance(x, tuple)))
    flat_want = dict(jax.tree_util.tree_leaves_with_path(want, is_leaf=lambda x: isinstance(x, tuple)))
    diff = sorted(jax.tree_util.keystr(k) for k in set(flat_got) ^ set(flat_want))
    bad = sorted(jax.tree_util.keystr(k) for k in set(flat_got) & set(flat_want) if flat_got[k] != flat_want[k])
    raise ConversionError(f"{part} weights do not fit the configured model: paths only on one side {diff[:10]}, "
                     f"shape mismatches {bad[:10]}")


def init_converters(model, task) -> dict:
  """The "dinov2", "clip_text" and "projection" converters of `config.init` for this Talk2Dino model
  (dinoseg.convert.init.InitConverter): key maps at the model's depths (partial loading reported) for the
  backbones, the task's weights route (`Talk2DinoTask.variables_from_weights`) for the projection."""
  from dinoseg.convert import init as init_lib  # noqa: PLC0415
  from dinoseg.convert.dinov2_clip import (CLIP_IGNORED_KEYS, CLIP_IGNORED_PREFIXES, clip_text_key_table,  # noqa: PLC0415
                                           dinov2_key_table)
  d = model.dinov2
  dinov2_map = init_lib.keytable_keymap(dinov2_key_table(d.depth, d.ffn, d.num_register_tokens))
  clip_map = init_lib.keytable_keymap(
      clip_text_key_table(model.clip_text.depth),
      ignore=[f"^{k}$" for k in CLIP_IGNORED_KEYS] + [f"^{re.escape(p)}" for p in CLIP_IGNORED_PREFIXES])

  def part(keymap):
    def convert(path, target):
      if str(path).endswith(".msgpack"):
        return init_lib.from_variables({"params": load_flax_params(path)}, target)
      return init_lib.from_keymap(keymap, read_state_dict(path), target)
    return convert

  def projection(path, target):  # shapes are checked by init_lib.load against the target
    return init_lib.from_variables(task.variables_from_weights(path, check=False), target)

  return {"dinov2": part(dinov2_map), "clip_text": part(clip_map), "projection": projection}


def load_model_params(model, config, rng: jax.Array | None = None, image_size: int = 28,
                      without: tuple[str, ...] = ()) -> dict[str, Any]:
  """Parameters of a Talk2Dino model from `config.init` (see the module doc).

  Args:
    model: Talk2Dino (as built by `model.build_model(config.model)`).
    config: a config with `model` and `init` groups.
    rng: for parts left random.
    without: parts not read here (e.g. ("projection",) for feature extraction, or when the projection is
      given directly); they stay random.
  Raises:
    ValueError (dinoseg.convert.init.InitError): a required part without a file, or weights that do not
      fit; FileNotFoundError: a missing file.
  """
  from dinoseg.convert import init as init_lib  # noqa: PLC0415
  from dinoseg.convert.keymap import flatten_variables  # noqa: PLC0415
  from dinoseg.models.talk2dino.model import init_params  # noqa: PLC0415
  from dinoseg.models.talk2dino.task import Talk2DinoTask  # noqa: PLC0415
  rng = jax.random.key(int(config.get("seed", 0))) if rng is None else rng
  abstract = {"params": jax.eval_shape(lambda: init_params(model, rng, image_size=image_size))}
  entries = [dataclasses.replace(e, skipped="not needed here") if e.target[:1] in {(p,) for p in without} else e
             for e in init_lib.entries(config.get("init"))]
  arrays, reports = init_lib.load(entries, abstract, init_converters(model, Talk2DinoTask(config)))
  for report in reports:
    (logger.warning if report["status"] == "not given" else logger.info)(init_lib.describe(report))
  variables = {}
  if any(path not in arrays for path in flatten_variables(abstract)):
    variables = {"params": jax.tree_util.tree_map(np.asarray, init_params(model, rng, image_size=image_size))}
  return init_lib.apply(variables, arrays)["params"]


__all__ = ["read_state_dict", "save_flax_params", "load_flax_params", "check_tree", "init_converters",
           "load_model_params"]
