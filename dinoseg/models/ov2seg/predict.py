"""OV2Seg video inference: a video in, tracks with class names, per-frame overlays, a GIF and LV-VIS results out.

    import dinoseg
    predictor = dinoseg.load("configs/ov2seg/r50_lvis.py", "model_final.pth", vocabulary="fg_bg_5_10_lvvis_ens.npy")
    result = predictor.predict("clip/")          # a frames directory or an .mp4 (dinoseg.video_io)
    result.scores, result.labels, result.names, result.track_index, result.segmentations

The video is read lazily, `test.window_size` frames at a time (dinoseg.video_io): each window goes through the
per-frame model (jitted once per padded frame size, the window padded to its full length so the last one
compiles nothing new) and then through `associate_window`, which carries the association state (memory,
summed class / objectness logits, frame count) from window to window on the device. That is the released
association of `dinoseg.models.ov2seg.video.associate` (same operations in the same order, so the memory,
the permutations and the video logits are the ones of the all-at-once function) split at window boundaries.

What a window leaves behind is its track-aligned per-frame outputs (`StreamingAssociation`): objectness
logits and two mask statistics per (frame, track) (the sum of sigmoid over the positive mask pixels and their
count, what the mask score needs) in memory, the class logits and stride-4 mask logits in temporary files
(read back as NumPy memmaps, only the selected tracks' rows), never the frames. After the last frame, `finish`
scores the tracks (`video_instances`' top-k, frame blanking and mask score), and `mask_windows` resizes the kept masks of the selected instances to the
video's size one window at a time, so the full-size masks of a long video are never in memory either: they
become compressed RLEs frame by frame.

Outputs of a video named `clip` (`write`; `dinoseg predict --input=clip/ --output=out/`): `out/clip/<frame
file name>.png` per frame (masks of the instances scoring >= the threshold, one colour per track, the same in
every frame, with "name score"), `out/clip.gif` (animated preview, at most `GIF_MAX_FRAMES` frames, <= 320
pixels wide), and, over all videos, `out/results.json` (the LV-VIS / YouTube-VIS server format,
`dinoseg.evaluation.video_ap`: video ids count the inputs from 1) and `out/videos.json` (id, name, frame names,
height, width of each input).

Vocabulary (`resolve_vocabulary`): `vocabulary=FILE.npy` (DetPro-style (C, E) embeddings; names from
`classes` when given, else `config.vocabulary.names`: a list of names or a categories JSON, else "class_<i>"),
or `classes`
alone (names -> CLIP text tower `config.vocabulary.clip_file`, templates `config.vocabulary.templates`,
default ViLD's), or, with neither, `config.vocabulary.file`. E must be `config.model.classifier.embed_dim`.
`class_source="memory"` (or `config.test.class_source`) selects the paper's variant (video.py).
"""
import dataclasses
import functools
import json
import logging
import os
import pathlib
import tempfile
from typing import Any, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dinoseg import predict as predict_lib
from dinoseg import video_io
from dinoseg.errors import UserValueError
from dinoseg.models.ov2seg import video as video_lib

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
VIDEOS_FILE = "videos.json"
GIF_MAX_FRAMES = 100
GIF_MAX_WIDTH = 320

_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- streaming association


@flax.struct.dataclass
class AssociationState:
  """What `associate_window` carries from window to window (Q tracks, D embedding width, C + 1 classes).

  Attributes:
    memory: (Q, D) the memory queries (frame 0's embeddings, then the 0.7 / 0.3 update).
    logit_sum: (Q, C + 1) sum of the aligned class logits over the valid frames so far.
    object_sum: (Q, 2) sum of the aligned objectness logits.
    count: () int32 valid frames so far (0: the next valid frame is frame 0 and defines the tracks).
  """
  memory: jax.Array
  logit_sum: jax.Array
  object_sum: jax.Array
  count: jax.Array

  @classmethod
  def empty(cls, num_queries: int, embed_dim: int, num_classes_plus_one: int) -> "AssociationState":
    return cls(memory=jnp.zeros((num_queries, embed_dim), jnp.float32),
               logit_sum=jnp.zeros((num_queries, num_classes_plus_one), jnp.float32),
               object_sum=jnp.zeros((num_queries, 2), jnp.float32), count=jnp.zeros((), jnp.int32))


