"""OV2Seg video inference on device: windows of frames, track association, video scoring, resizing.

The released OV2Seg has no memory module inside the network (shared/reference/ov2seg.md section 4): the
per-frame model runs on every frame, and `OV2SegVideo.post_processing` / `instance_inference` associate and
score its outputs in a host loop (scipy Hungarian per frame). This module is that post-processing as one
jittable function with static shapes (T frames is static per call; optional padding frames at the end are
marked by `frame_valid`).

For a video of T frames, Q queries, C classes (+1 background column), embedding width D, stride-4 masks
(h, w):

1. `associate` (one `lax.scan` over frames 1..T-1): the memory starts as frame 0's query embeddings
   (frame 0 fixes the track order). At frame t the cost is 1 - cos(q_t[i], mem[j]) (Q x Q) and the
   Hungarian assignment (`dinoseg.matching.assign`, exact, on device) gives for every memory slot j the
   frame-t query perm[t, j]. The memory becomes `momentum * q_t[perm_t] + (1 - momentum) * mem` (0.7 / 0.3,
   no normalisation, no objectness weighting). Aligned class and objectness logits are summed over frames
   in frame order and divided by the number of frames (the reference averages logits, not probabilities).
2. `video_instances`: score(q, c) = sqrt(sigmoid(mean class logit)[q, c] * softmax(mean objectness)[q, 0])
   over the C real classes; the top `detections_per_image` (50) (query, class) pairs (a track may appear
   with several classes); frame blanking: in frame t the mask logits of pair (q, c) become -1 when
   sqrt(sigmoid(class_t[q, c]) * p_object,t[q]) < `frame_blank_ratio` (0.1) x the video score; final
   score = video score x the mean sigmoid of the (blanked) mask logits over all pixels > 0 of all frames
   (stride 4, padding included, denominator + 1e-6).
3. Masks: bilinear to the padded input size, crop to the valid image size, bilinear to the output size,
   > 0 (detectron2 `sem_seg_postprocess` as LV-VIS's evaluator applies it), composed into one matrix per
   axis (`dinoseg.models.maskdino.postprocess.masks_to_output`). `masks_at_output_size` can also be called on
   chunks of frames so a long video's full-size masks never need to be in memory at once.

Variant (`class_source="memory"`, not the released code): the paper describes the class head applied to the
aggregated memory query; the aggregation's exact form is not published (unverified), so this variant keeps
the released memory update and applies a given class head to the memory after the last frame to get the
video class logits. Objectness is still averaged over frames and frame blanking still uses the per-frame
logits.

`run_in_windows` runs any per-frame function over a video in windows of `window_size` frames (10 in the
reference's `run_window_inference`), each window padded to the full size so the function compiles once.

Top-k order: the reference's `topk(sorted=False)` order is unspecified; here instances come sorted by
video score (descending; `lax.top_k`). Compare instances as (track, class) sets.
"""
import dataclasses
from typing import Any, Callable, Iterable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dinoseg import matching
from dinoseg.errors import UserValueError

_HIGHEST = jax.lax.Precision.HIGHEST

CLASS_SOURCES = ("frame_mean", "memory")


@dataclasses.dataclass(frozen=True)
class VideoInferenceSettings:
  """Settings of the video post-processing (the reference's values are the defaults).

  Attributes:
    detections_per_image: top-k (query, class) pairs kept per video (TEST.DETECTIONS_PER_IMAGE, 50).
    memory_momentum: weight of the current frame's queries in the memory update (0.7).
    frame_blank_ratio: a frame's mask is blanked when its own score < ratio x the video score (0.1).
    class_source: "frame_mean" (released: mean of the per-frame class logits) or "memory" (paper variant:
      a class head applied to the final memory query; needs `class_head`).
    matcher: a `dinoseg.matching.MATCHERS` name ("hungarian_device" on device; "scipy_host" for comparison).
    window_size: frames per forward pass of the per-frame model (`run_in_windows`, 10).
  """
  detections_per_image: int = 50
  memory_momentum: float = 0.7
  frame_blank_ratio: float = 0.1
  class_source: str = "frame_mean"
  matcher: str = "hungarian_device"
  window_size: int = 10

  def __post_init__(self):
    if int(self.detections_per_image) < 1:
      raise UserValueError(f"detections_per_image must be >= 1, got {self.detections_per_image}")
    if not 0.0 <= float(self.memory_momentum) <= 1.0:
      raise UserValueError(f"memory_momentum must be in [0, 1], got {self.memory_momentum}")
    if float(self.frame_blank_ratio) < 0.0:
      raise UserValueError(f"frame_blank_ratio must be >= 0, got {self.frame_blank_ratio}")
    if self.class_source not in CLASS_SOURCES:
      raise UserValueError(f"class_source must be one of {CLASS_SOURCES}, got {self.class_source!r}")
    if self.matcher not in matching.MATCHERS:
      raise UserValueError(f"matcher must be one of {tuple(matching.MATCHERS)}, got {self.matcher!r}")
    if int(self.window_size) < 1:
      raise UserValueError(f"window_size must be >= 1, got {self.window_size}")

  @classmethod
  def from_config(cls, test: Mapping[str, Any] | None) -> "VideoInferenceSettings":
    """From an OV2Seg config's `test` group (dinoseg.models.ov2seg.defaults.test_config); missing keys
    keep their defaults."""
    test = dict(test or {})
    keys = {"detections_per_image": "detections_per_image", "memory_momentum": "memory_momentum",
            "frame_blank_ratio": "frame_blank_ratio", "class_source": "class_source", "matcher": "matcher",
            "window_size": "window_size"}
    return cls(**{field: test[key] for field, key in keys.items() if key in test})


