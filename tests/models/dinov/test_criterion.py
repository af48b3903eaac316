"""DINOv criteria vs the reference (fixtures from scripts/make_dinov_loss_fixtures.py): every loss term and the
gradients of the weighted sum w.r.t. the outputs, with the reference's random draws fed in; and the on-device NMS
against a transcription of torchvision's."""
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.models.dinov import criterion as crit_lib
from dinoseg.models.dinov import defaults
from dinoseg.models.dinov.decoder import CLICKS, DN, GENERIC, PROMPTS, QUERIES, REFER, DINOvOutputs
from dinoseg.models.maskdino import denoising
from dinoseg.models.query_groups import GroupPredictions
from dinoseg.structures import PaddedInstances

MASKDINO_TESTS = pathlib.Path(__file__).resolve().parents[1] / "maskdino"  # Mask DINO's test helpers
if str(MASKDINO_TESTS) not in sys.path:
  sys.path.append(str(MASKDINO_TESTS))
import maskdino_fixtures  # noqa: E402

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "dinov"
TOL = 1e-4


def _load(name):
  with np.load(FIXTURES / f"{name}.npz") as f:
    return {k: f[k] for k in f.files}


def _criterion(softmax=True, matcher="scipy_host"):
  loss = defaults.loss_config()
  loss.num_points = 64
  loss.matcher = matcher  # scipy_host: the reference's linear_sum_assignment; hungarian_device: the training default
  prompts = defaults.prompt_config()
  prompts.match_softmax = softmax
  return crit_lib.DINOvCriterion(loss, prompts, dn="seg")


def _draws(fx):
  return maskdino_fixtures.fixture_draws(fx)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _generic_losses(fx, arrays):
  b, k = fx["prompt_valid"].shape
  p = arrays["logits"].shape[0]
  assignment = denoising.FixedAssignment(target=jnp.asarray(fx["dn/target"]), matched=jnp.asarray(fx["dn/matched"]),
                                         active=jnp.asarray(fx["dn/matched"]),
                                         normalizer_scale=jnp.asarray(fx["dn/groups"]))
  n_dn = fx["dn/target"].shape[1]
  groups = {
      DN: GroupPredictions(logits=jnp.zeros((p, b, n_dn, k)), boxes=arrays["dn/boxes"], masks=arrays["dn/masks"],
                           valid=jnp.asarray(fx["dn/matched"]), aux={"assignment": assignment}),
      QUERIES: GroupPredictions(logits=arrays["logits"], boxes=arrays["boxes"], masks=arrays["masks"],
                                valid=jnp.ones(arrays["logits"].shape[1:3], bool)),
      PROMPTS: GroupPredictions(logits=None, boxes=None, masks=None, valid=jnp.asarray(fx["prompt_valid"])),
  }
  targets = PaddedInstances(labels=jnp.asarray(fx["gt/labels"]), boxes=jnp.asarray(fx["gt/boxes"]),
                            valid=jnp.asarray(fx["gt/valid"]), masks=jnp.asarray(fx["gt/masks"]))
  return _criterion().generic(DINOvOutputs(groups=groups, task=GENERIC), targets, _draws(fx))


def _refer_losses(fx, arrays, softmax, matcher="scipy_host"):
  b, c, t = fx["level_index"].shape
  groups = {CLICKS: GroupPredictions(logits=arrays["logits"], boxes=arrays["boxes"], masks=arrays["masks"],
                                     valid=jnp.ones((b, c * t), bool)),
            PROMPTS: GroupPredictions(logits=None, boxes=None, masks=None, valid=jnp.asarray(fx["content_valid"]))}
  instances = PaddedInstances(labels=jnp.zeros(fx["gt/valid"].shape, jnp.int32), boxes=jnp.asarray(fx["gt/boxes"]),
                              valid=jnp.asarray(fx["gt/valid"]), masks=jnp.asarray(fx["gt/masks"]))
  refer = crit_lib.ReferTargets(level_index=jnp.asarray(fx["level_index"]), level_valid=jnp.asarray(fx["level_valid"]),
                                content_index=jnp.asarray(fx["content_index"]),
                                content_valid=jnp.asarray(fx["content_valid"]))
  out = DINOvOutputs(groups=groups, iou=arrays["iou"], task=REFER)
  return _criterion(softmax, matcher).refer(out, instances, refer, _draws(fx))