def associate_window(state: AssociationState, embeddings: jax.Array, logits: jax.Array, objectness: jax.Array,
                     masks: jax.Array, frame_valid: jax.Array, *, memory_momentum: float = 0.7,
                     matcher: str = "hungarian_device") -> tuple[AssociationState, dict[str, jax.Array]]:
  """One window of `video.associate`, continuing from `state` (jit-able; W frames static).

  Args:
    state: the state after the previous windows (`AssociationState.empty` before the first).
    embeddings: (W, Q, D); logits: (W, Q, C+1); objectness: (W, Q, 2); masks: (W, Q, h, w) stride-4 logits.
    frame_valid: (W,) bool, False for padding frames (they change nothing).
    memory_momentum, matcher: as `video.associate`.
  Returns:
    (new state, aligned) with aligned = {"perm": (W, Q) int32 frame query of each track (arange on padding
    frames and on the video's first frame), "logits": (W, Q, C+1), "objectness": (W, Q, 2), "masks": (W, Q, h,
    w) in track order, "positive_sum": (W, Q) sum of sigmoid(mask) over the pixels with mask > 0,
    "positive_count": (W, Q) their number}.
  """
  q = embeddings.shape[1]
  rows = jnp.arange(q, dtype=jnp.int32)
  all_targets = jnp.ones((1, q), bool)
  normalize = video_lib._normalize_rows  # noqa: SLF001  (the reference's x / ||x||, shared with associate)

  def step(carry, frame):
    memory, logit_sum, object_sum, count = carry
    emb, logit, obj, ok = frame
    first = count == 0
    memory_in = jnp.where(first, emb, memory)
    cos = jnp.matmul(normalize(emb), normalize(memory_in).T, precision=_HIGHEST)  # (Q cur, Q mem)
    perm = matching_assign((1.0 - cos)[None], all_targets, matcher)
    perm = jnp.where(ok & ~first, perm, rows)
    updated = jnp.where(first, emb, memory_momentum * emb[perm] + (1.0 - memory_momentum) * memory_in)
    memory = jnp.where(ok, updated, memory)
    logit_sum = logit_sum + jnp.where(ok, logit[perm], 0.0)
    object_sum = object_sum + jnp.where(ok, obj[perm], 0.0)
    return (memory, logit_sum, object_sum, count + ok.astype(jnp.int32)), perm

  carry = (state.memory, state.logit_sum, state.object_sum, state.count)
  (memory, logit_sum, object_sum, count), perm = jax.lax.scan(
      step, carry, (embeddings, logits, objectness, jnp.asarray(frame_valid, bool)))
  frames = jnp.arange(embeddings.shape[0])[:, None]
  aligned_masks = masks[frames, perm]
  positive = aligned_masks > 0
  aligned = {"perm": perm.astype(jnp.int32), "logits": logits[frames, perm], "objectness": objectness[frames, perm],
             "masks": aligned_masks,
             "positive_sum": jnp.sum(jnp.where(positive, jax.nn.sigmoid(aligned_masks), 0.0), axis=(2, 3)),
             "positive_count": jnp.sum(positive.astype(jnp.float32), axis=(2, 3))}
  return AssociationState(memory=memory, logit_sum=logit_sum, object_sum=object_sum, count=count), aligned


def matching_assign(cost: jax.Array, valid: jax.Array, matcher: str) -> jax.Array:
  """(1, Q, Q) cost -> (Q,) the frame query assigned to each memory slot (`dinoseg.matching.assign`)."""
  from dinoseg import matching  # noqa: PLC0415
  return matching.assign(cost, valid, matcher=matcher).pred_index[0]


@flax.struct.dataclass
class TrackSelection:
  """The K = detections_per_image (track, class) pairs of a video (sorted by video score, descending).

  Attributes:
    labels: (K,) int32 class index; track_index: (K,) int32 track (= frame-0 query); video_scores: (K,).
    class_logits: (Q, C+1) video class logits; objectness_logits: (Q, 2) mean objectness logits.
  """
  labels: jax.Array
  track_index: jax.Array
  video_scores: jax.Array
  class_logits: jax.Array
  objectness_logits: jax.Array


