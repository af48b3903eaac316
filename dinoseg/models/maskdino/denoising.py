"""Denoising (DN) queries with static shapes (the reference's `prepare_for_dn`, mode "seg").

Static-shape design. The reference picks `groups = DN_NUM // max_gt_in_batch` and pads every group
to `max_gt_in_batch` slots, so its query count changes from batch to batch. Here the ground truth
is padded to T instances per image (the config's `max_instances`), so

    groups G = dn_num // T,  pad_size = G * T,

both static. Slot (g, t) of image b holds a noised copy of ground-truth t when it is valid; other
slots hold zero content and a zero box logit (box 0.5, 0.5, 0.5, 0.5), exactly like the
reference's padding slots. When some image of the batch has exactly T instances the two agree
query for query (the parity fixtures use that case and feed the reference's noise). When every
image has fewer than T instances the reference would use more groups of fewer slots; the
difference is in how many noised copies are made, not in what a copy is.
If G == 0 (T > dn_num) denoising is off.

Noise (drawn with explicit PRNG keys, or given, see `DNNoise`):
- label: with probability noise_scale / 2 the label is replaced by a uniform random class;
- box: box += U(-1, 1) * (w/2, h/2, w, h) * noise_scale, clamped to [0, 1], then inverse_sigmoid.
Attention mask (True = blocked), size (G*T + Q)^2: matching queries cannot see DN queries, and DN
groups cannot see each other.
"""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.ops import inverse_sigmoid


@flax.struct.dataclass
class DNNoise:
  """label_u (B, G, T) uniform [0, 1); random_labels (B, G, T) int in [0, C); box_u (B, G, T, 4) uniform."""
  label_u: Any
  random_labels: Any
  box_u: Any


def num_dn_groups(dn_num: int, max_instances: int) -> int:
  """G = dn_num // T (0 disables denoising)."""
  if max_instances <= 0:
    raise ValueError(f"max_instances must be positive, got {max_instances}")
  return dn_num // max_instances


def sample_dn_noise(key: jax.Array, batch: int, groups: int, max_instances: int, num_classes: int) -> DNNoise:
  k1, k2, k3 = jax.random.split(key, 3)
  shape = (batch, groups, max_instances)
  return DNNoise(label_u=jax.random.uniform(k1, shape, jnp.float32),
                 random_labels=jax.random.randint(k2, shape, 0, num_classes, jnp.int32),
                 box_u=jax.random.uniform(k3, shape + (4,), jnp.float32))


def noised_targets(labels: jax.Array, boxes: jax.Array, noise: DNNoise, noise_scale: float):
  """Noised labels (B, G, T) and box logits (B, G, T, 4) from targets labels (B, T), boxes (B, T, 4)."""
  g = noise.label_u.shape[1]
  labels = jnp.broadcast_to(labels[:, None], (labels.shape[0], g, labels.shape[1]))
  boxes = jnp.broadcast_to(boxes[:, None], (boxes.shape[0], g) + boxes.shape[1:]).astype(jnp.float32)
  if noise_scale > 0:
    labels = jnp.where(noise.label_u < noise_scale * 0.5, noise.random_labels, labels)
    diff = jnp.concatenate([boxes[..., 2:] / 2, boxes[..., 2:]], axis=-1)
    boxes = boxes + (noise.box_u * 2 - 1.0) * diff * noise_scale
    boxes = jnp.clip(boxes, 0.0, 1.0)
  return labels, inverse_sigmoid(boxes)


def dn_attention_mask(groups: int, max_instances: int, num_queries: int) -> np.ndarray:
  """(G*T + Q, G*T + Q) bool, True = blocked (static)."""
  pad = groups * max_instances
  n = pad + num_queries
  mask = np.zeros((n, n), bool)
  mask[pad:, :pad] = True
  group_of = np.arange(pad) // max_instances
  mask[:pad, :pad] = group_of[:, None] != group_of[None, :]
  return mask


def dn_queries(labels: jax.Array, boxes: jax.Array, valid: jax.Array, noise: DNNoise, label_embedding,
               noise_scale: float):
  """Content and box logits of the DN queries.

  Args:
    labels (B, T) int, boxes (B, T, 4) cxcywh in [0, 1], valid (B, T): padded targets.
    noise: DNNoise with G groups.
    label_embedding: callable int labels -> (..., D) (the `label_enc` embedding).
  Returns:
    content (B, G*T, D) and box logits (B, G*T, 4); invalid slots are zeros.
  """
  b, t = labels.shape
  g = noise.label_u.shape[1]
  noisy_labels, box_logits = noised_targets(labels, boxes, noise, noise_scale)
  content = label_embedding(noisy_labels)
  keep = jnp.broadcast_to(valid[:, None, :], (b, g, t))
  content = jnp.where(keep[..., None], content, 0.0).reshape(b, g * t, -1)
  box_logits = jnp.where(keep[..., None], box_logits, 0.0).reshape(b, g * t, 4)
  return content, box_logits


__all__ = ["DNNoise", "num_dn_groups", "sample_dn_noise", "noised_targets", "dn_attention_mask", "dn_queries"]
