"""The optimizer built from `config.optimizer`: AdamW with regex parameter groups, clipping, schedules.

The update for a parameter p with gradient g is PyTorch's `AdamW` with detectron2-style groups:

  g   <- 0                                if p is frozen (lr multiplier 0)
  g   <- g * min(1, clip / ||G||_2)       full-model global-norm clipping (`clip_grad_norm` > 0)
  u   <- adam(g)                          bias-corrected m / (sqrt(v) + eps)
  u   <- u + wd * p                       unless p matches `no_weight_decay`
  p   <- p - lr(step) * mult(p) * u       mult from `lr_multipliers` (backbone x 0.1, ...)

so the weight decay is scaled by the group learning rate as in torch (`p *= 1 - lr * wd`).
Groups are chosen by regexes searched (`re.search`) in the '/'-joined parameter path, e.g.
"backbone/res2_0/conv1/kernel"; for `lr_multipliers` the first matching rule wins. The learning
rate schedule (`lr(step)`, counted in optimizer updates) is

  constant:  lr
  step:      lr * decay_factor ** (number of decay_steps <= step)
  cosine:    lr * (end + (1 - end) * (1 + cos(pi * step / num_steps)) / 2)

times a linear warmup factor `warmup_factor + (1 - warmup_factor) * step / warmup_steps` for the
first `warmup_steps` (detectron2's `WarmupParamScheduler` with method "linear").

Gradient accumulation (`grad_accum_steps`) and the bf16 compute switch live in the train step
(`dinoseg.train.step`): the optimizer always sees float32 master weights and averaged gradients.
"""
import dataclasses
import math
import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from dinoseg.errors import UserValueError
from dinoseg.train.defaults import OPTIMIZER_DEFAULTS, resolve

SCHEDULES = ("constant", "step", "cosine")


