"""Weight conversion: safe checkpoint readers, per-model key maps, PyTorch <-> Flax <-> Orbax."""
from dinoseg.convert.registry import CONVERTERS, ModelConverter, get, names, register  # noqa: F401
