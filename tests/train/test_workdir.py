"""Workdir creation and locking (dinoseg/train/workdir.py): one writer per workdir, a lock left by a
killed process is taken over with a message, every process of a multi-process run refuses together."""
import json
import os
import subprocess
import sys

import jax
import pytest

from dinoseg.errors import UserError
from dinoseg.train import workdir as workdir_lib

# Takes the lock and dies with SIGKILL while holding it (the record stays in the file).
HOLD_AND_DIE = """
import os, signal, sys
from dinoseg.train.workdir import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_second_lock_is_refused_naming_the_holder(tmp_path):
  with workdir_lib.WorkdirLock(tmp_path):
    holder = json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid()
    with pytest.raises(workdir_lib.WorkdirInUseError, match=f"in use by another dinoseg process \\(pid {os.getpid()} "):
      workdir_lib.WorkdirLock(tmp_path).acquire()
  assert (tmp_path / workdir_lib.LOCK_FILE).read_text() == ""  # released: no record left
  messages = []
  with workdir_lib.WorkdirLock(tmp_path, echo=messages.append):
    pass
  assert messages == []  # a cleanly released lock is not reported as stale


def test_lock_of_a_killed_process_is_taken_over_with_a_message(tmp_path):
  proc = subprocess.run([sys.executable, "-c", HOLD_AND_DIE, str(tmp_path)], capture_output=True, text=True,
                        timeout=60, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == -9, proc.stderr
  dead = json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())["pid"]
  messages = []
  with workdir_lib.WorkdirLock(tmp_path, echo=messages.append):
    assert json.loads((tmp_path / workdir_lib.LOCK_FILE).read_text())["pid"] == os.getpid()
  assert len(messages) == 1 and f"was locked by pid {dead} on host" in messages[0] and "taking it over" in messages[0]


def test_every_process_of_a_run_refuses_together(tmp_path, monkeypatch):
  """Process 1 holds no lock; it learns from process 0's broadcast that the workdir is busy."""
  from jax.experimental import multihost_utils
  broadcasts = []

  def broadcast(value):
    broadcasts.append(int(value))
    return value if jax.process_index() == 0 else busy

  monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with workdir_lib.WorkdirLock(tmp_path):  # another run holds the workdir
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    with pytest.raises(workdir_lib.WorkdirInUseError, match="in use by another dinoseg process"):
      workdir_lib.lock_for_run(tmp_path)
    assert broadcasts == [1]
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    busy = 1
    with pytest.raises(workdir_lib.WorkdirInUseError, match="process 0 could not lock it"):
      workdir_lib.lock_for_run(tmp_path)
  busy = 0  # free: process 1 goes on without holding anything
  assert workdir_lib.lock_for_run(tmp_path)._fd is None


def test_prepare_names_the_file_in_the_way(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(UserError, match=f"{tmp_path / 'file'} is a file"):
    workdir_lib.prepare(tmp_path / "file" / "run")
  with pytest.raises(UserError, match="cannot be a directory"):
    workdir_lib.prepare(tmp_path / "file")
  assert workdir_lib.prepare(tmp_path / "a" / "b") == (tmp_path / "a" / "b").resolve()
