"""The CLI's error contract (issue 18): UserError -> one line, exit 2; anything else -> traceback, exit 1.

Also: help texts (descriptions, defaults, config overrides, per-job flags), `config show` as plain
YAML / JSON, typed config overrides, strict JSON for results.
"""
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import yaml

from dinoseg import cli, jsonio
from dinoseg.config import ConfigError, load_config, parse_value
from dinoseg.errors import UserError, UserFileNotFoundError, UserValueError

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "maskdino" / "quickstart.py")

# A command module registered by the child process: `boom KIND` raises the named exception.
BOOM = r"""
import sys, types
from dinoseg import cli
from dinoseg.errors import UserValueError
module = types.ModuleType("boom_command")
module.HELP = "raise an exception"
module.add_arguments = lambda p: p.add_argument("kind")
def main(args, overrides):
  if args.kind == "user":
    raise UserValueError("the   input\n is bad")
  raise {"value": ValueError, "file": FileNotFoundError, "zero": ZeroDivisionError}[args.kind]("internal detail")
module.main = main
sys.modules["boom_command"] = module
cli.COMMANDS["boom"] = "boom_command"
sys.exit(cli.main(sys.argv[1:]))
"""


def _boom(*argv):
  return subprocess.run([sys.executable, "-c", BOOM, "boom", *argv], capture_output=True, text=True, timeout=120)


def test_user_error_is_one_line_with_exit_status_2():
  r = _boom("user")
  assert r.returncode == 2, r.stderr
  assert r.stderr == "dinoseg boom: error: the input is bad\n"


@pytest.mark.parametrize("kind,name", [("value", "ValueError"), ("file", "FileNotFoundError"),
                                       ("zero", "ZeroDivisionError")])
def test_internal_errors_propagate_with_a_traceback_and_exit_status_1(kind, name):
  r = _boom(kind)
  assert r.returncode == 1
  assert "Traceback (most recent call last)" in r.stderr and f"{name}: internal detail" in r.stderr
  assert "internal error (a bug)" in r.stderr


def test_user_error_types_keep_the_builtin_types():
  assert issubclass(UserValueError, ValueError) and issubclass(UserFileNotFoundError, FileNotFoundError)
  assert str(UserValueError("a\n   b")) == "a b"
  assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)


def test_bad_config_args_are_user_errors(capsys):
  assert cli.main(["config", "show", "--config.lr"]) == 2
  assert "needs a value" in capsys.readouterr().err
  assert cli.main(["config", "show", "--config=/no/such/config.py"]) == 2
  assert "not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- help texts

def _help(capsys, *argv) -> str:
  with pytest.raises(SystemExit) as e:
    cli.main([*argv, "--help"])
  assert e.value.code == 0
  return capsys.readouterr().out


def test_every_command_has_a_description_defaults_and_mentions_overrides(capsys):
  for name in cli.COMMANDS:
    text = _help(capsys, name)
    body = text.split("\n\n")[1]  # the paragraph after the usage lines
    assert not body.startswith(("options:", "positional arguments:")), f"{name} has no description"
    module = cli.COMMANDS[name]
    parser = cli.Parser(prog=name)
    module.add_arguments(parser)
    if "--config" in parser._option_string_actions:
      assert "--config.a.b=value" in text, name
  assert "(default: 8008)" in _help(capsys, "demo", "segnext")
  assert "(default: 0.5)" in _help(capsys, "predict")
  assert "Exit status: 0 success, 1 internal error or partial failure, 2 bad input" in _help(capsys)


def test_talk2dino_job_help_shows_only_that_jobs_flags(capsys):
  text = _help(capsys, "talk2dino", "predict")
  assert "--classes" in text and "--output" in text and "--config.a.b=value" in text
  for other in ("--split", "--workdir", "--benchmarks"):
    assert other not in text
  text = _help(capsys, "talk2dino", "extract")
  assert "--split" in text and "--classes" not in text
  assert "JOB --help" in _help(capsys, "talk2dino")
  assert cli.main(["talk2dino"]) == 2
  assert "name a job" in capsys.readouterr().err


# ----------------------------------------------------------------------------- config show and overrides

def test_config_show_prints_plain_yaml_and_json(capsys):
  assert cli.main(["config", "show", f"--config={QUICKSTART}:tiny", "--config.data.image_size=(96, 64)"]) == 0
  out = capsys.readouterr().out
  assert "!!python" not in out and "&id" not in out and "*id" not in out
  shown = yaml.safe_load(out)
  assert shown["data"]["image_size"] == [96, 64]
  assert shown == json.loads(json.dumps(load_config(f"{QUICKSTART}:tiny", ["data.image_size=(96, 64)"]).to_dict(),
                                        default=list))
  assert cli.main(["config", "show", f"--config={QUICKSTART}:tiny", "--json"]) == 0
  default_size = list(load_config(f"{QUICKSTART}:tiny").data.image_size)
  assert json.loads(capsys.readouterr().out)["data"]["image_size"] == default_size


