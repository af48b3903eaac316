"""SegNext model: logits and gradients equal the reference (uncbiag/SegNext) on random weights;
full-size parameter layout equals the released checkpoints'; batching, canvases and extra prompts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.models.segnext import convert
from dinoseg.models.segnext import prompts as prompt_lib
from dinoseg.models.segnext.loss import normalized_focal_loss
from dinoseg.models.segnext.model import SegNext
from dinoseg.models.segnext.predictor import CPU_FAST_COMPILE

KEYS_FILE = "/work/shared/reference/keys/segnext_sax2_keys.txt"
GRAD_KEYS = ("visual_prompts_encoder.proj.bias", "fusion_blocks.0.attn.qkv.bias", "fusion_blocks.1.norm2.weight",
             "backbone.blocks.0.norm1.weight", "backbone.blocks.3.mlp.fc2.bias", "neck.down_4.4.weight",
             "neck.down_32.2.bias", "head.convs.2.conv.bias", "head.seg_conv.weight")


@pytest.fixture(scope="module")
def fns(tiny_model):
  embed = jax.jit(lambda p, im, hw: tiny_model.apply({"params": p}, im, hw, method=SegNext.embed_image),
                  compiler_options=CPU_FAST_COMPILE)
  predict = jax.jit(lambda p, f, pr, prev, hw: tiny_model.apply({"params": p}, f, pr, prev, hw,
                                                                  method=SegNext.predict),
                    compiler_options=CPU_FAST_COMPILE)
  return embed, predict


CANVAS_PAD = (20, 7)  # the fixture image sits top-left on a larger canvas: the valid region must not change


@pytest.fixture(scope="module")
def fixture_features(fns, tiny_params, segnext_fixture):
  f = segnext_fixture("model")
  image = f["image"].astype(np.float32) / 255
  h, w = image.shape[:2]
  canvas = np.zeros((1, h + 3, w + 5, 3), np.float32)
  canvas[0, :h, :w] = image
  return fns[0](tiny_params, jnp.asarray(canvas), jnp.asarray([[h, w]])), (h, w)


def _predict(fns, params, features, prompts, prev, hw):
  """One compiled shape for every test: P = 2, fixture N, (h, w) + CANVAS_PAD canvas."""
  h, w = hw
  canvas = np.zeros((2, h + CANVAS_PAD[0], w + CANVAS_PAD[1]), np.float32)
  canvas[:, :h, :w] = prev
  out = np.asarray(fns[1](params, features, prompts, jnp.asarray(canvas), jnp.asarray([[h, w]] * 2)))
  assert np.all(out[:, h:] == 0) and np.all(out[:, :, w:] == 0)
  return out[:, :h, :w]


def test_logits_equal_reference(fns, tiny_params, fixture_features, segnext_fixture, make_click_prompts):
  f = segnext_fixture("model")
  features, hw = fixture_features
  prompts = make_click_prompts(f["points"])  # (2, 2N, 3), as the reference's get_points_nd built them
  logits = _predict(fns, tiny_params, features, prompts, f["prev_mask"].astype(np.float32), hw)
  assert_close(logits, f["logits"], rtol=1e-4, name="logits")
  # The prompt sets are independent: the second one twice gives its reference logits twice.
  twice = make_click_prompts(f["points"][[1, 1]])
  logits = _predict(fns, tiny_params, features, twice, f["prev_mask"][[1, 1]].astype(np.float32), hw)
  assert_close(logits, f["logits"][[1, 1]], rtol=1e-4, name="repeated prompt set")


def test_gradients_equal_reference(tiny_model, tiny_params, segnext_fixture, make_click_prompts):
  f = segnext_fixture("model")
  s = tiny_model.image_size
  image = jnp.asarray(f["train_image"].astype(np.float32) / 255)[None]
  prompts = make_click_prompts(f["train_points"])
  prev = jnp.asarray(f["train_prev_mask"].astype(np.float32))[None]
  gt = jnp.asarray(f["train_gt"].astype(np.float32))[None]

  def loss_fn(params):
    logits = tiny_model.apply({"params": params}, image, jnp.asarray([[s, s]]), prompts, prev)
    return normalized_focal_loss(logits, gt)

  loss, grads = jax.jit(jax.value_and_grad(loss_fn), compiler_options=CPU_FAST_COMPILE)(tiny_params)
  assert_close(loss, f["train_loss"], rtol=1e-5, name="loss")
  torch_grads = convert.segnext_to_torch(jax.tree.map(np.asarray, grads))
  for key in GRAD_KEYS:
    assert_close(torch_grads[key], f[f"grad/{key}"], rtol=1e-4, name=f"grad {key}")


def test_zero_extra_prompt_kernel_is_the_released_model(fns, tiny_params, fixture_features, segnext_fixture,
                                                        make_click_prompts):
  """A box and scribbles change nothing while the imported extra kernel is zero; with weights they do."""
  f = segnext_fixture("model")
  features, hw = fixture_features
  prev = f["prev_mask"].astype(np.float32)
  clicks_only = make_click_prompts(f["points"])
  with_extras = prompt_lib.make_prompts([[], []], boxes=[(10, 5, 90, 60), None],
                                        scribbles=[[([(20, 20), (50, 80)], True)], [([(70, 9)], False)]])
  with_extras = with_extras.replace(points=clicks_only.points)
  a = _predict(fns, tiny_params, features, clicks_only, prev, hw)
  b = _predict(fns, tiny_params, features, with_extras, prev, hw)
  np.testing.assert_array_equal(a, b)
  params = dict(tiny_params)
  params["extra_prompts_encoder"] = {"kernel": np.full_like(tiny_params["extra_prompts_encoder"]["kernel"], 0.01)}
  c = _predict(fns, params, features, with_extras, prev, hw)
  assert np.abs(c - a).max(axis=(1, 2)).min() > 1e-3  # both prompt sets changed


def _keys_file():
  shapes = {}
  with open(KEYS_FILE) as fh:
    for line in fh:
      if line.startswith("CONFIG"):
        continue
      key, shape = line.split(" ", 1)
      shapes[key] = tuple(int(v) for v in shape.strip().strip("()").split(",") if v.strip())
  return shapes


@pytest.mark.parametrize("fusion_depth", [1, 2])
def test_full_size_layout_equals_released_checkpoints(fusion_depth):
  model = SegNext(fusion_depth=fusion_depth)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 1024, 1024, 3)),
                                               jnp.asarray([[1024, 1024]]), prompt_lib.empty_prompts(1),
                                               jnp.zeros((1, 1024, 1024))))["params"]
  expected = _keys_file()
  if fusion_depth == 1:
    expected = {k: v for k, v in expected.items() if not k.startswith("fusion_blocks.1.")}
  assert len(expected) == (219 if fusion_depth == 2 else 207)
  assert convert.reference_shapes(convert.SegNextArch(fusion_depth=fusion_depth)) == expected
  zeros = {k: np.zeros(v, np.float32) for k, v in expected.items()}
  imported = convert.segnext_to_flax(zeros)
  shapes = lambda t: jax.tree.map(lambda x: tuple(x.shape), t)  # noqa: E731
  assert shapes(imported) == shapes(abstract)
  n_params = sum(int(np.prod(v)) for v in expected.values())
  assert n_params == (113_789_633 if fusion_depth == 2 else 106_701_761)


def test_bad_inputs_raise(tiny_model, tiny_params, fixture_features):
  features, (h, w) = fixture_features
  prompts = prompt_lib.empty_prompts(2)
  with pytest.raises(ValueError, match="prev_mask"):
    tiny_model.apply({"params": tiny_params}, features, prompts, jnp.zeros((1, h, w)), jnp.asarray([[h, w]] * 2),
                     method=SegNext.predict)
  with pytest.raises(ValueError, match="original_hw"):
    tiny_model.apply({"params": tiny_params}, features, prompts, jnp.zeros((2, h, w)), jnp.asarray([h, w]),
                     method=SegNext.predict)
  with pytest.raises(ValueError, match="images"):
    tiny_model.apply({"params": tiny_params}, jnp.zeros((1, 32, 32)), jnp.asarray([[32, 32]]),
                     method=SegNext.embed_image)
  with pytest.raises(ValueError, match="features batch"):
    tiny_model.apply({"params": tiny_params}, jnp.concatenate([features] * 3), prompts, jnp.zeros((2, h, w)),
                     jnp.asarray([[h, w]] * 2), method=SegNext.predict)
