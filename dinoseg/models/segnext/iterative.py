"""Iterative training (RITM / SimpleClick / SegNext `ISTrainer.batch_forward`) on device.

One training step, as the reference:
1. image features with gradient (`embed_image`);
2. `num_rounds` ~ U{0..max_rounds} (one draw per batch) extra click rounds without gradient and
   without dropout: predict, take the probability as the next previous mask, add one click per
   sample in the larger error region (`sample_next_points`);
3. a final prediction with gradient from the last previous mask and all points; the normalized
   focal loss on the full-resolution logits.

The rounds run in a `lax.fori_loop` with a traced trip count, so one compiled step covers every
number of rounds. The next click (reference `get_next_points`): FN = gt & (p < 0.49), FP = ~gt &
(p > 0.49), padded by one pixel; the larger of the two maximal distances picks the polarity; the
click is uniform over the pixels whose distance exceeds half of that maximum, written into the
tail slot N - r (positive) or 2N - r (negative) of round r with index r; nothing is added when the
region is empty. The reference uses OpenCV's 5x5 chamfer approximation of the Euclidean distance
(`DIST_L2`, mask size 5); here the distance is exact (`squared_edt`).
"""
from typing import Any

import jax
import jax.numpy as jnp

from dinoseg.models.segnext import prompts as prompt_lib
from dinoseg.models.segnext.loss import normalized_focal_loss
from dinoseg.models.segnext.model import SegNext


