"""The generic task's class-prompt groups (sampling.generic_prompts; the reference's `CROSS_GPU_BATCH`, its per-GPU
grouping and its empty-image fallback; shared/reference/dinov.md section 4).

The reference side is a host transcription of `DINOv.forward_seg` (visual_openset branch),
`prepare_targets_visual_openset_batch_cross_gpu`, the decoder's `prepare_for_visual_query_from_cross_gpu_batch` /
`prepare_all_query` and the criterion's `fake` / `num_masks` handling, with one GPU per group of images."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.models.dinov import criterion as crit_lib
from dinoseg.models.dinov import defaults, sampling
from dinoseg.models.dinov.decoder import GENERIC, PROMPTS, QUERIES, DINOvOutputs
from dinoseg.models.maskdino import criterion as md_criterion
from dinoseg.models.query_groups import GroupPredictions
from dinoseg.structures import PaddedInstances

NUM_CLASSES, MAX_EXAMPLES, DUMMY_TARGETS = 10, 4, 8


# ---- host transcription of the reference


def _categories_in_reference_order(images):
  """The reference's `batch_examples_by_category` over `images` (lists of the images' instance categories):
  {category: [flat instance index]} in insertion order (image by image, each image's categories ascending, as
  `getIdx` returns them)."""
  by_category, start = {}, 0
  for cats in images:
    for c in sorted(set(cats)):
      by_category.setdefault(c, []).extend(start + i for i, x in enumerate(cats) if x == c)
    start += len(cats)
  return by_category


def reference_step(images, images_per_gpu, cross_gpu_batch):
  """What the reference does with a global batch, one GPU per `images_per_gpu` consecutive images.

  Args:
    images: one list of instance categories per image (its GT instances).
  Returns dict:
    per_gpu: the step groups per GPU (the fallback or CROSS_GPU_BATCH False);
    groups: the prompt groups, each a list of image indices;
    categories: per group the reference's slot order (slot i = categories[g][i]);
    fake: per image, its GPU's targets are `fake` (zero loss);
    normalizer: the sum over GPUs of the targets' label counts (the reference's all-reduced num_masks x world
      size; an empty image holds `default_num_instance_openset` dummy labels); world_size: the GPUs (the
      reference clamps num_masks / world size at 1: the loss normalizer is max(normalizer, world_size)).
  """
  gpus = [list(range(i, i + images_per_gpu)) for i in range(0, len(images), images_per_gpu)]
  # first call (cross_gpu=True): a GPU holding an empty image marks its targets fake
  gpu_fake = [any(len(images[i]) == 0 for i in gpu) for gpu in gpus]
  per_gpu = any(gpu_fake) or not cross_gpu_batch
  groups = gpus if per_gpu else [list(range(len(images)))]
  categories = []
  for group in groups:
    if per_gpu and any(len(images[i]) == 0 for i in group):
      categories.append(None)  # a fake GPU samples no prompts
    else:
      categories.append(list(_categories_in_reference_order([images[i] for i in group])))
  fake = [gpu_fake[i // images_per_gpu] for i in range(len(images))]
  normalizer = sum(len(cats) if cats else DUMMY_TARGETS for cats in images)
  return dict(per_gpu=per_gpu, groups=groups, categories=categories, fake=fake, normalizer=normalizer,
              world_size=len(gpus))


# ---- helpers


def _batch(images, t=6):
  labels = np.zeros((len(images), t), np.int32)
  valid = np.zeros((len(images), t), bool)
  for b, cats in enumerate(images):
    labels[b, :len(cats)] = cats
    valid[b, :len(cats)] = True
  return jnp.asarray(labels), jnp.asarray(valid)


def _plan(images, *, cross_gpu_batch=True, images_per_group=2, fallback="reference", t=6):
  labels, valid = _batch(images, t)
  return jax.jit(lambda key: sampling.generic_prompts(
      key, labels, valid, num_classes=NUM_CLASSES, max_examples=MAX_EXAMPLES, cross_gpu_batch=cross_gpu_batch,
      images_per_group=images_per_group, empty_image_fallback=fallback, empty_image_targets=DUMMY_TARGETS))


def _check_against_reference(plan, images, ref, t):
  """The plan's slots, target labels, examples and skipped images against `reference_step`'s."""
  b = len(images)
  assert bool(plan.use_grouped) == ref["per_gpu"]
  prompts = plan.grouped if ref["per_gpu"] else plan.shared
  members = np.asarray(prompts.members)
  slot_valid = np.asarray(prompts.slot_valid)
  if members.ndim == 2:
    members, slot_valid = members[None], slot_valid[None]
  assert members.shape[0] == len(ref["groups"])
  labels, valid = np.asarray(plan.labels), np.asarray(plan.valid)
  assert np.asarray(plan.image_active).tolist() == [not f for f in ref["fake"]]
  np.testing.assert_array_equal(np.asarray(plan.normalizer), max(ref["normalizer"], ref["world_size"]))
  for g, group in enumerate(ref["groups"]):
    cats = ref["categories"][g]
    if cats is None:  # a skipped group: none of its targets takes part
      assert not valid[group].any()
      continue
    # the slots hold the group's categories; the reference orders them by first appearance, dinoseg ascending
    # (a permutation of the prompt columns: no loss term depends on it)
    assert int(slot_valid[g].sum()) == len(cats) and slot_valid[g, :len(cats)].all()
    slot_category = sorted(cats)
    for i in group:
      n = len(images[i])
      assert valid[i, :n].all() and not valid[i, n:].any()
      assert [slot_category[s] for s in labels[i, :n]] == list(images[i])  # each target's slot is its category
    # examples: 1..min(4, count) instances of the slot's category from this group only, averaged
    w = members[g].reshape(members.shape[1], len(group), t)
    for s, cat in enumerate(slot_category):
      used = w[s] > 0
      count = sum(c == cat for i in group for c in images[i])
      assert 1 <= used.sum() <= min(MAX_EXAMPLES, count)
      np.testing.assert_allclose(w[s][used], 1.0 / used.sum(), rtol=1e-6)
      for j, i in enumerate(group):
        assert all(images[i][k] == cat for k in np.nonzero(used[j])[0])
    assert not w[len(cats):].any()


CASES = [
    [[5, 1, 5], [1, 9], [2, 2, 7], [0]],  # no empty image
    [[5, 1, 5], [], [2, 2, 7], [3, 3]],  # image 1 empty: its GPU (images 0, 1) is fake
    [[4], [4, 4], [6, 1, 6, 6], []],  # image 3 empty
    [[], [], [8, 8], [8]],  # a whole GPU empty
]


@pytest.mark.parametrize("cross_gpu_batch", [True, False])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_grouping_matches_a_transcription_of_the_reference(case, cross_gpu_batch):
  images, t = CASES[case], 6
  ref = reference_step(images, 2, cross_gpu_batch)
  sample = _plan(images, cross_gpu_batch=cross_gpu_batch, images_per_group=2, t=t)
  for seed in range(4):
    _check_against_reference(sample(jax.random.key(seed)), images, ref, t)


def test_per_gpu_grouping_with_one_image_per_group():
  """The released setting (1 COCO image per GPU): each image's prompts are its own categories."""
  images, t = [[5, 1, 5], [1, 9], [2, 2, 7], [0]], 6
  plan = _plan(images, cross_gpu_batch=False, images_per_group=1, t=t)(jax.random.key(0))
  _check_against_reference(plan, images, reference_step(images, 1, False), t)
  emb = jax.random.normal(jax.random.key(1), (4, t, 3))
  prompts, prompt_valid = plan.per_image(emb)
  members = np.asarray(plan.grouped.members)  # (4, K, T)
  for b in range(4):  # image b's prompts average only its own embeddings
    np.testing.assert_allclose(np.asarray(prompts[b]), members[b] @ np.asarray(emb[b]), rtol=1e-6, atol=1e-6)
    assert np.asarray(prompt_valid[b]).sum() == len(set(images[b]))


