"""Parity with the reference Mask DINO (tests/fixtures/maskdino, scripts/make_maskdino_fixtures.py): the same
random weights (rebuilt from the reference key list through dinoseg's converter) and inputs give the same
pixel-decoder outputs, predictions and postprocessed results in eval mode, and the same 105-style weighted
loss dictionary, matchings and gradients in train mode (with the reference's denoising noise and sampled
points fed in). fp32, relative error <= 1e-4."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from maskdino_fixtures import (fixture_config, fixture_features, fixture_head_variables, fixture_script, head_modules,
                      load_fixture, model_config_for)
from helpers import assert_close

from dinoseg.models.maskdino import criterion as crit_lib
from dinoseg.models.maskdino import defaults, denoising
from dinoseg.models.maskdino import postprocess as pp
from dinoseg.structures import PaddedInstances

RTOL = 1e-4


def scipy_assign(cost, valid):
  """Oracle assignment: scipy's linear_sum_assignment on the valid columns (host callback)."""
  from scipy.optimize import linear_sum_assignment

  def host(c, v):
    out = np.zeros(v.shape, np.int32)
    for b in range(c.shape[0]):
      cols = np.nonzero(v[b])[0]
      rows, cc = linear_sum_assignment(c[b][:, cols])
      out[b, cols[cc]] = rows
    return out
  return jax.pure_callback(host, jax.ShapeDtypeStruct(valid.shape, jnp.int32), cost, valid)


def _probe(spec, name, x, axis=1, k=4):
  w = fixture_script().probe_weight(name, x.shape[axis], spec["seed"], k).astype(np.float64)
  return np.moveaxis(np.tensordot(np.moveaxis(np.asarray(x, np.float64), axis, -1), w, axes=1), -1, axis)


@pytest.mark.parametrize("name", ["r50_4lvl", "swin_5lvl", "ade_3lvl"])
def test_eval_parity(name):
  spec, fx = fixture_config(name), load_fixture(name)
  model = head_modules(model_config_for(spec))
  variables = fixture_head_variables(name)

  @jax.jit
  def run(v, f):
    return model.apply(v, f, method=lambda m, f: (m.head(f), m.pixel_decoder(f)))
  out, (mask_features, levels) = run(variables, fixture_features(name))
  nchw = lambda x: np.asarray(x).transpose(0, 3, 1, 2)  # noqa: E731
  assert_close(_probe(spec, "mask_features", nchw(mask_features)), fx["eval/probe/mask_features"], RTOL, "mask features")
  for i, level in enumerate(levels):
    assert_close(_probe(spec, f"level{i}", nchw(level)), fx[f"eval/probe/level{i}"], RTOL, f"encoder level {i}")
  assert_close(out.logits, fx["eval/logits"], RTOL, "class logits (every prediction)")
  assert_close(out.boxes, fx["eval/boxes"], RTOL, "boxes (every prediction)")
  assert out.masks.shape[0] == 1  # eval: final masks only
  assert_close(_probe(spec, "masks", out.masks[-1]), fx["eval/probe/masks"], RTOL, "final masks")
  if spec["two_stage"]:
    assert_close(out.interm_logits, fx["eval/interm_logits"], RTOL, "interm logits")
    assert_close(out.interm_boxes, fx["eval/interm_boxes"], RTOL, "interm boxes")
    assert_close(_probe(spec, "interm_masks", out.interm_masks), fx["eval/probe/interm_masks"], RTOL, "interm masks")
  else:
    assert out.interm_logits is None

  # Postprocessing on the same outputs (instance / panoptic / semantic, as the fixture's config).
  padded, canvas = tuple(spec["padded_hw"]), (48, 72)
  valid, out_hw = jnp.asarray(spec["image_hw"]), jnp.asarray(spec["output_hw"])
  logits, boxes, masks = out.logits[-1], out.boxes[-1], out.masks[-1]
  for i, (oh, ow) in enumerate(spec["output_hw"]):
    if spec["instance_on"]:
      res = pp.instance_inference(logits, boxes, masks, padded_hw=padded, valid_hw=valid, output_hw=out_hw,
                                  canvas_hw=canvas, top_k=spec["detections_per_image"],
                                  thing_classes=spec["thing_classes"] if spec["panoptic_on"] else None)
      keep = np.asarray(res.valid[i])
      order = np.argsort(-np.asarray(res.scores[i])[keep], kind="stable")
      assert_close(np.asarray(res.scores[i])[keep][order], fx[f"post/inst_scores/{i}"], RTOL, "instance scores")
      np.testing.assert_array_equal(np.asarray(res.labels[i])[keep][order], fx[f"post/inst_labels/{i}"])
      assert_close(np.asarray(res.boxes[i])[keep][order], fx[f"post/inst_boxes/{i}"], RTOL, "instance boxes")
      want = np.unpackbits(fx[f"post/inst_masks/{i}"], axis=-1)[..., :ow].astype(bool)
      np.testing.assert_array_equal(np.asarray(res.masks[i])[keep][order][:, :oh, :ow], want)
    if spec["panoptic_on"]:
      pan = pp.panoptic_inference(logits, masks, padded_hw=padded, valid_hw=valid, output_hw=out_hw, canvas_hw=canvas,
                                  thing_classes=spec["thing_classes"], object_mask_threshold=spec["object_mask_threshold"],
                                  overlap_threshold=spec["overlap_threshold"], temperature=spec["pano_temperature"])
      np.testing.assert_array_equal(np.asarray(pan.segmentation[i])[:oh, :ow], fx[f"post/pano_seg/{i}"])
      assert pp.panoptic_segments_info(pan, i) == json.loads(str(fx[f"post/pano_info/{i}"]))
    if spec["semantic_on"]:
      sem = pp.semantic_inference(logits, masks, padded_hw=padded, valid_hw=valid, output_hw=out_hw, canvas_hw=canvas,
                                  semantic_ce_loss=spec["semantic_ce"], temperature=spec["pano_temperature"],
                                  postprocess_before_inference=spec["instance_on"] or spec["panoptic_on"])
      s = np.asarray(sem[i])[:, :oh, :ow]
      assert_close(_probe(spec, "sem_seg", s, axis=0, k=2), fx[f"post/probe/sem_seg/{i}"], RTOL, "semantic scores")
      np.testing.assert_array_equal(s.argmax(0), fx[f"post/sem_argmax/{i}"])


