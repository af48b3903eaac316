"""Test setup: 8 fake CPU devices, CPU-only JAX, parsed absl flags (for grain workers).

Must run before anything imports jax.
"""
import os

# The suite is dominated by XLA:CPU compile time (small shapes, many programs). LLVM optimization level 0
# and the classic (non-MLIR) fusion emitters compile 2-3x faster; programs run slower, which small test
# shapes do not notice. Measured on tests/backbones (2 cores): 146 s -> 64 s wall, all parity checks
# unchanged. DINOSEG_TEST_XLA_OPT=1 keeps XLA's defaults.
_FAST_COMPILE = "" if os.environ.get("DINOSEG_TEST_XLA_OPT") == "1" else (
    " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           + _FAST_COMPILE).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# glibc's fatal messages (heap corruption, ...) go to stderr instead of a terminal that CI lacks.
os.environ.setdefault("LIBC_FATAL_STDERR_", "1")

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


if os.environ.get("DINOSEG_TEST_GC", "1") == "1":
  # Every this many tests the collection after a test is a full one (gc.unfreeze first).
  _FULL_COLLECTION_EVERY = 25
  _tests_since_full_collection = [0]

  @pytest.fixture(autouse=True)
  def _collect_garbage_after_each_test():
    """A garbage collection after every test (DINOSEG_TEST_GC=0 turns it off).

    Long-lived xdist workers occasionally died with a bare SIGABRT ("Fatal Python error: Aborted",
    no C++ message, main thread at an arbitrary allocation-heavy point: ArrayRecordWriter(...), JAX
    lowering) in 3 of 5 full `-n 2` runs. The pattern fits a destructor of some native object run by
    a garbage collection at a bad moment; the cause is not identified. With a collection after every
    test (objects of a finished test destroyed at a quiet point) the full suite has not crashed.

    A full collection walks every tracked object (torch, TensorFlow and JAX's module graphs and caches:
    ~2 s per test, a third of the suite's time). So after each collection the survivors are frozen
    (`gc.freeze`: later collections skip them) and the next collection walks only what the next test
    made; every `_FULL_COLLECTION_EVERY` tests the frozen objects are unfrozen and walked too, so that a
    cycle among them that died later (a module fixture's) is still collected.
    """
    yield
    import gc  # noqa: PLC0415
    _tests_since_full_collection[0] += 1
    if _tests_since_full_collection[0] >= _FULL_COLLECTION_EVERY:
      _tests_since_full_collection[0] = 0
      gc.unfreeze()
    gc.collect()
    gc.freeze()
