"""Key maps: full-size layouts equal the reference checkpoints' (keys/*.tsv), and the toolkit's rules."""
import functools
import gzip
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg import backbones
from dinoseg.backbones.swin import relative_position_index
from dinoseg.convert import registry
from dinoseg.convert.backbones import abstract_variables, resnet_keymap, swin_keymap, vit_keymap
from dinoseg.convert.keymap import (CONV, CONV_TRANSPOSE, LINEAR, KeyMap, KeyMismatchError, buffer, one, reshaped,
                                    split, strip_prefix, tied)

LAYOUTS = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "backbones" / "backbone_layouts.json.gz"
SHARED_KEYS = pathlib.Path("/work/shared/reference/keys")  # real checkpoint dumps, when available


@functools.lru_cache(maxsize=None)
def _reference_layouts():
  """Full-size reference state-dict layouts (scripts/make_backbone_fixtures.py): {name: {key: (shape, dtype)}}."""
  with gzip.open(LAYOUTS, "rt") as f:
    raw = json.load(f)
  return {name: {k: (tuple(shape), np.dtype(dtype)) for k, shape, dtype in rows} for name, rows in raw.items()}


def _shared(name):
  path = SHARED_KEYS / name
  if not path.is_file():
    pytest.skip(f"{path} not available")
  return path


def _read_tsv(name, prefix="backbone."):
  rows = {}
  for line in _shared(name).read_text().splitlines():
    key, shape, dtype = line.split("\t")
    if key.startswith(prefix):
      rows[key[len(prefix):]] = (tuple(int(x) for x in shape.strip("()").split(",") if x.strip()), np.dtype(dtype))
  return rows


def _read_txt(name, prefix="backbone."):
  rows = {}
  for line in _shared(name).read_text().splitlines():
    if line.startswith(prefix):
      key, shape = line.split(" ", 1)
      rows[key[len(prefix):]] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
  return rows


def _keymap(name, model):
  make = resnet_keymap if name.startswith("resnet") else swin_keymap if name.startswith("swin") else vit_keymap
  return make(model)


@functools.lru_cache(maxsize=None)
def _layout(name, image_shape=(1, 64, 64, 3)):
  """{torch key: (shape, dtype)} that exporting the full-size Flax backbone `name` writes (no tensors made)."""
  model = backbones.build(name)
  return _keymap(name, model).torch_shapes(abstract_variables(model, image_shape))


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "swin_tiny", "swin_large", "segnext_vit_b"])
def test_full_size_layouts_equal_the_reference_models(name):
  reference = _reference_layouts()[name]
  got = _layout(name, (1, 1024, 1024, 3) if name == "segnext_vit_b" else (1, 64, 64, 3))
  assert got == reference
  assert list(got) == list(reference)  # same order as the reference state dict


@pytest.mark.parametrize("tsv", ["keys_r50_instance_3s_d1_2048.tsv", "keys_r50_instance_3s_hid1024.tsv",
                                 "keys_r50_panoptic.tsv", "keys_r50_ade_semantic.tsv"])
def test_resnet50_layout_equals_mask_dino_checkpoints(tsv):
  reference = _read_tsv(tsv)
  assert len(reference) == 265
  assert _layout("resnet50") == reference
  # As part of a Mask DINO checkpoint: the map nested under "backbone." / ("backbone",).
  model = backbones.build("resnet50")
  nested = resnet_keymap(model).prefixed("backbone.", ("backbone",)).torch_shapes(
      {c: {"backbone": t} for c, t in abstract_variables(model, (1, 64, 64, 3)).items()})
  assert nested == {f"backbone.{k}": v for k, v in reference.items()}


@pytest.mark.parametrize("tsv", ["keys_swinl_instance.tsv", "keys_swinl_panoptic.tsv"])
def test_swin_large_layout_equals_mask_dino_checkpoints(tsv):
  reference = _read_tsv(tsv)
  assert len(reference) == 357
  got = _layout("swin_large")
  assert got == reference
  assert got["layers.0.blocks.0.attn.relative_position_index"] == ((144, 144), np.dtype("int64"))


def test_segnext_vit_layout_equals_segnext_checkpoint():
  reference = _read_txt("segnext_sax2_keys.txt")
  assert len(reference) == 149  # pos_embed, patch_embed (2), 12 blocks x 12, fc_norm (2)
  got = _layout("segnext_vit_b", (1, 1024, 1024, 3))
  assert {k: shape for k, (shape, _) in got.items()} == reference
  assert list(got) == list(reference)


def test_swin_tiny_and_resnet101_layouts():
  tiny = _layout("swin_tiny")
  assert tiny["layers.0.blocks.0.attn.relative_position_bias_table"][0] == (169, 3)
  assert tiny["layers.0.blocks.0.attn.relative_position_index"][0] == (49, 49)  # DINOv Swin-T
  assert len([k for k in tiny if ".blocks." in k and k.endswith("norm1.weight")]) == 12
  r101 = _layout("resnet101")
  assert "res4.22.conv3.norm.running_var" in r101 and "res4.23.conv1.weight" not in r101


