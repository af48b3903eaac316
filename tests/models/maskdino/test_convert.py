"""Checkpoint import/export: full-size layouts equal the real checkpoints' key dumps (shared/reference/keys),
round trips are exact, tied tensors are written under every key and must agree on import."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from maskdino_fixtures import fixture_config, fixture_head_variables, load_fixture, model_config_for

from dinoseg.config import load_config
from dinoseg.convert import registry
from dinoseg.convert.keymap import KeyMismatchError
from dinoseg.models.maskdino import convert
from dinoseg.models.maskdino.model import build_model

KEYS = pathlib.Path("/work/shared/reference/keys")
LAYOUTS = [  # (reference key dump, config with that layout)
    ("keys_r50_instance_3s_d1_2048.tsv", "coco_instance_r50_3s_d1_2048"),
    ("keys_r50_instance_3s_hid1024.tsv", "coco_instance_r50_3s_hid1024"),
    ("keys_r50_panoptic.tsv", "coco_panoptic_r50_3s_d1_2048"),
    ("keys_swinl_instance.tsv", "coco_instance_swinl_4s_d1_2048"),
    ("keys_swinl_instance.tsv", "coco_instance_swinl_4s_d1_2048_no_mask_enhance"),  # box init has no parameters
    ("keys_swinl_panoptic.tsv", "coco_panoptic_swinl_4s_d1_2048"),
    ("keys_swinl_panoptic.tsv", "coco_panoptic_swinl_4s_d1_2048_mask_enhance"),
    ("keys_r50_ade_semantic.tsv", "ade20k_semantic_r50"),
]


def _read_tsv(path):
  out = {}
  for line in path.read_text().splitlines():
    key, shape, dtype = line.split("\t")
    out[key] = (tuple(json.loads(shape.replace("(", "[").replace(")", "]").replace(",]", "]"))), dtype)
  return out


def _abstract(model_cfg, hw=256):
  model_cfg = model_cfg.copy_and_resolve_references()
  model_cfg.msda_impl = "xla"  # trace one implementation only
  model = build_model(model_cfg)
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, hw, hw, 3)))


@pytest.mark.skipif(not KEYS.is_dir(), reason="reference key dumps not available")
@pytest.mark.parametrize("tsv,config", LAYOUTS)
def test_full_size_layout_equals_reference_checkpoint(tsv, config):
  want = _read_tsv(KEYS / tsv)
  cfg = load_config(f"configs/maskdino/{config}.py").model
  got = convert.maskdino_keymap(cfg).torch_shapes(_abstract(cfg))
  assert set(got) == set(want), (sorted(set(got) - set(want))[:5], sorted(set(want) - set(got))[:5])
  for key, (shape, dtype) in want.items():
    assert got[key][0] == shape, key
    assert str(got[key][1]) == dtype, key


def test_export_equals_reference_strict_layout():
  """The fixture's reference state dict (built by the reference code) has exactly the exported keys."""
  for name in ("r50_4lvl", "ade_3lvl"):
    keys = {k: tuple(s) for k, s in json.loads(str(load_fixture(name)["param_keys"]))}
    state = convert.to_torch(fixture_head_variables(name), model_config_for(fixture_config(name)), head_only=True)
    assert {k: v.shape for k, v in state.items()} == keys


def test_round_trip_and_tied_tensors():
  cfg = load_config("configs/maskdino/coco_instance_r50_3s_d1_2048.py:tiny").model
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), dict(_abstract(cfg, 64)))
  state = convert.to_torch(variables, cfg)
  n = cfg.decoder.dec_layers
  copies = [k for k in state if k.endswith("layers.2.weight") and "bbox_embed" in k]
  assert len(copies) == 2 * n + 1
  assert all(np.array_equal(state[copies[0]], state[c]) for c in copies)
  np.testing.assert_array_equal(state["sem_seg_head.predictor.decoder_norm.weight"],
                                state["sem_seg_head.predictor.decoder.norm.weight"])
  np.testing.assert_array_equal(state["criterion.empty_weight"], np.r_[np.ones(cfg.num_classes), 0.1].astype(np.float32))
  back = convert.to_flax({"model": state}, cfg)
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(variables), jax.tree_util.tree_leaves_with_path(back)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (_, a), (_, b) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(a, b)
  bad = dict(state)
  bad["sem_seg_head.predictor.bbox_embed.1.layers.0.bias"] = bad["sem_seg_head.predictor.bbox_embed.1.layers.0.bias"] + 1
  with pytest.raises(ValueError, match="tied tensors differ"):
    convert.to_flax(bad, cfg)
  missing = dict(state)
  del missing["sem_seg_head.pixel_decoder.transformer.level_embed"]
  with pytest.raises(KeyMismatchError, match="level_embed"):
    convert.to_flax(missing, cfg)


def test_registered_converters():
  names = registry.names()
  for name in convert.RELEASED_CONFIGS:
    assert f"maskdino_{name}" in names
  conv = registry.get("maskdino_coco_instance_r50_3s_d1_2048")
  assert conv.variables


def test_convert_command_with_a_config_builds_the_converter_from_its_model(tmp_path):
  """`dinoseg convert --config` for a Mask DINO config (no model.name, widths of no released model):
  Orbax -> .pth -> Orbax is exact, and the .pth has the reference layout for that config."""
  from dinoseg.cli import main as cli_main
  from dinoseg.convert import readers

  spec = "configs/maskdino/quickstart.py:tiny"
  cfg = load_config(spec)
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), dict(_abstract(cfg.model, 64)))
  readers.write_orbax(variables, tmp_path / "orbax")
  assert cli_main(["convert", "--config", spec, "--from", str(tmp_path / "orbax"), "--to", str(tmp_path / "m.pth")]) == 0
  state = readers.read_checkpoint(tmp_path / "m.pth", use_torch=False)
  expected = convert.to_torch(variables, cfg.model, no_object_weight=float(cfg.loss.no_object_weight))
  assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in expected.items()}
  assert cli_main(["convert", "--config", spec, "--from", str(tmp_path / "m.pth"), "--to", str(tmp_path / "back")]) == 0
  back = readers.read_orbax(tmp_path / "back")
  for (pa, a), (pb, b) in zip(jax.tree_util.tree_leaves_with_path(variables), jax.tree_util.tree_leaves_with_path(back)):
    assert pa == pb
    np.testing.assert_array_equal(a, b)
  # A released converter name does not fit these widths: the strict key map says which shapes differ.
  assert cli_main(["convert", "--model", "maskdino_coco_instance_r50_3s_d1_2048", "--from", str(tmp_path / "m.pth"),
                   "--to", str(tmp_path / "bad")]) == 2
  assert not (tmp_path / "bad").exists()
