"""Pretrained initialisation: the `config.init` section (docs/training.md, "Pretrained initialisation").

`config.init` holds named entries, each a ConfigDict:

  file       the user's weight file (.pth/.pt/.bin/.ckpt, detectron2 .pkl, .safetensors) or a dinoseg / Orbax
             checkpoint directory; "" = not given (the entry is skipped and its subtree starts random)
  converter  how the file is read: "backbone" (the key map of the model's own backbone module: detectron2
             .pkl / torchvision .pth ResNets, Swin detection or ImageNet classification checkpoints, ViT with
             its position grid resized), "task" (a full checkpoint of the model, read as `dinoseg eval
             --weights` reads it: `Task.variables_from_weights`), "orbax" (a dinoseg checkpoint directory), a
             name the task adds (Talk2DINO: "dinov2", "clip_text", "projection"), or any converter of
             `dinoseg.convert.registry`
  target     "/"-separated subtree of the variables the entry fills ("" = the whole model), in every Flax
             collection that has it (a ResNet's "frozen_bn" statistics come with its "params")
  strict     True: every variable of the target is filled and every source tensor used, apart from known
             ignorable ones (classifier heads, rebuilt buffers), which are reported; False: partial, what stayed
             at its initial value and what was unused are reported
  required   (optional, default False) an empty `file` is an error unless a given entry's target covers this
             one, e.g. a full checkpoint covering "backbone"

Entries apply from the broadest target to the narrowest (a full checkpoint first, then a backbone file over
it; ml_collections sorts the names, so their order in the file cannot be the rule), and two given entries
may not share a target. Shapes are checked before anything is set: a mismatch names the source key, the
expected and the found shape. All errors are `InitError` (a UserError and a ValueError: one line, exit
status 2), or `UserFileNotFoundError` for a missing file.

A converter is `fn(path, target: Target) -> Loaded`: it reads the file with `dinoseg.convert.readers`
(never executing pickled code) and returns the arrays for the target's variables. `from_keymap` converts a
state dict rule by rule through a `KeyMap` (so a partial file loads what it has), `from_variables` takes an
already converted Flax tree (a full model's tree is cut down to the target).

`load(entries, abstract, converters)` returns the arrays to set, {(collection, *path): np.ndarray} with the
model's shapes and dtypes, and one report per entry; the trainer places them onto the mesh
(`dinoseg.train.state.with_variables`), Talk2DINO's inference into its NumPy params.
"""
import dataclasses
import math
import os
import pathlib
import pickle
import re
import zipfile
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from dinoseg.convert.keymap import (CONV, IDENTITY, LINEAR, KeyMap, Path, flatten_variables, one,
                                    strip_prefix)
from dinoseg.errors import UserError, UserFileNotFoundError

ENTRY_DEFAULTS = dict(file="", converter="backbone", target="backbone", strict=True, required=False)
# What reading a user's file may raise besides FileNotFoundError (corrupt, truncated, refused, wrong layout).
_READ_ERRORS = (KeyError, ValueError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError)


class InitError(UserError, ValueError):
  """A `config.init` entry that cannot be applied (bad setting, unreadable file, mismatch); one line."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One `config.init` entry (module docstring); `skipped`: why it is not applied here ("" = applied)."""
  name: str
  file: str = ""
  converter: str = "backbone"
  target: tuple[str, ...] = ("backbone",)
  strict: bool = True
  required: bool = False
  skipped: str = ""

  @property
  def where(self) -> str:
    return f"config.init.{self.name}"

  @property
  def target_str(self) -> str:
    return "/".join(self.target) or "(the whole model)"


@dataclasses.dataclass(frozen=True)
class Target:
  """What a converter fills: `path` in the model and `abstract`, {collection: subtree of leaves with
  .shape / .dtype} of every collection that has the path."""
  path: tuple[str, ...]
  abstract: Mapping[str, Any]


@dataclasses.dataclass
class Loaded:
  """A converter's result.

  Attributes:
    arrays: {(collection, *path inside the target): array}.
    unused: source tensors the target does not take.
    ignored: source tensors dropped as known-ignorable (classifier heads, checked buffers, ...).
    notes: what the converter did beyond renaming (layout detected, values set, grids resized).
    origin: the source key of each array, for messages.
  """
  arrays: dict[Path, np.ndarray]
  unused: list[str] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
  origin: dict[Path, str] = dataclasses.field(default_factory=dict)


