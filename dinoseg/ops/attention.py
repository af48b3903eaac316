"""Scaled dot-product attention: the one function every transformer block in dinoseg calls.

    out = softmax(scale * q k^T + bias, masked where `mask` is False) v

Layout: head-major, q (..., H, T, hd), k and v (..., H, S, hd), with any number of leading
batch dims (Swin passes (B, windows, H, N, hd)); `bias` and `mask` broadcast to (..., H, T, S).
Head-major is what the blocks produce after splitting their packed qkv projection, and the
einsums over it are the fastest XLA CPU formulation measured here (scripts/bench_attention.py).

Implementations (`implementation=`):
- "dense": the logits (..., H, T, S) in one piece, then softmax and the value product. The only
  path that can return the probabilities (`return_probs=True`).
- "blocked": the same arithmetic for `query_chunk_size` queries at a time (`lax.map` over query
  blocks). Each block is rematerialized in the backward pass (`jax.checkpoint`), so neither pass
  holds more than (..., H, query_chunk_size, S) logits. Values equal "dense" up to rounding.
- "xla" / "cudnn": `jax.nn.dot_product_attention` with that implementation (token-major inside;
  cuDNN flash attention on NVIDIA GPUs: bf16/fp16, head dim a multiple of 8 up to 128).
- "auto": "cudnn" on a GPU when its constraints hold (else "xla"); on CPU "blocked" when the
  logits are large enough that blocking measured faster (`query_chunk_size` given, or at least
  `AUTO_BLOCK_MIN_QUERIES` queries and `AUTO_BLOCK_MIN_LOGITS` logits per batch element),
  else "dense". `return_probs=True` always takes "dense".

Numerics: in the dense and blocked paths q is multiplied by `scale` in its own dtype (as
torch's nn.MultiheadAttention, Swin and DINOv2 do), the logits are accumulated in float32 (the
q k^T product takes `preferred_element_type=float32`), bias and mask are applied and the softmax
is taken in float32, then the probabilities are cast to v's dtype for the value product.

Masked rows: `mask` is boolean, True = may attend (jax's convention). Masked logits become a
large finite negative number, never -inf, so a query whose keys are all masked gets the uniform
average of the values (jax.nn.dot_product_attention's XLA semantics) and finite gradients —
never NaN. Callers that follow torch's "unblock fully blocked rows" rule do that before calling.
"""
import logging
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.errors import UserValueError

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "dense", "blocked", "xla", "cudnn")
Implementation = Literal["auto", "dense", "blocked", "xla", "cudnn"]

# "auto" on CPU blocks the queries from this many queries and logits per batch element (H * T * S)
# up, with this block size (scripts/bench_attention.py, docs/benchmarks.md "Attention").
AUTO_BLOCK_MIN_QUERIES = 512
AUTO_BLOCK_MIN_LOGITS = 4 * 1024 * 1024
AUTO_QUERY_CHUNK_SIZE = 128
# What masked logits are set to: finite, so fully masked rows stay finite (jax uses the same value).
_MASKED_LOGIT = float(-0.7 * np.finfo(np.float32).max)


def _broadcast(*shapes) -> tuple[int, ...] | None:
  try:
    return tuple(jnp.broadcast_shapes(*shapes))
  except ValueError:
    return None


def _check_inputs(q, k, v, bias, mask) -> None:
  if q.ndim < 3 or k.ndim < 3 or v.ndim < 3:
    raise ValueError(f"q, k, v must be (..., H, T, hd) / (..., H, S, hd), got shapes {q.shape}, {k.shape}, {v.shape}")
  if k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
    raise ValueError(f"k and v must be (..., H, S, hd) with q's hd: got q {q.shape}, k {k.shape}, v {v.shape}")
  heads = _broadcast(q.shape[:-2], k.shape[:-2])
  if heads is None:
    raise ValueError(f"the leading (..., H) dims of q {q.shape} and k {k.shape} do not broadcast")
  full = heads + (q.shape[-2], k.shape[-2])
  for name, x in (("bias", bias), ("mask", mask)):
    if x is not None and (x.ndim > len(full) or _broadcast(x.shape, full) != full):
      raise ValueError(f"{name} of shape {x.shape} does not broadcast to the logits (..., H, T, S) = {full}")
  if mask is not None and mask.dtype != jnp.bool_:
    raise ValueError(f"mask must be boolean (True = attend), got {mask.dtype}")


