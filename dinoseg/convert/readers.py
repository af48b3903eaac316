"""Safe checkpoint readers and writers: .pth/.pt, detectron2 .pkl, .safetensors, Orbax directories.

Nothing here executes code from a file. Pickles go through restricted unpicklers that resolve
only an allow-list of globals (and build plain Python / numpy objects themselves); anything else
raises `UnsafeCheckpointError` before it is called:
- .pth / .pt (PyTorch zip format): with torch installed, `torch.load(weights_only=True,
  map_location="cpu")` (torch's own restricted unpickler); without torch (or `use_torch=False`),
  `TorchZipUnpickler`, which reads `data.pkl` and the raw storages itself. Its allow-list:
  `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter`,
  `torch.<Type>Storage` (dtype tags only), `torch.Size`. The pre-1.6 non-zip torch format needs torch.
- .pkl (detectron2 model zoo / `convert-*-to-d2.py` outputs: `{"model": {key: ndarray}, "__author__":
  ..., "matching_heuristics": ...}`, often pickled by Python 2): `NumpyUnpickler` allows only numpy
  array reconstruction (`numpy(._)core.multiarray._reconstruct`, `.scalar`, `numpy.ndarray`,
  `numpy.dtype`), `collections.OrderedDict` and `_codecs.encode`; encoding latin1. Object arrays are
  refused.
- .safetensors: `safetensors.numpy` (header + raw bytes, no code by design); bfloat16 / float8
  tensors are read with ml_dtypes types.
- Orbax: a directory written by `write_orbax` (`dinoseg convert --to DIR`) or a trainer step
  directory `<workdir>/checkpoints/<step>` whose item `state` holds a pytree with `params`.
  Restored leaf by leaf as numpy arrays (no device placement, any device count).

`read_checkpoint(path)` dispatches on the suffix (or a directory) and returns a dict whose tensors
are numpy arrays (torch bfloat16 -> ml_dtypes.bfloat16). Writers: `write_safetensors` (numpy,
torch-free), `write_pth` (torch-free, dinoseg.convert.pth_writer), `write_orbax`.

Errors are user errors (dinoseg.errors; one line naming the file on the command line, exit status 2):
`UserFileNotFoundError` (no such file), `UnsafeCheckpointError` (the file references code),
`CorruptCheckpointError` (random bytes, a truncated file, a wrong suffix, a format error). Messages
never repeat torch's advice to load with `weights_only=False`, which would execute the file's code.
"""
import collections
import io
import json
import os
import pathlib
import pickle
import re
import zipfile
from typing import Any, Mapping

import numpy as np

from dinoseg.errors import UserError, UserFileNotFoundError, UserValueError


class UnsafeCheckpointError(UserError, pickle.UnpicklingError, ValueError):
  """The file asks for something other than plain data (code execution is never attempted)."""


class CorruptCheckpointError(UserValueError):
  """The file is not a readable checkpoint of its format (random bytes, truncated, wrong suffix)."""


# What parsing a damaged file may raise (pickle opcodes, zip / JSON structure, short reads, bad shapes).
_PARSE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
                 OverflowError, UnicodeDecodeError, zipfile.BadZipFile, RuntimeError, OSError)
_REFUSED = ("refusing to load {name}: the checkpoint references a global outside the allow-list of plain "
            "tensors/arrays (it could execute code); convert it with trusted tools first")


def _reason(error: BaseException) -> str:
  """A short reason for a parse error: its first sentence, without any advice about `weights_only`."""
  text = str(error).strip().split("\n")[0].split(". ")[0].strip().rstrip(".")
  if not text or "weights_only" in text:
    text = "empty or truncated" if isinstance(error, EOFError) else type(error).__name__
  return text[:200]


