"""DINOv's predictor: Mask DINO's decoder layers with visual-prompt queries and classification by prompt
similarity (reference `DINOvOpenSet` / `DINOvRefer`, `dinov/body/decoder/dinov_{openset,refer}_decoder.py`).

Built from Mask DINO's pieces: the deformable `TransformerDecoder` (query positions from anchor boxes,
look-forward-twice refinement, one shared box MLP and norm), the query-group API
(dinoseg.models.query_groups: one self-attention over the concatenated groups, masked by their rules)
and Mask DINO's denoising groups (class-agnostic here). What DINOv changes (shared/reference/dinov.md):

- Queries: 300 learned generic queries (`query_feat`) with learned anchors (`query_embed`); no two-stage
  selection, no initial prediction: P = dec_layers predictions.
- Prompt queries: content = label_enc[0] + pb_embedding[1] + prompt embedding, anchor
  inverse_sigmoid(0, 0, 1, 1); one query per prompt (NUM_CONTENT_TOKENS = 1).
- Classification by prompt similarity: logit[b, q, k] = (LN(h_q) W) . (LN(h_k) W), h_k the decoded
  prompt query, W = `class_embed_openset` (generic task) or `class_embed` (referring task), no
  normalisation, no temperature. `class_embed_part` exists in the checkpoints and is unused.
- Generic task ("generic"), groups `[dn | queries | prompts]`: DN groups see only themselves and the
  generic queries; generic queries see only each other; prompts see only themselves (and, without
  `content_independent`, the generic queries); nobody sees the prompts. DN is class-agnostic: every
  DN query's content is label_enc[0] (no label noise), boxes noised as Mask DINO's.
- Referring task ("refer"), groups `[clicks | prompts]`: each click expands to `num_mask_tokens` (6)
  queries label_enc[0] + pb_embedding[pb] + mask_tokens[t] on the click's box (a +-3 px box; in
  training noised by U(-1, 1) * (w/2, h/2, w, h) * 0.01 * noise_scale); a click's tokens see each
  other and nothing else; prompts see only themselves. The IoU head (`iou_prediction_head`, MLP
  256 -> 256 -> 256 -> 1) scores every click token. Boxes of this task are predicted from LN(h), i.e.
  the layer output normalised twice (the generic task's from h, normalised once), as the reference.
- Masks: <mask_embed(LN(h)), mask_features> for every scored query (all layers in training, the last
  one in eval); the prompt queries get no boxes, masks or logits.
"""
from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from dinoseg.models import query_groups
from dinoseg.models.dinov.prompt_encoder import PromptEncoder
from dinoseg.models.maskdino import denoising
from dinoseg.models.maskdino.decoder import TransformerDecoder
from dinoseg.models.maskdino.layers import MLP, torch_layer_norm
from dinoseg.models.query_groups import GroupPredictions, QueryGroup
from dinoseg.ops import inverse_sigmoid

GENERIC, REFER = "generic", "refer"  # tasks
QUERIES, PROMPTS, CLICKS, DN = "queries", "prompts", "clicks", denoising.GROUP_NAME  # query groups
CLICK_NOISE_SCALE = 0.01  # clicks get 1% of the DN box noise (reference `prepare_for_point_query`)


@flax.struct.dataclass
class DINOvOutputs:
  """Predictions per query group (P = dec_layers predictions, last = final).

  groups: {name: GroupPredictions}. Scored groups ("queries" and, in generic training, "dn"; "clicks"
    for the referring task): logits (P, B, N, K) similarity with the K prompts (columns of invalid
    prompts hold meaningless values: mask them with `prompt_valid`), boxes (P, B, N, 4) cxcywh in
    [0, 1], masks (P, B, N, h, w) at stride 4 in training, (1, B, N, h, w) (final only) in eval,
    hidden (P, B, N, d) the normalised layer outputs. "prompts": hidden (P, B, K, d) and valid (B, K)
    only (logits, boxes, masks None). "dn"'s aux["assignment"] is its fixed assignment.
  iou: referring task: (P, B, C, T) predicted IoU of click c's token t (the "clicks" group's query
    c * T + t); None for the generic task.
  task: "generic" or "refer".
  """
  groups: Any
  iou: Any = None
  task: str = flax.struct.field(pytree_node=False, default=GENERIC)

  @property
  def main(self) -> GroupPredictions:
    """The generic queries ("queries") or the click queries ("clicks")."""
    return self.groups[QUERIES if self.task == GENERIC else CLICKS]

  @property
  def logits(self):
    return self.main.logits

  @property
  def boxes(self):
    return self.main.boxes

  @property
  def masks(self):
    return self.main.masks

  @property
  def prompt_valid(self):
    return self.groups[PROMPTS].valid


