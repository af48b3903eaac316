"""Swin against MaskDINO's D2SwinTransformer (fixture from scripts/make_backbone_fixtures.py)."""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.backbones.layers import INTERMEDIATES
from dinoseg.backbones.swin import (SWIN_VARIANTS, SwinTransformer, relative_position_index, shifted_window_mask,
                                    swin, window_partition, window_reverse)
from dinoseg.convert.backbones import swin_keymap

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "backbones" / "swin_tiny.npz"
NAMES = ("res2", "res3", "res4", "res5")


@functools.lru_cache(maxsize=None)
def _fixture():
  z = dict(np.load(FIXTURE))
  cfg = json.loads(str(z["config"]))
  state = {k[len("param/"):]: v.astype(np.float32) if v.dtype == np.float16 else v
           for k, v in z.items() if k.startswith("param/")}
  images = jnp.asarray(z["images_nchw"].astype(np.float32).transpose(0, 2, 3, 1))
  model = SwinTransformer(**cfg["swin"])
  return model, state, images, z


def _params():
  model, state, _, _ = _fixture()
  return swin_keymap(model).to_flax(state)["params"]


def _fixed_weights(shape):
  return np.cos(0.37 * np.arange(int(np.prod(shape)), dtype=np.float64)).astype(np.float32).reshape(shape)


def _rows(n):
  return [0, n // 2, n - 1]


@functools.lru_cache(maxsize=None)
def _run():
  """Outputs, sown attention maps and parameter gradients of the fixture model (one compilation)."""
  model, _, images, _ = _fixture()

  def loss(params):
    out, state = model.apply({"params": params}, images, mutable=[INTERMEDIATES])
    value = sum(jnp.sum(jnp.asarray(_fixed_weights(out[n].transpose(0, 3, 1, 2).shape))
                        * out[n].transpose(0, 3, 1, 2)) for n in NAMES)
    return value, (out, state[INTERMEDIATES])

  grads, (out, inter) = jax.jit(jax.grad(loss, has_aux=True))(_params())
  return out, inter, grads


def test_forward_and_attention_match_reference():
  model, _, _, z = _fixture()
  out, inter, _ = _run()
  assert list(out) == list(NAMES)
  for n in NAMES:
    assert_close(np.asarray(out[n]).transpose(0, 3, 1, 2), z[f"out/{n}"], rtol=1e-5, name=n)
  for s, depth in enumerate(model.depths):
    for b in range(depth):
      (attn,) = inter[f"layers_{s}"][f"blocks_{b}"]["attn"]["attention"]
      ref = z[f"attn/layers.{s}.blocks.{b}"]  # (B * windows, heads, 3 rows, N)
      assert attn.shape[:2] == ref.shape[:2] and attn.shape[3] == ref.shape[3]
      assert_close(np.asarray(attn)[:, :, _rows(attn.shape[2])], ref, rtol=1e-5, name=f"attention {s}.{b}")


def test_parameter_gradients_match_torch_autograd():
  model, _, _, z = _fixture()
  grads_torch = swin_keymap(model).to_torch({"params": _run()[2]})
  for key in ("patch_embed.proj.weight", "layers.0.blocks.1.attn.relative_position_bias_table",
              "layers.0.blocks.1.attn.qkv.weight", "layers.1.downsample.reduction.weight",
              "layers.2.blocks.1.mlp.fc1.bias", "norm3.weight"):
    assert_close(grads_torch[key], z[f"grad/{key}"], rtol=1e-5, name=key)


def test_round_trip_is_bit_exact_and_rebuilds_the_index_buffer():
  model, state, _, z = _fixture()
  cfg = json.loads(str(z["config"]))
  km = swin_keymap(model)
  back = km.to_torch(km.to_flax(state))
  assert list(back) == cfg["state_keys"]
  for key, value in back.items():  # relative_position_index included (int64, rebuilt)
    assert value.dtype == state[key].dtype and np.array_equal(value, state[key]), key
  # An index buffer that does not fit the window is refused.
  bad = dict(state)
  bad["layers.0.blocks.0.attn.relative_position_index"] = relative_position_index(5)
  with pytest.raises(ValueError, match="relative_position_index"):
    km.to_flax(bad)


def test_static_window_helpers():
  w = 7
  index = relative_position_index(w)
  assert index.shape == (49, 49) and index.dtype == np.int64 and index.max() == (2 * w - 1) ** 2 - 1
  assert (np.diag(index) == (w - 1) * (2 * w - 1) + (w - 1)).all()  # dy = dx = 0
  # The mask: tokens of one window attend to each other iff they come from the same rolled region.
  mask = shifted_window_mask(12, 16, w, 3)  # padded to 14 x 21 -> 2 x 3 windows
  assert mask.shape == (6, 49, 49) and set(np.unique(mask)) <= {0.0, -100.0}
  assert not mask[0].any()  # the top-left window lies inside one region
  x = jnp.arange(2 * 14 * 21 * 3, dtype=jnp.float32).reshape(2, 14, 21, 3)
  np.testing.assert_array_equal(window_reverse(window_partition(x, 7), 7, 14, 21), x)


def test_drop_path_and_frozen_stages():
  # A small model (3 stages of one block, window 2): the checks need no reference values.
  model = SwinTransformer(embed_dim=4, depths=(1, 1, 1), num_heads=(1, 1, 1), window_size=2, drop_path_rate=0.5)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
  params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), shapes)
  frozen = model.clone(frozen_stages=2, drop_path_rate=0.0)  # patch embedding + layers_0 frozen

  @jax.jit
  def run(p, key):
    eval_out = model.apply({"params": p}, images)["res4"]
    train_out = model.apply({"params": p}, images, train=True, rngs={"dropout": key})["res4"]
    grads = jax.grad(lambda q: sum(jnp.sum(v ** 2) for v in frozen.apply({"params": q}, images).values()))(p)
    return eval_out, train_out, grads

  eval_out, train_out, grads = run(params, jax.random.key(1))
  assert not np.allclose(eval_out, train_out)  # stochastic depth only in training
  assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["patch_embed"]))
  assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["layers_0"]))
  assert all(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["layers_1"]["blocks_0"]["mlp"]))
  assert np.any(np.asarray(grads["norm0"]["scale"]))  # output norms stay trainable


