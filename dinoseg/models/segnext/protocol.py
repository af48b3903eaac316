"""The RITM click protocol on device: a batch of objects, all clicks in one jitted loop.

The same rules as the host simulator (`clicker.py`) and evaluation loop
(`dinoseg.evaluation.interactive.evaluate_sample`), in integer arithmetic so that they make the
same clicks: FN / FP restricted to non-ignored pixels of the image, exact squared EDT with the
image border as boundary (pixels outside the image's valid region are False, which is the
1-pixel zero padding), clicked pixels excluded, positive iff max FN distance > max FP distance,
first maximum in raster order, the previous probability map fed back, prediction = prob > 0.49,
IoU over non-ignored pixels. Images sit top-left on a canvas with valid size `image_hw`.

`click_protocol` returns the IoU after each of `max_clicks` clicks (B, max_clicks) and the clicks;
`one_round` the IoU of a single prediction from given prompts (box / scribble evaluations).
"""
import jax
import jax.numpy as jnp

from dinoseg.models.segnext import prompts as prompt_lib
from dinoseg.models.segnext.iterative import squared_edt
from dinoseg.models.segnext.model import SegNext
from dinoseg.ops import pixels


def _valid_region(image_hw: jax.Array, hw: tuple[int, int]) -> jax.Array:
  rows = jnp.arange(hw[0])[None, :, None] < image_hw[:, 0, None, None]
  cols = jnp.arange(hw[1])[None, None, :] < image_hw[:, 1, None, None]
  return rows & cols


def masked_iou(pred: jax.Array, gt: jax.Array, region: jax.Array) -> jax.Array:
  """(B,) IoU of pred with gt == 1 over `region` & gt != -1 (1.0 for an empty union)."""
  keep = region & (gt != -1)
  obj = gt == 1
  inter = jnp.sum(pred & obj & keep, axis=(1, 2))
  union = jnp.sum((pred | obj) & keep, axis=(1, 2))
  return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)


def click_protocol(model: SegNext, params, images: jax.Array, image_hw: jax.Array, gt: jax.Array, *,
                   max_clicks: int = 20, threshold: float = 0.49, row_chunk: int | None = None) -> dict:
  """Runs the protocol for every object of the batch.

  Args:
    model, params: SegNext and its params.
    images: (B, Hc, Wc, 3) uint8 canvases (image top-left).
    image_hw: (B, 2) int32 image sizes.
    gt: (B, Hc, Wc) int ground truth (1 object, 0 background, -1 ignored; anything outside the image
      is ignored).
    max_clicks: clicks per object (20).
    threshold: probability threshold (0.49).
  Returns:
    {"ious": (B, max_clicks) float32, "clicks": (B, max_clicks, 3) int32 (y, x, is_positive)}.
  """
  b, hc, wc = gt.shape
  features = model.apply({"params": params}, pixels.to_unit_range(images), image_hw,
                         method=SegNext.embed_image)
  region = _valid_region(image_hw, (hc, wc))
  gt = jnp.where(region, gt.astype(jnp.int32), -1)
  obj, bg = gt == 1, gt == 0
  n = max_clicks
  base = prompt_lib.empty_prompts(b, num_points=n)

  def one_click(k, carry):
    points, not_clicked, prob, pred, num_pos, ious, clicks = carry
    fn = obj & ~pred
    fp = bg & pred
    d = squared_edt(jnp.concatenate([fn, fp], 0), row_chunk) * jnp.concatenate([not_clicked] * 2, 0)
    fn_d, fp_d = d[:b].reshape(b, -1), d[b:].reshape(b, -1)
    fn_max, fp_max = jnp.max(fn_d, axis=1), jnp.max(fp_d, axis=1)
    positive = fn_max > fp_max
    flat = jnp.where(positive, jnp.argmax(fn_d, axis=1), jnp.argmax(fp_d, axis=1))  # first maximum
    y, x = flat // wc, flat % wc
    row = jnp.where(positive, num_pos, n + (k - num_pos))
    new = jnp.stack([y, x, jnp.full_like(y, k)], -1).astype(jnp.float32)
    points = jnp.where((jnp.arange(2 * n)[None] == row[:, None])[..., None], new[:, None], points)
    not_clicked = not_clicked & ~((jnp.arange(hc * wc)[None] == flat[:, None]).reshape(b, hc, wc))
    logits = model.apply({"params": params}, features, base.replace(points=points), prob, image_hw,
                         method=SegNext.predict)
    prob = jnp.where(region, jax.nn.sigmoid(logits), 0.0)
    pred = region & (prob > threshold)
    ious = ious.at[:, k].set(masked_iou(pred, gt, region))
    clicks = clicks.at[:, k].set(jnp.stack([y, x, positive.astype(jnp.int32)], -1).astype(jnp.int32))
    return points, not_clicked, prob, pred, num_pos + positive.astype(jnp.int32), ious, clicks

  init = (base.points, jnp.ones((b, hc, wc), bool), jnp.zeros((b, hc, wc), jnp.float32),
          jnp.zeros((b, hc, wc), bool), jnp.zeros((b,), jnp.int32), jnp.zeros((b, n), jnp.float32),
          jnp.zeros((b, n, 3), jnp.int32))
  out = jax.lax.fori_loop(0, n, one_click, init)
  return {"ious": out[5], "clicks": out[6]}


def one_round(model: SegNext, params, images: jax.Array, image_hw: jax.Array, gt: jax.Array,
              prompts: prompt_lib.Prompts, threshold: float = 0.49) -> jax.Array:
  """(B,) IoU of one prediction from `prompts` (no previous mask), e.g. a GT box or a scribble."""
  b, hc, wc = gt.shape
  features = model.apply({"params": params}, pixels.to_unit_range(images), image_hw,
                         method=SegNext.embed_image)
  region = _valid_region(image_hw, (hc, wc))
  logits = model.apply({"params": params}, features, prompts, jnp.zeros((b, hc, wc)), image_hw,
                       method=SegNext.predict)
  pred = region & (jax.nn.sigmoid(logits) > threshold)
  return masked_iou(pred, jnp.where(region, gt.astype(jnp.int32), -1), region)
