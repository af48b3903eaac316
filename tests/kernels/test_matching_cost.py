"""Matching cost: XLA and Pallas (interpret mode) against a float64 NumPy transcription of the
reference matcher's formulas; padding, non-finite inputs, optional terms; lowering for CUDA / TPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.kernels import CostWeights, matching_cost
from dinoseg.kernels.matching_cost import matching_cost_pallas

B, Q, C, T, K = 2, 13, 7, 5, 37
TRITON_CHECK = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
IMPLS = {
    "xla": lambda **kw: matching_cost(**kw, impl="xla"),
    "pallas_triton": lambda **kw: _pallas(kw, "triton"),
    "pallas_mosaic_tpu": lambda **kw: _pallas(kw, "mosaic_tpu"),
}


def _pallas(kw, backend):
  """matching_cost_pallas in interpret mode, with matching_cost's keyword arguments."""
  weights = CostWeights.create(kw.get("weights"))
  f32 = lambda name: None if kw.get(name) is None else jnp.asarray(kw[name], jnp.float32)
  box_valid = kw.get("target_box_valid")
  return matching_cost_pallas(
      f32("pred_logits"), f32("pred_boxes"), f32("pred_mask_points"), jnp.asarray(kw["target_labels"]),
      f32("target_boxes"), f32("target_mask_points"), jnp.asarray(kw["target_valid"]),
      None if box_valid is None else jnp.asarray(box_valid), weights, backend=backend, interpret=True)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  targets = (rng.uniform(size=(B, T, K)) > 0.5).astype(np.float32)
  targets[0, 0] = rng.uniform(size=K)  # Soft targets (bilinear point samples of a mask border).
  return dict(
      pred_logits=rng.normal(size=(B, Q, C)).astype(np.float32) * 2,
      pred_boxes=rng.uniform(0.1, 0.9, size=(B, Q, 4)).astype(np.float32),
      pred_mask_points=rng.normal(size=(B, Q, K)).astype(np.float32) * 3,
      target_labels=rng.integers(0, C, size=(B, T)).astype(np.int32),
      target_boxes=rng.uniform(0.1, 0.9, size=(B, T, 4)).astype(np.float32),
      target_mask_points=targets,
      target_valid=np.array([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], bool),
  )


def _xyxy(b):
  return np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], -1)


def numpy_cost(inputs, weights: CostWeights, boxes=True, masks=True, box_valid=None):
  """The reference HungarianMatcher's per-image formulas in float64 NumPy (cdist, generalized_box_iou,
  batch_sigmoid_ce_loss, batch_dice_loss), for the valid targets of each image."""
  out = np.full((B, Q, T), weights.pad_cost)
  for b in range(B):
    cols = np.flatnonzero(inputs["target_valid"][b])
    labels = inputs["target_labels"][b, cols]
    logits = inputs["pred_logits"][b].astype(np.float64)
    if weights.class_cost == "focal":
      p = 1 / (1 + np.exp(-logits))
      a, g = weights.focal_alpha, weights.focal_gamma
      pos = a * (1 - p) ** g * -np.log(p + 1e-8)
      neg = (1 - a) * p ** g * -np.log(1 - p + 1e-8)
      cost = weights.class_weight * (pos[:, labels] - neg[:, labels])
    else:
      e = np.exp(logits - logits.max(-1, keepdims=True))
      cost = weights.class_weight * -(e / e.sum(-1, keepdims=True))[:, labels]
    if boxes:
      pb = inputs["pred_boxes"][b].astype(np.float64)
      tb = inputs["target_boxes"][b, cols].astype(np.float64)
      l1 = np.abs(pb[:, None] - tb[None]).sum(-1)
      a, t = _xyxy(pb), _xyxy(tb)
      area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])
      wh = np.clip(np.minimum(a[:, None, 2:], t[None, :, 2:]) - np.maximum(a[:, None, :2], t[None, :, :2]), 0, None)
      inter = wh[..., 0] * wh[..., 1]
      union = area(a)[:, None] + area(t)[None] - inter
      wh = np.clip(np.maximum(a[:, None, 2:], t[None, :, 2:]) - np.minimum(a[:, None, :2], t[None, :, :2]), 0, None)
      enclosing = wh[..., 0] * wh[..., 1]
      giou = inter / union - (enclosing - union) / enclosing
      if box_valid is not None:  # Panoptic: stuff targets take the mean over thing targets.
        thing = box_valid[b, cols]
        l1[:, ~thing] = l1[:, thing].mean() if thing.any() else 0.0
        giou[:, ~thing] = giou[:, thing].mean() if thing.any() else 0.0
      cost = cost + weights.bbox_weight * l1 - weights.giou_weight * giou
    if masks:
      x = inputs["pred_mask_points"][b].astype(np.float64)
      t = inputs["target_mask_points"][b, cols].astype(np.float64)
      pos, neg = np.log1p(np.exp(-x)), np.log1p(np.exp(x))
      bce = (pos @ t.T + neg @ (1 - t).T) / x.shape[1]
      prob = 1 / (1 + np.exp(-x))
      dice = 1 - (2 * prob @ t.T + 1) / (prob.sum(-1)[:, None] + t.sum(-1)[None] + 1)
      cost = cost + weights.mask_weight * bce + weights.dice_weight * dice
    out[b][:, cols] = cost
  return out