def _torch_load_error(path, error: BaseException) -> UserError:
  """torch.load(weights_only=True)'s error as a one-line UserError: a global it blocked is an
  UnsafeCheckpointError, anything else a CorruptCheckpointError with torch's reason, never with its advice
  to retry with `weights_only=False` (which would run the file's code)."""
  text = str(error)
  found = re.search(r"GLOBAL ([\w.]+)", text, re.I)
  if found:
    return UnsafeCheckpointError(f"{path}: " + _REFUSED.format(name=found.group(1)))
  paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
  detail = " ".join(p for p in paragraphs if p and "weights_only" not in p and not p.startswith("Check the doc"))
  reason = detail[:200] if len(paragraphs) > 1 and detail else _reason(error)  # torch's weights-only layout
  return CorruptCheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or another format: "
                                f"{reason})")


def _parsing(path, what: str, read, *args):
  """`read(*args)` with parse errors of a damaged file turned into one-line CorruptCheckpointErrors."""
  try:
    return read(*args)
  except UserError as e:
    if isinstance(e, UnsafeCheckpointError) and str(path) not in str(e):
      raise UnsafeCheckpointError(f"{path}: {e}") from None
    raise
  except _PARSE_ERRORS as e:
    raise CorruptCheckpointError(f"{path}: not a readable {what} (corrupt, truncated or another format: "
                                 f"{_reason(e)})") from None


# torch storage class name -> numpy dtype (ml_dtypes for bfloat16 / float8).
def _storage_dtypes() -> dict[str, Any]:
  import ml_dtypes  # noqa: PLC0415  (a jax dependency)
  return {
      "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
      "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
      "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
      "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128,
      "Float8_e4m3fnStorage": ml_dtypes.float8_e4m3fn, "Float8_e5m2Storage": ml_dtypes.float8_e5m2,
  }


class _StorageType:
  """Stands for `torch.<Type>Storage` in a pickle: only carries the dtype."""

  def __init__(self, name: str, dtype):
    self.name, self.dtype = name, np.dtype(dtype)


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *unused) -> np.ndarray:
  size, stride = tuple(size), tuple(stride)
  if not size:
    return storage[offset:offset + 1].reshape(()).copy()
  needed = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
  if any(n == 0 for n in size):
    return np.zeros(size, storage.dtype)
  if needed > storage.size:
    raise UnsafeCheckpointError(f"tensor view (offset {offset}, size {size}, stride {stride}) exceeds its storage")
  item = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * item for s in stride), writeable=False)
  return np.array(view)  # a contiguous copy


def _rebuild_parameter(data: np.ndarray, *unused) -> np.ndarray:
  return data


class _RestrictedUnpickler(pickle.Unpickler):
  """Base: resolves globals only through `ALLOWED` (module, name) -> object; refuses the rest."""
  ALLOWED: dict[tuple[str, str], Any] = {}

  def find_class(self, module: str, name: str):
    allowed = self.allowed()
    if (module, name) in allowed:
      return allowed[(module, name)]
    raise UnsafeCheckpointError(_REFUSED.format(name=f"{module}.{name}"))

  def allowed(self) -> dict:
    return self.ALLOWED

  def persistent_load(self, pid):
    raise UnsafeCheckpointError("unexpected persistent id in a plain pickle")


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
  import codecs  # noqa: PLC0415
  if encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
    raise UnsafeCheckpointError(f"refusing _codecs.encode with encoding {encoding!r}")
  return codecs.encode(text, encoding)


