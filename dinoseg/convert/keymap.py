"""Declarative key maps between PyTorch state dicts and Flax variables.

A `KeyMap` is an ordered list of `Rule`s. Each rule links one or more torch keys to zero or more
Flax variable paths and moves the tensors in both directions:

  rule                                         torch side                     Flax side
  one(key, path, LINEAR)                       "x.weight" (out, in)        <-> ("params", "x", "kernel") (in, out)
  one(key, path, CONV)                         (O, I, kH, kW)              <-> (kH, kW, I, O)
  one(key, path, CONV_TRANSPOSE)               ConvTranspose2d (I, O, kH, kW) <-> ConvTranspose (kH, kW, I, O)
  one(key, path, reshaped(torch_shape, flax_shape))  any reshape
  split(key, [q, k, v], axis=0, layout=LINEAR) packed (3d, d)              <-> three (d, d) kernels (packed back)
  tied([key1, key2, ...], path, layout)        the same tensor under several keys <-> one variable;
                                               import checks the copies are equal, export writes all
  buffer(key, value)                           a buffer rebuilt from the config: import checks it equals
                                               `value` (then drops it), export writes `value`

Flax paths start with the collection: ("params", ...) for trainable parameters, other
collections (e.g. ("frozen_bn", ...) for detectron2's frozen batch-norm statistics) as the model
declares them. `KeyMap(rules, ignore=[regex, ...])` also accepts torch keys that match an ignore
pattern and drops them on import (they are never exported): e.g. `num_batches_tracked`.

Both directions are strict: `to_flax` raises `KeyMismatchError` listing every missing and every
unexpected torch key, `to_torch` every missing and unexpected Flax path; nothing is converted
partially. `to_flax(state, expected=abstract_variables)` also checks every shape and dtype
against the model (e.g. `jax.eval_shape(model.init, ...)`); `check_shapes(tree, abstract)` checks
the shapes of any converted tree. All of these are `ConversionError`s: the data does not fit the
model, a user error (dinoseg.errors; one line, exit status 2 on the command line). Dtypes are never changed, so
torch -> Flax -> torch is bit-exact.

`torch_shapes(abstract_variables)` gives the torch keys, shapes and dtypes the export would write
without materializing any tensor (the layouts run on zero-stride views), which is how full-size
layouts are compared with the reference checkpoints. `prefixed(torch_prefix, flax_prefix)` nests a
map inside a bigger model (e.g. a backbone under "backbone." / ("backbone",)), and `+` concatenates
maps, so a system's converter is the sum of its parts' maps.

Example:
  km = KeyMap([one("fc.weight", ("params", "fc", "kernel"), LINEAR),
               one("fc.bias", ("params", "fc", "bias"))], ignore=[r"\\.num_batches_tracked$"])
  variables = km.to_flax(state_dict)          # {"params": {"fc": {"kernel": ..., "bias": ...}}}
  state_dict_again = km.to_torch(variables)   # same keys, same bytes
"""
import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from dinoseg.errors import UserValueError

Path = tuple[str, ...]


class ConversionError(UserValueError):
  """Weights that do not fit the model: keys, shapes, dtypes, tied copies or rebuilt buffers differ."""


class KeyMismatchError(ConversionError, KeyError):
  """Missing and/or unexpected keys (or paths) in a conversion. `missing` / `unexpected` list them."""

  def __init__(self, what: str, missing: Iterable[str] = (), unexpected: Iterable[str] = (), limit: int = 30):
    self.missing, self.unexpected = sorted(missing), sorted(unexpected)
    parts = [what]
    for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
      if keys:
        shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
        parts.append(f"{len(keys)} {label}: {shown}")
    self.message = "; ".join(parts)
    super().__init__(self.message)

  def __str__(self) -> str:
    return self.message


@dataclasses.dataclass(frozen=True)
class Layout:
  """A change of array layout between torch and Flax (both functions must be exact inverses)."""
  name: str
  to_flax: Callable[[np.ndarray], np.ndarray]
  to_torch: Callable[[np.ndarray], np.ndarray]


def _conv_to_flax(a: np.ndarray) -> np.ndarray:  # (O, I, *K) -> (*K, I, O)
  return np.transpose(a, tuple(range(2, a.ndim)) + (1, 0))


