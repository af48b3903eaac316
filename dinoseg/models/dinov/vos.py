"""DINOv video object segmentation (semi-supervised; the reference's `--eval_track_prev`, `test_tracking_prev`
in train_net.py with `evaluate_visual_prompt_refer_multi_with_content_features` and `filter_data_refer` in
dinov/architectures/dinov.py).

Per video, with O objects, each given by its mask on its start frame (its first annotated frame: frame 0 for
most DAVIS objects, later for objects that enter the video later, the DAVIS-2017 semi-supervised protocol):
1. on its start frame an object's given mask is encoded as a prompt (`encode_prompts` on that frame's
   features) and stored as the object's reference memory entry; its output there is the given mask; before
   its start frame it is inactive and predicts nothing;
2. frame t after its start: the previous frame's mask of each active object (on the frame after the start:
   the given mask, later the prediction) is encoded on the previous frame's features and stored in the
   object's memory of `memory_size` (9) entries: the reference entry + the 8 most recent (the reference's
   priority queue keyed by frame index, the first frame keyed highest; its frame-1 entry is the first-frame
   mask again, as here);
3. the prompt of each object = the mean of its memory; frame t is decoded by the referring task with a
   `point_per_side`^2 (20 x 20) click grid over the padded canvas (clicks = +-3 px boxes, 6 tokens each,
   `pb_embedding` row 1 as the reference's `pb = ones` in this path); inactive objects' prompt slots are
   invalid (prompts see only themselves, so an object's result does not depend on the others);
4. proposals = click tokens with predicted IoU > 0.5, then NMS (boxes, scored by predicted IoU, threshold
   `prompts.nms_threshold` 0.7), then masks of more than `min_area` (50) positive stride-4 pixels; per
   object the softmax of its similarity logits over the surviving proposals picks the best one (the
   reference's `pred_ious.topk(1)`), whose mask (bilinear to the canvas, > 0, inside the image) is the
   object's prediction and its next prompt.
Everything has static shapes: one jitted `first` call and one jitted `step` per frame (objects padded to
`max_objects` slots with an active flag; the objects starting on a frame come as a (O,) flag and their masks,
so a late start does not retrace; the memory a fixed ring buffer with validity, NMS a fixed-size greedy loop).

Objects that enter after frame 0 (`VOSSettings.late_objects`, config `test.vos_late_objects`):
- "clean" (default): as above; nothing before the start frame, the given mask output on it, the memory
  started from that mask encoded on that frame's features.
- "reference": the reference's `key_frame` path (`test_tracking_prev`). Every object is tracked from frame 0.
  A late object (start frame k > 0) has an empty mask until frame k: its frame-0 entry (keyed as the reference
  frame, never evicted) is the embedding of the empty mask on frame 0's features (the prompt encoder's fully
  blocked rows attend everywhere), and so is its frame-1 entry when k > 1; from frame 1 on it is decoded from
  its memory as any object is, its prediction on frame t - 1 becoming its entry of frame t (encoded on frame
  t - 1's features), except on frame k, whose entry is the given mask of frame k encoded on frame k - 1's
  features. Its output is hidden before frame k (the reference's `acc_key`); from frame k on it is its
  prediction, on frame k too (not the given mask; its score there is the prediction's). Objects given on
  frame 0 are the same in both modes.

Other differences from the reference: a frame where no proposal survives gives an empty mask (the reference
would fail); objects are not hidden after their last annotated frame (the reference's `end_frame`, read from
its `video_objects_info.json`); fp32 (the reference runs under fp16 autocast); batched over objects only (one
video at a time, as the reference).

`evaluate_vos` scores a DAVIS-2017 download (dinoseg.evaluation.davis.read_davis_sequence) or a prepared video
dataset's tracks with dinoseg.evaluation.davis (J&F).
"""
import dataclasses
import logging
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.errors import UserValueError
from dinoseg.models.dinov.defaults import VOS_LATE_OBJECT_MODES
from dinoseg.ops import box_cxcywh_to_xyxy, box_iou, interpolate