def test_one_group_is_the_global_path_bit_for_bit():
  images, t = [[5, 1, 5], [1, 9], [2, 2, 7], [0]], 6
  labels, valid = _batch(images, t)
  emb = jax.random.normal(jax.random.key(7), (4, t, 16))
  kw = dict(num_classes=NUM_CLASSES, max_examples=MAX_EXAMPLES)
  for seed in range(3):
    key = jax.random.key(seed)
    shared = sampling.class_prompts(key, labels, valid, num_slots=min(NUM_CLASSES, 4 * t), **kw)
    one = sampling.group_class_prompts(key, labels, valid, images_per_group=4, num_slots=min(NUM_CLASSES, 4 * t),
                                       **kw)
    for a, b in ((one.members[0], shared.members), (one.slot_valid[0], shared.slot_valid),
                 (one.labels, shared.labels), (one.valid, shared.valid)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the task's plan: cross_gpu_batch=False with one group of the whole batch == the global path (== today's)
    glob = sampling.generic_prompts(key, labels, valid, cross_gpu_batch=True, **kw)
    grouped = sampling.generic_prompts(key, labels, valid, cross_gpu_batch=False, images_per_group=4, **kw)
    ref_none = sampling.generic_prompts(key, labels, valid, cross_gpu_batch=True, images_per_group=2,
                                        empty_image_fallback="reference", **kw)
    assert glob.grouped is None and glob.image_active is None and glob.normalizer is None
    np.testing.assert_array_equal(np.asarray(glob.shared.members), np.asarray(shared.members))
    expected = (shared.members @ emb.reshape(4 * t, -1))
    for plan in (glob, grouped, ref_none):  # no empty image: the fallback mode keeps the global prompts
      prompts, prompt_valid = plan.per_image(emb)
      np.testing.assert_array_equal(np.asarray(prompts), np.broadcast_to(np.asarray(expected), prompts.shape))
      np.testing.assert_array_equal(np.asarray(prompt_valid), np.broadcast_to(np.asarray(shared.slot_valid),
                                                                              prompt_valid.shape))
      np.testing.assert_array_equal(np.asarray(plan.labels), np.asarray(shared.labels))
      np.testing.assert_array_equal(np.asarray(plan.valid), np.asarray(shared.valid))
    assert float(ref_none.normalizer) == float(np.asarray(valid).sum()) and np.asarray(ref_none.image_active).all()


