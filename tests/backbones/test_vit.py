"""SegNext's plain ViT against uncbiag/SegNext (fixture from scripts/make_backbone_fixtures.py)."""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.backbones.layers import INTERMEDIATES
from dinoseg.backbones.vit import VIT_VARIANTS, PlainViT, global_block_indices, vit
from dinoseg.convert.backbones import vit_keymap

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "backbones" / "vit_tiny.npz"


def vit_input(shape) -> np.ndarray:
  """The fixture's input formula (same as scripts/make_backbone_fixtures.py `vit_input`)."""
  i = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
  return (1.5 * np.sin(0.0137 * i + 0.3) + 0.25 * np.cos(0.00071 * i)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _fixture():
  z = dict(np.load(FIXTURE))
  cfg = json.loads(str(z["config"]))
  state = {k[len("param/"):]: v.astype(np.float32) for k, v in z.items() if k.startswith("param/")}
  images_nchw = vit_input(cfg["input_shape"])
  assert abs(float(images_nchw.sum()) - cfg["input_sum"]) < 1e-3 * abs(cfg["input_sum"]) + 1e-3
  model = PlainViT(**{**cfg["vit"], "img_size": tuple(cfg["vit"]["img_size"])})
  params = vit_keymap(model).to_flax(state)["params"]
  return model, params, state, jnp.asarray(images_nchw.transpose(0, 2, 3, 1)), z


def _fixed_weights(shape):
  return np.cos(0.37 * np.arange(int(np.prod(shape)), dtype=np.float64)).astype(np.float32).reshape(shape)


@functools.lru_cache(maxsize=None)
def _run():
  """Output, attention maps and parameter gradients (one compilation)."""
  model, params, _, images, _ = _fixture()

  def loss(p):
    out, state = model.apply({"params": p}, images, mutable=[INTERMEDIATES])
    nchw = out.transpose(0, 3, 1, 2)
    return jnp.sum(jnp.asarray(_fixed_weights(nchw.shape)) * nchw), (out, state[INTERMEDIATES])

  grads, (out, inter) = jax.jit(jax.grad(loss, has_aux=True))(params)
  return out, inter, grads


def test_forward_and_attention_match_reference():
  model, _, _, images, z = _fixture()
  out, inter, _ = _run()
  assert out.shape == (2, 28, 21, 16)
  assert_close(np.asarray(out).transpose(0, 3, 1, 2), z["out/features"], rtol=1e-5, name="features")
  assert model.num_windows == (2, 1) and model.global_block_indices == (1, 3)
  for i in (0, 1):
    (attn,) = inter[f"blocks_{i}"]["attn"]["attention"]
    n = attn.shape[2]
    assert attn.shape == ((4, 2, 294, 294) if i == 0 else (2, 2, 588, 588))  # window / global block
    assert_close(np.asarray(attn)[:, :, [0, n // 2, n - 1]], z[f"attn/blocks.{i}"], rtol=1e-5,
                 name=f"attention {i}")


def test_parameter_gradients_match_torch_autograd():
  model, _, _, _, z = _fixture()
  grads = vit_keymap(model).to_torch({"params": _run()[2]})
  for key in ("pos_embed", "patch_embed.proj.bias", "blocks.0.attn.qkv.weight", "blocks.1.attn.proj.bias",
              "blocks.3.mlp.fc2.weight", "blocks.2.norm1.weight"):
    assert_close(grads[key], z[f"grad/{key}"], rtol=1e-5, name=key)
  assert not np.any(grads["fc_norm.weight"])  # carried, never applied


def test_round_trip_is_bit_exact():
  model, _, state, _, z = _fixture()
  km = vit_keymap(model)
  back = km.to_torch(km.to_flax(state))
  assert list(back) == json.loads(str(z["config"]))["state_keys"]
  for key, value in back.items():
    assert value.dtype == state[key].dtype and np.array_equal(value, state[key]), key


def test_embed_and_encode_split_the_forward():
  model, params, _, images, _ = _fixture()
  variables = {"params": params}
  extra = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 21, 16)), jnp.float32)

  @jax.jit
  def run(images, extra):
    tokens = model.apply(variables, images, method="embed")
    with_extra = model.apply(variables, images, extra, method="embed")
    return tokens, with_extra, model.apply(variables, tokens, method="encode")

  tokens, with_extra, encoded = run(images, extra)
  fused = jax.jit(model.clone(fused_attention=True).apply)(variables, images)
  assert_close(fused, _run()[0], rtol=1e-5, name="fused attention")
  # The reference adds `other_feats` to the patch embeddings, before the position embedding.
  np.testing.assert_allclose(with_extra, tokens + extra, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(encoded, _run()[0], rtol=1e-6, atol=1e-6)


def test_block_rule_variants_and_bad_input():
  assert global_block_indices(12, 3) == (2, 5, 8, 11)  # blocks 3, 6, 9, 12 (1-based)
  assert global_block_indices(8, 3) == (2, 5, 7)  # the last block is always global
  assert global_block_indices(4, 1) == (0, 1, 2, 3)
  model = vit("segnext_vit_b")
  assert model.num_windows == (4, 4)  # 64 // 14 windows of 16 x 16 tokens at 1024 px
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1024, 1024, 3)))
  assert shapes["params"]["pos_embed"].shape == (1, 4097, 768)
  assert jax.eval_shape(model.apply, shapes, jnp.zeros((1, 1024, 1024, 3))).shape == (1, 64, 64, 768)
  assert VIT_VARIANTS["segnext_vit_b"]["global_atten_freq"] == 3
  custom = PlainViT(img_size=(448, 448), embed_dim=16, depth=3, num_heads=2, global_blocks=(0,))
  assert custom.global_block_indices == (0,)
  with pytest.raises(ValueError, match="images must be"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 512, 512, 3)))
  with pytest.raises(ValueError, match="equal windows"):  # 15 tokens cannot split into 2 windows of 7
    jax.eval_shape(PlainViT(img_size=(240, 240), embed_dim=16, depth=2, num_heads=2, global_atten_freq=2,
                            window_size_px=112).init, jax.random.key(0), jnp.zeros((1, 240, 240, 3)))
  with pytest.raises(ValueError, match="name must be one of"):
    vit("vit_h")
