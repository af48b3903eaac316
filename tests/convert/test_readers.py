"""Safe checkpoint readers/writers: .pth (torch and torch-free), .pkl, .safetensors, Orbax."""
import builtins
import collections
import os
import pickle
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from dinoseg.convert import readers
from dinoseg.convert.readers import UnsafeCheckpointError


class _SystemCall:
  """A pickle payload that would run a shell command when unpickled."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


class _Exec:
  """A pickle payload that would run Python code when unpickled."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _state(torch):
  g = torch.Generator().manual_seed(0)
  return collections.OrderedDict(
      w=torch.randn(4, 3, generator=g), p=torch.nn.Parameter(torch.randn(3, generator=g)),
      i=torch.arange(5), h=torch.randn(2, 2, generator=g).half(), bf=torch.randn(3, generator=g).bfloat16(),
      t=torch.randn(4, 5, generator=g).t(), b=torch.tensor([True, False]), s=torch.tensor(2.5),
      view=torch.randn(10, generator=g)[3:7])


def _numpy(t, torch):
  t = t.detach()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


@pytest.mark.parametrize("use_torch", [True, False])
def test_pth_readers_return_the_saved_tensors(tmp_path, torch, use_torch):
  state = _state(torch)
  path = tmp_path / "model.pth"
  torch.save({"model": state, "config": {"depth": 2, "names": ["a", None, (1, 2.5)]}, "__author__": "x"}, path)
  obj = readers.read_pth(path, use_torch=use_torch)
  assert obj["config"] == {"depth": 2, "names": ["a", None, (1, 2.5)]} and obj["__author__"] == "x"
  assert list(obj["model"]) == list(state)
  for key, tensor in state.items():
    got, want = obj["model"][key], _numpy(tensor, torch)
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape, key
    np.testing.assert_array_equal(got, want, err_msg=key)


@pytest.mark.parametrize("use_torch", [True, False])
@pytest.mark.parametrize("payload", [_SystemCall, _Exec])
def test_malicious_pth_is_refused_and_runs_nothing(tmp_path, torch, use_torch, payload):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  torch.save({"model": {"w": torch.zeros(2)}, "hook": payload(marker)}, path)
  with pytest.raises(UnsafeCheckpointError):
    readers.read_pth(path, use_torch=use_torch)
  assert not marker.exists()
  with pytest.raises(ValueError):  # UnsafeCheckpointError is a ValueError: the CLI reports it cleanly
    readers.read_checkpoint(path, use_torch=use_torch)
  assert not marker.exists()


@pytest.mark.parametrize("payload", [_SystemCall, _Exec])
def test_malicious_pkl_is_refused_and_runs_nothing(tmp_path, payload):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pkl"
  with open(path, "wb") as f:
    pickle.dump({"model": {"w": np.zeros(2), "x": payload(marker)}, "__author__": "x"}, f, protocol=2)
  with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
    readers.read_checkpoint(path)
  assert not marker.exists()
  # Object arrays (which could carry arbitrary objects) are refused too.
  with open(path, "wb") as f:
    pickle.dump({"model": {"w": np.array([1, "a"], dtype=object)}}, f)
  with pytest.raises(UnsafeCheckpointError, match="object arrays"):
    readers.read_pkl(path)


def test_detectron2_pkl(tmp_path):
  model = {"stem.conv1.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
           "res2.0.conv1.norm.running_var": np.ones(2, np.float32), "count": np.int64(3)}
  payload = {"model": model, "__author__": "torchvision", "matching_heuristics": True}
  data = pickle.dumps(payload, protocol=2)
  # Files written with numpy < 2 name numpy.core.multiarray: both spellings load.
  modern, old = b"numpy._core.multiarray", b"numpy.core.multiarray"
  legacy = data.replace(modern, old) if modern in data else data
  data = legacy.replace(old, modern)
  assert old in legacy and modern in data
  for i, blob in enumerate((data, legacy)):
    path = tmp_path / f"r50_{i}.pkl"
    path.write_bytes(blob)
    obj = readers.read_checkpoint(path)
    assert obj["__author__"] == "torchvision" and obj["matching_heuristics"] is True
    for key, value in model.items():
      np.testing.assert_array_equal(obj["model"][key], value)
      assert np.asarray(obj["model"][key]).dtype == np.asarray(value).dtype