def _padded_targets(fx, max_instances=None, rows=None):
  """The fixture's ground truth as PaddedInstances; with `max_instances`, padded to that many rows and
  (with `rows`, a (B, n) array) real instance j of image b placed at row rows[b, j]."""
  gt = {k: np.asarray(fx[f"gt/{k}"]) for k in ("labels", "boxes", "valid", "masks")}
  if max_instances is not None:
    b, t = gt["valid"].shape
    place = np.tile(np.arange(t), (b, 1)) if rows is None else np.asarray(rows)
    padded = {k: np.zeros((b, max_instances) + v.shape[2:], v.dtype) for k, v in gt.items()}
    for k, v in gt.items():
      for i in range(b):
        padded[k][i, place[i]] = v[i]
    gt = padded
  return PaddedInstances(labels=jnp.asarray(gt["labels"]), boxes=jnp.asarray(gt["boxes"]),
                         valid=jnp.asarray(gt["valid"]), masks=jnp.asarray(gt["masks"]))


def _train_parity(name, padded_mask_rows="auto", mask_row_chunk=8, max_instances=None, rows=None,
                  train_mask_logits="factored"):
  spec, fx = fixture_config(name), load_fixture(name)
  cfg = model_config_for(spec)
  cfg.decoder.train_mask_logits = train_mask_logits
  model = head_modules(cfg)
  variables = fixture_head_variables(name)
  feats = fixture_features(name)
  targets = _padded_targets(fx, max_instances, rows)
  noise = denoising.DNNoise(jnp.asarray(fx["dn/label_u"]), jnp.asarray(fx["dn/random_labels"]),
                            jnp.asarray(fx["dn/box_u"]))
  loss_cfg = defaults.loss_config()
  loss_cfg.num_points = spec["num_points"]
  loss_cfg.padded_mask_rows, loss_cfg.mask_row_chunk = padded_mask_rows, mask_row_chunk
  criterion = crit_lib.SetCriterion(spec["num_classes"], loss_cfg, semantic_ce_loss=spec["semantic_ce"],
                                    assign=scipy_assign)

  def draws(out_name, kind, shape):  # the reference's own uniform draws, in dinoseg's layout
    value = fx[f"draws/{kind}/{out_name}"]
    if max_instances is not None and kind != "match" and not out_name.startswith("dn"):  # per target row
      place = np.tile(np.arange(value.shape[1]), (value.shape[0], 1)) if rows is None else np.asarray(rows)
      full = np.full(shape, 0.5, np.float32)
      for i in range(shape[0]):
        full[i, place[i]] = value[i]
      value = full
    return jnp.asarray(value.reshape(shape))

  def loss_fn(params):
    out = model.apply({"params": params}, feats, train=True, targets=targets, dn_noise=noise,
                      method=lambda m, f, **kw: m.head(f, **kw))
    losses, indices = criterion(out, targets, draws, return_indices=True)
    return crit_lib.total_loss(losses), (losses, indices)

  (_, (losses, indices)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
  want = {k[len("loss/"):]: float(fx[k]) for k in fx if k.startswith("loss/")}
  assert set(losses) == set(want)
  assert len(want) == (45 if spec["two_stage"] else 35)  # 105 at full size (9 layers)
  for key, value in want.items():
    assert_close(float(losses[key]), value, RTOL, key)
  for out_name, table in indices.items():
    expected = fx[f"indices/{out_name}"]
    if max_instances is not None:  # back to the fixture's rows
      place = np.tile(np.arange(expected.shape[1]), (expected.shape[0], 1)) if rows is None else np.asarray(rows)
      table = np.take_along_axis(np.asarray(table), place, axis=1)
    np.testing.assert_array_equal(np.where(expected >= 0, np.asarray(table), -1), expected, err_msg=out_name)
  from dinoseg.models.maskdino import convert
  torch_grads = convert.to_torch({"params": grads}, cfg, head_only=True)
  for key in spec["grad_keys"]:
    assert_close(torch_grads[key], fx[f"grad/{key}"], RTOL, f"grad {key}")


@pytest.mark.parametrize("mode,chunk,logits", [("skip", 3, "factored"),
                                               pytest.param("skip", 3, "full", marks=pytest.mark.slow),
                                               pytest.param("compute", 8, "factored", marks=pytest.mark.slow),
                                               pytest.param("compute", 8, "full", marks=pytest.mark.slow)])
def test_train_parity_r50(mode, chunk, logits):
  """Both mask-loss paths: chunks of padded slots skipped under lax.cond (3 rows: chunks straddle
  images and the padding of the last chunk), and every row in one batch; each with the masks handed to the
  losses as factored logits (the default) and as the full (P, B, Q, h, w) logits (the reference's way)."""
  spec = load_fixture("r50_4lvl")
  assert not np.asarray(spec["gt/valid"]).all()  # the fixture has padded target slots
  _train_parity("r50_4lvl", mode, chunk, train_mask_logits=logits)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_5lvl", "ade_3lvl"])
def test_train_parity_slow(name):
  _train_parity(name)


@pytest.mark.parametrize("rows", [None, pytest.param([[4, 50, 99], [0, 7, 8]], marks=pytest.mark.slow)],
                         ids=["prefix", "scattered"])
def test_train_parity_reference_dn_groups(rows):
  """The reference's denoising groups with static shapes: 3 and 2 objects padded to max_instances 100,
  DN_NUM 100 -> the reference's pad size 99 = 33 groups of 3; dinoseg keeps 100 DN slots and computes
  m, G and the layout on device. Losses (45 terms, 20 DN), matchings and gradients (incl. label_enc,
  which only the DN queries use) as the reference; real targets at a prefix or at scattered rows."""
  _train_parity("r50_dn100", max_instances=100, rows=rows)


def test_dn_queries_and_attention_mask_match_the_reference():
  from dinoseg.models import query_groups
  spec, fx = fixture_config("r50_dn100"), load_fixture("r50_dn100")
  targets = _padded_targets(fx, 100)
  noise = denoising.DNNoise(jnp.asarray(fx["dn/label_u"]), jnp.asarray(fx["dn/random_labels"]),
                            jnp.asarray(fx["dn/box_u"]))
  table = fixture_head_variables("r50_dn100")["params"]["predictor"]["label_enc"]["embedding"]
  group = denoising.denoising_group(targets.labels, targets.boxes, targets.valid, noise, lambda x: table[x],
                                    dn_num=spec["dn_num"], noise_scale=spec["noise_scale"])
  pad = 99  # 33 groups of m = 3
  assert np.asarray(group.valid).sum(1).tolist() == [pad, pad]
  assert_close(_probe(spec, "dn_query_label", np.asarray(group.content)[:, :pad], axis=2),
               fx["dn/probe/query_label"], RTOL, "DN content queries")
  assert_close(np.asarray(group.boxes)[:, :pad], fx["dn/query_bbox"], RTOL, "DN box logits")
  b, q = targets.labels.shape[0], spec["num_queries"]
  matching = query_groups.QueryGroup(name="queries", content=jnp.zeros((b, q, 4)), boxes=jnp.zeros((b, q, 4)),
                                     valid=jnp.ones((b, q), bool))
  mask = np.asarray(query_groups.attention_mask([group, matching]))[:, 0]
  keep = np.r_[0:pad, 100:100 + q]  # without the inactive slot 99
  for i in range(b):
    np.testing.assert_array_equal(mask[i][np.ix_(keep, keep)], fx["dn/attn_mask"])
  assert mask[:, keep, 99].all()  # no active query sees the inactive slot
