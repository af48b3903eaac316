"""Talk2DINO training side against the reference (fixtures from scripts/make_talk2dino_fixtures.py).

Head pooling (`DINOText.encode_image`), the projection, max-score head selection, the InfoNCE loss
(`ContrastiveLoss`, ltype infonce), its gradients and three Adam steps.
"""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close

from dinoseg.backbones.dinov2 import DinoV2
from dinoseg.convert.dinov2_clip import dinov2_key_table, table_to_flax
from dinoseg.models.talk2dino.convert import projection_to_flax, projection_to_torch
from dinoseg.models.talk2dino.loss import LOGIT_SCALE, infonce_loss
from dinoseg.models.talk2dino.model import normalize_images  # noqa: F401  (public API import check)
from dinoseg.models.talk2dino.pooling import (average_head_pooling, cls_patch_logits, disentangled_head_pooling,
                                              max_score_similarity)
from dinoseg.models.talk2dino.projection import TextProjection, normalize

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "talk2dino" / "train_tiny.npz"


@functools.lru_cache(maxsize=None)
def _fixture():
  z = dict(np.load(FIXTURE))
  cfg = json.loads(str(z["config"]))
  dino_cfg = dict(cfg["dino"])
  dino = DinoV2(**dino_cfg, interpolate_antialias=True, interpolate_offset=0.0)
  state = {k[len("dino/"):]: v.astype(np.float32) for k, v in z.items() if k.startswith("dino/")}
  dino_params = table_to_flax(state, dinov2_key_table(dino_cfg["depth"], "mlp", dino_cfg["num_register_tokens"]))
  proj_state = {k[len("proj/"):]: v.astype(np.float32) for k, v in z.items() if k.startswith("proj/")}
  return z, dino, dino_params, projection_to_flax(proj_state)


def _pooled():
  z, dino, params, _ = _fixture()
  out = jax.jit(dino.apply)({"params": params}, jnp.asarray(z["images_nhwc"].astype(np.float32)))
  logits = cls_patch_logits(out.last_q, out.last_k, 1 + dino.num_register_tokens)
  return logits, average_head_pooling(logits, out.patch_tokens), disentangled_head_pooling(logits, out.patch_tokens)


def test_head_pooling_matches_reference():
  z = _fixture()[0]
  logits, avg, heads = _pooled()
  # encode_image returns the per-head softmax of the raw logits.
  assert_close(jax.nn.softmax(logits, axis=-1), z["out/self_attn_maps"], name="self_attn_maps")
  assert_close(avg, z["out/avg_self_attn_out"], name="avg_self_attn_out")
  assert_close(heads, z["out/disentangled_self_attn"], name="disentangled_self_attn")


def _loss_fn(proj_params, heads, texts):
  text = normalize(TextProjection(embed_dim=heads.shape[-1]).apply({"params": proj_params}, texts))
  sims, index = max_score_similarity(text, normalize(heads))
  return infonce_loss(sims), (sims, index)


def test_max_score_loss_and_gradients_match_reference():
  z, _, _, proj = _fixture()
  heads = jnp.asarray(z["out/disentangled_self_attn"])[z["caption_image"]]
  texts = jnp.asarray(z["texts"].astype(np.float32))
  (loss, (sims, index)), grads = jax.value_and_grad(_loss_fn, has_aux=True)(proj, heads, texts)
  assert_close(sims, z["out/similarity"], name="similarity")
  np.testing.assert_array_equal(np.asarray(index), z["out/index"])
  assert_close(loss, z["out/loss"], name="loss")
  for key, value in projection_to_torch(grads).items():
    assert_close(value, z[f"grad/{key}"], name=f"grad {key}")


def test_validation_loss_with_average_pooling_matches_reference():
  z, _, _, proj = _fixture()
  avg = jnp.asarray(z["out/avg_self_attn_out"])[z["caption_image"]]
  text = normalize(TextProjection(embed_dim=avg.shape[-1]).apply({"params": proj},
                                                                  jnp.asarray(z["texts"].astype(np.float32))))
  assert_close(infonce_loss(text @ normalize(avg).T), z["out/val_loss"], name="val_loss")


