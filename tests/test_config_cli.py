"""Config launches (variants, overrides, validation) and the `dinoseg` command."""
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from dinoseg import cli
from dinoseg.config import apply_overrides, load_config, parse_value, split_config_args

CONFIG = '''
"""Example config.

    dinoseg config show --config=example.py:tiny
"""
import ml_collections


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.lr = 1e-4
  c.steps = 100
  c.use_ema = False
  c.name = "full"
  c.milestones = (10, 20)
  c.optional = None
  c.model = ml_collections.ConfigDict({"depth": 4, "width": 64.0})
  if variant == "tiny":
    c.steps = 2
    c.model.depth = 1
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r}")
  return c


def validate(c):
  if c.model.depth < 1:
    raise ValueError("model.depth must be >= 1")
'''


@pytest.fixture
def config_file(tmp_path):
  path = tmp_path / "example.py"
  path.write_text(CONFIG)
  return str(path)


def test_variants_and_typed_overrides(config_file):
  c = load_config(config_file)
  assert c.steps == 100 and c.model.depth == 4
  t = load_config(config_file + ":tiny", ["lr=3e-3", "use_ema=true", "milestones=(1,2,3)", "model.width=8",
                                          "name=x", "optional=[1, 2]", "config.steps=7"])
  assert (t.steps, t.model.depth, t.lr, t.use_ema, t.milestones, t.model.width, t.name, t.optional) == \
      (7, 1, 3e-3, True, (1, 2, 3), 8.0, "x", [1, 2])
  assert load_config(config_file, ["milestones=5,6"]).milestones == (5, 6)
  assert c.is_locked
  with pytest.raises(AttributeError):
    c.new_key = 1


@pytest.mark.parametrize("override,match", [
    ("stpes=3", "did you mean steps"),
    ("model.dpeth=3", "did you mean depth"),
    ("steps=three", "integer"),
    ("use_ema=maybe", "boolean"),
    ("model=3", "group"),
    ("model.depth=0", "depth must be"),  # the config's own validate()
    ("steps", "key=value"),
])
def test_bad_overrides_are_clear_errors(config_file, override, match):
  with pytest.raises(ValueError, match=match):
    load_config(config_file, [override])


def test_bad_files_and_variants(config_file, tmp_path):
  with pytest.raises(ValueError, match="unknown variant"):
    load_config(config_file + ":huge")
  with pytest.raises(FileNotFoundError, match="nope.py"):
    load_config(str(tmp_path / "nope.py"))
  (tmp_path / "noget.py").write_text("x = 1\n")
  with pytest.raises(ValueError, match="get_config"):
    load_config(str(tmp_path / "noget.py"))


def test_split_config_args():
  rest, overrides = split_config_args(["show", "--config=a.py", "--config.lr=1", "--config.model.depth", "3"])
  assert rest == ["show", "--config=a.py"] and overrides == ["lr=1", "model.depth=3"]
  with pytest.raises(ValueError, match="needs a value"):
    split_config_args(["--config.lr"])
  assert parse_value("1e-3", 0.1) == 1e-3


def test_cli_config_show(config_file, capsys):
  assert cli.main(["config", "show", f"--config={config_file}:tiny", "--config.lr=0.5", "--json"]) == 0
  shown = json.loads(capsys.readouterr().out)
  assert shown["lr"] == 0.5 and shown["steps"] == 2
  assert cli.main(["config", "show", f"--config={config_file}", "--config.lrr=1"]) == 2
  assert "did you mean lr" in capsys.readouterr().err


def test_cli_env_and_help(capsys):
  assert cli.main(["env", "--json"]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info["versions"]["jax"] and info["device_count"] == 8 and info["backend"] == "cpu"
  assert cli.main([]) == 2
  with pytest.raises(SystemExit):
    cli.main(["env", "--config.x=1"])
  for name, mod in cli.COMMANDS.items():  # every registered command really exists
    assert callable(mod.main) and mod.HELP and callable(mod.add_arguments), name


def test_console_script_installed():
  exe = shutil.which("dinoseg", path=str(pathlib.Path(sys.executable).parent))
  assert exe, "the dinoseg console script is not installed next to this python"
  out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
  assert "env" in out and "config" in out
