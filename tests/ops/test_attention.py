"""dinoseg.ops.attention.dot_product_attention against plain softmax attention in NumPy (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.errors import UserValueError
from dinoseg.ops.attention import AUTO_QUERY_CHUNK_SIZE, dot_product_attention

IMPLEMENTATIONS = ("dense", "blocked", "xla", "auto")


def _numpy_attention(q, k, v, scale, bias=None, mask=None):
  """softmax(scale q k^T + bias) v in float64; a masked-out logit takes no part (weight 0), and a row
  with every key masked weighs all keys equally. Returns (out, probs)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("...qd,...kd->...qk", q, k) * scale
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  if mask is not None:
    mask = np.broadcast_to(mask, logits.shape)
    empty = ~mask.any(-1, keepdims=True)
    logits = np.where(mask | empty, logits, -np.inf)
    logits = np.where(empty, 0.0, logits)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("...qk,...kd->...qd", probs, v), probs


def _inputs(rng, lead=(2, 3), heads=4, t=37, s=29, d=8):
  q = rng.standard_normal(lead + (heads, t, d)).astype(np.float32)
  k = rng.standard_normal(lead + (heads, s, d)).astype(np.float32)
  v = rng.standard_normal(lead + (heads, s, d)).astype(np.float32)
  return q, k, v


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bias_and_mask_match_numpy(rng, implementation):
  q, k, v = _inputs(rng)
  bias = rng.standard_normal((3, 4, 37, 29)).astype(np.float32)  # broadcast over the first batch dim
  mask = rng.random((2, 1, 1, 37, 29)) > 0.3  # per batch element, shared by windows and heads
  mask[0, 0, 0, 5] = False  # one row blocked everywhere
  got = dot_product_attention(q, k, v, scale=0.3, bias=bias, mask=mask, implementation=implementation,
                              query_chunk_size=8)  # 37 queries: 4 full blocks and a padded one
  want, _ = _numpy_attention(q, k, v, 0.3, bias, mask)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_default_scale_and_no_terms(rng, implementation):
  q, k, v = _inputs(rng, lead=(3,), t=16, s=16)
  got = dot_product_attention(q, k, v, implementation=implementation, query_chunk_size=5)
  np.testing.assert_allclose(got, _numpy_attention(q, k, v, 8 ** -0.5)[0], rtol=1e-5, atol=1e-5)


def test_per_query_bias_is_split_with_the_query_blocks(rng):
  # A bias / mask that varies along T must travel with its query block; one with a size-1 T axis is shared.
  q, k, v = _inputs(rng, lead=(2,), t=21, s=13)
  bias_rows = rng.standard_normal((2, 4, 21, 13)).astype(np.float32)
  bias_cols = rng.standard_normal((1, 1, 13)).astype(np.float32)
  mask = rng.random((21, 13)) > 0.5
  for bias in (bias_rows, bias_cols):
    got = dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="blocked", query_chunk_size=4)
    np.testing.assert_allclose(got, _numpy_attention(q, k, v, 8 ** -0.5, bias, mask)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_fully_masked_rows_are_finite_with_finite_gradients(rng, implementation):
  q, k, v = _inputs(rng, lead=(1,), t=6, s=5)
  mask = np.ones((1, 1, 6, 5), bool)
  mask[..., 2, :] = False  # query 2 sees no key
  mask[..., 4, 1:] = False  # query 4 sees only key 0

  def loss(q, k, v):
    out = dot_product_attention(q, k, v, mask=mask, implementation=implementation, query_chunk_size=4)
    return jnp.sum(out ** 2), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads)
  np.testing.assert_allclose(out[0, :, 2], v[0].mean(-2), rtol=1e-5, atol=1e-6)  # uniform over the keys
  np.testing.assert_allclose(out[0, :, 4], v[0, :, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, _numpy_attention(q, k, v, 8 ** -0.5, mask=mask)[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(grads[0][0, :, 2], 0.0)  # the blocked row's query gets no gradient


def test_blocked_gradients_equal_the_dense_ones(rng):
  q, k, v = _inputs(rng, lead=(2,), t=19, s=11)
  bias = rng.standard_normal((4, 19, 11)).astype(np.float32)
  mask = rng.random((2, 1, 19, 11)) > 0.2
  cot = rng.standard_normal(q.shape).astype(np.float32)

  def loss(implementation):
    def fn(q, k, v, bias):
      out = dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=implementation,
                                  query_chunk_size=4)
      return jnp.sum(out * cot)
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))

  (dense_value, dense_grads), (blocked_value, blocked_grads) = (loss(i)(q, k, v, bias) for i in ("dense", "blocked"))
  np.testing.assert_allclose(blocked_value, dense_value, rtol=1e-5)
  for name, got, want in zip("qkvb", blocked_grads, dense_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"d/d{name}")
  # and the dense gradient is the true one: a central finite difference along a random direction in q
  direction = rng.standard_normal(q.shape).astype(np.float64)
  f = lambda x: float(np.sum(_numpy_attention(x, k, v, 8 ** -0.5, bias, mask)[0] * cot))  # noqa: E731
  eps = 1e-4
  numeric = (f(q + eps * direction) - f(q - eps * direction)) / (2 * eps)
  np.testing.assert_allclose(np.sum(np.asarray(dense_grads[0], np.float64) * direction), numeric, rtol=1e-3)


