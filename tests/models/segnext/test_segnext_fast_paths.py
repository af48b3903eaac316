"""SegNext's matmul formulations equal the convolutions they replace, and click-only prompt sets
skip the extra-prompt encoder without changing the prompt features."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.models.segnext import prompts as prompt_lib
from dinoseg.models.segnext.model import SegNext
from dinoseg.models.segnext.neck import ConvTranspose2x2, PatchConv


@pytest.mark.parametrize("k, use_bias", [(1, True), (2, True), (4, False)])
def test_patch_conv_equals_strided_conv(k, use_bias):
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, 5))
  conv = nn.Conv(7, (k, k), strides=(k, k), padding="VALID", use_bias=use_bias)
  params = conv.init(jax.random.key(1), x)["params"]
  if use_bias:
    params = {**params, "bias": jax.random.normal(jax.random.key(2), (7,))}
  ours = PatchConv(7, k, use_bias=use_bias)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)["params"]) == jax.tree.map(jnp.shape, params)
  np.testing.assert_allclose(ours.apply({"params": params}, x), conv.apply({"params": params}, x),
                             rtol=1e-5, atol=1e-5)


def test_patch_conv_rejects_a_partial_patch():
  x = jnp.zeros((1, 6, 8, 3))
  with pytest.raises(ValueError, match="multiple of the kernel size"):
    PatchConv(4, 4).init(jax.random.key(0), x)


def test_conv_transpose_equals_torch_semantics():
  """y[2h + i, 2w + j] = x[h, w] @ kernel[i, j] + bias (PyTorch ConvTranspose2d k2 s2), written out."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 6))
  module = ConvTranspose2x2(4)
  params = module.init(jax.random.key(1), x)["params"]
  params = {**params, "bias": jnp.arange(4.0)}
  y = np.asarray(module.apply({"params": params}, x))
  assert y.shape == (2, 6, 10, 4)
  kernel, xn = np.asarray(params["kernel"]), np.asarray(x)
  for i in range(2):
    for j in range(2):
      expected = np.einsum("bhwc,cd->bhwd", xn, kernel[i, j]) + np.arange(4.0)
      np.testing.assert_allclose(y[:, i::2, j::2], expected, rtol=1e-5, atol=1e-5)


def test_click_only_prompts_skip_the_extra_encoder_exactly():
  """With a non-zero extra kernel: click-only prompt sets get exactly the visual encoder's features
  (the extra maps are zero), and a box adds the extra encoder's output."""
  model = SegNext(image_size=64, embed_dim=32, depth=2, num_heads=2, global_atten_freq=1, fusion_depth=1,
                  neck_dims=(8, 8, 8, 8), head_channels=8)
  hw = jnp.asarray([[40, 50]])
  prev = jnp.zeros((1, 48, 56))
  clicks_only = prompt_lib.make_prompts([[(10, 12, True)]], num_points=2)
  with_box = prompt_lib.make_prompts([[(10, 12, True)]], boxes=[(5, 4, 30, 20)], num_points=2)
  params = model.init(jax.random.key(0), jnp.zeros((1, 48, 56, 3)), hw, clicks_only, prev)["params"]
  params = {**params, "extra_prompts_encoder": {
      "kernel": jax.random.normal(jax.random.key(3), params["extra_prompts_encoder"]["kernel"].shape)}}
  embed = jax.jit(lambda p, pr: model.apply({"params": p}, pr, prev, hw, method=SegNext.embed_prompts))

  def visual_only(p, pr):
    clicks, _ = model.apply({"params": p}, pr, prev, hw, method=SegNext.prompt_maps)
    return model.apply({"params": p}, clicks, method=lambda m, c: m.visual_prompts_encoder(c))

  np.testing.assert_array_equal(embed(params, clicks_only), visual_only(params, clicks_only))
  assert float(jnp.abs(embed(params, with_box) - visual_only(params, with_box)).max()) > 1e-3
