"""Argument checks shared by the ops: a bad argument is a ValueError naming it."""
from typing import Iterable


def check_rank(name: str, x, ranks: int | Iterable[int]) -> None:
  """Raises ValueError unless `x.ndim` is one of `ranks`."""
  ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
  ndim = getattr(x, "ndim", None)
  if ndim not in ranks:
    want = " or ".join(str(r) for r in ranks)
    raise ValueError(f"{name} must have rank {want}, got shape {getattr(x, 'shape', None)}")


def check_min_rank(name: str, x, rank: int) -> None:
  if getattr(x, "ndim", -1) < rank:
    raise ValueError(f"{name} must have rank >= {rank}, got shape {getattr(x, 'shape', None)}")


def check_last_dim(name: str, x, size: int) -> None:
  shape = getattr(x, "shape", ())
  if not shape or shape[-1] != size:
    raise ValueError(f"{name} must have a last dimension of size {size}, got shape {shape}")


def check_choice(name: str, value, choices: Iterable) -> None:
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_same_shape(name_a: str, a, name_b: str, b) -> None:
  if tuple(a.shape) != tuple(b.shape):
    raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}")
