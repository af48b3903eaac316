"""SegNext checkpoint conversion: strict import/export of the released layout, new parameters listed."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.convert import registry
from dinoseg.models.segnext import convert
from dinoseg.models.segnext import prompts as prompt_lib


def test_round_trip_is_exact(tiny_arch):
  state = convert.random_reference_state_dict(tiny_arch, seed=3)
  params = convert.segnext_to_flax(state)
  back = convert.segnext_to_torch(params)
  assert list(back) == list(state)
  for key in state:
    np.testing.assert_array_equal(back[key], state[key], err_msg=key)
  assert convert.infer_arch(state) == tiny_arch


def test_new_params_are_exactly_the_listed_ones(tiny_model, tiny_arch):
  s = tiny_model.image_size
  abstract = jax.eval_shape(lambda: tiny_model.init(jax.random.key(0), jnp.zeros((1, s, s, 3)),
                                                    jnp.asarray([[s, s]]), prompt_lib.empty_prompts(1),
                                                    jnp.zeros((1, s, s))))["params"]
  model_paths = {"/".join(k) for k in convert._flatten(abstract)}
  released = convert.segnext_to_flax(convert.random_reference_state_dict(tiny_arch), extra_prompts=False)
  released_paths = {"/".join(k) for k in convert._flatten(released)}
  assert model_paths - released_paths == set(convert.NEW_PARAMS)
  assert released_paths <= model_paths


def test_strict_errors(tiny_arch):
  state = convert.random_reference_state_dict(tiny_arch)
  with pytest.raises(KeyError, match="missing keys.*head.seg_conv.bias"):
    convert.segnext_to_flax({k: v for k, v in state.items() if k != "head.seg_conv.bias"})
  with pytest.raises(KeyError, match="unexpected keys.*extra.weight"):
    convert.segnext_to_flax({**state, "extra.weight": np.zeros(3)})
  bad = dict(state)
  bad["neck.down_8.1.bias"] = np.zeros(7, np.float32)
  with pytest.raises(ValueError, match="neck.down_8.1.bias"):
    convert.segnext_to_flax(bad)
  with pytest.raises(KeyError, match="not a SegNext"):
    convert.segnext_to_flax({"pos_embed": np.zeros((1, 5, 4))})
  params = convert.segnext_to_flax(state)
  params["extra_prompts_encoder"]["kernel"] = params["extra_prompts_encoder"]["kernel"] + 1
  with pytest.raises(ValueError, match="drop_new_params"):
    convert.segnext_to_torch(params)
  assert list(convert.segnext_to_torch(params, drop_new_params=True)) == list(state)
  del params["head"]["seg_conv"]
  with pytest.raises(KeyError, match="seg_conv"):
    convert.segnext_to_torch(params, drop_new_params=True)


def test_checkpoint_file_round_trip(tmp_path, tiny_arch, torch):
  state = convert.random_reference_state_dict(tiny_arch, seed=5)
  path = tmp_path / "tiny.pth"
  convert.write_checkpoint(str(path), state, convert.reference_config(tiny_arch, num_heads=4, global_atten_freq=2))
  raw = torch.load(path, map_location="cpu", weights_only=True)  # what the reference's loader does
  assert set(raw) == {"state_dict", "config"} and raw["config"]["params"]["fusion_params"]["value"]["depth"] == 2
  read, config = convert.read_checkpoint(str(path))
  assert config == raw["config"]
  for key in state:
    np.testing.assert_array_equal(read[key], state[key])


def test_registered():
  for name in ("segnext_vitb_sax1", "segnext_vitb_sax2"):
    assert registry.get(name).to_flax is convert.segnext_to_flax