def test_variants_and_bad_input():
  assert SWIN_VARIANTS["swin_large"]["window_size"] == 12 and SWIN_VARIANTS["swin_tiny"]["window_size"] == 7
  model = swin("swin_tiny")
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 100, 130, 3)))
  out = jax.eval_shape(model.apply, shapes, jnp.zeros((1, 100, 130, 3)))
  assert {k: v.shape for k, v in out.items()} == {
      "res2": (1, 25, 33, 96), "res3": (1, 13, 17, 192), "res4": (1, 7, 9, 384), "res5": (1, 4, 5, 768)}
  assert shapes["params"]["layers_0"]["blocks_0"]["attn"]["relative_position_bias_table"].shape == (169, 3)
  with pytest.raises(ValueError, match="name must be one of"):
    swin("swin_huge")
  with pytest.raises(ValueError, match="images must be"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((100, 130, 3)))
  with pytest.raises(ValueError, match="depths"):
    jax.eval_shape(SwinTransformer(depths=(2, 2), num_heads=(1,)).init, jax.random.key(0),
                   jnp.zeros((1, 32, 32, 3)))


def test_imagenet_classification_checkpoint_initializes_the_backbone():
  from dinoseg.convert.backbones import swin_classification_to_flax  # noqa: PLC0415
  from dinoseg.convert.keymap import KeyMismatchError  # noqa: PLC0415
  model, state, _, _ = _fixture()
  classification = {k: v for k, v in state.items() if not k.startswith("norm")}
  classification.update({"norm.weight": np.ones(48, np.float32), "norm.bias": np.zeros(48, np.float32),
                         "head.weight": np.zeros((10, 48), np.float32), "head.bias": np.zeros(10, np.float32),
                         "layers.0.blocks.1.attn_mask": np.zeros((6, 49, 49), np.float32)})
  params = swin_classification_to_flax(model, {"model": classification})
  want = _params()
  for i in range(4):
    np.testing.assert_array_equal(params[f"norm{i}"]["scale"], 1.0)
    np.testing.assert_array_equal(params[f"norm{i}"]["bias"], 0.0)
    params[f"norm{i}"] = want[f"norm{i}"]
  jax.tree.map(np.testing.assert_array_equal, params, want)
  with pytest.raises(KeyMismatchError, match="detection checkpoint"):
    swin_classification_to_flax(model, state)
  with pytest.raises(KeyMismatchError, match="missing: layers.1.blocks.0.mlp.fc1.weight"):
    swin_classification_to_flax(model, {k: v for k, v in classification.items()
                                        if k != "layers.1.blocks.0.mlp.fc1.weight"})
