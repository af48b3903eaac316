"""`ms_deform_attn`: multi-scale deformable attention (Deformable DETR / Mask DINO semantics).

Implementations (`IMPLEMENTATIONS`, picked with `impl=`):
  "xla"     chunked XLA row gathers with a hand-written VJP (`xla.py`); runs everywhere.
  "pallas"  Pallas kernels (`pallas.py`): Triton on CUDA and ROCm, Mosaic on TPU, interpret mode
            on CPU (slow; for tests). Should a JAX release drop Pallas Triton, GPUs get "xla".
  "auto"    "pallas" on CUDA, ROCm and TPU, "xla" elsewhere (CPU).
The choice between platforms is made when lowering (`jax.lax.platform_dependent`), so one traced
function serves, and exports to, every platform.

Under a mesh (argument or `jax.set_mesh` context) the computation runs per device with
`jax.shard_map`, the batch split over the batch axes and the heads over the head axis
(`dinoseg.kernels.sharding`).
"""
from typing import Callable, Sequence

import jax
from jax.sharding import PartitionSpec as P

from dinoseg.kernels import sharding
from dinoseg.kernels.ms_deform_attn.pallas import ms_deform_attn_pallas
from dinoseg.kernels.ms_deform_attn.triton_kernels import TRITON_AVAILABLE
from dinoseg.kernels.ms_deform_attn.xla import ms_deform_attn_xla


def _pallas_on(backend: str, interpret: bool = False) -> Callable:
  return lambda spatial_shapes: lambda value, loc, weights: ms_deform_attn_pallas(
      value, spatial_shapes, loc, weights, backend=backend, interpret=interpret)


def _xla(spatial_shapes):
  return lambda value, loc, weights: ms_deform_attn_xla(value, spatial_shapes, loc, weights)


def _per_platform(default: Callable) -> Callable:
  gpu = _pallas_on("triton") if TRITON_AVAILABLE else _xla

  def run(value, spatial_shapes, loc, weights):
    return jax.lax.platform_dependent(
        value, loc, weights, cuda=gpu(spatial_shapes), rocm=gpu(spatial_shapes),
        tpu=_pallas_on("mosaic_tpu")(spatial_shapes), default=default(spatial_shapes))
  return run


IMPLEMENTATIONS: dict[str, Callable] = {
    "xla": lambda value, spatial_shapes, loc, weights: _xla(spatial_shapes)(value, loc, weights),
    "pallas": _per_platform(_pallas_on("triton" if TRITON_AVAILABLE else "mosaic_tpu", interpret=True)),
    "auto": _per_platform(_xla),
}


def _check_spatial_shapes(spatial_shapes) -> tuple[tuple[int, int], ...]:
  if isinstance(spatial_shapes, jax.Array) or not isinstance(spatial_shapes, (tuple, list)):
    raise ValueError("spatial_shapes must be a static tuple ((H_0, W_0), ...) of Python ints, got "
                     f"{type(spatial_shapes).__name__}")
  out = []
  for pair in spatial_shapes:
    if len(pair) != 2:
      raise ValueError(f"spatial_shapes must hold (H, W) pairs, got {spatial_shapes!r}")
    try:
      h, w = (int(x) for x in pair)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
      raise ValueError(f"spatial_shapes must hold static ints, got {spatial_shapes!r}") from e
    if h < 1 or w < 1:
      raise ValueError(f"spatial_shapes must be positive, got {spatial_shapes!r}")
    out.append((h, w))
  if not out:
    raise ValueError("spatial_shapes must name at least one level")
  return tuple(out)


def ms_deform_attn(value: jax.Array, spatial_shapes: Sequence[tuple[int, int]],
                   sampling_locations: jax.Array, attention_weights: jax.Array, *,
                   impl: str = "auto", mesh=None, batch_axes: Sequence[str] = sharding.BATCH_AXES,
                   head_axis: str = sharding.HEAD_AXIS) -> jax.Array:
  """Multi-scale deformable attention core (no projections).

  For every query q and head m: sum over levels l and points p of
  attention_weights[n, q, m, l, p] * bilinear sample of level l of value[n, :, m] at
  sampling_locations[n, q, m, l, p]. Locations are (x, y) in [0, 1]; pixel centres sit at
  (x * W - 0.5, y * H - 0.5) and pixels outside the map read as 0 (PyTorch `grid_sample`,
  align_corners=False, padding_mode="zeros"; equal to the reference CUDA kernel).

  Args:
    value: (N, S, M, D) with S = sum of H_l * W_l, levels concatenated in order, row-major.
    spatial_shapes: static ((H_0, W_0), ...) of Python ints, one pair per level.
    sampling_locations: (N, Lq, M, L, P, 2), last axis (x, y).
    attention_weights: (N, Lq, M, L, P) (already softmax-normalized by the caller).
    impl: "auto" | "xla" | "pallas" (see the module docstring).
    mesh: device mesh to run on per shard; None uses the `jax.set_mesh` context (if any).
    batch_axes, head_axis: mesh axes to split N and M over (when present and dividing them).
  Returns:
    (N, Lq, M * D) in value's dtype, differentiable with respect to value, sampling_locations
    and attention_weights.
  Raises:
    ValueError: on inconsistent shapes, non-static spatial_shapes or an unknown impl.
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"impl must be one of {tuple(IMPLEMENTATIONS)}, got {impl!r}")
  spatial_shapes = _check_spatial_shapes(spatial_shapes)
  if getattr(value, "ndim", None) != 4:
    raise ValueError(f"value must have shape (N, S, M, D), got {getattr(value, 'shape', None)}")
  n, s, m, _ = value.shape
  total = sum(h * w for h, w in spatial_shapes)
  if total != s:
    raise ValueError(f"spatial_shapes {spatial_shapes} cover {total} positions but value has S={s}")
  loc_shape = getattr(sampling_locations, "shape", None)
  if (loc_shape is None or len(loc_shape) != 6 or loc_shape[-1] != 2 or loc_shape[0] != n
      or loc_shape[2] != m or loc_shape[3] != len(spatial_shapes)):
    raise ValueError(f"sampling_locations must have shape (N={n}, Lq, M={m}, L={len(spatial_shapes)}, P, 2), "
                     f"got {loc_shape}")
  if getattr(attention_weights, "shape", None) != loc_shape[:-1]:
    raise ValueError(f"attention_weights must have shape {loc_shape[:-1]}, "
                     f"got {getattr(attention_weights, 'shape', None)}")
  run = lambda v, loc, w: IMPLEMENTATIONS[impl](v, spatial_shapes, loc, w)
  mesh = sharding.resolve_mesh(mesh)
  if mesh is None:
    return run(value, sampling_locations, attention_weights)
  batch = sharding.spec_entry(sharding.split_axes(mesh, batch_axes, n))
  heads = sharding.spec_entry(sharding.split_axes(mesh, (head_axis,), m))
  if batch is None and heads is None:
    return run(value, sampling_locations, attention_weights)
  # Output (N, Lq, M * D): heads are the major part of the last axis, so it splits like M.
  per_query = P(batch, None, heads)
  return sharding.shard_map(run, mesh, (P(batch, None, heads, None), per_query, per_query), per_query)(
      value, sampling_locations, attention_weights)
