"""DINOv's training-prompt sampling on device, static shapes (shared/reference/dinov.md sections 4 and 5).

Generic task (`generic_prompts`, the step's choice; `class_prompts`, one set): the instances of the **global**
batch are grouped by category (inside the jitted, sharded step every device sees the whole batch, which is the
reference's cross-GPU path), or with `prompts.cross_gpu_batch` False those of each group of
`prompts.images_per_group` consecutive images (`group_class_prompts`, the reference's per-GPU batch), and with
`prompts.empty_image_fallback` "reference" a step holding an image without instances switches to the groups on
device and drops the generic losses of the groups with an empty image (the reference's `fake` targets); each
category present gets one class-prompt slot (ascending category order, at most K slots), and 1..`max_examples`
(uniform) of its instances, drawn without replacement from the whole batch (or group), are averaged into its
class prompt. Target labels become slot indices. With `openset_use_shape_sampler` False (the released configs)
the prompt of an instance is its full ground-truth mask.

Referring task (`refer_targets`, SA-1B): C clicks per image over a random permutation of the image's instances
(repeated when there are fewer than C), each click a uniform random pixel of its instance's mask with a +-3 px
box (`uniform_pixels`: a random rank among the instance's pixels located by binary searches over cumulative
counts, no per-click random image); the level targets of a click are the instances containing that pixel (a
random T of them when more); the
content prompts are the first K instances of the permutation (`scribbles` draws the reference's random strokes
inside them).

Shape sampler (`shape_prompts`, the reference's `ShapeSampler`): per prompt one candidate drawn with the
configured probabilities ("Scribble": `scribbles`; "Point": a disc around a uniform random pixel of the
instance; "Box": the instance's filled bounding box; "Mask": the full mask), every drawn candidate computed for
all prompts at static shapes and the drawn one selected; an empty result is reported (`nonempty` False, the
reference's type 'none').
"""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from dinoseg.models.dinov.criterion import ReferTargets


@flax.struct.dataclass
class ClassPrompts:
  """members: (K, B * T) averaging weights of the instances (row k sums to 1 for a valid slot);
  slot_valid: (K,) bool; labels: (B, T) int32 slot of each target; valid: (B, T) targets that take part."""
  members: Any
  slot_valid: Any
  labels: Any
  valid: Any


def class_prompts(key: jax.Array, labels: jax.Array, valid: jax.Array, *, num_classes: int, num_slots: int,
                  max_examples: int, eligible: jax.Array | None = None) -> ClassPrompts:
  """Class-prompt sampling over the global batch.

  Args:
    key: PRNG key; labels (B, T) int category (contiguous, < num_classes); valid (B, T) bool.
    num_slots: K, the class-prompt budget (categories beyond the first K present ones are dropped with
      their targets); max_examples: MAX_TRAIN_EXAMPLE (4).
    eligible: optional (B, T) bool, the instances that may serve as examples (e.g. those whose sampled prompt
      shape is not empty); None: every valid instance (the same draws as all True). A category present with no
      eligible instance gets no prompt: its slot is invalid and its targets do not take part.
  """
  b, t = labels.shape
  flat_l = labels.reshape(-1).astype(jnp.int32)
  flat_v = valid.reshape(-1).astype(bool) & (flat_l >= 0) & (flat_l < num_classes)
  safe_l = jnp.where(flat_v, flat_l, 0)
  present = jnp.zeros((num_classes,), bool).at[safe_l].max(flat_v)
  slot_of_class = jnp.where(present, jnp.cumsum(present) - 1, -1)
  slot_of_class = jnp.where(slot_of_class < num_slots, slot_of_class, -1)
  slot = jnp.where(flat_v, slot_of_class[safe_l], -1)
  take = slot >= 0
  example = take if eligible is None else take & jnp.asarray(eligible).reshape(-1).astype(bool)
  k_rank, k_num = jax.random.split(key)
  u = jax.random.uniform(k_rank, flat_l.shape)
  same = (slot[:, None] == slot[None, :]) & example[:, None] & example[None, :]
  rank = jnp.sum(same & (u[None, :] < u[:, None]), axis=1)
  count = jnp.zeros((num_slots,), jnp.int32).at[jnp.where(example, slot, 0)].add(example.astype(jnp.int32))
  limit = jnp.clip(jnp.minimum(count, max_examples), 1, None)
  num = jnp.floor(jax.random.uniform(k_num, (num_slots,)) * limit).astype(jnp.int32) + 1  # randint(1, limit)
  chosen = example & (rank < num[jnp.where(example, slot, 0)])
  onehot = (jnp.arange(num_slots)[:, None] == slot[None, :]) & chosen[None, :]
  members = onehot.astype(jnp.float32) / num[:, None].astype(jnp.float32)
  slot_valid = count > 0
  if eligible is not None:
    take = take & slot_valid[jnp.where(take, slot, 0)]
  return ClassPrompts(members=members, slot_valid=slot_valid, labels=jnp.where(take, slot, 0).reshape(b, t),
                      valid=take.reshape(b, t))


