"""ResNet against detectron2's build_resnet_backbone (fixture from scripts/make_backbone_fixtures.py)."""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.backbones.layers import FROZEN_BN, FrozenBatchNorm
from dinoseg.backbones.resnet import RESNET_VARIANTS, ResNet, frozen_modules, resnet
from dinoseg.convert.backbones import resnet_keymap, torchvision_to_detectron2

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "backbones" / "resnet_tiny.npz"
NAMES = ("res2", "res3", "res4", "res5")


@functools.lru_cache(maxsize=None)
def _fixture():
  z = dict(np.load(FIXTURE))
  cfg = json.loads(str(z["config"]))
  state = {k[len("param/"):]: v.astype(np.float32) for k, v in z.items() if k.startswith("param/")}
  images = jnp.asarray(z["images_nchw"].astype(np.float32).transpose(0, 2, 3, 1))
  return cfg, state, images, z


def _fixed_weights(shape):
  return np.cos(0.37 * np.arange(int(np.prod(shape)), dtype=np.float64)).astype(np.float32).reshape(shape)


def _model(**kw):
  cfg = _fixture()[0]
  return ResNet(**{**cfg["resnet"], **kw})


def _variables():
  cfg, state, _, _ = _fixture()
  return resnet_keymap(_model()).to_flax(state)


def _loss(model):
  def loss(params, frozen, images):
    out = model.apply({"params": params, FROZEN_BN: frozen}, images)
    return sum(jnp.sum(jnp.asarray(_fixed_weights(out[n].transpose(0, 3, 1, 2).shape))
                       * out[n].transpose(0, 3, 1, 2)) for n in NAMES)
  return jax.jit(jax.grad(loss, argnums=(0, 2)))


def test_forward_matches_detectron2():
  _, _, images, z = _fixture()
  out = jax.jit(_model().apply)(_variables(), images)
  assert list(out) == list(NAMES)
  for n in NAMES:
    assert_close(np.asarray(out[n]).transpose(0, 3, 1, 2), z[f"out/{n}"], rtol=1e-5, name=n)


def test_stride_in_1x1_and_dilated_res5_match_detectron2():
  _, _, images, z = _fixture()
  out = jax.jit(_model(stride_in_1x1=True, res5_dilation=2).apply)(_variables(), images)
  for n in NAMES:
    assert_close(np.asarray(out[n]).transpose(0, 3, 1, 2), z[f"out_stride1x1_dil2/{n}"], rtol=1e-5, name=n)


def test_gradients_match_torch_autograd():
  _, _, images, z = _fixture()
  v = _variables()
  params_grad, image_grad = _loss(_model())(v["params"], v[FROZEN_BN], images)
  assert_close(np.asarray(image_grad).transpose(0, 3, 1, 2), z["grad/images_nchw"], rtol=1e-5, name="d/dimages")
  grads_torch = resnet_keymap(_model()).to_torch({"params": params_grad, FROZEN_BN: v[FROZEN_BN]})
  for key in ("stem.conv1.weight", "res2.0.shortcut.weight", "res4.2.conv2.weight", "res5.2.conv3.weight"):
    assert_close(grads_torch[key], z[f"grad/{key}"], rtol=1e-5, name=key)


def test_freeze_at_stops_gradients_of_frozen_stages_only():
  # A one-block-per-stage ResNet with random weights: freezing must only zero the frozen gradients.
  model = ResNet(stage_blocks=(1, 1, 1, 1), stem_channels=4, res2_channels=8, bottleneck_channels=2)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(1, 32, 32, 3)), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  v = jax.tree.map(lambda s: jnp.asarray(0.5 + 0.2 * rng.random(s.shape), s.dtype), shapes)

  @jax.jit
  def grads(params):
    def loss(p, m):
      return sum(jnp.sum(o ** 2) for o in m.apply({"params": p, FROZEN_BN: v[FROZEN_BN]}, images).values())
    return jax.grad(loss)(params, model), jax.grad(loss)(params, model.clone(freeze_at=2))

  free, frozen = grads(v["params"])
  names = frozen_modules(2, model.stage_blocks)
  assert names == ("stem", "res2_0")
  assert frozen_modules(2)[:4] == ("stem", "res2_0", "res2_1", "res2_2") and "res3_0" not in frozen_modules(2)
  for name, tree in frozen.items():
    for leaf, ref in zip(jax.tree.leaves(tree), jax.tree.leaves(free[name])):
      if name in names:
        assert not np.any(np.asarray(leaf)), name
      else:  # downstream gradients are unchanged
        assert np.any(np.asarray(ref)), name
        np.testing.assert_allclose(leaf, ref, rtol=1e-6, atol=1e-7, err_msg=name)


