"""Projection weight conversion (`linear_layer.*`, `hidden_layers.0.*`) in both directions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.convert import registry
from dinoseg.models.talk2dino.convert import projection_to_flax, projection_to_torch
from dinoseg.models.talk2dino.projection import TextProjection


def _state(rng, d=8, c=6, legacy=False, dtype=np.float32):
  second = "linear_layer2" if legacy else "hidden_layers.0"
  return {"linear_layer.weight": rng.normal(size=(d, c)).astype(dtype),
          "linear_layer.bias": rng.normal(size=(d,)).astype(dtype),
          f"{second}.weight": rng.normal(size=(d, d)).astype(dtype),
          f"{second}.bias": rng.normal(size=(d,)).astype(dtype)}


def test_round_trip_is_bit_exact_and_keeps_dtypes(rng):
  for dtype in (np.float32, np.float16):
    state = _state(rng, dtype=dtype)
    back = projection_to_torch(projection_to_flax(state))
    assert set(back) == set(state)
    for key, value in state.items():
      assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key


def test_converted_projection_matches_torch_linear_layers(torch, rng):
  state = _state(rng)
  params = projection_to_flax(state)
  x = rng.normal(size=(3, 6)).astype(np.float32)
  t = {k: torch.tensor(v) for k, v in state.items()}
  expected = torch.nn.functional.linear(
      torch.tanh(torch.nn.functional.linear(torch.tensor(x), t["linear_layer.weight"], t["linear_layer.bias"])),
      t["hidden_layers.0.weight"], t["hidden_layers.0.bias"]).numpy()
  got = TextProjection(embed_dim=8).apply({"params": params}, jnp.asarray(x))
  assert_close(got, expected, rtol=1e-6)


def test_legacy_linear_layer2_names_are_renamed(rng):
  legacy = _state(rng, legacy=True)
  params = projection_to_flax(legacy)
  back = projection_to_torch({"params": params})
  assert set(back) == {"linear_layer.weight", "linear_layer.bias", "hidden_layers.0.weight", "hidden_layers.0.bias"}
  np.testing.assert_array_equal(back["hidden_layers.0.weight"], legacy["linear_layer2.weight"])


def test_registered_converters_check_the_width(rng):
  assert {"talk2dino_vitb_mlp_infonce", "talk2dino_vitl_mlp_infonce"} <= set(registry.names())
  conv = registry.get("talk2dino_vitb_mlp_infonce")
  state = _state(rng, d=768, c=512)
  params = conv.to_flax(state)
  assert params["linear_layer"]["kernel"].shape == (512, 768)
  with pytest.raises(ValueError, match="embed_dim 1024"):
    registry.get("talk2dino_vitl_mlp_infonce").to_flax(state)
  # The Flax side of a full Talk2Dino tree is accepted on export.
  full = {"projection": params, "dinov2": {}, "clip_text": {}}
  assert set(conv.to_torch(full)) == set(state)
  # Abstract init of the full-size projection has exactly the converted shapes.
  shapes = jax.eval_shape(lambda: TextProjection(embed_dim=768).init(jax.random.key(0), jnp.zeros((1, 512))))
  flat = jax.tree_util.tree_map(lambda s: s.shape, shapes["params"])
  assert flat == jax.tree_util.tree_map(np.shape, params)


@pytest.mark.parametrize("mutate, error", [
    (lambda s: s.pop("linear_layer.bias"), KeyError),
    (lambda s: s.__setitem__("extra.weight", np.zeros(2)), KeyError),
    (lambda s: s.__setitem__("hidden_layers.0.bias", np.zeros(3, np.float32)), ValueError),
    (lambda s: s.__setitem__("linear_layer2.bias", np.zeros(8, np.float32)), KeyError),
    (lambda s: s.__setitem__("linear_layer.weight", np.zeros(8, np.float32)), ValueError),
])
def test_bad_state_dicts_fail_loudly(rng, mutate, error):
  state = _state(rng)
  mutate(state)
  with pytest.raises(error):
    projection_to_flax(state)


def test_bad_params_fail_loudly(rng):
  params = projection_to_flax(_state(rng))
  params["hidden_layers_2"] = params["hidden_layers_0"]
  with pytest.raises(KeyError):
    projection_to_torch(params)
