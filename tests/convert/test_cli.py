"""`dinoseg convert`: files <-> Orbax through the registry, loud failures, nothing partial."""
import functools
import json
import pathlib
import pickle

import jax
import numpy as np
import pytest

from dinoseg import cli
from dinoseg.backbones.resnet import ResNet
from dinoseg.convert import readers, registry
from dinoseg.convert.backbones import backbone_converter

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "backbones" / "resnet_tiny.npz"
NAME = "test_tiny_resnet"


@functools.lru_cache(maxsize=None)
def _tiny():
  z = np.load(FIXTURE)
  cfg = json.loads(str(z["config"]))
  state = {k[len("param/"):]: z[k].astype(np.float32) for k in z.files if k.startswith("param/")}
  model = ResNet(**cfg["resnet"])
  return model, state


@pytest.fixture(scope="module", autouse=True)
def tiny_converter():
  """A registered converter for the tiny fixture ResNet (full-size models are too big for these tests)."""
  registry.register(backbone_converter(NAME, _tiny()[0], "tiny test ResNet"))
  yield
  del registry.CONVERTERS[NAME]


def _run(capsys, *argv):
  code = cli.main(["convert", *map(str, argv)])
  out, err = capsys.readouterr()
  return code, out, err


def test_list(capsys):
  code, out, _ = _run(capsys, "--list")
  assert code == 0
  for name in ("resnet50", "resnet101", "swin_tiny", "swin_large", "segnext_vit_b", NAME):
    assert name in out


def test_pth_to_orbax_to_pth_and_safetensors_is_bit_exact(tmp_path, capsys, torch):
  _, state = _tiny()
  src = tmp_path / "model.pth"
  readers.write_pth({f"backbone.{k}": v for k, v in state.items()}, src, wrap="model")
  code, out, err = _run(capsys, "--model", NAME, "--from", src, "--to", tmp_path / "orbax", "--verbose")
  assert code == 0, err
  assert "  frozen_bn/stem/conv1/norm/running_var (4,) float32" in out
  assert f"read {len(state)} tensors" in out and f"converted {len(state)} tensors" in out
  assert "wrote" in out and "Orbax" in out
  for dst in ("back.pth", "back.safetensors"):
    code, out, err = _run(capsys, "--model", NAME, "--from", tmp_path / "orbax", "--to", tmp_path / dst)
    assert code == 0, err
    back = readers.read_checkpoint(tmp_path / dst)
    if dst.endswith(".pth"):
      assert list(back) == list(state)  # the reference order (safetensors stores keys sorted)
    assert set(back) == set(state)
    for key, value in state.items():
      assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key
  # Existing files are not overwritten without --force.
  code, _, err = _run(capsys, "--model", NAME, "--from", tmp_path / "orbax", "--to", tmp_path / "back.pth")
  assert code == 2 and "--force" in err


def test_detectron2_pkl_with_dropped_keys_to_safetensors(tmp_path, capsys):
  _, state = _tiny()
  model = dict(state, **{"res2.0.conv1.norm.num_batches_tracked": np.array(3), "stem.fc.weight": np.zeros((2, 2))})
  src = tmp_path / "r50.pkl"
  src.write_bytes(pickle.dumps({"model": model, "__author__": "torchvision", "matching_heuristics": True}))
  code, out, err = _run(capsys, "--model", NAME, "--from", src, "--to", tmp_path / "out.safetensors")
  assert code == 0, err
  assert "dropped 2 keys" in out and "stem.fc.weight" in out
  assert set(readers.read_checkpoint(tmp_path / "out.safetensors")) == set(state)


def test_missing_and_unexpected_keys_fail_loudly_and_write_nothing(tmp_path, capsys):
  _, state = _tiny()
  broken = dict(state)
  del broken["res3.1.conv2.weight"]
  broken["res9.0.conv1.weight"] = np.zeros(3, np.float32)
  src = tmp_path / "broken.safetensors"
  readers.write_safetensors(broken, src)
  code, out, err = _run(capsys, "--model", NAME, "--from", src, "--to", tmp_path / "never")
  assert code == 2
  assert "1 missing: res3.1.conv2.weight" in err and "1 unexpected: res9.0.conv1.weight" in err
  assert not (tmp_path / "never").exists()
  # A wrong shape is an error too.
  wrong = dict(state, **{"stem.conv1.weight": np.zeros((4, 3, 5, 5), np.float32)})
  readers.write_safetensors(wrong, src)
  code, _, err = _run(capsys, "--model", NAME, "--from", src, "--to", tmp_path / "never")
  assert code == 2 and "stem/conv1/kernel" in err and not (tmp_path / "never").exists()