def _conv_to_torch(a: np.ndarray) -> np.ndarray:  # (*K, I, O) -> (O, I, *K)
  n = a.ndim
  return np.transpose(a, (n - 1, n - 2) + tuple(range(n - 2)))


def _flip_spatial(a: np.ndarray, spatial: Sequence[int]) -> np.ndarray:
  return a[tuple(slice(None, None, -1) if i in spatial else slice(None) for i in range(a.ndim))]


IDENTITY = Layout("same", lambda a: a, lambda a: a)
# torch nn.Linear weight (out, in) <-> Flax Dense kernel (in, out).
LINEAR = Layout("linear", lambda a: np.swapaxes(a, 0, 1), lambda a: np.swapaxes(a, 0, 1))
# torch ConvNd weight (O, I, *K) <-> Flax Conv kernel (*K, I, O), e.g. OIHW <-> HWIO.
CONV = Layout("conv", _conv_to_flax, _conv_to_torch)
# torch ConvTransposeNd weight (I, O, *K) <-> Flax nn.ConvTranspose(transpose_kernel=False) kernel
# (*K, I, O) with the spatial axes flipped (torch's transposed conv correlates with the flipped kernel).
# Padding: torch `padding=p` is Flax `padding=[(k - 1 - p, k - 1 - p)]` per axis ("VALID" when p = 0 and
# stride == kernel size).
CONV_TRANSPOSE = Layout(
    "conv_transpose",
    lambda a: _flip_spatial(np.transpose(a, tuple(range(2, a.ndim)) + (0, 1)), range(a.ndim - 2)),
    lambda a: np.transpose(_flip_spatial(a, range(a.ndim - 2)),
                           (a.ndim - 2, a.ndim - 1) + tuple(range(a.ndim - 2))))


def reshaped(torch_shape: Sequence[int], flax_shape: Sequence[int]) -> Layout:
  """A reshape between the two shapes (same element order)."""
  torch_shape, flax_shape = tuple(torch_shape), tuple(flax_shape)
  return Layout(f"reshape{torch_shape}->{flax_shape}", lambda a: a.reshape(flax_shape),
                lambda a: a.reshape(torch_shape))


@dataclasses.dataclass(frozen=True)
class Rule:
  """Links torch keys to Flax paths.

  Attributes:
    torch_keys: the torch keys (read on import, written on export, in this order).
    flax_paths: the Flax variable paths (collection first).
    to_flax: [torch arrays] -> [Flax arrays]; may raise ValueError (e.g. tied copies differ).
    to_torch: [Flax arrays] -> [torch arrays].
    kind: a short description for listings.
  """
  torch_keys: tuple[str, ...]
  flax_paths: tuple[Path, ...]
  to_flax: Callable[[Sequence[np.ndarray]], list[np.ndarray]]
  to_torch: Callable[[Sequence[np.ndarray]], list[np.ndarray]]
  kind: str = "same"


def _path(path: Sequence[str] | str) -> Path:
  path = tuple(path.split("/")) if isinstance(path, str) else tuple(path)
  if len(path) < 2:
    raise ValueError(f"a Flax path needs a collection and a name, got {path!r}")
  return path


def one(torch_key: str, flax_path: Sequence[str] | str, layout: Layout = IDENTITY) -> Rule:
  """One torch tensor <-> one Flax variable through `layout`."""
  return Rule((torch_key,), (_path(flax_path),), lambda a: [layout.to_flax(a[0])],
              lambda a: [layout.to_torch(a[0])], layout.name)


def split(torch_key: str, flax_paths: Sequence[Sequence[str] | str], axis: int = 0,
          layout: Layout = IDENTITY) -> Rule:
  """One packed torch tensor <-> equal parts along `axis` (torch side), each through `layout`.

  E.g. nn.MultiheadAttention `in_proj_weight` (3d, d) rows [q; k; v] <-> three Dense kernels
  (d, d): `split(key, [q_path, k_path, v_path], axis=0, layout=LINEAR)`.
  """
  paths = tuple(_path(p) for p in flax_paths)
  n = len(paths)

  def to_flax(a):
    if a[0].shape[axis] % n:
      raise ConversionError(f"{torch_key}: axis {axis} of shape {a[0].shape} does not split into {n} parts")
    return [layout.to_flax(part) for part in np.split(a[0], n, axis=axis)]

  return Rule((torch_key,), paths, to_flax,
              lambda a: [np.concatenate([layout.to_torch(x) for x in a], axis=axis)], f"split{n}:{layout.name}")