def _dense(q, k, v, scale, bias, mask):
  """Materialized attention: returns out (..., H, T, hd) and probabilities (..., H, T, S) in v's dtype."""
  q = q * jnp.asarray(scale, q.dtype)
  logits = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, _MASKED_LOGIT)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("...qk,...kd->...qd", probs, v), probs


def _split_queries(x, chunk: int, axis: int):
  """Pads `axis` to a multiple of `chunk` and moves the block index to the front: (nC, ..., chunk, ...)."""
  t = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, -t % chunk)
  x = jnp.pad(x, pad)
  x = x.reshape(x.shape[:axis] + (x.shape[axis] // chunk, chunk) + x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _blocked(q, k, v, scale, bias, mask, chunk: int):
  """`_dense` for `chunk` queries at a time, each block rematerialized in the backward pass."""
  t = q.shape[-2]
  nd = q.ndim
  # Bias / mask rows that vary with the query are split with q; a size-1 query axis is shared.
  per_query = {}
  shared = {}
  for name, x in (("bias", bias), ("mask", mask)):
    if x is None:
      continue
    x = x.reshape((1,) * (nd - x.ndim) + x.shape)
    if x.shape[-2] == t and t > 1:
      per_query[name] = _split_queries(x, chunk, nd - 2)
    else:
      shared[name] = x

  @jax.checkpoint
  def block(args):
    qc, extra = args
    terms = {**shared, **extra}
    return _dense(qc, k, v, scale, terms.get("bias"), terms.get("mask"))[0]

  out = jax.lax.map(block, (_split_queries(q, chunk, nd - 2), per_query))  # (nC, ..., H, chunk, hd)
  out = jnp.moveaxis(out, 0, nd - 2)
  out = out.reshape(out.shape[:nd - 2] + (-1, out.shape[-1]))
  return out[..., :t, :]


def _flatten_terms(x, lead: tuple[int, ...], nd: int):
  """bias / mask broadcastable to (*lead, H, T, S) -> 4-d (B' or 1, H or 1, T or 1, S or 1) for jax.nn."""
  if x is None:
    return None
  x = x.reshape((1,) * (nd - x.ndim) + x.shape)
  if all(s == 1 for s in x.shape[:len(lead)]):
    return x.reshape((1,) + x.shape[len(lead):])
  x = jnp.broadcast_to(x, lead + x.shape[len(lead):])
  return x.reshape((-1,) + x.shape[len(lead):])


def _jax_nn(q, k, v, scale, bias, mask, implementation: str):
  """jax.nn.dot_product_attention on the head-major inputs (leading dims flattened, token-major inside)."""
  lead = jnp.broadcast_shapes(q.shape[:-3], k.shape[:-3])
  h, t, d = q.shape[-3:]
  s = k.shape[-2]
  tokens = lambda x, n: jnp.broadcast_to(x, lead + x.shape[-3:]).reshape(-1, h, n, d).transpose(0, 2, 1, 3)  # noqa: E731
  out = jax.nn.dot_product_attention(
      tokens(q, t), tokens(k, s), tokens(v, s), _flatten_terms(bias, lead, q.ndim),
      _flatten_terms(mask, lead, q.ndim), scale=float(scale), implementation=implementation)
  return out.transpose(0, 2, 1, 3).reshape(lead + (h, t, d))


def cudnn_supported(q: jax.Array, k: jax.Array, return_probs: bool = False) -> bool:
  """Whether cuDNN flash attention takes these inputs: a GPU, bf16/fp16, head dim % 8 == 0 and <= 128."""
  if return_probs or jax.default_backend() != "gpu":
    return False
  hd = q.shape[-1]
  return (q.dtype in (jnp.bfloat16, jnp.float16) and k.dtype == q.dtype and hd % 8 == 0 and hd <= 128)


def _auto_cpu_chunk(q, k) -> int | None:
  t, s, h = q.shape[-2], k.shape[-2], q.shape[-3]
  if t >= AUTO_BLOCK_MIN_QUERIES and h * t * s >= AUTO_BLOCK_MIN_LOGITS:
    return AUTO_QUERY_CHUNK_SIZE
  return None


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float | None = None,
                          bias: jax.Array | None = None, mask: jax.Array | None = None,
                          implementation: Implementation = "auto", query_chunk_size: int | None = None,
                          return_probs: bool = False):
  """softmax(scale * q k^T + bias, where mask) v, head-major (see the module docstring).

  Args:
    q: (..., H, T, hd) queries.
    k: (..., H, S, hd) keys; v: (..., H, S, hd) values (leading dims broadcast against q's).
    scale: logit scale; None: hd ** -0.5.
    bias: optional additive logits bias broadcastable to (..., H, T, S) (added in float32).
    mask: optional bool broadcastable to (..., H, T, S), True = attend. A fully masked row
      averages all values uniformly (finite values and gradients).
    implementation: "auto", "dense", "blocked", "xla" or "cudnn" (module docstring).
    query_chunk_size: queries per block of the blocked path; with "auto" on CPU a value
      requests blocking whenever T exceeds it. None: `AUTO_QUERY_CHUNK_SIZE` where blocking.
    return_probs: also return the probabilities (..., H, T, S) (float32 softmax cast to v's
      dtype); only the dense path materializes them.
  Returns:
    out (..., H, T, hd) in v's dtype, or (out, probs) with `return_probs`.
  """
  if implementation not in IMPLEMENTATIONS:
    raise UserValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  if query_chunk_size is not None and int(query_chunk_size) < 1:
    raise UserValueError(f"query_chunk_size must be a positive integer or None, got {query_chunk_size}")
  q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
  bias = None if bias is None else jnp.asarray(bias)
  mask = None if mask is None else jnp.asarray(mask)
  _check_inputs(q, k, v, bias, mask)
  if scale is None:
    scale = q.shape[-1] ** -0.5
  t = q.shape[-2]

  if return_probs:
    if implementation not in ("auto", "dense"):
      raise ValueError(f"return_probs needs the dense implementation, got implementation={implementation!r}")
    return _dense(q, k, v, scale, bias, mask)

  if implementation == "auto":
    if jax.default_backend() == "gpu":
      if cudnn_supported(q, k):
        try:
          return _jax_nn(q, k, v, scale, bias, mask, "cudnn")
        except (ValueError, NotImplementedError) as e:  # a cuDNN constraint beyond `cudnn_supported`
          logger.debug("cuDNN attention refused shapes q %s, k %s (%s); using XLA", q.shape, k.shape, e)
      implementation = "xla"
    elif query_chunk_size is not None:
      implementation = "blocked" if t > query_chunk_size else "dense"
    else:
      query_chunk_size = _auto_cpu_chunk(q, k)
      implementation = "dense" if query_chunk_size is None else "blocked"

  if implementation == "dense":
    return _dense(q, k, v, scale, bias, mask)[0]
  if implementation == "blocked":
    chunk = min(int(query_chunk_size or AUTO_QUERY_CHUNK_SIZE), t)
    if chunk >= t:
      return _dense(q, k, v, scale, bias, mask)[0]
    return _blocked(q, k, v, scale, bias, mask, chunk)
  return _jax_nn(q, k, v, scale, bias, mask, implementation)


__all__ = ["dot_product_attention", "cudnn_supported", "IMPLEMENTATIONS", "AUTO_QUERY_CHUNK_SIZE"]
