"""One registry class for every extension point (docs/design.md, "Registries").

    TASKS = Registry("task", hint=" (config.task)", modules=["dinoseg.models.toy.task"])

    @TASKS.register("toy_segmentation")                 # a decorator, or TASKS.register(name, value)
    class ToySegmentationTask(Task): ...

    COMMANDS.register("env", "dinoseg.commands.env")     # a lazy entry: imported on first lookup
    TASKS.get("toy_segmentation")                       # the object (UserValueError when unknown)

An entry is an object or a string: "package.module:attribute" (that attribute) or "package.module" (the
module itself), imported the first time it is looked up. `modules` are imported when a lookup misses or
the names are listed (they register their entries when imported). A name is registered once: another
value under a taken name is a ValueError.

Plugins: an installed distribution adds a system without editing dinoseg through the entry-point group
`dinoseg.plugins` (e.g. `[project.entry-points."dinoseg.plugins"] mysystem = "mysystem.dinoseg_plugin"`).
Each entry point is loaded once per process, the first time any registry misses a name or lists its
names: a module is imported (it registers its task, converter, predictor, commands, ... on import), a
callable is called. A plugin that fails to load is logged as a warning and left out.
"""
import difflib
import importlib
import importlib.metadata
import logging
import types
from typing import Any, Iterable, Iterator

from dinoseg.errors import UserValueError

logger = logging.getLogger(__name__)
PLUGIN_GROUP = "dinoseg.plugins"
_MISSING = object()
_plugins_loaded = False


def load_plugins(force: bool = False) -> list[str]:
  """Loads the entry points of `PLUGIN_GROUP` (once per process unless `force`); returns their names."""
  global _plugins_loaded
  if _plugins_loaded and not force:
    return []
  _plugins_loaded = True
  names = []
  for entry_point in importlib.metadata.entry_points(group=PLUGIN_GROUP):
    try:
      plugin = entry_point.load()
      if callable(plugin) and not isinstance(plugin, types.ModuleType):
        plugin()
    except Exception as e:  # a broken plugin must not break dinoseg: say so and go on without it
      logger.warning("dinoseg plugin %r (%s) could not be loaded: %s: %s", entry_point.name, entry_point.value,
                     type(e).__name__, e)
      continue
    names.append(entry_point.name)
  return names


def resolve(spec: Any) -> Any:
  """The object of a "module:attribute" / "module" string; any other value as it is."""
  if not isinstance(spec, str):
    return spec
  module, _, attribute = spec.partition(":")
  obj = importlib.import_module(module)
  return getattr(obj, attribute) if attribute else obj


class Registry:
  """Named entries of one kind (module docstring). Iterating gives the sorted names."""

  def __init__(self, kind: str, *, hint: str = "", modules: list[str] | None = None,
               entries: dict[str, Any] | None = None):
    self.kind, self.hint = kind, hint
    self.modules = modules if modules is not None else []  # may be appended to later
    self._entries: dict[str, Any] = {}  # as registered (objects or "module:attr" strings)
    self._resolved: dict[str, Any] = {}
    self._imported: set[str] = set()
    for name, value in (entries or {}).items():
      self.register(name, value)

  def register(self, name: str, value: Any = _MISSING) -> Any:
    """Registers `value` under `name` and returns it; without `value`, a decorator doing so."""
    if value is _MISSING:
      return lambda obj: self.register(name, obj)
    old = self._entries.get(name, value)
    if old is not value and not (isinstance(value, str) and old == value):
      raise ValueError(f"a {self.kind} named {name!r} is already registered ({self._entries[name]!r})")
    self._entries[name] = value
    return value

  def unregister(self, name: str) -> None:
    del self._entries[name]
    self._resolved.pop(name, None)

  def load_all(self) -> None:
    """Imports the modules not imported yet and loads the plugins (once per process)."""
    for module in list(self.modules):
      if module not in self._imported:
        importlib.import_module(module)
        self._imported.add(module)
    load_plugins()

  def get(self, name: str, default: Any = _MISSING) -> Any:
    """The entry `name` (lazy strings imported); UserValueError listing the known names, or `default`."""
    if name not in self._entries:
      self.load_all()
    if name not in self._entries:
      if default is not _MISSING:
        return default
      known = sorted(self._entries)
      close = difflib.get_close_matches(str(name), known, n=1)
      raise UserValueError(f"unknown {self.kind} {name!r}{self.hint}; known: {', '.join(known) or 'none'}"
                           + (f"; did you mean {close[0]!r}?" if close else ""))
    if name not in self._resolved:
      self._resolved[name] = resolve(self._entries[name])
    return self._resolved[name]

  def names(self) -> list[str]:
    self.load_all()
    return sorted(self._entries)

  def items(self) -> Iterable[tuple[str, Any]]:
    return [(name, self.get(name)) for name in self.names()]

  __getitem__ = get
  __setitem__ = register
  __delitem__ = unregister

  def __contains__(self, name: object) -> bool:
    if name not in self._entries:
      self.load_all()
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self.names())

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}, {sorted(self._entries)})"


__all__ = ["Registry", "PLUGIN_GROUP", "load_plugins", "resolve"]