def _check(actual, expected, valid, name):
  """Valid columns within 1e-5 relative; padded columns exactly pad_cost."""
  actual = np.asarray(actual)
  mask = np.broadcast_to(valid[:, None, :], actual.shape)
  assert_close(actual[mask], expected[mask], 1e-5, name=name)
  np.testing.assert_array_equal(actual[~mask], expected[~mask])


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("variant", ["focal", "softmax", "boxes_only", "masks_only", "panoptic"])
def test_matches_numpy_formula(impl, variant):
  inputs = _inputs()
  weights = CostWeights(class_cost="softmax" if variant == "softmax" else "focal", class_weight=2.0,
                        bbox_weight=5.0, giou_weight=3.0, mask_weight=4.0, dice_weight=6.0)
  boxes, masks = variant != "masks_only", variant != "boxes_only"
  kwargs = dict(inputs)
  if not boxes:
    kwargs.update(pred_boxes=None, target_boxes=None)
  if not masks:
    kwargs.update(pred_mask_points=None, target_mask_points=None)
  box_valid = None
  if variant == "panoptic":
    box_valid = np.array([[1, 0, 1, 0, 1], [0, 0, 0, 0, 0]], bool)  # Image 1 has no thing at all.
    kwargs["target_box_valid"] = box_valid
  expected = numpy_cost(inputs, weights, boxes, masks, box_valid)
  _check(IMPLS[impl](**kwargs, weights=weights), expected, inputs["target_valid"], f"{impl} {variant}")


def test_auto_and_pallas_impls():
  """The public entry point with impl="auto" (XLA on CPU) and impl="pallas" (interpret on CPU)."""
  inputs = _inputs(1)
  expected = numpy_cost(inputs, CostWeights())
  for impl in ("auto", "pallas"):
    _check(matching_cost(**inputs, impl=impl), expected, inputs["target_valid"], impl)


def test_non_finite_predictions_get_pad_cost():
  inputs = _inputs()
  inputs["pred_logits"][0, 3] = np.nan
  inputs["pred_boxes"][1, 2] = np.inf
  cost = np.asarray(matching_cost(**inputs, impl="xla"))
  assert np.all(np.isfinite(cost))
  assert np.all(cost[0, 3] == CostWeights().pad_cost)
  assert np.all(cost[1, 2] == CostWeights().pad_cost)


def test_degenerate_boxes_and_empty_targets():
  inputs = _inputs()
  inputs["pred_boxes"][:, :, 2:] = 0.0  # Zero-size predictions: GIoU terms defined as 0, no NaN.
  assert np.all(np.isfinite(np.asarray(matching_cost(**inputs, impl="xla"))))
  empty = dict(inputs, target_labels=np.zeros((B, 0), np.int32), target_boxes=np.zeros((B, 0, 4), np.float32),
               target_mask_points=np.zeros((B, 0, K), np.float32), target_valid=np.zeros((B, 0), bool))
  assert matching_cost(**empty).shape == (B, Q, 0)


