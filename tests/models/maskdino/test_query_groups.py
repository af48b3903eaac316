"""The query-group API (dinoseg.models.query_groups) on Mask DINO's decoder: the attention-mask rules, a
third group that leaves Mask DINO's outputs bit-identical, and DINOv's generic layout
`[DN | generic | K prompts]` built without touching decoder or criterion code."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.config import load_config
from dinoseg.models import query_groups
from dinoseg.models.maskdino import criterion as crit_lib
from dinoseg.models.maskdino import denoising
from dinoseg.models.maskdino.model import build_model
from dinoseg.models.query_groups import QueryGroup
from dinoseg.structures import PaddedInstances

B, H, W, T = 2, 64, 64, 4


def _group(name, n, d=8, valid=None, **kw):
  content = jnp.asarray(np.random.default_rng(len(name)).standard_normal((B, n, d)), jnp.float32)
  valid = jnp.ones((B, n), bool) if valid is None else jnp.asarray(valid)
  return QueryGroup(name=name, content=content, boxes=jnp.zeros((B, n, 4)), valid=valid, **kw)


def test_attention_mask_rules():
  a = _group("a", 3, block=jnp.asarray([[0, 0, 1]] * B))
  b = _group("b", 2, valid=[[True, False], [True, True]], sees=("a",), seen_by=("a", "b"))
  c = _group("c", 1, sees=(), seen_by=())
  mask = np.asarray(query_groups.attention_mask([a, b, c]))
  assert mask.shape == (B, 1, 6, 6)
  m = mask[0, 0]
  # a: blocks {0, 1} and {2} within the group; sees b's valid query 3 (b is seen by a), never c
  np.testing.assert_array_equal(m[0], [0, 0, 1, 0, 1, 1])
  np.testing.assert_array_equal(m[2], [1, 1, 0, 0, 1, 1])
  # b sees only a (not itself), c is seen by nobody
  np.testing.assert_array_equal(m[3], [0, 0, 0, 1, 1, 1])
  # c sees nothing: a fully blocked row is unblocked
  np.testing.assert_array_equal(m[5], [0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(mask[1, 0, 0], [0, 0, 1, 0, 0, 1])  # image 1: b's second query is valid
  assert np.asarray(query_groups.attention_mask([c], unblock_empty_rows=False)).all()
  with pytest.raises(ValueError, match="unknown groups"):
    query_groups.attention_mask([_group("x", 1, sees=("nope",))])
  with pytest.raises(ValueError, match="unique"):
    query_groups.attention_mask([a, a])


def _setup(two_stage=True):
  config = load_config("configs/maskdino/quickstart.py:tiny")
  m = config.model
  if not two_stage:  # DINOv's decoder: learned generic queries and anchors, no initial prediction
    m.decoder.two_stage, m.decoder.initial_pred, m.decoder.initialize_box_type = False, False, "no"
  model = build_model(m)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (B, H, W, 3)), jnp.float32)
  valid = np.zeros((B, T), bool)
  valid[0, :3] = valid[1, :2] = True
  masks = np.zeros((B, T, H, W), np.uint8)
  boxes = np.zeros((B, T, 4), np.float32)
  for i, j in zip(*np.nonzero(valid)):
    y0, x0 = rng.integers(0, 32, 2)
    masks[i, j, y0:y0 + 24, x0:x0 + 20] = 1
    boxes[i, j] = ((x0 + 10) / W, (y0 + 12) / H, 20 / W, 24 / H)
  targets = PaddedInstances(labels=jnp.asarray(rng.integers(0, m.num_classes, (B, T)), jnp.int32),
                            boxes=jnp.asarray(boxes), valid=jnp.asarray(valid), masks=jnp.asarray(masks))
  noise = denoising.sample_dn_noise(jax.random.key(1), B, m.decoder.dn_num, m.num_classes)
  variables = model.init(jax.random.key(0), images)
  return config, model, variables, images, targets, noise


@pytest.mark.slow  # long: with `pytest -m slow`, keeping the default run under 20 minutes
def test_a_dummy_group_leaves_mask_dino_bit_identical():
  """A third group whose queries see nothing and are seen by nothing: the DN, matching and interm
  predictions and the losses are bit-identical to Mask DINO's two groups alone (the dummy fits in the
  decoder's query padding, so both programs have the same shapes)."""
  config, model, variables, images, targets, noise = _setup()
  dec = config.model.decoder
  d, n = dec.hidden_dim, dec.dn_num + dec.num_queries
  size = (-n) % model.predictor.query_pad_multiple - 1
  assert size >= 1, "the tiny config leaves no room in the query padding"
  dummy = QueryGroup(name="dummy", content=jnp.ones((B, size, d)), boxes=jnp.zeros((B, size, 4)),
                     valid=jnp.ones((B, size), bool), sees=(), seen_by=())
  criterion = crit_lib.SetCriterion(config.model.num_classes, config.loss)
  draws = crit_lib.random_draws(jax.random.key(2))

  def run(extra):
    def losses_fn(variables):
      out = model.apply(variables, images, train=True, targets=targets, dn_noise=noise, extra_groups=extra)
      policies = dict(criterion.default_policies(out), **{g.name: None for g in extra})
      return out, criterion(out, targets, draws, policies=policies)
    return jax.jit(losses_fn)(variables)

  out2, losses2 = run(())
  out3, losses3 = run((dummy,))
  assert set(out2.groups) == {"dn", "queries"} and set(out3.groups) == {"dn", "queries", "dummy"}  # jit sorts dict keys
  assert out3.groups["dummy"].logits.shape[:3] == (dec.dec_layers + 1, B, size)
  assert np.isfinite(np.asarray(out3.groups["dummy"].masks)).all()
  for name in ("dn", "queries"):
    for field in ("logits", "boxes", "masks", "hidden"):
      np.testing.assert_array_equal(getattr(out3.groups[name], field), getattr(out2.groups[name], field),
                                    err_msg=f"{name}.{field}")
  for field in ("logits", "boxes", "masks"):
    np.testing.assert_array_equal(getattr(out3.interm, field), getattr(out2.interm, field))
  assert set(losses3) == set(losses2)
  for key in losses2:
    np.testing.assert_array_equal(losses3[key], losses2[key], err_msg=key)
  with pytest.raises(ValueError, match="no loss policy"):
    criterion(out3, targets, draws)


