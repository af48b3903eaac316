"""OV2Seg vocabularies: class embeddings (C, 512) for the zero-shot classifier, from a file or from text.

The classifier compares each query with one embedding per class (shared/reference/ov2seg.md section 1), so
the vocabulary is an input of the model, never a trained weight: changing it needs no retraining and no new
checkpoint. Two sources:

(a) The released DetPro prompt embeddings, `datasets/metadata/fg_bg_5_10_{lvis,lvvis,coco,ytvis19,ytvis21,
    ovis}_ens.npy` of haochenheheda/LVVIS (1203 / 1196 / 80 / 40 / 40 / 25 rows of 512 float32):
    `read_class_embeddings(path)`. Read with `numpy.load(allow_pickle=False)`; anything but a finite
    floating (C, 512) array is a UserValueError naming the file.

(b) Any class names through dinoseg's CLIP ViT-B/16 text tower (`dinoseg.backbones.clip_text`, tokenizer
    `dinoseg.backbones.clip_tokenizer`) with prompt-template ensembling: `text_class_embeddings(names,
    model, params)`. For each class, every template is filled in, encoded (`encode_text`), L2-normalised;
    the class embedding is the mean over templates, L2-normalised again. The default templates are
    `VILD_TEMPLATES`: the 63 "multiple_templates" of ViLD (Gu et al., "Open-vocabulary Object Detection via
    Vision and Language Knowledge Distillation"; tensorflow/tpu `models/official/detection/projects/vild`,
    its Colab demo), the list Detic-style open-vocabulary detectors reuse. Like ViLD, "{article}" becomes
    "a" or "an" (by the processed name's first letter) and names are processed as ViLD does for LVIS / Objects365:
    "_" -> " ", "/" -> " or ", lower case (`processed_name`). These are CLIP text embeddings, not DetPro's
    learned prompts, so they are a different (training-free) vocabulary than the released .npy files.
    The CLIP weights are a file the user gives (`load_clip_text`: an OpenAI CLIP state dict saved as
    .pth / .safetensors / .npz, its text keys; a dinoseg .msgpack; see docs/dinov2_clip.md), or params
    already loaded (e.g. through a `config.init` entry with the "clip_vitb16_text" converter).

Class names come from a list or from a COCO / LVIS / LV-VIS / YouTube-VIS style JSON (`category_names`:
the "categories" list, ordered by id). `save_class_embeddings` writes (C, 512) float32 .npy files that
(a) reads back, so text embeddings are computed once.
"""
import functools
import json
import logging
import os
import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.errors import UserFileNotFoundError, UserValueError

logger = logging.getLogger(__name__)

EMBED_DIM = 512

# ViLD's prompt templates (see the module docstring); "{}" is the class name, "{article}" "a" / "an".
VILD_TEMPLATES: tuple[str, ...] = (
    "There is {article} {} in the scene.",
    "There is the {} in the scene.",
    "a photo of {article} {} in the scene.",
    "a photo of the {} in the scene.",
    "a photo of one {} in the scene.",
    "itap of {article} {}.",
    "itap of my {}.",
    "itap of the {}.",
    "a photo of {article} {}.",
    "a photo of my {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a good photo of {article} {}.",
    "a good photo of the {}.",
    "a bad photo of {article} {}.",
    "a bad photo of the {}.",
    "a photo of a nice {}.",
    "a photo of the nice {}.",
    "a photo of a cool {}.",
    "a photo of the cool {}.",
    "a photo of a weird {}.",
    "a photo of the weird {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a clean {}.",
    "a photo of the clean {}.",
    "a photo of a dirty {}.",
    "a photo of the dirty {}.",
    "a bright photo of {article} {}.",
    "a bright photo of the {}.",
    "a dark photo of {article} {}.",
    "a dark photo of the {}.",
    "a photo of a hard to see {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of {article} {}.",
    "a low resolution photo of the {}.",
    "a cropped photo of {article} {}.",
    "a cropped photo of the {}.",
    "a close-up photo of {article} {}.",
    "a close-up photo of the {}.",
    "a jpeg corrupted photo of {article} {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of {article} {}.",
    "a blurry photo of the {}.",
    "a pixelated photo of {article} {}.",
    "a pixelated photo of the {}.",
    "a black and white photo of the {}.",
    "a black and white photo of {article} {}.",
    "a plastic {}.",
    "the plastic {}.",
    "a toy {}.",
    "the toy {}.",
    "a plushie {}.",
    "the plushie {}.",
    "a cartoon {}.",
    "the cartoon {}.",
    "an embroidered {}.",
    "the embroidered {}.",
    "a painting of the {}.",
    "a painting of a {}.",
)


