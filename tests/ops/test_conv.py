"""dinoseg.ops.conv: the forward is XLA's convolution bit for bit; the gradients equal XLA's."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dinoseg.ops.conv import ConvGeneralDilated, conv_general_dilated, kernel_grad_taps

NHWC = ("NHWC", "HWIO", "NHWC")
CASES = [  # (input shape, kernel size, stride, padding, dilation)
    ((2, 9, 11, 5), 3, 1, 1, 1),
    ((2, 9, 11, 5), 3, 2, 1, 1),
    ((2, 16, 16, 3), 7, 2, 3, 1),  # the ResNet stem
    ((2, 8, 9, 4), 1, 2, 0, 1),    # strided 1x1 shortcut
    ((1, 11, 11, 4), 3, 1, 2, 2),  # dilated
    ((2, 10, 10, 4), 3, 2, "SAME", 1),
    ((1, 7, 9, 6), 2, 1, ((1, 0), (0, 2)), 1),  # asymmetric padding, even kernel
]


@pytest.mark.parametrize("shape,k,stride,pad,dil", CASES)
def test_forward_and_gradients_match_xla(shape, k, stride, pad, dil, rng):
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, shape[-1], 6)), jnp.float32)
  padding = pad if isinstance(pad, (str, tuple)) else ((pad, pad), (pad, pad))
  kw = dict(window_strides=(stride, stride), padding=padding, rhs_dilation=(dil, dil), dimension_numbers=NHWC)
  ref = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, **kw))(x, w)
  out = jax.jit(lambda x, w: conv_general_dilated(x, w, **kw))(x, w)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
  g = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
  ref_grads = jax.jit(jax.grad(lambda x, w: jnp.sum(lax.conv_general_dilated(x, w, **kw) * g), (0, 1)))(x, w)
  grads = jax.jit(jax.grad(lambda x, w: jnp.sum(conv_general_dilated(x, w, **kw) * g), (0, 1)))(x, w)
  for a, b in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_kernel_grad_taps_is_the_kernel_vjp(rng):
  x = jnp.asarray(rng.normal(size=(2, 12, 10, 3)), jnp.float32)
  w = jnp.zeros((3, 3, 3, 4), jnp.float32)
  conv = lambda w: lax.conv_general_dilated(x, w, (2, 1), ((1, 2), (0, 1)), dimension_numbers=NHWC)  # noqa: E731
  out, vjp = jax.vjp(conv, w)
  g = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  np.testing.assert_allclose(kernel_grad_taps(x, g, (3, 3), (2, 1), ((1, 2), (0, 1)), (1, 1)), vjp(g)[0],
                             rtol=1e-5, atol=1e-5)


def test_other_layouts_and_groups_use_the_plain_op(rng):
  x = jnp.asarray(rng.normal(size=(2, 4, 9, 9)), jnp.float32)  # NCHW
  w = jnp.asarray(rng.normal(size=(6, 2, 3, 3)), jnp.float32)  # OIHW, 2 groups
  kw = dict(window_strides=(1, 1), padding="SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=2)
  np.testing.assert_array_equal(conv_general_dilated(x, w, **kw), lax.conv_general_dilated(x, w, **kw))
  gx = jax.grad(lambda x: jnp.sum(conv_general_dilated(x, w, **kw) ** 2))(x)
  np.testing.assert_allclose(gx, jax.grad(lambda x: jnp.sum(lax.conv_general_dilated(x, w, **kw) ** 2))(x), rtol=1e-5)


def test_flax_conv_with_the_class_has_the_same_params_and_outputs(rng):
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  plain = nn.Conv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  fast = nn.Conv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), conv_general_dilated_cls=ConvGeneralDilated)
  params = plain.init(jax.random.key(0), x)
  assert jax.tree.structure(params) == jax.tree.structure(fast.init(jax.random.key(0), x))
  np.testing.assert_array_equal(fast.apply(params, x), plain.apply(params, x))
  g1 = jax.grad(lambda p: jnp.sum(fast.apply(p, x) ** 2))(params)
  g0 = jax.grad(lambda p: jnp.sum(plain.apply(p, x) ** 2))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g1, g0)
