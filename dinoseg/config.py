"""ml_collections config launches: `--config=FILE.py[:VARIANT]` plus `--config.a.b=value` overrides.

A config file is a Python file with `get_config(variant: str | None = None) -> ConfigDict`
(big_vision style; the docstring holds the run command and the tiny CPU variant). It may
define `validate(config)` to reject inconsistent settings after overrides.

FILE is looked up as given (relative to the working directory), then inside the
installed `dinoseg.configs` package (the repository's `configs/` folder), with or
without a leading `configs/`. Returned configs are locked: setting a key that does not
exist is an error, so a misspelled override never passes silently.
"""
import ast
import contextlib
import difflib
import importlib.util
import pathlib
import sys
from typing import Any, Sequence

import ml_collections

ConfigDict = ml_collections.ConfigDict

_TRUE = {"true", "t", "yes", "y", "1", "on"}
_FALSE = {"false", "f", "no", "n", "0", "off"}


def _packaged_configs_dir() -> pathlib.Path | None:
  here = pathlib.Path(__file__).resolve().parent
  for candidate in (here / "configs", here.parent / "configs"):
    if candidate.is_dir():
      return candidate
  return None


def resolve_config_path(path: str) -> pathlib.Path:
  """Finds a config file; raises FileNotFoundError listing where it looked."""
  tried = [pathlib.Path(path)]
  base = _packaged_configs_dir()
  if base is not None:
    rel = pathlib.PurePath(path)
    if rel.parts and rel.parts[0] == "configs":
      rel = pathlib.PurePath(*rel.parts[1:])
    tried.append(base / rel)
  for candidate in tried:
    if candidate.is_file():
      return candidate.resolve()
  raise FileNotFoundError(f"config file {path!r} not found (looked at: {', '.join(map(str, tried))})")


def _load_module(file: pathlib.Path):
  name = "dinoseg_config_" + "_".join(file.with_suffix("").parts[-3:]).replace("-", "_").replace(".", "_")
  spec = importlib.util.spec_from_file_location(name, file)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses and pickling need it registered
  spec.loader.exec_module(module)
  return module


def load_config(spec: str, overrides: Sequence[str] = ()) -> ConfigDict:
  """Loads `FILE.py[:VARIANT]`, applies `a.b=value` overrides, validates, locks.

  Args:
    spec: "path/to/config.py" or "path/to/config.py:variant".
    overrides: strings "a.b=value" (the part after `--config.` on the command line).
  Raises:
    FileNotFoundError, ValueError (unknown variant or key, unparsable value, failed validation).
  """
  path, _, variant = spec.partition(":")
  file = resolve_config_path(path)
  module = _load_module(file)
  get_config = getattr(module, "get_config", None)
  if get_config is None:
    raise ValueError(f"{file} has no get_config() function")
  try:
    config = get_config(variant or None)
  except TypeError:
    if variant:
      raise ValueError(f"{file}: get_config() takes no variant, got {variant!r}") from None
    config = get_config()
  if not isinstance(config, ConfigDict):
    raise ValueError(f"{file}: get_config() must return a ConfigDict, got {type(config).__name__}")
  config = apply_overrides(config, overrides)
  validate = getattr(module, "validate", None)
  if validate is not None:
    validate(config)
  config.lock()
  return config


def _key_suggestions(config: ConfigDict, key: str) -> str:
  matches = difflib.get_close_matches(key, list(config.keys()), n=3)
  return f"; did you mean {', '.join(matches)}?" if matches else f"; known keys: {', '.join(sorted(config.keys()))}"


def parse_value(text: str, current: Any, key: str = "value") -> Any:
  """Parses an override string into the type of the field's current value."""
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in _TRUE:
      return True
    if low in _FALSE:
      return False
    raise ValueError(f"--config.{key}: expected a boolean, got {text!r}")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise ValueError(f"--config.{key}: expected an integer, got {text!r}") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"--config.{key}: expected a number, got {text!r}") from None
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = tuple(v.strip() for v in text.split(",") if v.strip())  # a,b,c
    if not isinstance(value, (tuple, list)):
      value = (value,)
    return type(current)(value)
  if isinstance(current, ConfigDict):
    raise ValueError(f"--config.{key} is a group of settings; set one of its keys "
                     f"({', '.join(sorted(current.keys()))})")
  # None or another type: a Python literal, else the raw string.
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
  """Applies "a.b=value" strings; unknown keys raise ValueError with suggestions."""
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"config override {item!r} must look like key=value")
    dotted, _, text = item.partition("=")
    dotted = dotted.strip()
    if dotted.startswith("config."):
      dotted = dotted[len("config."):]
    parts = dotted.split(".")
    node = config
    for i, part in enumerate(parts):
      if not isinstance(node, ConfigDict) or part not in node:
        where = ".".join(parts[:i]) or "<root>"
        hint = _key_suggestions(node, part) if isinstance(node, ConfigDict) else ""
        raise ValueError(f"unknown config key {dotted!r} ({part!r} not in {where}){hint}")
      if i < len(parts) - 1:
        node = node[part]
    current = node[parts[-1]]
    value = parse_value(text, current, dotted)
    with node.unlocked() if node.is_locked else contextlib.nullcontext():
      try:
        node[parts[-1]] = value
      except TypeError as e:
        raise ValueError(f"--config.{dotted}: {e}") from None
  return config


def split_config_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.a.b=value` / `--config.a.b value` overrides from other arguments.

  Returns:
    (other_args, overrides) with overrides as "a.b=value".
  """
  rest, overrides = [], []
  i = 0
  argv = list(argv)
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      body = arg[len("--config."):]
      if "=" in body:
        overrides.append(body)
      elif i + 1 < len(argv):
        overrides.append(f"{body}={argv[i + 1]}")
        i += 1
      else:
        raise ValueError(f"{arg} needs a value")
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def to_dict(config: ConfigDict) -> dict:
  """Plain nested dict (tuples kept), e.g. for JSON dumps next to a run."""
  return config.to_dict()


__all__ = ["ConfigDict", "load_config", "apply_overrides", "parse_value", "split_config_args",
           "resolve_config_path", "to_dict"]
