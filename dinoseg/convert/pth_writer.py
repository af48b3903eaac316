"""Writes PyTorch .pth checkpoints without PyTorch (torch is not a runtime dependency of dinoseg).

The file is what `torch.save(OrderedDict(state))` writes (PyTorch's zip format, version 3): an
uncompressed zip whose entries sit under one folder named after the file,

  <name>/data.pkl                 pickle (protocol 2) of an OrderedDict key -> tensor, each tensor
                                  `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False,
                                  OrderedDict())` with storage a persistent id
                                  ("storage", torch.<Type>Storage, "<index>", "cpu", numel)
  <name>/data/<index>             the tensor's bytes (C order, little endian), 64-byte aligned
  <name>/byteorder, version, .format_version, .storage_alignment

so `torch.load(path, weights_only=True)` reads it with PyTorch's restricted unpickler, and
`dinoseg.convert.readers.read_checkpoint` reads it without torch.
"""
import collections
import io
import os
import pathlib
import pickle
import struct
import sys
import zipfile
from typing import Mapping

import numpy as np

# numpy dtype name -> torch storage class.
STORAGE_TYPES = {
    "float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage",
    "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage", "int8": "CharStorage",
    "uint8": "ByteStorage", "bool": "BoolStorage",
}
ALIGNMENT = 64


class _Global:
  """A `module.name` reference pickled as a GLOBAL opcode without importing the module."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle requires reduce functions to be callable; never called here
    raise TypeError(f"{self.module}.{self.name} is a pickle reference only")


class _Storage:
  def __init__(self, key: str, dtype_name: str, numel: int):
    self.key, self.dtype_name, self.numel = key, dtype_name, numel


class _Tensor:
  def __init__(self, storage: _Storage, shape: tuple[int, ...]):
    self.storage, self.shape = storage, shape

  def __reduce__(self):
    stride, acc = [], 1
    for d in reversed(self.shape):
      stride.append(acc)
      acc *= d
    return (_Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, 0, tuple(self.shape), tuple(reversed(stride)), False, collections.OrderedDict()))


class _Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
  dispatch = dict(pickle._Pickler.dispatch)

  def _save_global_ref(self, obj: _Global) -> None:
    self.write(pickle.GLOBAL + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")
    self.memoize(obj)

  dispatch[_Global] = _save_global_ref

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", _Global("torch", STORAGE_TYPES[obj.dtype_name]), obj.key, "cpu", obj.numel)
    return None


def _dtype_name(a: np.ndarray) -> str:
  name = a.dtype.name
  if name not in STORAGE_TYPES:
    raise ValueError(f"dtype {a.dtype} has no PyTorch storage type (supported: {', '.join(STORAGE_TYPES)})")
  return name


def _little_endian_bytes(a: np.ndarray) -> bytes:
  order = a.dtype.byteorder
  little = order in ("<", "|") or (order == "=" and sys.byteorder == "little")
  return a.tobytes() if little else a.byteswap().tobytes()


def _aligned_info(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
  """A stored entry whose data starts at a multiple of ALIGNMENT (padding in a local extra field)."""
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  start = zf.fp.tell() + 30 + len(name.encode())
  pad = (-(start + 4)) % ALIGNMENT
  info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # header id "FB", as torch's writer
  return info


def write_pth(state: Mapping[str, np.ndarray], path: str | os.PathLike, wrap: str | None = None) -> pathlib.Path:
  """Writes {key: array} as a PyTorch checkpoint loadable by `torch.load(path, weights_only=True)`.

  Args:
    state: key -> array (float32/64/16, bfloat16, int8-64, uint8, bool); order is kept.
    path: output file (its stem names the archive folder, as torch does).
    wrap: when given, the file holds `{wrap: state_dict}` (e.g. "model", detectron2's layout).
  Returns:
    the path written.
  """
  path = pathlib.Path(path)
  arrays = [(str(k), np.require(np.asarray(v), requirements="C")) for k, v in state.items()]  # keeps 0-d arrays 0-d
  storages = [_Storage(str(i), _dtype_name(a), int(a.size)) for i, (_, a) in enumerate(arrays)]
  tree = collections.OrderedDict((k, _Tensor(s, tuple(int(d) for d in a.shape)))
                                 for (k, a), s in zip(arrays, storages))
  buf = io.BytesIO()
  _Pickler(buf, protocol=2).dump({wrap: tree} if wrap else tree)
  prefix = path.stem or "archive"
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
    zf.writestr(zipfile.ZipInfo(f"{prefix}/data.pkl", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
    zf.writestr(zipfile.ZipInfo(f"{prefix}/.format_version", date_time=(1980, 1, 1, 0, 0, 0)), b"1")
    zf.writestr(zipfile.ZipInfo(f"{prefix}/.storage_alignment", date_time=(1980, 1, 1, 0, 0, 0)),
                str(ALIGNMENT).encode())
    zf.writestr(zipfile.ZipInfo(f"{prefix}/byteorder", date_time=(1980, 1, 1, 0, 0, 0)), b"little")
    for (_, a), s in zip(arrays, storages):
      zf.writestr(_aligned_info(zf, f"{prefix}/data/{s.key}"), _little_endian_bytes(a))
    zf.writestr(zipfile.ZipInfo(f"{prefix}/version", date_time=(1980, 1, 1, 0, 0, 0)), b"3\n")
  os.replace(tmp, path)
  return path


__all__ = ["write_pth", "STORAGE_TYPES"]
