"""Running per-example kernels on each device's shard of the batch.

A `pallas_call` is opaque to XLA's SPMD partitioner (it would gather its inputs and compute the
whole batch on every device), and loops over chunks of a sharded axis partition badly. The public
kernels therefore run under `jax.shard_map` when a mesh is known (passed, or set with
`jax.set_mesh`): every device computes its own images (and, for attention, its own heads).

Axis names default to dinoseg's conventions (`dinoseg.parallel`): the batch is split over
("data", "fsdp") and attention heads over "tensor". Axes the mesh lacks, or of size 1, are ignored;
if the sizes do not divide the array dimension the dimension stays unsplit (still correct).
"""
from typing import Sequence

import jax
import numpy as np

BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"


def resolve_mesh(mesh=None):
  """`mesh` if given, else the `jax.set_mesh` context mesh, else None."""
  if mesh is not None:
    return mesh
  context = jax.sharding.get_abstract_mesh()
  return None if context is None or context.empty else context


def split_axes(mesh, names: Sequence[str], size: int) -> tuple[str, ...]:
  """The axes of `names` (in mesh order) to split a dimension of `size` over; () if none divide it."""
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  axes = tuple(a for a in mesh.axis_names if a in tuple(names) and sizes[a] > 1)
  if not axes or size % int(np.prod([sizes[a] for a in axes])):
    return ()
  return axes


def spec_entry(axes: tuple[str, ...]):
  """PartitionSpec entry for a dimension split over `axes` (None when unsplit)."""
  if not axes:
    return None
  return axes[0] if len(axes) == 1 else axes


def shard_map(fn, mesh, in_specs, out_specs):
  """`jax.shard_map` without replication checks (the kernels' outputs follow their inputs)."""
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
