"""`dinoseg eval`: the run's saved config.json is the base of `--workdir` evaluations; bad input -> exit 2."""
import json
import pathlib

import pytest

from dinoseg import cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOY = f"{ROOT / 'configs' / 'toy' / 'toy_segmentation.py'}:tiny"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 2-step toy run whose model width (4) differs from the config file's (8)."""
  workdir = tmp_path_factory.mktemp("eval_cmd") / "run"
  assert cli.main(["train", f"--config={TOY}", f"--workdir={workdir}", "--config.model.width=4",
                   "--config.train.num_steps=2", "--config.train.checkpoint_every_steps=2",
                   "--config.train.eval_at_end=False", "--config.train.progress=False",
                   "--config.train.async_checkpointing=False", "--config.data.num_eval_examples=8"]) == 0
  return workdir


def test_eval_of_a_workdir_uses_the_runs_saved_config(run, capsys):
  # The config file alone (width 8) does not fit the checkpoint; the run's config.json (width 4) does, and
  # command-line overrides still apply over it.
  assert cli.main(["eval", f"--config={TOY}", f"--workdir={run}", "--config.data.num_eval_examples=16"]) == 0
  captured = capsys.readouterr()
  out = json.loads(captured.out)  # strict JSON
  assert out["step"] == 2 and out["results"]["num_images"] == 16
  assert "config.json" in captured.err
  written = json.loads((run / "eval" / "step_2.json").read_text())
  assert written["results"]["num_images"] == 16


def test_eval_bad_input_exits_2(run, tmp_path, capsys):
  assert cli.main(["eval", f"--config={TOY}", f"--weights={tmp_path / 'missing.pth'}"]) == 2
  assert "no such file or directory" in capsys.readouterr().err
  assert cli.main(["eval", f"--config={TOY}", f"--workdir={tmp_path}"]) == 2
  assert "holds no checkpoints" in capsys.readouterr().err
  assert cli.main(["eval", f"--config={TOY}", f"--workdir={run}", "--step=7"]) == 2
  assert "--step=7" in capsys.readouterr().err
  assert cli.main(["eval", f"--config={TOY}"]) == 2
  assert cli.main(["eval", f"--config={TOY}", f"--weights={run}", "--step=2"]) == 2
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes(b"\x00" * 64)
  assert cli.main(["eval", f"--config={TOY}", f"--weights={bad}"]) == 2
  err = capsys.readouterr().err
  assert str(bad) in err and err.count("\n") == 3  # one line per failed call since the last read