def test_three_adam_steps_match_torch_adam():
  z, _, _, proj = _fixture()
  heads = jnp.asarray(z["out/disentangled_self_attn"])[z["caption_image"]]
  texts = jnp.asarray(z["texts"].astype(np.float32))
  opt = optax.adam(1e-4)  # torch.optim.Adam defaults: betas (0.9, 0.999), eps 1e-8
  state = opt.init(proj)
  params = proj
  for _ in range(3):
    grads = jax.grad(lambda p: _loss_fn(p, heads, texts)[0])(params)
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  for key, value in projection_to_torch(params).items():
    assert_close(value, z[f"adam3/{key}"], rtol=1e-6, name=f"adam3 {key}")


def test_infonce_matches_torch_cross_entropy(torch):
  rng = np.random.default_rng(0)
  sims = rng.uniform(-1, 1, (5, 5)).astype(np.float32)
  logits = torch.tensor(sims) * torch.exp(torch.tensor(np.float32(LOGIT_SCALE)))
  labels = torch.arange(5)
  ce = torch.nn.functional.cross_entropy
  expected = ((ce(logits, labels) + ce(logits.t(), labels)) / 2 / 25).item()
  assert_close(infonce_loss(jnp.asarray(sims)), expected, name="loss")


def test_infonce_padding_equals_unpadded_batch():
  rng = np.random.default_rng(1)
  sims = jnp.asarray(rng.uniform(-1, 1, (6, 6)).astype(np.float32))
  valid = jnp.asarray([True, True, True, True, False, False])
  padded = jax.value_and_grad(infonce_loss)(sims, valid)
  plain = jax.value_and_grad(infonce_loss)(sims[:4, :4])
  assert_close(padded[0], plain[0], rtol=1e-6, name="loss")
  assert_close(padded[1][:4, :4], plain[1], rtol=1e-6, name="grad")
  assert np.all(np.asarray(padded[1])[4:] == 0) and np.all(np.asarray(padded[1])[:, 4:] == 0)
  assert np.isfinite(np.asarray(padded[1])).all()


def test_projection_is_linear_tanh_linear():
  proj = TextProjection(embed_dim=8)
  params = proj.init(jax.random.key(0), jnp.zeros((1, 4)))["params"]
  assert set(params) == {"linear_layer", "hidden_layers_0"}
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32))
  p = params
  expected = jnp.tanh(x @ p["linear_layer"]["kernel"] + p["linear_layer"]["bias"]) @ p["hidden_layers_0"]["kernel"]
  expected = expected + p["hidden_layers_0"]["bias"]
  assert_close(proj.apply({"params": params}, x), expected, rtol=1e-6)
  # torch.nn.Linear's init range U(+-1/sqrt(fan_in)).
  assert np.abs(np.asarray(p["linear_layer"]["kernel"])).max() <= 0.5
  assert np.abs(np.asarray(p["hidden_layers_0"]["bias"])).max() <= 1 / np.sqrt(8)


@pytest.mark.parametrize("bad", [
    lambda: cls_patch_logits(jnp.zeros((1, 2, 6, 4)), jnp.zeros((1, 2, 5, 4)), 5),
    lambda: cls_patch_logits(jnp.zeros((1, 2, 6, 4)), jnp.zeros((1, 2, 6, 4)), 6),
    lambda: average_head_pooling(jnp.zeros((1, 2, 4)), jnp.zeros((1, 5, 3))),
    lambda: disentangled_head_pooling(jnp.zeros((2, 4)), jnp.zeros((1, 4, 3))),
    lambda: max_score_similarity(jnp.zeros((2, 3)), jnp.zeros((3, 4, 3))),
    lambda: infonce_loss(jnp.zeros((2, 3))),
    lambda: infonce_loss(jnp.zeros((2, 2)), jnp.ones((3,), bool)),
    lambda: TextProjection(activation="gelu").init(jax.random.key(0), jnp.zeros((1, 4))),
])
def test_bad_input_raises_value_error(bad):
  with pytest.raises(ValueError):
    bad()
