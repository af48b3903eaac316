"""Workdirs: created with a one-line error when they cannot be, and locked by the process writing in them.

`prepare(path)` creates a run directory (and its parents); a path whose parent is a file, an existing
file, or a directory that may not be created is a `UserError` naming the path, not a traceback.

`WorkdirLock(path)` makes one process the only writer of a workdir (`dinoseg train` locks its
workdir, `dinoseg quickstart` its own): an exclusive `fcntl.flock` on `<workdir>/dinoseg.lock`,
which also records the holder (pid, host, command, start time) for the message a second process
gets. The operating system drops a flock when its process ends, however it ends (kill -9, a crash,
a reboot), so a dead process never leaves a permanent lock; the holder record it leaves behind (a
clean release empties the file) is reported when the next process takes the lock over. The lock
file itself is never deleted (deleting a flock'ed file lets two processes lock two different files).
A filesystem without flock support gets a warning and no lock.
"""
import datetime
import errno
import json
import logging
import os
import pathlib
import socket
import sys
from typing import Callable

from dinoseg.errors import UserError, UserValueError

logger = logging.getLogger(__name__)

LOCK_FILE = "dinoseg.lock"


class WorkdirInUseError(UserError):
  """Another live process holds the workdir's lock."""


def prepare(path, what: str = "--workdir") -> pathlib.Path:
  """Creates directory `path` (with its parents) and returns it resolved.

  Raises:
    UserValueError: `path` or one of its parents is a file, or the directory cannot be created.
  """
  path = pathlib.Path(path).expanduser().resolve()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
    raise UserValueError(f"{what}={path} cannot be a directory: {blocker} is a file") from None
  except OSError as e:
    raise UserValueError(f"{what}={path} cannot be created: {e.strerror or e}") from None
  return path


def _describe(holder: dict) -> str:
  return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {holder.get('since', '?')}, "
          f"running `{holder.get('command', '?')}`")


class WorkdirLock:
  """An exclusive lock on a workdir (module docstring); a context manager, or `acquire()` / `release()`.

  Args:
    workdir: an existing directory.
    echo: where the "took over a stale lock" and "cannot lock" messages go (default: this module's
      logger, as warnings).
  """

  def __init__(self, workdir, echo: Callable[[str], None] | None = None):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._echo = echo or logger.warning
    self._fd: int | None = None

  def _read(self, fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode(errors="replace").strip()
    if not text:
      return None
    try:
      holder = json.loads(text)
    except json.JSONDecodeError:
      return {"command": text[:200]}
    return holder if isinstance(holder, dict) else {"command": text[:200]}

  def acquire(self) -> "WorkdirLock":
    """Takes the lock, or raises WorkdirInUseError at once (never waits)."""
    import fcntl  # noqa: PLC0415  (POSIX only)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = self._read(fd)
      os.close(fd)
      raise WorkdirInUseError(
          f"{self.path.parent} is in use by another dinoseg process ({_describe(holder or {})}); "
          "wait for it to finish or stop it, or choose another --workdir") from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        os.close(fd)
        raise
      os.close(fd)
      self._echo(f"cannot lock {self.path} ({e.strerror}): a second process writing to "
                 f"{self.path.parent} would not be detected")
      return self
    previous = self._read(fd)
    if previous is not None:
      self._echo(f"{self.path.parent} was locked by {_describe(previous)}, which ended without releasing it; "
                 "taking it over")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv) or sys.executable,
              "since": datetime.datetime.now().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    """Empties the holder record and drops the lock (the file stays)."""
    if self._fd is None:
      return
    import fcntl  # noqa: PLC0415
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
      os.close(fd)

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def lock_for_run(workdir, echo: Callable[[str], None] | None = None) -> WorkdirLock:
  """Locks `workdir` for a (possibly multi-process) run and returns the lock (release it at the end).

  Process 0 takes the lock; its outcome is broadcast so that every process of the run refuses
  together (the other processes hold nothing).

  Raises:
    WorkdirInUseError: on every process, when another run holds the lock.
  """
  import jax  # noqa: PLC0415
  lock, error = WorkdirLock(workdir, echo), None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except WorkdirInUseError as e:
      error = e
  if jax.process_count() > 1:
    import numpy as np  # noqa: PLC0415
    from jax.experimental import multihost_utils  # noqa: PLC0415
    busy = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if busy and error is None:
      error = WorkdirInUseError(f"{pathlib.Path(workdir)} is in use by another dinoseg run (process 0 could not "
                                "lock it; its message names the holder)")
  if error is not None:
    raise error
  return lock


__all__ = ["prepare", "WorkdirLock", "WorkdirInUseError", "lock_for_run", "LOCK_FILE"]
