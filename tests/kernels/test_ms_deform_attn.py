"""Multi-scale deformable attention: XLA and Pallas (interpret mode) against torch grid_sample and a
NumPy transcription of the reference CUDA kernel; lowering for CUDA / ROCm / TPU via jax.export;
backward memory bound."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.kernels import ms_deform_attn
from dinoseg.kernels.ms_deform_attn import ms_deform_attn_pallas, ms_deform_attn_xla

# Non-square levels; D = 6 is not a power of two (exercises the Triton channel padding).
SHAPES = ((6, 5), (3, 4), (2, 2))
N, M, D, P, LQ = 2, 3, 6, 2, 11
S = sum(h * w for h, w in SHAPES)
L = len(SHAPES)
TRITON_CHECK = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]

# "auto" is the XLA implementation on CPU (dispatch: test_impl_dispatch_per_platform). With
# R = N * LQ * M = 66 query-head rows it runs in 14 chunks of 5, the last one padded.
IMPLS = {
    "auto": lambda *a: ms_deform_attn(*a, impl="auto"),
    "pallas_triton": lambda *a: ms_deform_attn_pallas(*a, backend="triton", interpret=True),
    "pallas_mosaic_tpu": lambda *a: ms_deform_attn_pallas(*a, backend="mosaic_tpu", interpret=True),
}


def _inputs(seed=0, shapes=SHAPES, lq=LQ):
  rng = np.random.default_rng(seed)
  s = sum(h * w for h, w in shapes)
  value = rng.normal(size=(N, s, M, D))
  # A third of the points fall outside [0, 1] (zero padding), some far outside.
  loc = rng.uniform(-0.35, 1.35, size=(N, lq, M, len(shapes), P, 2))
  loc[0, 0, 0, 0, 0] = (-3.0, 0.5)
  loc[0, 0, 1, 0, 0] = (0.0, 1.0)  # Exactly on the map border.
  weights = rng.uniform(size=(N, lq, M, len(shapes), P))
  cotangent = rng.normal(size=(N, lq, M * D))
  return value, loc, weights, cotangent


def torch_msda(torch, value, shapes, loc, weights):
  """The reference's pure-PyTorch formulation (grid_sample per level), written from its semantics."""
  n, _, m, d = value.shape
  _, lq, _, num_levels, num_points, _ = loc.shape
  per_level = value.split([h * w for h, w in shapes], dim=1)
  samples = []
  for level, (h, w) in enumerate(shapes):
    v = per_level[level].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
    grid = (2 * loc[:, :, :, level] - 1).permute(0, 2, 1, 3, 4).reshape(n * m, lq, num_points, 2)
    samples.append(torch.nn.functional.grid_sample(v, grid, mode="bilinear", padding_mode="zeros",
                                                   align_corners=False))  # (n*m, d, lq, P)
  stacked = torch.stack(samples, dim=-2).reshape(n * m, d, lq, num_levels * num_points)
  a = weights.permute(0, 2, 1, 3, 4).reshape(n * m, 1, lq, num_levels * num_points)
  return (stacked * a).sum(-1).reshape(n, m * d, lq).transpose(1, 2)


def numpy_cuda_transcription(value, shapes, loc, weights):
  """Forward of the reference CUDA kernel (ms_deform_im2col_bilinear), loop for loop, float64."""
  n, _, m, d = value.shape
  lq = loc.shape[1]
  out = np.zeros((n, lq, m, d))
  starts = np.concatenate([[0], np.cumsum([h * w for h, w in shapes])[:-1]])
  for b in range(n):
    for q in range(lq):
      for head in range(m):
        for level, (h, w) in enumerate(shapes):
          for p in range(loc.shape[4]):
            x, y = loc[b, q, head, level, p]
            hh, ww = y * h - 0.5, x * w - 0.5
            if not (-1 < hh < h and -1 < ww < w):
              continue
            h0, w0 = int(np.floor(hh)), int(np.floor(ww))
            lh, lw = hh - h0, ww - w0
            acc = np.zeros(d)
            for dy, dx, wt in ((0, 0, (1 - lh) * (1 - lw)), (0, 1, (1 - lh) * lw),
                               (1, 0, lh * (1 - lw)), (1, 1, lh * lw)):
              yy, xx = h0 + dy, w0 + dx
              if 0 <= yy < h and 0 <= xx < w:
                acc += wt * value[b, starts[level] + yy * w + xx, head]
            out[b, q, head] += weights[b, q, head, level, p] * acc
  return out.reshape(n, lq, m * d)