def path_to_str(path: Sequence[Any]) -> str:
  """A jax tree path as 'a/b/c' (dict keys, attribute names and sequence indices)."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _compile(patterns: Sequence[str], name: str) -> list[re.Pattern]:
  out = []
  for p in patterns:
    if not isinstance(p, str):
      raise UserValueError(f"optimizer.{name}: patterns must be strings, got {p!r}")
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise UserValueError(f"optimizer.{name}: invalid regex {p!r}: {e}") from None
  return out


def _multiplier_rules(rules) -> list[tuple[re.Pattern, float]]:
  out = []
  for rule in rules:
    if not isinstance(rule, (tuple, list)) or len(rule) != 2:
      raise UserValueError(f"optimizer.lr_multipliers: each rule must be (regex, multiplier), got {rule!r}")
    (pattern,) = _compile([rule[0]], "lr_multipliers")
    mult = float(rule[1])
    if not math.isfinite(mult) or mult < 0:
      raise UserValueError(f"optimizer.lr_multipliers: multiplier for {rule[0]!r} must be >= 0, got {rule[1]!r}")
    out.append((pattern, mult))
  return out


def lr_multiplier(path: str, rules: Sequence[tuple[re.Pattern, float]]) -> float:
  """The multiplier of the first rule whose regex is found in `path` (1.0 if none)."""
  for pattern, mult in rules:
    if pattern.search(path):
      return mult
  return 1.0


def make_schedule(cfg: Mapping[str, Any], num_steps: int) -> Callable[[Any], jax.Array]:
  """The learning-rate schedule (module docstring) as a function of the update count."""
  lr = float(cfg["learning_rate"])
  kind = cfg["schedule"]
  decay_steps = tuple(int(s) for s in cfg["decay_steps"])
  decay_factor, end = float(cfg["decay_factor"]), float(cfg["end_factor"])
  warmup, warmup_factor = int(cfg["warmup_steps"]), float(cfg["warmup_factor"])

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    if kind == "step":
      n = sum((t >= s).astype(jnp.float32) for s in decay_steps) if decay_steps else 0.0
      main = jnp.power(jnp.float32(decay_factor), n)
    elif kind == "cosine":
      frac = jnp.clip(t / max(num_steps, 1), 0.0, 1.0)
      main = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    else:
      main = jnp.float32(1.0)
    if warmup > 0:
      alpha = t / warmup
      main = main * jnp.where(t < warmup, warmup_factor * (1.0 - alpha) + alpha, 1.0)
    return jnp.float32(lr) * main

  return schedule


class ScaleByMultipliersState(NamedTuple):
  pass


def scale_by_path_multipliers(rules: Sequence[tuple[re.Pattern, float]]) -> optax.GradientTransformation:
  """Multiplies each update by `lr_multiplier(path)` (paths are static, so this costs nothing)."""

  def init_fn(params):
    del params
    return ScaleByMultipliersState()

  def update_fn(updates, state, params=None):
    del params

    def scale(path, u):
      mult = lr_multiplier(path_to_str(path), rules)
      return u if mult == 1.0 else u * jnp.asarray(mult, u.dtype)

    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def _path_mask(patterns: Sequence[re.Pattern], *, match: bool) -> Callable[[Any], Any]:
  """A callable params -> bool tree: True where some pattern is found in the path (== match)."""

  def mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(p.search(path_to_str(path)) for p in patterns) == match, params)

  return mask


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """The optax transformation and its learning-rate schedule (for logging).

  Attributes:
    tx: the GradientTransformation (float32 master weights in, float32 updates out).
    learning_rate: update count -> base learning rate (before group multipliers).
    grad_accum_steps: micro-batches per step (applied by the train step).
    settings: the resolved `config.optimizer` values.
  """
  tx: optax.GradientTransformation
  learning_rate: Callable[[Any], jax.Array]
  grad_accum_steps: int
  settings: dict


def validate(cfg: Mapping[str, Any]) -> None:
  if cfg["name"] != "adamw":
    raise UserValueError(f"optimizer.name must be 'adamw' (Adam is adamw with weight_decay=0), got {cfg['name']!r}")
  for key in ("learning_rate", "eps"):
    if not float(cfg[key]) > 0:
      raise UserValueError(f"optimizer.{key} must be positive, got {cfg[key]!r}")
  for key in ("weight_decay", "clip_grad_norm", "warmup_steps"):
    if float(cfg[key]) < 0:
      raise UserValueError(f"optimizer.{key} must be >= 0, got {cfg[key]!r}")
  for key in ("b1", "b2"):
    if not 0 <= float(cfg[key]) < 1:
      raise UserValueError(f"optimizer.{key} must be in [0, 1), got {cfg[key]!r}")
  if cfg["schedule"] not in SCHEDULES:
    raise UserValueError(f"optimizer.schedule must be one of {SCHEDULES}, got {cfg['schedule']!r}")
  steps = list(cfg["decay_steps"])
  if any(int(s) <= 0 for s in steps) or steps != sorted(steps):
    raise UserValueError(f"optimizer.decay_steps must be increasing positive steps, got {cfg['decay_steps']!r}")
  if int(cfg["grad_accum_steps"]) < 1:
    raise UserValueError(f"optimizer.grad_accum_steps must be >= 1, got {cfg['grad_accum_steps']!r}")


def build_optimizer(optimizer_config, num_steps: int) -> Optimizer:
  """The optimizer of `config.optimizer` (missing keys take `OPTIMIZER_DEFAULTS`).

  Args:
    optimizer_config: the `config.optimizer` group (ConfigDict or mapping).
    num_steps: total train steps (the cosine schedule's length).
  Raises:
    UserValueError: naming the offending `optimizer.<key>`.
  """
  cfg = resolve(optimizer_config, OPTIMIZER_DEFAULTS, "optimizer")
  validate(cfg)
  schedule = make_schedule(cfg, num_steps)
  rules = _multiplier_rules(cfg["lr_multipliers"])
  frozen = [p for p, m in rules if m == 0.0]
  no_decay = _compile(cfg["no_weight_decay"], "no_weight_decay")

  def is_frozen(params):
    return jax.tree_util.tree_map_with_path(lambda path, _: lr_multiplier(path_to_str(path), rules) == 0.0, params)

  parts = []
  if frozen:
    parts.append(optax.masked(optax.set_to_zero(), is_frozen))
  if float(cfg["clip_grad_norm"]) > 0:
    parts.append(optax.clip_by_global_norm(float(cfg["clip_grad_norm"])))
  parts.append(optax.scale_by_adam(b1=float(cfg["b1"]), b2=float(cfg["b2"]), eps=float(cfg["eps"])))
  if float(cfg["weight_decay"]) > 0:
    parts.append(optax.add_decayed_weights(float(cfg["weight_decay"]), mask=_path_mask(no_decay, match=False)))
  parts.append(optax.scale_by_learning_rate(schedule))
  if rules:
    parts.append(scale_by_path_multipliers(rules))
  return Optimizer(tx=optax.chain(*parts), learning_rate=schedule,
                   grad_accum_steps=int(cfg["grad_accum_steps"]), settings=cfg)


def describe_groups(params, optimizer_config) -> dict[str, dict[str, Any]]:
  """{path: {"lr_multiplier": m, "weight_decay": bool}} for every parameter (for logs and tests)."""
  cfg = resolve(optimizer_config, OPTIMIZER_DEFAULTS, "optimizer")
  rules = _multiplier_rules(cfg["lr_multipliers"])
  no_decay = _compile(cfg["no_weight_decay"], "no_weight_decay")
  out = {}
  for path, _ in jax.tree_util.tree_leaves_with_path(params):
    name = path_to_str(path)
    mult = lr_multiplier(name, rules)
    out[name] = {"lr_multiplier": mult,
                 "weight_decay": bool(float(cfg["weight_decay"]) > 0 and mult > 0
                                      and not any(p.search(name) for p in no_decay))}
  return out


__all__ = ["Optimizer", "build_optimizer", "make_schedule", "describe_groups", "lr_multiplier", "path_to_str",
           "scale_by_path_multipliers", "SCHEDULES"]
