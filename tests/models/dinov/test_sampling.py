"""DINOv's training shape sampler (sampling.shape_prompts, the reference's `ShapeSampler` with the candidates
"Scribble", "Point", "Box", "Mask"): each candidate's shape, the candidate mix, empty masks, one trace, the
config checks, and its use by the class-prompt sampling and the trainer task."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.models.dinov import sampling

ALL = sampling.SHAPE_CANDIDATES  # ("Scribble", "Point", "Box", "Mask")


def one_hot(name):
  return tuple(1.0 if c == name else 0.0 for c in ALL)


def example_masks():
  """(2, 4, 24, 32) uint8: an L shape, a ring (a hole inside its box), a single pixel, an empty mask; image 1
  holds a rectangle touching the border and three empty masks."""
  m = np.zeros((2, 4, 24, 32), np.uint8)
  m[0, 0, 2:20, 3:8] = 1
  m[0, 0, 15:20, 3:25] = 1  # L shape
  m[0, 1, 4:16, 12:28] = 1
  m[0, 1, 7:13, 16:24] = 0  # ring
  m[0, 2, 21, 30] = 1  # one pixel
  m[1, 0, 0:10, 20:32] = 1
  return m


def bbox_rectangle(mask):
  out = np.zeros(mask.shape, bool)
  ys, xs = np.nonzero(mask)
  if len(ys):
    out[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
  return out


def test_scribble_candidate_is_the_existing_scribbles():
  """"Scribble" alone (or with zero-weight others) gives exactly `scribbles(key, ...)`, whose expectations
  (inside the mask, strokes not the whole mask, empty for an empty mask) still hold."""
  masks = jnp.asarray(example_masks())
  key = jax.random.key(4)

  @jax.jit
  def draw(key, masks):
    return (sampling.scribbles(key, masks, num_strokes=3),
            sampling.shape_prompts(key, masks, candidates=("Scribble",), probs=(1.0,), num_strokes=3),
            sampling.shape_prompts(key, masks, candidates=ALL, probs=one_hot("Scribble"), num_strokes=3))

  expected, alone, mixed = draw(key, masks)
  expected = np.asarray(expected)
  for s in (alone, mixed):
    np.testing.assert_array_equal(np.asarray(s.masks), expected)
    assert (np.asarray(s.kind) == 0).all()
    np.testing.assert_array_equal(np.asarray(s.nonempty), expected.any(axis=(2, 3)))
  m = example_masks()
  assert (expected <= m).all() and expected[0, 0].sum() > 0 and expected[1, 0].sum() > 0
  assert expected[0, 0].sum() < m[0, 0].sum()
  assert expected[0, 3].sum() == 0 and expected[1, 1:].sum() == 0


@pytest.mark.parametrize("radius", [3.0, 1.5, 0.0])
def test_point_candidate_is_a_disc_around_a_mask_pixel(radius):
  m = example_masks()
  h, w = m.shape[2:]
  gy, gx = np.mgrid[:h, :w]
  draw = jax.jit(lambda key, masks: sampling.shape_prompts(key, masks, candidates=ALL, probs=one_hot("Point"),
                                                           point_radius=radius))
  centres = set()
  for seed in range(6):
    s = draw(jax.random.key(seed), jnp.asarray(m))
    out, nonempty = np.asarray(s.masks) > 0, np.asarray(s.nonempty)
    assert (np.asarray(s.kind) == ALL.index("Point")).all()
    np.testing.assert_array_equal(nonempty, m.any(axis=(2, 3)))
    for b in range(2):
      for k in range(4):
        if not m[b, k].any():
          assert not out[b, k].any()
          continue
        # the shape is the disc of `radius` around one pixel of the mask, cut to the mask
        found = [(y, x) for y, x in zip(*np.nonzero(m[b, k]))
                 if ((((gy - y) ** 2 + (gx - x) ** 2) <= radius ** 2) & (m[b, k] > 0) == out[b, k]).all()]
        assert found, (b, k, seed)
        centres.add((b, k, found[0]))
  assert len({c for c in centres if c[:2] == (0, 1)}) > 1  # the click moves with the key


def test_point_disc_has_the_configured_radius():
  """Away from the border a radius-3 click is the 29-pixel disc (7 pixels across) centred on the drawn pixel."""
  m = jnp.ones((1, 1, 41, 41), jnp.uint8)
  interior = 0
  for seed in range(12):
    out = np.asarray(sampling.point_discs(jax.random.key(seed), m, 3.0))[0, 0]
    ys, xs = np.nonzero(out)
    if ys.min() > 0 and xs.min() > 0 and ys.max() < 40 and xs.max() < 40:
      interior += 1
      assert out.sum() == 29 and ys.max() - ys.min() == 6 and xs.max() - xs.min() == 6
      assert out[int(ys.mean()), int(xs.mean())] and ys.mean() % 1 == 0 and xs.mean() % 1 == 0
  assert interior >= 6


def test_box_candidate_is_the_filled_bounding_box():
  m = example_masks()
  s = sampling.shape_prompts(jax.random.key(0), jnp.asarray(m), candidates=ALL, probs=one_hot("Box"))
  out = np.asarray(s.masks)
  for b in range(2):
    for k in range(4):
      np.testing.assert_array_equal(out[b, k] > 0, bbox_rectangle(m[b, k]))
  assert out[0, 0].sum() == 18 * 22 and out[0, 1].sum() == 12 * 16 and out[0, 2].sum() == 1
  np.testing.assert_array_equal(np.asarray(s.nonempty), m.any(axis=(2, 3)))
  np.testing.assert_array_equal(np.asarray(sampling.box_shapes(jnp.asarray(m))), out > 0)


def test_mask_candidate_is_the_mask():
  m = example_masks()
  s = sampling.shape_prompts(jax.random.key(0), jnp.asarray(m), candidates=("Mask",), probs=(2.0,))
  np.testing.assert_array_equal(np.asarray(s.masks), m.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(s.nonempty), m.any(axis=(2, 3)))


def test_empty_masks_give_empty_prompts_for_every_candidate():
  m = jnp.zeros((2, 3, 16, 16), jnp.uint8)
  s = jax.jit(lambda key, masks: sampling.shape_prompts(key, masks, candidates=ALL, probs=(1.0, 1.0, 1.0, 1.0),
                                                        num_strokes=2))(jax.random.key(1), m)
  assert not np.asarray(s.masks).any() and not np.asarray(s.nonempty).any()
  assert set(np.unique(np.asarray(s.kind)).tolist()) <= set(range(4))


def test_candidate_mix_follows_the_probabilities():
  """40 x 100 masks (an L shape: Box, Mask, Point and Scribble differ), fixed seed: every frequency within
  0.03 of its probability (over 6 binomial standard deviations), a zero-weight candidate never drawn, and each
  mask's shape the one of its drawn candidate."""
  m = np.zeros((40, 100, 12, 12), np.uint8)
  m[..., 1:11, 1:4] = 1
  m[..., 8:11, 1:11] = 1
  probs = (0.2, 0.5, 0.0, 0.3)  # Scribble, Point, Box (never), Mask
  s = jax.jit(lambda key, masks: sampling.shape_prompts(key, masks, candidates=ALL, probs=probs, point_radius=1.0,
                                                        num_strokes=1, stroke_presets=("rand_curve_small",),
                                                        stroke_probs=(1.0,)))(jax.random.key(0), jnp.asarray(m))
  kind, out = np.asarray(s.kind), np.asarray(s.masks) > 0
  freq = np.bincount(kind.reshape(-1), minlength=4) / kind.size
  np.testing.assert_allclose(freq, probs, atol=0.03)
  assert freq[2] == 0
  is_mask = (out == (m > 0)).all(axis=(2, 3))
  assert is_mask[kind == 3].all() and not is_mask[kind == 1].any()
  assert (out.sum(axis=(2, 3))[kind == 1] <= 5).all()  # a radius-1 disc: at most 5 pixels
  assert (out <= (m > 0)).all()


