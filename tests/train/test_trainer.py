"""The train loop, train step, sharded state and logging, in process, on the tiny regression task (conftest)."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dinoseg.convert.readers import read_orbax
from dinoseg.train import trainer
from dinoseg.train.metrics import read_jsonl


def _tree_equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def _global(run, batch):
  return run.global_batch({k: np.asarray(v) for k, v in batch.items()})


def _one_step(run, state, batch):
  with run.context():
    return run.train_step(state, _global(run, batch))


@pytest.fixture(scope="module")
def data8_run(tiny_config):
  return trainer.build_run(tiny_config())


def test_run_writes_metrics_tensorboard_eval_and_checkpoints(run_dir):
  config, workdir, result = run_dir
  assert result.step == 12 and result.stopped_by == "completed"
  rows = read_jsonl(workdir / "metrics.jsonl")
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == list(range(1, 13))
  for row in train_rows:
    for key in ("loss", "mse", "learning_rate", "grad_norm", "step_time", "examples_per_sec", "skipped",
                "nonfinite_total", "nonfinite_streak"):
      assert key in row, (key, row)
    assert row["skipped"] == 0
  assert train_rows[-1]["loss"] < 0.5 * train_rows[0]["loss"]
  assert train_rows[0]["learning_rate"] == pytest.approx(0.05) and train_rows[-1]["learning_rate"] == pytest.approx(0.005)
  assert train_rows[5]["examples_per_sec"] > 0
  eval_rows = [r for r in rows if "eval/mse" in r]
  assert [r["step"] for r in eval_rows] == [6, 12]
  saved = json.loads((workdir / "eval" / "step_12.json").read_text())
  assert saved["step"] == 12 and saved["results"]["num_examples"] == 29  # 32 minus 3 padding rows
  assert saved["results"]["mse"] == pytest.approx(eval_rows[-1]["eval/mse"])
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert json.loads((workdir / "config.json").read_text())["task"] == "tiny_regression"
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [8, 12]
  tree = read_orbax(workdir / "checkpoints" / "12")  # the contract `dinoseg convert` relies on
  assert set(tree) == {"params", "frozen_stats", "opt_state", "step", "rng", "ema_params", "nonfinite_total",
                       "nonfinite_streak"}
  assert _tree_equal(tree["params"], jax.device_get(result.state.params))
  np.testing.assert_array_equal(tree["frozen_stats"]["scale"], np.full(4, 0.5, np.float32))


def test_resume_from_an_earlier_checkpoint_reproduces_the_run_exactly(run_dir, tmp_path):
  config, workdir, result = run_dir
  copy = tmp_path / "resumed"
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / "checkpoints" / "12")
  messages = []
  resumed = trainer.train(config, copy, echo=messages.append)
  assert any("resumed from" in m and m.endswith("at step 8") for m in messages), messages
  assert _tree_equal(jax.device_get(resumed.state), jax.device_get(result.state))
  steps = [r["step"] for r in read_jsonl(copy / "metrics.jsonl") if "loss" in r]
  assert steps == list(range(1, 13))  # rows past the checkpoint were dropped, then rewritten once


def test_state_is_created_sharded_by_logical_rules_and_fsdp(tiny_config):
  config = tiny_config()
  with config.unlocked():
    config.mesh.update({"data": 2, "fsdp": 2, "tensor": 2})
  run = trainer.build_run(config)
  sh = run.shardings
  assert sh.params["backbone"]["kernel"].spec == P("fsdp", "tensor")  # ("embed", "mlp") via the rules
  assert sh.params["head"]["kernel"].spec == P("fsdp", None)  # unannotated, fsdp on the largest dimension
  adam = sh.opt_state[1]  # chain: (clip, adam, decay, lr, multipliers)
  assert adam.mu["backbone"]["kernel"].spec == P("fsdp", "tensor")
  assert adam.count.spec == P() and sh.step.spec == P()
  state = run.create_state()
  assert state.params["backbone"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert state.opt_state[1].nu["head"]["kernel"].sharding.spec == P("fsdp", None)
  assert state.model_state["frozen_stats"]["scale"].shape == (4,)


def test_sharded_step_matches_single_device(data8_run, tiny_config, tiny_batch):
  one = trainer.build_run(tiny_config(), devices=jax.devices()[:1])
  batch = tiny_batch(0, 0)
  s8, m8 = _one_step(data8_run, data8_run.create_state(), batch)
  s1, m1 = _one_step(one, one.create_state(), batch)
  for a, b in zip(jax.tree.leaves(jax.device_get(s8.params)), jax.tree.leaves(jax.device_get(s1.params))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert float(m8["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-6)


def test_gradient_accumulation_matches_the_full_batch(data8_run, tiny_config, tiny_batch):
  config = tiny_config()
  with config.unlocked():
    config.optimizer.grad_accum_steps = 2
  accum = trainer.build_run(config)
  batch = tiny_batch(0, 0)
  full, mf = _one_step(data8_run, data8_run.create_state(), batch)
  split, ms = _one_step(accum, accum.create_state(), batch)
  for a, b in zip(jax.tree.leaves(jax.device_get(full.params)), jax.tree.leaves(jax.device_get(split.params))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert float(ms["loss"]) == pytest.approx(float(mf["loss"]), rel=1e-5)
  assert float(ms["grad_norm"]) == pytest.approx(float(mf["grad_norm"]), rel=1e-5)


def test_bfloat16_compute_keeps_float32_master_weights(data8_run, tiny_config, tiny_batch):
  bf16 = trainer.build_run(tiny_config(compute_dtype="bfloat16"))
  batch = tiny_batch(0, 0)
  s32, m32 = _one_step(data8_run, data8_run.create_state(), batch)
  s16, m16 = _one_step(bf16, bf16.create_state(), batch)
  assert float(m32["compute_bits"]) == 32 and float(m16["compute_bits"]) == 16
  assert float(m16["input_bits"]) == 16 and float(m16["target_bits"]) == 32  # targets never cast
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s16.params))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s16.opt_state) if jnp.issubdtype(x.dtype, jnp.floating))
  assert float(m16["loss"]) == pytest.approx(float(m32["loss"]), rel=3e-2)
  assert float(m16["loss"]) != float(m32["loss"])


def test_nonfinite_step_is_skipped_and_counted(data8_run, tiny_batch):
  run = data8_run
  state = run.create_state()
  before = jax.device_get(state)
  bad = tiny_batch(0, 0, nan_steps=(1,))
  state, metrics = _one_step(run, state, bad)
  after = jax.device_get(state)
  assert int(metrics["skipped"]) == 1 and not np.isfinite(float(metrics["loss"]))
  assert _tree_equal(after.params, before.params) and _tree_equal(after.opt_state, before.opt_state)
  assert (int(after.step), int(after.nonfinite_total), int(after.nonfinite_streak)) == (1, 1, 1)
  assert not np.array_equal(after.rng, before.rng)
  state, metrics = _one_step(run, state, tiny_batch(1, 0))
  after2 = jax.device_get(state)
  assert int(metrics["skipped"]) == 0 and (int(after2.nonfinite_total), int(after2.nonfinite_streak)) == (1, 0)
  assert not _tree_equal(after2.params, after.params)
  assert int(after2.opt_state[1].count) == 1  # one applied update: the schedule counts applied updates


def test_consecutive_nonfinite_steps_stop_the_run_without_saving(tmp_path, tiny_config):
  config = tiny_config(max_nonfinite_steps=3)
  with config.unlocked():
    config.data.nan_steps = (2, 6, 7, 8)
  with pytest.raises(trainer.TrainingDivergedError, match=r"stopping at step 8: .* 3 consecutive steps") as info:
    trainer.train(config, tmp_path, echo=lambda s: None)
  assert "last checkpoint is step 4" in str(info.value)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
  rows = {r["step"]: r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r}
  assert rows[2]["skipped"] == 1 and rows[3]["nonfinite_streak"] == 0
  assert [rows[s]["nonfinite_streak"] for s in (6, 7, 8)] == [1, 2, 3] and rows[8]["nonfinite_total"] == 4
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(read_orbax(tmp_path / "checkpoints" / "4")["params"]))


def test_ema_params(tiny_config, tiny_batch):
  run = trainer.build_run(tiny_config(ema_decay=0.75))
  state = run.create_state()
  p0 = jax.device_get(state.params)
  assert _tree_equal(jax.device_get(state.ema_params), p0)
  state, _ = _one_step(run, state, tiny_batch(0, 0))
  p1, ema = jax.device_get(state.params), jax.device_get(state.ema_params)
  for e, a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(p0), jax.tree.leaves(p1)):
    np.testing.assert_allclose(e, 0.75 * a + 0.25 * b, rtol=1e-6, atol=1e-7)
  assert trainer.eval_params(run, state) is state.ema_params


def test_keep_last_and_keep_best(tmp_path, tiny_config):
  # best_mode "max" on the eval mse keeps the *worst* (earliest) checkpoint: easy to tell from the last one.
  config = tiny_config(checkpoint_every_steps=2, eval_every_steps=2, keep_last=1, keep_best=1, best_metric="mse",
                       best_mode="max")
  trainer.train(config, tmp_path, echo=lambda s: None)
  evals = {int(p.stem.split("_")[1]): json.loads(p.read_text())["results"]["mse"] for p in (tmp_path / "eval").glob("*.json")}
  worst = max(evals, key=evals.get)
  assert worst != 12
  kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == sorted({worst, 12})


def test_bad_train_settings_raise(tiny_config, tmp_path):
  with pytest.raises(ValueError, match="train.num_steps"):
    trainer.build_run(tiny_config(num_steps=0))
  with pytest.raises(ValueError, match="train.compute_dtype"):
    trainer.build_run(tiny_config(compute_dtype="fp8"))
  with pytest.raises(ValueError, match="unknown config.train keys"):
    config = tiny_config()
    with config.unlocked():
      config.train.num_stpes = 3
    trainer.build_run(config)
  with pytest.raises(ValueError, match="best_metric"):
    trainer.train(tiny_config(keep_best=1), tmp_path, echo=lambda s: None)