@flax.struct.dataclass
class TrackAssociation:
  """Result of `associate` (T frames, Q tracks = memory slots, C + 1 classes, D embedding width).

  Attributes:
    perm: (T, Q) int32, the frame-t query aligned to track j (perm[0] = arange(Q)); arange on padding frames.
    class_logits: (Q, C + 1) video class logits per track (mean over valid frames of the aligned logits, or
      the class head on the final memory for class_source="memory").
    objectness_logits: (Q, 2) mean over valid frames of the aligned objectness logits.
    memory: (Q, D) the memory after the last valid frame.
    num_frames: () int32 number of valid frames.
  """
  perm: jax.Array
  class_logits: jax.Array
  objectness_logits: jax.Array
  memory: jax.Array
  num_frames: jax.Array


@flax.struct.dataclass
class VideoInstances:
  """The K = detections_per_image instances of a video (sorted by video score, descending).

  Attributes:
    scores: (K,) final scores (video score x mask score).
    labels: (K,) int32 class index in [0, C) (0-based; LV-VIS category id = label + 1).
    track_index: (K,) int32 track (memory slot = frame-0 query) of each instance.
    video_scores: (K,) sqrt(sigmoid(class) * p_object) before the mask score.
    frame_kept: (K, T) bool, False where the frame was blanked (or is a padding frame).
    mask_logits: (K, T, h, w) stride-4 mask logits after blanking (-1 in blanked and padding frames).
    masks: (K, T, Ho, Wo) bool masks at the output size on a static canvas (None unless requested).
    association: the TrackAssociation they come from.
  """
  scores: jax.Array
  labels: jax.Array
  track_index: jax.Array
  video_scores: jax.Array
  frame_kept: jax.Array
  mask_logits: jax.Array
  masks: Any
  association: TrackAssociation


