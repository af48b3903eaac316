"""OV2Seg per-frame model: parity with the reference head (tests/fixtures/ov2seg, scripts/make_ov2seg_fixtures.py)
on the same random weights (rebuilt from the reference key list through dinoseg's converter) and backbone
features: pixel decoder outputs, all 7 predictions (class logits against the given class embeddings, objectness,
masks), the decoder-normed query embeddings, and gradients of a fixed function of the outputs w.r.t. a few
parameters (fp32, relative error <= 1e-4). Also: the vocabulary is an input (no parameter depends on it, any
number of classes, background column 0, zero rows score 0), the attention-mask rule, and the whole model from
0-255 images on the tiny config and against the reference with a timm-layout ResNet."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.config import load_config
from dinoseg.convert.keymap import flatten_variables
from dinoseg.models.ov2seg import convert
from dinoseg.models.ov2seg.decoder import ZeroShotClassifier, attention_mask
from dinoseg.models.ov2seg.model import OV2SegOutputs, build_model

RTOL = 1e-4


def _probe(fx, probe_name, x_nhwc):
  """The fixture's channel probe of an NHWC map, in the reference's (B, k, h, w) layout."""
  x = np.moveaxis(np.asarray(x_nhwc, np.float64), -1, 1)
  w = fx.script.mdf.probe_weight(probe_name, x.shape[1], fx.spec["seed"]).astype(np.float64)
  return np.moveaxis(np.tensordot(np.moveaxis(x, 1, -1), w, axes=1), -1, 1)


def _run_head(m, features, class_embeddings):
  mask_features, levels = m.pixel_decoder(features)
  logits, objectness, masks, embeddings = m.predictor(levels, mask_features, class_embeddings)
  return mask_features, levels, OV2SegOutputs(logits, objectness, masks, embeddings)


@functools.lru_cache(maxsize=None)
def _head_fn(model):
  """The head as a function of (variables, features, class_embeddings) (jitted by the caller)."""
  return lambda v, f, e: model.apply(v, f, e, method=_run_head)


@functools.lru_cache(maxsize=None)
def _jitted_head(model):
  return jax.jit(_head_fn(model))


def _forward(fx, variables, features, class_embeddings):
  """(mask_features, levels, outputs) of the head, jitted once per model (and input shapes)."""
  return _jitted_head(fx.model)(variables, features, class_embeddings)


@pytest.fixture(scope="module")
def forward(ov2seg_fixture):
  fx = ov2seg_fixture
  return _forward(fx, fx.variables, fx.features, fx.class_embeddings)


def test_pixel_decoder_parity(ov2seg_fixture, forward):
  fx, (mask_features, levels, _) = ov2seg_fixture, forward
  assert_close(_probe(fx, "mask_features", mask_features), fx.data["pixel/mask_features"], RTOL, "mask features")
  assert [tuple(x.shape[1:3]) for x in levels] == [(3, 4), (6, 8), (12, 16)]  # coarse -> fine
  for i, x in enumerate(levels):
    assert_close(_probe(fx, f"multi_scale/{i}", x), fx.data[f"pixel/multi_scale/{i}"], RTOL, f"level {i}")


def test_predictions_parity(ov2seg_fixture, forward):
  """Every one of the 7 predictions, and pred_embds."""
  fx, out = ov2seg_fixture, forward[2]
  p, b, q, c = 7, 2, fx.spec["num_queries"], fx.spec["num_classes"]
  assert out.logits.shape == (p, b, q, c + 1) and out.objectness.shape == (p, b, q, 2)
  assert out.masks.shape == (p, b, q, 24, 32) and out.embeddings.shape == (b, q, 256)
  for i in range(p):
    assert_close(out.logits[i], fx.data["logits"][i], RTOL, f"logits {i}")
    assert_close(out.objectness[i], fx.data["objectness"][i], RTOL, f"objectness {i}")
    assert_close(out.masks[i], fx.data["masks"][i], RTOL, f"masks {i}")
  assert_close(out.embeddings, fx.data["embeddings"], RTOL, "embeddings")
  assert out["embeddings"] is out.embeddings and set(out.as_dict()) == set(OV2SegOutputs.FIELDS)
  logits = np.asarray(out.logits)
  assert (logits[..., -1] == 0).all() and (logits[..., fx.spec["zero_class"]] == 0).all()


def test_gradients_parity(ov2seg_fixture):
  fx = ov2seg_fixture
  weights = fx.script.cos_weights

  def objective(params):
    mask_features, levels, out = _head_fn(fx.model)({"params": params}, fx.features, fx.class_embeddings)
    nchw = [jnp.moveaxis(x, -1, 1) for x in (mask_features, *levels)]
    arrays = nchw + [out.logits, out.objectness, out.masks, out.embeddings]
    return sum(jnp.mean(x * jnp.asarray(weights(tuple(x.shape)))) for x in arrays)

  grads = jax.jit(jax.grad(objective))(fx.variables["params"])
  torch_grads = convert.head_keymap(fx.model_config).to_torch({"params": grads})
  for key in fx.script.GRAD_KEYS:
    assert_close(torch_grads[key], fx.data[f"grad/{key}"], RTOL, f"grad {key}")


def test_vocabulary_is_an_input(ov2seg_fixture, forward):
  """No parameter depends on the vocabulary: another vocabulary on the same variables gives the same masks,
  objectness and embeddings; logits = 50 cos(projection, class) (row scale irrelevant), background 0."""
  fx, ref = ov2seg_fixture, forward[2]
  paths = ["/".join(p) for p in flatten_variables(fx.variables)]
  assert not any("zs_weight" in p or "class_embeddings" in p for p in paths)
  other = jax.random.normal(jax.random.key(3), fx.class_embeddings.shape)
  _, _, out = _forward(fx, fx.variables, fx.features, other)
  np.testing.assert_array_equal(np.asarray(out.masks), np.asarray(ref.masks))
  np.testing.assert_array_equal(np.asarray(out.objectness), np.asarray(ref.objectness))
  np.testing.assert_array_equal(np.asarray(out.embeddings), np.asarray(ref.embeddings))
  assert not np.allclose(np.asarray(out.logits[..., :-1]), np.asarray(ref.logits[..., :-1]))
  assert float(jnp.max(jnp.abs(out.logits))) <= 50.0 * (1 + 1e-5)
  assert (np.asarray(out.logits[..., -1]) == 0).all()
  scale = jnp.linspace(0.1, 30.0, other.shape[0])[:, None]
  _, _, scaled = _forward(fx, fx.variables, fx.features, other * scale)
  np.testing.assert_allclose(np.asarray(scaled.logits), np.asarray(out.logits), rtol=1e-5, atol=1e-4)


def test_zero_shot_classifier_any_class_count():
  """Any C: logits (B, Q, C + 1) = temperature * cos(projection, class row), background column 0."""
  clf = ZeroShotClassifier(embed_dim=8, temperature=50.0)
  x = jax.random.normal(jax.random.key(0), (2, 3, 16))
  for c in (1, 5):
    emb = jax.random.normal(jax.random.key(c), (c, 8))
    variables = clf.init(jax.random.key(1), x, emb)
    logits = clf.apply(variables, x, emb)
    assert logits.shape == (2, 3, c + 1)
    p = variables["params"]
    hidden = jax.nn.relu(x @ p["linear_0"]["kernel"] + p["linear_0"]["bias"])
    z = hidden @ p["linear_2"]["kernel"] + p["linear_2"]["bias"]
    cos = (z / jnp.linalg.norm(z, axis=-1, keepdims=True)) @ (emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)).T
    np.testing.assert_allclose(np.asarray(logits[..., :c]), 50.0 * np.asarray(cos), rtol=1e-5, atol=1e-4)
    assert (np.asarray(logits[..., -1]) == 0).all()


def test_attention_mask_rule():
  """Blocked where sigmoid < 0.5 after a bilinear resize; a row blocked everywhere is unblocked."""
  logits = jnp.stack([jnp.full((4, 4), -3.0), jnp.array([[1.0, -1, -1, -1]] * 4)])[None]  # (1, 2, 4, 4)
  mask = np.asarray(attention_mask(logits, (2, 2)))
  assert mask.shape == (1, 1, 2, 4)
  assert not mask[0, 0, 0].any()  # all negative -> fully blocked -> unblocked
  np.testing.assert_array_equal(mask[0, 0, 1], [False, True, False, True])  # bilinear of [1, -1] = 0 -> kept


@pytest.mark.slow
def test_whole_model_tiny():
  """The tiny config end to end from 0-255 images: shapes, finite values, jit, padding handled."""
  config = load_config("configs/ov2seg/r50_lvis.py:tiny")
  model = build_model(config.model)
  images = jax.random.uniform(jax.random.key(0), (2, 64, 96, 3), maxval=255.0)
  embeddings = jax.random.normal(jax.random.key(1), (5, config.model.classifier.embed_dim))
  variables = model.init(jax.random.key(2), images[:1], embeddings)
  out = jax.jit(model.apply)(variables, images, embeddings, jnp.array([[64, 96], [40, 50]]))
  p, q = config.model.decoder.dec_layers + 1, config.model.decoder.num_queries
  assert out.logits.shape == (p, 2, q, 6) and out.objectness.shape == (p, 2, q, 2)
  assert out.masks.shape == (p, 2, q, 16, 24) and out.embeddings.shape == (2, q, 64)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(out))
  with pytest.raises(ValueError, match="class_embeddings"):
    model.apply(variables, images, embeddings[:, :7])
  with pytest.raises(ValueError, match="multiple of 32"):
    model.apply(variables, images[:, :50], embeddings)


def test_whole_model_parity_timm_resnet(ov2seg_fixture):
  """0-255 images (one padded, noise in the padding) -> normalise -> timm-layout ResNet (`backbone.base.*` weights
  through the converter) -> head: the reference's final prediction (fixture model_tiny_timm_r50)."""
  script = ov2seg_fixture.script
  with np.load(ov2seg_fixture.data_dir / "model_tiny_timm_r50.npz") as z:
    fx = {k: z[k] for k in z.files}
  spec = json.loads(str(fx["config"]))
  cfg = ov2seg_fixture.model_config_for(spec)
  cfg.backbone.kwargs = dict(stage_blocks=tuple(spec["blocks"]), stem_channels=spec["stem_width"],
                             res2_channels=spec["planes"][0] * 4, bottleneck_channels=spec["planes"][0])
  state = {k: script.model_weight(k, shape, spec["seed"]) for k, shape in json.loads(str(fx["param_keys"]))}
  variables = convert.to_flax({"model": state}, cfg)
  model = build_model(cfg)
  out = jax.jit(model.apply)(variables, jnp.asarray(fx["images"]), jnp.asarray(fx["class_embeddings"]),
                             jnp.asarray(fx["image_hw"]))
  assert_close(out.logits[-1], fx["logits"], RTOL, "logits")
  assert_close(out.objectness[-1], fx["objectness"], RTOL, "objectness")
  assert_close(out.masks[-1], fx["masks"], RTOL, "masks")
  assert_close(out.embeddings, fx["embeddings"], RTOL, "embeddings")
