"""The Mask DINO train step sharded over 8 (fake CPU) devices equals the single-device step: same loss
dictionary, same matching, same updated parameters (quickstart tiny config, batch 8, padded targets)."""
import jax
import numpy as np
import pytest

from dinoseg.config import load_config
from dinoseg.train import trainer

CONFIG = "configs/maskdino/quickstart.py:tiny"


def _batch(config, rng) -> dict:
  """Batch 8 of random images with 0..T rectangles each (boxes from the masks, padded slots last)."""
  b, (h, w), t = 8, tuple(config.data.image_size), int(config.data.max_instances)
  masks = np.zeros((b, t, h, w), np.uint8)
  boxes = np.zeros((b, t, 4), np.float32)
  labels = np.zeros((b, t), np.int32)
  valid = np.zeros((b, t), bool)
  for i in range(b):
    for j in range(int(rng.integers(0 if i == 3 else 1, t + 1))):  # image 3 may have no object at all
      y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
      y1, x1 = y0 + rng.integers(6, h - y0 + 1), x0 + rng.integers(6, w - x0 + 1)
      masks[i, j, y0:y1, x0:x1] = 1
      boxes[i, j] = ((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h)
      labels[i, j] = rng.integers(0, config.model.num_classes)
      valid[i, j] = True
  return {"image": rng.integers(0, 256, (b, h, w, 3)).astype(np.uint8), "valid_hw": np.full((b, 2), (h, w), np.int32),
          "labels": labels, "boxes": boxes, "valid": valid, "masks": masks}


@pytest.mark.parametrize("padded_mask_rows", ["skip", pytest.param("compute", marks=pytest.mark.slow)])
def test_sharded_train_step_equals_single_device(padded_mask_rows):
  assert jax.device_count() == 8
  # eps=1 and no decay / clipping: the first AdamW update is ~ lr * g for small g, so the updates
  # compare the gradients (with the default eps, g / |g| would turn float noise in near-zero
  # gradients, e.g. of biases before a normalization, into full-size updates of either sign).
  config = load_config(CONFIG, ["data.batch_size=8", f"loss.padded_mask_rows={padded_mask_rows}",
                                "loss.mask_row_chunk=3", "optimizer.eps=1.0", "optimizer.weight_decay=0.0",
                                "optimizer.clip_grad_norm=0.0"])
  batch = _batch(config, np.random.default_rng(0))
  results = []
  for devices in (jax.devices(), jax.devices()[:1]):
    run = trainer.build_run(config, devices=devices)
    state = run.create_state()
    before = jax.device_get(state.params)
    with run.context():
      state, metrics = run.train_step(state, run.global_batch(batch))
    update = jax.tree.map(lambda a, b: a - b, jax.device_get(state.params), before)
    results.append((update, jax.device_get(metrics)))
  (u8, m8), (u1, m1) = results
  assert float(m8["num_instances"]) == float(batch["valid"].sum())
  for key in ("loss", "loss_mask", "loss_dice", "loss_ce", "loss_bbox", "loss_mask_dn", "grad_norm"):
    assert float(m8[key]) == pytest.approx(float(m1[key]), rel=1e-5), key
  scale = max(float(np.max(np.abs(u))) for u in jax.tree.leaves(u1))
  for a, b in zip(jax.tree.leaves(u8), jax.tree.leaves(u1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * scale)  # float32 rounding of p + update