def _check(fx, fn, names):
  arrays = {n: jnp.asarray(fx[n]) for n in names}
  losses, grads = jax.jit(jax.value_and_grad(lambda a: (lambda d: (sum(d.values()), d))(fn(a)), has_aux=True))(arrays)
  losses = losses[1]
  expected = {k[len("losses/"):]: v for k, v in fx.items() if k.startswith("losses/")}
  assert sorted(losses) == sorted(expected)
  errors = {name: _rel(losses[name], value) for name, value in expected.items()}
  errors.update({f"grad/{name}": _rel(grads[name], fx[f"grad/{name}"]) for name in names})
  print("max relative error", max(errors.values()), max(errors, key=errors.get))
  for name, err in errors.items():
    assert err <= TOL, (name, err)
  return arrays


def test_generic_losses_and_gradients_match_reference():
  fx = _load("loss_generic")
  arrays = _check(fx, lambda a: _generic_losses(fx, a), ["logits", "boxes", "masks", "dn/boxes", "dn/masks"])
  # the invalid prompt slot (last column) takes no part: any value there leaves every loss unchanged
  run = jax.jit(lambda a: _generic_losses(fx, a))
  a, b = run(arrays), run(dict(arrays, logits=arrays["logits"].at[..., -1].set(50.0)))
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-6)


# sigmoid: with the on-device Hungarian solver (the training default) instead of scipy
@pytest.mark.parametrize("variant,matcher", [("softmax", "scipy_host"), ("sigmoid", "hungarian_device")])
def test_refer_losses_and_gradients_match_reference(variant, matcher):
  fx = _load(f"loss_refer_{variant}")
  _check(fx, lambda a: _refer_losses(fx, a, variant == "softmax", matcher), ["logits", "boxes", "masks", "iou"])


def _torchvision_nms(boxes, scores, thr):
  order = np.argsort(-scores, kind="stable")
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  keep, dropped = [], set()
  for a, i in enumerate(order):
    if a in dropped:
      continue
    keep.append(i)
    for bb in range(a + 1, len(order)):
      j = order[bb]
      lt, rb = np.maximum(boxes[i, :2], boxes[j, :2]), np.minimum(boxes[i, 2:], boxes[j, 2:])
      inter = np.prod(np.clip(rb - lt, 0, None))
      if inter / (area[i] + area[j] - inter) > thr:
        dropped.add(bb)
  return sorted(keep)


def test_nms_keep_matches_torchvision_rule():
  rng = np.random.default_rng(3)
  xy = rng.uniform(0, 0.6, (2, 40, 2))
  wh = rng.uniform(0.1, 0.4, (2, 40, 2))
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  boxes[:, 20:] = boxes[:, :20] + rng.normal(0, 0.02, (2, 20, 4)).astype(np.float32)  # near-duplicates
  boxes = np.concatenate([np.minimum(boxes[..., :2], boxes[..., 2:]), np.maximum(boxes[..., :2], boxes[..., 2:])], -1)
  scores = rng.uniform(size=(2, 40)).astype(np.float32)
  valid = np.ones((2, 40), bool)
  valid[1, 35:] = False
  keep = np.asarray(crit_lib.nms_keep(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid), 0.7))
  for b in range(2):
    n = int(valid[b].sum())
    assert sorted(np.nonzero(keep[b])[0].tolist()) == _torchvision_nms(boxes[b, :n], scores[b, :n], 0.7)
  assert keep[0].sum() < 40  # the near-duplicates were suppressed