def select_tracks(state: AssociationState, *, detections_per_image: int,
                  class_logits: jax.Array | None = None) -> TrackSelection:
  """The top-k (track, class) pairs by sqrt(sigmoid(mean class logit) * p_object) (`video.video_instances`).

  Args:
    state: the state after the video's last window. class_logits: (Q, C+1) to use instead of the frame mean
      (the paper variant: the class head on `state.memory`).
  """
  denom = state.count.astype(jnp.float32)
  class_logits = state.logit_sum / denom if class_logits is None else class_logits
  objectness_logits = state.object_sum / denom
  scores = video_lib._scores(class_logits, objectness_logits)  # noqa: SLF001  (Q, C)
  num_classes = scores.shape[1]
  k = min(int(detections_per_image), scores.size)
  video_scores, flat = jax.lax.top_k(scores.reshape(-1), k)
  return TrackSelection(labels=(flat % num_classes).astype(jnp.int32),
                        track_index=(flat // num_classes).astype(jnp.int32), video_scores=video_scores,
                        class_logits=class_logits, objectness_logits=objectness_logits)


def frames_kept(selection: TrackSelection, logits: jax.Array, objectness: jax.Array, frame_valid: jax.Array,
                frame_blank_ratio: float) -> jax.Array:
  """(K, W) False where a frame of a selected pair is blanked (its own score < ratio x the video score) or
  is padding. logits (W, Q, C+1) / objectness (W, Q, 2): a window's aligned outputs."""
  frame_logit = logits[:, selection.track_index, selection.labels].T  # (K, W)
  frame_object = jax.nn.softmax(objectness[:, selection.track_index], axis=-1)[..., 0].T
  frame_scores = jnp.sqrt(jax.nn.sigmoid(frame_logit) * frame_object)
  return ~(frame_scores < selection.video_scores[:, None] * frame_blank_ratio) & frame_valid[None, :]


class StreamingAssociation:
  """The association of one video fed window by window (module docstring).

  Args:
    settings: video.VideoInferenceSettings. class_head: (Q, D) -> (Q, C+1) for class_source="memory".
    spill_dir: where the stride-4 mask logits of the windows are kept (a temporary directory by default,
      removed by `close`).
  """

  def __init__(self, settings: video_lib.VideoInferenceSettings = video_lib.VideoInferenceSettings(), *,
               class_head=None, spill_dir: str | os.PathLike | None = None):
    if settings.class_source == "memory" and class_head is None:
      raise UserValueError("class_source='memory' (the paper's variant) needs the class head")
    self.settings = settings
    self.class_head = class_head if settings.class_source == "memory" else None
    self._tmp = tempfile.TemporaryDirectory(prefix="ov2seg_masks_", dir=spill_dir)
    self._state = None
    self._windows = []  # per window: dict of host arrays (+ "masks_file") and the number of real frames
    self.selection = None
    self.scores = None
    self.frame_kept = None

  def close(self) -> None:
    self._windows = []
    self._tmp.cleanup()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  @property
  def num_frames(self) -> int:
    return sum(w["num_frames"] for w in self._windows)

  @property
  def perm(self) -> np.ndarray:
    """(T, Q) int32: the frame-t query aligned to track j (as `video.TrackAssociation.perm`)."""
    return np.concatenate([w["perm"] for w in self._windows])

  def add(self, outputs: Mapping[str, Any], num_frames: int | None = None) -> None:
    """Adds a window: `outputs` = `video.last_prediction` of the per-frame model for W frames (the first
    `num_frames` real, the rest padding)."""
    w, q, d = outputs["embeddings"].shape
    n = w if num_frames is None else int(num_frames)
    if not 0 < n <= w:
      raise ValueError(f"num_frames must be in [1, {w}], got {num_frames}")
    if self._state is None:
      self._state = AssociationState.empty(q, d, outputs["logits"].shape[-1])
    valid = np.arange(w) < n
    self._state, aligned = _associate_window_jit(
        self._state, outputs["embeddings"], outputs["logits"], outputs["objectness"], outputs["masks"], valid,
        memory_momentum=float(self.settings.memory_momentum), matcher=self.settings.matcher)
    host = {k: np.asarray(v)[:n] for k, v in aligned.items() if k not in ("masks", "logits")}
    files = {}
    for key in ("masks", "logits"):  # the large ones: (n, Q, h, w) and (n, Q, C+1), kept on disk
      files[key + "_file"] = pathlib.Path(self._tmp.name) / f"{key}_{len(self._windows):06d}.npy"
      np.save(files[key + "_file"], np.asarray(aligned[key])[:n])
    self._windows.append({**host, **files, "num_frames": n})

  def finish(self) -> TrackSelection:
    """Selects the instances and computes their scores (after the last window)."""
    if self._state is None:
      raise UserValueError("the video has no frames")
    class_logits = self.class_head(self._state.memory) if self.class_head is not None else None
    selection = _select_tracks_jit(self._state, detections_per_image=int(self.settings.detections_per_image),
                                   class_logits=class_logits)
    size = self._windows[0]["num_frames"]  # every window but the last, which is padded to it (one compile)
    kept = []
    for w in self._windows:
      n = w["num_frames"]
      logits = np.load(w["logits_file"], mmap_mode="r")[:, np.asarray(selection.track_index)]  # (n, K, C+1)
      objectness = w["objectness"][:, np.asarray(selection.track_index)]
      pad = ((0, size - n), (0, 0), (0, 0))
      k = _kept_fn(selection.labels, selection.video_scores, jnp.asarray(np.pad(logits, pad)),
                   jnp.asarray(np.pad(objectness, pad)), jnp.asarray(np.arange(size) < n),
                   float(self.settings.frame_blank_ratio))
      kept.append(np.asarray(k)[:, :n])
    self.frame_kept = np.concatenate(kept, axis=1)  # (K, T)
    track = np.asarray(selection.track_index)
    positive_sum = np.concatenate([w["positive_sum"] for w in self._windows])[:, track].T  # (K, T)
    positive_count = np.concatenate([w["positive_count"] for w in self._windows])[:, track].T
    inside = np.sum(np.where(self.frame_kept, positive_sum, np.float32(0)), axis=1, dtype=np.float32)
    count = np.sum(np.where(self.frame_kept, positive_count, np.float32(0)), axis=1, dtype=np.float32)
    mask_scores = inside / (count + np.float32(1e-6))
    self.selection = selection
    self.scores = (np.asarray(selection.video_scores) * mask_scores).astype(np.float32)
    return selection

  def mask_windows(self, padded_hw: tuple[int, int], valid_hw: Sequence[int], output_hw: Sequence[int]):
    """Yields (first frame index, (K, n, H, W) bool masks at the video's size) window by window (`finish`
    first): the selected tracks' stride-4 logits, blanked frames empty, resized like `video.masks_at_output_size`."""
    if self.selection is None:
      raise ValueError("call finish() first")
    h, w = (int(v) for v in output_hw)
    start = 0
    track = np.asarray(self.selection.track_index)
    size = self._windows[0]["num_frames"]  # every window but the last; the last is padded to it (one compile)
    for window in self._windows:
      n = window["num_frames"]
      logits = np.load(window["masks_file"], mmap_mode="r")[:, track]  # (n, K, h4, w4)
      kept = self.frame_kept[:, start:start + n]
      if n < size:
        logits = np.concatenate([logits, np.zeros((size - n, *logits.shape[1:]), logits.dtype)])
        kept = np.concatenate([kept, np.zeros((kept.shape[0], size - n), bool)], axis=1)
      masks = _resize_masks(jnp.asarray(logits), jnp.asarray(kept), tuple(padded_hw),
                            jnp.asarray(valid_hw, jnp.int32), jnp.asarray([h, w], jnp.int32), (h, w))
      yield start, np.asarray(masks)[:, :n]
      start += n


# Compiled once per shape and setting, shared by every video and predictor.
_associate_window_jit = jax.jit(associate_window, static_argnames=("memory_momentum", "matcher"))
_select_tracks_jit = jax.jit(select_tracks, static_argnames=("detections_per_image",))


@functools.partial(jax.jit, static_argnums=5)
def _kept_fn(labels, video_scores, logits, objectness, frame_valid, ratio):
  """`frames_kept` on a window's outputs already gathered at the selected tracks: logits (W, K, C+1),
  objectness (W, K, 2) -> (K, W)."""
  k = labels.shape[0]
  selection = TrackSelection(labels=labels, track_index=jnp.arange(k, dtype=jnp.int32), video_scores=video_scores,
                             class_logits=None, objectness_logits=None)
  return frames_kept(selection, logits, objectness, frame_valid, ratio)


@functools.partial(jax.jit, static_argnums=(2, 5))
def _resize_masks(logits, kept, padded_hw, valid_hw, output_hw, canvas_hw):
  """(n, K, h, w) logits, (K, n) kept -> (K, n, H, W) bool masks at the output size."""
  logits = jnp.where(kept.T[:, :, None, None], logits, jnp.asarray(-1, logits.dtype))
  return video_lib.masks_at_output_size(jnp.swapaxes(logits, 0, 1), padded_hw, valid_hw, output_hw, canvas_hw)


@functools.partial(jax.jit, static_argnums=0)
def frame_predictions(model, variables, frames, class_embeddings, valid_hw):
  """The per-frame model's final prediction (`video.last_prediction`) for (W, H, W', 3) frames. Jitted with the
  (hashable) Flax module static, so predictors and evaluations of equal models share the compilation."""
  return video_lib.last_prediction(model.apply(variables, frames, class_embeddings, valid_hw))


# ----------------------------------------------------------------------------- vocabulary


def parse_class_names(classes: str | Sequence[str]) -> list[str]:
  """"a, b,c" (or a list) -> ["a", "b", "c"]; an empty vocabulary is a UserValueError."""
  names = [n.strip() for n in (classes.split(",") if isinstance(classes, str) else classes)]
  names = [n for n in names if n]
  if not names:
    raise UserValueError(f"the vocabulary is empty: --classes={classes!r} names no class (give e.g. 'cat,dog')")
  return names


def resolve_vocabulary(config, classes: str | Sequence[str] | None = None,
                       vocabulary: str | os.PathLike | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
  """(C, E) class embeddings and C names from the options and `config.vocabulary` (module docstring).

  Raises:
    UserValueError / UserFileNotFoundError: an empty vocabulary, a file of the wrong width or class count,
      names too long for the CLIP context, no vocabulary at all, --classes without config.vocabulary.clip_file.
  """
  from dinoseg.models.ov2seg import vocabulary as vocab_lib  # noqa: PLC0415
  dim = int(config.model.classifier.embed_dim)
  settings = dict(config.get("vocabulary") or {})
  names = parse_class_names(classes) if classes is not None else None
  file = vocabulary or (settings.get("file") if names is None else None)
  if file:
    embeddings = vocab_lib.read_class_embeddings(file, dim=dim)
    if names is not None and len(names) != len(embeddings):
      raise UserValueError(f"--classes names {len(names)} classes but the vocabulary file {file} holds "
                           f"{len(embeddings)} class embeddings")
    if names is None and settings.get("names"):
      listed = settings["names"]
      names = ([str(n) for n in listed] if isinstance(listed, (list, tuple)) and all(isinstance(n, str) for n in listed)
               else vocab_lib.category_names(listed))
      if len(names) != len(embeddings):
        raise UserValueError(f"config.vocabulary.names ({settings['names']}) lists {len(names)} categories but "
                             f"{file} holds {len(embeddings)} class embeddings")
    names = names or [f"class_{i}" for i in range(len(embeddings))]
    return embeddings, tuple(names)
  if names is None:
    raise UserValueError("no vocabulary: give --classes='a,b,c' (CLIP text embeddings) or --vocabulary=FILE.npy "
                         "(or set config.vocabulary.file)")
  clip_file = settings.get("clip_file")
  if not clip_file:
    raise UserValueError("--classes needs the CLIP text tower's weights: set --config.vocabulary.clip_file=FILE "
                         "(an OpenAI CLIP ViT-B/16 state dict), or give --vocabulary=FILE.npy")
  templates = tuple(settings.get("templates") or ()) or vocab_lib.VILD_TEMPLATES
  overrides = dict(settings.get("clip_overrides") or {})
  embeddings = vocab_lib.class_embeddings_from_names(names, clip_file, templates=templates,
                                                     clip_name=str(settings.get("clip_name") or "clip_vitb16_text"),
                                                     clip_overrides=overrides)
  if embeddings.shape[1] != dim:
    raise UserValueError(f"the CLIP text tower of {clip_file} gives {embeddings.shape[1]}-d embeddings but the "
                         f"model's classifier takes {dim}-d ones (config.model.classifier.embed_dim)")
  return embeddings, tuple(names)


def class_head_fn(config, variables: Mapping, class_embeddings) -> Any:
  """(Q, D) memory -> (Q, C+1) class logits with the model's zero-shot classifier (the paper variant)."""
  from dinoseg.models.ov2seg.decoder import ZeroShotClassifier  # noqa: PLC0415
  c = config.model.classifier
  head = ZeroShotClassifier(int(c.embed_dim), float(c.temperature))
  params = {"params": variables["params"]["predictor"]["class_embed"]}
  embeddings = jnp.asarray(class_embeddings)
  return lambda memory: head.apply(params, memory[None], embeddings)[0]


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass
class VideoSegmentation:
  """One video's instances (K = detections_per_image (track, class) pairs, by score).

  Attributes:
    video_id, name, frame_names (T), height, width: the video.
    scores (K,) float32; labels (K,) int32 (0-based); names (K,); track_index (K,) int32 (track = frame-0
    query, the colour of its overlays); frame_kept (K, T) bool; segmentations: K lists of T compressed RLEs
    {"size": [H, W], "counts": str} at the video's size; class_names: the vocabulary.
  """
  video_id: int
  name: str
  frame_names: list[str]
  height: int
  width: int
  scores: np.ndarray
  labels: np.ndarray
  names: tuple[str, ...]
  track_index: np.ndarray
  frame_kept: np.ndarray
  segmentations: list[list[dict]]
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.scores)

  def to_results(self, category_ids: Sequence[int] | None = None) -> list[dict]:
    """The LV-VIS / YouTube-VIS results entries (category id = label + 1 unless `category_ids`)."""
    return [{"video_id": int(self.video_id),
             "category_id": int(category_ids[lab] if category_ids is not None else lab + 1),
             "score": float(s), "segmentations": segs}
            for s, lab, segs in zip(self.scores, self.labels, self.segmentations)]

  def frame_masks(self, frame: int, keep: np.ndarray | None = None) -> np.ndarray:
    """(K', H, W) bool masks of frame `frame` for the instances in `keep` (bool (K,); all when None)."""
    from dinoseg.ops.masks import rle_decode  # noqa: PLC0415
    rows = range(len(self)) if keep is None else np.flatnonzero(keep)
    masks = [rle_decode(self.segmentations[i][frame]) for i in rows]
    return np.stack(masks).astype(bool) if masks else np.zeros((0, self.height, self.width), bool)


def video_results(assoc: StreamingAssociation, *, video_id: int, name: str, frame_names: list[str],
                  padded_hw: tuple[int, int], valid_hw: Sequence[int], output_hw: Sequence[int],
                  class_names: Sequence[str]) -> VideoSegmentation:
  """`assoc.finish()`, then the selected masks resized and RLE-encoded window by window."""
  from dinoseg.ops.masks import rle_encode  # noqa: PLC0415
  selection = assoc.finish()
  labels = np.asarray(selection.labels).astype(np.int32)
  segmentations = [[] for _ in labels]
  for _, masks in assoc.mask_windows(padded_hw, valid_hw, output_hw):
    for i in range(masks.shape[0]):
      segmentations[i].extend(rle_encode(frame) for frame in masks[i])
  return VideoSegmentation(
      video_id=int(video_id), name=name, frame_names=list(frame_names), height=int(output_hw[0]),
      width=int(output_hw[1]), scores=assoc.scores, labels=labels, names=tuple(class_names[i] for i in labels),
      track_index=np.asarray(selection.track_index).astype(np.int32), frame_kept=assoc.frame_kept,
      segmentations=segmentations, class_names=tuple(class_names))


def track_color(track: int) -> tuple[int, int, int]:
  """The colour of a track in every frame of its video (`dinoseg.predict.color` of the track index)."""
  return predict_lib.color(int(track))


def draw_tracks(image: np.ndarray, masks: np.ndarray, tracks: Sequence[int], texts: Sequence[str],
                alpha: float = 0.5):
  """Overlay of masks (K, H, W) on an (H, W, 3) uint8 frame, mask k in `track_color(tracks[k])`, with texts[k]
  at its top-left pixel. Returns a PIL image."""
  from PIL import Image, ImageDraw  # noqa: PLC0415
  out = np.asarray(image).astype(np.float32)
  for mask, track in zip(masks, tracks):
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(track_color(track), np.float32)
  pil = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(pil)
  for mask, track, text in zip(masks, tracks, texts):
    if not text or not mask.any():
      continue
    ys, xs = np.nonzero(mask)
    x, y = float(xs.min()), float(ys.min())
    draw.rectangle([x - 1, y, x + draw.textlength(text) + 1, y + 11], fill=(0, 0, 0))
    draw.text((x, y), text, fill=track_color(track))
  return pil


def video_output_paths(out_dir: str | os.PathLike, name: str) -> dict[str, pathlib.Path]:
  """Where the outputs of the video named `name` go: "frames" (a directory of <frame name>.png), "gif"."""
  out_dir = pathlib.Path(out_dir)
  return {"frames": out_dir / name, "gif": out_dir / f"{name}.gif"}


def check_video_outputs(videos: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> None:
  """UserValueError when an output of `videos` (video files or frames directories) would land on an input:
  a video's overlay directory is an input frames directory (or holds input frames), or a GIF / results file
  is an input file."""
  inputs = {pathlib.Path(v).resolve() for v in videos}
  for video in videos:
    paths = video_output_paths(out_dir, pathlib.Path(video).name)
    planned = [paths["gif"], pathlib.Path(out_dir) / RESULTS_FILE, pathlib.Path(out_dir) / VIDEOS_FILE]
    frames_dir = paths["frames"].resolve()
    clash = next((v for v in inputs if v == frames_dir or frames_dir in v.parents or v in
                  {p.resolve() for p in planned}), None)
    if clash is not None:
      raise UserValueError(f"--output={out_dir} would write the outputs of {pathlib.Path(video).name} onto the "
                           f"input {clash}; choose another --output directory")


# ----------------------------------------------------------------------------- the predictor


class OV2SegVideoPredictor(predict_lib.Predictor):
  """OV2Seg on videos (module docstring). `predict(video)` -> VideoSegmentation; `write` / `finish` write
  the overlays, the GIF and results.json.

  Args:
    config: an OV2Seg config (model, test, vocabulary). variables: the model's Flax variables.
    classes: "a,b,c" or a list of names; vocabulary: a (C, E) .npy file (see `resolve_vocabulary`).
    class_source: "frame_mean" (released) or "memory" (the paper's variant); default config.test.class_source.
    window_size: frames per forward pass (default config.test.window_size).
  """
  input_kind = "video"

  def __init__(self, config, variables: Mapping, classes: str | Sequence[str] | None = None,
               vocabulary: str | os.PathLike | None = None, class_source: str | None = None,
               window_size: int | None = None):
    from dinoseg.models.ov2seg.model import build_model  # noqa: PLC0415
    embeddings, names = resolve_vocabulary(config, classes, vocabulary)
    super().__init__(config, len(names))
    self.class_names = tuple(names)
    test = dict(config.get("test") or {})
    if class_source is not None:
      test["class_source"] = class_source
    if window_size is not None:
      test["window_size"] = window_size
    self.settings = video_lib.VideoInferenceSettings.from_config(test)
    self.min_size = int(test.get("min_size", 480))
    self.max_size = int(test.get("max_size", 1333))
    self.size_divisibility = int(test.get("size_divisibility", 32))
    self.model = build_model(config.model)
    self.variables = jax.device_put(dict(variables))
    self.class_embeddings = jnp.asarray(embeddings)
    self._results: list[dict] = []
    self._videos: list[dict] = []

  def _forward(self, padded_hw):
    del padded_hw  # `frame_predictions` compiles once per model, input shape and vocabulary size
    return functools.partial(frame_predictions, self.model)

  def geometry(self, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized (h, w), padded canvas (Hp, Wp)) of frames of `size` (ResizeShortestEdge, pad to 32)."""
    nh, nw = predict_lib.resize_shortest_edge(size[0], size[1], self.min_size, self.max_size)
    d = self.size_divisibility
    return (nh, nw), (-(-nh // d) * d, -(-nw // d) * d)

  def predict(self, video, video_id: int | None = None, score_threshold: float | None = None) -> VideoSegmentation:
    """Segments and tracks a video: a frames directory, a video file (path) or a `video_io.Video`."""
    from PIL import Image  # noqa: PLC0415
    if not isinstance(video, video_io.Video):
      video = video_io.open_video(video)
    (nh, nw), padded_hw = self.geometry(video.size)
    window = int(self.settings.window_size)
    class_head = (class_head_fn(self.config, self.variables, self.class_embeddings)
                  if self.settings.class_source == "memory" else None)
    forward = self._forward(padded_hw)
    valid_hw = np.tile(np.asarray([[nh, nw]], np.int32), (window, 1))
    with StreamingAssociation(self.settings, class_head=class_head) as assoc:
      for _, _, frames in video.windows(window):
        n = frames.shape[0]
        canvas = np.zeros((window, *padded_hw, 3), np.float32)
        for i, frame in enumerate(frames):
          canvas[i, :nh, :nw] = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BILINEAR), np.float32)
        if n < window:  # pad with copies of the last frame (marked invalid), as run_in_windows does
          canvas[n:] = canvas[n - 1]
        assoc.add(forward(self.variables, canvas, self.class_embeddings, valid_hw), n)
      result = video_results(assoc, video_id=video_id if video_id is not None else len(self._videos) + 1,
                             name=video.name, frame_names=video.frame_names, padded_hw=padded_hw,
                             valid_hw=(nh, nw), output_hw=video.size, class_names=self.class_names)
    if score_threshold is not None:
      keep = result.scores >= score_threshold
      result = dataclasses.replace(
          result, scores=result.scores[keep], labels=result.labels[keep], track_index=result.track_index[keep],
          names=tuple(n for n, k in zip(result.names, keep) if k), frame_kept=result.frame_kept[keep],
          segmentations=[s for s, k in zip(result.segmentations, keep) if k])
    return result

  def write(self, result: VideoSegmentation, video, out_dir: str | os.PathLike, name: str | None = None,
            score_threshold: float = 0.5) -> list[pathlib.Path]:
    """Writes `<out>/<name>/<frame>.png` overlays and `<out>/<name>.gif` (instances scoring >= `score_threshold`,
    one per track: its best-scoring class), and collects every result (`finish`). `video` is read again, frame
    by frame."""
    from PIL import Image  # noqa: PLC0415
    if not isinstance(video, video_io.Video):
      video = video_io.open_video(video)
    name = name or video.name
    paths = video_output_paths(out_dir, name)
    paths["frames"].mkdir(parents=True, exist_ok=True)
    keep = ~(result.scores < score_threshold)
    # One label per track on the overlays: a track kept under several classes shows its best-scoring one.
    order = np.argsort(-np.asarray(result.scores), kind="stable")
    _, first = np.unique(np.asarray(result.track_index)[order], return_index=True)
    best = np.zeros_like(keep)
    best[order[first]] = True
    keep &= best
    tracks = result.track_index[keep]
    texts = [f"{n} {s:.2f}" for n, s in zip(np.asarray(result.names, object)[keep], result.scores[keep])]
    step = max(1, -(-video.num_frames // GIF_MAX_FRAMES))
    gif_frames = []
    written = []
    for index, frame_name, frame in video.frames():
      pil = draw_tracks(frame, result.frame_masks(index, keep), tracks, texts)
      path = paths["frames"] / f"{frame_name}.png"
      pil.save(path)
      written.append(path)
      if index % step == 0:
        scale = min(1.0, GIF_MAX_WIDTH / pil.width)
        gif_frames.append(pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))),
                                     Image.BILINEAR) if scale < 1 else pil)
    gif_frames[0].save(paths["gif"], save_all=True, append_images=gif_frames[1:], duration=100 * step, loop=0)
    self._results.extend(result.to_results())
    self._videos.append({"id": result.video_id, "name": name, "frames": result.frame_names,
                         "height": result.height, "width": result.width})
    return [paths["gif"], paths["frames"]]

  def finish(self, out_dir: str | os.PathLike) -> pathlib.Path | None:
    """Writes results.json (LV-VIS server format) and videos.json (what each video id is)."""
    if not self._videos:
      return None
    out_dir = pathlib.Path(out_dir)
    (out_dir / VIDEOS_FILE).write_text(json.dumps(self._videos))
    path = out_dir / RESULTS_FILE
    path.write_text(json.dumps(self._results))
    return path


def summarize(result: VideoSegmentation, score_threshold: float = 0.5) -> str:
  """One line for the console: instances drawn and their tracks."""
  drawn = int((result.scores >= score_threshold).sum())
  if not len(result):
    return f"{len(result.frame_names)} frames, no instances"
  if not drawn:
    return (f"{len(result.frame_names)} frames, 0 of {len(result)} instances drawn: the best score "
            f"{result.scores.max():.3f} is below --score-threshold {score_threshold:g}")
  shown = sorted({f"{n} (track {t})" for n, t, s in zip(result.names, result.track_index, result.scores)
                  if s >= score_threshold})
  return (f"{len(result.frame_names)} frames, {drawn} of {len(result)} instances drawn: {', '.join(shown[:6])}"
          + (", ..." if len(shown) > 6 else ""))


__all__ = ["AssociationState", "associate_window", "TrackSelection", "select_tracks", "frames_kept",
           "StreamingAssociation", "frame_predictions", "parse_class_names", "resolve_vocabulary", "class_head_fn",
           "VideoSegmentation", "video_results", "track_color", "draw_tracks", "video_output_paths", "check_video_outputs",
           "OV2SegVideoPredictor", "summarize", "RESULTS_FILE", "VIDEOS_FILE"]
