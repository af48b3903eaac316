"""Strict JSON for results files and printed results: what any JSON reader accepts.

Python's `json` writes float NaN / inf as the bare tokens `NaN` / `Infinity`, which are not JSON
(jq, JavaScript's JSON.parse and most readers reject them). Metrics are NaN where they are undefined
(an AP without ground truth, an mIoU over no pixels), so every metrics writer goes through `plain`:
non-finite floats become `null`, NumPy scalars and arrays Python numbers and lists, tuples lists.
"""
import json
import math
from typing import Any, Mapping

import numpy as np


def plain(obj: Any) -> Any:
  """A copy of `obj` made of dict / list / str / int / float / bool / None only (NaN and inf -> None).

  Mappings keep their order (keys become strings); tuples, lists and arrays become lists; NumPy
  scalars become Python numbers (JAX arrays too); other objects are written as `str(obj)`.
  """
  if isinstance(obj, Mapping):
    return {str(k): plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [plain(v) for v in obj]
  if isinstance(obj, np.generic):
    obj = obj.item()
  elif hasattr(obj, "__array__"):  # NumPy and JAX arrays
    return plain(np.asarray(obj).tolist())
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if obj is None or isinstance(obj, (bool, int, str)):
    return obj
  return str(obj)


def dumps(obj: Any, **kwargs) -> str:
  """`json.dumps(plain(obj), allow_nan=False, **kwargs)`: strict JSON text."""
  return json.dumps(plain(obj), allow_nan=False, **kwargs)


__all__ = ["plain", "dumps"]
