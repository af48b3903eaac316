"""`dinoseg train` never loses a run's data (issue 18), through the real CLI in subprocesses on the tiny
toy config: Ctrl-C and SIGTERM save and stop (exit 130 / 143) and the rerun resumes; a second Ctrl-C
stops at once; a second process on a busy workdir is refused without touching the first one's files;
checkpoints of another model shape are named in one line (exit 2); a global batch that does not divide
over the devices is a one-line error naming `data.batch_size`; an impossible --workdir is one line.
"""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from dinoseg.train.metrics import read_jsonl
from dinoseg.train.workdir import WorkdirLock

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOY = f"{ROOT / 'configs' / 'toy' / 'toy_segmentation.py'}:tiny"
# A run far longer than any test: it only ends when signalled.
ENDLESS = ("--config.train.num_steps=100000", "--config.train.log_every_steps=1",
           "--config.train.checkpoint_every_steps=0", "--config.train.eval_every_steps=0")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """One device, the suite's compile-speed XLA flags and a compilation cache shared by this module's runs."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
             JAX_THREEFRY_PARTITIONABLE="false")
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def _cmd(command, workdir, *extra, config=TOY):
  return [sys.executable, "-m", "dinoseg.cli", command, f"--config={config}", f"--workdir={workdir}",
          "--config.train.progress=false", *extra]


class Training:
  """A `dinoseg train` subprocess whose stdout / stderr go to files that the test can poll."""

  def __init__(self, workdir, env, *extra):
    self.workdir = pathlib.Path(workdir)
    self.out, self.err = self.workdir.parent / f"{self.workdir.name}.out", self.workdir.parent / f"{self.workdir.name}.err"
    with open(self.out, "w") as out, open(self.err, "w") as err:
      self.proc = subprocess.Popen(_cmd("train", workdir, *extra), env=env, stdout=out, stderr=err)

  def wait_for(self, predicate, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and self.proc.poll() is None:
      if predicate():
        return
      time.sleep(0.05)
    raise AssertionError(f"{what}: not reached (exit status {self.proc.poll()})\n{self.output()}")

  def steps_logged(self) -> int:
    path = self.workdir / "metrics.jsonl"
    return len(read_jsonl(path)) if path.exists() else 0

  def wait_for_steps(self, n: int) -> None:
    self.wait_for(lambda: self.steps_logged() >= n, f"{n} logged steps")

  def finish(self, timeout: float = 120) -> int:
    try:
      return self.proc.wait(timeout=timeout)
    finally:
      if self.proc.poll() is None:
        self.proc.kill()

  def output(self) -> str:
    return self.out.read_text() + self.err.read_text()


def _checkpoints(workdir) -> list[int]:
  path = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []


def test_ctrl_c_saves_stops_with_130_and_the_rerun_resumes(env, tmp_path):
  run = Training(tmp_path / "run", env, *ENDLESS)
  run.wait_for_steps(3)
  run.proc.send_signal(signal.SIGINT)
  assert run.finish() == 130, run.output()
  out = run.output()
  assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
  assert "SIGINT received: stopping after the current step" in out, out
  saved = _checkpoints(run.workdir)
  assert len(saved) == 1 and saved[0] >= 3, (saved, out)
  assert f"saved checkpoint {run.workdir / 'checkpoints' / str(saved[0])} and stopped at step {saved[0]}" in out
  resumed = subprocess.run(_cmd("train", run.workdir, f"--config.train.num_steps={saved[0] + 1}"), env=env,
                           capture_output=True, text=True, timeout=120)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"resumed from {run.workdir / 'checkpoints' / str(saved[0])} at step {saved[0]}" in resumed.stderr
  assert [r["step"] for r in read_jsonl(run.workdir / "metrics.jsonl") if "loss" in r] == list(range(1, saved[0] + 2))


def test_sigterm_saves_and_stops_with_143(env, tmp_path):
  run = Training(tmp_path / "run", env, *ENDLESS)
  run.wait_for_steps(2)
  run.proc.send_signal(signal.SIGTERM)
  assert run.finish() == 143, run.output()
  assert len(_checkpoints(run.workdir)) == 1 and "Traceback" not in run.output()


def test_second_ctrl_c_stops_at_once_without_saving(env, tmp_path):
  run = Training(tmp_path / "run", env, *ENDLESS)
  run.wait_for_steps(2)
  run.proc.send_signal(signal.SIGINT)
  run.wait_for(lambda: "SIGINT received" in run.err.read_text(), "the first Ctrl-C's message")
  run.proc.send_signal(signal.SIGINT)
  assert run.finish(timeout=10) == -signal.SIGINT, run.output()
  assert "Traceback" not in run.output()


def test_a_second_run_on_a_busy_workdir_is_refused_and_changes_nothing(env, tmp_path):
  workdir = tmp_path / "run"
  first = Training(workdir, env, *ENDLESS[:1], "--config.train.log_every_steps=1",
                   "--config.train.checkpoint_every_steps=2", "--config.train.eval_every_steps=0")
  try:
    first.wait_for(lambda: _checkpoints(workdir) and first.steps_logged() >= 4, "a checkpoint and 4 logged steps")
    started = time.time()
    second = subprocess.run(_cmd("train", workdir, "--config.train.num_steps=3"), env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 2, second.stdout + second.stderr
    message = second.stderr.strip().splitlines()
    assert len(message) == 1 and f"is in use by another dinoseg process (pid {first.proc.pid} on host" in message[0], \
        second.stderr
    assert time.time() - started < 30  # refused at once: before any model is built
    assert first.proc.poll() is None  # the first run goes on, its files untouched
    first.wait_for(lambda: first.steps_logged() >= 8, "8 logged steps after the refusal")
  finally:
    first.proc.send_signal(signal.SIGTERM)
    first.finish()
  rows = read_jsonl(workdir / "metrics.jsonl")
  assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 8
  assert not (workdir / "corrupt_checkpoints").exists()
  assert _checkpoints(workdir)[0] >= 2
  assert (workdir / "dinoseg.lock").read_text() == ""  # released cleanly: nothing to take over next time


@pytest.mark.multiprocess
def test_every_process_of_a_run_refuses_a_busy_workdir(env, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  four = dict(env, XLA_FLAGS=env["XLA_FLAGS"] + " --xla_force_host_platform_device_count=4")
  with WorkdirLock(workdir):  # another run holds the workdir
    procs = [subprocess.Popen(_cmd("train", workdir, f"--coordinator-address=localhost:{port}", "--num-processes=2",
                                   f"--process-id={i}"), env=four, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    try:
      outputs = [p.communicate(timeout=120) for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
  for i, (p, (out, err)) in enumerate(zip(procs, outputs)):
    assert p.returncode == 2, (i, out + err)
    assert "is in use by another dinoseg" in err.strip().splitlines()[-1], (i, err)
  assert sorted(q.name for q in workdir.iterdir()) == ["dinoseg.lock"]  # nothing written


def test_resuming_with_another_model_shape_names_the_parameters(env, tmp_path):
  workdir = tmp_path / "run"
  first = subprocess.run(_cmd("train", workdir, "--config.train.num_steps=2", "--config.train.eval_every_steps=0"),
                         env=env, capture_output=True, text=True, timeout=120)
  assert first.returncode == 0, first.stdout + first.stderr
  other = subprocess.run(_cmd("train", workdir, "--config.train.num_steps=4", "--config.model.width=16"), env=env,
                         capture_output=True, text=True, timeout=120)
  assert other.returncode == 2, other.stdout + other.stderr
  lines = (other.stdout + other.stderr).strip().splitlines()
  assert len(lines) == 1, lines
  assert "params/backbone/conv1/kernel saved (3, 3, 3, 8) vs expected (3, 3, 3, 16)" in lines[0]
  assert "model variables differ in shape" in lines[0] and f"{workdir / 'config.json'}" in lines[0]
  assert _checkpoints(workdir) == [2] and not (workdir / "corrupt_checkpoints").exists()


def test_batch_that_does_not_divide_over_the_devices_names_data_batch_size(env, tmp_path):
  eight = dict(env, XLA_FLAGS=env["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
  proc = subprocess.run(_cmd("train", tmp_path / "run", "--config.data.batch_size=4"), env=eight,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "dinoseg train: error: data.batch_size (the global batch, 4) must be divisible by the 8 data-parallel devices "
      "of mesh {'data': 8, 'fsdp': 1, 'tensor': 1} (axes data x fsdp); set --config.data.batch_size to a multiple "
      "of 8 or change --config.mesh")
  assert "Traceback" not in proc.stderr


def test_quickstart_tiny_on_eight_devices_names_data_batch_size(env, tmp_path):
  eight = dict(env, XLA_FLAGS=env["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
  proc = subprocess.run(_cmd("quickstart", tmp_path / "q", config="configs/maskdino/quickstart.py:tiny"), cwd=ROOT,
                        env=eight, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "dinoseg quickstart: error: data.batch_size (the global batch, 2) must be divisible by the 8 data-parallel "
      "devices of mesh {'data': 8, 'fsdp': 1, 'tensor': 1}"), proc.stderr


def test_workdir_under_a_file_is_one_line(env, tmp_path):
  (tmp_path / "file").write_text("x")
  proc = subprocess.run(_cmd("train", tmp_path / "file" / "run"), env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"dinoseg train: error: --workdir={tmp_path / 'file' / 'run'} cannot be a directory: {tmp_path / 'file'} is a file"]
  assert (tmp_path / "file").read_text() == "x"