@pytest.fixture(scope="module")
def reference():
  """Output and gradients of torch grid_sample (float64, autograd) on the shared inputs."""
  torch = pytest.importorskip("torch")
  value, loc, weights, cotangent = _inputs()
  tensors = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (value, loc, weights)]
  out = torch_msda(torch, tensors[0], SHAPES, tensors[1], tensors[2])
  out.backward(torch.tensor(cotangent))
  return out.detach().numpy(), [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("impl", list(IMPLS))
def test_matches_torch_grid_sample(impl, reference):
  value, loc, weights, cotangent = (jnp.asarray(x, jnp.float32) for x in _inputs())
  fn = jax.jit(lambda v, l, w: IMPLS[impl](v, SHAPES, l, w))
  out, vjp = jax.vjp(fn, value, loc, weights)
  grads = vjp(cotangent)
  ref_out, ref_grads = reference
  assert_close(out, ref_out, 1e-5, name=f"{impl} output")
  for name, g, r in zip(("value", "sampling_locations", "attention_weights"), grads, ref_grads):
    assert_close(g, r, 1e-5, name=f"{impl} d{name}")


def test_xla_matches_cuda_kernel_transcription():
  shapes = ((4, 3), (2, 5))
  value, loc, weights, _ = _inputs(seed=1, shapes=shapes, lq=4)
  expected = numpy_cuda_transcription(value, shapes, loc, weights)
  out = ms_deform_attn(jnp.asarray(value, jnp.float32), shapes, jnp.asarray(loc, jnp.float32),
                       jnp.asarray(weights, jnp.float32), impl="xla")
  assert_close(out, expected, 1e-5)


def test_bfloat16_value():
  value, loc, weights, _ = (jnp.asarray(x, jnp.float32) for x in _inputs())
  out32 = ms_deform_attn_xla(value, SHAPES, loc, weights, query_chunk=1024)
  out16 = ms_deform_attn_xla(value.astype(jnp.bfloat16), SHAPES, loc, weights, query_chunk=1024)
  assert out16.dtype == jnp.bfloat16
  assert_close(out16.astype(jnp.float32), out32, 2e-2)


def _largest_tensor_bytes(module_text: str) -> int:
  """Largest tensor type (bytes) in a StableHLO / HLO module text."""
  sizes = [int(np.prod([int(x) for x in dims.split("x")[:-1]] or [1])) * 4
           for dims in re.findall(r"tensor<((?:\d+x)+)(?:f32|i32|bf16|f16|i1)>", module_text)]
  return max(sizes, default=0)


# Mask DINO-like channel count (D = 32) for the memory bound; the bound is the forward's sampled
# values (N, Lq, M, L, P, D).
MEM_SHAPES, MEM_N, MEM_M, MEM_D, MEM_P, MEM_LQ = ((16, 16), (8, 8)), 1, 2, 32, 4, 1024
MEM_SAMPLED_BYTES = MEM_N * MEM_LQ * MEM_M * len(MEM_SHAPES) * MEM_P * MEM_D * 4


def _mem_args():
  s = sum(h * w for h, w in MEM_SHAPES)
  return (jax.ShapeDtypeStruct((MEM_N, s, MEM_M, MEM_D), jnp.float32),
          jax.ShapeDtypeStruct((MEM_N, MEM_LQ, MEM_M, len(MEM_SHAPES), MEM_P, 2), jnp.float32),
          jax.ShapeDtypeStruct((MEM_N, MEM_LQ, MEM_M, len(MEM_SHAPES), MEM_P), jnp.float32))


@pytest.mark.parametrize("backend,platform,kernels", [
    ("triton", "cuda", (1, 3)), ("triton", "rocm", (1, 3)), ("mosaic_tpu", "tpu", (1, 2))])
def test_pallas_lowers_for_accelerators(backend, platform, kernels):
  """The Pallas kernels (forward, and forward + backward) lower for the accelerator platforms, and
  no tensor of the lowered program is larger than a quarter of the forward's sampled values
  (Triton: the (R, K) plan, 1/8; TPU: a chunk of the XLA value-gradient scatter, 1/4)."""
  fwd = lambda v, l, w: ms_deform_attn_pallas(v, MEM_SHAPES, l, w, backend=backend)
  grad = jax.grad(lambda v, l, w: jnp.sum(fwd(v, l, w) ** 2), argnums=(0, 1, 2))
  marker = "tpu_custom_call" if platform == "tpu" else "__gpu$xla.gpu.triton"
  for fn, count in zip((fwd, grad), kernels):
    text = jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=TRITON_CHECK)(
        *_mem_args()).mlir_module()
    assert text.count(marker) == count
    assert _largest_tensor_bytes(text) <= MEM_SAMPLED_BYTES // 4


