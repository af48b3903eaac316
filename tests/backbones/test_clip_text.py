"""CLIP text tower against openai/CLIP's encode_text (fixture from scripts/make_dinov2_clip_fixtures.py)."""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.backbones.clip_text import CLIP_TEXT_VARIANTS, ClipTextTransformer, causal_mask, clip_text, quick_gelu
from dinoseg.convert import get

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "backbones" / "clip_text_tiny.npz"


@functools.lru_cache(maxsize=None)
def _case():
  z = dict(np.load(FIXTURE))
  cfg = json.loads(str(z["config"]))
  state = {k[len("param/"):]: v.astype(np.float32) for k, v in z.items() if k.startswith("param/")}
  from dinoseg.convert.dinov2_clip import clip_text_converter  # noqa: PLC0415
  converter = clip_text_converter("tiny", cfg["depth"])
  model = ClipTextTransformer(**cfg)
  return model, converter, converter.to_flax(state), jnp.asarray(z["ids"]), z


def _fixed_weights(shape):
  return np.cos(0.37 * np.arange(int(np.prod(shape)), dtype=np.float64)).astype(np.float32).reshape(shape)


def test_forward_matches_reference():
  model, _, params, ids, z = _case()
  out = jax.jit(model.apply)({"params": params}, ids)
  assert_close(out.text_embeds, z["out/text_embeds"], rtol=1e-5, name="text_embeds")
  assert_close(out.token_features, z["out/token_features"], rtol=1e-5, name="token_features")
  np.testing.assert_array_equal(out.eot_index, np.argmax(z["ids"], -1))
  proj = params["text_projection"]
  assert_close(out.projected_tokens, z["out/token_features"] @ proj, rtol=1e-5, name="projected_tokens")


def test_gradients_match_torch_autograd():
  model, converter, params, ids, z = _case()

  def loss(p):
    out = model.apply({"params": p}, ids)
    return sum(jnp.sum(v * _fixed_weights(v.shape)) for v in (out.text_embeds, out.token_features))

  grads = converter.to_torch(jax.jit(jax.grad(loss))(params))
  keys = [k[len("grad/"):] for k in z if k.startswith("grad/")]
  assert len(keys) == 6
  for key in keys:
    assert_close(grads[key], z[f"grad/{key}"], rtol=1e-5, name=f"d/{key}")


def test_shorter_context_gives_the_same_features():
  # Causal attention: the first L positions do not depend on later ones.
  model, _, params, ids, z = _case()
  rows = np.flatnonzero(np.argmax(z["ids"], -1) < 11)
  assert len(rows) >= 2
  out = model.apply({"params": params}, ids[rows, :11])
  assert_close(out.text_embeds, z["out/text_embeds"][rows], rtol=1e-5, name="text_embeds (L=11)")
  assert_close(out.token_features, z["out/token_features"][rows, :11], rtol=1e-5, name="tokens (L=11)")


def test_full_size_shapes():
  model = clip_text()
  ids = jax.ShapeDtypeStruct((80, 77), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), ids)
  out = jax.eval_shape(model.apply, variables, ids)
  assert out.text_embeds.shape == (80, 512)
  assert out.token_features.shape == (80, 77, 512)
  assert variables["params"]["token_embedding"]["embedding"].shape == (49408, 512)
  assert CLIP_TEXT_VARIANTS["clip_vitb16_text"]["depth"] == 12


def test_quick_gelu_and_mask():
  x = jnp.linspace(-4, 4, 9)
  np.testing.assert_allclose(quick_gelu(x), x / (1 + np.exp(-1.702 * np.asarray(x))), rtol=1e-6)
  np.testing.assert_array_equal(causal_mask(3), np.tril(np.ones((3, 3), bool)))


def test_registered_converter_rejects_a_different_depth():
  converter = get("clip_vitb16_text")
  z = _case()[-1]
  with pytest.raises(KeyError, match="missing keys"):  # 2 blocks given, 12 expected
    converter.to_flax({k[len("param/"):]: v for k, v in z.items() if k.startswith("param/")})


@pytest.mark.parametrize("ids,match", [(np.zeros((1, 17), np.int32), "length"),
                                       (np.zeros((1, 5), np.float32), "integers"),
                                       (np.zeros((5,), np.int32), "ids must be")])
def test_bad_ids_raise(ids, match):
  model, _, params, _, _ = _case()
  with pytest.raises(ValueError, match=match):
    model.apply({"params": params}, jnp.asarray(ids))


def test_bad_name_raises():
  with pytest.raises(ValueError, match="name must be one of"):
    clip_text("clip_vitl14_text")