def test_probabilities_returned_equal_numpy(rng):
  q, k, v = _inputs(rng, lead=(2,), t=9, s=7)
  bias = rng.standard_normal((4, 9, 7)).astype(np.float32)
  out, probs = dot_product_attention(q, k, v, scale=0.5, bias=bias, return_probs=True)
  want_out, want_probs = _numpy_attention(q, k, v, 0.5, bias)
  assert probs.shape == (2, 4, 9, 7) and probs.dtype == jnp.float32
  np.testing.assert_allclose(probs, want_probs, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out, dot_product_attention(q, k, v, scale=0.5, bias=bias, implementation="blocked",
                                                        query_chunk_size=4), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="return_probs"):
    dot_product_attention(q, k, v, implementation="blocked", return_probs=True)


def test_bfloat16_keeps_float32_logits(rng):
  q, k, v = _inputs(rng, lead=(1,), t=33, s=33, d=16)
  q = q * 4  # large logits: a bfloat16 softmax would be visibly off
  want = _numpy_attention(q.astype(jnp.bfloat16).astype(np.float32), k.astype(jnp.bfloat16).astype(np.float32),
                          v.astype(jnp.bfloat16).astype(np.float32), 0.25)[0]
  for implementation in ("dense", "blocked", "xla"):
    got = dot_product_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), scale=0.25,
                                implementation=implementation, query_chunk_size=8)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=3e-2)


def test_auto_blocks_only_large_attention_on_cpu():
  if jax.default_backend() != "cpu":
    pytest.skip("the CPU dispatch rule")

  def has_loop(lead, heads, t, s, **kw):
    q = jax.ShapeDtypeStruct(lead + (heads, t, 64), jnp.float32)
    kv = jax.ShapeDtypeStruct(lead + (heads, s, 64), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda q, k, v: dot_product_attention(q, k, v, **kw))(q, kv, kv)
    return any(eqn.primitive.name in ("scan", "while") for eqn in jaxpr.jaxpr.eqns)

  assert has_loop((1,), 12, 1029, 1029)  # DINOv2-B at 448 px
  assert has_loop((1,), 12, 4096, 4096)  # SegNext global blocks
  assert not has_loop((16,), 12, 256, 256)  # SegNext window blocks
  assert not has_loop((2,), 8, 100, 16384)  # few queries: nothing to block
  assert has_loop((1,), 2, 300, 300, query_chunk_size=128)  # an explicit block size is honoured
  assert not has_loop((1,), 2, 100, 300, query_chunk_size=128)
  assert not has_loop((1,), 12, 1029, 1029, return_probs=True)
  assert AUTO_QUERY_CHUNK_SIZE < 1029


def test_bad_arguments(rng):
  q, k, v = _inputs(rng, lead=(1,), t=4, s=3)
  with pytest.raises(UserValueError, match="implementation"):
    dot_product_attention(q, k, v, implementation="flash")
  with pytest.raises(UserValueError, match="query_chunk_size"):
    dot_product_attention(q, k, v, implementation="blocked", query_chunk_size=0)
  with pytest.raises(ValueError, match="boolean"):
    dot_product_attention(q, k, v, mask=np.ones((4, 3), np.float32))
  with pytest.raises(ValueError, match="does not broadcast"):
    dot_product_attention(q, k, v, bias=np.zeros((4, 4), np.float32))
  with pytest.raises(ValueError, match="hd"):
    dot_product_attention(q, k[..., :4], v)