class NumpyUnpickler(_RestrictedUnpickler):
  """Plain data + numpy arrays only (detectron2 .pkl checkpoints)."""

  def allowed(self) -> dict:
    try:
      from numpy._core import multiarray  # noqa: PLC0415
    except ImportError:  # numpy < 2
      from numpy.core import multiarray  # noqa: PLC0415
    table = {("collections", "OrderedDict"): collections.OrderedDict, ("_codecs", "encode"): _codecs_encode,
             ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
      table[(mod, "_reconstruct")] = multiarray._reconstruct
      table[(mod, "scalar")] = multiarray.scalar
    return table


class TorchZipUnpickler(_RestrictedUnpickler):
  """Reads `data.pkl` of a PyTorch zip checkpoint without torch; tensors become numpy arrays."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str = "little"):
    super().__init__(file)
    self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
    self._storages: dict[str, np.ndarray] = {}
    self._dtypes = _storage_dtypes()

  def allowed(self) -> dict:
    table = {("collections", "OrderedDict"): collections.OrderedDict,
             ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
             ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
             ("torch", "Size"): tuple}
    for name, dtype in self._dtypes.items():
      table[("torch", name)] = _StorageType(name, dtype)
    return table

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
      raise UnsafeCheckpointError(f"unsupported persistent id in a torch checkpoint: {pid!r:.200}")
    _, storage_type, key, _location, numel = pid
    key = str(key)
    if key not in self._storages:
      try:
        raw = self._archive.read(f"{self._prefix}data/{key}")
      except KeyError as e:
        raise UnsafeCheckpointError(f"torch checkpoint lacks storage {key}") from e
      dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
      array = np.frombuffer(raw, dtype=dtype)
      if array.size < int(numel):
        raise UnsafeCheckpointError(f"storage {key} holds {array.size} elements, expected {numel}")
      self._storages[key] = array.astype(storage_type.dtype, copy=False)
    return self._storages[key]


def _check_no_objects(obj) -> None:
  if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
    raise UnsafeCheckpointError("object arrays are not accepted in checkpoints")
  if isinstance(obj, Mapping):
    for v in obj.values():
      _check_no_objects(v)
  elif isinstance(obj, (list, tuple)):
    for v in obj:
      _check_no_objects(v)


def read_torch_zip(path: str | os.PathLike) -> Any:
  """Reads a PyTorch zip-format checkpoint (.pth/.pt) without torch; tensors as numpy arrays."""
  path = pathlib.Path(path)
  if not zipfile.is_zipfile(path):
    raise CorruptCheckpointError(f"{path} is not a PyTorch zip checkpoint (corrupt, truncated, or the legacy "
                                 "pre-1.6 format, which needs torch installed)")
  with zipfile.ZipFile(path) as archive:
    pkls = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
      raise CorruptCheckpointError(f"{path}: expected one <archive>/data.pkl in the zip, found {pkls}")
    prefix = pkls[0][:-len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in archive.namelist():
      byteorder = archive.read(f"{prefix}byteorder").decode().strip()
    unpickler = TorchZipUnpickler(io.BytesIO(archive.read(pkls[0])), archive, prefix, byteorder)
    obj = unpickler.load()
  _check_no_objects(obj)
  return obj


def _torch_to_numpy(obj):
  import torch  # noqa: PLC0415
  if isinstance(obj, torch.Tensor):
    t = obj.detach().cpu()
    if t.dtype == torch.bfloat16:
      import ml_dtypes  # noqa: PLC0415
      return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()
  if isinstance(obj, Mapping):
    return {k: _torch_to_numpy(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    items = [_torch_to_numpy(v) for v in obj]
    return tuple(items) if isinstance(obj, tuple) else items
  return obj


def torch_available() -> bool:
  try:
    import torch  # noqa: F401, PLC0415
    return True
  except ImportError:
    return False


def read_pth(path: str | os.PathLike, use_torch: bool | None = None) -> Any:
  """Reads a .pth/.pt checkpoint safely; tensors become numpy arrays.

  Args:
    path: the file.
    use_torch: True: torch.load(weights_only=True); False: the torch-free reader; None: torch if
      installed.
  Raises:
    UnsafeCheckpointError: the file references code (nothing of it is executed).
    CorruptCheckpointError: not a readable checkpoint.
  """
  if use_torch is None:
    use_torch = torch_available()
  if not use_torch:
    return _parsing(path, "PyTorch checkpoint", read_torch_zip, path)
  import torch  # noqa: PLC0415
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except _PARSE_ERRORS as e:
    raise _torch_load_error(path, e) from None
  return _torch_to_numpy(obj)


def _load_pkl(path) -> Any:
  with open(path, "rb") as f:
    obj = NumpyUnpickler(f, encoding="latin1").load()
  _check_no_objects(obj)
  return obj


def read_pkl(path: str | os.PathLike) -> Any:
  """Reads a detectron2-style pickle of numpy arrays with `NumpyUnpickler` (latin1 for Python 2 pickles).

  Raises:
    UnsafeCheckpointError: a global outside the allow-list, object arrays; CorruptCheckpointError.
  """
  return _parsing(path, "pickle of arrays", _load_pkl, path)


def _load_safetensors(path) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError  # noqa: PLC0415
  from safetensors.numpy import load_file  # noqa: PLC0415
  try:
    return dict(load_file(str(path)))
  except SafetensorError as e:
    raise CorruptCheckpointError(f"{path}: not a readable .safetensors file ({_reason(e)})") from None
  except (TypeError, ValueError, KeyError) as e:  # dtypes numpy lacks: parse the format directly
    if "dtype" not in str(e).lower() and "BF16" not in str(e) and "F8" not in str(e):
      raise
    return _read_safetensors_raw(path)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a .safetensors file into numpy arrays (bfloat16 / float8 via ml_dtypes).

  Raises:
    CorruptCheckpointError: not a readable .safetensors file (random bytes, truncated).
  """
  return _parsing(path, ".safetensors file", _load_safetensors, path)


def _read_safetensors_raw(path) -> dict[str, np.ndarray]:
  import ml_dtypes  # noqa: PLC0415
  dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
            "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64,
            "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
            "U16": np.uint16, "U32": np.uint32, "U64": np.uint64}
  data = pathlib.Path(path).read_bytes()
  n = int.from_bytes(data[:8], "little")
  if len(data) < 8 or 8 + n > len(data):
    raise CorruptCheckpointError(f"{path}: not a readable .safetensors file (the header overruns the file)")
  header = json.loads(data[8:8 + n])
  out = {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    start, end = info["data_offsets"]
    dtype = np.dtype(dtypes[info["dtype"]]).newbyteorder("<")
    out[key] = np.frombuffer(data[8 + n + start:8 + n + end], dtype=dtype).reshape(info["shape"]).copy()
  return out


def is_orbax_dir(path: str | os.PathLike) -> bool:
  path = pathlib.Path(path)
  return path.is_dir() and (
      (path / "_CHECKPOINT_METADATA").exists() or (path / "_METADATA").exists()
      or (path / "state").is_dir() or (path / "manifest.ocdbt").exists())


def read_orbax(path: str | os.PathLike) -> dict:
  """Restores an Orbax pytree as numpy arrays.

  Args:
    path: a directory written by `write_orbax`, or a trainer step directory holding an item
      `state` (then that item is read).
  Returns:
    The nested dict of numpy arrays (e.g. {"params": ..., "frozen_bn": ...} or a train state).
  """
  import absl.logging  # noqa: PLC0415
  import jax  # noqa: PLC0415
  import orbax.checkpoint as ocp  # noqa: PLC0415
  path = pathlib.Path(path).resolve()
  item = path / "state" if (path / "state").is_dir() else path
  if not (item / "_METADATA").exists() and not (item / "manifest.ocdbt").exists():
    steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / "state").is_dir()) \
        if path.is_dir() else []
    if steps:
      raise UserFileNotFoundError(f"{path} holds the checkpoints of steps {', '.join(map(str, steps))}; "
                                  f"pass one step directory, e.g. {path / str(steps[-1])}")
    raise UserFileNotFoundError(f"{path} is not an Orbax checkpoint directory (no _METADATA in {item})")
  verbosity = absl.logging.get_verbosity()
  absl.logging.set_verbosity(absl.logging.ERROR)  # item dirs of a manager lack _CHECKPOINT_METADATA
  try:
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(item)
    tree = getattr(getattr(metadata, "item_metadata", None), "tree", None)
    if tree is None:
      tree = metadata.item_metadata if hasattr(metadata, "item_metadata") else metadata
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = checkpointer.restore(item, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  except (ValueError, KeyError, OSError, EOFError) as e:
    raise CorruptCheckpointError(f"{path}: not a readable Orbax checkpoint (corrupt or incomplete: "
                                 f"{_reason(e)})") from None
  finally:
    absl.logging.set_verbosity(verbosity)
  return jax.tree.map(np.asarray, restored)


def read_checkpoint(path: str | os.PathLike, use_torch: bool | None = None) -> Any:
  """Reads any supported checkpoint by suffix (.pth/.pt/.bin, .pkl, .safetensors) or Orbax directory.

  Raises:
    UserFileNotFoundError: no such file.
    CorruptCheckpointError: unknown format or not readable; UnsafeCheckpointError: the file references
      code. All are UserErrors (and ValueErrors / FileNotFoundErrors).
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise UserFileNotFoundError(f"no such checkpoint: {path}")
  if path.is_dir():
    return read_orbax(path)
  suffix = path.suffix.lower()
  if suffix in (".pth", ".pt", ".bin", ".ckpt"):
    return read_pth(path, use_torch)
  if suffix == ".pkl":
    return read_pkl(path)
  if suffix == ".safetensors":
    return read_safetensors(path)
  raise CorruptCheckpointError(f"unknown checkpoint format {suffix!r} for {path}; expected .pth/.pt, .pkl, "
                               ".safetensors or an Orbax directory")


def write_safetensors(state: Mapping[str, np.ndarray], path: str | os.PathLike,
                      metadata: Mapping[str, str] | None = None) -> None:
  """Writes {key: array} as .safetensors (numpy only, no torch)."""
  from safetensors.numpy import save_file  # noqa: PLC0415
  arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
  try:
    save_file(arrays, str(path), metadata=dict(metadata) if metadata else None)
  except (TypeError, ValueError, KeyError):
    _write_safetensors_raw(arrays, path, metadata)


def _write_safetensors_raw(arrays, path, metadata) -> None:
  names = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
           np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
           np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}
  import ml_dtypes  # noqa: PLC0415
  names.update({np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(ml_dtypes.float8_e4m3fn): "F8_E4M3",
                np.dtype(ml_dtypes.float8_e5m2): "F8_E5M2"})
  header, offset, blobs = {}, 0, []
  if metadata:
    header["__metadata__"] = dict(metadata)
  for key, a in arrays.items():
    if a.dtype not in names:
      raise ValueError(f"{key}: dtype {a.dtype} cannot be written to safetensors")
    blob = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    header[key] = {"dtype": names[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
  head = json.dumps(header, separators=(",", ":")).encode()
  head += b" " * (-len(head) % 8)
  with open(path, "wb") as f:
    f.write(len(head).to_bytes(8, "little"))
    f.write(head)
    for blob in blobs:
      f.write(blob)


def write_pth(state: Mapping[str, np.ndarray], path: str | os.PathLike, wrap: str | None = None) -> None:
  """Writes {key: array} as a torch .pth (`{wrap: state}` when `wrap` is given, e.g. "model"), without
  PyTorch (dinoseg.convert.pth_writer); `torch.load(path, weights_only=True)` reads it."""
  from dinoseg.convert import pth_writer  # noqa: PLC0415
  pth_writer.write_pth(state, path, wrap=wrap)


def write_orbax(tree: Mapping, path: str | os.PathLike) -> None:
  """Saves a pytree of arrays (e.g. {"params": ...}) as an Orbax checkpoint directory (must not exist)."""
  import orbax.checkpoint as ocp  # noqa: PLC0415
  path = pathlib.Path(path).resolve()
  if path.exists():
    raise UserValueError(f"{path} already exists; Orbax output directories are never overwritten")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, tree)
  checkpointer.wait_until_finished()