def test_frozen_bn_statistics_are_not_params():
  v = _variables()
  assert set(v) == {"params", FROZEN_BN}
  assert all("norm" not in "/".join(map(str, p)) for p, _ in jax.tree_util.tree_leaves_with_path(v["params"]))
  assert set(v[FROZEN_BN]["stem"]["conv1"]["norm"]) == {"weight", "bias", "running_mean", "running_var"}
  # Fresh init is the identity transform (running_var = 1 - eps as detectron2).
  bn = FrozenBatchNorm()
  init = bn.init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)))
  assert set(init) == {FROZEN_BN}
  np.testing.assert_allclose(init[FROZEN_BN]["running_var"], 1 - 1e-5)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 2, 2, 3)), jnp.float32)
  np.testing.assert_allclose(bn.apply(init, x), x, rtol=1e-6)


def test_round_trip_is_bit_exact():
  cfg, state, _, z = _fixture()
  km = resnet_keymap(_model())
  back = km.to_torch(km.to_flax(state))
  assert list(back) == cfg["state_keys"]  # detectron2's key order
  for key, value in back.items():
    assert value.dtype == state[key].dtype and np.array_equal(value, state[key]), key
  half = {k: z[f"param/{k}"] for k in state}  # dtypes are never changed
  assert all(v.dtype == np.float16 for v in km.to_torch(km.to_flax(half)).values())


def test_torchvision_state_dict_imports():
  _, state, _, _ = _fixture()
  inverse = {}
  for key, value in state.items():  # detectron2 names -> torchvision names
    tv = key.replace("stem.", "").replace("shortcut.norm", "downsample.1").replace("shortcut", "downsample.0")
    for t in (1, 2, 3):
      tv = tv.replace(f"conv{t}.norm", f"bn{t}")
    for t in (2, 3, 4, 5):
      tv = tv.replace(f"res{t}.", f"layer{t - 1}.")
    inverse[tv] = value
  inverse["fc.weight"] = np.zeros((10, 64), np.float32)
  inverse["fc.bias"] = np.zeros((10,), np.float32)
  inverse["bn1.num_batches_tracked"] = np.array(5)
  assert "layer1.0.bn1.weight" in inverse and "layer1.0.downsample.0.weight" in inverse
  renamed = torchvision_to_detectron2(inverse)
  got = resnet_keymap(_model()).to_flax(renamed)
  want = _variables()
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_variants_and_bad_input():
  assert RESNET_VARIANTS["resnet101"]["stage_blocks"] == (3, 4, 23, 3)
  model = resnet("resnet50", out_features=("res3",))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 96, 3)))
  assert "res4_0" not in shapes["params"]  # stages after the last requested output are not built
  out = jax.eval_shape(model.apply, shapes, jnp.zeros((1, 64, 96, 3)))
  assert out["res3"].shape == (1, 8, 12, 512)
  with pytest.raises(ValueError, match="name must be one of"):
    resnet("resnet18")
  with pytest.raises(ValueError, match="images must be"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((64, 96, 3)))
  with pytest.raises(ValueError, match="freeze_at"):
    jax.eval_shape(ResNet(freeze_at=7).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="out_features"):
    jax.eval_shape(ResNet(out_features=("res6",)).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_bfloat16_compute_stays_close():
  _, _, images, z = _fixture()
  out = jax.jit(_model(dtype=jnp.bfloat16).apply)(_variables(), images)
  assert out["res5"].dtype == jnp.bfloat16
  assert_close(np.asarray(out["res5"].astype(jnp.float32)).transpose(0, 3, 1, 2), z["out/res5"], rtol=5e-2,
               name="res5 bf16")
