"""Query groups: the decoder's queries as named groups with visibility rules (the extension point
that lets a system put its own queries next to Mask DINO's).

A DETR-style decoder runs one self-attention over all of its queries. Mask DINO's queries are
`[denoising | matching]`; DINOv adds prompt queries (`[denoising | generic | prompts]`), each kind
with its own rules of who may attend to whom, its own per-image count and its own loss. Here each
kind is a `QueryGroup`: its content and anchor boxes, a per-image validity mask, a block id per
query (queries of one group see each other only within a block: the denoising groups, or prompts
that must not see each other) and the names of the groups it may see and be seen by.

`attention_mask(groups)` composes the per-image self-attention mask from those rules; a decoder
concatenates the groups in order, runs its layers once, and splits its per-layer predictions back
into `{name: GroupPredictions}`. A criterion then applies a loss policy per group
(dinoseg/models/maskdino/criterion.py: Hungarian matching, fixed assignment; a new policy is a
small class). Mask DINO's own forward is two groups built by `MaskDINODecoder.denoising_queries`
and `MaskDINODecoder.matching_queries`; docs/design.md shows how a system adds a third.

Rules of `attention_mask` (True = blocked), for query i of group g_i and key j of group g_j:
- blocked if g_j is not among the groups g_i `sees`, or g_i is not among the groups g_j is
  `seen_by` (None = all groups);
- blocked if g_i == g_j and block[i] != block[j];
- blocked if key j is not valid (a padded slot is never seen by anyone);
- a row that ends up fully blocked is unblocked (it attends to every key) when
  `unblock_empty_rows`, as the reference decoders do to avoid NaN rows: the rows of padded
  slots, or a prompt whose rules leave it nothing to see; their outputs are ignored or harmless.
"""
from typing import Any, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class QueryGroup:
  """One group of decoder queries (a pytree; `name`, `sees`, `seen_by` are static).

  content: (B, N, d) content queries.
  boxes: (B, N, 4) anchor boxes as logits (inverse sigmoid of cxcywh in [0, 1]).
  valid: (B, N) bool: the query exists in this image (padding slots are False).
  block: (B, N) int32 or None: within the group, queries see each other only when their blocks
    are equal (None: one block).
  sees / seen_by: names of the groups this group may attend to / be attended by (None: all).
    A group must list itself to see its own queries.
  aux: whatever the group's loss policy needs (e.g. the denoising assignment); passed through to
    its `GroupPredictions`.
  """
  name: str = flax.struct.field(pytree_node=False)
  content: Any
  boxes: Any
  valid: Any
  block: Any = None
  sees: tuple[str, ...] | None = flax.struct.field(pytree_node=False, default=None)
  seen_by: tuple[str, ...] | None = flax.struct.field(pytree_node=False, default=None)
  aux: Mapping[str, Any] = flax.struct.field(default_factory=dict)

  @property
  def size(self) -> int:
    return self.content.shape[1]


@flax.struct.dataclass
class GroupPredictions:
  """The per-layer predictions of one group (P = number of predictions, last = final).

  logits: (P, B, N, C) class logits.
  boxes: (P, B, N, 4) cxcywh in [0, 1].
  masks: (P, B, N, h, w) mask logits (in eval often only the final one: (1, B, N, h, w)).
  hidden: (P, B, N, d) the states the prediction heads read (for heads of other systems, e.g.
    DINOv's prompt similarity).
  valid: (B, N) the group's validity mask; aux: the group's aux, unchanged.
  """
  logits: Any
  boxes: Any
  masks: Any
  hidden: Any = None
  valid: Any = None
  aux: Mapping[str, Any] = flax.struct.field(default_factory=dict)


def _allowed(rule: tuple[str, ...] | None, name: str) -> bool:
  return rule is None or name in rule


def check_groups(groups: Sequence[QueryGroup]) -> None:
  """Unique names, one batch size, known names in every rule (ValueError otherwise)."""
  names = [g.name for g in groups]
  if len(set(names)) != len(names):
    raise ValueError(f"query group names must be unique, got {names}")
  batch = {g.content.shape[0] for g in groups}
  if len(batch) > 1:
    raise ValueError(f"query groups disagree on the batch size: {sorted(batch)}")
  for g in groups:
    if g.boxes.shape[:2] != g.content.shape[:2] or g.valid.shape != g.content.shape[:2]:
      raise ValueError(f"query group {g.name!r}: content {g.content.shape}, boxes {g.boxes.shape} and valid "
                       f"{g.valid.shape} must agree on (B, N)")
    for rule in (g.sees, g.seen_by):
      unknown = set(rule or ()) - set(names)
      if unknown:
        raise ValueError(f"query group {g.name!r} names unknown groups {sorted(unknown)} (groups: {names})")


def attention_mask(groups: Sequence[QueryGroup], unblock_empty_rows: bool = True) -> jax.Array:
  """(B, 1, N, N) bool self-attention mask of the concatenated groups, True = blocked (module
  docstring has the rules). N = the sum of the group sizes, in the order given."""
  check_groups(groups)
  b = groups[0].content.shape[0]
  rows = []
  for gi in groups:
    cols = []
    for gj in groups:
      shape = (b, gi.size, gj.size)
      if not (_allowed(gi.sees, gj.name) and _allowed(gj.seen_by, gi.name)):
        cols.append(jnp.ones(shape, bool))
        continue
      blocked = ~jnp.broadcast_to(gj.valid.astype(bool)[:, None, :], shape)
      if gi is gj and gi.block is not None:
        blocked = blocked | (gi.block[:, :, None] != gi.block[:, None, :])
      cols.append(blocked)
    rows.append(jnp.concatenate(cols, axis=2))
  mask = jnp.concatenate(rows, axis=1)
  if unblock_empty_rows:
    mask = mask & ~jnp.all(mask, axis=2, keepdims=True)
  return mask[:, None]


def concatenate(groups: Sequence[QueryGroup]) -> tuple[jax.Array, jax.Array]:
  """content (B, N, d) and box logits (B, N, 4) of the groups in order."""
  return (jnp.concatenate([g.content for g in groups], axis=1),
          jnp.concatenate([g.boxes for g in groups], axis=1))


def padding_group(groups: Sequence[QueryGroup], multiple: int, name: str = "_padding") -> QueryGroup:
  """Slots that pad the groups' total query count to a multiple of `multiple` (possibly 0 slots):
  zero content and box logits, invalid (no query sees them; their own rows see everything)."""
  n = sum(g.size for g in groups)
  pad = (-n) % max(int(multiple), 1)
  b, d = groups[0].content.shape[0], groups[0].content.shape[2]
  dtype = groups[0].content.dtype
  return QueryGroup(name=name, content=jnp.zeros((b, pad, d), dtype), boxes=jnp.zeros((b, pad, 4), jnp.float32),
                    valid=jnp.zeros((b, pad), bool), seen_by=())


def split(groups: Sequence[QueryGroup], x: jax.Array, axis: int) -> dict[str, jax.Array]:
  """Splits `x` along its query axis `axis` back into {group name: part}."""
  out, start = {}, 0
  for g in groups:
    out[g.name] = jax.lax.slice_in_dim(x, start, start + g.size, axis=axis)
    start += g.size
  if start != x.shape[axis]:
    raise ValueError(f"axis {axis} of {x.shape} does not hold the {start} queries of the groups")
  return out


__all__ = ["QueryGroup", "GroupPredictions", "attention_mask", "check_groups", "concatenate", "padding_group", "split"]