def test_fallback_switches_on_exactly_when_an_image_is_empty():
  t = 6
  labels = np.asarray([[5, 1, 5, 0, 0, 0], [1, 9, 0, 0, 0, 0], [2, 2, 7, 0, 0, 0], [3, 0, 0, 0, 0, 0]], np.int32)
  full = np.asarray([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], bool)
  run = {fb: jax.jit(lambda key, lb, v, fb=fb: sampling.generic_prompts(
      key, lb, v, num_classes=NUM_CLASSES, max_examples=MAX_EXAMPLES, images_per_group=2, empty_image_fallback=fb,
      empty_image_targets=DUMMY_TARGETS)) for fb in ("reference", "none")}
  for empty in ([], [0], [1], [3], [0, 3], [2, 3]):
    valid = full.copy()
    valid[empty] = False
    plan = run["reference"](jax.random.key(0), jnp.asarray(labels), jnp.asarray(valid))
    assert bool(plan.use_grouped) == bool(empty)
    skipped = {i for e in empty for i in (2 * (e // 2), 2 * (e // 2) + 1)}
    assert np.asarray(plan.image_active).tolist() == [i not in skipped for i in range(4)]
    images = [labels[b][valid[b]].tolist() for b in range(4)]
    _check_against_reference(plan, images, reference_step(images, 2, True), t)
    plain = run["none"](jax.random.key(0), jnp.asarray(labels), jnp.asarray(valid))
    assert not bool(plain.use_grouped) and plain.image_active is None  # "none" never switches
    np.testing.assert_array_equal(np.asarray(plain.valid), valid)
  # an image whose instances all have out-of-range categories counts as empty (no usable instance)
  bad = labels.copy()
  bad[1, :2] = NUM_CLASSES
  plan = run["reference"](jax.random.key(0), jnp.asarray(bad), jnp.asarray(full))
  assert bool(plan.use_grouped) and np.asarray(plan.image_active).tolist() == [False, False, True, True]


def _outputs(key, b, q=5, k=4, p=2, hw=8):
  ks = jax.random.split(key, 3)
  queries = GroupPredictions(logits=jax.random.normal(ks[0], (p, b, q, k)),
                             boxes=jax.nn.sigmoid(jax.random.normal(ks[1], (p, b, q, 4))),
                             masks=jax.random.normal(ks[2], (p, b, q, hw, hw)), valid=jnp.ones((b, q), bool))
  prompts = GroupPredictions(logits=None, boxes=None, masks=None, valid=jnp.ones((b, k), bool))
  return DINOvOutputs(groups={QUERIES: queries, PROMPTS: prompts}, task=GENERIC)


def _criterion():
  loss = defaults.loss_config()
  loss.num_points = 16
  return crit_lib.DINOvCriterion(loss, defaults.prompt_config(), dn="no")


def _targets(b, t=3, hw=32):
  masks = np.zeros((b, t, hw, hw), np.float32)
  boxes = np.zeros((b, t, 4), np.float32)
  for i in range(b):
    for j in range(t):
      y, x = 2 + 3 * j, 4 + 5 * i
      masks[i, j, y:y + 10, x:x + 8] = 1
      boxes[i, j] = [(x + 4) / hw, (y + 5) / hw, 8 / hw, 10 / hw]
  labels = np.tile(np.arange(t, dtype=np.int32) % 2, (b, 1))
  return PaddedInstances(labels=jnp.asarray(labels), boxes=jnp.asarray(boxes), valid=jnp.ones((b, t), bool),
                         masks=jnp.asarray(masks))


def test_skipped_group_images_add_no_generic_loss():
  """criterion.generic with `image_active`: the skipped images' outputs get exactly zero gradient (their focal
  terms too), the others' do not, and the loss scales with the given normalizer."""
  b = 4
  crit, outputs, targets = _criterion(), _outputs(jax.random.key(0), b), _targets(b)
  active = jnp.asarray([False, False, True, True])
  targets = targets.replace(valid=targets.valid & active[:, None])  # as generic_prompts leaves them
  draws = md_criterion.random_draws(jax.random.key(5))

  def total(logits, boxes, masks, normalizer):
    q = outputs.groups[QUERIES].replace(logits=logits, boxes=boxes, masks=masks)
    out = outputs.replace(groups={**outputs.groups, QUERIES: q})
    return md_criterion.total_loss(crit.generic(out, targets, draws, normalizer=normalizer, image_active=active))

  q = outputs.groups[QUERIES]
  value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2)))(q.logits, q.boxes, q.masks, 6.0)
  assert float(value) > 0
  for g in grads:
    g = np.asarray(g)
    assert not g[:, :2].any() and np.abs(g[:, 2:]).sum() > 0
  # the skipped images' predictions do not matter at all
  noise = jax.random.normal(jax.random.key(9), q.logits.shape) * 5
  moved = q.logits.at[:, :2].add(noise[:, :2])
  np.testing.assert_allclose(float(jax.jit(total)(moved, q.boxes, q.masks, 6.0)), float(value), rtol=1e-6)
  # every term is divided by the normalizer
  np.testing.assert_allclose(float(jax.jit(total)(q.logits, q.boxes, q.masks, 12.0)), float(value) / 2, rtol=1e-5)
  # without image_active, the images without targets still get focal (no-object) terms
  free = jax.jit(jax.grad(lambda lg: md_criterion.total_loss(crit.generic(
      outputs.replace(groups={**outputs.groups, QUERIES: q.replace(logits=lg)}), targets, draws))))(q.logits)
  assert np.abs(np.asarray(free)[:, :2]).sum() > 0