InitConverter = Callable[[str, Target], Loaded]


def split_target(target: str) -> tuple[str, ...]:
  return tuple(part for part in str(target).split("/") if part)


def entries(section: Mapping | None) -> list[Entry]:
  """The entries of `config.init` (None or empty: none), broadest target first.

  Raises:
    InitError: an entry that is not a group, has unknown keys, or shares its target with another given entry.
  """
  out = []
  for name, raw in (dict(section).items() if section else ()):
    if hasattr(raw, "to_dict"):  # an ml_collections.ConfigDict
      raw = raw.to_dict()
    if not isinstance(raw, Mapping):
      raise InitError(f"config.init.{name} must be a group (file, converter, target, strict), got {raw!r}")
    unknown = sorted(set(raw) - set(ENTRY_DEFAULTS))
    if unknown:
      raise InitError(f"config.init.{name}: unknown keys {unknown}; an entry has {sorted(ENTRY_DEFAULTS)}")
    v = {**ENTRY_DEFAULTS, **dict(raw)}
    out.append(Entry(name=str(name), file=str(v["file"]), converter=str(v["converter"]),
                     target=split_target(v["target"]), strict=bool(v["strict"]), required=bool(v["required"])))
  out.sort(key=lambda e: len(e.target))
  given = [e for e in out if e.file]
  for i, a in enumerate(given):
    for b in given[i + 1:]:
      if a.target == b.target:
        raise InitError(f"{a.where} and {b.where} both fill {a.target_str}; give one of them")
  return out


def rebase(section_entries: Sequence[Entry], root: Sequence[str], reason: str) -> list[Entry]:
  """Entries for a model whose variables are the subtree `root` of the configured one: targets inside it
  become relative to it, the others are skipped with `reason` (e.g. Talk2DINO trains the projection only)."""
  root = tuple(root)
  return [dataclasses.replace(e, target=e.target[len(root):]) if e.target[:len(root)] == root
          else dataclasses.replace(e, skipped=reason) for e in section_entries]


# ----------------------------------------------------------------------------- reading

def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{key: array} of a checkpoint file: `{"model": sd}` / `{"state_dict": sd}` unwrapped, arrays only.

  Raises:
    UserFileNotFoundError: no such file; InitError: unreadable, unsafe, or not a state dict.
  """
  from dinoseg.convert import readers  # noqa: PLC0415
  from dinoseg.convert.backbones import unwrap_checkpoint  # noqa: PLC0415
  if not os.path.exists(path):
    raise UserFileNotFoundError(f"no such weights file: {path}")
  try:
    obj = readers.read_checkpoint(path)
  except FileNotFoundError:
    raise
  except UserError as e:  # corrupt or unsafe: the reader's message names the file and the problem
    raise InitError(str(e)) from e
  except _READ_ERRORS as e:
    raise InitError(f"cannot read {path}: {type(e).__name__}: {e}") from e
  if not isinstance(obj, Mapping):
    raise InitError(f"{path} holds a {type(obj).__name__}, not a state dict")
  state = unwrap_checkpoint(obj)
  bad = sorted(k for k, v in state.items() if not isinstance(v, (np.ndarray, np.generic)))
  if bad:
    raise InitError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:8]))}")
  return {str(k): np.asarray(v) for k, v in state.items()}


# Entries of a trainer checkpoint that are not model variables (dinoseg.train.state.TrainState fields).
_STATE_FIELDS = ("step", "params", "opt_state", "rng", "ema_params", "nonfinite_total", "nonfinite_streak")


def _newest_checkpoint(directory: pathlib.Path) -> pathlib.Path:
  """A training workdir's newest `checkpoints/<step>`, else the directory itself."""
  steps = directory / "checkpoints"
  numbered = sorted((p for p in steps.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)) \
      if steps.is_dir() else []
  return numbered[-1] if numbered else directory


