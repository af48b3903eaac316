"""Meshes from config and the sharded train step equal to the single-device one (8 fake devices)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from dinoseg import parallel


class TinyConvNet(nn.Module):
  """A conv + two annotated dense layers; enough to exercise logical rules and fsdp fallback."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(16, (3, 3))(x)  # unannotated: fsdp fallback
    x = nn.relu(x).mean(axis=(1, 2))
    x = nn.with_logical_constraint(x, ("batch", "embed"))
    x = nn.Dense(64, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")))(x)
    x = nn.relu(x)
    x = nn.with_logical_constraint(x, ("batch", "mlp"))
    return nn.Dense(5, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "classes")))(x)


def _loss(model, params, batch):
  logits = model.apply({"params": params}, batch["x"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def _run(mesh, steps=3):
  model = TinyConvNet()
  tx = optax.adamw(1e-2)
  rng = np.random.default_rng(0)
  batches = [{"x": rng.standard_normal((16, 8, 8, 3)).astype(np.float32),
              "y": rng.integers(0, 5, 16).astype(np.int32)} for _ in range(steps)]
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
  p_shard = parallel.param_shardings(abstract, mesh, fsdp_min_size=64)
  init = jax.jit(lambda k: parallel.unbox(model.init(k, jnp.zeros((1, 8, 8, 3)))["params"]), out_shardings=p_shard)
  with jax.set_mesh(mesh), parallel.logical_axis_rules(None, mesh):
    params = init(jax.random.key(0))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
      loss, grads = jax.value_and_grad(lambda p: _loss(model, p, batch))(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for b in batches:
      params, opt_state, loss = step(params, opt_state, parallel.global_batch(b, mesh))
      losses.append(float(loss))
  return params, losses, p_shard


def test_sharded_step_equals_single_device():
  assert jax.device_count() == 8, "conftest must provide 8 fake CPU devices"
  mesh8 = parallel.make_mesh({"data": 4, "fsdp": 2})
  mesh1 = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  params8, losses8, shardings = _run(mesh8)
  params1, losses1, _ = _run(mesh1)
  # the parameters really are sharded: fsdp on the annotated "embed" axis and the conv fallback
  assert shardings["Dense_0"]["kernel"].spec == P("fsdp", None)
  assert "fsdp" in tuple(shardings["Conv_0"]["kernel"].spec)
  assert params8["Dense_0"]["kernel"].sharding.is_equivalent_to(NamedSharding(mesh8, P("fsdp", None)), 2)
  np.testing.assert_allclose(losses8, losses1, rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(params8), jax.tree.leaves(params1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_make_mesh_from_config():
  mesh = parallel.make_mesh({"tensor": 2, "data": -1})  # canonical order regardless of dict order
  assert mesh.axis_names == ("data", "tensor") and mesh.devices.shape == (4, 2)
  mesh = parallel.make_mesh([("fsdp", 2), ("data", 4)])  # explicit order kept
  assert mesh.axis_names == ("fsdp", "data")
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}).devices.shape == (8, 1, 1)


@pytest.mark.parametrize("spec,match", [
    ({"data": 3}, "devices"), ({"data": -1, "fsdp": -1}, "-1"), ({"data": 0}, "positive"),
    ({"data": -1, "fsdp": 3}, "divisible"), ([], "axis"),
])
def test_bad_mesh_config(spec, match):
  with pytest.raises(ValueError, match=match):
    parallel.make_mesh(spec)


def test_batch_helpers_and_rules():
  mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
  batch = parallel.global_batch({"x": np.arange(16 * 3).reshape(16, 3)}, mesh)
  assert batch["x"].sharding == NamedSharding(mesh, P(("data", "fsdp")))
  assert batch["x"].sharding.shard_shape(batch["x"].shape) == (2, 3)
  parallel.check_batch_divisible(16, mesh)
  with pytest.raises(ValueError, match="divisible"):
    parallel.check_batch_divisible(12, mesh)
  assert parallel.per_process_batch_size(16) == 16
  rules = parallel.rules_from_config([("batch", ["data", "fsdp"]), ("embed", None)])
  assert rules == (("batch", ("data", "fsdp")), ("embed", None))
  with pytest.raises(ValueError, match="rule"):
    parallel.rules_from_config([("batch",)])
  # rules naming axes a mesh lacks still work on that mesh ("tensor" is dropped)
  small = parallel.make_mesh({"data": 8})
  abstract = {"w": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((8, 16), jnp.float32), ("embed", "mlp"))}
  assert parallel.param_shardings(abstract, small)["w"].spec == P(None, None)


def test_pad_eval_batch_to_the_batch_shards():
  mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
  assert parallel.batch_shard_count(mesh) == 8
  local = {"image": np.arange(3 * 2).reshape(3, 2) + 1, "example_valid": np.array([True, True, False])}
  padded = parallel.pad_eval_batch(local, mesh)
  assert padded["image"].shape == (8, 2)
  np.testing.assert_array_equal(padded["image"][:3], local["image"])
  np.testing.assert_array_equal(padded["image"][3:], np.broadcast_to(local["image"][0], (5, 2)))  # copies of row 0
  np.testing.assert_array_equal(padded["example_valid"], [True, True] + [False] * 6)
  assert local["example_valid"].tolist() == [True, True, False]  # the input is not modified
  assert parallel.global_batch(padded, mesh)["image"].shape == (8, 2)
  same = {"image": np.zeros((16, 2)), "example_valid": np.ones(16, bool)}
  assert parallel.pad_eval_batch(same, mesh) is same
  with pytest.raises(ValueError, match="example_valid.*multiple of 8"):
    parallel.pad_eval_batch({"image": np.zeros((3, 2))}, mesh)
