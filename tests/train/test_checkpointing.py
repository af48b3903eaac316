"""Checkpoint integrity, fallback, atomicity and cross-mesh restore (tiny regression run of conftest)."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from dinoseg import parallel
from dinoseg.train import trainer
from dinoseg.train.checkpointing import CheckpointRestoreError, Checkpointer, fingerprint


@pytest.fixture
def workdir(run_dir, tmp_path):
  """A private copy of the finished tiny run (checkpoints 8 and 12)."""
  path = tmp_path / "run"
  shutil.copytree(run_dir[1], path)
  return path


def _restore(config, workdir):
  run = trainer.build_run(config)
  messages = []
  checkpointer = Checkpointer(workdir / "checkpoints", echo=messages.append)
  try:
    with run.context():
      restored = checkpointer.restore(run.restore_target())
  finally:
    checkpointer.close()
  return restored, messages


def _array_files(step_dir):
  return sorted((f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"),
                key=lambda f: f.stat().st_size)


def _steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _assert_fell_back_to_8(restored, messages, workdir, run_dir):
  assert restored.step == 8
  assert any("checkpoints/12 is unusable" in m and "falling back" in m for m in messages), messages
  assert any("moved unusable checkpoint" in m for m in messages), messages
  assert _steps(workdir) == [8]
  assert [p.name.split("-")[0] for p in (workdir / "corrupt_checkpoints").iterdir()] == ["12"]
  assert int(restored.state.step) == 8


def test_flipped_byte_in_newest_checkpoint_falls_back(workdir, run_dir):
  # A byte of every data file: after Orbax merges the per-process OCDBT databases, the restore reads the
  # merged files, and the per-process files can be copies it never reads (flipping one file could miss).
  targets = _array_files(workdir / "checkpoints" / "12")
  assert targets
  for target in targets:
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10
    target.write_bytes(bytes(data))
  restored, messages = _restore(run_dir[0], workdir)
  _assert_fell_back_to_8(restored, messages, workdir, run_dir)


def test_truncated_newest_checkpoint_falls_back(workdir, run_dir):
  for target in _array_files(workdir / "checkpoints" / "12"):
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
  restored, messages = _restore(run_dir[0], workdir)
  _assert_fell_back_to_8(restored, messages, workdir, run_dir)


def test_arrays_that_differ_from_recorded_fingerprints_are_detected(workdir, run_dir):
  meta_file = workdir / "checkpoints" / "12" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  meta["fingerprints"]["params/head/kernel"] ^= 1
  meta_file.write_text(json.dumps(meta))
  restored, messages = _restore(run_dir[0], workdir)
  assert any("differ from the fingerprints" in m and "params/head/kernel" in m for m in messages), messages
  _assert_fell_back_to_8(restored, messages, workdir, run_dir)


def test_no_usable_checkpoint_raises_and_moves_nothing(workdir, run_dir):
  for step in (8, 12):
    for target in _array_files(workdir / "checkpoints" / str(step)):
      target.write_bytes(b"")
  with pytest.raises(CheckpointRestoreError, match=r"no usable checkpoint .*step 12: .*step 8: "):
    _restore(run_dir[0], workdir)
  assert _steps(workdir) == [8, 12]


def test_interrupted_save_is_ignored_and_cleaned_up(workdir, run_dir):
  # What a kill during an async save leaves: Orbax's temporary directory, never renamed to "16".
  tmp = workdir / "checkpoints" / "16.orbax-checkpoint-tmp-1700000000000000"
  shutil.copytree(workdir / "checkpoints" / "12" / "state", tmp / "state")
  restored, messages = _restore(run_dir[0], workdir)
  assert restored.step == 12 and not messages
  assert not tmp.exists()  # removed when the next run opened the directory
  assert _steps(workdir) == [8, 12]


@pytest.mark.parametrize("mesh, devices", [({"data": 4, "fsdp": 2, "tensor": 1}, None),
                                           ({"data": -1, "fsdp": 1, "tensor": 1}, 1)])
def test_restore_onto_another_mesh(run_dir, mesh, devices):
  config, workdir, result = run_dir  # saved on 8 devices, data=8
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.mesh.update(mesh)
  run, state, step = trainer.restore_for_eval(config, workdir)
  if devices is not None:  # restore_for_eval builds on all devices; restore onto one explicitly
    run = trainer.build_run(config, devices=jax.devices()[:devices])
    checkpointer = Checkpointer(workdir / "checkpoints")
    with run.context():
      state = checkpointer.restore(run.restore_target()).state
    checkpointer.close()
    assert len(state.params["head"]["kernel"].sharding.device_set) == 1
  else:
    assert state.params["head"]["kernel"].sharding.spec == P("fsdp", None)
    assert state.params["backbone"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert step == 12
  for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(result.state))):
    np.testing.assert_array_equal(a, b)


def test_evaluate_checkpoint_writes_results(run_dir, tmp_path):
  config, workdir, _ = run_dir
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  (copy / "eval" / "step_8.json").unlink(missing_ok=True)
  out = trainer.evaluate_checkpoint(config, copy, step=8)
  assert out["step"] == 8 and out["results"]["num_examples"] == 29
  assert json.loads((copy / "eval" / "step_8.json").read_text()) == out
  latest = trainer.evaluate_checkpoint(config, copy)
  logged = json.loads((workdir / "eval" / "step_12.json").read_text())["results"]
  assert latest["step"] == 12 and latest["results"]["mse"] == pytest.approx(logged["mse"], rel=1e-6)
  with pytest.raises(CheckpointRestoreError, match="no checkpoint step 5"):
    trainer.evaluate_checkpoint(config, copy, step=5)


def test_fingerprint_sees_every_bit_and_position_and_ignores_sharding():
  x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
  base = fingerprint({"x": jnp.asarray(x), "b": jnp.asarray(x, jnp.bfloat16), "i": jnp.arange(5)})
  for bit in (0, 17, 31):
    y = x.copy().view(np.uint32)
    y[3, 2] ^= np.uint32(1 << bit)
    assert fingerprint({"x": jnp.asarray(y.view(np.float32))})["x"] != base["x"]
  assert fingerprint({"x": jnp.asarray(x[::-1].copy())})["x"] != base["x"]
  mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
  sharded = jax.device_put(x, NamedSharding(mesh, P("data", "fsdp")))
  assert fingerprint({"x": sharded})["x"] == base["x"]
  bf = np.asarray(jnp.asarray(x, jnp.bfloat16)).view(np.uint16).copy()
  bf[0, 0] ^= np.uint16(1)
  assert fingerprint({"b": jnp.asarray(bf.view(jnp.bfloat16))})["b"] != base["b"]