@flax.struct.dataclass
class GroupedClassPrompts:
  """Class prompts sampled within groups of consecutive images (`group_class_prompts`).

  members: (G, K, Bg * T) averaging weights of group g's instances (Bg = B / G images per group, instance
  (i, t) of the group at column i * T + t); slot_valid: (G, K) bool; labels: (B, T) int32 slot of each target
  within its group's prompts; valid: (B, T) targets that take part."""
  members: Any
  slot_valid: Any
  labels: Any
  valid: Any

  @property
  def num_groups(self) -> int:
    return int(self.members.shape[0])


def group_class_prompts(key: jax.Array, labels: jax.Array, valid: jax.Array, *, images_per_group: int,
                        num_classes: int, num_slots: int, max_examples: int,
                        eligible: jax.Array | None = None) -> GroupedClassPrompts:
  """`class_prompts` within each group of `images_per_group` consecutive images (the reference's per-GPU
  grouping, `prepare_targets_visual_openset_batch_cross_gpu(..., cross_gpu=False)`, one GPU's images per group).

  Every group gets its own slots (its categories present, ascending), and its class prompts average examples
  drawn only from its own images; its targets' labels are slots of its own prompts. One group (images_per_group
  = B) is `class_prompts` with the same key, bit for bit; G > 1 groups draw with `jax.random.split(key, G)`.

  Args:
    key: PRNG key; labels (B, T) int category; valid (B, T) bool; eligible: optional (B, T) bool (as
      `class_prompts`); images_per_group: Bg, a divisor of B; num_slots: K per group.
  Returns:
    GroupedClassPrompts with members (G, K, Bg * T), slot_valid (G, K), labels / valid (B, T), G = B / Bg.
  """
  b, t = labels.shape
  bg = int(images_per_group)
  if bg < 1 or b % bg:
    raise ValueError(f"the batch of {b} images is not a whole number of groups of {bg} images")
  g = b // bg
  kw = dict(num_classes=num_classes, num_slots=num_slots, max_examples=max_examples)
  if g == 1:
    cp = class_prompts(key, labels, valid, eligible=eligible, **kw)
    return GroupedClassPrompts(members=cp.members[None], slot_valid=cp.slot_valid[None], labels=cp.labels,
                               valid=cp.valid)
  split = lambda x: x.reshape((g, bg) + x.shape[1:])  # noqa: E731
  keys = jax.random.split(key, g)
  if eligible is None:
    cp = jax.vmap(lambda k, lb, v: class_prompts(k, lb, v, **kw))(keys, split(labels), split(valid))
  else:
    cp = jax.vmap(lambda k, lb, v, e: class_prompts(k, lb, v, eligible=e, **kw))(
        keys, split(labels), split(valid), split(jnp.asarray(eligible)))
  return GroupedClassPrompts(members=cp.members, slot_valid=cp.slot_valid, labels=cp.labels.reshape(b, t),
                             valid=cp.valid.reshape(b, t))


def empty_images(labels: jax.Array, valid: jax.Array, num_classes: int) -> jax.Array:
  """(B,) bool: images with no instance that `class_prompts` can use (no valid target with a category in
  [0, num_classes)); the reference's `len(gt_masks) == 0` of an image. labels, valid: (B, T)."""
  labels = labels.astype(jnp.int32)
  usable = valid.astype(bool) & (labels >= 0) & (labels < num_classes)
  return ~jnp.any(usable, axis=1)


def per_image_prompts(members: jax.Array, slot_valid: jax.Array, embeddings: jax.Array):
  """Each image's class prompts from per-instance embeddings.

  Args:
    members: (K, B * T) (one prompt set shared by the batch, `class_prompts`) or (G, K, Bg * T) (one per group
      of Bg = B / G consecutive images, `group_class_prompts`); slot_valid: (K,) or (G, K);
    embeddings: (B, T, d) one embedding per instance.
  Returns:
    (prompts (B, K, d), prompt_valid (B, K)).
  """
  b, t, d = embeddings.shape
  if members.ndim == 2:
    prompts = members.astype(embeddings.dtype) @ embeddings.reshape(b * t, d)  # (K, d)
    k = prompts.shape[0]
    return jnp.broadcast_to(prompts, (b, k, d)), jnp.broadcast_to(slot_valid, (b, k))
  g, k = members.shape[:2]
  bg = b // g
  prompts = members.astype(embeddings.dtype) @ embeddings.reshape(g, bg * t, d)  # (G, K, d)
  return jnp.repeat(prompts, bg, axis=0), jnp.repeat(slot_valid, bg, axis=0)