def test_one_compiled_step_with_and_without_empty_images():
  """Prompts, per-image prompt sets and the generic criterion in one jitted function: batches with and without
  empty images run the same trace (the switch is an on-device value)."""
  b, t, d = 4, 3, 8
  crit, targets = _criterion(), _targets(b, t)
  traces = []

  @jax.jit
  def step(key, labels, valid, emb):
    traces.append(1)
    plan = sampling.generic_prompts(key, labels, valid, num_classes=NUM_CLASSES, max_examples=MAX_EXAMPLES,
                                    images_per_group=2, empty_image_fallback="reference")
    prompts, prompt_valid = plan.per_image(emb)
    outputs = _outputs(jax.random.key(3), b, k=prompts.shape[1])
    outputs = outputs.replace(groups={**outputs.groups, PROMPTS: outputs.groups[PROMPTS].replace(valid=prompt_valid)})
    tg = targets.replace(labels=plan.labels, valid=plan.valid)
    losses = crit.generic(outputs, tg, md_criterion.random_draws(key), normalizer=plan.normalizer,
                          image_active=plan.image_active)
    return md_criterion.total_loss(losses), plan.use_grouped, prompts

  labels = jnp.asarray([[1, 2, 1], [2, 2, 3], [4, 1, 4], [3, 3, 3]], jnp.int32)
  emb = jax.random.normal(jax.random.key(2), (b, t, d))
  full = jnp.ones((b, t), bool)
  loss_full, grouped_full, prompts_full = step(jax.random.key(0), labels, full, emb)
  loss_empty, grouped_empty, prompts_empty = step(jax.random.key(0), labels, full.at[3].set(False), emb)
  assert len(traces) == 1
  assert not bool(grouped_full) and bool(grouped_empty)
  assert np.isfinite(float(loss_full)) and np.isfinite(float(loss_empty)) and float(loss_empty) != float(loss_full)
  # the global prompts are shared by all images, the per-group ones differ between the groups
  assert np.array_equal(np.asarray(prompts_full[0]), np.asarray(prompts_full[2]))
  assert not np.array_equal(np.asarray(prompts_empty[0]), np.asarray(prompts_empty[2]))


