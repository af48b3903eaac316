"""The "dinov" trainer task: training-prompt sampling (class prompts over the global batch, clicks / level
targets / content prompts), the COCO + SA-1B mixed iterator, and (slow) loss going down on synthetic data."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.models.dinov import sampling
from dinoseg.train import task as task_lib


def test_task_is_registered():
  from dinoseg.models.dinov.task import DINOvTask  # noqa: PLC0415
  assert task_lib.get("dinov") is DINOvTask


def test_class_prompts_group_by_category_over_the_global_batch():
  labels = jnp.asarray([[5, 1, 5, 7, 0], [1, 5, 9, 0, 0]])
  valid = jnp.asarray([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], bool)
  sample = jax.jit(lambda key: sampling.class_prompts(key, labels, valid, num_classes=10, num_slots=6, max_examples=2))
  for seed in range(20):
    cp = sample(jax.random.key(seed))
    assert np.asarray(cp.slot_valid).tolist() == [True] * 4 + [False] * 2  # categories 1, 5, 7, 9
    lab, v = np.asarray(cp.labels), np.asarray(cp.valid)
    assert (v == np.asarray(valid)).all()
    slot_of = {1: 0, 5: 1, 7: 2, 9: 3}
    for b in range(2):
      for t in range(5):
        if v[b, t]:
          assert lab[b, t] == slot_of[int(labels[b, t])]
    m = np.asarray(cp.members).reshape(6, 2, 5)
    np.testing.assert_allclose(m[:4].sum(axis=(1, 2)), 1.0, rtol=1e-6)
    assert (m[4:] == 0).all()
    for k, cat in enumerate([1, 5, 7, 9]):
      used = m[k] > 0
      assert used.sum() in range(1, 3) and (np.asarray(labels)[used] == cat).all() and np.asarray(valid)[used].all()
  # a category beyond the slot budget loses its targets
  cp = sampling.class_prompts(jax.random.key(0), labels, valid, num_classes=10, num_slots=2, max_examples=4)
  assert not np.asarray(cp.valid)[0, 3] and not np.asarray(cp.valid)[1, 2]


def test_refer_targets_clicks_levels_and_content():
  masks = np.zeros((2, 4, 32, 32), np.uint8)
  masks[0, 0, 4:20, 4:20] = 1
  masks[0, 1, 2:24, 2:24] = 1  # contains instance 0
  masks[0, 2, 24:30, 24:30] = 1
  masks[1, 0, 10:12, 10:12] = 1
  valid = np.asarray([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
  hw = np.asarray([[32, 32], [32, 32]])
  s = sampling.refer_targets(jax.random.key(3), jnp.asarray(masks), jnp.asarray(valid), jnp.asarray(hw), num_clicks=5,
                             num_tokens=6, num_content=2)
  clicks, lvl, lvalid = np.asarray(s.clicks), np.asarray(s.refer.level_index), np.asarray(s.refer.level_valid)
  assert clicks.shape == (2, 5, 4) and np.asarray(s.click_valid).all()
  np.testing.assert_allclose(clicks[..., 2:], 6 / 32)
  for b in range(2):
    for c in range(5):
      x, y = int(round(clicks[b, c, 0] * 32)), int(round(clicks[b, c, 1] * 32))
      inside = {n for n in range(4) if valid[b, n] and masks[b, n, y, x]}
      assert inside and set(lvl[b, c][lvalid[b, c]].tolist()) == inside
  assert set(np.asarray(s.refer.content_index)[1].tolist()) == {0}  # repeated when fewer instances than clicks


def test_uniform_pixels_is_uniform_over_the_instance():
  """Chi-square test of the click draw on small irregular masks (each pixel equally likely, nothing outside)."""
  from scipy import stats
  masks = np.zeros((2, 3, 7, 9), np.uint8)
  masks[0, 0, 1:3, 2:7] = 1
  masks[0, 0, 5, 0] = masks[0, 0, 6, 8] = 1  # isolated pixels, incl. the last one
  masks[0, 1, 0, :] = 1  # a full first row
  masks[1, 2, 3:6, 4] = 1
  masks[1, 2, 0, 0] = 1  # the very first pixel
  index = np.asarray([[0] * 40 + [1] * 10, [2] * 50])
  draw = jax.jit(lambda key: sampling.uniform_pixels(key, jnp.asarray(masks), jnp.asarray(index)))
  pixels = np.concatenate([np.asarray(draw(jax.random.key(i))) for i in range(200)], 1)  # (2, 10000)
  for b, inst, cols in ((0, 0, slice(0, 40)), (0, 1, slice(40, 50)), (1, 2, slice(0, 50))):
    flat = masks[b, inst].reshape(-1).astype(bool)
    got = pixels[b][np.concatenate([np.arange(50)[cols] + 50 * k for k in range(200)])]
    assert flat[got].all()  # always inside
    counts = np.bincount(got, minlength=flat.size)[flat]
    assert stats.chisquare(counts).pvalue > 1e-3, counts
  empty = sampling.uniform_pixels(jax.random.key(0), jnp.zeros((1, 1, 4, 4)), jnp.zeros((1, 3), jnp.int32))
  assert np.asarray(empty).tolist() == [[0, 0, 0]]


def test_refer_targets_allocate_no_per_click_image():
  """The compiled click sampling holds less temporary memory than one (B, C, H, W) byte array (the former
  sampler drew a (B, C, H, W) float32 uniform array: 4x that and more)."""
  b, n, h, w, c = 1, 8, 256, 256, 50
  f = jax.jit(lambda key, m, v, hw: sampling.refer_targets(key, m, v, hw, num_clicks=c, num_tokens=6, num_content=8))
  compiled = f.lower(jax.random.key(0), jax.ShapeDtypeStruct((b, n, h, w), jnp.uint8),
                     jax.ShapeDtypeStruct((b, n), jnp.bool_), jax.ShapeDtypeStruct((b, 2), jnp.int32)).compile()
  analysis = compiled.memory_analysis()
  if analysis is None:
    pytest.skip("this backend reports no memory analysis")
  assert analysis.temp_size_in_bytes < b * c * h * w, analysis.temp_size_in_bytes


def test_mixed_iterator_state_round_trip():
  from dinoseg.models.dinov.task import MixedIterator  # noqa: PLC0415

  class Counter:
    def __init__(self):
      self.i = 0

    def __next__(self):
      self.i += 1
      return {"x": np.asarray([self.i])}

    def get_state(self):
      return {"i": self.i}

    def set_state(self, state):
      self.i = state["i"]

  class BytesCounter(Counter):
    def get_state(self):
      return str(self.i).encode()

    def set_state(self, state):
      self.i = int(state.decode())

  it = MixedIterator({"coco": Counter(), "sam": BytesCounter()})
  next(it)
  state = it.get_state()
  first = next(it)
  assert set(first) == {"coco.x", "sam.x"}
  it.set_state(state)
  again = next(it)
  assert all((first[k] == again[k]).all() for k in first)


@pytest.mark.slow
def test_tiny_training_loss_goes_down(tmp_path):
  """A few optimizer steps on one synthetic COCO panoptic + SA-1B batch (tiny config): the loss drops."""
  import optax  # noqa: PLC0415

  from dinoseg.config import load_config  # noqa: PLC0415
  from dinoseg.data_pipelines import synth, writer  # noqa: PLC0415
  paths = {}
  for layout, name in (("coco_panoptic", "coco"), ("sa1b", "sam")):
    raw, out = tmp_path / f"raw_{name}", tmp_path / name
    synth.synthesize(layout, str(raw), num_images=4, image_size=(64, 64), max_objects=4, seed=1)
    writer.prepare(synth.PREPARER_FOR_LAYOUT[layout], str(raw), str(out), num_shards=1, progress=False)
    paths[name] = str(out)
  config = load_config("configs/dinov/swint_sam_coco.py:tiny")
  with config.unlocked():
    config.data.coco.path, config.data.sam.path = paths["coco"], paths["sam"]
  task = task_lib.build(config)
  batch = next(task.train_iterator(0, 1))
  variables = task.init_variables(jax.random.key(0))
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adam(1e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, key):
    (loss, _), grads = jax.value_and_grad(lambda p: task.loss_fn(p, state, batch, key), has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  losses = []
  for _ in range(8):  # the same key: the same prompts and draws, so the loss can only go down by learning
    params, opt, loss = step(params, opt, jax.random.key(1))
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses


def test_scribbles_stay_inside_their_masks():
  masks = np.zeros((2, 3, 32, 48), np.uint8)
  masks[0, 0, 3:30, 3:45] = 1
  masks[0, 1, 20:23, 30:33] = 1
  masks[1, 0, 10:30, 10:30] = 1  # masks[.., 2] and masks[1, 1] stay empty
  draw = jax.jit(lambda key: sampling.scribbles(key, jnp.asarray(masks), num_strokes=3))
  out = np.asarray(draw(jax.random.key(0)))
  assert out.shape == masks.shape and set(np.unique(out)) <= {0.0, 1.0}
  assert (out <= masks).all()
  assert out[0, 0].sum() > 0 and out[1, 0].sum() > 0  # (a 3 x 3 mask may lose its moved strokes, as the reference's)
  assert out[:, 2].sum() == 0 and out[1, 1].sum() == 0
  assert out[0, 0].sum() < masks[0, 0].sum()  # strokes, not the whole mask
  other = np.asarray(draw(jax.random.key(1)))
  assert (other != out).any()


def test_coco_track_targets_click_every_instance_once():
  """COCO fed to the referring task (`prompts.coco_track`): one click per real instance, no repetition, padded
  clicks invalid; the content prompts are the first min(K, N) instances of the same order."""
  from dinoseg.models.dinov.task import coco_track_targets  # noqa: PLC0415
  masks = np.zeros((2, 5, 32, 32), np.uint8)
  for n, (y, x) in enumerate([(2, 2), (2, 18), (18, 2), (18, 18)]):
    masks[0, n, y:y + 10, x:x + 10] = 1
  masks[1, 0, 5:9, 5:20] = 1
  valid = np.asarray([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], bool)
  hw = np.asarray([[32, 32], [32, 32]])
  run = jax.jit(lambda key: coco_track_targets(key, jnp.asarray(masks), jnp.asarray(valid), jnp.asarray(hw),
                                               num_content=3, num_tokens=6))
  orders = set()
  for seed in range(6):
    clicks, click_valid, click_index, content_index, content_valid = map(np.asarray, run(jax.random.key(seed)))
    assert clicks.shape == (2, 5, 4) and content_index.shape == content_valid.shape == (2, 3)
    assert click_valid.tolist() == [[True] * 4 + [False], [True] + [False] * 4]
    assert content_valid.tolist() == [[True] * 3, [True, False, False]]
    assert sorted(click_index[0, :4].tolist()) == [0, 1, 2, 3] and click_index[1, 0] == 0
    assert (content_index == click_index[:, :3]).all()
    for b in range(2):
      for c in range(int(click_valid[b].sum())):
        x, y = int(round(clicks[b, c, 0] * 32)), int(round(clicks[b, c, 1] * 32))
        assert masks[b, click_index[b, c], y, x]  # the click is a pixel of its own instance
    orders.add(tuple(click_index[0, :4].tolist()))
  assert len(orders) > 1  # a random order


@pytest.mark.slow
def test_coco_track_train_step(tmp_path):
  """With `prompts.coco_track` on, the tiny config's batches keep their structure (the COCO batch feeds both tasks)
  and one jitted training step (loss and gradients) is finite, with the one-to-one referring terms of the COCO
  images (about 4 min on 2 shared CPU cores, most of it compiling the three forward passes and their gradients)."""
  from dinoseg.config import load_config  # noqa: PLC0415
  from dinoseg.data_pipelines import synth, writer  # noqa: PLC0415
  paths = {}
  for layout, name in (("coco_panoptic", "coco"), ("sa1b_tsv", "sam")):
    raw, out = tmp_path / f"raw_{name}", tmp_path / name
    synth.synthesize(layout, str(raw), num_images=2, image_size=(64, 64), max_objects=3, seed=2)
    writer.prepare(synth.PREPARER_FOR_LAYOUT[layout], str(raw), str(out), num_shards=1, progress=False)
    paths[name] = str(out)
  config = load_config("configs/dinov/swint_sam_coco.py:tiny")
  assert config.prompts.coco_track is False  # off by default, as the released configs
  with config.unlocked():
    config.data.coco.path, config.data.sam.path = paths["coco"], paths["sam"]
    config.prompts.coco_track = True
  task = task_lib.build(config)
  batch = next(task.train_iterator(0, 1))
  assert {k.split(".")[0] for k in batch} == {"coco", "sam"}
  assert batch["coco.masks"].shape[:2] == batch["coco.valid"].shape == (2, config.data.coco.max_instances)
  variables = task.init_variables(jax.random.key(0))
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  step = jax.jit(jax.value_and_grad(lambda p, key: task.loss_fn(p, state, batch, key), has_aux=True))
  (loss, metrics), grads = step(params, jax.random.key(1))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
  track = {k: float(v) for k, v in metrics.items() if k.startswith("coco_track/")}
  assert {"coco_track/loss_mask", "coco_track/loss_dice", "coco_track/loss_iou", "coco_track/loss_match"} <= set(track)
  assert np.isfinite(float(loss)) and all(np.isfinite(v) for v in track.values())
  assert track["coco_track/loss_mask"] > 0 and float(metrics["num_track_clicks"]) == float(batch["coco.valid"].sum())
  rest = sum(float(v) for k, v in metrics.items() if k.startswith(("generic/", "refer/")))
  np.testing.assert_allclose(float(loss), rest + sum(track.values()), rtol=1e-4)
