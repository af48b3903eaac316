"""Denoising (DN) queries exactly as the reference's `prepare_for_dn` (mode "seg"), with static shapes.

The reference takes m = the largest ground-truth count of the batch, makes G = dn_num // m groups
of m slots (pad size G * m; DN is off when G == 0) and puts noised copies of image b's targets in
slots g * m + j, j < n_b; the other slots of a group hold zero content and a zero box logit. Its
query count changes from batch to batch. Here the decoder always has a fixed budget of S = dn_num
DN slots, and m, G and the slot layout are computed on device:

    m = max_b n_b,  G = dn_num // m (0 if m == 0),  slot s: group s // m, target rank s % m,
    active iff s < G * m,  holds a target iff also s % m < n_b.

Active slots are exactly the reference's DN queries (same content, boxes, attention mask and
losses); inactive slots are padding that no query sees (`QueryGroup.valid` False) and no loss
counts, so the numbers are the reference's while the shapes stay static. Target rank j of an
image is its j-th valid row (rows need not be a prefix).

`dn_group_images` > 0 computes m per chunk of that many consecutive images instead of over the
whole batch: the reference computes it per GPU, so 4 images per GPU (R50 recipe: batch 16 on 4
GPUs) is `dn_group_images=4`; each chunk then has its own G, attention mask and loss normalizer.

Noise (`DNNoise`, one draw per slot, drawn with explicit PRNG keys or given):
- label: with probability noise_scale / 2 the label is replaced by a uniform random class;
- box: box += U(-1, 1) * (w/2, h/2, w, h) * noise_scale, clamped to [0, 1], then inverse_sigmoid.
Attention (dinoseg.models.query_groups rules): DN queries see their own group and every other
group's queries; only DN queries see DN queries.
"""
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from dinoseg.models.query_groups import QueryGroup
from dinoseg.ops import inverse_sigmoid

GROUP_NAME = "dn"


@flax.struct.dataclass
class DNNoise:
  """label_u (B, S) uniform [0, 1); random_labels (B, S) int in [0, C); box_u (B, S, 4) uniform [0, 1).

  S = dn_num slots. Arrays in the (B, G, m) layout (slot g * m + j) are accepted and flattened;
  fewer than dn_num slots are padded (those slots get no noise and must be inactive).
  """
  label_u: Any
  random_labels: Any
  box_u: Any

  def slots(self, num_slots: int) -> "DNNoise":
    """The noise flattened to (B, S, ...) and padded to `num_slots` slots."""
    b = self.label_u.shape[0]
    flat = lambda x, tail: x.reshape((b, -1) + tail)  # noqa: E731
    label_u, random_labels, box_u = flat(self.label_u, ()), flat(self.random_labels, ()), flat(self.box_u, (4,))
    pad = num_slots - label_u.shape[1]
    if pad < 0:
      raise ValueError(f"DN noise has {label_u.shape[1]} slots, more than dn_num = {num_slots}")
    if pad:
      label_u = jnp.pad(label_u, ((0, 0), (0, pad)), constant_values=1.0)
      random_labels = jnp.pad(random_labels, ((0, 0), (0, pad)))
      box_u = jnp.pad(box_u, ((0, 0), (0, pad), (0, 0)), constant_values=0.5)
    return DNNoise(label_u, random_labels, box_u)


@flax.struct.dataclass
class FixedAssignment:
  """A fixed query <-> target assignment (the loss policy of denoising queries).

  target: (B, N) int32 target row of each query.
  matched: (B, N) bool: the query has a target (class positive, box and mask losses).
  active: (B, N) bool: the query takes part in the class loss (inactive slots count nowhere).
  normalizer_scale: (B,) float: image b's terms are divided by normalizer * normalizer_scale[b]
    (denoising: its number of groups, at least 1).
  """
  target: Any
  matched: Any
  active: Any
  normalizer_scale: Any


def sample_dn_noise(key: jax.Array, batch: int, num_slots: int, num_classes: int) -> DNNoise:
  """Uniform noise for (batch, num_slots) DN slots."""
  k1, k2, k3 = jax.random.split(key, 3)
  shape = (batch, num_slots)
  return DNNoise(label_u=jax.random.uniform(k1, shape, jnp.float32),
                 random_labels=jax.random.randint(k2, shape, 0, num_classes, jnp.int32),
                 box_u=jax.random.uniform(k3, shape + (4,), jnp.float32))


