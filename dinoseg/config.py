"""ml_collections config launches: `--config=FILE.py[:VARIANT]` plus `--config.a.b=value` overrides.

A config file is a Python file with `get_config(variant: str | None = None) -> ConfigDict`
(big_vision style; the docstring holds the run command and the tiny CPU variant). It may
define `validate(config)` to reject inconsistent settings after overrides.

FILE is looked up as given (relative to the working directory), then inside the
installed `dinoseg.configs` package (the repository's `configs/` folder), with or
without a leading `configs/`. Returned configs are locked: setting a key that does not
exist is an error, so a misspelled override never passes silently.

Overrides are parsed into the type of the existing field: booleans (true/false, yes/no, 1/0),
integers, floats, strings as given. A tuple or list field takes a sequence, spelled `(64, 64)`,
`[64, 64]` or `64,64` (quote it for the shell), whose elements are parsed like the field's current
ones (ints stay ints; numbers for floats). A single value for a field holding several numbers is an
error that names both readings (`--config.data.image_size=64` on (128, 128): '(64, 64)' for all, or
'(64,)' for a one-element list); for other sequences (names) it is a one-element sequence. A
sequence may change the length (milestones, class lists); fixed lengths are the config's `validate()`
to check. A field that is None takes a Python literal, else the string. Every bad file, key or value
raises `ConfigError` (a UserError: one line and exit status 2 on the command line).
"""
import ast
import contextlib
import difflib
import importlib.util
import logging
import pathlib
import sys
from typing import Any, Mapping, Sequence

import ml_collections

from dinoseg.errors import UserFileNotFoundError, UserValueError

logger = logging.getLogger(__name__)

ConfigDict = ml_collections.ConfigDict


class ConfigError(UserValueError):
  """A config file, variant, key or value that cannot work (one line on the command line)."""

_TRUE = {"true", "t", "yes", "y", "1", "on"}
_FALSE = {"false", "f", "no", "n", "0", "off"}


def _packaged_configs_dir() -> pathlib.Path | None:
  here = pathlib.Path(__file__).resolve().parent
  for candidate in (here / "configs", here.parent / "configs"):
    if candidate.is_dir():
      return candidate
  return None


def resolve_config_path(path: str) -> pathlib.Path:
  """Finds a config file; raises UserFileNotFoundError (a FileNotFoundError) listing where it looked."""
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
  raise UserFileNotFoundError(f"config file {path!r} not found (looked at: {', '.join(map(str, tried))})")


def _load_module(file: pathlib.Path):
  name = "dinoseg_config_" + "_".join(file.with_suffix("").parts[-3:]).replace("-", "_").replace(".", "_")
  spec = importlib.util.spec_from_file_location(name, file)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses and pickling need it registered
  spec.loader.exec_module(module)
  return module


def load_config(spec: str, overrides: Sequence[str] = (), base: Mapping[str, Any] | None = None) -> ConfigDict:
  """Loads `FILE.py[:VARIANT]`, sets `base` values, applies `a.b=value` overrides, validates, locks.

  Args:
    spec: "path/to/config.py" or "path/to/config.py:variant".
    overrides: strings "a.b=value" (the part after `--config.` on the command line).
    base: nested values set before the overrides, e.g. a run's saved `config.json` (`set_values`);
      keys the config file does not have are skipped with a note on stderr.
  Raises:
    UserFileNotFoundError (no such file), ConfigError (unknown variant or key, unparsable value, failed
    validation); both are UserErrors.
  """
  path, _, variant = spec.partition(":")
  file = resolve_config_path(path)
  module = _load_module(file)
  get_config = getattr(module, "get_config", None)
  if get_config is None:
    raise ConfigError(f"{file} has no get_config() function")
  try:
    config = get_config(variant or None)
  except TypeError:
    if variant:
      raise ConfigError(f"{file}: get_config() takes no variant, got {variant!r}") from None
    config = get_config()
  except ValueError as e:  # the file's own check of the variant
    raise ConfigError(f"{file.name}: {e}") from e
  if not isinstance(config, ConfigDict):
    raise ConfigError(f"{file}: get_config() must return a ConfigDict, got {type(config).__name__}")
  if base:
    skipped = set_values(config, base)
    if skipped:
      logger.warning("%d saved setting(s) that %s no longer has were skipped: %s", len(skipped), file.name,
                     ", ".join(skipped[:10]))
  config = apply_overrides(config, overrides)
  validate = getattr(module, "validate", None)
  if validate is not None:
    try:
      validate(config)
    except ValueError as e:  # the file's own consistency checks
      raise ConfigError(f"{file.name}: {e}") from e
  config.lock()
  return config


def _like(value: Any, current: Any) -> Any:
  """`value` (e.g. from JSON, which has no tuples) in the container type of `current`: a tuple field's
  lists become tuples, nested ones too."""
  if isinstance(current, tuple) and isinstance(value, list):
    return tuple(_like(v, ()) for v in value)
  return value


