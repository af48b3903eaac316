"""DINOv's query layouts through the query-group API against the reference's attention masks (transcribed from
`prepare_for_dn`, `prepare_all_query`, `prepare_for_point_query`, `prepare_for_visual_query`,
`prepare_all_query_sam`), per-image validity inside static budgets, and the model's init and entry points."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dinov_fixtures import fixture_features, fixture_head_variables, fixture_model, load_fixture
from helpers import assert_close

from dinoseg.config import load_config
from dinoseg.models import query_groups
from dinoseg.models.dinov import convert
from dinoseg.models.dinov.decoder import CLICKS, PROMPTS, QUERIES
from dinoseg.models.dinov.model import build_model
from dinoseg.models.maskdino import denoising
from dinoseg.structures import PaddedInstances

B, H, W = 2, 64, 64


def _blocks(n_blocks: int, size: int) -> np.ndarray:
  """The reference's "groups cannot see each other" loop (its i == 0 / i == last special cases included)."""
  pad = n_blocks * size
  m = np.zeros((pad, pad), bool)
  for i in range(n_blocks):
    rows = slice(size * i, size * (i + 1))
    if i == 0:
      m[rows, size * (i + 1):pad] = True
    if i == n_blocks - 1:
      m[rows, :size * i] = True
    else:
      m[rows, size * (i + 1):pad] = True
      m[rows, :size * i] = True
  return m


def _reference_generic(num_dn_groups, single_pad, q, k, content_independent, train):
  """`prepare_for_dn` + `prepare_all_query` (training) or the eval branch of `prepare_all_query`."""
  num_dn = num_dn_groups * single_pad if train else 0
  n = num_dn + q + k
  mask = np.ones((n, n), bool)
  generic = np.zeros((num_dn + q, num_dn + q), bool)
  generic[num_dn:, :num_dn] = True
  generic[:num_dn, :num_dn] = _blocks(num_dn_groups, single_pad) if train else generic[:num_dn, :num_dn]
  mask[:num_dn + q, :num_dn + q] = generic
  mask[num_dn + q:, num_dn + q:] = _blocks(k, 1)
  mask[num_dn + q:, num_dn:num_dn + q] = content_independent
  return mask


def _reference_refer(clicks, tokens, k):
  """`prepare_all_query_sam`: clicks' token blocks and content prompts, nothing across."""
  p = clicks * tokens
  mask = np.ones((p + k, p + k), bool)
  mask[:p, :p] = _blocks(clicks, tokens)
  mask[p:, p:] = _blocks(k, 1)
  return mask


@functools.lru_cache(maxsize=None)
def _tiny(content_independent=True, dn_num=6, initialized=False):
  """The tiny Swin-T config's model and variables (zeros of the right shapes unless `initialized`: the query
  layouts do not depend on the values, and tracing the init is much faster than running it)."""
  cfg = load_config("configs/dinov/swint_sam_coco.py:tiny").model.copy_and_resolve_references()
  cfg.msda_impl = "xla"
  cfg.decoder.content_independent, cfg.decoder.dn_num, cfg.decoder.dn_group_images = content_independent, dn_num, 0
  model = build_model(cfg)
  init = functools.partial(model.init, jax.random.key(0), jnp.zeros((B, H, W, 3)))
  variables = init() if initialized else jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(init))
  return cfg, model, variables


def _targets():
  valid = np.zeros((B, 4), bool)
  valid[0, :3] = valid[1, :2] = True
  boxes = np.where(valid[..., None], [0.5, 0.5, 0.2, 0.3], 0.0).astype(np.float32)
  return PaddedInstances(labels=jnp.zeros((B, 4), jnp.int32), boxes=jnp.asarray(boxes), valid=jnp.asarray(valid))


@pytest.mark.parametrize("content_independent", [True, False])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_generic_attention_mask_equals_reference(content_independent, train):
  cfg, model, variables = _tiny(content_independent)
  q, k = cfg.decoder.num_queries, 3

  def groups(m):
    pred = m.predictor
    out = [pred.generic_queries(B), pred.prompt_queries(jnp.zeros((B, k, cfg.decoder.hidden_dim)), None,
                                                        see_generic=not content_independent)]
    if train:
      noise = denoising.sample_dn_noise(jax.random.key(1), B, cfg.decoder.dn_num, 1)
      out.insert(0, pred.denoising_queries(_targets(), noise))
    return query_groups.attention_mask(out)

  mask = np.asarray(model.apply(variables, method=groups))[:, 0]
  want = _reference_generic(2, 3, q, k, content_independent, train)  # m = 3 -> 2 groups fill dn_num = 6
  for b in range(B):
    np.testing.assert_array_equal(mask[b], want)


