"""`dinoseg eval` for `task = "dinov"`: the trainer's evaluation calls the task's own protocols
(Task.evaluate -> evaluate.run_protocols), from a weights file and from a workdir checkpoint."""
import json

import flax.serialization
import jax
import numpy as np
import pytest

from dinoseg import cli
from dinoseg.config import load_config
from dinoseg.errors import UserValueError
from dinoseg.train import task as task_lib

TINY = "configs/dinov/swint_sam_coco.py:tiny"


def _zero_weights(config, path):
  """A .msgpack of the tiny model's variables, all zeros except a marker (cheap: no init compile)."""
  abstract = task_lib.build(config).abstract_variables()
  variables = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  variables["params"]["predictor"]["class_embed"] = np.full_like(variables["params"]["predictor"]["class_embed"], 0.5)
  path.write_bytes(flax.serialization.msgpack_serialize(variables))
  return variables


def test_eval_weights_runs_the_task_protocols(tmp_path, monkeypatch, capsys):
  from dinoseg.models.dinov import evaluate
  config = load_config(TINY, ["model.msda_impl=xla"])  # (traces faster than "auto"'s kernel dispatch)
  _zero_weights(config, tmp_path / "w.msgpack")
  calls = []

  def fake(model, variables, cfg, cache=None):
    calls.append((float(np.asarray(variables["params"]["predictor"]["class_embed"]).mean()), cfg.evaluation.seed,
                  cfg.evaluation.vos_path))
    return {"PQ": 1.5, "vos/J&F-Mean": 0.25}
  monkeypatch.setattr(evaluate, "run_protocols", fake)
  code = cli.main(["eval", f"--config={TINY}", f"--weights={tmp_path / 'w.msgpack'}", f"--workdir={tmp_path / 'run'}",
                   "--config.model.msda_impl=xla", "--config.evaluation.seed=7", "--config.evaluation.vos_path=/davis"])
  assert code == 0 and calls == [(0.5, 7, "/davis")]
  printed = json.loads(capsys.readouterr().out)
  assert printed["results"] == {"PQ": 1.5, "vos/J&F-Mean": 0.25}
  saved = json.loads((tmp_path / "run" / "eval" / "weights_w.json").read_text())
  assert saved["results"]["PQ"] == 1.5


def test_eval_workdir_checkpoint_runs_the_task_protocols(tmp_path, monkeypatch):
  """The workdir route (trainer.evaluate_checkpoint): the restored state's EMA params go to DINOvTask.evaluate;
  the results land in <workdir>/eval/step_<N>.json. The restore itself is the trainer's (stubbed here)."""
  import types

  from dinoseg.models.dinov import evaluate
  from dinoseg.train import trainer
  config = load_config(TINY)
  seen = []
  monkeypatch.setattr(evaluate, "run_protocols",
                      lambda model, variables, cfg, cache=None: seen.append(variables) or {"PQ": 2.0})
  run = types.SimpleNamespace(task=task_lib.build(config))
  state = types.SimpleNamespace(params={"w": np.zeros(2)}, ema_params={"w": np.ones(2)}, model_state={})
  monkeypatch.setattr(trainer, "restore_for_eval", lambda config, workdir, step=None, task=None: (run, state, 7))
  out = trainer.evaluate_checkpoint(config, str(tmp_path))
  assert out == {"step": 7, "results": {"PQ": 2.0}}
  np.testing.assert_array_equal(seen[0]["params"]["w"], np.ones(2))  # the EMA params
  assert json.loads((tmp_path / "eval" / "step_7.json").read_text())["results"] == {"PQ": 2.0}


def test_protocol_settings_are_checked(tmp_path):
  from dinoseg.models.dinov import evaluate
  config = load_config(TINY, ["evaluation.generic=False"])
  with pytest.raises(UserValueError, match="nothing to evaluate"):
    evaluate.run_protocols(None, {}, config)
  config = load_config(TINY, ["data.coco.path="])
  with pytest.raises(UserValueError, match="data.coco.path"):
    evaluate.run_protocols(None, {}, config)
  assert cli.main(["eval", f"--config={TINY}", f"--weights={tmp_path}", "--config.evaluation.num_examples=0"]) == 2
  # `dinoseg dinov eval`: the VOS dataset flag (one line, exit 2, before any model is built)
  base = ["dinov", "eval", f"--config={TINY}", "--random-init"]
  assert cli.main(base) == 2
  assert cli.main(base + [f"--vos={tmp_path / 'nowhere'}"]) == 2
  assert cli.main(base + ["--protocol=generic", f"--vos={tmp_path}"]) == 2


@pytest.mark.slow
def test_dinoseg_eval_generic_and_vos_end_to_end(tmp_path, capsys):
  """Bank from the train split, generic metrics on val, VOS on a DAVIS tree; from --weights and a workdir."""
  from test_vos import _davis_video, _write_davis

  from dinoseg import jsonio
  from dinoseg.data_pipelines import synth, writer
  from dinoseg.train import trainer
  synth.synthesize("coco_panoptic", str(tmp_path / "raw"), num_images=2, image_size=(40, 72), max_objects=3, seed=1,
                   splits=("train", "val"))
  writer.prepare("coco_panoptic", str(tmp_path / "raw"), str(tmp_path / "coco"), splits=("train", "val"),
                 num_shards=1, progress=False)
  frames, gt = _davis_video()
  _write_davis(tmp_path / "DAVIS", {"a": (frames, gt)})
  overrides = [f"data.coco.path={tmp_path / 'coco'}", "data.coco.train_split=train", "data.coco.eval_split=val",
               f"evaluation.vos_path={tmp_path / 'DAVIS'}", "evaluation.num_examples=3", "model.msda_impl=xla"]
  config = load_config(TINY, overrides)
  task = task_lib.build(config)
  variables = jax.jit(task.init_variables)(jax.random.key(0))
  (tmp_path / "w.msgpack").write_bytes(flax.serialization.to_bytes(jax.device_get(variables)))
  code = cli.main(["eval", f"--config={TINY}", f"--weights={tmp_path / 'w.msgpack'}",
                   *[f"--config.{o}" for o in overrides]])
  assert code == 0
  results = json.loads(capsys.readouterr().out)["results"]
  for name in ("PQ", "segm/AP", "bbox/AP"):
    assert results[name] is None or 0.0 <= results[name] <= 100.0, name
  assert results["bank_source"] == f"{tmp_path / 'coco'}:train" and results["num_examples"] == 3
  assert results["vos/num_videos"] == 1 and results["vos/objects_after_first_frame"] == 1
  assert 0.0 <= results["vos/J&F-Mean"] <= 1.0
  # the same through the Python API (trainer.evaluate_weights -> evaluate_variables -> Task.evaluate): the same
  # numbers (the bank, the seeded draws and the video are deterministic)
  again = trainer.evaluate_weights(config, str(tmp_path / "w.msgpack"))["results"]
  assert jsonio.dumps(again, sort_keys=True) == jsonio.dumps(results, sort_keys=True)
