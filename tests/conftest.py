"""Test setup: 8 fake CPU devices, CPU-only JAX, parsed absl flags (for grain workers).

Must run before anything imports jax.
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import absl.flags  # noqa: E402

absl.flags.FLAGS.mark_as_parsed()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope="session")
def torch():
  """PyTorch, the oracle of the parity tests (installed by the README's test command)."""
  return pytest.importorskip("torch")
