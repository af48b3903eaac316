"""Box ops against the DETR / torchvision formulas written out in PyTorch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.ops import (box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, clip_boxes,
                         denormalize_boxes, elementwise_generalized_box_iou, generalized_box_iou,
                         masks_to_boxes, normalize_boxes)


def _random_xyxy(rng, n):
  xy = rng.uniform(0, 0.7, (n, 2))
  wh = rng.uniform(0.01, 0.3, (n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def _torch_giou(torch, a, b):
  """DETR util/box_ops.generalized_box_iou, transcribed."""
  a, b = torch.tensor(a), torch.tensor(b)
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  lt = torch.max(a[:, None, :2], b[:, :2])
  rb = torch.min(a[:, None, 2:], b[:, 2:])
  wh = (rb - lt).clamp(min=0)
  inter = wh[..., 0] * wh[..., 1]
  union = area_a[:, None] + area_b - inter
  iou = inter / union
  lt = torch.min(a[:, None, :2], b[:, :2])
  rb = torch.max(a[:, None, 2:], b[:, 2:])
  wh = (rb - lt).clamp(min=0)
  area = wh[..., 0] * wh[..., 1]
  return iou.numpy(), (iou - (area - union) / area).numpy()


def test_format_round_trip_and_area(rng):
  xyxy = _random_xyxy(rng, 20)
  cxcywh = box_xyxy_to_cxcywh(jnp.asarray(xyxy))
  assert_close(box_cxcywh_to_xyxy(cxcywh), xyxy, rtol=1e-6)
  ref = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
  assert_close(box_area(jnp.asarray(xyxy)), ref)
  np.testing.assert_allclose(np.asarray(cxcywh[:, 2:]), xyxy[:, 2:] - xyxy[:, :2], rtol=1e-6)


def test_iou_and_giou_match_detr(torch, rng):
  a, b = _random_xyxy(rng, 13), _random_xyxy(rng, 7)
  iou_ref, giou_ref = _torch_giou(torch, a, b)
  iou, _ = box_iou(jnp.asarray(a), jnp.asarray(b))
  assert_close(iou, iou_ref)
  assert_close(generalized_box_iou(jnp.asarray(a), jnp.asarray(b)), giou_ref)
  assert_close(elementwise_generalized_box_iou(jnp.asarray(a[:7]), jnp.asarray(b)), np.diag(giou_ref[:7, :7]))
  # batched leading axes
  batched = generalized_box_iou(jnp.asarray(np.stack([a, a])), jnp.asarray(np.stack([b, b])))
  assert batched.shape == (2, 13, 7)


def test_giou_gradients_match_torch(torch, rng):
  a, b = _random_xyxy(rng, 5), _random_xyxy(rng, 4)
  ta = torch.tensor(a, requires_grad=True)
  tb = torch.tensor(b, requires_grad=True)
  area_a = (ta[:, 2] - ta[:, 0]) * (ta[:, 3] - ta[:, 1])
  area_b = (tb[:, 2] - tb[:, 0]) * (tb[:, 3] - tb[:, 1])
  lt = torch.max(ta[:, None, :2], tb[:, :2]); rb = torch.min(ta[:, None, 2:], tb[:, 2:])
  wh = (rb - lt).clamp(min=0); inter = wh[..., 0] * wh[..., 1]
  union = area_a[:, None] + area_b - inter
  lt2 = torch.min(ta[:, None, :2], tb[:, :2]); rb2 = torch.max(ta[:, None, 2:], tb[:, 2:])
  wh2 = (rb2 - lt2).clamp(min=0); enc = wh2[..., 0] * wh2[..., 1]
  (inter / union - (enc - union) / enc).sum().backward()
  ga, gb = jax.grad(lambda x, y: generalized_box_iou(x, y).sum(), argnums=(0, 1))(jnp.asarray(a), jnp.asarray(b))
  assert_close(ga, ta.grad.numpy())
  assert_close(gb, tb.grad.numpy())


def test_degenerate_boxes_are_finite_with_finite_gradients():
  a = jnp.asarray([[0.2, 0.2, 0.2, 0.5], [0.1, 0.1, 0.1, 0.1], [0.0, 0.0, 1.0, 1.0]])
  b = jnp.asarray([[0.2, 0.2, 0.2, 0.5], [0.3, 0.3, 0.3, 0.3]])
  giou = generalized_box_iou(a, b)
  iou, _ = box_iou(a, b)
  assert np.all(np.isfinite(giou)) and np.all(np.isfinite(iou))
  assert float(giou[2, 0]) == pytest.approx(0.0)  # zero-area box inside a unit box: iou 0, no penalty area
  g = jax.grad(lambda x: generalized_box_iou(x, b).sum())(a)
  assert np.all(np.isfinite(g))


def test_masks_to_boxes_both_conventions(rng):
  masks = np.zeros((3, 10, 12), bool)
  masks[0, 2:5, 3:9] = True
  masks[1, 7, 11] = True
  # masks[2] empty
  m2b = np.asarray(masks_to_boxes(jnp.asarray(masks), "mask2box"))
  bit = np.asarray(masks_to_boxes(jnp.asarray(masks), "bitmask"))
  np.testing.assert_array_equal(m2b, [[3, 2, 8, 4], [11, 7, 11, 7], [0, 0, 0, 0]])
  np.testing.assert_array_equal(bit, [[3, 2, 9, 5], [11, 7, 12, 8], [0, 0, 0, 0]])
  rand = rng.random((4, 9, 7)) > 0.7
  for m, box in zip(rand, np.asarray(masks_to_boxes(jnp.asarray(rand)))):
    ys, xs = np.nonzero(m)
    np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max(), ys.max()])


def test_normalize_and_clip(rng):
  boxes = jnp.asarray([[10.0, 20.0, 30.0, 60.0]])
  n = normalize_boxes(boxes, (100, 50))  # h=100, w=50
  np.testing.assert_allclose(np.asarray(n), [[0.2, 0.2, 0.6, 0.6]], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(denormalize_boxes(n, (100, 50))), np.asarray(boxes), rtol=1e-6)
  per_image = normalize_boxes(jnp.ones((2, 3, 4)), jnp.asarray([[10.0, 20.0], [4.0, 8.0]])[:, None])
  np.testing.assert_allclose(np.asarray(per_image[1, 0]), [1 / 8, 1 / 4, 1 / 8, 1 / 4])
  clipped = clip_boxes(jnp.asarray([[-5.0, 3.0, 70.0, 120.0]]), (100, 50))
  np.testing.assert_array_equal(np.asarray(clipped), [[0, 3, 50, 100]])


@pytest.mark.parametrize("call,arg", [
    (lambda: box_cxcywh_to_xyxy(jnp.zeros((3, 5))), "boxes"),
    (lambda: box_iou(jnp.zeros((3, 4)), jnp.zeros((3, 3))), "b"),
    (lambda: generalized_box_iou(jnp.zeros((4,)), jnp.zeros((3, 4))), "a"),
    (lambda: masks_to_boxes(jnp.zeros((2, 4, 4)), "tight"), "mode"),
    (lambda: masks_to_boxes(jnp.zeros((4,))), "masks"),
    (lambda: normalize_boxes(jnp.zeros((2, 4)), (1, 2, 3)), "image_hw"),
])
def test_bad_arguments(call, arg):
  with pytest.raises(ValueError, match=arg):
    call()