def read_variables(path: str | os.PathLike, converter: Callable[[], Any] | None = None,
                   what: str = "this model") -> dict[str, Any]:
  """Flax variables {"params": ..., <other collections>} of a weights file or directory: the reading half of
  `Task.variables_from_weights` (the one route from weights to variables) and of the "orbax" / registered
  converters of `config.init`.

  - a directory: a dinoseg checkpoint (`<workdir>/checkpoints/<step>`, a training workdir (its newest step),
    `dinoseg convert --to DIR` output): "params" (the EMA params when the run kept them) and the other
    collections (e.g. "frozen_bn"); optimizer state is not read;
  - `.msgpack`: Flax variables or params (flax.serialization);
  - another file (.pth/.pt/.bin/.ckpt, .pkl, .safetensors, .npz): a state dict (`read_state_dict`)
    converted by `converter()` (a `registry.ModelConverter`; None or returning None: files are refused).

  Raises:
    UserFileNotFoundError: no such path; UserError (InitError, the readers' and converters' errors): an
      unreadable, unsafe or unconvertible file.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise UserFileNotFoundError(f"no such weights file or directory: {path}")
  if path.is_dir():
    from dinoseg.convert import readers  # noqa: PLC0415
    try:
      tree = readers.read_orbax(_newest_checkpoint(path))
    except FileNotFoundError:
      raise
    except _READ_ERRORS as e:
      raise InitError(f"cannot read the Orbax checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(tree, Mapping) or not isinstance(tree.get("params"), Mapping):
      raise InitError(f"{path}: not a dinoseg checkpoint (no 'params'; top-level keys: {sorted(tree)})")
    params = tree["ema_params"] if isinstance(tree.get("ema_params"), Mapping) else tree["params"]
    return {"params": params, **{k: v for k, v in tree.items() if k not in _STATE_FIELDS and isinstance(v, Mapping)}}
  if path.suffix.lower() == ".msgpack":
    from flax import serialization  # noqa: PLC0415
    try:
      tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises its own exception types for corrupt data
      raise InitError(f"{path}: not a readable Flax msgpack file ({type(e).__name__}: {e})") from None
    return dict(tree) if isinstance(tree.get("params"), Mapping) else {"params": tree}
  model_converter = converter() if converter is not None else None
  if model_converter is None:
    raise InitError(f"{what} has no converter for weight files; give a dinoseg checkpoint directory (a training "
                    "workdir, <workdir>/checkpoints/<step> or `dinoseg convert --to DIR` output)")
  if path.suffix.lower() == ".npz":
    with np.load(path, allow_pickle=False) as z:
      state = {k: z[k] for k in z.files}
  else:
    state = read_state_dict(path)
  tree = model_converter.to_flax(state)
  return dict(tree) if model_converter.variables else {"params": tree}


def _subtree(tree: Any, path: Sequence[str]) -> Any:
  for part in path:
    if not isinstance(tree, Mapping) or part not in tree:
      return None
    tree = tree[part]
  return tree


# ----------------------------------------------------------------------------- converters

def from_keymap(km: KeyMap, state: Mapping[str, np.ndarray], target: Target) -> Loaded:
  """Converts `state` rule by rule: rules whose torch keys are all present are converted (shapes checked
  against the target in the torch layout first), the others leave their variables to the caller's coverage
  check; source keys no rule read are unused, or ignored when the map's ignore patterns match them.

  Raises:
    InitError: a shape mismatch (key, expected, found) or a rule refusing its tensors (e.g. a buffer that
      differs from the one this model rebuilds).
  """
  flat_target = flatten_variables(target.abstract)
  arrays, origin, used = {}, {}, set()
  for rule in km.rules:
    if not all(k in state for k in rule.torch_keys):
      continue
    found = [np.asarray(state[k]) for k in rule.torch_keys]
    if rule.flax_paths and all(p in flat_target for p in rule.flax_paths):
      views = [np.broadcast_to(np.zeros((), np.dtype(flat_target[p].dtype)), tuple(flat_target[p].shape))
               for p in rule.flax_paths]
      for key, want, got in zip(rule.torch_keys, rule.to_torch(views), found):
        if tuple(want.shape) != tuple(got.shape):
          raise InitError(f"{key}: the model expects shape {tuple(want.shape)}, the file has {tuple(got.shape)}")
    try:
      values = rule.to_flax(found)
    except ValueError as e:
      raise InitError(f"{', '.join(rule.torch_keys)}: {e}") from e
    for path, value in zip(rule.flax_paths, values, strict=True):
      arrays[path], origin[path] = value, rule.torch_keys[0]
    used.update(rule.torch_keys)
  rest = [k for k in state if k not in used]
  return Loaded(arrays=arrays, unused=[k for k in rest if not km.is_ignored(k)],
                ignored=[k for k in rest if km.is_ignored(k)], origin=origin)


def from_variables(variables: Mapping[str, Any], target: Target) -> Loaded:
  """An already converted Flax tree {collection: tree} ("params" and the target's other collections are
  read): a full model's tree (its "params" has the target path) is cut down to the target, anything else
  is taken as the target's own variables."""
  variables = {c: v for c, v in dict(variables).items()
               if isinstance(v, Mapping) and (c == "params" or c in target.abstract)}
  notes = []
  if target.path and _subtree(variables.get("params"), target.path) is not None:
    total = len(flatten_variables(variables))
    variables = {c: _subtree(v, target.path) for c, v in variables.items()
                 if isinstance(_subtree(v, target.path), Mapping)}
    notes.append(f"took {'/'.join(target.path)} of a full model "
                 f"({total - len(flatten_variables(variables))} other tensors not needed)")
  arrays = {p: np.asarray(a) for p, a in flatten_variables(variables).items()}
  return Loaded(arrays=arrays, notes=notes)