@pytest.mark.parametrize("impl,expected", [
    ("auto", {"cpu": None, "cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}),
    ("pallas", {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}),
    ("xla", {"cuda": None, "tpu": None})])
def test_impl_dispatch_per_platform(impl, expected):
  """impl="auto" is XLA on CPU and Pallas on CUDA / TPU; "xla" never uses Pallas."""
  value, loc, weights, _ = (jnp.asarray(x, jnp.float32) for x in _inputs())
  fn = lambda v, l, w: ms_deform_attn(v, SHAPES, l, w, impl=impl)
  for platform, marker in expected.items():
    text = jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=TRITON_CHECK)(
        value, loc, weights).mlir_module()
    for other in ("__gpu$xla.gpu.triton", "tpu_custom_call"):
      assert (other in text) == (other == marker), (platform, other)


def test_xla_backward_memory():
  """The XLA backward compiled for this CPU needs less scratch than half the sampled values, and
  lowered for TPU (1/16 of the rows per step) holds no tensor above a quarter of them."""
  grad = jax.grad(lambda v, l, w: jnp.sum(ms_deform_attn(v, MEM_SHAPES, l, w, impl="xla")),
                  argnums=(0, 1, 2))
  compiled = jax.jit(grad).lower(*_mem_args()).compile()
  assert compiled.memory_analysis().temp_size_in_bytes <= MEM_SAMPLED_BYTES // 2
  assert _largest_tensor_bytes(jax.jit(grad).lower(*_mem_args()).as_text()) <= MEM_SAMPLED_BYTES // 8
  text = jax.export.export(jax.jit(grad), platforms=["tpu"])(*_mem_args()).mlir_module()
  assert _largest_tensor_bytes(text) <= MEM_SAMPLED_BYTES // 4


def test_bad_arguments():
  value, loc, weights, _ = (jnp.asarray(x, jnp.float32) for x in _inputs())
  with pytest.raises(ValueError, match="spatial_shapes"):
    ms_deform_attn(value, ((6, 5), (3, 4)), loc, weights)
  with pytest.raises(ValueError, match="spatial_shapes"):
    ms_deform_attn(value, jnp.asarray(SHAPES), loc, weights)
  with pytest.raises(ValueError, match="impl"):
    ms_deform_attn(value, SHAPES, loc, weights, impl="cuda")
  with pytest.raises(ValueError, match="sampling_locations"):
    ms_deform_attn(value, SHAPES, loc[..., :1], weights)
  with pytest.raises(ValueError, match="attention_weights"):
    ms_deform_attn(value, SHAPES, loc, weights[..., :1])
  with pytest.raises(ValueError, match="value"):
    ms_deform_attn(value[0], SHAPES, loc, weights)
  with pytest.raises(ValueError, match="backend"):
    ms_deform_attn_pallas(value, SHAPES, loc, weights, backend="mosaic_gpu")


def test_sharded_equals_single_device(impl="xla"):
  """On a data x tensor mesh every device computes its own images and heads: no gather of inputs
  across devices (without the shard_map, XLA all-gathers the value), same values. The shard_map
  wraps every impl alike (api.py); the XLA one keeps the test fast."""
  from jax.sharding import NamedSharding, PartitionSpec as P

  from dinoseg import parallel

  shapes, n, m = ((4, 3), (2, 2)), 4, 2
  rng = np.random.default_rng(3)
  s = sum(h * w for h, w in shapes)
  value = jnp.asarray(rng.normal(size=(n, s, m, 4)), jnp.float32)
  loc = jnp.asarray(rng.uniform(-0.2, 1.2, size=(n, 5, m, 2, 2, 2)), jnp.float32)
  weights = jnp.asarray(rng.uniform(size=(n, 5, m, 2, 2)), jnp.float32)
  loss = lambda v, l, w: jnp.sum(jnp.sin(ms_deform_attn(v, shapes, l, w, impl=impl)))
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  expected = step(value, loc, weights)
  mesh = parallel.make_mesh({"data": 4, "tensor": 2})
  batch = NamedSharding(mesh, P("data"))
  with jax.set_mesh(mesh):
    args = [jax.device_put(x, batch) for x in (value, loc, weights)]
    text = step.lower(*args).compile().as_text()
    actual = step(*args)
  for collective in ("all-gather", "all-to-all", "collective-permute"):  # (all-reduce: the loss)
    assert collective not in text
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert_close(a, e, 1e-6)
