"""Parity with the reference DINOv head (tests/fixtures/dinov, scripts/make_dinov_fixtures.py): the same random
weights (rebuilt from the reference key list through dinoseg's converter) and backbone features give the same
prompt-encoder attention masks and embeddings, generic-task outputs in eval mode (prompt bank with a missing
category) and in training (class prompts averaged from examples, class-agnostic DN with the reference's noise),
referring-task outputs and IoU predictions in eval and training (the reference's click noise), and the same
gradients of a fixed function of the training outputs. fp32, relative error <= 1e-4."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dinov_fixtures import (FIXTURE_NAMES, cos_objective, fixture_config, fixture_features, fixture_head_variables,
                            fixture_model, load_fixture, model_config_for, probe)
from helpers import assert_close

from dinoseg.models.dinov import convert
from dinoseg.models.dinov.decoder import CLICKS, DN, PROMPTS, QUERIES
from dinoseg.models.dinov.prompt_encoder import average_prompts, key_masks
from dinoseg.models.maskdino.denoising import DNNoise
from dinoseg.structures import PaddedInstances

RTOL = 1e-4


def _apply(name, fn, *args, params=None):
  """fn(bound model, *args) under jit with the fixture's variables (or `params`)."""
  variables = fixture_head_variables(name) if params is None else {"params": params}
  return jax.jit(lambda v, *a: fixture_model(name).apply(v, *a, method=fn))(variables, *args)


def _prompt_inputs(fx):
  masks = jnp.asarray(fx["prompt/masks"], jnp.float32)
  num = fx["prompt/num"]
  valid = np.arange(masks.shape[1])[None] < num[:, None]
  return masks, valid


def _encode(m, feats, masks):
  mask_features, levels = m.pixel_decoder(feats)
  return m.predictor.encode_prompts(levels, masks), mask_features, levels


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_prompt_encoder(name):
  """Attention masks per level (successive halvings, empty mask unblocked, a 3 x 3 mask never fully blocked)
  and the prompt embeddings."""
  fx = load_fixture(name)
  masks, valid = _prompt_inputs(fx)
  _, levels = _apply(name, lambda m, f: m.pixel_decoder(f), fixture_features(name))
  got = key_masks(masks, [tuple(x.shape[1:3]) for x in levels])[::-1]  # decoder order, as the reference's layers
  for i, blocked in enumerate(got):
    want = fx[f"prompt/key_mask/level{i}"]
    np.testing.assert_array_equal(np.asarray(blocked)[valid], want[valid], err_msg=f"level {i}")
  assert not np.asarray(got[0])[1, 1].any()  # image 1's empty mask: unblocked everywhere
  emb, _, _ = _apply(name, lambda m, f, x: _encode(m, f, x), fixture_features(name), masks)
  assert_close(np.asarray(emb)[valid], fx["prompt/embeddings"], RTOL, "prompt embeddings")


def _check_group(name, pred, fx, prefix, n=None, masks_probe=True):
  n = pred.logits.shape[2] if n is None else n
  assert_close(pred.logits[:, :, :n], fx[f"{prefix}/logits"], RTOL, f"{prefix} logits")
  assert_close(pred.boxes[:, :, :n], fx[f"{prefix}/boxes"], RTOL, f"{prefix} boxes")
  if masks_probe:
    got = np.stack([probe(name, "masks", x[:, :n]) for x in np.asarray(pred.masks)])
    want = fx[f"{prefix}/probe/masks"]
    assert_close(got.reshape(want.shape), want, RTOL, f"{prefix} masks")


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_generic_eval(name):
  """[generic | K prompts] in eval: the bank's averages (category 2 empty: zero embedding) as prompts."""
  fx = load_fixture(name)
  bank = jnp.asarray(fx["generic_eval/bank"])[None]
  out = _apply(name, lambda m, f, p: m.head(f, task="generic", prompts=p), fixture_features(name, 1), bank)
  assert out.masks.shape[0] == 1  # eval: final masks only
  _check_group(name, out.groups[QUERIES], fx, "generic_eval")
  assert out.groups[PROMPTS].logits is None and out.iou is None


def test_generic_eval_prompt_budget():
  """Static prompt budget: the reference's 4 prompts inside 6 slots with a per-image validity mask, placed
  differently in two images; invalid slots hold junk. Valid columns equal the reference; nothing else moves."""
  name = "swint_4lvl"
  fx = load_fixture(name)
  bank = np.asarray(fx["generic_eval/bank"])
  junk = np.full((2, bank.shape[1]), 7.0, np.float32)
  slots = [[0, 1, 2, 3, -1, -2], [-1, 0, 1, -2, 2, 3]]
  prompts = np.stack([np.stack([junk[-s - 1] if s < 0 else bank[s] for s in row]) for row in slots])
  valid = np.asarray(slots) >= 0
  feats = {k: jnp.concatenate([v, v]) for k, v in fixture_features(name, 1).items()}
  out = _apply(name, lambda m, f, p, v: m.head(f, task="generic", prompts=p, prompt_valid=v), feats,
               jnp.asarray(prompts), jnp.asarray(valid))
  for b in range(2):
    cols = [row.index(k) for row in slots[b:b + 1] for k in range(bank.shape[0])]
    assert_close(np.asarray(out.logits)[:, b:b + 1][..., cols], fx["generic_eval/logits"], RTOL, f"image {b} logits")
    assert_close(out.boxes[:, b:b + 1], fx["generic_eval/boxes"], RTOL, f"image {b} boxes")
  np.testing.assert_array_equal(out.prompt_valid, valid)


