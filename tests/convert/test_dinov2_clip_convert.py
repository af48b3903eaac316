"""DINOv2 / CLIP-text converters: bit-exact round trips and full-size layouts equal to the reference's.

The reference layouts (tests/fixtures/backbones/reference_layouts.json) are the state-dict
key/shape lists of the facebookresearch/dinov2 hub models and of OpenAI CLIP ViT-B/16,
recorded by scripts/make_dinov2_clip_fixtures.py; per-block keys are written once as `{i}`.
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.backbones.clip_text import clip_text
from dinoseg.backbones.dinov2 import DINOV2_VARIANTS, dinov2
from dinoseg.convert import get, names
from dinoseg.convert.dinov2_clip import clip_text_key_table, dinov2_key_table

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "backbones"
LAYOUTS = json.loads((FIXTURES / "reference_layouts.json").read_text())
MODEL_NAMES = sorted(DINOV2_VARIANTS) + ["clip_vitb16_text"]
# How a Flax parameter's shape maps to the torch tensor's shape, per table layout.
_TORCH_SHAPE = {"same": lambda s: tuple(s), "linear": lambda s: tuple(s)[::-1],
                "conv": lambda s: (s[3], s[2], s[0], s[1])}


def _expand(layout):
  out = {}
  for key, shape in layout["keys"].items():
    if "{i}" in key:
      out.update({key.replace("{i}", str(i)): tuple(shape) for i in range(layout["num_blocks"])})
    else:
      out[key] = tuple(shape)
  return out


def _fixture_state(name):
  z = np.load(FIXTURES / f"{name}.npz")
  return {k[len("param/"):]: z[k].astype(np.float32) for k in z.files if k.startswith("param/")}, z


def _abstract_params(name):
  if name == "clip_vitb16_text":
    model, x = clip_text(), jax.ShapeDtypeStruct((1, 77), jnp.int32)
  else:
    model, x = dinov2(name), jax.ShapeDtypeStruct((1, 14, 14, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def _flatten(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, prefix + (k,)) if isinstance(v, dict) else {prefix + (k,): v})
  return out


def test_all_converters_registered():
  assert set(MODEL_NAMES) <= set(names())
  assert len(MODEL_NAMES) == 9
  for name in MODEL_NAMES:
    assert get(name).description


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_full_size_layout_equals_reference(name):
  """Flax params (jax.eval_shape) -> torch keys/shapes through the table == the reference state dict."""
  reference = _expand(LAYOUTS[name])
  if name == "clip_vitb16_text":
    table = clip_text_key_table(12)
  else:
    kw = DINOV2_VARIANTS[name]
    table = dinov2_key_table(kw["depth"], kw.get("ffn", "mlp"), kw.get("num_register_tokens", 0))
  flat = _flatten(_abstract_params(name))
  assert set(flat) == {path for path, _ in table.values()}
  ours = {key: _TORCH_SHAPE[layout](flat[path].shape) for key, (path, layout) in table.items()}
  assert ours == reference
  assert all(flat[path].dtype == jnp.float32 for path in flat)


def test_reference_key_counts():
  assert len(_expand(LAYOUTS["dinov2_vitb14_reg"])) == 176
  assert len(_expand(LAYOUTS["dinov2_vitb14"])) == 175
  assert len(_expand(LAYOUTS["dinov2_vitl14_reg"])) == 344
  assert len(_expand(LAYOUTS["dinov2_vitg14_reg"])) == 568
  assert LAYOUTS["clip_vitb16_text"]["non_text_keys"] == ["logit_scale"]


@pytest.mark.parametrize("fixture,cfg", [
    ("dinov2_reg_tiny", dict(depth=2, ffn="mlp", num_register_tokens=4)),
    ("dinov2_noreg_tiny", dict(depth=2, ffn="mlp", num_register_tokens=0)),
    ("dinov2_swiglu_tiny", dict(depth=2, ffn="swiglu", num_register_tokens=4)),
])
def test_dinov2_round_trip_is_bit_exact(fixture, cfg, rng):
  from dinoseg.convert.dinov2_clip import dinov2_converter  # noqa: PLC0415
  state, _ = _fixture_state(fixture)
  # Full-precision random values (the fixture's are float16-exact) and a float16 copy.
  for dtype in (np.float32, np.float16):
    state = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in state.items()}
    converter = dinov2_converter("tiny", **cfg)
    params = converter.to_flax(state)
    assert params["patch_embed"]["kernel"].shape == (14, 14, 3, 16)  # OIHW -> HWIO
    np.testing.assert_array_equal(params["blocks_0"]["attn"]["qkv"]["kernel"], state["blocks.0.attn.qkv.weight"].T)
    back = converter.to_torch(params)
    assert back.keys() == state.keys()
    for key, value in state.items():
      assert back[key].dtype == value.dtype and back[key].flags.c_contiguous
      assert back[key].tobytes() == value.tobytes(), key
    back = converter.to_torch({"params": params})  # a variables dict works too
    assert back.keys() == state.keys()


def test_clip_text_round_trip_and_ignored_keys(rng):
  from dinoseg.convert.dinov2_clip import clip_text_converter  # noqa: PLC0415
  state, _ = _fixture_state("clip_text_tiny")
  state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in state.items()}
  converter = clip_text_converter("tiny", 2)
  full = dict(state, **{"visual.conv1.weight": np.zeros((4, 3, 2, 2), np.float32),
                        "input_resolution": np.array(224), "context_length": np.array(77),
                        "vocab_size": np.array(49408)})
  params = converter.to_flax(full)
  back = converter.to_torch(params)
  text_keys = {k for k in state if k != "logit_scale"}
  assert back.keys() == text_keys
  for key in text_keys:
    assert back[key].tobytes() == state[key].tobytes(), key
  with pytest.raises(KeyError, match="unexpected keys.*'foo'"):
    converter.to_flax(dict(state, foo=np.zeros(1)))


def test_missing_and_unexpected_keys_raise(rng):
  from dinoseg.convert.dinov2_clip import dinov2_converter  # noqa: PLC0415
  state, _ = _fixture_state("dinov2_reg_tiny")
  converter = dinov2_converter("tiny", depth=2, num_register_tokens=4)
  partial = dict(state)
  del partial["blocks.1.ls2.gamma"]
  with pytest.raises(KeyError, match="missing keys.*blocks.1.ls2.gamma"):
    converter.to_flax(partial)
  with pytest.raises(KeyError, match="unexpected keys.*blocks.2.norm1.weight"):
    converter.to_flax(dict(state, **{"blocks.2.norm1.weight": np.zeros(16, np.float32)}))
  with pytest.raises(KeyError, match="unexpected keys.*register_tokens"):
    dinov2_converter("tiny", depth=2, num_register_tokens=0).to_flax(state)
  params = converter.to_flax(state)
  params["extra"] = {"kernel": np.zeros(3)}
  with pytest.raises(KeyError, match="unexpected keys.*extra/kernel"):
    converter.to_torch(params)
  with pytest.raises(ValueError, match="ffn must be"):
    dinov2_key_table(2, ffn="geglu")