def test_bad_prompt_group_settings_are_refused():
  from dinoseg.config import ConfigError, load_config  # noqa: PLC0415
  from dinoseg.errors import UserError  # noqa: PLC0415
  spec = "configs/dinov/swint_sam_coco.py:tiny"  # COCO batch of 2
  config = load_config(spec, ["prompts.images_per_group=2", "prompts.cross_gpu_batch=False"])
  assert config.prompts.images_per_group == 2
  with pytest.raises(ConfigError, match="multiple of prompts.images_per_group") as e:
    load_config(spec, ["prompts.images_per_group=3"])
  assert isinstance(e.value, UserError) and "\n" not in str(e.value)
  for override, match in (("prompts.images_per_group=0", "integer >= 1"),
                          ("prompts.empty_image_fallback=sometimes", "empty_image_fallback")):
    with pytest.raises(ConfigError, match=match):
      load_config(spec, [override])
  # the task refuses a batch that is not a whole number of groups (a UserValueError, checked at trace time)
  from dinoseg.errors import UserValueError  # noqa: PLC0415
  from dinoseg.models.dinov.task import _check_prompt_groups  # noqa: PLC0415
  with pytest.raises(UserValueError, match="multiple of prompts.images_per_group"):
    _check_prompt_groups(config.prompts, batch_size=3)
  with pytest.raises(ValueError, match="whole number of groups"):
    sampling.generic_prompts(jax.random.key(0), *_batch([[1], [2], [3]]), num_classes=NUM_CLASSES,
                             max_examples=MAX_EXAMPLES, cross_gpu_batch=False, images_per_group=2)


@pytest.mark.slow
def test_tiny_generic_step_with_the_reference_fallback():
  """The task's jitted generic loss (tiny config, `empty_image_fallback="reference"`, one image per group, the
  per-group examples as scribbles): one trace for batches with and without an empty image; with one, the step
  uses the groups and the empty image's group gets exactly zero gradient while the other image's does not (about
  4 min on 2 busy cores, most of it compiling)."""
  from dinoseg.config import load_config  # noqa: PLC0415
  from dinoseg.train import task as task_lib  # noqa: PLC0415
  config = load_config("configs/dinov/swint_sam_coco.py:tiny",
                       ["prompts.empty_image_fallback=reference", "prompts.group_examples_as_shapes=True"])
  task = task_lib.build(config)
  params = jax.jit(task.init_variables)(jax.random.key(0))["params"]
  b, t, h, w = 2, 4, 64, 64
  rng = np.random.default_rng(0)
  masks = np.zeros((b, t, h, w), np.uint8)
  boxes = np.zeros((b, t, 4), np.float32)
  for i in range(b):
    for j in range(3):
      y, x = rng.integers(0, 40, 2)
      masks[i, j, y:y + 20, x:x + 20] = 1
      boxes[i, j] = [(x + 10) / w, (y + 10) / h, 20 / w, 20 / h]
  full = np.asarray([[1, 1, 1, 0]] * b, bool)
  batch = {"coco.valid_hw": jnp.full((b, 2), 64, jnp.int32), "coco.masks": jnp.asarray(masks),
           "coco.labels": jnp.asarray([[1, 3, 1, 0], [3, 2, 2, 0]], jnp.int32), "coco.boxes": jnp.asarray(boxes)}
  image = jnp.asarray(rng.uniform(0, 255, (b, h, w, 3)), jnp.float32)
  traces = []

  def total(img, valid, key):
    traces.append(1)
    inputs = {**batch, "coco.image": img, "coco.valid": valid}
    losses, metrics = task._generic_loss(params, {}, inputs, key)  # noqa: SLF001
    return md_criterion.total_loss(losses), metrics

  step = jax.jit(jax.value_and_grad(total, has_aux=True))
  (loss_full, m_full), g_full = step(image, jnp.asarray(full), jax.random.key(1))
  (loss_empty, m_empty), g_empty = step(image, jnp.asarray(full).at[1].set(False), jax.random.key(1))
  assert len(traces) == 1
  assert float(m_full["generic_grouped"]) == 0.0 and float(m_empty["generic_grouped"]) == 1.0
  assert float(m_full["generic_images_counted"]) == 2.0 and float(m_empty["generic_images_counted"]) == 1.0
  assert np.isfinite(float(loss_full)) and np.isfinite(float(loss_empty))
  g_full, g_empty = np.asarray(g_full), np.asarray(g_empty)
  assert np.abs(g_full[0]).sum() > 0 and np.abs(g_full[1]).sum() > 0
  assert np.abs(g_empty[0]).sum() > 0 and not g_empty[1].any()