def test_unsafe_file_is_refused(tmp_path, capsys):
  marker = tmp_path / "pwned"

  class Payload:
    def __reduce__(self):
      import os  # noqa: PLC0415
      return os.system, (f"touch {marker}",)

  src = tmp_path / "evil.pkl"
  src.write_bytes(pickle.dumps({"model": {"x": Payload()}}))
  code, _, err = _run(capsys, "--model", NAME, "--from", src, "--to", tmp_path / "out")
  assert code == 2 and "refusing to load" in err
  assert not marker.exists() and not (tmp_path / "out").exists()


def test_select_prefix_and_config_model_name(tmp_path, capsys):
  _, state = _tiny()
  full = {**{f"backbone.{k}": v for k, v in state.items()}, "sem_seg_head.w": np.zeros(2, np.float32)}
  src = tmp_path / "system.safetensors"
  readers.write_safetensors(full, src)
  code, _, err = _run(capsys, "--model", NAME, "--from", src, "--to", tmp_path / "a")
  assert code == 2 and "--select-prefix backbone." in err and "sem_seg_head.w" in err  # a system, not a backbone
  config = tmp_path / "cfg.py"
  config.write_text('"""Test config.\n\n    dinoseg convert --config cfg.py\n"""\nimport ml_collections\n\n\n'
                    "def get_config(variant=None):\n  c = ml_collections.ConfigDict()\n"
                    "  c.model = ml_collections.ConfigDict({'name': 'resnet50'})\n  return c\n")
  code, out, err = _run(capsys, "--config", config, f"--config.model.name={NAME}", "--select-prefix", "backbone.",
                        "--from", src, "--to", tmp_path / "b")
  assert code == 0, err
  assert f"selected {len(state)} keys under 'backbone.', dropped 1" in out
  assert (tmp_path / "b").is_dir()


def test_trainer_checkpoint_to_pth_with_ema(tmp_path, capsys):
  import orbax.checkpoint as ocp  # noqa: PLC0415
  model, state = _tiny()
  variables = backbone_converter(NAME, model).to_flax(state)
  tree = {"step": np.int32(3), "params": variables["params"], "frozen_bn": variables["frozen_bn"],
          "ema_params": jax.tree.map(lambda v: v * 0.5, variables["params"]), "opt_state": {"count": np.int32(3)}}
  manager = ocp.CheckpointManager(tmp_path / "work" / "checkpoints", item_names=("state", "meta"))
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave({})))
  manager.wait_until_finished()
  step = tmp_path / "work" / "checkpoints" / "3"
  for flag, scale in (((), 1.0), (("--ema",), 0.5)):
    dst = tmp_path / f"out{len(flag)}.safetensors"
    code, _, err = _run(capsys, "--model", NAME, "--from", step, "--to", dst, *flag)
    assert code == 0, err
    back = readers.read_checkpoint(dst)
    np.testing.assert_array_equal(back["res3.0.conv2.weight"], state["res3.0.conv2.weight"] * scale)
    np.testing.assert_array_equal(back["res3.0.conv2.norm.running_var"], state["res3.0.conv2.norm.running_var"])


def test_usage_errors(tmp_path, capsys):
  code, _, err = _run(capsys, "--model", NAME, "--from", tmp_path / "x.pth")
  assert code == 2 and "--to" in err
  code, _, err = _run(capsys, "--model", "no_such_model", "--from", tmp_path / "x.pth", "--to", tmp_path / "y")
  assert code == 2 and "unknown model" in err
  code, _, err = _run(capsys, "--model", NAME, "--from", tmp_path / "x.pth", "--to", tmp_path / "y")
  assert code == 2 and "no such checkpoint" in err