def last_prediction(outputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The final decoder prediction of the per-frame model's outputs, frames first.

  Args:
    outputs: {"logits": (P, B, Q, C+1), "objectness": (P, B, Q, 2), "masks": (P, B, Q, h, w),
      "embeddings": (B, Q, D)} (P predictions of B frames; other keys are dropped).
  Returns:
    {"logits": (B, Q, C+1), "objectness": (B, Q, 2), "masks": (B, Q, h, w), "embeddings": (B, Q, D)}.
  """
  return {"logits": outputs["logits"][-1], "objectness": outputs["objectness"][-1],
          "masks": outputs["masks"][-1], "embeddings": outputs["embeddings"]}


def _normalize_rows(x: jax.Array) -> jax.Array:
  # Plain x / ||x|| like the reference's match_from_embds (no epsilon).
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _frame_valid(frame_valid, num_frames: int) -> jax.Array:
  if frame_valid is None:
    return jnp.ones((num_frames,), bool)
  frame_valid = jnp.asarray(frame_valid, bool)
  if frame_valid.shape != (num_frames,):
    raise ValueError(f"frame_valid must have shape ({num_frames},), got {frame_valid.shape}")
  return frame_valid.at[0].set(True)  # frame 0 always defines the tracks


def associate(embeddings: jax.Array, logits: jax.Array, objectness: jax.Array, *,
              frame_valid: jax.Array | None = None, memory_momentum: float = 0.7,
              matcher: str = "hungarian_device",
              class_head: Callable[[jax.Array], jax.Array] | None = None) -> TrackAssociation:
  """Aligns every frame's queries to the memory (the reference's `post_processing`), on device.

  Args:
    embeddings: (T, Q, D) per-frame query embeddings (the decoder-normed queries, `pred_embds`).
    logits: (T, Q, C+1) per-frame class logits; objectness: (T, Q, 2) per-frame objectness logits.
    frame_valid: optional (T,) bool; False marks padding frames (at the end): they neither update the
      memory nor enter the means. Frame 0 always counts.
    memory_momentum: weight of the current frame in the memory update (0.7).
    matcher: "hungarian_device" (exact, on device) or "scipy_host" (`dinoseg.matching`).
    class_head: if given, `class_logits` = class_head(final memory (Q, D)) -> (Q, C+1) (paper variant)
      instead of the frame mean.
  Returns:
    TrackAssociation.
  """
  t, q, _ = embeddings.shape
  if logits.shape[:2] != (t, q) or objectness.shape[:2] != (t, q):
    raise ValueError(f"logits {logits.shape} / objectness {objectness.shape} do not match embeddings "
                     f"{embeddings.shape} in (T, Q)")
  valid = _frame_valid(frame_valid, t)
  momentum = memory_momentum
  all_targets = jnp.ones((1, q), bool)
  rows = jnp.arange(q, dtype=jnp.int32)

  def step(carry, frame):
    memory, logit_sum, object_sum = carry
    emb, logit, obj, ok = frame
    cos = jnp.matmul(_normalize_rows(emb), _normalize_rows(memory).T, precision=_HIGHEST)  # (Q cur, Q mem)
    perm = matching.assign((1.0 - cos)[None], all_targets, matcher=matcher).pred_index[0]
    perm = jnp.where(ok, perm, rows)
    updated = momentum * emb[perm] + (1.0 - momentum) * memory
    memory = jnp.where(ok, updated, memory)
    logit_sum = logit_sum + jnp.where(ok, logit[perm], 0.0)
    object_sum = object_sum + jnp.where(ok, obj[perm], 0.0)
    return (memory, logit_sum, object_sum), perm

  init = (embeddings[0], logits[0], objectness[0])
  (memory, logit_sum, object_sum), perms = jax.lax.scan(
      step, init, (embeddings[1:], logits[1:], objectness[1:], valid[1:]))
  perm = jnp.concatenate([rows[None], perms.astype(jnp.int32)], axis=0)
  count = jnp.sum(valid).astype(jnp.int32)
  denom = count.astype(logit_sum.dtype)
  class_logits = logit_sum / denom if class_head is None else class_head(memory)
  if class_logits.shape != logits.shape[1:]:
    raise ValueError(f"class_head must map the memory {memory.shape} to {logits.shape[1:]} class logits, "
                     f"got {class_logits.shape}")
  return TrackAssociation(perm=perm, class_logits=class_logits, objectness_logits=object_sum / denom,
                          memory=memory, num_frames=count)


def _scores(class_logits: jax.Array, objectness_logits: jax.Array) -> jax.Array:
  """(..., C+1) class logits, (..., 2) objectness logits -> (..., C) sqrt(sigmoid * p_object)."""
  p_object = jax.nn.softmax(objectness_logits, axis=-1)[..., :1]
  return jnp.sqrt(jax.nn.sigmoid(class_logits[..., :-1]) * p_object)


def video_instances(logits: jax.Array, objectness: jax.Array, masks: jax.Array, embeddings: jax.Array, *,
                    settings: VideoInferenceSettings = VideoInferenceSettings(),
                    frame_valid: jax.Array | None = None,
                    class_head: Callable[[jax.Array], jax.Array] | None = None,
                    padded_hw: tuple[int, int] | None = None, valid_hw: jax.Array | None = None,
                    output_hw: jax.Array | None = None,
                    canvas_hw: tuple[int, int] | None = None) -> VideoInstances:
  """Everything the reference's video inference does after the per-frame model (jit-able).

  Args:
    logits: (T, Q, C+1) class logits of the final prediction (background column last).
    objectness: (T, Q, 2) objectness logits (object, no-object).
    masks: (T, Q, h, w) stride-4 mask logits on the padded input canvas.
    embeddings: (T, Q, D) query embeddings.
    settings: VideoInferenceSettings (detections_per_image, momentum, blank ratio, class source, matcher).
    frame_valid: optional (T,) bool, False for padding frames at the end (see `associate`).
    class_head: (Q, D) -> (Q, C+1) class logits; required for settings.class_source == "memory".
    padded_hw: static (Hp, Wp) size of the padded input canvas the masks were predicted on (h*4, w*4 by
      default). valid_hw: (2,) int, the resized image inside it. output_hw: (2,) int, the output size.
    canvas_hw: static (Ho, Wo) output canvas (>= output_hw); when given, `masks` (K, T, Ho, Wo) bool is
      returned, else None.
  Returns:
    VideoInstances.
  """
  t, q, c1 = logits.shape
  num_classes = c1 - 1
  if settings.class_source == "memory" and class_head is None:
    raise UserValueError("class_source='memory' (the paper's variant) needs the class head: pass class_head")
  valid = _frame_valid(frame_valid, t)
  assoc = associate(embeddings, logits, objectness, frame_valid=valid, memory_momentum=settings.memory_momentum,
                    matcher=settings.matcher, class_head=class_head if settings.class_source == "memory" else None)
  scores = _scores(assoc.class_logits, assoc.objectness_logits)  # (Q, C)
  k = min(int(settings.detections_per_image), q * num_classes)
  video_scores, flat = jax.lax.top_k(scores.reshape(-1), k)
  track = (flat // num_classes).astype(jnp.int32)
  labels = (flat % num_classes).astype(jnp.int32)

  # Per-frame queries of the selected tracks: (K, T).
  frame_query = assoc.perm[:, track].T
  frames = jnp.arange(t)[None, :]
  frame_logit = logits[frames, frame_query, labels[:, None]]  # (K, T)
  frame_objectness = objectness[frames, frame_query]  # (K, T, 2)
  frame_scores = jnp.sqrt(jax.nn.sigmoid(frame_logit) * jax.nn.softmax(frame_objectness, axis=-1)[..., 0])
  kept = ~(frame_scores < video_scores[:, None] * settings.frame_blank_ratio) & valid[None, :]
  mask_logits = masks[frames, frame_query]  # (K, T, h, w)
  mask_logits = jnp.where(kept[:, :, None, None], mask_logits, jnp.asarray(-1, mask_logits.dtype))

  positive = (mask_logits > 0).astype(jnp.float32)
  inside = jnp.sum(jax.nn.sigmoid(mask_logits.astype(jnp.float32)) * positive, axis=(1, 2, 3))
  mask_scores = inside / (jnp.sum(positive, axis=(1, 2, 3)) + 1e-6)

  out_masks = None
  if canvas_hw is not None:
    if valid_hw is None or output_hw is None:
      raise ValueError("canvas_hw needs valid_hw and output_hw")
    h, w = masks.shape[-2:]
    padded = tuple(padded_hw) if padded_hw is not None else (4 * h, 4 * w)
    out_masks = masks_at_output_size(mask_logits, padded, valid_hw, output_hw, canvas_hw)
  return VideoInstances(scores=video_scores * mask_scores, labels=labels, track_index=track,
                        video_scores=video_scores, frame_kept=kept, mask_logits=mask_logits, masks=out_masks,
                        association=assoc)


def masks_at_output_size(mask_logits: jax.Array, padded_hw: tuple[int, int], valid_hw: jax.Array,
                         output_hw: jax.Array, canvas_hw: tuple[int, int], *, threshold: bool = True) -> jax.Array:
  """Stride-4 mask logits -> masks at the output size (the evaluator's `sem_seg_postprocess`, then > 0).

  Bilinear (align_corners=False) to the padded input size, crop to `valid_hw`, bilinear to `output_hw`; the
  result sits at the top-left of the static (Ho, Wo) canvas (outside output_hw: padding, False / 0).
  Works on any leading axes, so a long video can be resized a chunk of frames at a time.

  Args:
    mask_logits: (..., h, w). padded_hw: static (Hp, Wp). valid_hw, output_hw: (2,) int (traced is fine).
    canvas_hw: static (Ho, Wo). threshold: True -> bool masks (logit > 0), False -> float32 logits (0
      outside output_hw).
  Returns:
    (..., Ho, Wo) bool (or float32).
  """
  from dinoseg.models.maskdino.postprocess import masks_to_output  # noqa: PLC0415
  lead, (h, w) = mask_logits.shape[:-2], mask_logits.shape[-2:]
  flat = mask_logits.reshape(1, -1, h, w)
  out = masks_to_output(flat, tuple(padded_hw), jnp.asarray(valid_hw)[None], jnp.asarray(output_hw)[None],
                        tuple(canvas_hw))[0]
  out = out.reshape(*lead, *canvas_hw)
  rows = jnp.arange(canvas_hw[0])[:, None] < jnp.asarray(output_hw)[0]
  cols = jnp.arange(canvas_hw[1])[None, :] < jnp.asarray(output_hw)[1]
  return (out > 0) & rows & cols if threshold else jnp.where(rows & cols, out, 0.0)


def to_results(instances: VideoInstances, *, video_id: int, num_frames: int, output_hw: tuple[int, int],
               category_ids=None) -> list[dict]:
  """One video's instances in the LV-VIS / YouTube-VIS results format (`dinoseg.evaluation.video_ap`).

  Args:
    instances: VideoInstances with `masks` (made with canvas_hw), on the host or the device.
    video_id: the dataset's video id. num_frames: the video's real frame count (padding frames dropped).
    output_hw: (height, width) of the video (the canvas is cropped to it).
    category_ids: the dataset category id of each label (None: label + 1, LV-VIS / YouTube-VIS ids 1..C).
  Returns:
    [{"video_id", "category_id", "score", "segmentations": num_frames compressed RLEs}], instance order.
  """
  from dinoseg.evaluation.video_ap import instances_to_video_json  # noqa: PLC0415
  if instances.masks is None:
    raise ValueError("instances have no output-size masks: call video_instances with canvas_hw")
  height, width = (int(v) for v in output_hw)
  masks = np.asarray(instances.masks)[:, :num_frames, :height, :width]
  labels = np.asarray(instances.labels)
  if category_ids is None:
    category_ids = range(1, int(np.asarray(instances.association.class_logits).shape[-1]))
  return instances_to_video_json(video_id, np.asarray(instances.scores), labels, masks, category_ids=category_ids)


def run_in_windows(frame_fn: Callable[[Any], Any], frames: Any, window_size: int = 10,
                   frame_axes: Any = 0) -> Any:
  """Runs a per-frame function over a video in windows of frames (the reference's run_window_inference).

  Every window is padded to `window_size` frames (with copies of its last frame) so a jitted `frame_fn`
  compiles once; the padded rows are cut off again. Outputs are concatenated along their frame axis.

  Args:
    frame_fn: (W, ...) frames -> a pytree of arrays with W along `frame_axes` (e.g. the per-frame model
      followed by `last_prediction`, which drops the auxiliary predictions like the reference).
    frames: (T, ...) array, or any iterable of (...) frames (read window by window, so a long video need not
      be in memory at once).
    window_size: frames per call (10).
    frame_axes: int, or a pytree prefix of the output giving each leaf's frame axis (e.g. {"logits": 1,
      "objectness": 1, "masks": 1, "embeddings": 0} for the raw per-frame model outputs).
  Returns:
    frame_fn's pytree with T along each frame axis (NumPy arrays).
  Raises:
    UserValueError: window_size < 1 or an empty video.
  """
  if int(window_size) < 1:
    raise UserValueError(f"window_size must be >= 1, got {window_size}")
  window_size = int(window_size)

  def windows(source: Iterable) -> Iterable[tuple[np.ndarray, int]]:
    if hasattr(source, "shape"):
      n = int(source.shape[0])
      for start in range(0, n, window_size):
        chunk = np.asarray(source[start:start + window_size])
        yield chunk, chunk.shape[0]
      return
    buffer = []
    for frame in source:
      buffer.append(np.asarray(frame))
      if len(buffer) == window_size:
        yield np.stack(buffer), window_size
        buffer = []
    if buffer:
      yield np.stack(buffer), len(buffer)

  pieces, axes_tree = [], None
  for chunk, n in windows(frames):
    if n < window_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], window_size - n, axis=0)])
    out = frame_fn(chunk)
    if axes_tree is None:
      axes_tree = jax.tree_util.tree_map(lambda ax, sub: jax.tree_util.tree_map(lambda _: ax, sub), frame_axes, out)
    pieces.append(jax.tree_util.tree_map(lambda x, ax, n=n: np.take(np.asarray(x), np.arange(n), axis=ax),
                                         out, axes_tree))
  if not pieces:
    raise UserValueError("the video has no frames")
  return jax.tree_util.tree_map(lambda ax, *xs: np.concatenate(xs, axis=ax), axes_tree, *pieces)


__all__ = ["CLASS_SOURCES", "VideoInferenceSettings", "TrackAssociation", "VideoInstances", "last_prediction",
           "associate", "video_instances", "masks_at_output_size", "to_results", "run_in_windows"]
