"""A tiny regression task for the trainer's in-process tests (compiles in about a second).

`TinyRegressionTask` ("tiny_regression") implements the whole Task interface on a 2-layer MLP
with deterministic (RNG-free) initializers, a non-trainable collection, and data that can
carry NaN targets at chosen steps (`config.data.nan_steps`, 1-based) to exercise skipping.
"""
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dinoseg.train import defaults
from dinoseg.train import task as task_lib

IN_DIM, BATCH = 4, 16
W_TRUE = np.array([0.5, -1.0, 2.0, 0.25], np.float32)


def _det_init(key, shape, dtype=jnp.float32):
  del key
  return (jnp.sin(jnp.arange(int(np.prod(shape)), dtype=jnp.float32) + 1.0) * 0.5).reshape(shape).astype(dtype)


class TinyNet(nn.Module):
  """x (B, 4) -> frozen scale -> backbone Dense(8) -> tanh -> LayerNorm -> head Dense(1) -> (B,)."""

  @nn.compact
  def __call__(self, x):
    scale = self.variable("frozen_stats", "scale", lambda: jnp.full((IN_DIM,), 0.5, jnp.float32)).value
    h = nn.Dense(8, name="backbone", kernel_init=nn.with_logical_partitioning(_det_init, ("embed", "mlp")))(
        x * scale.astype(x.dtype))
    h = nn.LayerNorm(name="norm")(jnp.tanh(h))
    return nn.Dense(1, name="head", kernel_init=_det_init)(h)[:, 0]


def make_batch(index: int, seed: int, nan_steps=()) -> dict:
  """Global batch `index` (0-based; it feeds step index + 1)."""
  rng = np.random.default_rng([seed, index])
  x = rng.standard_normal((BATCH, IN_DIM)).astype(np.float32)
  y = (x @ W_TRUE + 0.1).astype(np.float32)
  if index + 1 in nan_steps:
    y[0] = np.nan
  return {"x": x, "y": y, "valid": np.ones((BATCH,), bool)}


def _slice(batch, process_index, process_count):
  n = BATCH // process_count
  return {k: v[process_index * n:(process_index + 1) * n] for k, v in batch.items()}


class MSEEvaluator:

  def __init__(self):
    self.sq, self.n = 0.0, 0

  def update(self, batch, predictions):
    valid = np.asarray(batch["valid"])
    self.sq += float(np.sum((np.asarray(predictions["pred"], np.float64) - batch["y"]) ** 2 * valid))
    self.n += int(valid.sum())

  def result(self):
    return {"mse": self.sq / max(self.n, 1), "num_examples": self.n}


@task_lib.register("tiny_regression")
class TinyRegressionTask(task_lib.Task):
  compute_dtype_inputs = ("x",)  # "y" is the target: never cast to the compute dtype

  def __init__(self, config):
    super().__init__(config)
    self.model = TinyNet()

  def init_variables(self, rng):
    return self.model.init(rng, jnp.zeros((1, IN_DIM), jnp.float32))

  def loss_fn(self, params, model_state, batch, rng, *, train=True):
    pred = self.model.apply({"params": params, **model_state}, batch["x"]).astype(jnp.float32)
    mse = jnp.mean((pred - batch["y"].astype(jnp.float32)) ** 2)
    bits = jnp.finfo(jax.tree.leaves(params)[0].dtype).bits
    return mse, {"mse": mse, "compute_bits": jnp.float32(bits),
                 "input_bits": jnp.float32(jnp.finfo(batch["x"].dtype).bits),
                 "target_bits": jnp.float32(jnp.finfo(batch["y"].dtype).bits)}

  def predict_fn(self, params, model_state, batch):
    return {"pred": self.model.apply({"params": params, **model_state}, batch["x"]).astype(jnp.float32)}

  def train_iterator(self, process_index, process_count):
    d = self.config.data
    ds = grain.MapDataset.source(grain.sources.RangeDataSource(0, 10 ** 6, 1))
    ds = ds.map(lambda i: _slice(make_batch(i, d.seed, tuple(d.nan_steps)), process_index, process_count))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))

  def eval_iterator(self, process_index, process_count):
    batches = [make_batch(10 ** 7 + i, self.config.data.seed) for i in range(2)]
    batches[-1]["valid"][-3:] = False  # padding rows of the last batch
    return [_slice(b, process_index, process_count) for b in batches]

  def evaluator(self):
    return MSEEvaluator()


def make_tiny_config(**train) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "tiny_regression"
  c.seed = 0
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.data = ml_collections.ConfigDict(dict(seed=0, nan_steps=()))
  settings = dict(num_steps=12, log_every_steps=2, checkpoint_every_steps=4, eval_every_steps=6, keep_last=2,
                  progress=False, fsdp_min_size=1)
  settings.update(train)
  c.train = defaults.train_config(**settings)
  c.optimizer = defaults.optimizer_config(learning_rate=0.05, weight_decay=0.01, lr_multipliers=(("backbone", 0.5),),
                                          clip_grad_norm=1.0, schedule="step", decay_steps=(8,))
  return c


@pytest.fixture(scope="session")
def tiny_config():
  """Factory: tiny_config(**train_overrides) -> a config of the tiny regression task."""
  return make_tiny_config


@pytest.fixture(scope="session")
def tiny_batch():
  """Factory: tiny_batch(index, seed=0, nan_steps=()) -> global batch `index` of the tiny task."""
  return make_batch


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
  """A finished 12-step tiny run: (config, workdir, TrainResult); checkpoints at 8 and 12, eval at 6 and 12."""
  from dinoseg.train import trainer  # noqa: PLC0415
  workdir = tmp_path_factory.mktemp("tiny_run")
  config = make_tiny_config()
  result = trainer.train(config, workdir, echo=lambda s: None)
  return config, workdir, result