EMPTY_IMAGE_FALLBACKS = ("none", "reference")  # prompts.empty_image_fallback


@flax.struct.dataclass
class GenericPrompts:
  """The generic task's class prompts of one step (`generic_prompts`).

  shared: ClassPrompts over the whole batch (members (K, B * T)), or None when the step never uses them;
  grouped: GroupedClassPrompts per group of images (members (G, K, Bg * T)), or None;
  use_grouped: () bool, True where the step uses `grouped` (a traced value: no retrace either way);
  labels / valid: (B, T) the targets' slots and which take part (valid False for the images of a group that
    takes no part); image_active: (B,) bool images whose generic losses count, or None (all);
  normalizer: () float32 the loss normalizer, or None (the criterion's: the number of taking-part targets).
  """
  shared: Any
  grouped: Any
  use_grouped: Any
  labels: Any
  valid: Any
  image_active: Any = None
  normalizer: Any = None

  def per_image(self, embeddings: jax.Array):
    """(B, T, d) instance embeddings -> (prompts (B, K, d), prompt_valid (B, K)) of each image (`per_image_prompts`
    of the prompt set the step uses)."""
    if self.grouped is None:
      return per_image_prompts(self.shared.members, self.shared.slot_valid, embeddings)
    grouped = per_image_prompts(self.grouped.members, self.grouped.slot_valid, embeddings)
    if self.shared is None:
      return grouped
    shared = per_image_prompts(self.shared.members, self.shared.slot_valid, embeddings)
    return tuple(jnp.where(self.use_grouped, gv, sv) for gv, sv in zip(grouped, shared))

  @property
  def num_slots_used(self) -> jax.Array:
    """() float32: valid class-prompt slots (the mean over groups where the step uses the groups)."""
    shared = None if self.shared is None else jnp.sum(self.shared.slot_valid.astype(jnp.float32))
    if self.grouped is None:
      return shared
    grouped = jnp.mean(jnp.sum(self.grouped.slot_valid.astype(jnp.float32), axis=1))
    return grouped if shared is None else jnp.where(self.use_grouped, grouped, shared)