def test_safetensors_round_trip_all_dtypes(tmp_path):
  state = {"f": np.arange(6, dtype=np.float32).reshape(2, 3), "h": np.ones(3, np.float16),
           "bf": np.array([1.5, -2.0], ml_dtypes.bfloat16), "i": np.arange(4, dtype=np.int64),
           "b": np.array([True, False])}
  path = tmp_path / "m.safetensors"
  readers.write_safetensors(state, path)
  back = readers.read_checkpoint(path)
  assert set(back) == set(state)
  for key, value in state.items():
    assert back[key].dtype == value.dtype
    np.testing.assert_array_equal(back[key], value)


def test_write_pth_round_trip_and_without_torch(tmp_path, torch, monkeypatch):
  state = {"a": np.arange(4, dtype=np.float32), "bf": np.array([1.0, 2.0], ml_dtypes.bfloat16)}
  path = tmp_path / "out.pth"
  readers.write_pth(state, path, wrap="model")
  loaded = torch.load(path, weights_only=True)
  assert list(loaded) == ["model"] and loaded["model"]["bf"].dtype == torch.bfloat16
  back = readers.read_pth(path, use_torch=False)["model"]
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value)
  # Writing never touches torch: the same bytes with torch unavailable.
  monkeypatch.setattr(readers, "torch_available", lambda: False)
  monkeypatch.setitem(sys.modules, "torch", None)
  readers.write_pth(state, tmp_path / "no_torch.pth", wrap="model")
  monkeypatch.undo()
  with zipfile.ZipFile(path) as a, zipfile.ZipFile(tmp_path / "no_torch.pth") as b:
    assert [(i.filename.split("/", 1)[1], a.read(i)) for i in a.infolist()] == \
        [(i.filename.split("/", 1)[1], b.read(i)) for i in b.infolist()]


def test_orbax_round_trip_and_trainer_step_directory(tmp_path):
  import orbax.checkpoint as ocp  # noqa: PLC0415
  tree = {"params": {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}},
          "frozen_bn": {"x": np.ones(2, np.float32)}}
  readers.write_orbax(tree, tmp_path / "converted")
  back = readers.read_checkpoint(tmp_path / "converted")
  np.testing.assert_array_equal(back["params"]["a"]["kernel"], tree["params"]["a"]["kernel"])
  assert isinstance(back["frozen_bn"]["x"], np.ndarray)
  with pytest.raises(ValueError, match="already exists"):
    readers.write_orbax(tree, tmp_path / "converted")
  # The trainer's layout: <workdir>/checkpoints/<step>/state holding a train state with `params`.
  state = {"step": np.int32(7), "params": tree["params"], "opt_state": {"mu": np.zeros(3, np.float32)}}
  manager = ocp.CheckpointManager(tmp_path / "workdir" / "checkpoints", item_names=("state", "meta"))
  manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave({"step": 7})))
  manager.wait_until_finished()
  restored = readers.read_orbax(tmp_path / "workdir" / "checkpoints" / "7")
  np.testing.assert_array_equal(restored["params"]["a"]["kernel"], tree["params"]["a"]["kernel"])
  assert int(restored["step"]) == 7
  with pytest.raises(FileNotFoundError, match="steps 7; pass one step directory"):
    readers.read_orbax(tmp_path / "workdir" / "checkpoints")


def test_bad_paths(tmp_path):
  with pytest.raises(FileNotFoundError):
    readers.read_checkpoint(tmp_path / "missing.pth")
  (tmp_path / "weights.h5").write_bytes(b"x")
  with pytest.raises(ValueError, match="unknown checkpoint format"):
    readers.read_checkpoint(tmp_path / "weights.h5")
  (tmp_path / "legacy.pth").write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(ValueError, match="not a PyTorch zip checkpoint"):
    readers.read_pth(tmp_path / "legacy.pth", use_torch=False)
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(FileNotFoundError, match="not an Orbax checkpoint"):
    readers.read_checkpoint(tmp_path / "empty_dir")