def test_registered_converters_round_trip_full_size_resnet50():
  reference = _reference_layouts()["resnet50"]
  rng = np.random.default_rng(0)
  state = {k: rng.normal(size=shape).astype(dtype) for k, (shape, dtype) in reference.items()}
  converter = registry.get("resnet50")
  assert converter.variables
  wrapped = {"model": {f"backbone.{k}": v for k, v in state.items()}, "__author__": "x"}
  variables = converter.to_flax(wrapped["model"])
  assert set(variables) == {"params", "frozen_bn"}
  back = converter.to_torch(variables)
  assert list(back) == list(state)
  assert all(np.array_equal(back[k], state[k]) for k in state)
  # A torchvision ImageNet state dict (with its classification head and BN counters) imports too.
  tv = {}
  for key, value in state.items():
    t = key.replace("stem.", "").replace("shortcut.norm", "downsample.1").replace("shortcut", "downsample.0")
    for i in (1, 2, 3):
      t = t.replace(f"conv{i}.norm", f"bn{i}")
    for i in (2, 3, 4, 5):
      t = t.replace(f"res{i}.", f"layer{i - 1}.")
    tv[t] = value
  tv.update({"fc.weight": np.zeros((1000, 2048), np.float32), "fc.bias": np.zeros(1000, np.float32),
             "bn1.num_batches_tracked": np.array(0)})
  jax.tree.map(np.testing.assert_array_equal, converter.to_flax(tv), variables)
  with pytest.raises(KeyMismatchError):  # a ResNet checkpoint is no Swin
    registry.get("swin_large").to_flax(state)


def test_registered_converter_checks_shapes_against_the_model():
  model = backbones.build("swin_tiny")
  km = swin_keymap(model)
  abstract = abstract_variables(model, (1, 64, 64, 3))
  state = {k: np.zeros(shape, dtype) for k, (shape, dtype) in km.torch_shapes(abstract).items()}
  for k in state:
    if k.endswith("relative_position_index"):
      state[k] = relative_position_index(7)
  params = registry.get("swin_tiny").to_flax(state)
  assert params["layers_2"]["blocks_5"]["mlp"]["fc1"]["kernel"].shape == (384, 1536)
  with pytest.raises(ValueError, match="norm3/scale: got \\(10,\\) float32, model has \\(768,\\)"):
    registry.get("swin_tiny").to_flax({**state, "norm3.weight": np.zeros(10, np.float32)})
  with pytest.raises(KeyMismatchError, match="missing: layers.2.blocks.10"):  # Swin-S has 18 blocks in stage 3
    registry.get("swin_small").to_flax(state)
  # Swin-B weights into Swin-L: the same keys, other shapes. Zero-stride views: nothing is allocated.
  base = backbones.build("swin_base")
  views = {k: np.broadcast_to(np.zeros((), dtype), shape) for k, (shape, dtype) in
           swin_keymap(base).torch_shapes(abstract_variables(base, (1, 64, 64, 3))).items()}
  for k in views:
    if k.endswith("relative_position_index"):
      views[k] = relative_position_index(12)
  with pytest.raises(ValueError, match="shape/dtype mismatches"):
    registry.get("swin_large").to_flax(views)
  assert registry.get("swin_base").to_flax(views)["norm3"]["scale"].shape == (1024,)


# ----------------------------------------------------------------------------- the toolkit

def test_strict_both_ways_and_lists_keys():
  km = KeyMap([one("a.weight", "params/a/kernel", LINEAR), one("a.bias", "params/a/bias")],
              ignore=[r"\.num_batches_tracked$"])
  state = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.bias": np.ones(2, np.float32)}
  v = km.to_flax({**state, "bn.num_batches_tracked": np.array(3)})
  assert v["params"]["a"]["kernel"].shape == (3, 2)
  with pytest.raises(KeyMismatchError, match="1 missing: a.bias") as e:
    km.to_flax({"a.weight": state["a.weight"], "extra": np.zeros(1)})
  assert e.value.missing == ["a.bias"] and e.value.unexpected == ["extra"]
  assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
  with pytest.raises(KeyMismatchError, match="unexpected: params/b"):
    km.to_torch({"params": {**v["params"], "b": np.zeros(1)}})
  with pytest.raises(ValueError, match="two rules"):
    KeyMap([one("x", "params/x"), one("x", "params/y")])
  assert km.describe()[0] == "a.weight -> params/a/kernel (linear)"


def test_expected_shapes_are_checked():
  km = KeyMap([one("w", "params/w", LINEAR)])
  expected = {"params": {"w": jax.ShapeDtypeStruct((3, 2), jnp.float32)}}
  km.to_flax({"w": np.zeros((2, 3), np.float32)}, expected=expected)
  with pytest.raises(ValueError, match="params/w: got \\(2, 3\\) float32, model has \\(3, 2\\)"):
    km.to_flax({"w": np.zeros((3, 2), np.float32)}, expected=expected)
  with pytest.raises(ValueError, match="float16"):
    km.to_flax({"w": np.zeros((2, 3), np.float16)}, expected=expected)


