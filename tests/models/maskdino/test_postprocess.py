"""Postprocessing against transcriptions of the reference's per-image loops (torch), on inputs that
produce many segments (smooth blob masks), including stuff merging and the overlap filter."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.models.maskdino import postprocess as pp

PADDED = (32, 48)
VALID = np.array([[32, 48], [25, 37]], np.int32)
OUT = np.array([[40, 60], [30, 33]], np.int32)
CANVAS = (40, 60)


def _sem_seg_postprocess(torch, x, img_size, out_hw):
  x = x[:, :img_size[0], :img_size[1]][None]
  return torch.nn.functional.interpolate(x, size=tuple(int(v) for v in out_hw), mode="bilinear", align_corners=False)[0]


def _inputs(rng, q=12, c=5):
  h, w = PADDED[0] // 4, PADDED[1] // 4
  yy, xx = np.mgrid[:h, :w]
  masks = np.zeros((2, q, h, w), np.float32)
  for b in range(2):
    for k in range(q):  # blobs on a jittered 3 x 4 grid: mostly disjoint, some overlaps
      cy = (k // 4 + 0.5) * h / 3 + rng.uniform(-1, 1)
      cx = (k % 4 + 0.5) * w / 4 + rng.uniform(-1, 1)
      r = rng.uniform(1.2, 2.2)
      masks[b, k] = 6 * (1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2)
  logits = rng.normal(0, 2, (2, q, c)).astype(np.float32)
  logits[:, :, 3] += np.where(np.arange(q) % 3 == 0, 4.0, 0.0)  # several queries of stuff class 3 (merging)
  boxes = rng.uniform(0.2, 0.7, (2, q, 4)).astype(np.float32)
  return logits, boxes, masks


def _upsampled(torch, masks):
  return torch.nn.functional.interpolate(torch.from_numpy(masks), size=PADDED, mode="bilinear", align_corners=False)


def test_crop_and_resize_matches_torch(torch, rng):
  x = rng.standard_normal((3, 16, 20)).astype(np.float32)
  for valid, out in (((16, 20), (16, 20)), ((11, 17), (30, 7)), ((5, 9), (5, 40))):
    got = np.asarray(pp.crop_and_resize(jnp.asarray(x), jnp.asarray(valid), jnp.asarray(out), (30, 40)))
    want = _sem_seg_postprocess(torch, torch.from_numpy(x), valid, out).numpy()
    np.testing.assert_allclose(got[:, :out[0], :out[1]], want, atol=1e-6)


def test_panoptic_matches_reference_loop(torch, rng):
  things = (0, 1, 2)
  logits, _, masks = _inputs(rng)
  res = pp.panoptic_inference(jnp.asarray(logits), jnp.asarray(masks), padded_hw=PADDED, valid_hw=jnp.asarray(VALID),
                              output_hw=jnp.asarray(OUT), canvas_hw=CANVAS, thing_classes=things,
                              object_mask_threshold=0.25, overlap_threshold=0.8)
  up = _upsampled(torch, masks)
  total = 0
  for b in range(2):
    mask_pred = _sem_seg_postprocess(torch, up[b], VALID[b], OUT[b]).sigmoid()
    mask_cls = torch.from_numpy(logits[b])
    scores, labels = mask_cls.sigmoid().max(-1)
    keep = scores > 0.25
    scores, labels = torch.softmax(mask_cls.sigmoid() / 0.06, dim=-1).max(-1)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep]
    seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32)
    info, current, stuff_memory = [], 0, {}
    if cur_masks.shape[0]:
      ids = (cur_scores.view(-1, 1, 1) * cur_masks).argmax(0)
      for k in range(cur_classes.shape[0]):
        cls = cur_classes[k].item()
        isthing = cls in things
        mask_area = (ids == k).sum().item()
        original_area = (cur_masks[k] >= 0.5).sum().item()
        m = (ids == k) & (cur_masks[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and m.sum().item() > 0:
          if mask_area / original_area < 0.8:
            continue
          if not isthing:
            if cls in stuff_memory:
              seg[m] = stuff_memory[cls]
              continue
            stuff_memory[cls] = current + 1
          current += 1
          seg[m] = current
          info.append({"id": current, "isthing": bool(isthing), "category_id": int(cls)})
    oh, ow = OUT[b]
    np.testing.assert_array_equal(np.asarray(res.segmentation[b])[:oh, :ow], seg.numpy())
    assert pp.panoptic_segments_info(res, b) == info
    assert np.all(np.asarray(res.segmentation[b])[oh:] == 0)
    total += len(info)
  assert total >= 8


def test_instance_matches_reference(torch, rng):
  logits, boxes, masks = _inputs(rng)
  k = 15
  res = pp.instance_inference(jnp.asarray(logits), jnp.asarray(boxes), jnp.asarray(masks), padded_hw=PADDED,
                              valid_hw=jnp.asarray(VALID), output_hw=jnp.asarray(OUT), canvas_hw=CANVAS, top_k=k)
  up = _upsampled(torch, masks)
  c = logits.shape[-1]
  for b in range(2):
    mask_pred = _sem_seg_postprocess(torch, up[b], VALID[b], OUT[b])
    scores = torch.from_numpy(logits[b]).sigmoid()
    top, idx = scores.flatten().topk(k, sorted=True)
    labels, query = idx % c, idx // c
    mp = mask_pred[query]
    binary = (mp > 0).float()
    ms = (mp.sigmoid().flatten(1) * binary.flatten(1)).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    h = PADDED[0] / VALID[b][0] * OUT[b][0]
    w = PADDED[1] / VALID[b][1] * OUT[b][1]
    bx = torch.from_numpy(boxes[b])[query]
    xyxy = torch.stack([bx[:, 0] - bx[:, 2] / 2, bx[:, 1] - bx[:, 3] / 2, bx[:, 0] + bx[:, 2] / 2,
                        bx[:, 1] + bx[:, 3] / 2], -1) * torch.tensor([w, h, w, h])
    oh, ow = OUT[b]
    np.testing.assert_allclose(np.asarray(res.scores[b]), (top * ms).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(res.labels[b]), labels.numpy())
    np.testing.assert_allclose(np.asarray(res.boxes[b]), xyxy.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(res.masks[b])[:, :oh, :ow], binary.bool().numpy())
  res2 = pp.instance_inference(jnp.asarray(logits), jnp.asarray(boxes), jnp.asarray(masks), padded_hw=PADDED,
                               valid_hw=jnp.asarray(VALID), output_hw=jnp.asarray(OUT), canvas_hw=CANVAS, top_k=k,
                               thing_classes=(0, 1))
  np.testing.assert_array_equal(np.asarray(res2.valid), np.isin(np.asarray(res2.labels), [0, 1]))
  with pytest.raises(ValueError, match="top_k"):
    pp.instance_inference(jnp.asarray(logits), jnp.asarray(boxes), jnp.asarray(masks), padded_hw=PADDED,
                          valid_hw=jnp.asarray(VALID), output_hw=jnp.asarray(OUT), canvas_hw=CANVAS, top_k=1000)


@pytest.mark.parametrize("ce,before", [(False, True), (True, False)])
def test_semantic_matches_reference(torch, rng, ce, before):
  logits, _, masks = _inputs(rng, c=6 if ce else 5)
  sem = pp.semantic_inference(jnp.asarray(logits), jnp.asarray(masks), padded_hw=PADDED, valid_hw=jnp.asarray(VALID),
                              output_hw=jnp.asarray(OUT), canvas_hw=CANVAS, semantic_ce_loss=ce,
                              postprocess_before_inference=before)
  up = _upsampled(torch, masks)
  for b in range(2):
    cls = torch.from_numpy(logits[b])
    cls = torch.softmax(cls, -1)[..., :-1] if ce else torch.softmax(cls.sigmoid() / 0.06, -1)
    if before:
      want = torch.einsum("qc,qhw->chw", cls, _sem_seg_postprocess(torch, up[b], VALID[b], OUT[b]).sigmoid())
    else:
      want = _sem_seg_postprocess(torch, torch.einsum("qc,qhw->chw", cls, up[b].sigmoid()), VALID[b], OUT[b])
    oh, ow = OUT[b]
    np.testing.assert_allclose(np.asarray(sem[b])[:, :oh, :ow], want.numpy(), rtol=1e-5, atol=1e-6)


def test_jits_once(rng):
  logits, boxes, masks = _inputs(rng)
  f = jax.jit(lambda l, bx, m, v, o: pp.instance_inference(l, bx, m, padded_hw=PADDED, valid_hw=v, output_hw=o,
                                                           canvas_hw=CANVAS, top_k=5))
  f(logits, boxes, masks, VALID, OUT)
  f(logits, boxes, masks, VALID[::-1].copy(), OUT[::-1].copy())
  assert f._cache_size() == 1