def _generic_train(m, feats, masks, examples, members, boxes, valid, box_u):
  """examples: flat indices of the batch's prompts (image by image, the reference's order)."""
  emb, mask_features, levels = _encode(m, feats, masks)
  b, s = emb.shape[:2]
  prompts = average_prompts(emb.reshape(b * s, -1)[examples], members)
  targets = PaddedInstances(labels=jnp.zeros(valid.shape, jnp.int32), boxes=boxes, valid=valid)
  noise = DNNoise(label_u=jnp.ones(box_u.shape[:2]), random_labels=jnp.zeros(box_u.shape[:2], jnp.int32), box_u=box_u)
  return m.predictor(levels, mask_features, task="generic", prompts=jnp.broadcast_to(prompts, (b,) + prompts.shape),
                     train=True, targets=targets, dn_noise=noise)


def _train_arrays(out, n_dn):
  g, dn = out.groups[QUERIES], out.groups[DN]
  return [g.logits, g.boxes, g.masks, dn.logits[:, :, :n_dn], dn.boxes[:, :, :n_dn], dn.masks[:, :, :n_dn]]


TRAIN_FIXTURES = ["swint_4lvl", pytest.param("swinl_5lvl", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", TRAIN_FIXTURES)
def test_generic_train(name):
  """[DN | generic | K class prompts] in training: class prompts averaged from the batch's prompt embeddings,
  class-agnostic DN (2 groups of 3 in a budget of 8 slots) with the reference's box noise; outputs and the
  gradients of a fixed function of them (prompt encoder, queries, embeddings, box head, pixel decoder)."""
  spec, fx = fixture_config(name), load_fixture(name)
  masks, valid = _prompt_inputs(fx)
  n_dn = 6  # 2 groups of m = 3
  args = (fixture_features(name), masks, jnp.asarray(np.flatnonzero(valid)), jnp.asarray(fx["generic_train/members"]),
          jnp.asarray(fx["generic_train/gt/boxes"]), jnp.asarray(fx["generic_train/gt/valid"]),
          jnp.asarray(fx["generic_train/dn_box_u"]))
  out = _apply(name, _generic_train, *args)
  assert out.groups[DN].logits.shape[2] == spec["dn_num"]
  np.testing.assert_array_equal(out.groups[DN].valid, np.arange(spec["dn_num"])[None].repeat(2, 0) < n_dn)
  _check_group(name, out.groups[QUERIES], fx, "generic_train")
  _check_group(name, out.groups[DN], fx, "generic_train/dn", n=n_dn)

  model = fixture_model(name)

  def objective(params):
    return cos_objective(_train_arrays(model.apply({"params": params}, *args, method=_generic_train), n_dn))

  grads = jax.jit(jax.grad(objective))(fixture_head_variables(name)["params"])
  torch_grads = convert.to_torch({"params": grads}, model_config_for(spec), head_only=True, prefix="")
  for key in spec["grad_keys"]["generic_train"]:
    assert_close(torch_grads[key], fx[f"generic_train/grad/{key}"], RTOL, f"grad {key}")


def _refer(m, feats, masks, clicks, noise, train):
  emb, mask_features, levels = _encode(m, feats, masks)
  return m.predictor(levels, mask_features, task="refer", prompts=emb, clicks=clicks, train=train, click_noise=noise)


def _refer_arrays(out):
  c = out.groups[CLICKS]
  return [jnp.swapaxes(c.logits, 2, 3), c.boxes, out.iou, c.masks]  # logits in the reference's (K, C*T) layout


@pytest.mark.parametrize("name,train", [pytest.param("swint_4lvl", False, marks=pytest.mark.slow), ("swinl_5lvl", False),
                                        ("swint_4lvl", True),
                                        pytest.param("swinl_5lvl", True, marks=pytest.mark.slow)],
                         ids=["eval-swint_4lvl", "eval-swinl_5lvl", "train-swint_4lvl", "train-swinl_5lvl"])
def test_refer(name, train):
  """[clicks x 6 tokens | K prompts]: similarity logits, boxes (from twice-normalised states), IoU predictions,
  masks; in training with the reference's click noise, pb = 1, and the gradients."""
  spec, fx = fixture_config(name), load_fixture(name)
  prefix = "refer_train" if train else "refer_eval"
  masks, _ = _prompt_inputs(fx)
  noise = jnp.asarray(fx["refer_train/click_u"]) if train else None
  args = (fixture_features(name, 1), masks[:1], jnp.asarray(fx[f"{prefix}/clicks"]), noise)
  out = _apply(name, lambda m, *a: _refer(m, *a, train), *args)
  c = out.groups[CLICKS]
  assert out.iou.shape == fx[f"{prefix}/ious"].shape and c.masks.shape[0] == (spec["dec_layers"] if train else 1)
  assert_close(jnp.swapaxes(c.logits, 2, 3), fx[f"{prefix}/logits"], RTOL, "logits")
  assert_close(c.boxes, fx[f"{prefix}/boxes"], RTOL, "boxes")
  assert_close(out.iou, fx[f"{prefix}/ious"], RTOL, "IoU predictions")
  got = np.stack([probe(name, "masks", x) for x in np.asarray(c.masks)])
  assert_close(got.reshape(fx[f"{prefix}/probe/masks"].shape), fx[f"{prefix}/probe/masks"], RTOL, "masks")
  if not train:
    return
  model = fixture_model(name)

  def objective(params):
    out = model.apply({"params": params}, *args, method=lambda m, *a: _refer(m, *a, True))
    return cos_objective(_refer_arrays(out))

  grads = jax.jit(jax.grad(objective))(fixture_head_variables(name)["params"])
  torch_grads = convert.to_torch({"params": grads}, model_config_for(spec), head_only=True, prefix="")
  for key in spec["grad_keys"]["refer_train"]:
    assert_close(torch_grads[key], fx[f"refer_train/grad/{key}"], RTOL, f"grad {key}")