def encoder_memory(multi_scale: Sequence[jax.Array], hidden_dim: int, dtype: Any = jnp.float32):
  """Encoder outputs (encoder order, each (B, h_l, w_l, d)) -> memory (B, S, d) in the decoder's level
  order (reversed) and its static level shapes."""
  if multi_scale[0].shape[-1] != hidden_dim:
    raise ValueError(f"feature width {multi_scale[0].shape[-1]} != hidden_dim {hidden_dim} (no input projection)")
  levels = list(multi_scale)[::-1]
  b = levels[0].shape[0]
  shapes = tuple((int(x.shape[1]), int(x.shape[2])) for x in levels)
  return jnp.concatenate([x.reshape(b, -1, hidden_dim) for x in levels], 1).astype(dtype), shapes


class DINOvDecoder(nn.Module):
  """The predictor (reference `DINOvOpenSet`, which holds the referring task of `DINOvRefer`).

  Attributes:
    hidden_dim: d (256); dim_proj: similarity width p (DIM_PROJ, 512); num_queries: Q generic queries;
    nheads, dim_feedforward, dec_layers, mask_dim, n_points: as Mask DINO's decoder.
    dn: "seg" or "no"; dn_num: the DN slot budget; noise_scale: DN (and click) box noise;
    dn_group_images: images per chunk of the DN group count (dinoseg.models.maskdino.denoising).
    num_mask_tokens: T, queries per click (NUM_INTERACTIVE_TOKENS, 6).
    content_independent: prompts do not see the generic queries (CONTENT_INDEPENDENT).
    query_pad_multiple: total query count padded to a multiple of this (slots nobody sees).
    total_num_feature_levels: encoder levels.
  """
  hidden_dim: int = 256
  dim_proj: int = 512
  num_queries: int = 300
  nheads: int = 8
  dim_feedforward: int = 2048
  dec_layers: int = 9
  mask_dim: int = 256
  n_points: int = 4
  dn: str = "seg"
  dn_num: int = 100
  noise_scale: float = 0.4
  dn_group_images: int = 0
  num_mask_tokens: int = 6
  content_independent: bool = True
  query_pad_multiple: int = 8
  total_num_feature_levels: int = 4
  msda_impl: str = "auto"
  dtype: Any = jnp.float32

  def setup(self):
    if self.dn not in ("seg", "no"):
      raise ValueError(f"dn must be 'seg' or 'no', got {self.dn!r}")
    d, normal = self.hidden_dim, nn.initializers.normal(1.0)
    self.query_feat = nn.Embed(self.num_queries, d, embedding_init=normal, name="query_feat")
    self.query_embed = nn.Embed(self.num_queries, 4, embedding_init=normal, name="query_embed")
    proj_init = nn.initializers.normal(0.02)  # timm trunc_normal_(std=.02): truncation at +-2 (100 std) never acts
    self.class_embed = self.param("class_embed", proj_init, (d, self.dim_proj), jnp.float32)
    self.class_embed_part = self.param("class_embed_part", proj_init, (d, self.dim_proj), jnp.float32)
    self.class_embed_openset = self.param("class_embed_openset", proj_init, (d, self.dim_proj), jnp.float32)
    self.mask_embed = MLP(d, self.mask_dim, 3, dtype=self.dtype, name="mask_embed")
    self.decoder_norm = torch_layer_norm("decoder_norm", self.dtype)
    self.decoder = TransformerDecoder(self.dec_layers, d, self.dim_feedforward, self.total_num_feature_levels,
                                      self.nheads, self.n_points, self.msda_impl, self.dtype, name="decoder")
    self.bbox_embed = MLP(d, 4, 3, zero_last=True, dtype=self.dtype, name="bbox_embed")
    self.iou_prediction_head = MLP(d, 1, 3, dtype=self.dtype, name="iou_prediction_head")
    self.mask_tokens = nn.Embed(self.num_mask_tokens, d, embedding_init=normal, name="mask_tokens")
    self.pb_embedding = nn.Embed(2, d, embedding_init=normal, name="pb_embedding")
    self.label_enc = nn.Embed(2, d, embedding_init=normal, name="label_enc")
    self.prompt_encoder = PromptEncoder(d, self.nheads, self.total_num_feature_levels, self.dtype,
                                        name="prompt_encoder")

  # ---- queries

  def encode_prompts(self, multi_scale: Sequence[jax.Array], prompt_masks: jax.Array) -> jax.Array:
    """(B, K, H, W) prompt masks on the canvas -> (B, K, d) prompt embeddings (prompt_encoder.py)."""
    return self.prompt_encoder(multi_scale, prompt_masks)

  def prompt_queries(self, prompts: jax.Array, valid: jax.Array | None, see_generic: bool) -> QueryGroup:
    """The prompt group: prompts (B, K, d) embeddings, valid (B, K) (None: all)."""
    b, k, _ = prompts.shape
    content = (self.label_enc.embedding[0] + self.pb_embedding.embedding[1])[None, None] + prompts
    anchor = inverse_sigmoid(jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32))
    return QueryGroup(name=PROMPTS, content=content.astype(self.dtype), boxes=jnp.broadcast_to(anchor, (b, k, 4)),
                      valid=jnp.ones((b, k), bool) if valid is None else valid.astype(bool),
                      block=jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k)),
                      sees=(PROMPTS, QUERIES) if see_generic else (PROMPTS,), seen_by=(PROMPTS,))

  def generic_queries(self, batch: int) -> QueryGroup:
    """The Q learned generic queries and anchors."""
    q, d = self.num_queries, self.hidden_dim
    return QueryGroup(name=QUERIES, content=jnp.broadcast_to(self.query_feat.embedding[None], (batch, q, d)),
                      boxes=jnp.broadcast_to(self.query_embed.embedding[None], (batch, q, 4)),
                      valid=jnp.ones((batch, q), bool))

  def denoising_queries(self, targets, dn_noise: denoising.DNNoise) -> QueryGroup:
    """Class-agnostic DN group ("dn", dn_num slots): every content is label_enc[0]; only box noise is used.

    targets: an object with boxes (B, T, 4) cxcywh and valid (B, T) (labels are ignored).
    """
    zeros = jnp.zeros(targets.valid.shape, jnp.int32)
    return denoising.denoising_group(zeros, targets.boxes, targets.valid, dn_noise,
                                     lambda labels: self.label_enc(jnp.zeros_like(labels)), dn_num=self.dn_num,
                                     noise_scale=self.noise_scale, dn_group_images=self.dn_group_images)

  def click_queries(self, clicks: jax.Array, valid: jax.Array | None, pb, noise: jax.Array | None) -> QueryGroup:
    """The click group: C clicks x T tokens, query c * T + t.

    Args:
      clicks: (B, C, 4) click boxes cxcywh in [0, 1] of the canvas; valid (B, C) (None: all).
      pb: prompt-type row of `pb_embedding` per click: an int or (B, C) ints.
      noise: (B, C, 4) uniform [0, 1) box noise (training), or None.
    """
    b, c, _ = clicks.shape
    t, d = self.num_mask_tokens, self.hidden_dim
    boxes = clicks.astype(jnp.float32)
    if noise is not None and self.noise_scale > 0:
      diff = jnp.concatenate([boxes[..., 2:] / 2, boxes[..., 2:]], -1) * CLICK_NOISE_SCALE
      boxes = jnp.clip(boxes + (noise * 2 - 1.0) * diff * self.noise_scale, 0.0, 1.0)
    pb = jnp.broadcast_to(jnp.asarray(pb, jnp.int32), (b, c))
    label = self.label_enc.embedding[0] + self.pb_embedding(pb)  # (B, C, d)
    content = (label[:, :, None] + self.mask_tokens.embedding[None, None]).reshape(b, c * t, d)
    valid = jnp.ones((b, c), bool) if valid is None else valid.astype(bool)
    return QueryGroup(name=CLICKS, content=content.astype(self.dtype),
                      boxes=jnp.repeat(inverse_sigmoid(boxes), t, axis=1), valid=jnp.repeat(valid, t, axis=1),
                      block=jnp.broadcast_to(jnp.repeat(jnp.arange(c, dtype=jnp.int32), t), (b, c * t)),
                      sees=(CLICKS,), seen_by=(CLICKS,))

  # ---- decoding

  def decode(self, groups: Sequence[QueryGroup], memory: jax.Array, spatial_shapes, mask_features: jax.Array, *,
             projection: jax.Array, boxes_from_normed: bool, train: bool = False):
    """Runs the decoder once over `groups` (one of them "prompts") and the heads of every other group.

    Args:
      groups: query groups in order; memory (B, S, d) and spatial_shapes in decoder level order;
        mask_features (B, h, w, mask_dim).
      projection: (d, p) the similarity projection W.
      boxes_from_normed: predict boxes from LN(h) (referring task) instead of h.
      train: masks for every prediction (else the final one only).
    Returns:
      ({group name: GroupPredictions}, {group name: (P, B, N, d) LN(h)}).
    """
    groups = list(groups)
    padded = groups + [query_groups.padding_group(groups, self.query_pad_multiple)]
    tgt, refpoint = query_groups.concatenate(padded)
    attn_mask = query_groups.attention_mask(padded)
    hs, refs = self.decoder(tgt.astype(self.dtype), memory, refpoint, spatial_shapes, self.decoder_norm,
                            self.bbox_embed, attn_mask)
    hidden = query_groups.split(padded, jnp.stack(hs), axis=2)  # (P, B, N, d) per group
    reference = query_groups.split(padded, jnp.stack(refs[:-1]), axis=2)  # the box each prediction refines
    normed = {g.name: self.decoder_norm(hidden[g.name]) for g in groups}
    proj = {name: (x @ projection.astype(x.dtype)).astype(jnp.float32) for name, x in normed.items()}
    out = {}
    for g in groups:
      if g.name == PROMPTS:
        out[g.name] = GroupPredictions(logits=None, boxes=None, masks=None, hidden=hidden[g.name], valid=g.valid,
                                       aux=g.aux)
        continue
      x = normed[g.name]
      logits = jnp.einsum("pbnc,pbkc->pbnk", proj[g.name], proj[PROMPTS])
      embed = self.mask_embed(x if train else x[-1:])
      masks = jnp.einsum("pbnc,bhwc->pbnhw", embed, mask_features.astype(embed.dtype)).astype(jnp.float32)
      delta = self.bbox_embed(x if boxes_from_normed else hidden[g.name]).astype(jnp.float32)
      boxes = jax.nn.sigmoid(delta + inverse_sigmoid(reference[g.name]))
      out[g.name] = GroupPredictions(logits=logits, boxes=boxes, masks=masks, hidden=hidden[g.name], valid=g.valid,
                                     aux=g.aux)
    return out, normed

  def generic(self, multi_scale: Sequence[jax.Array], mask_features: jax.Array, prompts: jax.Array,
              prompt_valid: jax.Array | None = None, *, train: bool = False, targets=None,
              dn_noise: denoising.DNNoise | None = None) -> DINOvOutputs:
    """The generic (open-set) task: `[dn | queries | prompts]`, logits against the K prompts.

    Args:
      multi_scale: encoder outputs in encoder order (B, h_l, w_l, d); mask_features (B, h, w, mask_dim).
      prompts: (B, K, d) prompt embeddings (class prompts: averages of examples, `average_prompts`);
        prompt_valid (B, K) (None: all valid).
      train: training mode; with `targets` (boxes (B, T, 4), valid (B, T)) and `dn_noise` the class-
        agnostic DN group is added (noise: denoising.sample_dn_noise(key, B, dn_num, 1); only box_u is used).
    """
    memory, shapes = encoder_memory(multi_scale, self.hidden_dim, self.dtype)
    groups = [self.generic_queries(memory.shape[0]),
              self.prompt_queries(prompts, prompt_valid, see_generic=not self.content_independent)]
    if train and self.dn != "no" and self.dn_num > 0 and targets is not None:
      if dn_noise is None:
        raise ValueError("dn_noise is required for denoising training (denoising.sample_dn_noise)")
      groups.insert(0, self.denoising_queries(targets, dn_noise))
    out, _ = self.decode(groups, memory, shapes, mask_features, projection=self.class_embed_openset,
                         boxes_from_normed=False, train=train)
    return DINOvOutputs(groups=out, task=GENERIC)

  def refer(self, multi_scale: Sequence[jax.Array], mask_features: jax.Array, clicks: jax.Array, prompts: jax.Array,
            *, click_valid: jax.Array | None = None, prompt_valid: jax.Array | None = None, click_pb=None,
            train: bool = False, click_noise: jax.Array | None = None) -> DINOvOutputs:
    """The referring task: `[clicks | prompts]`, logits of every click token against the K prompts.

    Args:
      clicks: (B, C, 4) click boxes (cxcywh in [0, 1] of the canvas); click_valid (B, C) (None: all).
      prompts: (B, K, d) prompt embeddings; prompt_valid (B, K) (None: all).
      click_pb: `pb_embedding` row of the clicks (int or (B, C)); None: 1 in training and 0 in eval,
        as the reference's target preparation sets it.
      train: training mode (click noise, masks of every layer); click_noise (B, C, 4) uniform [0, 1)
        is required in training when noise_scale > 0.
    """
    if train and self.noise_scale > 0 and click_noise is None:
      raise ValueError("click_noise (B, C, 4) uniform [0, 1) is required in training")
    memory, shapes = encoder_memory(multi_scale, self.hidden_dim, self.dtype)
    pb = (1 if train else 0) if click_pb is None else click_pb
    groups = [self.click_queries(clicks, click_valid, pb, click_noise if train else None),
              self.prompt_queries(prompts, prompt_valid, see_generic=False)]
    out, normed = self.decode(groups, memory, shapes, mask_features, projection=self.class_embed,
                              boxes_from_normed=True, train=train)
    iou = self.iou_prediction_head(normed[CLICKS]).astype(jnp.float32)
    p, b = iou.shape[:2]
    return DINOvOutputs(groups=out, iou=iou.reshape(p, b, clicks.shape[1], self.num_mask_tokens), task=REFER)

  def __call__(self, multi_scale: Sequence[jax.Array], mask_features: jax.Array, *, task: str = GENERIC,
               prompts: jax.Array | None = None, prompt_masks: jax.Array | None = None,
               prompt_valid: jax.Array | None = None, train: bool = False, targets=None,
               dn_noise: denoising.DNNoise | None = None, clicks: jax.Array | None = None,
               click_valid: jax.Array | None = None, click_pb=None, click_noise: jax.Array | None = None
               ) -> DINOvOutputs:
    """Runs one task. Prompts are given as embeddings (`prompts`, (B, K, d)) or as masks on the canvas
    (`prompt_masks`, (B, K, H, W), encoded here); see `generic` and `refer` for the other arguments."""
    if task not in (GENERIC, REFER):
      raise ValueError(f"task must be {GENERIC!r} or {REFER!r}, got {task!r}")
    if self.is_initializing():  # create every parameter, whichever task initializes the model
      self.iou_prediction_head(jnp.zeros((1, self.hidden_dim), self.dtype))
      for embed in (self.query_feat, self.query_embed, self.mask_tokens, self.pb_embedding, self.label_enc):
        _ = embed.embedding
      if prompts is None and prompt_masks is None:
        b, h, w = mask_features.shape[:3]
        prompt_masks = jnp.zeros((b, 1, 4 * h, 4 * w), jnp.float32)
      if prompts is not None:
        self.encode_prompts(multi_scale, jnp.zeros(prompts.shape[:2] + (4 * mask_features.shape[1],
                                                                        4 * mask_features.shape[2])))
      if task == REFER and clicks is None:
        clicks = jnp.full((mask_features.shape[0], 1, 4), 0.5, jnp.float32)
    if prompts is None:
      if prompt_masks is None:
        raise ValueError("give prompts (B, K, d) or prompt_masks (B, K, H, W)")
      prompts = self.encode_prompts(multi_scale, prompt_masks)
    if task == GENERIC:
      return self.generic(multi_scale, mask_features, prompts, prompt_valid, train=train, targets=targets,
                          dn_noise=dn_noise)
    if clicks is None:
      raise ValueError("the referring task needs clicks (B, C, 4)")
    return self.refer(multi_scale, mask_features, clicks, prompts, click_valid=click_valid, prompt_valid=prompt_valid,
                      click_pb=click_pb, train=train, click_noise=click_noise)


__all__ = ["DINOvDecoder", "DINOvOutputs", "encoder_memory", "GENERIC", "REFER", "QUERIES", "PROMPTS", "CLICKS", "DN"]