def squared_edt(mask: jax.Array, row_chunk: int | None = None) -> jax.Array:
  """Exact squared Euclidean distance to the nearest False pixel, outside the image counting as False.

  Two passes: per column the distance to the nearest zero above/below (cumulative max/min of zero
  indices), then per row the exact minimum over columns of g(x')^2 + (x - x')^2 (brute force,
  O(H W^2), optionally `row_chunk` rows at a time to bound memory). Integer arithmetic: exact for
  any image size (ties are exact, as the click protocol's raster-order rule needs).

  Args:
    mask: (B, H, W) bool.
  Returns:
    (B, H, W) int32 squared distances (0 where mask is False).
  """
  b, h, w = mask.shape
  rows = jnp.arange(h, dtype=jnp.int32)[None, :, None]
  zero_above = jax.lax.cummax(jnp.where(mask, -1, rows), axis=1)  # last zero row <= y (-1: the padding)
  zero_below = jax.lax.cummin(jnp.where(mask, h, rows), axis=1, reverse=True)
  g = jnp.minimum(rows - zero_above, zero_below - rows)  # (B, H, W)
  cols = jnp.arange(w, dtype=jnp.int32)
  dx2 = jnp.square(cols[:, None] - cols[None, :])  # (x, x')
  border = jnp.square(jnp.minimum(cols + 1, w - cols))  # the padding columns -1 and w

  def row_pass(gr):  # (..., W) -> (..., W)
    return jnp.minimum(jnp.min(jnp.square(gr)[..., None, :] + dx2, axis=-1), border)

  if row_chunk is None or row_chunk >= h:
    return row_pass(g)
  pad = -h % row_chunk
  gc = jnp.pad(g, ((0, 0), (0, pad), (0, 0))).reshape(b, (h + pad) // row_chunk, row_chunk, w)
  out = jax.lax.map(row_pass, gc.transpose(1, 0, 2, 3))
  return out.transpose(1, 0, 2, 3).reshape(b, h + pad, w)[:, :h]


def sample_next_points(key: jax.Array, prob: jax.Array, gt: jax.Array, points: jax.Array, round_index,
                       threshold: float = 0.49, row_chunk: int | None = None) -> jax.Array:
  """Adds one click per sample in the larger error region (see the module docstring).

  Args:
    key: PRNG key.
    prob: (B, H, W) predicted probability.
    gt: (B, H, W) float ground truth (> 0.5 = object).
    points: (B, 2N, 3) reference points.
    round_index: r >= 1 (int or traced int32), the slot offset and the click index.
  Returns:
    (B, 2N, 3) points with the new clicks written.
  """
  b, h, w = prob.shape
  n = points.shape[1] // 2
  obj = gt > 0.5
  fn = obj & (prob < threshold)
  fp = ~obj & (prob > threshold)
  d = squared_edt(jnp.concatenate([fn, fp], 0), row_chunk)
  fn_d, fp_d = d[:b], d[b:]
  fn_max = jnp.max(fn_d, axis=(1, 2))
  fp_max = jnp.max(fp_d, axis=(1, 2))
  positive = fn_max > fp_max
  dist = jnp.where(positive[:, None, None], fn_d, fp_d)
  best = jnp.maximum(fn_max, fp_max)
  inner = 4 * dist > best[:, None, None]  # dt > max_dt / 2 on squared distances
  score = jnp.where(inner, jax.random.uniform(key, (b, h, w)), -1.0).reshape(b, h * w)
  flat = jnp.argmax(score, axis=1)
  found = jnp.any(inner, axis=(1, 2))
  y, x = (flat // w).astype(jnp.float32), (flat % w).astype(jnp.float32)
  r = jnp.asarray(round_index, jnp.int32)
  slot = jnp.where(positive, n - r, 2 * n - r)
  row = jnp.stack([y, x, jnp.full_like(y, r.astype(jnp.float32))], -1)  # (B, 3)
  write = found[:, None] & (jnp.arange(2 * n)[None, :] == slot[:, None])  # (B, 2N)
  return jnp.where(write[..., None], row[:, None, :], points)


def iterative_loss(model: SegNext, params: Any, images: jax.Array, gt: jax.Array, prompts: prompt_lib.Prompts,
                   key: jax.Array, *, max_rounds: int = 3, num_rounds: jax.Array | None = None,
                   loss_alpha: float = 0.5, loss_gamma: float = 2.0, row_chunk: int | None = None,
                   sample_valid: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """The SegNext training loss of one batch (differentiable in `params`).

  Args:
    model: SegNext.
    params: its params.
    images: (B, S, S, 3) float in [0, 1] (training images are already S x S: no stretch).
    gt: (B, S, S) float32 targets (1 object, 0 background, -1 ignored).
    prompts: initial prompts, (B, ...) leading dims, in the S x S frame.
    key: PRNG key (rounds, click sampling, dropout).
    max_rounds: the reference's `max_num_next_clicks` (3).
    num_rounds: override the number of rounds (traced int; default U{0..max_rounds}).
    sample_valid: optional (B,) bool, padding samples of a partial batch.
  Returns:
    (loss, aux) with aux = {"logits": (B, S, S), "points": the final points, "num_rounds"}.
  """
  b, s = images.shape[0], images.shape[1]
  hw = jnp.tile(jnp.asarray([[s, s]], jnp.int32), (b, 1))
  k_rounds, k_clicks, k_dropout = jax.random.split(key, 3)
  if num_rounds is None:
    num_rounds = jax.random.randint(k_rounds, (), 0, max_rounds + 1)
  features = model.apply({"params": params}, images, hw, method=SegNext.embed_image)
  frozen_params = jax.lax.stop_gradient(params)
  frozen_features = jax.lax.stop_gradient(features)

  def one_round(r, carry):
    points, prev = carry
    round_prompts = prompts.replace(points=points)
    logits = model.apply({"params": frozen_params}, frozen_features, round_prompts, prev, hw,
                         method=SegNext.predict)
    prev = jax.nn.sigmoid(logits)
    points = sample_next_points(jax.random.fold_in(k_clicks, r), prev, gt, points, r + 1, row_chunk=row_chunk)
    return points, prev

  init = (prompts.points, jnp.zeros((b, s, s), jnp.float32))
  points, prev = jax.lax.fori_loop(0, num_rounds, one_round, init)
  points, prev = jax.lax.stop_gradient(points), jax.lax.stop_gradient(prev)
  final_prompts = prompts.replace(points=points)
  logits = model.apply({"params": params}, features, final_prompts, prev, hw, deterministic=False,
                       method=SegNext.predict, rngs={"dropout": k_dropout})
  loss = normalized_focal_loss(logits, gt, alpha=loss_alpha, gamma=loss_gamma, sample_valid=sample_valid)
  return loss, {"logits": logits, "points": points, "num_rounds": num_rounds}