def _dinov_reference_mask(num_dn, single_pad, num_generic, num_content, content_independent=True):
  """DINOv's `prepare_all_query` training mask (dinov_openset_decoder.py), transcribed: Mask DINO's DN
  mask over [DN | generic], content queries isolated from each other (one token per prompt), content
  rows blocked from DN (and from generic with CONTENT_INDEPENDENT), nobody else sees content."""
  n = num_dn + num_generic + num_content
  mask = np.ones((n, n), bool)
  g = num_dn + num_generic
  generic = np.zeros((g, g), bool)
  generic[num_dn:, :num_dn] = True
  for i in range(num_dn // single_pad):
    rows = slice(single_pad * i, single_pad * (i + 1))
    generic[rows, :num_dn] = True
    generic[rows, rows] = False
  mask[:g, :g] = generic
  mask[g:, g:] = ~np.eye(num_content, dtype=bool)
  mask[g:, num_dn:g] = content_independent
  return mask


@pytest.mark.slow  # DINOv's own model tests (tests/models/dinov) check its real layout in the default run
def test_dinov_generic_layout_through_the_group_api():
  """[DN | generic | K prompts] with DINOv's visibility rules and a per-image prompt count, decoded by
  Mask DINO's decoder and scored by its criterion through the group API only."""
  config, model, variables, images, targets, noise = _setup(two_stage=False)
  dec = config.model.decoder
  k, d = 4, dec.hidden_dim
  prompt_valid = jnp.asarray([[True] * 4, [True, True, True, False]])  # image 1 has 3 prompts

  def prompts(content):
    return QueryGroup(name="prompts", content=content, boxes=jnp.broadcast_to(jnp.asarray([-11.5, -11.5, 11.5, 11.5]),
                                                                               (B, k, 4)),
                      valid=prompt_valid, block=jnp.broadcast_to(jnp.arange(k), (B, k)),
                      sees=("prompts",), seen_by=("prompts",))

  content = jnp.asarray(np.random.default_rng(3).standard_normal((B, k, d)), jnp.float32)
  group = prompts(content)

  # The composed mask equals DINOv's (DN as the reference builds it: m = 3 -> 2 groups of 3 in 6 slots).
  dn = denoising.denoising_group(targets.labels, targets.boxes, targets.valid, noise, lambda x: jnp.zeros(x.shape + (d,)),
                                 dn_num=dec.dn_num, noise_scale=dec.dn_noise_scale)
  generic = QueryGroup(name="queries", content=jnp.zeros((B, dec.num_queries, d)),
                       boxes=jnp.zeros((B, dec.num_queries, 4)), valid=jnp.ones((B, dec.num_queries), bool))
  mask = np.asarray(query_groups.attention_mask([dn, generic, group]))[:, 0]
  assert dec.dn_num == 6
  want = _dinov_reference_mask(6, 3, dec.num_queries, k)
  np.testing.assert_array_equal(mask[0], want)
  last = 6 + dec.num_queries + 3  # image 1's missing prompt: nobody sees it, its own row sees everything
  want1 = want.copy()
  want1[:, last] = True
  want1[last] = False
  np.testing.assert_array_equal(mask[1], want1)

  def forward(content):
    return model.apply(variables, images, train=True, targets=targets, dn_noise=noise, extra_groups=(prompts(content),))
  out = jax.jit(forward)(content)
  assert set(out.groups) == {"dn", "queries", "prompts"} and out.interm is None
  p = dec.dec_layers  # no initial prediction
  assert out.groups["prompts"].logits.shape == (p, B, k, config.model.num_classes)
  assert out.groups["prompts"].masks.shape[:3] == (p, B, k)
  assert out.groups["prompts"].hidden.shape == (p, B, k, d)
  np.testing.assert_array_equal(out.groups["prompts"].valid, prompt_valid)
  # Visibility in the outputs: changing prompt 0 changes prompt 0 only (and image 1's missing prompt 3,
  # whose fully blocked row sees everything; its output is ignored).
  changed = jax.jit(forward)(content.at[:, 0].add(1.0))
  for name in ("dn", "queries"):
    np.testing.assert_array_equal(changed.groups[name].logits, out.groups[name].logits)
  diff = np.abs(np.asarray(changed.groups["prompts"].logits - out.groups["prompts"].logits)).max(axis=(0, 3))
  assert (diff[:, 0] > 0).all() and (diff[0, 1:] == 0).all() and (diff[1, 1:3] == 0).all()

  # The criterion takes a policy per group: Mask DINO's two, none for the prompts.
  criterion = crit_lib.SetCriterion(config.model.num_classes, config.loss)
  policies = {"queries": crit_lib.HungarianLoss(), "dn": crit_lib.FixedAssignmentLoss(first_layer=1), "prompts": None}
  losses = criterion(out, targets, crit_lib.random_draws(jax.random.key(0)), policies=policies)
  assert all(np.isfinite(float(v)) for v in losses.values())
  assert "loss_ce_dn" in losses and "loss_ce_dn_0" not in losses and "loss_ce_interm" not in losses  # DN from layer 1