def group_layout(valid: jax.Array, dn_num: int, dn_group_images: int = 0) -> dict[str, jax.Array]:
  """The slot layout of a batch (module docstring).

  Args:
    valid: (B, T) bool target validity.
    dn_num: S, the slot budget.
    dn_group_images: chunk size for m (0: the whole batch).
  Returns:
    dict of m (B,) and groups (B,) per image, and per slot (B, S): active, matched, group, target.
  """
  b, t = valid.shape
  counts = jnp.sum(valid.astype(jnp.int32), axis=1)
  chunk = b if dn_group_images <= 0 else dn_group_images
  if b % chunk:
    raise ValueError(f"dn_group_images ({chunk}) must divide the batch ({b})")
  m = jnp.repeat(jnp.max(counts.reshape(b // chunk, chunk), axis=1), chunk)
  safe_m = jnp.maximum(m, 1)
  groups = jnp.where(m > 0, dn_num // safe_m, 0)
  s = jnp.arange(dn_num, dtype=jnp.int32)[None]
  rank = s % safe_m[:, None]
  active = s < (groups * m)[:, None]
  matched = active & (rank < counts[:, None])
  order = jnp.argsort(~valid, axis=1, stable=True).astype(jnp.int32)  # valid rows first, in row order
  target = jnp.take_along_axis(order, jnp.minimum(rank, t - 1), axis=1)
  return dict(m=m, groups=groups, active=active, matched=matched, group=s // safe_m[:, None], target=target)


def noised_targets(labels: jax.Array, boxes: jax.Array, noise: DNNoise, noise_scale: float):
  """Noised labels (B, S) and box logits (B, S, 4) from per-slot labels (B, S), boxes (B, S, 4)."""
  boxes = boxes.astype(jnp.float32)
  if noise_scale > 0:
    labels = jnp.where(noise.label_u < noise_scale * 0.5, noise.random_labels, labels)
    diff = jnp.concatenate([boxes[..., 2:] / 2, boxes[..., 2:]], axis=-1)
    boxes = jnp.clip(boxes + (noise.box_u * 2 - 1.0) * diff * noise_scale, 0.0, 1.0)
  return labels, inverse_sigmoid(boxes)


def denoising_group(labels: jax.Array, boxes: jax.Array, valid: jax.Array, noise: DNNoise,
                    label_embedding: Callable[[jax.Array], jax.Array], *, dn_num: int, noise_scale: float,
                    dn_group_images: int = 0, name: str = GROUP_NAME) -> QueryGroup:
  """The DN queries of a batch as a QueryGroup of dn_num slots.

  Args:
    labels (B, T) int, boxes (B, T, 4) cxcywh in [0, 1], valid (B, T): padded targets.
    noise: DNNoise (see `DNNoise.slots`).
    label_embedding: int labels -> (..., d) (the `label_enc` embedding).
  Returns:
    QueryGroup `name`: content (B, S, d) and box logits (B, S, 4) (zeros where no target), valid =
    active slots, block = DN group, sees everything, seen only by itself; aux["assignment"] is the
    FixedAssignment of its loss.
  """
  layout = group_layout(valid, dn_num, dn_group_images)
  noise = noise.slots(dn_num)
  target = layout["target"]
  slot_labels = jnp.take_along_axis(labels, target, axis=1)
  slot_boxes = jnp.take_along_axis(boxes, target[..., None], axis=1)
  noisy_labels, box_logits = noised_targets(slot_labels, slot_boxes, noise, noise_scale)
  keep = layout["matched"][..., None]
  content = jnp.where(keep, label_embedding(noisy_labels), 0.0)
  box_logits = jnp.where(keep, box_logits, 0.0)
  assignment = FixedAssignment(target=target, matched=layout["matched"], active=layout["active"],
                               normalizer_scale=jnp.maximum(layout["groups"], 1).astype(jnp.float32))
  return QueryGroup(name=name, content=content, boxes=box_logits, valid=layout["active"], block=layout["group"],
                    sees=None, seen_by=(name,), aux={"assignment": assignment})


__all__ = ["DNNoise", "FixedAssignment", "sample_dn_noise", "group_layout", "noised_targets", "denoising_group",
           "GROUP_NAME"]