def test_shape_prompts_trace_once():
  traces = []

  def sample(key, masks):
    traces.append(1)
    return sampling.shape_prompts(key, masks, candidates=ALL, probs=(0.25, 0.25, 0.25, 0.25))

  f = jax.jit(sample)
  m = example_masks()
  first = f(jax.random.key(0), jnp.asarray(m))
  second = f(jax.random.key(1), jnp.asarray(m[::-1].copy()))
  jax.block_until_ready((first, second))
  assert len(traces) == 1
  assert (np.asarray(first.kind) != np.asarray(second.kind)).any() or (
      np.asarray(first.masks) != np.asarray(second.masks)).any()


@pytest.mark.parametrize("candidates, probs, match", [
    (("Scribble", "Line"), (0.5, 0.5), "unknown candidate"),
    (("scribble",), (1.0,), "unknown candidate"),
    ((), (), "at least one"),
    (("Point", "Point"), (0.5, 0.5), "twice"),
    (("Point", "Box"), (1.0,), "has 1 values for 2"),
    (("Point", "Box"), (1.0, -0.5), ">= 0"),
    (("Point", "Box"), (1.0, float("nan")), ">= 0"),
    (("Point", "Box"), (0.0, 0.0), "positive sum"),
])
def test_bad_shape_settings_are_rejected(candidates, probs, match):
  with pytest.raises(ValueError, match=match):
    sampling.check_shape_config(candidates, probs)
  with pytest.raises(ValueError, match=match):
    sampling.shape_prompts(jax.random.key(0), jnp.ones((1, 1, 4, 4)), candidates=candidates, probs=probs)


