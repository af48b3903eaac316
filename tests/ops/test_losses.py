"""Losses against the plain reference formulas in PyTorch, values and gradients, with padding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.ops import (box_l1_loss, dice_loss, giou_loss, instance_normalizer, sigmoid_ce_loss,
                         sigmoid_focal_loss, softmax_cross_entropy)


def _torch_focal(torch, inputs, targets, num_boxes, alpha=0.25, gamma=2):
  prob = inputs.sigmoid()
  ce = torch.nn.functional.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
  p_t = prob * targets + (1 - prob) * (1 - targets)
  loss = ce * ((1 - p_t) ** gamma)
  alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
  loss = alpha_t * loss
  return loss.mean(1).sum() / num_boxes * inputs.shape[1]  # DINO criterion multiplies by Q


def _torch_dice(torch, inputs, targets, num_masks):
  inputs = inputs.sigmoid().flatten(1)
  numerator = 2 * (inputs * targets).sum(-1)
  denominator = inputs.sum(-1) + targets.sum(-1)
  return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def _torch_bce(torch, inputs, targets, num_masks):
  return torch.nn.functional.binary_cross_entropy_with_logits(inputs, targets, reduction="none").mean(1).sum() / num_masks


def _check(torch, rng, jax_fn, torch_fn, *arrays):
  tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
  ref = torch_fn(*tensors)
  ref.backward()
  val, grads = jax.value_and_grad(jax_fn, argnums=tuple(range(len(arrays))))(*map(jnp.asarray, arrays))
  assert_close(val, ref.item(), name="value")
  for g, t in zip(grads, tensors):
    assert_close(g, t.grad.numpy(), name="grad")


def test_focal(torch, rng):
  logits = rng.standard_normal((2, 30, 7)).astype(np.float32) * 3
  targets = (rng.random((2, 30, 7)) > 0.9).astype(np.float32)
  _check(torch, rng, lambda x, t: sigmoid_focal_loss(x, t, num_boxes=4.0),
         lambda x, t: _torch_focal(torch, x, t, 4.0), logits, targets)


def test_dice_bce(torch, rng):
  logits = rng.standard_normal((9, 112)).astype(np.float32) * 2
  targets = (rng.random((9, 112)) > 0.5).astype(np.float32)
  _check(torch, rng, lambda x, t: dice_loss(x, t, num_masks=3.0), lambda x, t: _torch_dice(torch, x, t, 3.0),
         logits, targets)
  _check(torch, rng, lambda x, t: sigmoid_ce_loss(x, t, num_masks=3.0), lambda x, t: _torch_bce(torch, x, t, 3.0),
         logits, targets)


def test_box_losses(torch, rng):
  pred = np.concatenate([rng.uniform(0.3, 0.7, (6, 2)), rng.uniform(0.05, 0.3, (6, 2))], 1).astype(np.float32)
  tgt = np.concatenate([rng.uniform(0.3, 0.7, (6, 2)), rng.uniform(0.05, 0.3, (6, 2))], 1).astype(np.float32)

  def torch_giou(p, t):
    def xyxy(b):
      return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
    a, b = xyxy(p), xyxy(t)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]); area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inter = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    union = area_a + area_b - inter
    enc = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    return (1 - (inter / union - (enc - union) / enc)).sum() / 6.0

  _check(torch, rng, lambda p, t: box_l1_loss(p, t, num_boxes=6.0),
         lambda p, t: torch.nn.functional.l1_loss(p, t, reduction="sum") / 6.0, pred, tgt)
  _check(torch, rng, lambda p, t: giou_loss(p, t, num_boxes=6.0), torch_giou, pred, tgt)


def test_softmax_ce_with_class_weight(torch, rng):
  logits = rng.standard_normal((40, 11)).astype(np.float32)
  labels = rng.integers(0, 11, 40)
  weight = np.ones(11, np.float32)
  weight[-1] = 0.1
  t = torch.tensor(logits, requires_grad=True)
  ref = torch.nn.functional.cross_entropy(t, torch.tensor(labels), weight=torch.tensor(weight))
  ref.backward()
  f = lambda x: softmax_cross_entropy(x, jnp.asarray(labels), class_weight=jnp.asarray(weight))
  val, grad = jax.value_and_grad(f)(jnp.asarray(logits))
  assert_close(val, ref.item())
  assert_close(grad, t.grad.numpy())


@pytest.mark.slow  # long: with `pytest -m slow`, keeping the default run under 20 minutes
def test_validity_mask_equals_dropping_padded_rows(rng):
  logits = rng.standard_normal((10, 20)).astype(np.float32)
  targets = (rng.random((10, 20)) > 0.5).astype(np.float32)
  valid = np.array([True] * 6 + [False] * 4)
  garbage_logits = logits.copy()
  garbage_logits[~valid] = 1e4  # padded rows may hold anything
  for fn in (dice_loss, sigmoid_ce_loss):
    full = fn(jnp.asarray(garbage_logits), jnp.asarray(targets), num_masks=6.0, valid=jnp.asarray(valid))
    kept = fn(jnp.asarray(logits[:6]), jnp.asarray(targets[:6]), num_masks=6.0)
    assert_close(full, kept)
  boxes = rng.uniform(0.2, 0.4, (10, 4)).astype(np.float32)
  bad = boxes.copy()
  bad[~valid] = 0.0  # degenerate padding boxes
  assert_close(giou_loss(jnp.asarray(bad), jnp.asarray(boxes), num_boxes=6.0, valid=jnp.asarray(valid)),
               giou_loss(jnp.asarray(bad[:6]), jnp.asarray(boxes[:6]), num_boxes=6.0))
  g = jax.grad(lambda b: giou_loss(b, jnp.asarray(boxes), num_boxes=6.0, valid=jnp.asarray(valid)))(jnp.asarray(bad))
  assert np.all(np.isfinite(g)) and float(jnp.abs(g[6:]).max()) == 0.0
  cls = rng.standard_normal((2, 5, 3)).astype(np.float32)
  onehot = np.zeros((2, 5, 3), np.float32)
  qvalid = np.ones((2, 5), bool)
  qvalid[1, 3:] = False
  masked = sigmoid_focal_loss(jnp.asarray(cls), jnp.asarray(onehot), num_boxes=1.0, valid=jnp.asarray(qvalid))
  manual = sigmoid_focal_loss(jnp.asarray(cls[0]), jnp.asarray(onehot[0]), num_boxes=1.0) + \
      sigmoid_focal_loss(jnp.asarray(cls[1, :3]), jnp.asarray(onehot[1, :3]), num_boxes=1.0)
  assert_close(masked, manual)
  assert float(instance_normalizer(jnp.asarray(valid))) == 6.0
  assert float(instance_normalizer(jnp.zeros(4, bool))) == 1.0


def test_bad_arguments():
  with pytest.raises(ValueError, match="logits"):
    dice_loss(jnp.zeros((3, 4)), jnp.zeros((3, 5)), num_masks=1.0)
  with pytest.raises(ValueError, match="valid"):
    sigmoid_ce_loss(jnp.zeros((3, 4)), jnp.zeros((3, 4)), num_masks=1.0, valid=jnp.ones(4, bool))
  with pytest.raises(ValueError, match="pred_boxes"):
    giou_loss(jnp.zeros((3, 5)), jnp.zeros((3, 5)), num_boxes=1.0)
  with pytest.raises(ValueError, match="labels"):
    softmax_cross_entropy(jnp.zeros((3, 5)), jnp.zeros((4,), jnp.int32))
