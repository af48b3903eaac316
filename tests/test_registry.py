"""The one registry class (dinoseg/registry.py) and the `dinoseg.plugins` entry points: an installed package
adds a task, a predictor and a command without editing dinoseg."""
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

import dinoseg
from dinoseg import cli, predict, registry
from dinoseg.errors import UserValueError
from dinoseg.train import task as task_lib


def test_entries_lazy_strings_duplicates_and_lookup_errors():
  r = registry.Registry("widget", hint=" (config.widget)", entries={"json": "json:dumps", "os": "os"})
  assert r.get("json") is __import__("json").dumps and r["os"] is __import__("os")  # imported on lookup
  value = object()
  assert r.register("thing")(value) is value and r["thing"] is value
  r.register("thing", value)  # the same value again is fine
  with pytest.raises(ValueError, match="a widget named 'thing' is already registered"):
    r.register("thing", object())
  with pytest.raises(UserValueError, match=r"unknown widget 'thinq' \(config.widget\); known: json, os, thing; "
                                           r"did you mean 'thing'\?"):
    r.get("thinq")
  assert r.get("nope", None) is None and "nope" not in r and list(r) == ["json", "os", "thing"] and len(r) == 3
  del r["thing"]
  assert r.names() == ["json", "os"]


def test_builtin_registries_keep_their_public_names():
  from dinoseg.convert import registry as converters
  from dinoseg.data_pipelines import tasks as data_tasks
  from dinoseg.data_pipelines import transforms
  from dinoseg.data_pipelines.preparers import base as preparers
  assert {"maskdino", "segnext", "talk2dino", "toy_segmentation"} <= set(task_lib.names())
  assert converters.get("resnet50").name == "resnet50" and "resnet50" in converters.CONVERTERS
  assert {"maskdino", "segnext", "talk2dino"} <= set(predict.PREDICTORS)
  assert "coco_instances" in preparers.names() and preparers.PREPARERS["voc"].name == "voc"
  assert "instance" in data_tasks.TASKS and "center_click" in transforms.PROMPT_SAMPLERS
  assert cli.COMMANDS["predict"].HELP
  with pytest.raises(UserValueError, match="did you mean 'maskdino'"):
    task_lib.get("maskdin")


PLUGIN = '''
import jax.numpy as jnp
import numpy as np

from dinoseg import cli, predict
from dinoseg.structures import Segmentation
from dinoseg.train import task as task_lib


@task_lib.register("fake_system")
class FakeTask(task_lib.Task):
  def init_variables(self, rng):
    return {"params": {"threshold": jnp.full((), 127.0)}}

  def loss_fn(self, params, model_state, batch, rng, *, train=True):
    return jnp.zeros(()), {}

  def train_iterator(self, process_index, process_count):
    return iter(())


class FakePredictor(predict.Predictor):
  def __init__(self, config, variables):
    super().__init__(config, 1)
    self.threshold = float(variables["params"]["threshold"])

  def predict(self, image):
    mask = predict.as_image(image)[..., 0] > self.threshold
    return Segmentation(masks=mask[None], scores=np.ones(1, np.float32), labels=np.zeros(1, np.int32),
                        names=self.class_names, class_names=self.class_names)


predict.PREDICTORS.register("fake_system", FakePredictor)
cli.COMMANDS.register("fake", "fake_dinoseg_command")
'''

COMMAND = '''
HELP = "a command added by a plugin"


def add_arguments(parser):
  parser.add_argument("--times", type=int, default=1)


def main(args, overrides):
  print("fake " * args.times)
  return 0
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
  """A distribution installed on sys.path (a .dist-info directory) with a `dinoseg.plugins` entry point."""
  site = tmp_path / "site"
  info = site / "fake_dinoseg_plugin-0.1.dist-info"
  info.mkdir(parents=True)
  (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-dinoseg-plugin\nVersion: 0.1\n")
  (info / "entry_points.txt").write_text("[dinoseg.plugins]\nfake = fake_dinoseg_plugin\n"
                                        "broken = no_such_dinoseg_plugin_module\n")
  (site / "fake_dinoseg_plugin.py").write_text(textwrap.dedent(PLUGIN))
  (site / "fake_dinoseg_command.py").write_text(textwrap.dedent(COMMAND))
  monkeypatch.syspath_prepend(str(site))
  monkeypatch.setattr(registry, "_plugins_loaded", False)
  yield
  for table, name in ((task_lib.TASKS, "fake_system"), (predict.PREDICTORS, "fake_system"), (cli.COMMANDS, "fake")):
    if name in table._entries:
      table.unregister(name)
  for module in ("fake_dinoseg_plugin", "fake_dinoseg_command"):
    sys.modules.pop(module, None)


def test_an_installed_plugin_adds_a_task_a_predictor_and_a_command(plugin, capsys, caplog):
  assert "fake_system" in task_lib.names()  # the first miss loads the entry points
  assert "dinoseg plugin 'broken' (no_such_dinoseg_plugin_module) could not be loaded" in caplog.text
  assert "fake_system" in predict.PREDICTORS and "fake" in cli.COMMANDS
  assert registry.load_plugins() == []  # once per process
  assert cli.main(["fake", "--times=2"]) == 0 and capsys.readouterr().out == "fake fake \n"
  config = ml_collections.ConfigDict({"task": "fake_system", "seed": 0})
  result = dinoseg.load(config, allow_random=True).predict(np.full((4, 6, 3), 200, np.uint8))
  assert result.masks.shape == (1, 4, 6) and result.masks.all() and result.names == ("class_0",)