def tied(torch_keys: Sequence[str], flax_path: Sequence[str] | str, layout: Layout = IDENTITY) -> Rule:
  """Several torch keys holding the same tensor <-> one Flax variable (copies checked, all written)."""
  keys = tuple(torch_keys)

  def to_flax(arrays):
    for key, a in zip(keys[1:], arrays[1:]):
      if a.shape != arrays[0].shape or not np.array_equal(a, arrays[0]):
        raise ConversionError(f"tied tensors differ: {keys[0]} and {key} must hold the same values")
    return [layout.to_flax(arrays[0])]

  return Rule(keys, (_path(flax_path),), to_flax, lambda a: [layout.to_torch(a[0])] * len(keys),
              f"tied{len(keys)}:{layout.name}")


def buffer(torch_key: str, value: np.ndarray | Callable[[], np.ndarray], check: bool = True) -> Rule:
  """A torch buffer that Flax rebuilds: dropped on import (after checking it equals `value` when
  `check`), written as `value` on export (e.g. Swin's `relative_position_index`)."""
  make = value if callable(value) else (lambda: value)

  def to_flax(arrays):
    if check:
      expected = np.asarray(make())
      a = arrays[0]
      if a.shape != expected.shape or not np.array_equal(a, expected):
        raise ConversionError(f"buffer {torch_key} (shape {a.shape}) differs from the value this model rebuilds "
                         f"(shape {expected.shape}); the checkpoint was made for another configuration")
    return []

  return Rule((torch_key,), (), to_flax, lambda a: [np.asarray(make())], "buffer")


def _flatten(tree: Mapping, prefix: Path = ()) -> dict[Path, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, prefix + (str(key),)))
    else:
      out[prefix + (str(key),)] = value
  return out


def flatten_variables(variables: Mapping) -> dict[Path, Any]:
  """{"params": {"a": {"b": x}}} -> {("params", "a", "b"): x} (FrozenDicts included)."""
  return _flatten(variables)


def unflatten_variables(flat: Mapping[Path, Any]) -> dict:
  """Inverse of `flatten_variables` (plain nested dicts)."""
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree


def _fmt(path: Path) -> str:
  return "/".join(path)


