"""Two-stage query selection (top-K encoder proposals) and mask-enhanced anchor boxes.

`encoder_output_proposals` mirrors the reference's `gen_encoder_output_proposals` for unpadded
memory (Mask DINO never passes a padding mask): every memory token proposes the box
(pixel centre, w = h = 0.05 * 2^lvl) in logit space; tokens whose box has a coordinate outside
(0.01, 0.99) get +inf and their memory is zeroed. `lvl` is the index in the *decoder's* level
order. Everything depends only on the static level shapes, so it is computed in NumPy.

`mask_boxes` turns interm mask logits into initial reference boxes (INITIALIZE_BOX_TYPE):
"bitmask" = detectron2 BitMasks (x1 = last index + 1, empty -> 0), "mask2box" = the reference's
`masks_to_boxes` (x1 = last index; an empty mask gives (1e8, 1e8, 0, 0), kept for parity).
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.ops import box_xyxy_to_cxcywh, inverse_sigmoid, masks_to_boxes

BOX_INIT_TYPES = ("no", "bitmask", "mask2box")


def encoder_output_proposals(spatial_shapes: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
  """Static proposals of every memory token.

  Args:
    spatial_shapes: ((H_0, W_0), ...) in the decoder's level order.
  Returns:
    proposals: (S, 4) float32 (cx, cy, w, h) logits, +inf where invalid.
    valid: (S,) bool.
  """
  props = []
  for lvl, (h, w) in enumerate(spatial_shapes):
    gy, gx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    cx = (gx.reshape(-1) + np.float32(0.5)) / np.float32(w)
    cy = (gy.reshape(-1) + np.float32(0.5)) / np.float32(h)
    wh = np.full_like(cx, np.float32(0.05) * np.float32(2.0 ** lvl))
    props.append(np.stack([cx, cy, wh, wh], -1))
  props = np.concatenate(props, 0).astype(np.float32)
  valid = ((props > 0.01) & (props < 0.99)).all(-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    logits = np.log(props / (np.float32(1) - props)).astype(np.float32)
  logits[~valid] = np.inf
  return logits, valid


def select_topk(scores: jax.Array, k: int) -> jax.Array:
  """Indices (B, k) of the k largest scores (B, S) (ties: lower index first, as torch.topk on CPU)."""
  if k > scores.shape[-1]:
    raise ValueError(f"cannot select {k} queries from {scores.shape[-1]} memory tokens; lower num_queries "
                     "or use a larger input")
  _, idx = jax.lax.top_k(scores, k)
  return idx


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x (B, S, D), idx (B, K) -> (B, K, D)."""
  return jnp.take_along_axis(x, idx[..., None], axis=1)


def mask_boxes(mask_logits: jax.Array, mode: str) -> jax.Array:
  """Initial reference boxes from mask logits.

  Args:
    mask_logits: (B, Q, h, w) logits (> 0 is foreground).
    mode: "bitmask" or "mask2box".
  Returns:
    (B, Q, 4) cxcywh logits (inverse_sigmoid of boxes normalized by (w, h), eps 1e-5).
  """
  if mode not in ("bitmask", "mask2box"):
    raise ValueError(f"mode must be 'bitmask' or 'mask2box', got {mode!r}")
  h, w = mask_logits.shape[-2:]
  fg = jax.lax.stop_gradient(mask_logits) > 0
  boxes = masks_to_boxes(fg, mode=mode)
  if mode == "mask2box":
    empty = ~fg.any(axis=(-2, -1))
    boxes = jnp.where(empty[..., None], jnp.asarray([1e8, 1e8, 0.0, 0.0], boxes.dtype), boxes)
  boxes = box_xyxy_to_cxcywh(boxes) / jnp.asarray([w, h, w, h], jnp.float32)
  return inverse_sigmoid(boxes)


__all__ = ["encoder_output_proposals", "select_topk", "gather_tokens", "mask_boxes", "BOX_INIT_TYPES"]