def test_weights_from_mapping_and_bfloat16():
  inputs = _inputs()
  config = {"class_weight": 2.0, "class_cost": "softmax"}
  expected = matching_cost(**inputs, weights=CostWeights(**config), impl="xla")
  bf16 = dict(inputs, pred_logits=jnp.asarray(inputs["pred_logits"], jnp.bfloat16))
  np.testing.assert_allclose(matching_cost(**bf16, weights=config, impl="xla"), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("backend,platform", [("triton", "cuda"), ("mosaic_tpu", "tpu")])
def test_pallas_lowers_for_accelerators(backend, platform):
  """The fused kernel lowers (full cost, and detection-only) at a Mask DINO-like size."""
  b, q, c, t, k = 2, 300, 80, 100, 1000
  structs = [jax.ShapeDtypeStruct(s, d) for s, d in (
      ((b, q, c), jnp.float32), ((b, q, 4), jnp.float32), ((b, q, k), jnp.float32), ((b, t), jnp.int32),
      ((b, t, 4), jnp.float32), ((b, t, k), jnp.float32), ((b, t), jnp.bool_))]
  marker = "tpu_custom_call" if platform == "tpu" else "__gpu$xla.gpu.triton"
  for masks in (True, False):
    fn = lambda lg, pb, pm, lb, tb, tm, v: matching_cost_pallas(
        lg, pb, pm if masks else None, lb, tb, tm if masks else None, v, None, CostWeights(), backend=backend)
    text = jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=TRITON_CHECK)(
        *structs).mlir_module()
    assert text.count(marker) == 1


def test_impl_dispatch_per_platform():
  inputs = {k: jnp.asarray(v) for k, v in _inputs().items()}
  fn = lambda kw: matching_cost(**kw, impl="auto")
  for platform, marker in (("cpu", None), ("cuda", "__gpu$xla.gpu.triton"), ("tpu", "tpu_custom_call")):
    text = jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=TRITON_CHECK)(
        inputs).mlir_module()
    for other in ("__gpu$xla.gpu.triton", "tpu_custom_call"):
      assert (other in text) == (other == marker), (platform, other)


def test_bad_arguments():
  inputs = _inputs()
  with pytest.raises(ValueError, match="target_boxes"):
    matching_cost(**dict(inputs, target_boxes=None))
  with pytest.raises(ValueError, match="target_mask_points"):
    matching_cost(**dict(inputs, target_mask_points=inputs["target_mask_points"][..., :3]))
  with pytest.raises(ValueError, match="target_valid"):
    matching_cost(**dict(inputs, target_valid=inputs["target_valid"][:, :2]))
  with pytest.raises(ValueError, match="pred_boxes"):
    matching_cost(**dict(inputs, pred_boxes=inputs["pred_boxes"][..., :2]))
  with pytest.raises(ValueError, match="target_labels"):
    matching_cost(**dict(inputs, target_labels=inputs["target_labels"].astype(np.float32)))
  with pytest.raises(ValueError, match="class_cost"):
    CostWeights(class_cost="sigmoid")
  with pytest.raises(ValueError, match="unknown fields"):
    matching_cost(**inputs, weights={"cost_class": 2.0})
  with pytest.raises(ValueError, match="impl"):
    matching_cost(**inputs, impl="triton")


def test_sharded_equals_single_device():
  from jax.sharding import NamedSharding, PartitionSpec as P

  from dinoseg import parallel

  rng = np.random.default_rng(2)
  b = 8
  inputs = dict(pred_logits=rng.normal(size=(b, Q, C)).astype(np.float32),
                pred_mask_points=rng.normal(size=(b, Q, K)).astype(np.float32),
                target_labels=rng.integers(0, C, size=(b, T)).astype(np.int32),
                target_mask_points=(rng.uniform(size=(b, T, K)) > 0.5).astype(np.float32),
                target_valid=rng.uniform(size=(b, T)) > 0.3)
  fn = jax.jit(lambda kw: matching_cost(**kw))
  expected = fn(inputs)
  mesh = parallel.make_mesh({"data": 8})
  with jax.set_mesh(mesh):
    sharded = jax.device_put(inputs, NamedSharding(mesh, P("data")))
    actual = fn(sharded)
    assert "all-gather" not in fn.lower(sharded).compile().as_text()
  assert_close(actual, expected, 1e-6)