def generic_prompts(key: jax.Array, labels: jax.Array, valid: jax.Array, *, num_classes: int, max_examples: int,
                    cross_gpu_batch: bool = True, images_per_group: int = 1, empty_image_fallback: str = "none",
                    empty_image_targets: int = 8, eligible: jax.Array | None = None) -> GenericPrompts:
  """Class prompts of a generic-task step: the reference's cross-GPU grouping, its per-GPU grouping and its
  empty-image fallback (`DINOv.forward_seg` with `prepare_targets_visual_openset_batch_cross_gpu`, the
  decoder's `prepare_all_query` and the criterion's `fake` targets; shared/reference/dinov.md section 4).

  - `cross_gpu_batch` True: one prompt set over the whole batch (`class_prompts`, K = min(num_classes, B T)
    slots), shared by every image (the reference's `CROSS_GPU_BATCH`).
  - `cross_gpu_batch` False: one prompt set per group of `images_per_group` consecutive images
    (`group_class_prompts`, the reference's per-GPU batch), K = min(num_classes, Bg T).
  - `empty_image_fallback` "reference": when an image of the batch has no usable instance (`empty_images`), the
    step uses the per-group sets (with `cross_gpu_batch` True both sets are drawn, K = min(num_classes, B T)
    each, and `use_grouped` selects on device), and every group holding an empty image takes no part: its
    targets are invalid and `image_active` is False for its images (the reference marks that GPU's targets
    `fake`: its losses are zero terms). The normalizer is then what the reference's all-reduced `num_masks`
    amounts to once DDP averages the GPUs' gradients: the batch's target count with `empty_image_targets`
    (`default_num_instance_openset` = MAX_NUM_INSTANCE_CONTENT, 8) counted for each empty image (the
    reference's dummy targets), non-empty images of a skipped group counted with their own targets, and at
    least the number of groups (the reference clamps num_masks / world size at 1).
    "none" (the configs' default): empty images simply have no targets (their queries get the class loss as
    negatives; the other images of the batch or group train as usual). "reference" is an option, not the
    default: the reference's code calls its fallback a hack for its cross-GPU gathering (which fails on an image
    without targets), and it costs the step its cross-batch prompts and the loss of the empty image's whole
    group; dinoseg's static-shape step needs none of it. It reproduces the reference's training.

  Args:
    key: PRNG key; labels (B, T) int category; valid (B, T) bool; eligible: optional (B, T) (`class_prompts`).
  Returns:
    GenericPrompts. With `cross_gpu_batch` True and "none" the arrays are exactly `class_prompts(key, ...)`'s.
  """
  if empty_image_fallback not in EMPTY_IMAGE_FALLBACKS:
    raise ValueError(f"empty_image_fallback must be one of {EMPTY_IMAGE_FALLBACKS}, got {empty_image_fallback!r}")
  b, t = labels.shape
  bg = int(images_per_group)
  if bg < 1 or b % bg:
    raise ValueError(f"the batch of {b} images is not a whole number of groups of {bg} images")
  reference = empty_image_fallback == "reference"
  kw = dict(num_classes=num_classes, max_examples=max_examples, eligible=eligible)
  shared = grouped = None
  if cross_gpu_batch:
    shared = class_prompts(key, labels, valid, num_slots=min(int(num_classes), b * t), **kw)
    if not reference:
      return GenericPrompts(shared=shared, grouped=None, use_grouped=jnp.asarray(False), labels=shared.labels,
                            valid=shared.valid)
    grouped = group_class_prompts(jax.random.fold_in(key, 2), labels, valid, images_per_group=bg,
                                  num_slots=min(int(num_classes), b * t), **kw)
  else:
    grouped = group_class_prompts(key, labels, valid, images_per_group=bg,
                                  num_slots=min(int(num_classes), bg * t), **kw)
    if not reference:
      return GenericPrompts(shared=None, grouped=grouped, use_grouped=jnp.asarray(True), labels=grouped.labels,
                            valid=grouped.valid)
  empty = empty_images(labels, valid, num_classes)  # (B,)
  use_grouped = jnp.any(empty) if cross_gpu_batch else jnp.asarray(True)
  if shared is None:
    out_labels, out_valid = grouped.labels, grouped.valid
  else:
    out_labels = jnp.where(use_grouped, grouped.labels, shared.labels)
    out_valid = jnp.where(use_grouped, grouped.valid, shared.valid)
  skipped = jnp.repeat(jnp.any(empty.reshape(b // bg, bg), axis=1), bg)  # (B,) images of a group with an empty one
  counted = jnp.where(empty, float(empty_image_targets), jnp.sum(out_valid.astype(jnp.float32), axis=1))
  return GenericPrompts(shared=shared, grouped=grouped, use_grouped=use_grouped, labels=out_labels,
                        valid=out_valid & ~skipped[:, None], image_active=~skipped,
                        normalizer=jnp.maximum(jnp.sum(counted), float(b // bg)))


@flax.struct.dataclass
class ReferSample:
  """clicks: (B, C, 4) cxcywh click boxes normalized by each image's valid size; click_valid: (B, C);
  refer: ReferTargets (level targets and content instances)."""
  clicks: Any
  click_valid: Any
  refer: Any


def uniform_pixels(key: jax.Array, masks: jax.Array, index: jax.Array) -> jax.Array:
  """A uniform random pixel of each chosen instance, without a (B, C, H, W) array.

  Draws the pixel's rank r uniformly in [0, n) (n = the instance's pixel count), finds the row holding the
  r-th pixel by a binary search over the instance's cumulative row counts, then its column by a search over
  that one row's cumulative count: memory O(B (N H + C (H + W))) instead of O(B C H W).

  Args:
    key: PRNG key; masks: (B, N, H, W) instance masks (> 0 is inside); index: (B, C) int instance of each draw.
  Returns:
    (B, C) int32 flat pixel index y * W + x (0 for an empty mask).
  """
  masks, index = jnp.asarray(masks), jnp.asarray(index)
  b, _, h, w = masks.shape
  # pixels per row, summed in float32 (exact below 2^24). For unsigned masks (the pipelines' uint8) min(m, 1) in
  # place of m > 0: XLA:CPU then fuses the reduction with its input instead of materialising (B, N, H, W) floats
  ones = jnp.minimum(masks, 1) if jnp.issubdtype(masks.dtype, jnp.unsignedinteger) else masks > 0
  row_count = jnp.sum(ones.astype(jnp.float32), axis=-1).astype(jnp.int32)
  row_cum = jnp.cumsum(row_count, axis=-1)  # (B, N, H) pixels in rows <= y
  cum = jnp.take_along_axis(row_cum, index[:, :, None].astype(jnp.int32), axis=1)  # (B, C, H)
  total = cum[..., -1]
  rank = jax.random.randint(key, index.shape, 0, jnp.maximum(total, 1), dtype=jnp.int32)
  search = jax.vmap(jax.vmap(lambda a, v: jnp.searchsorted(a, v, side="right")))
  row = jnp.minimum(search(cum, rank), h - 1).astype(jnp.int32)  # the first row whose cumulative count > rank
  before = jnp.where(row > 0, jnp.take_along_axis(cum, jnp.maximum(row - 1, 0)[..., None], axis=-1)[..., 0], 0)
  line = masks[jnp.arange(b)[:, None], index, row] > 0  # (B, C, W)
  col = jnp.minimum(search(jnp.cumsum(line, axis=-1, dtype=jnp.int32), rank - before), w - 1).astype(jnp.int32)
  return jnp.where(total > 0, row * w + col, 0)


def refer_targets(key: jax.Array, masks: jax.Array, valid: jax.Array, valid_hw: jax.Array, *, num_clicks: int,
                  num_tokens: int, num_content: int, half_size: int = 3) -> ReferSample:
  """Click, level-target and content sampling of the referring task.

  Args:
    masks: (B, N, H, W) instance masks on the canvas; valid (B, N); valid_hw (B, 2) image size in pixels.
    num_clicks: C (MAX_NUM_INSTANCE); num_tokens: T level targets kept per click; num_content: K
      (MAX_NUM_INSTANCE_CONTENT).
  """
  b, n, h, w = masks.shape
  if num_content > num_clicks:
    raise ValueError(f"num_content ({num_content}) must not exceed num_clicks ({num_clicks})")
  k_perm, k_pix, k_lvl = jax.random.split(key, 3)
  valid = valid.astype(bool)
  order = jnp.argsort(jnp.where(valid, jax.random.uniform(k_perm, (b, n)), 2.0), axis=1)
  count = jnp.sum(valid, axis=1)
  index = jnp.take_along_axis(order, jnp.arange(num_clicks)[None, :] % jnp.maximum(count, 1)[:, None], axis=1)
  click_valid = jnp.broadcast_to((count > 0)[:, None], (b, num_clicks))
  pixel = uniform_pixels(k_pix, masks, index)
  y, x = pixel // w, pixel % w
  hw = valid_hw.astype(jnp.float32)
  size = 2.0 * half_size
  clicks = jnp.stack([x / hw[:, 1:2], y / hw[:, 0:1], jnp.broadcast_to(size / hw[:, 1:2], x.shape),
                      jnp.broadcast_to(size / hw[:, 0:1], y.shape)], -1).astype(jnp.float32)
  flat = (masks > 0).reshape(b, n, h * w)
  contains = jnp.take_along_axis(flat[:, None], pixel[:, :, None, None], axis=-1)[..., 0] & valid[:, None]
  keys = jnp.where(contains, jax.random.uniform(k_lvl, contains.shape), 2.0)
  level_index = jnp.argsort(keys, axis=-1)[..., :num_tokens].astype(jnp.int32)
  if n < num_tokens:  # fewer instances than tokens: pad (those slots are never valid)
    level_index = jnp.pad(level_index, ((0, 0), (0, 0), (0, num_tokens - n)))
  level_valid = (jnp.arange(num_tokens)[None, None] < jnp.sum(contains, -1)[..., None]) & click_valid[..., None]
  content_index = index[:, :num_content].astype(jnp.int32)
  refer = ReferTargets(level_index=level_index, level_valid=level_valid, content_index=content_index,
                       content_valid=click_valid[:, :num_content])
  return ReferSample(clicks=clicks, click_valid=click_valid, refer=refer)


# The reference's two stroke presets (`datasets/shapes/scribble.py`): vertex count bounds [lo, hi), maximum head
# speed, head acceleration (speed, angle), brush width bounds [lo, hi) (NumPy randint truncates them to ints),
# share of control points moved, their largest move, largest initial line speed.
STROKE_PRESETS = {
    "rand_curve": dict(vertices=(20, 50), head_speed=30.0, head_accel=(30.0, 0.5), brush=(3, 15), move_ratio=0.5,
                       point_move=6.0, init_speed=10.0),
    "rand_curve_small": dict(vertices=(6, 22), head_speed=12.0, head_accel=(8.0, 0.5), brush=(2.5, 5), move_ratio=0.5,
                             point_move=1.5, init_speed=3.0),
}


def _preset_table(names):
  """Per-preset parameters as arrays (len(names),) for a traced choice."""
  rows = [STROKE_PRESETS[n] for n in names]
  col = lambda f: jnp.asarray([f(r) for r in rows], jnp.float32)  # noqa: E731
  return dict(v_lo=col(lambda r: r["vertices"][0]), v_hi=col(lambda r: r["vertices"][1]),
              head_speed=col(lambda r: r["head_speed"]), accel_speed=col(lambda r: r["head_accel"][0]),
              accel_angle=col(lambda r: r["head_accel"][1]), b_lo=col(lambda r: int(r["brush"][0])),
              b_hi=col(lambda r: int(r["brush"][1])), move_ratio=col(lambda r: r["move_ratio"]),
              move_lo=col(lambda r: int(-r["point_move"])), move_hi=col(lambda r: int(r["point_move"])),
              init_speed=col(lambda r: r["init_speed"]))


def scribbles(key: jax.Array, masks: jax.Array, *, num_strokes: int = 5,
              presets=("rand_curve", "rand_curve_small"), probs=(0.5, 0.5)) -> jax.Array:
  """Random scribbles inside masks (the reference's training `Scribble` sampler), static shapes.

  Per mask: a preset drawn with `probs`; 1..min(num_strokes, area) strokes, each starting at a distinct random
  pixel of the mask and walking a random number of vertices (speed and heading randomly accelerated, speed
  clipped to the preset's maximum); then every stroke is shifted by one random line velocity and half of its
  control points jitter, as the reference's second (returned) drawing; strokes are drawn with a random brush
  width (pixels within width / 2 of a segment) and cut to the mask. An empty mask gives an empty scribble.
  PIL's line rasterisation is not reproduced pixel for pixel.

  Args:
    masks: (B, K, H, W) binary masks. Returns (B, K, H, W) float32 scribble masks.
  """
  b, k, h, w = masks.shape
  table = _preset_table(presets)
  v_max = int(max(STROKE_PRESETS[n]["vertices"][1] for n in presets)) - 1  # randint's upper bound is exclusive
  s = num_strokes
  keys = jax.random.split(key, 12)
  m = masks > 0
  area = jnp.sum(m, axis=(2, 3))
  preset = jax.random.categorical(keys[0], jnp.log(jnp.asarray(probs, jnp.float32)), shape=(b, k))
  p = {name: col[preset] for name, col in table.items()}  # each (B, K)
  n_stroke = jnp.floor(jax.random.uniform(keys[1], (b, k)) * jnp.clip(jnp.minimum(area, s), 1, None)).astype(
      jnp.int32) + 1
  score = jnp.where(m.reshape(b, k, h * w), jax.random.uniform(keys[2], (b, k, h * w)), -1.0)
  _, start = jax.lax.top_k(score, s)  # distinct random mask pixels (B, K, S)
  x0, y0 = (start % w).astype(jnp.float32), (start // w).astype(jnp.float32)
  shape = (b, k, s)
  n_vert = (p["v_lo"][..., None] + jnp.floor(jax.random.uniform(keys[3], shape) * (p["v_hi"] - p["v_lo"])[..., None]))
  angle0 = jax.random.uniform(keys[4], shape) * 2 * jnp.pi
  speed0 = jax.random.uniform(keys[5], shape) * p["head_speed"][..., None]
  d_speed = (jax.random.uniform(keys[6], (v_max,) + shape) * 2 - 1) * p["accel_speed"][..., None]
  d_angle = (jax.random.uniform(keys[7], (v_max,) + shape) * 2 - 1) * p["accel_angle"][..., None]

  def walk(carry, d):
    x, y, speed, angle = carry
    speed = jnp.clip(speed + d[0], 0.0, p["head_speed"][..., None])
    angle = angle + d[1]
    x, y = x + speed * jnp.sin(angle), y + speed * jnp.cos(angle)
    return (x, y, speed, angle), (x, y)

  _, (xs, ys) = jax.lax.scan(walk, (x0, y0, speed0, angle0), (d_speed, d_angle))
  xs = jnp.concatenate([x0[None], xs], 0)  # (V + 1, B, K, S)
  ys = jnp.concatenate([y0[None], ys], 0)
  line_speed = jnp.abs(jax.random.normal(keys[8], shape)) * p["init_speed"][..., None] / 2
  line_angle = jax.random.uniform(keys[9], shape) * 2 * jnp.pi
  xs = xs + jnp.trunc(line_speed * jnp.cos(line_angle))
  ys = ys + jnp.trunc(line_speed * jnp.sin(line_angle))
  point = jnp.arange(v_max + 1, dtype=jnp.float32)[:, None, None, None]
  n_points = n_vert + 1
  move_rank = jnp.argsort(jnp.argsort(jax.random.uniform(keys[10], (v_max + 1,) + shape) + 2.0 * (point >= n_points),
                                      axis=0), axis=0)  # a random order of the stroke's real points first
  moved = move_rank < jnp.floor(n_points * p["move_ratio"][..., None])
  lo, hi = p["move_lo"][..., None], p["move_hi"][..., None]
  jitter = lo + jnp.floor(jax.random.uniform(keys[11], (2, v_max + 1) + shape) * (hi - lo))
  xs, ys = xs + jnp.where(moved, jitter[0], 0.0), ys + jnp.where(moved, jitter[1], 0.0)
  width = p["b_lo"][..., None] + jnp.floor(jax.random.uniform(jax.random.fold_in(key, 1), shape)
                                           * (p["b_hi"] - p["b_lo"])[..., None])
  seg_valid = (point[1:] <= n_vert) & (jnp.arange(s)[None, None, None] < n_stroke[None, ..., None])  # (V, B, K, S)
  gy, gx = jnp.mgrid[:h, :w].astype(jnp.float32)

  def draw(i, acc):
    v, st = i // s, i % s
    ax, ay, bx, by = xs[v, :, :, st], ys[v, :, :, st], xs[v + 1, :, :, st], ys[v + 1, :, :, st]  # (B, K)
    dx, dy = (bx - ax)[..., None, None], (by - ay)[..., None, None]
    px, py = gx - ax[..., None, None], gy - ay[..., None, None]
    t = jnp.clip((px * dx + py * dy) / jnp.maximum(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
    dist2 = (px - t * dx) ** 2 + (py - t * dy) ** 2
    half = (width[:, :, st] / 2)[..., None, None]
    return acc | ((dist2 <= half * half) & seg_valid[v, :, :, st][..., None, None])

  stroke = jax.lax.fori_loop(0, v_max * s, draw, jnp.zeros((b, k, h, w), bool))
  return (stroke & m).astype(jnp.float32)


# The shape sampler's candidates (the reference's STROKE_SAMPLER.CANDIDATE_NAMES; its released configs use only
# "Scribble").
SHAPE_CANDIDATES = ("Scribble", "Point", "Box", "Mask")


def check_shape_config(candidates, probs) -> None:
  """Raises ValueError for shape-sampler settings `shape_prompts` cannot use (unknown or repeated candidate
  names, a probability list of another length, a negative or non-finite probability, no positive one)."""
  candidates, probs = tuple(candidates), tuple(probs)
  if not candidates:
    raise ValueError(f"prompts.shape_candidates must name at least one of {SHAPE_CANDIDATES}")
  unknown = [c for c in candidates if c not in SHAPE_CANDIDATES]
  if unknown:
    raise ValueError(f"prompts.shape_candidates: unknown candidate(s) {unknown}; known: {SHAPE_CANDIDATES}")
  if len(set(candidates)) != len(candidates):
    raise ValueError(f"prompts.shape_candidates names a candidate twice: {candidates}")
  if len(probs) != len(candidates):
    raise ValueError(f"prompts.shape_probs has {len(probs)} values for {len(candidates)} candidates {candidates}")
  try:
    values = [float(p) for p in probs]
  except (TypeError, ValueError):
    raise ValueError(f"prompts.shape_probs must be numbers, got {probs}") from None
  if any(not (v >= 0.0) or v == float("inf") for v in values):
    raise ValueError(f"prompts.shape_probs must be finite and >= 0, got {probs}")
  if sum(values) <= 0.0:
    raise ValueError(f"prompts.shape_probs must have a positive sum, got {probs}")


@flax.struct.dataclass
class ShapePrompts:
  """masks: (B, K, H, W) float32 {0, 1} prompt shapes; kind: (B, K) int32 index of each prompt's drawn
  candidate in `candidates`; nonempty: (B, K) bool, False where the drawn shape has no pixel (the reference's
  type 'none')."""
  masks: Any
  kind: Any
  nonempty: Any


def point_discs(key: jax.Array, masks: jax.Array, radius: float = 3.0) -> jax.Array:
  """A click per mask: a uniform random pixel of the mask (`uniform_pixels`) drawn as a disc of `radius`
  pixels (pixels at distance <= radius from it), cut to the mask.

  Args:
    masks: (B, K, H, W) masks (> 0 is inside). Returns (B, K, H, W) bool (empty for an empty mask).
  """
  b, k, h, w = masks.shape
  index = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32)[None], (b, k))
  pixel = uniform_pixels(key, masks, index)  # (B, K)
  cy, cx = (pixel // w).astype(jnp.float32), (pixel % w).astype(jnp.float32)
  gy = jnp.arange(h, dtype=jnp.float32)[:, None]
  gx = jnp.arange(w, dtype=jnp.float32)[None, :]
  dist2 = (gy - cy[..., None, None]) ** 2 + (gx - cx[..., None, None]) ** 2
  return (dist2 <= float(radius) ** 2) & (masks > 0)


def box_shapes(masks: jax.Array) -> jax.Array:
  """Each mask's bounding box as a filled rectangle (rows between its first and last row holding a pixel,
  columns likewise).

  Args:
    masks: (B, K, H, W) masks (> 0 is inside). Returns (B, K, H, W) bool (empty for an empty mask).
  """
  m = masks > 0
  rows, cols = jnp.any(m, axis=-1), jnp.any(m, axis=-2)  # (B, K, H), (B, K, W)

  def span(line):  # positions between the first and the last True
    return (jnp.cumsum(line, axis=-1) > 0) & (jnp.cumsum(line[..., ::-1], axis=-1)[..., ::-1] > 0)

  return span(rows)[..., :, None] & span(cols)[..., None, :]


def shape_prompts(key: jax.Array, masks: jax.Array, *, candidates=("Scribble",), probs=(1.0,), num_strokes: int = 5,
                  stroke_presets=("rand_curve", "rand_curve_small"), stroke_probs=(0.5, 0.5),
                  point_radius: float = 3.0) -> ShapePrompts:
  """The reference's training `ShapeSampler`: per mask one candidate drawn with `probs`, its shape drawn.

  Candidates (names of SHAPE_CANDIDATES): "Scribble" (`scribbles` with `num_strokes`, `stroke_presets`,
  `stroke_probs`), "Point" (`point_discs` with `point_radius`), "Box" (`box_shapes`), "Mask" (the mask).
  The draw is one categorical per mask over log `probs` (a single candidate draws nothing); every candidate
  with a positive probability is computed for all masks (static shapes, about one (B, K, H, W) array each) and
  the drawn one selected. `scribbles` gets `key` itself, so "Scribble" alone gives exactly `scribbles(key, ...)`.

  Args:
    key: PRNG key; masks: (B, K, H, W) instance masks (> 0 is inside); candidates, probs: the candidate names
      and their weights (Python values, checked by `check_shape_config`).
  Returns:
    ShapePrompts: masks (B, K, H, W) float32, kind (B, K) int32 index into `candidates`, nonempty (B, K) bool.
  """
  check_shape_config(candidates, probs)
  candidates = tuple(candidates)
  weights = [float(p) for p in probs]
  b, k, h, w = masks.shape
  if len(candidates) == 1:
    kind = jnp.zeros((b, k), jnp.int32)
  else:
    log_p = jnp.log(jnp.asarray(weights, jnp.float32))  # a zero weight: -inf, never drawn
    kind = jax.random.categorical(jax.random.fold_in(key, 101), log_p, shape=(b, k)).astype(jnp.int32)
  out = jnp.zeros((b, k, h, w), bool)
  for i, name in enumerate(candidates):
    if weights[i] <= 0.0:
      continue
    if name == "Scribble":
      shape = scribbles(key, masks, num_strokes=num_strokes, presets=tuple(stroke_presets),
                        probs=tuple(stroke_probs)) > 0
    elif name == "Point":
      shape = point_discs(jax.random.fold_in(key, 102), masks, point_radius)
    elif name == "Box":
      shape = box_shapes(masks)
    else:  # "Mask"
      shape = masks > 0
    out = jnp.where((kind == i)[..., None, None], shape, out)
  return ShapePrompts(masks=out.astype(jnp.float32), kind=kind, nonempty=jnp.any(out, axis=(2, 3)))


__all__ = ["class_prompts", "ClassPrompts", "group_class_prompts", "GroupedClassPrompts", "empty_images",
           "per_image_prompts", "GenericPrompts", "generic_prompts", "EMPTY_IMAGE_FALLBACKS", "uniform_pixels",
           "refer_targets", "ReferSample", "scribbles",
           "STROKE_PRESETS", "SHAPE_CANDIDATES", "check_shape_config", "ShapePrompts", "point_discs", "box_shapes",
           "shape_prompts"]