class KeyMap:
  """An ordered, strict, two-way map between a torch state dict and Flax variables (module doc)."""

  def __init__(self, rules: Iterable[Rule] = (), ignore: Iterable[str] = ()):
    self.rules: tuple[Rule, ...] = tuple(rules)
    self.ignore: tuple[str, ...] = tuple(ignore)
    self._ignore_re = [re.compile(p) for p in self.ignore]
    seen_keys, seen_paths = set(), set()
    for rule in self.rules:
      for key in rule.torch_keys:
        if key in seen_keys:
          raise ValueError(f"torch key {key!r} appears in two rules")
        seen_keys.add(key)
      for path in rule.flax_paths:
        if path in seen_paths:
          raise ValueError(f"Flax path {_fmt(path)!r} appears in two rules")
        seen_paths.add(path)

  def __add__(self, other: "KeyMap") -> "KeyMap":
    return KeyMap(self.rules + other.rules, self.ignore + other.ignore)

  def __len__(self) -> int:
    return len(self.rules)

  @property
  def torch_keys(self) -> list[str]:
    """Every torch key the map reads and writes, in export order."""
    return [k for rule in self.rules for k in rule.torch_keys]

  @property
  def flax_paths(self) -> list[Path]:
    return [p for rule in self.rules for p in rule.flax_paths]

  def is_ignored(self, torch_key: str) -> bool:
    return any(p.search(torch_key) for p in self._ignore_re)

  def prefixed(self, torch_prefix: str = "", flax_prefix: Sequence[str] = ()) -> "KeyMap":
    """The same map with `torch_prefix` before every torch key and `flax_prefix` inserted after
    the collection of every Flax path (ignore patterns anchored at ^ get the prefix too)."""
    flax_prefix = tuple(flax_prefix)

    def wrap(rule: Rule) -> Rule:
      return dataclasses.replace(rule, torch_keys=tuple(torch_prefix + k for k in rule.torch_keys),
                                 flax_paths=tuple((p[0],) + flax_prefix + p[1:] for p in rule.flax_paths))

    ignore = [("^" + re.escape(torch_prefix) + p[1:]) if p.startswith("^") else p for p in self.ignore]
    return KeyMap([wrap(r) for r in self.rules], ignore)

  def to_flax(self, state: Mapping[str, Any], expected: Mapping | None = None) -> dict:
    """torch state dict -> nested Flax variables {collection: {...}}.

    Args:
      state: {torch key: array} (numpy arrays; torch tensors are converted with np.asarray).
      expected: optional abstract variables (e.g. jax.eval_shape(model.init, ...)); every
        converted array's shape and dtype must match, and every expected path must be produced.
    Raises:
      KeyMismatchError: missing / unexpected torch keys (or Flax paths vs `expected`).
      ConversionError: shape or dtype mismatches, differing tied copies, unexpected buffer values.
    """
    known = set(self.torch_keys)
    missing = known - set(state)
    unexpected = {k for k in state if k not in known and not self.is_ignored(k)}
    if missing or unexpected:
      raise KeyMismatchError("torch state dict does not match the model", missing, unexpected)
    flat = {}
    for rule in self.rules:
      arrays = [np.asarray(state[k]) for k in rule.torch_keys]
      try:
        values = rule.to_flax(arrays)
      except ValueError as e:  # a split that does not divide, a reshape that does not fit, differing copies
        if isinstance(e, ConversionError):
          raise
        shapes = ", ".join(f"{k} {tuple(a.shape)}" for k, a in zip(rule.torch_keys, arrays))
        raise ConversionError(f"{shapes}: does not fit the model ({e})") from None
      for path, value in zip(rule.flax_paths, values, strict=True):
        flat[path] = value  # a view until every check has passed
    if expected is not None:
      _check_flat(flat, flatten_variables(expected))
    return unflatten_variables({path: np.ascontiguousarray(value) for path, value in flat.items()})

  def to_torch(self, variables: Mapping) -> dict[str, np.ndarray]:
    """Flax variables {collection: {...}} -> torch state dict (reference key order, names, layouts).

    Raises:
      KeyMismatchError: missing / unexpected Flax paths.
    """
    flat = flatten_variables(variables)
    known = set(self.flax_paths)
    missing = {_fmt(p) for p in known - set(flat)}
    unexpected = {_fmt(p) for p in set(flat) - known}
    if missing or unexpected:
      raise KeyMismatchError("Flax variables do not match the key map", missing, unexpected)
    state = {}
    for rule in self.rules:
      arrays = [np.asarray(flat[p]) for p in rule.flax_paths]
      for key, value in zip(rule.torch_keys, rule.to_torch(arrays), strict=True):
        state[key] = np.ascontiguousarray(value)
    return state

  def torch_shapes(self, abstract_variables: Mapping) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{torch key: (shape, dtype)} that `to_torch` would write for variables of these shapes.

    `abstract_variables` leaves need `.shape` and `.dtype` (jax.ShapeDtypeStruct, arrays). No
    tensor is materialized (layouts run on zero-stride views), so full-size models are cheap.
    """
    flat = flatten_variables(abstract_variables)
    known = set(self.flax_paths)
    missing = {_fmt(p) for p in known - set(flat)}
    unexpected = {_fmt(p) for p in set(flat) - known}
    if missing or unexpected:
      raise KeyMismatchError("abstract variables do not match the key map", missing, unexpected)
    out = {}
    for rule in self.rules:
      views = [np.broadcast_to(np.zeros((), np.dtype(flat[p].dtype)), tuple(flat[p].shape))
               for p in rule.flax_paths]
      for key, value in zip(rule.torch_keys, rule.to_torch(views), strict=True):
        out[key] = (tuple(value.shape), np.dtype(value.dtype))
    return out

  def describe(self) -> list[str]:
    """One line per rule: `torch keys -> Flax paths (kind)`."""
    return [f"{', '.join(r.torch_keys)} -> {', '.join(_fmt(p) for p in r.flax_paths) or '(rebuilt)'} ({r.kind})"
            for r in self.rules]


def check_against(variables: Mapping, expected: Mapping) -> None:
  """Raises KeyMismatchError / ConversionError unless `variables` has exactly the paths, shapes and dtypes of
  `expected` (e.g. `jax.eval_shape(model.init, ...)`)."""
  _check_flat(flatten_variables(variables), flatten_variables(expected))


def _check_flat(flat: Mapping[Path, Any], expected: Mapping[Path, Any]) -> None:
  missing = {_fmt(p) for p in set(expected) - set(flat)}
  unexpected = {_fmt(p) for p in set(flat) - set(expected)}
  if missing or unexpected:
    raise KeyMismatchError("converted variables do not match the model's variables", missing, unexpected)
  bad = []
  for path, value in flat.items():
    want = expected[path]
    if tuple(value.shape) != tuple(want.shape) or np.dtype(value.dtype) != np.dtype(want.dtype):
      bad.append(f"{_fmt(path)}: got {tuple(value.shape)} {np.dtype(value.dtype)}, "
                 f"model has {tuple(want.shape)} {np.dtype(want.dtype)}")
  if bad:
    raise ConversionError(f"{len(bad)} shape/dtype mismatches: " + "; ".join(sorted(bad)[:30]))


def check_shapes(variables: Mapping, expected: Mapping, what: str = "the converted weights") -> None:
  """Checks a converted tree against the model's abstract variables (e.g. `jax.eval_shape` of its init):
  the same paths in every collection `variables` has, and the same shapes (dtypes may differ: they are
  cast when the weights are placed).

  Raises:
    KeyMismatchError: paths only on one side; ConversionError: shape mismatches, each as
      "path: expected (...), found (...)".
  """
  flat = flatten_variables(variables)
  want = {p: a for p, a in flatten_variables(expected).items() if p[0] in {q[0] for q in flat}}
  missing, unexpected = {_fmt(p) for p in set(want) - set(flat)}, {_fmt(p) for p in set(flat) - set(want)}
  if missing or unexpected:
    raise KeyMismatchError(f"{what} do not have the model's variables", missing, unexpected)
  bad = sorted(f"{_fmt(p)}: expected {tuple(want[p].shape)}, found {tuple(v.shape)}"
               for p, v in flat.items() if tuple(v.shape) != tuple(want[p].shape))
  if bad:
    raise ConversionError(f"{len(bad)} of {len(flat)} tensors of {what} do not fit the model's shapes: "
                          + "; ".join(bad[:20]) + (" ..." if len(bad) > 20 else ""))


# Helpers for building maps of common torch modules. `t` is a torch key prefix ("blocks.0.attn.qkv"),
# `f` a Flax path prefix (("params", "blocks_0", "attn", "qkv")).

def linear_rules(t: str, f: Sequence[str], bias: bool = True) -> list[Rule]:
  """nn.Linear <-> nn.Dense: weight -> kernel (transposed), bias -> bias."""
  f = tuple(f)
  rules = [one(f"{t}.weight", f + ("kernel",), LINEAR)]
  return rules + ([one(f"{t}.bias", f + ("bias",))] if bias else [])


def conv_rules(t: str, f: Sequence[str], bias: bool = True) -> list[Rule]:
  """nn.ConvNd <-> nn.Conv: weight -> kernel (OIHW -> HWIO), bias -> bias."""
  f = tuple(f)
  rules = [one(f"{t}.weight", f + ("kernel",), CONV)]
  return rules + ([one(f"{t}.bias", f + ("bias",))] if bias else [])


def layer_norm_rules(t: str, f: Sequence[str]) -> list[Rule]:
  """nn.LayerNorm / nn.GroupNorm <-> Flax LayerNorm / GroupNorm: weight -> scale, bias -> bias."""
  f = tuple(f)
  return [one(f"{t}.weight", f + ("scale",)), one(f"{t}.bias", f + ("bias",))]


def frozen_bn_rules(t: str, f: Sequence[str], collection: str = "frozen_bn") -> list[Rule]:
  """detectron2 FrozenBatchNorm2d buffers <-> the `collection` variables of the same names."""
  f = (collection,) + tuple(f)
  return [one(f"{t}.{name}", f + (name,)) for name in ("weight", "bias", "running_mean", "running_var")]


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  """Removes `prefix` from every key when ALL keys start with it; returns the dict unchanged otherwise."""
  if prefix and state and all(k.startswith(prefix) for k in state):
    return {k[len(prefix):]: v for k, v in state.items()}
  return dict(state)