logger = logging.getLogger(__name__)

CLICK_HALF_SIZE = 3.0  # clicks are +-3 px boxes
MIN_IOU = 0.5  # proposals need a predicted IoU above this
MIN_AREA = 50  # and more than this many positive stride-4 mask pixels
LATE_OBJECT_MODES = VOS_LATE_OBJECT_MODES  # VOSSettings.late_objects: "clean" | "reference" (module docstring)


def point_grid(n_per_side: int) -> np.ndarray:
  """(n^2, 2) xy points in [0, 1], row-major over y (the reference's `build_point_grid`)."""
  offset = 1.0 / (2 * n_per_side)
  side = np.linspace(offset, 1 - offset, n_per_side)
  xs = np.tile(side[None, :], (n_per_side, 1))
  ys = np.tile(side[:, None], (1, n_per_side))
  return np.stack([xs, ys], -1).reshape(-1, 2)


def grid_clicks(n_per_side: int, canvas_hw: tuple[int, int], half: float = CLICK_HALF_SIZE) -> np.ndarray:
  """(n^2, 4) click boxes cxcywh, normalised by the canvas: +-`half` px around each grid point."""
  h, w = canvas_hw
  pts = point_grid(n_per_side) * np.asarray([w, h], np.float64)
  xyxy = np.concatenate([pts - half, pts + half], 1)
  cxcywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
  return (cxcywh / np.asarray([w, h, w, h], np.float64)).astype(np.float32)


def fixed_nms(boxes_xyxy: jax.Array, scores: jax.Array, valid: jax.Array, threshold: float) -> jax.Array:
  """Greedy NMS with static shapes: (N, 4), (N,), (N,) bool -> keep (N,) bool (IoU > threshold suppresses,
  highest score first, as torchvision.ops.nms; invalid boxes neither survive nor suppress)."""
  n = scores.shape[0]
  order = jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True)
  b = boxes_xyxy[order]
  iou, _ = box_iou(b, b)
  v = valid[order]

  def body(i, keep):
    suppressed = jnp.any(keep & (iou[i] > threshold))
    return keep.at[i].set(v[i] & ~suppressed)
  keep_sorted = jax.lax.fori_loop(0, n, body, jnp.zeros(n, bool))
  return jnp.zeros(n, bool).at[order].set(keep_sorted)


def select_proposals(iou: jax.Array, boxes: jax.Array, mask_logits: jax.Array, logits: jax.Array, prompt_valid: jax.Array,
                     *, nms_threshold: float, min_iou: float = MIN_IOU, min_area: int = MIN_AREA):
  """The reference's `filter_data_refer` for one image.

  Args:
    iou: (N,) predicted IoU of the N = C * T click tokens; boxes (N, 4) cxcywh; mask_logits (N, h, w);
    logits: (N, K) similarity of each token with the K prompts; prompt_valid (K,).
  Returns:
    best (K,) int32 token index per prompt, score (K,) its softmax probability (0 when no proposal survives
    or the prompt is invalid), found (K,) bool.
  """
  keep = iou > min_iou
  keep = fixed_nms(box_cxcywh_to_xyxy(boxes.astype(jnp.float32)), iou, keep, nms_threshold)
  keep &= (mask_logits > 0).reshape(mask_logits.shape[0], -1).sum(-1) > min_area
  scores = jnp.where(keep[None, :], logits.T.astype(jnp.float32), -jnp.inf)  # (K, N)
  found = keep.any() & prompt_valid
  probs = jax.nn.softmax(jnp.where(keep.any(), scores, 0.0), axis=-1)
  best = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  return best, jnp.where(found, probs.max(-1), 0.0), found