# ----------------------------------------------------------------------------- (a) embedding files

def read_class_embeddings(path: str | os.PathLike, *, num_classes: int | None = None,
                          dim: int = EMBED_DIM) -> np.ndarray:
  """Class embeddings from a .npy file (the released DetPro `*_ens.npy`, or `save_class_embeddings` output).

  Args:
    path: a .npy file holding a (C, dim) floating array (no pickled objects are read).
    num_classes: if given, C must equal it.
    dim: the embedding width (512 for OV2Seg's classifier).
  Returns:
    (C, dim) float32, as stored (the classifier normalises the rows).
  Raises:
    UserFileNotFoundError: no such file. UserValueError: unreadable / not .npy / pickled objects, not a
      2-d floating array of width `dim`, no rows, non-finite values, or C != num_classes.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserFileNotFoundError(f"vocabulary file {path} not found")
  try:
    array = np.load(path, allow_pickle=False)
  except ValueError as e:  # pickled object arrays, bad headers
    raise UserValueError(f"{path} is not a readable .npy array file ({e})") from None
  except (OSError, EOFError) as e:
    raise UserValueError(f"cannot read vocabulary file {path}: {type(e).__name__}: {e}") from None
  if not isinstance(array, np.ndarray):  # np.load returns an NpzFile for .npz archives
    if hasattr(array, "close"):
      array.close()
    raise UserValueError(f"{path} is an .npz archive; expected a .npy file with one (C, {dim}) array")
  if array.ndim != 2 or array.shape[1] != dim:
    raise UserValueError(f"{path} holds an array of shape {array.shape}; expected (num_classes, {dim})")
  if not np.issubdtype(array.dtype, np.floating):
    raise UserValueError(f"{path} holds {array.dtype} values; expected floating-point class embeddings")
  if array.shape[0] == 0:
    raise UserValueError(f"{path} holds no class embeddings (empty vocabulary)")
  if num_classes is not None and array.shape[0] != num_classes:
    raise UserValueError(f"{path} has {array.shape[0]} class embeddings, expected {num_classes}")
  if not np.all(np.isfinite(array)):
    raise UserValueError(f"{path} holds non-finite values (NaN or inf)")
  return np.asarray(array, np.float32)


def save_class_embeddings(path: str | os.PathLike, embeddings: Any) -> pathlib.Path:
  """Writes (C, D) class embeddings as a float32 .npy file that `read_class_embeddings` reads back."""
  path = pathlib.Path(path)
  if path.suffix != ".npy":
    raise UserValueError(f"vocabulary files are .npy files, got {path}")
  array = np.asarray(embeddings, np.float32)
  if array.ndim != 2 or array.shape[0] == 0:
    raise ValueError(f"embeddings must be a non-empty (C, D) array, got shape {array.shape}")
  np.save(path, array, allow_pickle=False)
  return path


# ----------------------------------------------------------------------------- class names

def category_names(source: str | os.PathLike | Mapping | Sequence) -> list[str]:
  """Class names ordered by category id from a COCO / LVIS / LV-VIS / YouTube-VIS style categories list.

  Args:
    source: a JSON file path, a parsed dataset dict with "categories", or the categories list itself
      ([{"id": int, "name": str, ...}, ...]). Names are returned as written (e.g. LVIS "aerosol_can");
      prompts process them (`processed_name`).
  Returns:
    the names, by increasing id (so label i of the model is the i-th category, the datasets' convention).
  Raises:
    UserFileNotFoundError / UserValueError: a missing or unparsable file, no categories, an entry without an
      integer id or a non-empty name, or repeated ids.
  """
  where = "categories"
  if isinstance(source, (str, os.PathLike)):
    path = pathlib.Path(source)
    if not path.is_file():
      raise UserFileNotFoundError(f"categories file {path} not found")
    try:
      source = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise UserValueError(f"{path} is not valid JSON ({e})") from None
    where = str(path)
  if isinstance(source, Mapping):
    if "categories" not in source:
      raise UserValueError(f"{where}: no 'categories' list (keys: {sorted(source)[:10]})")
    source = source["categories"]
  if not isinstance(source, Sequence) or isinstance(source, (str, bytes)) or not source:
    raise UserValueError(f"{where}: 'categories' must be a non-empty list of {{'id', 'name'}} entries")
  entries = []
  for i, cat in enumerate(source):
    if not isinstance(cat, Mapping) or not isinstance(cat.get("id"), int) or isinstance(cat.get("id"), bool) \
        or not isinstance(cat.get("name"), str) or not cat["name"].strip():
      raise UserValueError(f"{where}: category {i} must have an integer 'id' and a non-empty 'name', got {cat!r}")
    entries.append((cat["id"], cat["name"]))
  ids = [i for i, _ in entries]
  if len(set(ids)) != len(ids):
    raise UserValueError(f"{where}: repeated category ids {sorted({i for i in ids if ids.count(i) > 1})[:10]}")
  return [name for _, name in sorted(entries)]


def processed_name(name: str) -> str:
  """ViLD's name processing for prompts: "_" -> " ", "/" -> " or ", lower case, outer spaces removed."""
  return name.replace("_", " ").replace("/", " or ").lower().strip()


def article(name: str) -> str:
  """"an" before a vowel letter, else "a" (ViLD's rule)."""
  return "an" if name[:1] and name[0] in "aeiou" else "a"


def class_prompts(class_names: Sequence[str], templates: Sequence[str] = VILD_TEMPLATES) -> list[str]:
  """Class-major prompts: for each class every template, filled with the processed name and its article.

  Raises:
    UserValueError: no classes, an empty name, or no templates / a template without "{}".
  """
  if not class_names:
    raise UserValueError("the vocabulary is empty: give at least one class name")
  if not templates or any("{}" not in t for t in templates):
    raise UserValueError(f"templates must be a non-empty list of strings with '{{}}', got {list(templates)[:3]!r}")
  prompts = []
  for i, raw in enumerate(class_names):
    if not isinstance(raw, str) or not processed_name(raw):
      raise UserValueError(f"class name {i} is empty: {raw!r}")
    name = processed_name(raw)
    prompts.extend(t.format(name, article=article(name)) for t in templates)
  return prompts


# ----------------------------------------------------------------------------- (b) text embeddings

def _tokenize(prompts: Sequence[str], templates_per_class: int, class_names: Sequence[str],
              context_length: int, tokenizer) -> np.ndarray:
  """(M, L) int32 ids cut after the last EOT; a prompt that does not fit names its class."""
  if tokenizer is None:
    from dinoseg.backbones.clip_tokenizer import tokenize as tokenizer  # noqa: PLC0415
  rows = []
  for start in range(0, len(prompts), templates_per_class):
    try:
      rows.append(np.asarray(tokenizer(list(prompts[start:start + templates_per_class]),
                                       context_length=context_length)))
    except ValueError as e:
      name = class_names[start // templates_per_class]
      raise UserValueError(f"class name {name!r} is too long for the CLIP text context of {context_length} "
                           f"tokens with the prompt templates ({e})") from None
  ids = np.concatenate(rows).astype(np.int32)
  length = int(np.argmax(ids, axis=1).max()) + 1  # EOT is the largest id
  return ids[:, :length]


@functools.partial(jax.jit, static_argnums=0)
def _encode(model, params, ids):
  return model.apply({"params": params}, ids).text_embeds


def encode_prompts(model, params: Mapping, ids: np.ndarray, chunk_size: int = 256) -> jax.Array:
  """Raw `encode_text` embeddings (M, E) of token ids (M, L), `chunk_size` prompts per jitted call (the last
  chunk padded, so one compilation per prompt length)."""
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  m = ids.shape[0]
  chunk = min(chunk_size, m)
  padded = np.concatenate([ids, np.zeros((-m % chunk, ids.shape[1]), np.int32)])
  out = [_encode(model, params, jnp.asarray(padded[i:i + chunk])) for i in range(0, len(padded), chunk)]
  return jnp.concatenate(out)[:m]


def ensemble(prompt_embeddings: jax.Array, num_classes: int) -> jax.Array:
  """(C * T, E) class-major prompt embeddings -> (C, E): normalise each, mean over the T templates, normalise."""
  e = prompt_embeddings.astype(jnp.float32).reshape(num_classes, -1, prompt_embeddings.shape[-1])
  e = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
  mean = jnp.mean(e, axis=1)
  return mean / jnp.linalg.norm(mean, axis=-1, keepdims=True)


def text_class_embeddings(class_names: Sequence[str], model, params: Mapping, *,
                          templates: Sequence[str] = VILD_TEMPLATES, tokenizer=None,
                          chunk_size: int = 256) -> np.ndarray:
  """Class embeddings from names with CLIP's text tower and prompt-template ensembling.

  Args:
    class_names: C names (LVIS-style underscores are fine, see `processed_name`).
    model: a `dinoseg.backbones.clip_text.ClipTextTransformer` (ViT-B/16: `clip_text()`).
    params: its parameters (`load_clip_text`).
    templates: prompt templates with "{}" (and optionally "{article}"); default VILD_TEMPLATES.
    tokenizer: callable(list[str], context_length=...) -> (M, context_length) ids (CLIP's BPE by default).
    chunk_size: prompts per call of the text tower.
  Returns:
    (C, E) float32 unit rows (E = 512 for ViT-B/16).
  Raises:
    UserValueError: an empty vocabulary or name, or a prompt longer than the text context.
  """
  prompts = class_prompts(class_names, templates)
  ids = _tokenize(prompts, len(templates), class_names, int(model.context_length), tokenizer)
  logger.info("encoding %d prompts (%d classes x %d templates) with the CLIP text tower",
              len(prompts), len(class_names), len(templates))
  return np.asarray(ensemble(encode_prompts(model, params, ids, chunk_size), len(class_names)))


def load_clip_text(path: str | os.PathLike, name: str = "clip_vitb16_text", **overrides) -> tuple[Any, dict]:
  """The CLIP text tower and its float32 parameters from a weights file.

  Args:
    path: an OpenAI CLIP state dict (`.pth` / `.pt` / `.bin` re-saved from `torch.jit.load(...).state_dict()`,
      `.safetensors`, `.npz`; `visual.*` and the other non-text keys are ignored), a `.msgpack` of Flax
      params, or a dinoseg checkpoint directory of the tower.
    name, overrides: the tower (`dinoseg.backbones.clip_text.clip_text(name, **overrides)`).
  Returns:
    (model, params).
  Raises:
    UserFileNotFoundError, UserError: missing / unreadable file, or weights that do not fit the tower.
  """
  from dinoseg.backbones.clip_text import clip_text  # noqa: PLC0415
  from dinoseg.convert.dinov2_clip import clip_text_converter  # noqa: PLC0415
  from dinoseg.convert.init import read_variables  # noqa: PLC0415
  model = clip_text(name, **overrides)
  try:
    variables = read_variables(path, lambda: clip_text_converter(name, model.depth), what="the CLIP text tower")
  except KeyError as e:  # the key-table converter names missing / unexpected keys
    raise UserValueError(f"{path}: not a CLIP text tower of depth {model.depth}: {e}") from None
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), dict(variables["params"]))
  expected = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8), jnp.int32))["params"]
  got = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
  want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  if got != want:
    bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    raise UserValueError(f"{path}: weights do not fit {name} ({len(bad)} mismatches, e.g. "
                         + ", ".join(f"{k}: file {got.get(k)} model {want.get(k)}" for k in bad[:3]) + ")")
  return model, params


def class_embeddings_from_names(class_names: Sequence[str], clip_weights: str | os.PathLike, *,
                                templates: Sequence[str] = VILD_TEMPLATES, chunk_size: int = 256,
                                clip_name: str = "clip_vitb16_text",
                                clip_overrides: Mapping[str, Any] | None = None) -> np.ndarray:
  """`text_class_embeddings` with the text tower `clip_name` (ViT-B/16; `clip_overrides`: its fields) read
  from `clip_weights` (`load_clip_text`). Returns (C, E) float32 unit rows."""
  if not class_names:
    raise UserValueError("the vocabulary is empty: give at least one class name")
  model, params = load_clip_text(clip_weights, clip_name, **dict(clip_overrides or {}))
  return text_class_embeddings(class_names, model, params, templates=templates, chunk_size=chunk_size)


__all__ = ["EMBED_DIM", "VILD_TEMPLATES", "read_class_embeddings", "save_class_embeddings", "category_names",
           "processed_name", "article", "class_prompts", "encode_prompts", "ensemble", "text_class_embeddings",
           "load_clip_text", "class_embeddings_from_names"]
