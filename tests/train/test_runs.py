"""End-to-end runs of the toy config in subprocesses: learning, kill -9 + exact resume, SIGTERM,
2 processes x 4 devices vs 1 x 8, and export to PyTorch.

The subprocesses share a persistent JAX compilation cache (same programs, compiled once) and use
the non-partitionable threefry PRNG: XLA:CPU takes seconds to compile each random-number op of the
partitionable one (the default), which dominated these runs; nothing tested here depends on it.
"""
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dinoseg.convert.readers import read_orbax
from dinoseg.train.metrics import read_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = f"{ROOT / 'configs' / 'toy' / 'toy_segmentation.py'}:tiny"
NUM_STEPS = 40  # of the tiny variant; checkpoints every 10, eval at 20 and 40

# A child that trains through a wrapped data iterator: after `after` batches it either kills
# itself with SIGKILL ("kill"; once a first checkpoint has been committed, so that there is one to
# resume from: async saves may still be writing) or slows down ("slow") so that the parent can
# send a signal while the run is in flight. The wrapper does not change what the run computes.
CHILD = r"""
import os, pathlib, signal, sys, time
import absl.flags
absl.flags.FLAGS.mark_as_parsed()
from dinoseg.config import load_config
from dinoseg.train import task as task_lib, trainer

config_spec, workdir, action, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
config = load_config(config_spec, ["train.progress=false"])
task = task_lib.build(config)

class Wrapped:
  def __init__(self, it):
    self.it, self.n = it, 0
  def __iter__(self):
    return self
  def __next__(self):
    if self.n == after:
      if action == "kill":
        ckpts = pathlib.Path(workdir) / "checkpoints"
        deadline = time.time() + 120
        while time.time() < deadline and not any(p.name.isdigit() for p in ckpts.iterdir()):
          time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
      time.sleep(0.3)
    else:
      self.n += 1
    return next(self.it)
  def get_state(self):
    return self.it.get_state()
  def set_state(self, state):
    self.it.set_state(state)

make = task.train_iterator
task.train_iterator = lambda pi, pc: Wrapped(make(pi, pc))
trainer.train(config, workdir, task=task, echo=print)  # the trainer's messages on stdout
"""


def _env(cache_dir, devices=8) -> dict:
  env = dict(os.environ)
  # The parent's XLA flags (tests/conftest.py's compile-speed flags) with this run's device count.
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(XLA_FLAGS=" ".join([f"--xla_force_host_platform_device_count={devices}"] + flags), JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1", JAX_THREEFRY_PARTITIONABLE="false",
             TF_CPP_MIN_LOG_LEVEL="2")
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def _train_cmd(workdir, *extra):
  return [sys.executable, "-m", "dinoseg.cli", "train", f"--config={CONFIG}", f"--workdir={workdir}",
          "--config.train.progress=false", *extra]


def _run(cmd, env, timeout=240):
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
  return proc


def _state(workdir, step=NUM_STEPS):
  return read_orbax(pathlib.Path(workdir) / "checkpoints" / str(step))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
  """An uninterrupted tiny toy run on 1 process x 8 devices."""
  workdir = tmp_path_factory.mktemp("toy_reference")
  proc = _run(_train_cmd(workdir), _env(cache_dir))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert f"completed at step {NUM_STEPS}" in proc.stdout
  return workdir


def test_toy_task_learns(reference):
  rows = [r for r in read_jsonl(reference / "metrics.jsonl") if "loss" in r]
  assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))
  assert np.mean([r["loss"] for r in rows[-5:]]) < 0.5 * rows[0]["loss"]
  results = json.loads((reference / "eval" / f"step_{NUM_STEPS}.json").read_text())["results"]
  assert results["num_images"] == 40
  # Predicting background everywhere would score IoU-square = IoU-disk = 0 (mIoU < 34).
  assert results["mIoU"] > 55 and min(results["IoU-square"], results["IoU-disk"]) > 20, results


def test_kill_minus_9_then_resume_is_bit_exact(reference, cache_dir, tmp_path):
  kill_after = random.Random().randint(11, NUM_STEPS - 2)  # after the first checkpoint (step 10)
  workdir = tmp_path / "killed"
  env = _env(cache_dir)
  killed = _run([sys.executable, "-c", CHILD, CONFIG, str(workdir), "kill", str(kill_after)], env)
  assert killed.returncode == -signal.SIGKILL, f"kill at step {kill_after}:\n{killed.stdout}{killed.stderr}"
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and saved[-1] <= kill_after, (kill_after, saved)
  resumed = _run(_train_cmd(workdir), env)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert "resumed from" in resumed.stderr, resumed.stderr
  ours, ref = _state(workdir), _state(reference)
  mismatched = [jax.tree_util.keystr(path) for path, a in jax.tree_util.tree_leaves_with_path(ours)
                if not np.array_equal(a, _lookup(ref, path))]
  assert not mismatched, f"killed after step {kill_after}; differing leaves: {mismatched}"
  assert len(jax.tree.leaves(ours)) == len(jax.tree.leaves(ref))