@pytest.mark.parametrize("override, match", [
    ("prompts.shape_candidates=Scribble,Lasso", "unknown candidate"),
    ("prompts.shape_probs=(-1.0,)", ">= 0"),
    ("prompts.shape_probs=0.5,0.5", "has 2 values for 1"),
    ("prompts.shape_point_radius=-2", "shape_point_radius"),
])
def test_bad_shape_config_values_are_user_errors(override, match):
  from dinoseg.config import load_config  # noqa: PLC0415
  from dinoseg.errors import UserValueError  # noqa: PLC0415
  with pytest.raises(UserValueError, match=match):
    load_config("configs/dinov/swint_sam_coco.py:tiny", [override])


def test_config_default_and_a_mix_load():
  from dinoseg.config import load_config  # noqa: PLC0415
  c = load_config("configs/dinov/swint_sam_coco.py:tiny")
  assert tuple(c.prompts.shape_candidates) == ("Scribble",) and tuple(c.prompts.shape_probs) == (1.0,)
  c = load_config("configs/dinov/swint_sam_coco.py:tiny",
                  ["prompts.shape_candidates=Scribble,Point,Box,Mask", "prompts.shape_probs=0.4,0.3,0.2,0.1"])
  assert tuple(c.prompts.shape_candidates) == ALL and tuple(c.prompts.shape_probs) == (0.4, 0.3, 0.2, 0.1)


def test_task_draws_shapes_with_the_configured_candidates():
  """DINOvTask._shapes reads prompts.shape_candidates / shape_probs / shape_point_radius and the stroke
  settings (no model is built)."""
  from dinoseg.models.dinov import defaults  # noqa: PLC0415
  from dinoseg.models.dinov.task import DINOvTask  # noqa: PLC0415
  p = defaults.prompt_config()
  m = jnp.asarray(example_masks())
  key = jax.random.key(2)
  fake = types.SimpleNamespace(config=types.SimpleNamespace(prompts=p))
  np.testing.assert_array_equal(np.asarray(DINOvTask._shapes(fake, key, m).masks),
                                np.asarray(sampling.scribbles(key, m)))
  p.shape_candidates, p.shape_probs = ("Box", "Mask"), (1.0, 0.0)
  np.testing.assert_array_equal(np.asarray(DINOvTask._shapes(fake, key, m).masks),
                                np.asarray(sampling.box_shapes(m), np.float32))


