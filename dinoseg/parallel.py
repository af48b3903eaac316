"""Device meshes, logical axis rules, parameter and batch shardings.

One mesh per run, built from the config:

    config.mesh = ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

Axes are laid out in the canonical order of `MESH_AXIS_ORDER` (other names follow in the
given order); -1 takes all remaining devices. Meshes use Auto axis types (the GSPMD /
logical-rules style), on jax 0.10 and 0.11+ alike.

Parameters declared with `nn.with_logical_partitioning(init, ("embed", "mlp"))` are
placed by the logical axis rules (`DEFAULT_RULES`, overridable from the config as
`config.sharding_rules`). Parameters without annotations are replicated, or, when the
mesh has an "fsdp" axis larger than 1, sharded over it along their largest divisible
dimension (ZeRO-3 style) once they exceed `fsdp_min_size` elements.

The batch axis of every input is split over ("data", "fsdp").
"""
from typing import Any, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXIS_ORDER = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axis (or axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("classes", None),
    ("length", None),
    ("height", None),
    ("width", None),
    ("channels", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
)


def mesh_axes_from_config(mesh_config: Mapping[str, int] | Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
  """Normalizes a mesh spec ({name: size} or [(name, size), ...]) to ordered pairs."""
  if isinstance(mesh_config, Mapping) or hasattr(mesh_config, "items"):
    pairs = list(mesh_config.items())
    known = [(n, s) for name in MESH_AXIS_ORDER for n, s in pairs if n == name]
    pairs = known + [(n, s) for n, s in pairs if n not in MESH_AXIS_ORDER]
  else:
    pairs = [tuple(p) for p in mesh_config]
  names = [n for n, _ in pairs]
  if not pairs or len(set(names)) != len(names):
    raise ValueError(f"mesh must name each axis once, got {names}")
  for name, size in pairs:
    if not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
      raise ValueError(f"mesh axis {name!r} must have a positive size or -1, got {size!r}")
  if sum(1 for _, s in pairs if s == -1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {pairs}")
  return [(str(n), int(s)) for n, s in pairs]


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a Mesh with Auto axes from a mesh spec (see module docstring).

  Raises:
    ValueError: if the sizes do not multiply to the number of devices.
  """
  pairs = mesh_axes_from_config(mesh_config)
  devices = list(jax.devices() if devices is None else devices)
  known = int(np.prod([s for _, s in pairs if s != -1]))
  if any(s == -1 for _, s in pairs):
    if len(devices) % known:
      raise ValueError(f"mesh {pairs}: {len(devices)} devices are not divisible by {known}")
    pairs = [(n, len(devices) // known if s == -1 else s) for n, s in pairs]
  shape = tuple(s for _, s in pairs)
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh {pairs} needs {int(np.prod(shape))} devices, {len(devices)} are available")
  names = tuple(n for n, _ in pairs)
  try:
    from jax.experimental import mesh_utils
    device_array = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # Non-TPU topologies the helper does not know: plain order.
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def rules_from_config(rules: Iterable | None) -> tuple[tuple[str, Any], ...]:
  """Validates logical axis rules ((logical, mesh_axes_or_None), ...); None gives DEFAULT_RULES."""
  if rules is None:
    return DEFAULT_RULES
  out = []
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"sharding rule must be (logical_name, mesh_axes), got {rule!r}")
    target = rule[1]
    if isinstance(target, list):
      target = tuple(target)
    out.append((rule[0], target))
  return tuple(out)


def _filter_rules(rules, mesh: Mesh):
  """Drops mesh axes the mesh does not have (so one rule set serves every mesh)."""
  out = []
  for name, target in rules:
    if target is None:
      out.append((name, None))
      continue
    axes = (target,) if isinstance(target, str) else tuple(target)
    axes = tuple(a for a in axes if a in mesh.axis_names)
    out.append((name, axes[0] if len(axes) == 1 else (axes or None)))
  return tuple(out)


def batch_sharding(mesh: Mesh, batch_axes: Sequence[str] = BATCH_AXES) -> NamedSharding:
  """Sharding of arrays whose leading axis is the batch; other axes replicated."""
  axes = tuple(a for a in batch_axes if a in mesh.axis_names)
  return NamedSharding(mesh, P(axes if axes else None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def param_shardings(abstract_params, mesh: Mesh, rules=None, *, fsdp_min_size: int = 2 ** 14):
  """NamedSharding for every leaf of a (possibly boxed) parameter tree.

  Args:
    abstract_params: output of `jax.eval_shape(model.init, ...)`, leaves may be
      `nn.LogicallyPartitioned` boxes (annotated) or plain ShapeDtypeStructs.
    rules: logical axis rules; None = DEFAULT_RULES.
  Returns:
    A tree of NamedSharding with the structure of the *unboxed* parameters.
  """
  rules = _filter_rules(rules_from_config(rules), mesh)
  fsdp_size = dict(zip(mesh.axis_names, mesh.devices.shape)).get("fsdp", 1)

  def one(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      spec = nn.logical_to_mesh_axes(leaf.names, rules)
      return NamedSharding(mesh, spec)
    if isinstance(leaf, nn.Partitioned):
      return NamedSharding(mesh, P(*leaf.names))
    return NamedSharding(mesh, _fsdp_spec(leaf.shape, fsdp_size, fsdp_min_size))

  return jax.tree.map(one, abstract_params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def unbox(tree):
  """Strips Flax partitioning metadata boxes."""
  return nn.meta.unbox(tree)


def global_batch(local_batch, mesh: Mesh, batch_axes: Sequence[str] = BATCH_AXES):
  """Assembles a global, batch-sharded jax.Array tree from this process's NumPy batch.

  Each process passes its own slice (leading axis = per-process batch); the global batch
  is the concatenation over processes in process order.
  """
  sharding = batch_sharding(mesh, batch_axes)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def per_process_batch_size(global_batch_size: int) -> int:
  """Global batch size / number of processes, with a clear error if it does not divide."""
  n = jax.process_count()
  if global_batch_size % n:
    raise ValueError(f"batch size {global_batch_size} is not divisible by {n} processes")
  return global_batch_size // n


def batch_shard_count(mesh: Mesh, batch_axes: Sequence[str] = BATCH_AXES) -> int:
  """Number of shards the batch dimension is split into (product of the mesh's batch axes)."""
  return int(np.prod([dict(zip(mesh.axis_names, mesh.devices.shape))[a] for a in batch_axes
                      if a in mesh.axis_names]))


def pad_eval_batch(local_batch: dict, mesh: Mesh, batch_axes: Sequence[str] = BATCH_AXES) -> dict:
  """Pads this process's eval batch with invalid examples (copies of its first row marked
  `example_valid` False, as the eval pipeline pads its last batch) so that its size divides the
  process's share of the batch shards (e.g. eval batch 2 on 8 devices -> 8 rows).

  Raises:
    ValueError: the batch needs padding but has no `example_valid` entry to mark the padded rows.
  """
  per_process = max(1, batch_shard_count(mesh, batch_axes) // jax.process_count())
  n = int(np.shape(jax.tree.leaves(local_batch)[0])[0])
  if n % per_process == 0:
    return local_batch
  if "example_valid" not in local_batch:
    raise ValueError(f"eval batch of {n} examples per process is not divisible by the {per_process} batch shards "
                     f"of this process, and the batch has no 'example_valid' to pad it with; set the eval batch size "
                     f"to a multiple of {per_process}")
  rows = np.concatenate([np.arange(n), np.zeros(-n % per_process, np.int64)])
  padded = jax.tree.map(lambda x: np.asarray(x)[rows], dict(local_batch))
  padded["example_valid"] = np.asarray(padded["example_valid"]).astype(bool).copy()
  padded["example_valid"][n:] = False
  return padded


def check_batch_divisible(global_batch_size: int, mesh: Mesh, batch_axes: Sequence[str] = BATCH_AXES) -> None:
  shards = batch_shard_count(mesh, batch_axes)
  if global_batch_size % shards:
    raise ValueError(f"batch size {global_batch_size} is not divisible by the {shards} batch shards "
                     f"of mesh {dict(zip(mesh.axis_names, mesh.devices.shape))}")


def logical_axis_rules(rules, mesh: Mesh):
  """Context manager activating (mesh-filtered) logical axis rules for nn.with_logical_constraint."""
  return nn.logical_axis_rules(_filter_rules(rules_from_config(rules), mesh))


__all__ = ["MESH_AXIS_ORDER", "BATCH_AXES", "DEFAULT_RULES", "make_mesh", "mesh_axes_from_config",
           "rules_from_config", "batch_sharding", "replicated", "param_shardings", "unbox", "global_batch",
           "per_process_batch_size", "batch_shard_count", "pad_eval_batch", "check_batch_divisible", "logical_axis_rules"]
