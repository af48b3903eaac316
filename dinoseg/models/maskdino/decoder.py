"""Mask DINO's transformer decoder ("predictor"): query selection, denoising queries, deformable
decoder layers with iterative box refinement, and the class / box / mask heads.

Reference: `maskdino_decoder.py` (MaskDINODecoder) and `dino_decoder.py` (TransformerDecoder,
DeformableTransformerDecoderLayer). Facts that matter for an exact port (docs/maskdino.md):
- The decoder reads the encoder levels in reverse order (coarse -> fine for low2high).
- Decoder layer (post-norm): self-attention (q = k = tgt + query_pos, boolean mask) -> `norm2`;
  MSDA cross-attention on the 4-d reference boxes -> `norm1`; FFN -> `norm3`.
- query_pos = ref_point_head(sine(ref box)) with the sine embedding ordered (y, x, w, h).
- Box refinement: ref_{l+1} = sigmoid(bbox_embed(out_l) + logit(ref_l)), detached for the next layer;
  the reported box of layer l is sigmoid(bbox_embed(norm(out_l)) + logit(ref_l)) with the *undetached*
  ref_l ("look forward twice"). One box MLP shared by all layers and by two-stage selection.
- Heads: class_embed(decoder_norm(h)), mask = <mask_embed(decoder_norm(h)), mask_features>; the
  decoder's per-layer outputs already went through the same norm (the reference's `decoder.norm` is
  `decoder_norm`), so it is applied twice, as in the reference.
- INITIAL_PRED adds a prediction from the initial queries: L + 1 predictions.
- In eval, masks are computed for the last prediction only (and the interm outputs).
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from dinoseg.models import query_groups
from dinoseg.models.maskdino import denoising, query_selection
from dinoseg.models.maskdino.deformable_attention import MSDeformAttn
from dinoseg.models.maskdino.layers import MLP, dense, relu, torch_layer_norm, xavier_uniform, zeros
from dinoseg.models.maskdino.mask_logits import FactoredMasks
from dinoseg.models.query_groups import GroupPredictions, QueryGroup
from dinoseg.ops import inverse_sigmoid, sine_embedding_for_boxes
from dinoseg.ops.attention import dot_product_attention

MATCHING_GROUP = "queries"


@flax.struct.dataclass
class DecoderOutputs:
  """Predictions per query group (dinoseg.models.query_groups) and of the two-stage encoder.

  groups: {name: GroupPredictions}: "queries" (the matching queries: logits (P, B, Q, C), boxes
    (P, B, Q, 4), masks (P, B, Q, h, w) at stride 4 in training, (1, B, Q, h, w) (final only) in
    eval, for the P = dec_layers (+1 with INITIAL_PRED) predictions), "dn" in training with
    denoising (dn_num slots; its aux["assignment"] is the fixed assignment), and any extra group.
  interm: the two-stage encoder prediction as GroupPredictions with P = 1, or None.
  The properties give the matching group's and interm arrays under their old names.
  """
  groups: Any
  interm: Any = None

  @property
  def logits(self):
    return self.groups[MATCHING_GROUP].logits

  @property
  def boxes(self):
    return self.groups[MATCHING_GROUP].boxes

  @property
  def masks(self):
    return self.groups[MATCHING_GROUP].masks

  @property
  def interm_logits(self):
    return None if self.interm is None else self.interm.logits[0]

  @property
  def interm_boxes(self):
    return None if self.interm is None else self.interm.boxes[0]

  @property
  def interm_masks(self):
    return None if self.interm is None else self.interm.masks[0]


class MultiheadAttention(nn.Module):
  """torch.nn.MultiheadAttention (batch-first here) with packed in-projection parameters.

  Params: `in_proj_kernel` (d, 3d) = torch in_proj_weight.T ([q; k; v] blocks), `in_proj_bias` (3d),
  `out_proj` Dense.
  """
  d_model: int = 256
  num_heads: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query, key, value, mask=None):
    """query (B, N, d), key/value (B, S, d); mask (N, S) or (B, 1, N, S) bool, True = blocked -> (B, N, d).

    A row blocked everywhere attends to all keys uniformly (torch gives NaN there; the reference
    decoders unblock such rows before calling, as Mask DINO's and OV2Seg's callers here do).
    """
    d, h = self.d_model, self.num_heads
    hd = d // h
    kernel = self.param("in_proj_kernel", xavier_uniform, (d, 3 * d), jnp.float32).astype(self.dtype)
    bias = self.param("in_proj_bias", zeros, (3 * d,), jnp.float32).astype(self.dtype)
    q = query.astype(self.dtype) @ kernel[:, :d] + bias[:d]
    k = key.astype(self.dtype) @ kernel[:, d:2 * d] + bias[d:2 * d]
    v = value.astype(self.dtype) @ kernel[:, 2 * d:] + bias[2 * d:]
    b, n, _ = q.shape
    split = lambda x: x.reshape(b, x.shape[1], h, hd).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    attend = None if mask is None else ~jnp.asarray(mask)  # (N, N) or (B, 1, N, S), True = attend
    out = dot_product_attention(q, k, v, scale=math.sqrt(1.0 / hd), mask=attend)
    out = out.transpose(0, 2, 1, 3).reshape(b, n, d)
    return nn.Dense(d, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=xavier_uniform, bias_init=zeros,
                    name="out_proj")(out)


class DecoderLayer(nn.Module):
  """DeformableTransformerDecoderLayer (post-norm; dropout 0)."""
  d_model: int = 256
  d_ffn: int = 2048
  n_levels: int = 4
  n_heads: int = 8
  n_points: int = 4
  msda_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tgt, query_pos, reference_boxes, memory, spatial_shapes, self_attn_mask=None):
    """tgt, query_pos (B, N, d); reference_boxes (B, N, 4); memory (B, S, d) -> (B, N, d)."""
    q = tgt + query_pos
    tgt2 = MultiheadAttention(self.d_model, self.n_heads, self.dtype, name="self_attn")(q, q, tgt, self_attn_mask)
    tgt = torch_layer_norm("norm2", self.dtype)(tgt + tgt2)
    refs = jnp.broadcast_to(reference_boxes[:, :, None, :], reference_boxes.shape[:2] + (self.n_levels, 4))
    tgt2 = MSDeformAttn(self.d_model, self.n_levels, self.n_heads, self.n_points, impl=self.msda_impl,
                        dtype=self.dtype, name="cross_attn")(tgt + query_pos, refs, memory, spatial_shapes)
    tgt = torch_layer_norm("norm1", self.dtype)(tgt + tgt2)
    hidden = relu(dense(self.d_ffn, self.d_model, "linear1", kernel_init=xavier_uniform, dtype=self.dtype)(tgt))
    tgt2 = dense(self.d_model, self.d_ffn, "linear2", kernel_init=xavier_uniform, dtype=self.dtype)(hidden)
    return torch_layer_norm("norm3", self.dtype)(tgt + tgt2)


class TransformerDecoder(nn.Module):
  """The layer stack with query positions from reference boxes and iterative refinement.

  The shared `norm` and box MLP belong to the predictor and are passed in at call time.
  """
  num_layers: int = 9
  d_model: int = 256
  d_ffn: int = 2048
  n_levels: int = 4
  n_heads: int = 8
  n_points: int = 4
  msda_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tgt, memory, refpoints_unsigmoid, spatial_shapes, norm, bbox_embed, self_attn_mask=None):
    """Runs the layers.

    Args:
      tgt: (B, N, d) initial content queries; memory (B, S, d) in decoder level order.
      refpoints_unsigmoid: (B, N, 4) initial box logits.
      norm: the shared LayerNorm; bbox_embed: the shared box MLP.
      self_attn_mask: (N, N) or (B, 1, N, N) bool, True = blocked (None: all visible).
    Returns:
      hs: list of L (B, N, d) normalized layer outputs.
      refs: list of L + 1 reference boxes (B, N, 4): the initial one, then each layer's refined
        (undetached) box.
    """
    ref_point_head = MLP(self.d_model, self.d_model, 2, kernel_init=xavier_uniform, dtype=self.dtype,
                         name="ref_point_head")
    reference = jax.nn.sigmoid(refpoints_unsigmoid.astype(jnp.float32))
    refs, hs = [reference], []
    output = tgt
    for i in range(self.num_layers):
      query_pos = ref_point_head(sine_embedding_for_boxes(reference).astype(self.dtype))
      output = DecoderLayer(self.d_model, self.d_ffn, self.n_levels, self.n_heads, self.n_points, self.msda_impl,
                            self.dtype, name=f"layers_{i}")(output, query_pos, reference, memory, spatial_shapes,
                                                             self_attn_mask)
      new_reference = jax.nn.sigmoid(bbox_embed(output).astype(jnp.float32) + inverse_sigmoid(reference))
      reference = jax.lax.stop_gradient(new_reference)
      refs.append(new_reference)
      hs.append(norm(output))
    return hs, refs


class MaskDINODecoder(nn.Module):
  """The predictor (reference `MaskDINODecoder`).

  Attributes:
    num_classes: C (no background logit, unless `semantic_ce_loss`, which adds one).
    hidden_dim: 256; num_queries: Q; nheads: 8; dim_feedforward: decoder FFN width;
    dec_layers: L; mask_dim: mask-feature channels; n_points: 4.
    two_stage: select the initial queries from the encoder memory (else learned queries).
    initialize_box_type: "no", "bitmask" or "mask2box" (mask-enhanced anchor boxes).
    initial_pred: add the prediction of the initial queries.
    learn_tgt: learned content queries even with two-stage.
    dn: "seg" or "no"; dn_num: the DN slot budget; noise_scale; dn_group_images: images per
      chunk over which the reference's DN group count is computed (0: the batch; denoising.py).
    query_pad_multiple: the decoder's query count is padded to a multiple of this (`decode`).
    total_num_feature_levels: encoder levels.
    semantic_ce_loss: class_embed has C + 1 outputs (softmax CE, ADE/Cityscapes).
    factored_train_masks: in training, the predictions' masks are `mask_logits.FactoredMasks` (the queries'
      mask embeddings and the mask features) instead of (P, B, Q, h, w) logits; the losses sample them at points
      (same values up to float rounding, without the full-resolution logits of every prediction in memory).
  """
  num_classes: int = 80
  hidden_dim: int = 256
  num_queries: int = 300
  nheads: int = 8
  dim_feedforward: int = 2048
  dec_layers: int = 9
  mask_dim: int = 256
  n_points: int = 4
  two_stage: bool = True
  initialize_box_type: str = "bitmask"
  initial_pred: bool = True
  learn_tgt: bool = False
  dn: str = "seg"
  dn_num: int = 100
  noise_scale: float = 0.4
  dn_group_images: int = 0
  query_pad_multiple: int = 8
  total_num_feature_levels: int = 4
  semantic_ce_loss: bool = False
  factored_train_masks: bool = False
  msda_impl: str = "auto"
  dtype: Any = jnp.float32

  def setup(self):
    if self.initialize_box_type not in query_selection.BOX_INIT_TYPES:
      raise ValueError(f"initialize_box_type must be one of {query_selection.BOX_INIT_TYPES}, "
                       f"got {self.initialize_box_type!r}")
    if self.initialize_box_type != "no" and not (self.initial_pred and self.two_stage):
      raise ValueError("initialize_box_type needs initial_pred and two_stage")
    if self.dn not in ("seg", "no"):
      raise ValueError(f"dn must be 'seg' or 'no', got {self.dn!r}")
    d = self.hidden_dim
    if not self.two_stage or self.learn_tgt:
      self.query_feat = nn.Embed(self.num_queries, d, embedding_init=nn.initializers.normal(1.0), name="query_feat")
    if not self.two_stage and self.initialize_box_type == "no":
      self.query_embed = nn.Embed(self.num_queries, 4, embedding_init=nn.initializers.normal(1.0), name="query_embed")
    if self.two_stage:
      self.enc_output = dense(d, d, "enc_output", dtype=self.dtype)
      self.enc_output_norm = torch_layer_norm("enc_output_norm", self.dtype)
    self.class_embed = dense(self.num_classes + 1 if self.semantic_ce_loss else self.num_classes, d, "class_embed",
                             dtype=self.dtype)
    self.label_enc = nn.Embed(self.num_classes, d, embedding_init=nn.initializers.normal(1.0), name="label_enc")
    self.mask_embed = MLP(d, self.mask_dim, 3, dtype=self.dtype, name="mask_embed")
    self.decoder_norm = torch_layer_norm("decoder_norm", self.dtype)
    self.decoder = TransformerDecoder(self.dec_layers, d, self.dim_feedforward, self.total_num_feature_levels,
                                      self.nheads, self.n_points, self.msda_impl, self.dtype, name="decoder")
    self.bbox_embed = MLP(d, 4, 3, zero_last=True, dtype=self.dtype, name="bbox_embed")

  def prediction_heads(self, output, mask_features, pred_mask: bool = True, embed_only: bool = False):
    """output (B, N, d), mask_features (B, h, w, mask_dim) -> logits (B, N, C'), masks (B, N, h, w) or None
    (with `embed_only`, the mask embeddings (B, N, mask_dim) instead of the masks)."""
    x = self.decoder_norm(output)
    logits = self.class_embed(x).astype(jnp.float32)
    if not pred_mask:
      return logits, None
    embed = self.mask_embed(x)
    if embed_only:
      return logits, embed
    masks = jnp.einsum("bqc,bhwc->bqhw", embed, mask_features.astype(embed.dtype)).astype(jnp.float32)
    return logits, masks

  def encoder_memory(self, multi_scale: Sequence[jax.Array]) -> tuple[jax.Array, tuple[tuple[int, int], ...]]:
    """Encoder outputs (encoder order, each (B, H_l, W_l, d)) -> memory (B, S, d) in the decoder's
    level order (reversed) and its static level shapes."""
    if len(multi_scale) != self.total_num_feature_levels:
      raise ValueError(f"expected {self.total_num_feature_levels} feature levels, got {len(multi_scale)}")
    if multi_scale[0].shape[-1] != self.hidden_dim:
      raise ValueError(f"feature width {multi_scale[0].shape[-1]} != hidden_dim {self.hidden_dim} "
                       "(the decoder has no input projection, as ENFORCE_INPUT_PROJ=False)")
    levels = list(multi_scale)[::-1]
    b = levels[0].shape[0]
    spatial_shapes = tuple((int(x.shape[1]), int(x.shape[2])) for x in levels)
    memory = jnp.concatenate([x.reshape(b, -1, self.hidden_dim) for x in levels], 1).astype(self.dtype)
    return memory, spatial_shapes

  def matching_queries(self, memory: jax.Array, spatial_shapes, mask_features: jax.Array, factored: bool = False
                       ) -> tuple[QueryGroup, GroupPredictions | None]:
    """Mask DINO's matching queries (group "queries", Q per image) and the two-stage encoder
    prediction (GroupPredictions with P = 1; None without two-stage).

    Two-stage: the top-Q encoder proposals (content and boxes detached), with mask-enhanced boxes
    when `initialize_box_type` != "no"; otherwise the learned `query_feat` / `query_embed`.
    """
    b, q = memory.shape[0], self.num_queries
    if not self.two_stage:
      tgt = jnp.broadcast_to(self.query_feat.embedding[None], (b, q, self.hidden_dim)).astype(self.dtype)
      refpoint = jnp.broadcast_to(self.query_embed.embedding[None], (b, q, 4))
      return QueryGroup(name=MATCHING_GROUP, content=tgt, boxes=refpoint, valid=jnp.ones((b, q), bool)), None
    proposals, valid = query_selection.encoder_output_proposals(spatial_shapes)
    output_memory = jnp.where(jnp.asarray(valid)[None, :, None], memory, 0.0)
    output_memory = self.enc_output_norm(self.enc_output(output_memory))
    enc_logits = self.class_embed(output_memory).astype(jnp.float32)
    enc_boxes = self.bbox_embed(output_memory).astype(jnp.float32) + jnp.asarray(proposals)[None]
    topk = query_selection.select_topk(enc_logits.max(-1), q)
    refpoint_undetached = query_selection.gather_tokens(enc_boxes, topk)
    refpoint = jax.lax.stop_gradient(refpoint_undetached)
    tgt_undetached = query_selection.gather_tokens(output_memory, topk)
    interm_logits, interm_embed = self.prediction_heads(tgt_undetached, mask_features, embed_only=True)
    interm_masks = FactoredMasks(interm_embed, mask_features).materialize()
    tgt = jax.lax.stop_gradient(tgt_undetached)
    if self.learn_tgt:
      tgt = jnp.broadcast_to(self.query_feat.embedding[None], (b, q, self.hidden_dim)).astype(self.dtype)
    if self.initialize_box_type != "no":
      refpoint = query_selection.mask_boxes(interm_masks, self.initialize_box_type)
    valid_q = jnp.ones((b, q), bool)
    interm = GroupPredictions(logits=interm_logits[None], boxes=jax.nn.sigmoid(refpoint_undetached)[None],
                              masks=(FactoredMasks(interm_embed[None], mask_features) if factored else interm_masks[None]),
                              hidden=tgt_undetached[None], valid=valid_q)
    return QueryGroup(name=MATCHING_GROUP, content=tgt, boxes=refpoint, valid=valid_q), interm

  def denoising_queries(self, targets, dn_noise: denoising.DNNoise) -> QueryGroup:
    """The denoising group ("dn", dn_num slots) of a training batch (denoising.denoising_group).

    targets: an object with labels (B, T), boxes (B, T, 4) cxcywh, valid (B, T).
    """
    return denoising.denoising_group(targets.labels, targets.boxes, targets.valid, dn_noise, self.label_enc,
                                     dn_num=self.dn_num, noise_scale=self.noise_scale,
                                     dn_group_images=self.dn_group_images)

  def decode(self, groups: Sequence[QueryGroup], memory: jax.Array, spatial_shapes, mask_features: jax.Array, *,
             train: bool = False) -> dict[str, GroupPredictions]:
    """Runs the decoder layers once over the concatenated groups and the heads on every layer.

    The concatenated queries are padded to a multiple of `query_pad_multiple` with slots that no
    query sees (query_groups.padding_group): tile-friendly shapes, and a group added within the
    padding leaves every other group's outputs bit-identical (the programs have the same shapes;
    XLA chooses its kernels, and so their rounding, by shape).

    Args:
      groups: the query groups in order; the self-attention mask follows their rules
        (query_groups.attention_mask).
      memory: (B, S, d) and spatial_shapes from `encoder_memory`; mask_features (B, h, w, mask_dim).
      train: masks for every prediction (else only the final one).
    Returns:
      {group name: GroupPredictions} with P = dec_layers (+1 with initial_pred) predictions.
    """
    groups = list(groups)
    padded = groups + [query_groups.padding_group(groups, self.query_pad_multiple)]
    tgt, refpoint = query_groups.concatenate(padded)
    tgt = tgt.astype(self.dtype)
    attn_mask = query_groups.attention_mask(padded)
    all_logits, all_masks, hidden = [], [], []
    factored = train and self.factored_train_masks
    if self.initial_pred:
      logits, masks = self.prediction_heads(tgt, mask_features, pred_mask=train, embed_only=factored)
      all_logits.append(logits)
      all_masks.append(masks)
      hidden.append(tgt)
    hs, refs = self.decoder(tgt, memory, refpoint, spatial_shapes, self.decoder_norm, self.bbox_embed, attn_mask)
    for i, h in enumerate(hs):
      logits, masks = self.prediction_heads(h, mask_features, pred_mask=train or i == len(hs) - 1, embed_only=factored)
      all_logits.append(logits)
      all_masks.append(masks)
    hidden.extend(hs)
    boxes = [jax.nn.sigmoid(refpoint.astype(jnp.float32))] if self.initial_pred else []
    for ref, h in zip(refs[:-1], hs):
      boxes.append(jax.nn.sigmoid(self.bbox_embed(h).astype(jnp.float32) + inverse_sigmoid(ref)))
    stacked = dict(logits=jnp.stack(all_logits), boxes=jnp.stack(boxes), hidden=jnp.stack(hidden),
                   masks=jnp.stack(all_masks) if train else all_masks[-1][None])
    parts = {k: query_groups.split(padded, v, axis=2) for k, v in stacked.items()}
    if factored:  # the stacked "masks" are the (P, B, N, mask_dim) mask embeddings
      parts["masks"] = {name: FactoredMasks(e, mask_features) for name, e in parts["masks"].items()}
    return {g.name: GroupPredictions(**{k: parts[k][g.name] for k in stacked}, valid=g.valid, aux=g.aux)
            for g in groups}

  def __call__(self, multi_scale: Sequence[jax.Array], mask_features: jax.Array, *, train: bool = False,
               targets=None, dn_noise: denoising.DNNoise | None = None,
               extra_groups: Sequence[QueryGroup] = ()) -> DecoderOutputs:
    """Runs the predictor: query groups `[dn | queries | *extra_groups]` through `decode`.

    Args:
      multi_scale: encoder outputs in encoder order, each (B, H_l, W_l, d).
      mask_features: (B, h, w, mask_dim) at stride 4.
      train: training mode (denoising, masks for every prediction).
      targets: with denoising in training, an object with `labels` (B, T), `boxes` (B, T, 4), `valid` (B, T).
      dn_noise: the denoising noise (required with targets; see `denoising.sample_dn_noise`).
      extra_groups: query groups of another system, decoded after Mask DINO's own.
    Returns:
      DecoderOutputs.
    """
    if self.is_initializing():  # the label embedding is used only by denoising: create it at init
      self.label_enc(jnp.zeros((1,), jnp.int32))
    memory, spatial_shapes = self.encoder_memory(multi_scale)
    matching, interm = self.matching_queries(memory, spatial_shapes, mask_features,
                                             factored=train and self.factored_train_masks)
    groups = [matching]
    if train and self.dn != "no" and self.dn_num > 0 and targets is not None:
      if dn_noise is None:
        raise ValueError("dn_noise is required for denoising training (see denoising.sample_dn_noise)")
      groups.insert(0, self.denoising_queries(targets, dn_noise))
    groups.extend(extra_groups)
    return DecoderOutputs(groups=self.decode(groups, memory, spatial_shapes, mask_features, train=train),
                          interm=interm)


__all__ = ["MaskDINODecoder", "TransformerDecoder", "DecoderLayer", "MultiheadAttention", "DecoderOutputs",
           "MATCHING_GROUP"]