def _lookup(tree, path):
  for key in path:
    tree = tree[key.key] if hasattr(key, "key") else tree[key.idx]
  return tree


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(cache_dir, tmp_path):
  workdir = tmp_path / "preempted"
  proc = subprocess.Popen([sys.executable, "-c", CHILD, CONFIG, str(workdir), "slow", "5"], env=_env(cache_dir),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      metrics = workdir / "metrics.jsonl"
      if metrics.exists() and any(r.get("step", 0) >= 5 for r in read_jsonl(metrics)):
        break
      time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, out + err
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert len(saved) == 1 and 5 <= saved[0] < NUM_STEPS, saved
  step = saved[0]
  assert f"received signal {int(signal.SIGTERM)}: saved checkpoint" in out and f"stopped at step {step}" in out, out
  assert int(_state(workdir, step)["step"]) == step
  iterator_state = json.loads((workdir / "checkpoints" / str(step) / "data_iter" / "process_0-of-1.json").read_text())
  assert iterator_state["next_index"] == step  # exactly the batches the saved state has consumed


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_of_four_devices_match_one_process_of_eight(reference, cache_dir, tmp_path):
  workdir = tmp_path / "multiprocess"
  port = _free_port()
  env = _env(cache_dir, devices=4)
  procs = [subprocess.Popen(_train_cmd(workdir, f"--coordinator-address=localhost:{port}", "--num-processes=2",
                                       f"--process-id={i}"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=240))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, out + err
  assert "2 process(es), 8 devices" in outputs[0][1]  # a log record (stderr)
  ours, ref = _state(workdir), _state(reference)
  for path, a in jax.tree_util.tree_leaves_with_path(ours["params"]):
    np.testing.assert_allclose(a, _lookup(ref["params"], path), rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  ref_eval = json.loads((reference / "eval" / f"step_{NUM_STEPS}.json").read_text())["results"]
  our_eval = json.loads((workdir / "eval" / f"step_{NUM_STEPS}.json").read_text())["results"]
  assert our_eval["mIoU"] == pytest.approx(ref_eval["mIoU"], abs=0.5)
  for i in range(2):  # each process saved its own data-iterator position
    assert (workdir / "checkpoints" / str(NUM_STEPS) / "data_iter" / f"process_{i}-of-2.json").exists()


def test_convert_exports_the_trained_toy_model_to_pytorch(reference, tmp_path, torch):
  from dinoseg.cli import main as cli_main
  from dinoseg.config import load_config
  from dinoseg.models.toy.model import build_model

  out = tmp_path / "toy.pth"
  rc = cli_main(["convert", "--config", CONFIG, "--from", str(reference / "checkpoints" / str(NUM_STEPS)),
                 "--to", str(out)])
  assert rc == 0
  config = load_config(CONFIG)
  width, size, classes = config.model.width, config.model.image_size, config.model.num_classes

  class FrozenBN(torch.nn.Module):
    def __init__(self, c):
      super().__init__()
      for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        self.register_buffer(name, torch.full((c,), value))

    def forward(self, x):
      scale = self.weight * (self.running_var + 1e-5).rsqrt()
      return x * scale[None, :, None, None] + (self.bias - self.running_mean * scale)[None, :, None, None]

  class Backbone(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = torch.nn.Conv2d(3, width, 3, padding=1)
      self.norm1 = FrozenBN(width)
      self.conv2 = torch.nn.Conv2d(width, width, 3, padding=1)
      self.norm2 = torch.nn.LayerNorm(width, eps=1e-5)

    def forward(self, x):
      x = torch.relu(self.norm1(self.conv1(x)))
      x = self.conv2(x)
      return torch.relu(self.norm2(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))

  class TorchToy(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.backbone = Backbone()
      self.pos_embed = torch.nn.Parameter(torch.zeros(1, width, size, size))
      self.classifier = torch.nn.Conv2d(width, classes, 1)

    def forward(self, x):
      return self.classifier(self.backbone(x) + self.pos_embed)

  net = TorchToy()
  net.load_state_dict(torch.load(out, weights_only=True), strict=True)
  images = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(images).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  tree = _state(reference)
  ours = np.asarray(build_model(config.model).apply({"params": tree["params"], "frozen_bn": tree["frozen_bn"]}, images))
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_eval_weights_of_the_export_equals_the_checkpoint_evaluation(reference, tmp_path, torch):
  """`dinoseg eval --weights=model.pth` (the PyTorch export) gives the checkpoint's own results."""
  from dinoseg.cli import main as cli_main

  out = tmp_path / "toy.pth"
  assert cli_main(["convert", "--config", CONFIG, "--from", str(reference / "checkpoints" / str(NUM_STEPS)),
                   "--to", str(out)]) == 0
  workdir = tmp_path / "eval_run"
  assert cli_main(["eval", f"--config={CONFIG}", f"--weights={out}", f"--workdir={workdir}"]) == 0
  got = json.loads((workdir / "eval" / "weights_toy.json").read_text())["results"]
  want = json.loads((reference / "eval" / f"step_{NUM_STEPS}.json").read_text())["results"]
  # The reference run keeps no EMA, so its evaluation used the very params that were exported.
  assert got == pytest.approx(want, rel=1e-6)
  assert cli_main(["eval", f"--config={CONFIG}"]) == 2  # neither --workdir nor --weights
  bad = tmp_path / "bad.pth"
  state = torch.load(out, weights_only=True)
  state.pop("classifier.bias")
  torch.save(state, bad)
  assert cli_main(["eval", f"--config={CONFIG}", f"--weights={bad}"]) == 2  # strict: a missing key is bad input