def test_class_prompts_take_examples_only_from_eligible_instances():
  labels = jnp.asarray([[5, 1, 5, 7, 0], [1, 5, 9, 0, 0]])
  valid = jnp.asarray([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], bool)
  kw = dict(num_classes=10, num_slots=6, max_examples=4)
  for seed in range(10):
    key = jax.random.key(seed)
    base = sampling.class_prompts(key, labels, valid, **kw)
    same = sampling.class_prompts(key, labels, valid, eligible=jnp.ones(labels.shape, bool), **kw)
    for a, b in zip(jax.tree_util.tree_leaves(base), jax.tree_util.tree_leaves(same)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # instance (0, 0) of category 5 and category 7's only instance (0, 3) have empty shapes
    eligible = jnp.ones(labels.shape, bool).at[0, 0].set(False).at[0, 3].set(False)
    cp = sampling.class_prompts(key, labels, valid, eligible=eligible, **kw)
    m = np.asarray(cp.members).reshape(6, 2, 5)
    assert m[:, 0, 0].sum() == 0 and m[:, 0, 3].sum() == 0
    assert np.asarray(cp.slot_valid).tolist() == [True, True, False, True, False, False]  # slots 1, 5, 7, 9
    np.testing.assert_allclose(m[[0, 1, 3]].sum(axis=(1, 2)), 1.0, rtol=1e-6)
    v = np.asarray(cp.valid)
    assert v[0, 0] and not v[0, 3]  # category 5 keeps its targets; category 7 has no prompt, so no targets
    assert v.sum() == np.asarray(valid).sum() - 1


def _mixed_shape_task(overrides=()):
  from dinoseg.config import load_config  # noqa: PLC0415
  from dinoseg.train import task as task_lib  # noqa: PLC0415
  config = load_config("configs/dinov/swint_sam_coco.py:tiny",
                       ["prompts.shape_candidates=Scribble,Point,Box,Mask", "prompts.shape_probs=0.4,0.3,0.2,0.1",
                        "prompts.openset_use_shape_sampler=true", *overrides])
  return task_lib.build(config)


@pytest.mark.slow  # about 20 s of tracing
def test_task_loss_traces_with_every_candidate_in_both_tasks():
  """The trainer's loss with all four candidates for the referring content prompts and the generic class
  prompts (`openset_use_shape_sampler`) traces to a scalar (shapes only: no compile, no model run)."""
  task = _mixed_shape_task()
  variables = jax.eval_shape(task.init_variables, jax.random.key(0))
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  b, n, h, w = 2, 8, 64, 64
  spec = jax.ShapeDtypeStruct
  batch = {}
  for src in ("coco", "sam"):
    batch.update({f"{src}.image": spec((b, h, w, 3), jnp.float32), f"{src}.valid_hw": spec((b, 2), jnp.int32),
                  f"{src}.labels": spec((b, n), jnp.int32), f"{src}.valid": spec((b, n), jnp.bool_),
                  f"{src}.masks": spec((b, n, h, w), jnp.uint8), f"{src}.boxes": spec((b, n, 4), jnp.float32)})
  loss, metrics = jax.eval_shape(lambda p, batch, key: task.loss_fn(p, state, batch, key), params, batch,
                                 jax.random.key(1))
  assert loss.shape == () and "refer/loss_mask" in metrics and "generic/loss_ce" in metrics


@pytest.mark.slow
def test_task_loss_and_gradients_are_finite_with_every_candidate(tmp_path):
  """One loss and gradient on synthetic COCO panoptic + SA-1B data with all four candidates in both tasks."""
  from dinoseg.data_pipelines import synth, writer  # noqa: PLC0415
  paths = {}
  for layout, name in (("coco_panoptic", "coco"), ("sa1b", "sam")):
    raw, out = tmp_path / f"raw_{name}", tmp_path / name
    synth.synthesize(layout, str(raw), num_images=4, image_size=(64, 64), max_objects=4, seed=1)
    writer.prepare(synth.PREPARER_FOR_LAYOUT[layout], str(raw), str(out), num_shards=1, progress=False)
    paths[name] = str(out)
  task = _mixed_shape_task([f"data.coco.path={paths['coco']}", f"data.sam.path={paths['sam']}"])
  batch = next(task.train_iterator(0, 1))
  variables = task.init_variables(jax.random.key(0))
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  grad_fn = jax.jit(jax.value_and_grad(lambda p, key: task.loss_fn(p, state, batch, key), has_aux=True))
  (loss, metrics), grads = grad_fn(params, jax.random.key(3))
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
  assert float(metrics["num_classes"]) >= 1