def test_refer_attention_mask_and_validity():
  """The referring layout equals the reference's; an invalid click / prompt is seen by nobody (its own rows see
  everything, their outputs ignored) and leaves the valid queries' masks unchanged."""
  cfg, model, variables = _tiny()
  c, t, k = 3, cfg.decoder.num_mask_tokens, 2

  def groups(m, click_valid, prompt_valid):
    pred = m.predictor
    return query_groups.attention_mask([pred.click_queries(jnp.full((B, c, 4), 0.5), click_valid, 1, None),
                                        pred.prompt_queries(jnp.zeros((B, k, cfg.decoder.hidden_dim)), prompt_valid,
                                                            see_generic=False)])

  full = np.asarray(model.apply(variables, None, None, method=groups))[:, 0]
  want = _reference_refer(c, t, k)
  np.testing.assert_array_equal(full[0], want)
  click_valid = jnp.asarray([[True, True, True], [True, False, True]])
  prompt_valid = jnp.asarray([[True, True], [False, True]])
  mask = np.asarray(model.apply(variables, click_valid, prompt_valid, method=groups))[:, 0]
  np.testing.assert_array_equal(mask[0], want)
  dead = np.r_[np.arange(t, 2 * t), [c * t]]  # image 1: click 1's tokens and prompt 0
  live = np.setdiff1d(np.arange(c * t + k), dead)
  assert mask[1][np.ix_(live, dead)].all() and not mask[1][dead].any()
  np.testing.assert_array_equal(mask[1][np.ix_(live, live)], want[np.ix_(live, live)])


def test_refer_click_budget_matches_reference():
  """The fixture's 3 clicks placed in a budget of 5 with 2 invalid junk clicks: the valid clicks' logits, boxes
  and IoU predictions equal the reference's."""
  name = "swint_4lvl"
  fx = load_fixture(name)
  clicks = np.asarray(fx["refer_eval/clicks"])
  junk = np.asarray([[0.9, 0.9, 0.05, 0.05]], np.float32)
  slots = [0, -1, 1, 2, -1]
  budget = np.stack([junk[0] if s < 0 else clicks[0, s] for s in slots])[None]
  valid = np.asarray([slots]) >= 0
  masks = jnp.asarray(fx["prompt/masks"][:1], jnp.float32)

  def run(m, feats, masks, clicks, valid):
    mask_features, levels = m.pixel_decoder(feats)
    prompts = m.predictor.encode_prompts(levels, masks)
    return m.predictor(levels, mask_features, task="refer", prompts=prompts, clicks=clicks, click_valid=valid)

  out = jax.jit(lambda v, *a: fixture_model(name).apply(v, *a, method=run))(
      fixture_head_variables(name), fixture_features(name, 1), masks, jnp.asarray(budget), jnp.asarray(valid))
  t = out.iou.shape[-1]
  tokens = np.concatenate([np.arange(i * t, (i + 1) * t) for i, s in enumerate(slots) if s >= 0])
  assert_close(np.swapaxes(np.asarray(out.logits), 2, 3)[..., tokens], fx["refer_eval/logits"], 1e-4, "logits")
  assert_close(np.asarray(out.boxes)[:, :, tokens], fx["refer_eval/boxes"], 1e-4, "boxes")
  assert_close(np.asarray(out.iou)[:, :, valid[0]], fx["refer_eval/ious"], 1e-4, "IoU")
  np.testing.assert_array_equal(out.groups[CLICKS].valid, np.repeat(valid, t, axis=1))


@pytest.mark.slow  # long: with `pytest -m slow`, keeping the default run under 20 minutes
def test_init_creates_every_parameter_and_entry_points():
  """Whichever task initializes the model, every checkpoint tensor exists; the model runs both tasks from images
  with prompts given as masks, and `prompt_embeddings` gives the prompt encoder's output."""
  cfg, model, zeros = _tiny()
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (B, H, W, 3)), jnp.float32)
  clicks = jnp.full((B, 2, 4), 0.4)
  refer_init = jax.eval_shape(lambda: model.init(jax.random.key(0), images, task="refer", clicks=clicks))
  assert jax.tree.structure(refer_init) == jax.tree.structure(zeros)
  convert.to_torch(zeros, cfg)  # every parameter maps to a checkpoint key and back (strict)
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda a: jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype), zeros)
  prompt_masks = jnp.zeros((B, 2, H, W)).at[:, :, 8:40, 8:40].set(1.0)

  @jax.jit
  def run(variables):
    emb = model.apply(variables, images, prompt_masks, method=model.prompt_embeddings)
    return (model.apply(variables, images, prompt_masks=prompt_masks),
            model.apply(variables, images, task="refer", prompt_masks=prompt_masks, clicks=clicks),
            model.apply(variables, images, prompts=emb))
  generic, refer, again = run(variables)
  p, q, k, d = cfg.decoder.dec_layers, cfg.decoder.num_queries, 2, cfg.decoder.hidden_dim
  assert generic.logits.shape == (p, B, q, k) and generic.masks.shape == (1, B, q, H // 4, W // 4)
  assert set(generic.groups) == {QUERIES, PROMPTS} and generic.groups[PROMPTS].hidden.shape[2:] == (k, d)
  assert refer.logits.shape == (p, B, 2 * 6, k) and refer.iou.shape == (p, B, 2, 6)
  assert_close(again.logits, generic.logits, 1e-6, "logits from prompt_embeddings")
  with pytest.raises(ValueError, match="click_noise"):
    jax.eval_shape(lambda v: model.apply(v, images, task="refer", prompts=jnp.zeros((B, k, d)), clicks=clicks,
                                         train=True), zeros)