def test_split_tied_buffer_reshape_prefix():
  rng = np.random.default_rng(0)
  d = 4
  rules = [split("attn.in_proj_weight", ["params/q/kernel", "params/k/kernel", "params/v/kernel"], 0, LINEAR),
           split("attn.in_proj_bias", ["params/q/bias", "params/k/bias", "params/v/bias"]),
           tied(["head.bbox.w", "decoder.bbox.0.w", "decoder.bbox.1.w"], "params/bbox/kernel", LINEAR),
           buffer("idx", lambda: np.arange(5, dtype=np.int64)),
           one("pos", "params/pos", reshaped((1, 6, d), (2, 3, d)))]
  km = KeyMap(rules)
  w = rng.normal(size=(3 * d, d)).astype(np.float32)
  bbox = rng.normal(size=(2, d)).astype(np.float32)
  state = {"attn.in_proj_weight": w, "attn.in_proj_bias": np.arange(3 * d, dtype=np.float32),
           "head.bbox.w": bbox, "decoder.bbox.0.w": bbox.copy(), "decoder.bbox.1.w": bbox.copy(),
           "idx": np.arange(5), "pos": rng.normal(size=(1, 6, d)).astype(np.float32)}
  v = km.to_flax(state)
  np.testing.assert_array_equal(v["params"]["k"]["kernel"], w[d:2 * d].T)  # rows [q; k; v]
  np.testing.assert_array_equal(v["params"]["v"]["bias"], np.arange(2 * d, 3 * d))
  assert "idx" not in str(jax.tree_util.tree_structure(v))
  back = km.to_torch(v)
  assert list(back) == list(state)
  for key in state:
    np.testing.assert_array_equal(back[key], state[key])
  assert back["idx"].dtype == np.int64
  with pytest.raises(ValueError, match="tied tensors differ"):
    km.to_flax({**state, "decoder.bbox.1.w": bbox + 1})
  with pytest.raises(ValueError, match="buffer idx"):
    km.to_flax({**state, "idx": np.arange(6)})
  nested = km.prefixed("sem_seg_head.", ("head",))
  assert nested.torch_keys[0] == "sem_seg_head.attn.in_proj_weight"
  assert nested.flax_paths[0] == ("params", "head", "q", "kernel")
  assert set(nested.to_torch({"params": {"head": v["params"]}})) == {f"sem_seg_head.{k}" for k in state}
  both = km + KeyMap([one("extra", "params/extra")])
  assert len(both) == len(km) + 1
  assert strip_prefix({"backbone.a": 1, "backbone.b": 2}, "backbone.") == {"a": 1, "b": 2}
  assert strip_prefix({"backbone.a": 1, "head.b": 2}, "backbone.") == {"backbone.a": 1, "head.b": 2}


def test_torch_shapes_do_not_materialize_tensors():
  huge = (1 << 20, 1 << 20)  # 4 TiB in float32: only a zero-stride view can hold it
  km = KeyMap([one("w", "params/w", LINEAR), one("c", "params/c", CONV)])
  shapes = km.torch_shapes({"params": {"w": jax.ShapeDtypeStruct(huge, jnp.float32),
                                       "c": jax.ShapeDtypeStruct((3, 3, 8, 16), jnp.bfloat16)}})
  assert shapes["w"] == (huge, np.dtype("float32"))
  assert shapes["c"][0] == (16, 8, 3, 3) and shapes["c"][1] == jnp.bfloat16


def test_conv_and_conv_transpose_layouts_match_torch(torch):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 3, 5, 6)).astype(np.float32)
  import flax.linen as nn  # noqa: PLC0415
  for transpose in (False, True):
    if transpose:
      w = rng.normal(size=(3, 4, 2, 2)).astype(np.float32)  # ConvTranspose2d weight (in, out, kH, kW)
      ref = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), stride=2).numpy()
      module = nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding="VALID", use_bias=False)
      kernel = CONV_TRANSPOSE.to_flax(w)
    else:
      w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
      ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
      module = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
      kernel = CONV.to_flax(w)
    got = module.apply({"params": {"kernel": kernel}}, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref, rtol=1e-5, atol=1e-5)
    layout = CONV_TRANSPOSE if transpose else CONV
    np.testing.assert_array_equal(layout.to_torch(kernel), w)
  # A 3x3 stride-2 transposed conv with padding 1 (Flax padding k - 1 - p = 1 per side; torch output_padding 0).
  w = rng.normal(size=(3, 4, 3, 3)).astype(np.float32)
  ref = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1).numpy()
  got = nn.ConvTranspose(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False).apply(
      {"params": {"kernel": CONV_TRANSPOSE.to_flax(w)}}, x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref, rtol=1e-5, atol=1e-5)
