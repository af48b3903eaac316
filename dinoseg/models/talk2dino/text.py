"""Class embeddings from class names (reference `build_dataset_class_tokens` + `build_text_embedding`).

For N class names and T templates:
1. the N*T prompts are tokenized with CLIP's tokenizer (no truncation: a too long prompt is a
   ValueError), context 77;
2. `encode_text` gives raw (un-normalized) 512-d vectors;
3. the T vectors of a class are **averaged raw** (not normalized first, unlike the usual CLIP
   ensembling);
4. the projection maps the mean into the DINOv2 space, which is L2-normalized with eps 1e-6.

The text tower runs on the longest prompt's length instead of all 77 positions: with CLIP's
causal mask the EOT features are the same (see docs/dinov2_clip.md). Prompts go through in
fixed-size chunks (the last one padded) so the encoder compiles once per prompt length.
"""
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.models.talk2dino.model import Talk2Dino
from dinoseg.models.talk2dino.projection import normalize
from dinoseg.models.talk2dino.templates import SUBSET_IMAGENET_TEMPLATES, class_prompts

TEXT_NORM_EPS = 1e-6


@functools.partial(jax.jit, static_argnums=0)
def _encode(model: Talk2Dino, params, ids):
  return model.apply({"params": params}, ids, method=Talk2Dino.encode_text)


def tokenize_prompts(prompts: Sequence[str], tokenizer=None, truncate: bool = False) -> np.ndarray:
  """(M, L) int32 ids cut to the longest prompt (L = last EOT position + 1)."""
  if tokenizer is None:
    from dinoseg.backbones.clip_tokenizer import tokenize  # noqa: PLC0415
    ids = np.asarray(tokenize(list(prompts), truncate=truncate))
  else:
    ids = np.asarray(tokenizer(list(prompts)))
  if ids.ndim != 2 or ids.shape[0] != len(prompts):
    raise ValueError(f"tokenizer must return (M, L) ids for M={len(prompts)} prompts, got {ids.shape}")
  length = int(np.argmax(ids, axis=1).max()) + 1
  return ids[:, :length].astype(np.int32)


def encode_texts(model: Talk2Dino, params, ids: np.ndarray, chunk_size: int = 256) -> jax.Array:
  """Raw CLIP text embeddings (M, E) of token ids (M, L), `chunk_size` prompts per call."""
  if chunk_size <= 0:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  ids = np.asarray(ids, np.int32)
  m = ids.shape[0]
  chunk = min(chunk_size, m)
  pad = -m % chunk
  padded = np.concatenate([ids, np.zeros((pad, ids.shape[1]), np.int32)]) if pad else ids
  text_params = {"clip_text": params["clip_text"]}
  out = [_encode(model, text_params, jnp.asarray(padded[i:i + chunk])) for i in range(0, len(padded), chunk)]
  return jnp.concatenate(out)[:m]


def class_embeddings(model: Talk2Dino, params, classnames: Sequence[str],
                     templates: Sequence[str] = SUBSET_IMAGENET_TEMPLATES, tokenizer=None,
                     chunk_size: int = 256) -> jax.Array:
  """Normalized class embeddings in the DINOv2 space.

  Args:
    model: Talk2Dino.
    params: its parameters (`clip_text` and `projection` are read).
    classnames: N class names.
    templates: T prompt templates with one "{}" each.
    tokenizer: optional callable list[str] -> (M, L) ids (default: CLIP's BPE, no truncation).
  Returns:
    (N, D) float32, rows L2-normalized (eps 1e-6).
  """
  if not classnames:
    raise ValueError("classnames must not be empty")
  if not templates or any("{}" not in t for t in templates):
    raise ValueError(f"templates must be a non-empty list of strings with '{{}}', got {templates!r}")
  ids = tokenize_prompts(class_prompts(classnames, templates), tokenizer)
  raw = encode_texts(model, params, ids, chunk_size).reshape(len(classnames), len(templates), -1)
  mean = jnp.mean(raw.astype(jnp.float32), axis=1)
  return project_and_normalize(model, params, mean)


def project_and_normalize(model: Talk2Dino, params, text_embeds: jax.Array) -> jax.Array:
  """(N, E) raw text embeddings -> (N, D) projected, L2-normalized with eps 1e-6."""
  projected = model.apply({"params": {"projection": params["projection"]}}, text_embeds,
                          method=Talk2Dino.project_text)
  return normalize(projected, axis=-1, eps=TEXT_NORM_EPS)


__all__ = ["class_embeddings", "encode_texts", "tokenize_prompts", "project_and_normalize", "TEXT_NORM_EPS"]