def set_values(config: ConfigDict, values: Mapping[str, Any], prefix: str = "") -> list[str]:
  """Sets the nested `values` (e.g. a saved `config.json`) into `config`, field by field, in the
  field's types; returns the dotted keys `config` does not have (skipped)."""
  skipped = []
  for key, value in values.items():
    dotted = f"{prefix}{key}"
    if key not in config:
      skipped.append(dotted)
      continue
    current = config[key]
    if isinstance(current, ConfigDict) and isinstance(value, Mapping):
      skipped += set_values(current, value, dotted + ".")
      continue
    with config.unlocked() if config.is_locked else contextlib.nullcontext():
      try:
        config[key] = _like(value, current)
      except TypeError as e:
        raise ConfigError(f"saved setting {dotted}={value!r} does not fit the config: {e}") from None
  return skipped


def _key_suggestions(config: ConfigDict, key: str) -> str:
  matches = difflib.get_close_matches(key, list(config.keys()), n=3)
  return f"; did you mean {', '.join(matches)}?" if matches else f"; known keys: {', '.join(sorted(config.keys()))}"


def _parse_scalar(text: str, current: Any, key: str) -> Any:
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in _TRUE:
      return True
    if low in _FALSE:
      return False
    raise ConfigError(f"--config.{key}: expected a boolean (true/false), got {text!r}")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise ConfigError(f"--config.{key}: expected an integer, got {text!r}") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise ConfigError(f"--config.{key}: expected a number, got {text!r}") from None
  return text


def _parse_element(value: Any, current: Any, key: str) -> Any:
  """One element of a sequence override, in the type of the field's current element."""
  if isinstance(current, (bool, int, float)) and not isinstance(value, str):
    value = str(value)
  if isinstance(current, (bool, int, float)):
    return _parse_scalar(value, current, key)
  if isinstance(current, str) and isinstance(value, (bool, int, float)):
    return str(value)
  return value


def _parse_sequence(text: str, current: tuple | list, key: str) -> tuple | list:
  """`(a, b)`, `[a, b]` or `a,b` -> the field's container type, elements typed like the current ones."""
  stripped = text.strip()
  try:
    value = ast.literal_eval(stripped)
  except (ValueError, SyntaxError):  # bare words: a,b or (a, b)
    inner = stripped[1:-1] if stripped[:1] in "([" and stripped[-1:] in ")]" else stripped
    value = tuple(v.strip() for v in inner.split(",") if v.strip())
    if len(value) == 1 and "," not in inner:
      value = value[0]
  if not isinstance(value, (tuple, list)):
    if len(current) > 1 and all(isinstance(v, (int, float)) for v in current):  # a size, a mean, milestones
      raise ConfigError(f"--config.{key} holds {len(current)} numbers {tuple(current)!r}; the single value {text!r} "
                        f"is ambiguous: write '{tuple([value] * len(current))!r}' for all of them, or '({value!r},)' "
                        "for a one-element list")
    value = (value,)
  kinds = {type(v) for v in current}
  if len(kinds) == 1 and kinds <= {bool, int, float, str}:
    value = [_parse_element(v, current[0], f"{key}[{i}]") for i, v in enumerate(value)]
  return type(current)(value)


def parse_value(text: str, current: Any, key: str = "value") -> Any:
  """Parses an override string into the type of the field's current value (module docstring).

  Raises:
    ConfigError: the text does not fit the field (type, or a single value for a multi-value field).
  """
  if isinstance(current, (bool, int, float, str)):
    return _parse_scalar(text, current, key)
  if isinstance(current, (tuple, list)):
    return _parse_sequence(text, current, key)
  if isinstance(current, ConfigDict):
    raise ConfigError(f"--config.{key} is a group of settings; set one of its keys "
                      f"({', '.join(sorted(current.keys()))})")
  # None or another type: a Python literal, else the raw string.
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
  """Applies "a.b=value" strings; unknown keys raise ConfigError with suggestions."""
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"config override {item!r} must look like key=value")
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
        raise ConfigError(f"unknown config key {dotted!r} ({part!r} not in {where}){hint}")
      if i < len(parts) - 1:
        node = node[part]
    current = node[parts[-1]]
    value = parse_value(text, current, dotted)
    with node.unlocked() if node.is_locked else contextlib.nullcontext():
      try:
        node[parts[-1]] = value
      except TypeError as e:
        raise ConfigError(f"--config.{dotted}: {e}") from None
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
        raise ConfigError(f"{arg} needs a value")
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def to_dict(config: ConfigDict) -> dict:
  """Plain nested dict (tuples kept), e.g. for JSON dumps next to a run."""
  return config.to_dict()


def to_yaml(config: ConfigDict) -> str:
  """Plain, readable YAML of a config: tuples as lists, no Python tags, no anchors / aliases."""
  import yaml  # noqa: PLC0415
  from dinoseg import jsonio  # noqa: PLC0415

  class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):
      return True

  return yaml.dump(jsonio.plain(config.to_dict()), Dumper=_Dumper, sort_keys=False, default_flow_style=None,
                   width=100, allow_unicode=True)


__all__ = ["ConfigDict", "ConfigError", "load_config", "apply_overrides", "set_values", "parse_value",
           "split_config_args", "resolve_config_path", "to_dict", "to_yaml"]