def test_a_single_value_for_a_pair_is_an_error_suggesting_the_pair(capsys):
  assert cli.main(["config", "show", f"--config={QUICKSTART}", "--config.data.image_size=64"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "'(64, 64)'" in err and "'(64,)'" in err and "data.image_size" in err


@pytest.mark.parametrize("text", ["(64, 48)", "[64, 48]", "64,48", " 64 , 48 "])
def test_sequence_spellings(text):
  assert parse_value(text, (128, 128), "data.image_size") == (64, 48)


def test_sequence_elements_are_typed_like_the_fields():
  assert parse_value("1,2", (0.5, 0.25)) == (1.0, 2.0)  # numbers for floats
  assert parse_value("(1, 2, 3)", (10, 20)) == (1, 2, 3)  # the length may change (milestones)
  assert parse_value("voc", ("voc20", "ade20k")) == ("voc",)  # one name: a one-element list
  assert parse_value("a,b", ("x",)) == ("a", "b") and parse_value("(a, b)", ("x",)) == ("a", "b")
  assert parse_value("7", (3,)) == (7,) and parse_value("(7,)", (1, 2)) == (7,)
  assert parse_value("[1, 2]", [5]) == [1, 2]
  assert parse_value("(1, 2)", ()) == (1, 2)
  with pytest.raises(ConfigError, match=r"image_size\[0\]: expected an integer, got '64.5'"):
    parse_value("(64.5, 64)", (128, 128), "image_size")
  with pytest.raises(ConfigError, match=r"flags\[1\]: expected a boolean"):
    parse_value("true,maybe", (True, False), "flags")
  with pytest.raises(ConfigError, match="expected a number"):
    parse_value("(a, b)", (0.5, 0.5))


# ----------------------------------------------------------------------------- strict JSON

def test_jsonio_writes_null_for_undefined_metrics():
  import jax.numpy as jnp  # noqa: PLC0415
  obj = {"AP": float("nan"), "APl": np.float32("inf"), "per_class": np.array([1.0, np.nan]), "n": np.int64(3),
         "pair": (1, 2), "ok": True, "jax": jnp.array([0.5])}
  text = jsonio.dumps(obj)
  assert "NaN" not in text and "Infinity" not in text
  assert json.loads(text) == {"AP": None, "APl": None, "per_class": [1.0, None], "n": 3, "pair": [1, 2],
                              "ok": True, "jax": [0.5]}
  assert jsonio.plain(math.pi) == math.pi


def test_load_config_with_saved_values_as_the_base(capsys):
  trained = load_config(f"{QUICKSTART}:tiny", ["data.image_size=(96, 64)", "optimizer.lr_multipliers=(('x', 0.5),)"])
  saved = json.loads(json.dumps(trained.to_dict()))  # as the trainer writes config.json
  saved["gone"] = {"key": 1}
  config = load_config(f"{QUICKSTART}:tiny", ["data.batch_size=3"], base=saved)
  assert config.data.image_size == (96, 64) and config.optimizer.lr_multipliers == (("x", 0.5),)
  assert config.data.batch_size == 3  # overrides apply over the saved values
  assert "skipped: gone" in capsys.readouterr().err
  with pytest.raises(ConfigError, match="saved setting data.batch_size"):
    load_config(f"{QUICKSTART}:tiny", base={"data": {"batch_size": "many"}})


# ----------------------------------------------------------------------------- user errors of train / data

TOY = str(ROOT / "configs" / "toy" / "toy_segmentation.py") + ":tiny"


def _one_line_error(capsys, command: str, *argv) -> str:
  """The error line of a command that fails on bad input (the progress lines logged before it aside)."""
  assert cli.main([command, *map(str, argv)]) == 2
  err = capsys.readouterr().err
  errors = [line for line in err.splitlines() if line.startswith(f"dinoseg {command}: error: ")]
  assert len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
  return errors[0] + "\n"


@pytest.mark.parametrize("override,says", [
    ("train.compute_dtype=int8", "train.compute_dtype must be one of"),
    ("task=no_such_task", "unknown task 'no_such_task' (config.task)"),
])
def test_bad_train_settings_are_one_line(capsys, tmp_path, override, says):
  assert says in _one_line_error(capsys, "train", f"--config={TOY}", f"--workdir={tmp_path}", f"--config.{override}")


@pytest.mark.parametrize("override,says", [
    ("optimizer.schedule=foo", "optimizer.schedule must be one of"),
    ("optimizer.lr_multipliers=(('(', 0.5),)", "optimizer.lr_multipliers: invalid regex '('"),
    ("optimizer.grad_accum_steps=3", "optimizer.grad_accum_steps=3 does not divide the global batch size 16"),
])
def test_bad_optimizer_settings_are_one_line(capsys, tmp_path, override, says):
  assert says in _one_line_error(capsys, "train", f"--config={TOY}", f"--workdir={tmp_path}", f"--config.{override}",
                                 "--config.train.progress=false")


def test_train_with_a_missing_data_path_is_one_line(capsys, tmp_path):
  err = _one_line_error(capsys, "train", f"--config={QUICKSTART}:tiny", f"--workdir={tmp_path / 'run'}",
                        f"--config.data.path={tmp_path / 'nope'}", "--config.data.batch_size=8")
  assert f"config.data.path='{tmp_path / 'nope'}'" in err and "prepare the dataset first" in err


def test_data_prepare_with_an_unknown_option_is_one_line(capsys, tmp_path):
  (tmp_path / "raw").mkdir()
  err = _one_line_error(capsys, "data", "prepare", "--dataset", "coco_instances", "--raw", tmp_path / "raw",
                        "--output", tmp_path / "out", "--option", "no_such_option=1")
  assert "unknown options ['no_such_option'] for dataset 'coco_instances'" in err
