"""JAX's persistent compilation cache for dinoseg commands (`--compile-cache DIR`).

Compiling the train step of a model takes from seconds to minutes (most on a CPU). With a cache
directory, every compiled program is written there, and a later process that compiles the same
program (same model, shapes, mesh, jax version and flags) reads it back instead:

  dinoseg train --config=... --workdir=RUN                       cache in RUN/compile_cache
  dinoseg train --config=... --workdir=RUN --compile-cache=DIR   cache in DIR (shared between runs)
  dinoseg train --config=... --workdir=RUN --compile-cache=none  no cache

Without `--compile-cache`, the cache is the user's `JAX_COMPILATION_CACHE_DIR` when set, else
`<workdir>/compile_cache` for commands that have a workdir (`train`, `eval --workdir`, `quickstart`),
else none. `use` (a context manager around a command's work) also lowers JAX's thresholds (programs
compiled in under 1 s and entries of any size are cached too) unless the environment sets them, and
afterwards puts JAX's settings back, so a command run in-process (`dinoseg.cli.main`) leaves no cache
behind. `stats()` counts the cache's reads and writes in this process (the trainer reports them after
the first step).
"""
import contextlib
import logging
import os
import pathlib
import threading

from dinoseg.errors import UserValueError

logger = logging.getLogger(__name__)

DEFAULT_NAME = "compile_cache"
DISABLE = "none"
_SETTINGS = ("jax_enable_compilation_cache", "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
_EVENTS = {"/jax/compilation_cache/compile_requests_use_cache": "lookups",
           "/jax/compilation_cache/cache_hits": "hits",
           "/jax/compilation_cache/cache_misses": "writes"}
_counts = dict.fromkeys(_EVENTS.values(), 0)
_lock = threading.Lock()
_listening = False


def add_argument(parser, *, workdir_default: bool = True) -> None:
  """Adds `--compile-cache DIR` to a command's parser."""
  where = "<workdir>/compile_cache" if workdir_default else "none"
  parser.add_argument(
      "--compile-cache", default=None, metavar="DIR",
      help=f"persistent compilation cache: compiled programs are saved in DIR and reused by later runs "
           f"('{DISABLE}': off; default: $JAX_COMPILATION_CACHE_DIR if set, else {where})")


def resolve(flag: str | None, workdir=None) -> pathlib.Path | None:
  """The cache directory for a command's `--compile-cache` value (None: no cache).

  Raises:
    UserValueError: an empty value, or a path that exists and is not a directory.
  """
  if flag is not None:
    if not flag.strip():
      raise UserValueError(f"--compile-cache needs a directory or '{DISABLE}'")
    if flag.strip().lower() == DISABLE:
      return None
    directory = pathlib.Path(flag).expanduser().resolve()
  elif os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    directory = pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser().resolve()
  elif workdir is not None:
    directory = pathlib.Path(workdir).expanduser().resolve() / DEFAULT_NAME
  else:
    return None
  if directory.exists() and not directory.is_dir():
    raise UserValueError(f"--compile-cache: {directory} exists and is not a directory")
  return directory


@contextlib.contextmanager
def use(flag: str | None, workdir=None):
  """Within the block, JAX's persistent compilation cache is `resolve(flag, workdir)` (yielded; None:
  off); JAX's previous settings and an uninitialised cache are restored after it."""
  import jax  # noqa: PLC0415
  from jax.experimental.compilation_cache import compilation_cache as jax_cache  # noqa: PLC0415
  saved = {name: getattr(jax.config, name) for name in _SETTINGS}
  jax_cache.reset_cache()  # JAX opens its cache once, at the first compilation after a reset
  try:
    yield configure(flag, workdir)
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)
    jax_cache.reset_cache()


def configure(flag: str | None, workdir=None) -> pathlib.Path | None:
  """Points JAX's persistent compilation cache at `resolve(flag, workdir)` (or turns it off).

  Takes effect at the process's first compilation (or the first after a reset: `use`); returns the
  directory (None: off).
  """
  import jax  # noqa: PLC0415
  directory = resolve(flag, workdir)
  if directory is None:
    jax.config.update("jax_enable_compilation_cache", False)
    logger.debug("persistent compilation cache: off")
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", str(directory))
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # every size, no filesystem override
  _listen()
  logger.debug("persistent compilation cache: %s", directory)
  return directory


def directory() -> pathlib.Path | None:
  """The cache directory JAX uses in this process (None: no cache)."""
  import jax  # noqa: PLC0415
  path = jax.config.jax_compilation_cache_dir
  return pathlib.Path(path) if path and jax.config.jax_enable_compilation_cache else None


def _listen() -> None:
  """Counts the cache's lookups, hits and writes of this process (once per process)."""
  global _listening
  import jax  # noqa: PLC0415
  with _lock:
    if _listening:
      return
    _listening = True

  def on_event(event: str, **kwargs) -> None:
    name = _EVENTS.get(event)
    if name is not None:
      with _lock:
        _counts[name] += 1

  jax.monitoring.register_event_listener(on_event)


def stats() -> dict[str, int]:
  """{"lookups", "hits", "writes"}: the cache's use in this process so far (zeros before `configure`)."""
  _listen()
  with _lock:
    return dict(_counts)


def describe(before: dict[str, int], after: dict[str, int]) -> str:
  """What the cache did between two `stats()`: e.g. "3 programs read from the compilation cache, 1 compiled"."""
  hits = after["hits"] - before["hits"]
  compiled = after["lookups"] - before["lookups"] - hits
  return f"{hits} program(s) read from the compilation cache, {compiled} compiled"


__all__ = ["add_argument", "resolve", "use", "configure", "directory", "stats", "describe", "DEFAULT_NAME", "DISABLE"]