@dataclasses.dataclass
class VOSSettings:
  memory_size: int = 9
  point_per_side: int = 20
  nms_threshold: float = 0.7
  max_objects: int = 8
  min_area: int = MIN_AREA
  late_objects: str = "clean"  # objects entering after frame 0: one of LATE_OBJECT_MODES

  @classmethod
  def from_config(cls, config, **overrides) -> "VOSSettings":
    p = config.prompts
    values = dict(memory_size=int(p.max_memory_size), point_per_side=int(p.point_per_side),
                  nms_threshold=float(p.nms_threshold),
                  late_objects=str(config.get("test", {}).get("vos_late_objects", "clean")))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


class VideoObjectSegmenter:
  """Runs the protocol of the module docstring on one video at a time.

  Args:
    model: a `DINOv`; variables: its variables; config: its config (`test` resize, `prompts`).
    settings: VOSSettings (default from `config.prompts`).
  """

  def __init__(self, model, variables: Mapping, config, settings: VOSSettings | None = None):
    from dinoseg.models.dinov.bank import test_canvas  # noqa: PLC0415
    self.model, self.config = model, config
    self.settings = settings or VOSSettings.from_config(config)
    if self.settings.memory_size < 2:
      raise UserValueError(f"memory_size must be >= 2 (the reference frame + recent ones), got "
                           f"{self.settings.memory_size}")
    if self.settings.late_objects not in LATE_OBJECT_MODES:
      raise UserValueError(f"late_objects must be one of {LATE_OBJECT_MODES}, got {self.settings.late_objects!r}")
    self.variables = jax.device_put(dict(variables))
    self.canvas_hw = test_canvas(config)
    # frames are resized with the DAVIS shortest edge (test.davis_min_size: the reference's DAVIS.INPUT.MIN_SIZE_TEST)
    self.resize_config = config.copy_and_resolve_references()
    with self.resize_config.unlocked():
      self.resize_config.test.min_size = int(config.test.get("davis_min_size", config.test.min_size))
    self.clicks = jnp.asarray(grid_clicks(self.settings.point_per_side, self.canvas_hw))[None]
    self._first = jax.jit(self._first_fn)
    self._step = jax.jit(self._step_fn)

  # -- traced parts
  def _features(self, variables, image, valid_hw):
    return self.model.apply(variables, image, valid_hw, method=self.model.features)

  def _encode(self, variables, multi_scale, masks):
    return self.model.apply(variables, multi_scale, masks,
                            method=lambda m, ms, pm: m.predictor.encode_prompts(ms, pm))

  def _start_objects(self, variables, state, start_masks, start):
    """Objects whose given mask is on this frame (start (O,) bool, start_masks (1, O, H, W) on the canvas): their
    memory restarts from the mask encoded on this frame's features (`state["multi_scale"]`) as the reference
    entry, their current mask becomes it and they turn active. Skipped (lax.cond) when no object starts."""
    def begin(state):
      emb = self._encode(variables, state["multi_scale"], start_masks)[0]  # (O, d)
      m = self.settings.memory_size
      first_slot = jnp.arange(m) == 0
      memory = jnp.where(start[:, None, None], jnp.where(first_slot[None, :, None], emb[:, None], 0.0),
                         state["memory"])
      memory_valid = jnp.where(start[:, None], first_slot[None], state["memory_valid"])
      masks = jnp.where(start[None, :, None, None], start_masks, state["masks"])
      return {**state, "memory": memory, "memory_valid": memory_valid, "masks": masks,
              "active": state["active"] | start}
    return jax.lax.cond(jnp.any(start), begin, lambda state: state, state)

  def _first_fn(self, variables, image, valid_hw, masks, start, tracked=None):
    """Frame 0: image (1, H, W, 3), masks (1, O, H, W) on the canvas, start (O,) bool (objects given on frame 0),
    tracked (O,) bool (the video's objects, padding slots False; needed by late_objects="reference", ignored
    by "clean") -> state (memory (O, M, d) and memory_valid (O, M), masks (1, O, H, W), active (O,), t,
    multi_scale).

    "reference": every tracked object is active from here; its mask is its given one when it starts on frame 0,
    else empty, and its memory starts from that mask encoded on frame 0's features (slot 0, the reference
    entry: for a late object the empty mask's embedding)."""
    _, multi_scale = self._features(variables, image, valid_hw)
    o, m = masks.shape[1], self.settings.memory_size
    d = int(self.config.model.decoder.hidden_dim)
    state = {"multi_scale": multi_scale, "masks": jnp.zeros_like(masks, jnp.float32),
             "memory": jnp.zeros((o, m, d), jnp.float32), "memory_valid": jnp.zeros((o, m), bool),
             "t": jnp.zeros((), jnp.int32), "active": jnp.zeros((o,), bool)}
    if self.settings.late_objects == "clean":
      return self._start_objects(variables, state, masks.astype(jnp.float32), start)
    if tracked is None:
      raise ValueError('late_objects="reference" needs the tracked (O,) flag')
    tracked = jnp.asarray(tracked, bool)
    masks = jnp.where(start[None, :, None, None], masks.astype(jnp.float32), 0.0)
    emb = self._encode(variables, multi_scale, masks)[0]  # (O, d)
    first_slot = jnp.arange(m) == 0
    memory_valid = tracked[:, None] & first_slot[None]
    memory = jnp.where(memory_valid[..., None], emb[:, None], 0.0)
    return {**state, "masks": masks, "memory": memory, "memory_valid": memory_valid, "active": tracked}

  def _step_fn(self, variables, state, image, valid_hw, start_masks, start):
    """Frame t >= 1: image (1, H, W, 3), valid_hw (1, 2); start_masks (1, O, H, W) / start (O,): the objects
    given on this frame. Returns (state, the predicted mask logits (O, H, W) on the canvas, scores (O,); -1 / 0
    for inactive objects and where no proposal survives).

    "clean": the starting objects' output is the given mask (chosen by the caller) and their memory starts
    from it, encoded on this frame's features, after this frame's decoding. "reference": their given mask
    replaces their previous-frame prediction before step 2, so it is encoded on the previous frame's
    features, and this frame's prediction is their output."""
    s = self.settings
    active = state["active"]
    previous = state["masks"]
    if s.late_objects == "reference":
      previous = jnp.where(start[None, :, None, None], start_masks.astype(jnp.float32), previous)
    # 2. the previous frame's masks of the active objects -> memory (ring buffer over slots 1..memory_size-1)
    emb = self._encode(variables, state["multi_scale"], previous)[0]
    slot = 1 + state["t"] % (s.memory_size - 1)
    memory = state["memory"].at[:, slot].set(jnp.where(active[:, None], emb, state["memory"][:, slot]))
    memory_valid = state["memory_valid"].at[:, slot].set(active | state["memory_valid"][:, slot])
    w = memory_valid.astype(jnp.float32)
    prompts = (memory * w[..., None]).sum(1) / jnp.maximum(w.sum(1), 1.0)[:, None]  # (O, d)
    # 3. decode the frame with the click grid
    mask_features, multi_scale = self._features(variables, image, valid_hw)
    out = self.model.apply(variables, multi_scale, mask_features, task="refer", prompts=prompts[None],
                           prompt_valid=active[None], clicks=self.clicks, click_pb=1,
                           method=lambda m, ms, mf, **kw: m.predictor(ms, mf, **kw))
    iou = out.iou[-1, 0].reshape(-1)
    masks_lr = out.masks[-1, 0]
    best, score, found = select_proposals(iou, out.boxes[-1, 0], masks_lr, out.logits[-1, 0], active,
                                          nms_threshold=s.nms_threshold, min_area=s.min_area)
    chosen = masks_lr[best]  # (O, h, w)
    up = interpolate(chosen[None].astype(jnp.float32), tuple(self.canvas_hw), mode="bilinear", axes=(-2, -1))[0]
    up = jnp.where(found[:, None, None], up, -1.0)
    rows = jnp.arange(self.canvas_hw[0])[:, None] < valid_hw[0, 0]
    cols = jnp.arange(self.canvas_hw[1])[None, :] < valid_hw[0, 1]
    masks = (up > 0) & rows & cols
    new_state = {"multi_scale": multi_scale, "masks": masks[None].astype(jnp.float32), "memory": memory,
                 "memory_valid": memory_valid, "t": state["t"] + 1, "active": active}
    if s.late_objects == "clean":
      new_state = self._start_objects(variables, new_state, start_masks.astype(jnp.float32), start)
    return new_state, up, score

  # -- host side
  def segment(self, frames: np.ndarray, first_masks: np.ndarray, start_frames: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Tracks O objects through a video.

    Args:
      frames: (T, H, W, 3) uint8.
      first_masks: (O, H, W) each object's given mask on its first frame.
      start_frames: (O,) int, the frame of each given mask (default: all 0). An object predicts nothing
        before it; on it, it outputs its given mask and is tracked from the next frame on ("clean"), or,
        for a start frame > 0 with late_objects="reference", outputs its prediction (module docstring).
    Returns:
      masks (O, T, H, W) bool, scores (O, T) float32 (0 before the start frame; 1 on it where the given mask
      is output).
    """
    from PIL import Image  # noqa: PLC0415

    from dinoseg.models.dinov.bank import resize_for_model  # noqa: PLC0415
    frames = np.asarray(frames)
    first_masks = np.asarray(first_masks).astype(bool)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
      raise UserValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    t, h, w = frames.shape[:3]
    o = len(first_masks)
    if first_masks.ndim != 3 or first_masks.shape[1:] != (h, w):
      raise UserValueError(f"first-frame masks must be (O, {h}, {w}), got {first_masks.shape}")
    if o > self.settings.max_objects:
      raise UserValueError(f"{o} objects exceed max_objects={self.settings.max_objects}")
    empty = [i for i in range(o) if not first_masks[i].any()]
    if empty:
      raise UserValueError(f"first-frame masks of objects {empty} are empty")
    starts = np.zeros(o, np.int64) if start_frames is None else np.asarray(start_frames)
    if starts.shape != (o,) or not np.issubdtype(starts.dtype, np.integer) or ((starts < 0) | (starts >= t)).any():
      raise UserValueError(f"start_frames must be {o} integers in [0, {t}), got {starts.tolist()}")
    n = self.settings.max_objects
    reference = self.settings.late_objects == "reference"
    tracked = np.arange(n) < o
    out = np.zeros((o, t, h, w), bool)
    scores = np.zeros((o, t), np.float32)
    state = None
    for f in range(t):
      start = np.zeros(n, bool)
      start[:o] = starts == f
      given = np.zeros((n, h, w), bool)
      given[:o][start[:o]] = first_masks[start[:o]]
      canvas, cmasks, valid_hw = resize_for_model(frames[f], given, self.resize_config, self.canvas_hw)
      if state is None:
        extra = (tracked,) if reference else ()  # "clean" keeps the 5-argument call (one trace)
        state = self._first(self.variables, canvas[None], valid_hw[None], cmasks[None], start, *extra)
      else:
        state, logits, score = self._step(self.variables, state, canvas[None], valid_hw[None], cmasks[None], start)
        logits, nh, nw = np.asarray(logits[:o]), int(valid_hw[0]), int(valid_hw[1])
        shown = (starts <= f) if reference else (starts < f)
        for i in np.nonzero(shown)[0]:  # canvas crop -> original size (bilinear logits, as sem_seg_postprocess)
          crop = Image.fromarray(logits[i, :nh, :nw].astype(np.float32), mode="F")
          out[i, f] = np.asarray(crop.resize((w, h), Image.BILINEAR)) > 0
        scores[:, f] = np.where(shown, np.asarray(score[:o]), 0.0)
      if f == 0 or not reference:
        out[start[:o], f] = first_masks[start[:o]]
        scores[start[:o], f] = 1.0
    return out, scores


def evaluate_vos(segmenter: VideoObjectSegmenter, data_path: str, split: str, max_videos: int = 0,
                 out_dir: str | None = None) -> dict[str, Any]:
  """J&F (dinoseg.evaluation.davis) of a video set: the official DAVIS-2017 layout (`data_path` holds
  JPEGImages/ and Annotations/ and ImageSets/; `split` names ImageSets/2017/<split>.txt) or a prepared video
  dataset (`dinoseg data prepare`; its non-crowd tracks).

  Each object is given on its first annotated frame (start frame; DAVIS semi-supervised) and tracked from there
  (the segmenter's `late_objects` decides what a later start means); before it, it predicts nothing; an
  object that is never present (a DAVIS id without a mask) is scored with an empty prediction, as the official
  evaluation does. Returns the DAVIS summary (DavisEvaluator.result) plus
  `num_videos` and `objects_after_first_frame` (objects whose start frame is not frame 0). With `out_dir`,
  writes each video's predictions as `<out_dir>/<video>.npz` (masks (O, T, H, W), start_frames (O,), -1 for
  objects never present).
  """
  import pathlib  # noqa: PLC0415

  from dinoseg.evaluation import davis  # noqa: PLC0415
  evaluator = davis.DavisEvaluator()
  late = videos = 0
  for name, frames, gt in _videos(data_path, split):
    if max_videos and videos >= max_videos:
      break
    present = gt.reshape(gt.shape[0], gt.shape[1], -1).any(-1)  # (O, T)
    tracked = present.any(1)
    if not tracked.any() or frames.shape[0] < 3:
      continue
    starts = np.argmax(present[tracked], axis=1)
    first = gt[tracked][np.arange(int(tracked.sum())), starts]
    pred = np.zeros(gt.shape, bool)
    tracked_masks, _ = segmenter.segment(frames, first, starts)
    pred[tracked] = tracked_masks
    evaluator.process(name, gt, pred)
    videos += 1
    late += int((starts > 0).sum())
    if out_dir:
      pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
      np.savez_compressed(pathlib.Path(out_dir) / f"{name}.npz", masks=pred,
                          start_frames=np.where(tracked, np.argmax(present, axis=1), -1))
  if not videos:
    raise UserValueError(f"{data_path}: no video of split {split!r} has an object (and >= 3 frames)")
  return {**evaluator.result(), "num_videos": videos, "objects_after_first_frame": late}


def _videos(data_path: str, split: str):
  """(name, frames (T, H, W, 3) uint8, gt (O, T, H, W) bool) per video of a DAVIS root or a prepared dataset."""
  from dinoseg.evaluation import davis  # noqa: PLC0415
  if davis.is_davis_root(data_path):
    for name in davis.davis_sequences(data_path, split):
      seq = davis.read_davis_sequence(data_path, name)
      yield name, seq.frames, seq.masks
    return
  from dinoseg.data_pipelines import open_dataset, schema  # noqa: PLC0415
  view = open_dataset(data_path).split(split)
  for i in range(len(view)):
    ex = schema.decode_example(view.record(i), masks=True)
    if ex.get("kind") != "video" or "tracks" not in ex:
      raise UserValueError(f"{data_path}: split {split!r} holds no video records with tracks")
    tr = ex["tracks"]
    use = ~tr["is_crowd"]
    yield str(ex["image_id"]), ex["frames"], (tr["masks"][use] > 0) & tr["present"][use][:, :, None, None]


__all__ = ["LATE_OBJECT_MODES", "point_grid", "grid_clicks", "fixed_nms", "select_proposals", "VOSSettings",
           "VideoObjectSegmenter", "evaluate_vos"]
