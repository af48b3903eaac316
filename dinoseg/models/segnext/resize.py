"""Bilinear resizes between the model's square frame and an image's own size, jit-friendly.

The reference stretches every image to `size` x `size` (`F.interpolate(x, size)`) and resizes
predictions back to the original (H, W). Here (H, W) may be traced values: images and masks
sit at the top-left of a fixed canvas (dinoseg's padding convention), so one compiled
function serves every image size that fits the canvas.

- `to_model_frame`: crop the valid (H, W) region of a canvas, resize it to (size, size)
  (`dinoseg.ops.resize_valid_region`, PyTorch-exact, align_corners=False).
- `to_original_frame`: resize a (size, size) map to (H, W) and write it at the top-left of a
  (Hc, Wc) canvas, zeros elsewhere; equal to `F.interpolate(x, (H, W), mode="bilinear",
  align_corners=False)` on the valid region (PyTorch's float32 index arithmetic).
"""
import jax
import jax.numpy as jnp

from dinoseg.ops import resize_valid_region


def to_model_frame(x: jax.Array, valid_hw: jax.Array, size: int) -> jax.Array:
  """(B, Hc, Wc, ...) canvas with per-item valid (H, W) -> (B, size, size, ...).

  Args:
    x: (B, Hc, Wc, ...) float.
    valid_hw: (B, 2) int, 1 <= H <= Hc, 1 <= W <= Wc.
    size: output side.
  """
  return jax.vmap(lambda xi, hw: resize_valid_region(xi, hw, (size, size), axes=(0, 1)))(x, valid_hw)


def _axis_taps(n_in: int, n_out: jax.Array, n_canvas: int):
  """Indices (n_canvas,) x2 and weight (n_canvas,) for a resize n_in -> traced n_out (<= n_canvas)."""
  n_out = jnp.clip(n_out, 1, n_canvas)
  scale = jnp.float32(n_in) / n_out.astype(jnp.float32)
  dst = jnp.arange(n_canvas, dtype=jnp.float32)
  src = jnp.maximum(scale * (dst + 0.5) - 0.5, 0.0)
  src = jnp.where(n_out == n_in, dst, src)  # PyTorch copies when the sizes agree.
  idx0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), n_in - 1)
  lam = jnp.clip(src - idx0.astype(jnp.float32), 0.0, 1.0)
  idx1 = jnp.minimum(idx0 + 1, n_in - 1)
  inside = jnp.arange(n_canvas) < n_out
  return idx0, idx1, lam, inside


def _resize_one(x: jax.Array, hw: jax.Array, canvas_hw: tuple[int, int]) -> jax.Array:
  for axis, n_out, n_canvas in ((0, hw[0], canvas_hw[0]), (1, hw[1], canvas_hw[1])):
    idx0, idx1, lam, inside = _axis_taps(x.shape[axis], n_out, n_canvas)
    shape = [1] * x.ndim
    shape[axis] = n_canvas
    lam = lam.astype(x.dtype).reshape(shape)
    x = jnp.take(x, idx0, axis=axis) * (1 - lam) + jnp.take(x, idx1, axis=axis) * lam
    x = jnp.where(inside.reshape(shape), x, jnp.zeros((), x.dtype))
  return x


def to_original_frame(x: jax.Array, original_hw: jax.Array, canvas_hw: tuple[int, int]) -> jax.Array:
  """(B, S, S, ...) model-frame maps -> (B, Hc, Wc, ...) with the (H, W) resize top-left, zeros elsewhere.

  Args:
    x: (B, S, S, ...) float.
    original_hw: (B, 2) int, H <= Hc and W <= Wc.
    canvas_hw: static (Hc, Wc).
  """
  if len(canvas_hw) != 2:
    raise ValueError(f"canvas_hw must be (height, width), got {canvas_hw}")
  return jax.vmap(lambda xi, hw: _resize_one(xi, hw, tuple(canvas_hw)))(x, original_hw)
