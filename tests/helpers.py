"""Shared test helpers (tests/ is on sys.path through pytest.ini's `pythonpath`)."""
import numpy as np


def assert_close(actual, expected, rtol=1e-5, name="value"):
  """Relative error max|a - e| / max(max|e|, tiny) <= rtol."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
  denom = max(np.abs(expected).max(initial=0.0), 1e-12)
  err = np.abs(actual - expected).max(initial=0.0) / denom
  assert err <= rtol, f"{name}: relative error {err:.3g} > {rtol:g}"
