"""The optimizer of config.optimizer against torch.optim.AdamW with detectron2-style parameter groups."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dinoseg.train import defaults
from dinoseg.train.optimizer import build_optimizer, describe_groups, make_schedule

SHAPES = {"backbone/conv/kernel": (3, 4), "backbone/norm/scale": (4,), "head/kernel": (4, 2), "head/bias": (2,),
          "pos_embed": (5, 4), "stem/kernel": (2, 3)}
LR, WD, CLIP = 1e-2, 0.05, 0.5


def _config(**kw):
  base = dict(learning_rate=LR, weight_decay=WD, lr_multipliers=(("^stem", 0.0), ("backbone", 0.1)),
              clip_grad_norm=CLIP, schedule="step", decay_steps=(4, 6), decay_factor=0.1, warmup_steps=3,
              warmup_factor=0.01)
  base.update(kw)
  return defaults.optimizer_config(**base)


def _nested(flat):
  out = {}
  for path, value in flat.items():
    node = out
    parts = path.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = value
  return out


def _flat(tree):
  return {"/".join(str(k.key) for k in path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_matches_torch_adamw_param_groups_clip_and_step_schedule(torch):
  rng = np.random.default_rng(0)
  init = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
  grads = [{k: (3.0 * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()} for _ in range(8)]

  opt = build_optimizer(_config(), num_steps=8)
  params = _nested({k: jnp.asarray(v) for k, v in init.items()})
  state = opt.tx.init(params)

  @jax.jit
  def step(params, state, g):
    updates, state = opt.tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  for g in grads:
    params, state = step(params, state, _nested({k: jnp.asarray(v) for k, v in g.items()}))
  ours = _flat(params)

  # torch: detectron2 build_optimizer groups (backbone lr x0.1; no decay on norm, bias, embed; stem frozen),
  # full-model clip_grad_norm_, WarmupParamScheduler(linear) x MultiStep as a LambdaLR.
  tparams = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
  tparams["stem/kernel"].requires_grad_(False)
  groups = []
  for name, p in tparams.items():
    if not p.requires_grad:
      continue
    mult = 0.1 if name.startswith("backbone") else 1.0
    decay = not any(s in name for s in ("norm", "bias", "embed"))
    groups.append({"params": [p], "lr": LR * mult, "weight_decay": WD if decay else 0.0})
  topt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=1e-8)

  def factor(it):
    warm = 0.01 * (1 - it / 3) + it / 3 if it < 3 else 1.0
    return warm * 0.1 ** sum(it >= m for m in (4, 6))

  sched = torch.optim.lr_scheduler.LambdaLR(topt, factor)
  trainable = [p for p in tparams.values() if p.requires_grad]
  for g in grads:
    for name, p in tparams.items():
      if p.requires_grad:
        p.grad = torch.tensor(g[name])
    torch.nn.utils.clip_grad_norm_(trainable, CLIP)
    topt.step()
    sched.step()
  for name, p in tparams.items():
    ref = p.detach().numpy()
    err = np.max(np.abs(ours[name] - ref)) / np.max(np.abs(ref))
    assert err < 1e-5, (name, err)
  np.testing.assert_array_equal(ours["stem/kernel"], init["stem/kernel"])  # frozen: untouched


def test_schedules():
  cos = make_schedule(defaults.optimizer_config(learning_rate=2.0, schedule="cosine", end_factor=0.1,
                                                warmup_steps=4, warmup_factor=0.5), num_steps=20)
  for t in (0, 2, 4, 10, 19, 20, 25):
    main = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 20) / 20))
    warm = 0.5 * (1 - t / 4) + t / 4 if t < 4 else 1.0
    assert float(cos(t)) == pytest.approx(2.0 * main * warm, rel=1e-6), t
  const = make_schedule(defaults.optimizer_config(learning_rate=0.3), num_steps=5)
  assert float(const(0)) == pytest.approx(0.3) and float(const(100)) == pytest.approx(0.3)


def test_describe_groups():
  params = _nested({k: np.zeros(s, np.float32) for k, s in SHAPES.items()})
  groups = describe_groups(params, _config())
  assert groups["backbone/conv/kernel"] == {"lr_multiplier": 0.1, "weight_decay": True}
  assert groups["backbone/norm/scale"] == {"lr_multiplier": 0.1, "weight_decay": False}
  assert groups["head/bias"]["weight_decay"] is False and groups["pos_embed"]["weight_decay"] is False
  assert groups["head/kernel"] == {"lr_multiplier": 1.0, "weight_decay": True}
  assert groups["stem/kernel"] == {"lr_multiplier": 0.0, "weight_decay": False}


@pytest.mark.parametrize("overrides, message", [
    (dict(name="sgd"), "optimizer.name"),
    (dict(schedule="poly"), "optimizer.schedule"),
    (dict(decay_steps=(6, 4)), "optimizer.decay_steps"),
    (dict(lr_multipliers=(("backbone", -1.0),)), "optimizer.lr_multipliers"),
    (dict(lr_multipliers=("backbone",)), "optimizer.lr_multipliers"),
    (dict(no_weight_decay=("(",)), "optimizer.no_weight_decay"),
    (dict(learning_rate=0.0), "optimizer.learning_rate"),
    (dict(grad_accum_steps=0), "optimizer.grad_accum_steps"),
])
def test_bad_settings_raise_naming_the_key(overrides, message):
  with pytest.raises(ValueError, match=message):
    build_optimizer(_config(**overrides), num_steps=10)


def test_unknown_key_raises():
  cfg = ml_collections.ConfigDict(dict(defaults.OPTIMIZER_DEFAULTS, learnig_rate=1.0))
  with pytest.raises(ValueError, match="learnig_rate"):
    build_optimizer(cfg, num_steps=10)
  with pytest.raises(ValueError, match="unknown config.optimizer keys"):
    defaults.optimizer_config(lr=1.0)