def orbax_converter(path: str, target: Target) -> Loaded:
  """A dinoseg checkpoint directory (`read_variables`: a workdir, `<workdir>/checkpoints/<step>` or `dinoseg
  convert --to DIR` output; params, or the EMA params when kept, and the target's other collections)."""
  if not os.path.isdir(path):
    raise InitError(f"converter 'orbax' reads a checkpoint directory, {path} is a file")
  return from_variables(read_variables(path), target)


def registry_converter(name: str) -> InitConverter:
  """A converter of `dinoseg.convert.registry` (strict about keys: it converts whole files), through
  `read_variables` (so directories are read as dinoseg checkpoints)."""
  from dinoseg.convert import registry  # noqa: PLC0415
  converter = registry.get(name)
  return lambda path, target: from_variables(read_variables(path, lambda: converter, f"converter {name!r}"), target)


def backbone_converter(module) -> InitConverter:
  """The "backbone" converter of a ResNet, SwinTransformer or PlainViT module (its own widths and depths).

  Accepts a state dict with or without a `backbone.` prefix (from a full system checkpoint the `backbone.*`
  tensors are taken, the rest is unused), detectron2 (.pkl) or torchvision (.pth) ResNets, Swin detection
  (D2) or ImageNet classification checkpoints (head, final norm and attn_mask dropped; the output norms,
  absent there, set to weight 1, bias 0 as torch initializes them), ViTs whose position grid differs from
  the model's (resized bicubically, the CLS slot kept). A directory is read as an Orbax checkpoint.
  """
  from dinoseg.backbones.resnet import ResNet  # noqa: PLC0415
  from dinoseg.backbones.swin import SwinTransformer  # noqa: PLC0415
  from dinoseg.backbones.vit import PlainViT  # noqa: PLC0415
  from dinoseg.convert import backbones as bb  # noqa: PLC0415

  def convert(path: str, target: Target) -> Loaded:
    if os.path.isdir(path):
      return orbax_converter(path, target)
    state = read_state_dict(path)
    notes, others = [], []
    under = [k for k in state if k.startswith(bb.BACKBONE_PREFIX)]
    if under and len(under) < len(state):
      others = sorted(set(state) - set(under))
      notes.append(f"took the {len(under)} backbone.* tensors of a full checkpoint")
      state = {k[len(bb.BACKBONE_PREFIX):]: state[k] for k in under}
    state = strip_prefix(state, bb.BACKBONE_PREFIX)
    km, extra, names = bb.keymap_for(module), {}, {}
    if isinstance(module, ResNet) and bb.is_torchvision_resnet(state):
      renamed = bb.torchvision_to_detectron2(state)
      names, state = dict(zip(renamed, state)), renamed  # reports use the file's names
      notes.append("torchvision ResNet layout, renamed to detectron2's")
    elif isinstance(module, SwinTransformer) and not any(re.match(r"^norm\d+\.", k) for k in state):
      km = KeyMap(bb.swin_keymap(module, output_norms=False).rules, ignore=bb.SWIN_CLASSIFICATION_IGNORED)
      for i, c in enumerate(module.num_features):
        extra[("params", f"norm{i}", "scale")] = np.ones((c,), np.float32)
        extra[("params", f"norm{i}", "bias")] = np.zeros((c,), np.float32)
      notes.append(f"Swin ImageNet classification layout: norm0..norm{len(module.depths) - 1} (not in such files) "
                   "set to weight 1, bias 0")
    elif isinstance(module, PlainViT) and "pos_embed" in state:
      grid = (module.img_size[0] // module.patch_size, module.img_size[1] // module.patch_size)
      old = state["pos_embed"].shape
      state["pos_embed"] = bb.resize_pos_embed(state["pos_embed"], grid)
      if state["pos_embed"].shape != old:
        notes.append(f"position grid resized {old} -> {state['pos_embed'].shape} (bicubic)")
    loaded = from_keymap(km, state, target)
    loaded.arrays.update(extra)
    loaded.unused = [names.get(k, k) for k in loaded.unused] + others
    loaded.ignored = [names.get(k, k) for k in loaded.ignored]
    loaded.origin = {p: names.get(k, k) for p, k in loaded.origin.items()}
    loaded.notes = notes + loaded.notes
    return loaded
  return convert


def keytable_keymap(table: Mapping[str, tuple[tuple[str, ...], str]], ignore: Iterable[str] = ()) -> KeyMap:
  """A `dinoseg.convert.dinov2_clip` key table (torch key -> (path, "same" | "linear" | "conv")) as a KeyMap
  over the "params" collection."""
  layouts = {"same": IDENTITY, "linear": LINEAR, "conv": CONV}
  return KeyMap([one(key, ("params",) + tuple(path), layouts[layout]) for key, (path, layout) in table.items()],
                ignore=ignore)


# ----------------------------------------------------------------------------- loading

def _fmt(path: Path) -> str:
  return "/".join(path)


def _listed(items: Sequence[str], n: int = 5) -> str:
  return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _check_target(entry: Entry, abstract: Mapping[str, Any]) -> dict[str, Any]:
  params = abstract.get("params", {})
  node = params
  for i, part in enumerate(entry.target):
    if not isinstance(node, Mapping) or part not in node:
      where = "/".join(entry.target[:i]) or "the params"
      known = sorted(node) if isinstance(node, Mapping) else []
      raise InitError(f"{entry.where}.target={'/'.join(entry.target)!r}: {where} has no {part!r} "
                      f"(it has: {', '.join(known) or 'no subtrees'})")
    node = node[part]
  if not isinstance(node, Mapping):
    raise InitError(f"{entry.where}.target={'/'.join(entry.target)!r} is a single variable, not a subtree")
  return {c: t for c, t in ((c, _subtree(v, entry.target)) for c, v in abstract.items()) if isinstance(t, Mapping)}


def _converter(entry: Entry, converters: Mapping[str, InitConverter]) -> InitConverter:
  if entry.converter in converters:
    return converters[entry.converter]
  from dinoseg.convert import registry  # noqa: PLC0415
  if entry.converter in registry.names():
    return registry_converter(entry.converter)
  raise InitError(f"{entry.where}.converter={entry.converter!r} is unknown; this model reads "
                  f"{', '.join(sorted(converters))}, or a registered converter (dinoseg convert --list)")


def check(section_entries: Sequence[Entry], abstract: Mapping[str, Any],
          converters: Mapping[str, InitConverter]) -> None:
  """Checks every applied entry before any file is read: converter, target, file present, `required`.

  Raises:
    InitError (unknown converter / target, required file missing); UserFileNotFoundError (no such file).
  """
  applied = [e for e in section_entries if not e.skipped]
  for e in applied:
    _converter(e, converters)
    _check_target(e, abstract)
    if e.file and not os.path.exists(e.file):
      raise UserFileNotFoundError(f"{e.where}.file: no such file or directory: {e.file}")
    covered = any(g.file and g.target == e.target[:len(g.target)] for g in applied)
    if e.required and not covered:
      raise InitError(f"{e.where}.file is empty: {e.target_str} needs pretrained weights "
                      f"(--config.init.{e.name}.file=...), or set config.init.{e.name}.required=False to start it random")


def load(section_entries: Sequence[Entry], abstract: Mapping[str, Any], converters: Mapping[str, InitConverter]
         ) -> tuple[dict[Path, np.ndarray], list[dict]]:
  """Reads every given entry.

  Args:
    section_entries: from `entries(config.init)` (broadest target first), possibly retargeted / skipped.
    abstract: the model's variables {collection: tree} with .shape / .dtype leaves.
    converters: the names the model's converters answer to (a task's `init_converters()`); other names
      are looked up in `dinoseg.convert.registry`.
  Returns:
    ({(collection, *path): array of the model's shape and dtype} to set, a narrower entry's arrays over a
    broader one's; one report dict per entry: name, file, converter, target, strict, status ("loaded",
    "not given", "skipped"), tensors, values, random, unused, ignored, notes, loaded).
  Raises:
    InitError / FileNotFoundError: see `check`, plus unreadable files, shape mismatches, strict coverage.
  """
  check(section_entries, abstract, converters)
  out: dict[Path, np.ndarray] = {}
  reports = []
  for e in section_entries:
    report = dict(name=e.name, file=e.file, converter=e.converter, target="/".join(e.target), strict=e.strict)
    if e.skipped or not e.file:
      reports.append(dict(report, status="skipped" if e.skipped else "not given", reason=e.skipped))
      continue
    target_abstract = _check_target(e, abstract)
    flat_target = flatten_variables(target_abstract)
    try:
      loaded = _converter(e, converters)(e.file, Target(e.target, target_abstract))
    except InitError as err:
      raise InitError(f"{e.where} ({e.file}): {err}") from err
    except FileNotFoundError:
      raise
    except _READ_ERRORS as err:
      message = err.args[0] if isinstance(err, KeyError) and err.args else err
      raise InitError(f"{e.where}: converter {e.converter!r} cannot load {e.file}: {message}") from err
    full = lambda p: (p[0],) + e.target + p[1:]  # noqa: E731  (the path in the whole model)
    filled, unused = {}, list(loaded.unused)
    for path, value in loaded.arrays.items():
      name = loaded.origin.get(path, _fmt(full(path)))
      if path not in flat_target:
        unused.append(name)
        continue
      want = flat_target[path]
      if tuple(value.shape) != tuple(want.shape):
        raise InitError(f"{e.where} ({e.file}): {name}: the model expects shape {tuple(want.shape)}, the file has "
                        f"{tuple(value.shape)}")
      filled[path] = np.asarray(value, np.dtype(want.dtype))
    random = [_fmt(full(p)) for p in flat_target if p not in filled]
    if e.strict and (random or unused):
      parts = []
      if random:
        parts.append(f"{len(random)} of {len(flat_target)} variables of {e.target_str} are not in the file "
                     f"({_listed(random)})")
      if unused:
        parts.append(f"{len(unused)} source tensors are unused ({_listed(unused)})")
      raise InitError(f"{e.where} is strict but {'; '.join(parts)}; set config.init.{e.name}.strict=False "
                      "to load what fits (the rest is reported)")
    out.update({full(p): a for p, a in filled.items()})
    reports.append(dict(report, status="loaded", tensors=len(filled),
                        values=int(sum(math.prod(a.shape) for a in filled.values())), random=random, unused=unused,
                        ignored=list(loaded.ignored), notes=list(loaded.notes), loaded=[_fmt(full(p)) for p in filled]))
  return out, reports


def describe(report: Mapping[str, Any]) -> str:
  """One line of a report: what was loaded, what stayed random, what was unused."""
  head = f"init.{report['name']}"
  if report["status"] == "skipped":
    return f"{head}: not applied here ({report['reason']})"
  target = report["target"] or "the whole model"
  if report["status"] == "not given":
    return f"{head}: no file given; {target} starts random (--config.init.{report['name']}.file=...)"
  line = (f"{head}: loaded {report['tensors']} tensors ({report['values']:,} values) from {report['file']} into "
          f"{target}; {len(report['random'])} stayed random, {len(report['unused'])} unused source tensors")
  details = [f"random: {_listed(report['random'], 3)}" if report["random"] else "",
             f"unused: {_listed(report['unused'], 3)}" if report["unused"] else "",
             f"ignored: {_listed(report['ignored'], 3)}" if report["ignored"] else ""] + report["notes"]
  details = [d for d in details if d]
  return line + (f" ({'; '.join(details)})" if details else "")


def apply(variables: Mapping[str, Any], arrays: Mapping[Path, np.ndarray]) -> dict:
  """Host-side: a copy of the nested `variables` with `arrays` ((collection, *path) -> array) set."""
  def set_in(tree, path, value):
    tree = dict(tree)
    tree[path[0]] = value if len(path) == 1 else set_in(tree.get(path[0], {}), path[1:], value)
    return tree
  out = dict(variables)
  for path, value in arrays.items():
    out = set_in(out, path, value)
  return out


__all__ = ["ENTRY_DEFAULTS", "Entry", "Target", "Loaded", "InitError", "InitConverter", "entries", "rebase", "check",
           "load", "describe", "apply", "from_keymap", "from_variables", "orbax_converter", "registry_converter",
           "backbone_converter", "keytable_keymap", "read_state_dict", "read_variables", "split_target"]
