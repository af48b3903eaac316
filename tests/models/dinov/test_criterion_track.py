"""The one-to-one referring criterion (COCO fed to the referring task, `prompts.coco_track`) vs the reference's
`SetCriterionReferOne` (fixtures from scripts/make_dinov_track_fixtures.py): every loss term and the gradients of the
weighted sum w.r.t. the outputs, with the reference's random draws fed in."""
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.models.dinov.decoder import CLICKS, PROMPTS, REFER, DINOvOutputs
from dinoseg.models.query_groups import GroupPredictions
from dinoseg.structures import PaddedInstances

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
  sys.path.append(str(HERE))
import test_criterion as criterion_tests  # noqa: E402  (its fixture loading, criterion and comparison helpers)


def _track_losses(fx, arrays, softmax, matcher, click_valid=None):
  b, c = fx["click_index"].shape
  t = fx["iou"].shape[-1]
  valid = jnp.ones((b, c * t), bool) if click_valid is None else jnp.repeat(click_valid, t, axis=1)
  groups = {CLICKS: GroupPredictions(logits=arrays["logits"], boxes=arrays["boxes"], masks=arrays["masks"],
                                     valid=valid),
            PROMPTS: GroupPredictions(logits=None, boxes=None, masks=None, valid=jnp.asarray(fx["content_valid"]))}
  instances = PaddedInstances(labels=jnp.zeros(fx["gt/valid"].shape, jnp.int32), boxes=jnp.asarray(fx["gt/boxes"]),
                              valid=jnp.asarray(fx["gt/valid"]), masks=jnp.asarray(fx["gt/masks"]))
  out = DINOvOutputs(groups=groups, iou=arrays["iou"], task=REFER)
  return criterion_tests._criterion(softmax, matcher).track(  # noqa: SLF001
      out, instances, jnp.asarray(fx["click_index"]), jnp.asarray(fx["content_index"]),
      jnp.asarray(fx["content_valid"]), criterion_tests._draws(fx))  # noqa: SLF001


# sigmoid: with the on-device Hungarian solver (the training default) instead of scipy
@pytest.mark.parametrize("variant,matcher", [("softmax", "scipy_host"), ("sigmoid", "hungarian_device")])
def test_track_losses_and_gradients_match_reference(variant, matcher):
  fx = criterion_tests._load(f"loss_track_{variant}")  # noqa: SLF001
  criterion_tests._check(fx, lambda a: _track_losses(fx, a, variant == "softmax", matcher),  # noqa: SLF001
                         ["logits", "boxes", "masks", "iou"])


def test_invalid_clicks_take_no_part():
  """A click slot marked invalid (a padded budget) changes no loss term whatever its outputs hold, once the
  normaliser (the real click count) is accounted for."""
  fx = criterion_tests._load("loss_track_softmax")  # noqa: SLF001
  arrays = {n: jnp.asarray(fx[n]) for n in ("logits", "boxes", "masks", "iou")}
  b, c = fx["click_index"].shape
  t = fx["iou"].shape[-1]
  run = jax.jit(lambda a, click_valid: _track_losses(fx, a, True, "hungarian_device", click_valid))
  click_valid = jnp.asarray([[True, True, True, False]])
  base = run(arrays, click_valid)
  noisy = dict(arrays, masks=arrays["masks"].at[:, :, (c - 1) * t:].set(9.0),
               boxes=arrays["boxes"].at[:, :, (c - 1) * t:].set(0.5), iou=arrays["iou"].at[:, :, c - 1].set(0.0))
  changed = run(noisy, click_valid)
  for name in base:  # (the invalid tokens are no NMS proposal of the match-score loss either)
    np.testing.assert_allclose(changed[name], base[name], rtol=1e-6, err_msg=name)
  full = run(arrays, jnp.ones_like(click_valid))
  assert not np.isclose(float(full["loss_mask"]), float(base["loss_mask"]))
