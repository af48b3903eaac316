"""`dinoseg quickstart` never loses a user's data (issue 18): it refuses a --workdir holding entries it
would replace but did not create, clears only its own outputs in a directory it marked, and a SIGTERM
stops the whole command (no eval, export or overlays after it), through the real CLI."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from dinoseg.commands import quickstart

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = "configs/maskdino/quickstart.py:tiny"


def _env() -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", JAX_THREEFRY_PARTITIONABLE="false")
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "dinoseg.cli", "quickstart", f"--config={CONFIG}", f"--workdir={workdir}",
          "--config.train.progress=false", *extra]


@pytest.mark.parametrize("fresh", [False, True])
def test_a_workdir_it_did_not_create_is_refused_and_left_alone(tmp_path, fresh):
  workdir = tmp_path / "q"
  (workdir / "data").mkdir(parents=True)
  (workdir / "data" / "precious.txt").write_text("x")
  (workdir / "eval").mkdir()
  proc = subprocess.run(_cmd(workdir, *(["--fresh"] if fresh else [])), cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f"dinoseg quickstart: error: --workdir={workdir} already holds data, eval, which dinoseg quickstart did not "
      f"create (no {quickstart.WORKDIR_STAMP} there) and would replace; nothing was changed. Choose another "
      "--workdir (e.g. a new directory) or move those entries away"]
  assert (workdir / "data" / "precious.txt").read_text() == "x"
  assert sorted(p.name for p in workdir.iterdir()) == ["data", "eval"]  # not even a lock file or a stamp


def test_only_its_own_outputs_are_cleared_in_a_directory_it_marked(tmp_path):
  workdir = tmp_path / "q"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("mine")
  quickstart.claim_workdir(workdir)  # nothing of OUTPUTS there: claimed, beside the user's file
  assert json.loads((workdir / quickstart.WORKDIR_STAMP).read_text())["created_by"] == "dinoseg quickstart"
  for name in ("raw", "data", "train", "eval"):
    (workdir / name).mkdir()
  (workdir / "report.json").write_text("{}")
  quickstart._clear(workdir)
  assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt", quickstart.WORKDIR_STAMP]
  legacy = tmp_path / "legacy"  # made by a quickstart before the workdir stamp: its data stamp identifies it
  (legacy / "data").mkdir(parents=True)
  (legacy / "data" / quickstart.DATA_STAMP).write_text("{}")
  quickstart.claim_workdir(legacy)
  assert (legacy / quickstart.WORKDIR_STAMP).is_file()
  with pytest.raises(RuntimeError, match="refusing to clear"):
    quickstart._clear(tmp_path)


def test_sigterm_during_training_stops_the_whole_command(tmp_path):
  workdir = tmp_path / "q"
  err_path = tmp_path / "stderr.txt"
  with open(err_path, "w") as err:
    proc = subprocess.Popen(_cmd(workdir, "--config.train.num_steps=1000"), cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=err, text=True)
  try:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and "starting a new run" not in err_path.read_text():
      time.sleep(0.05)
    assert proc.poll() is None, err_path.read_text()
    proc.send_signal(signal.SIGTERM)  # the trainer is setting up: it stops before (or after) its first step
    out, _ = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  err = err_path.read_text()
  assert proc.returncode == 143, out + err
  assert "[quickstart] stopped by SIGTERM during training at step" in err and "Traceback" not in err, err
  assert not any((workdir / name).exists() for name in ("eval", "export", "overlays", "report.json")), \
      sorted(p.name for p in workdir.iterdir())
  steps = [int(p.name) for p in (workdir / "train" / "checkpoints").iterdir() if p.name.isdigit()] \
      if (workdir / "train" / "checkpoints").is_dir() else []
  assert steps in ([], [int(err.split("during training at step ")[1].split()[0])])  # saved where it stopped
