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

The reference's other inference behaviours, as options (config `test.*`, `VOSSettings`; defaults: dinoseg's):
- `hide_after_last_frame` (`test.vos_hide_after_last_frame`, default False): the reference's `end_frame`. Its
  DAVIS mapper marks, per object, the frame whose annotation file is the last entry of the object's frame list
  (`objects[id]["frames"][-1]` of its `video_objects_info.json`, a file made from the annotations, not part of
  the DAVIS download), and `test_tracking_prev` ORs that mark into `end_key` after writing the frame's output:
  the object's output is empty from the frame after its last annotated frame on, while it is still tracked
  (its memory goes on). Here the last annotated frame is the last frame whose annotation holds the object's id
  (`evaluate_vos`: `last_annotated_frames`), or the last frame its track is present (prepared datasets), given
  to `segment` as `end_frames`; the hiding is a masking of the host-side outputs (nothing retraces).
- `resize` (`test.vos_resize`, default "dinoseg": detectron2's shortest-edge sizes, bilinear frames, nearest
  masks): "reference" is the reference's DAVIS mapper: torchvision's `Resize(min_size, max_size)` sizes
  (`reference_resize_size`: the short side `test.davis_min_size`, the long side floored; the mapper hard-codes
  max_size 1333, here `test.max_size`, 1333 in the released configs; torchvision refuses max_size <= min_size,
  here the same rule simply applies), the frame resized by PIL's bicubic filter (what torchvision calls on a PIL
  image; antialiased when shrinking), each given mask by OpenCV's `INTER_CUBIC` on the 0/1 uint8 mask, kept
  where the result is non-zero (`opencv_cubic_resize`, a transcription of OpenCV's fixed-point bicubic: no
  antialias, replicated border).
- `dtype` (`test.vos_dtype`, default "float32" = the model as built): "float16" runs the VOS model in float16
  compute (the reference's `torch.autocast(dtype=float16)`): the model's modules (backbone, pixel decoder,
  predictor) are cloned with that compute dtype; parameters stay float32, prompt memories, masks and scores
  are float32. Flax's per-module dtype is not autocast's per-op policy (autocast keeps softmax / norms in
  fp32), so the numbers are close to, not equal to, the reference's. "bfloat16" likewise.
- `first_frame_output` (`test.vos_first_frame_output`, default "given": the annotation itself): "reference" is
  what `test_tracking_prev` writes on frame 0, the given mask as the model input holds it (after `resize`:
  the reference's OpenCV cubic mask with resize="reference") cropped to the resized frame and brought back to
  the frame's size by PyTorch's `F.interpolate(bilinear, align_corners=False)` (no antialias), > 0
  (`resized_given_masks`): close to the annotation, not equal to it (the bilinear "> 0" grows it by up to a
  pixel). It applies wherever the given mask is the output: frame 0, and with late_objects="clean" the start
  frame of a late object (the reference outputs its prediction there). J&F does not see frame 0 (the
  DAVIS-2017 semi-supervised evaluation, here and in davis2017-evaluation, scores frames 1 .. T-2), but a late
  object's start frame is scored. Scores stay 1 on those frames.
- `objects_info` (`test.vos_objects_info`, or `evaluate_vos(objects_info=...)`, default "": from the
  annotations): a `video_objects_info.json` (the reference's DAVIS registration reads it beside the data:
  `{"videos": {seq: {"objects": {"<id>": {"frames": [stem, ...]}}}}}`; `davis.read_video_objects_info`),
  whose "frames" list gives an object's start frame (its first name: the reference's `key_frame`, where the
  given mask is taken from that frame's annotation) and its last frame (its last name: `end_frame`, used by
  hide_after_last_frame). Checked per video against the annotations (`davis.video_object_frames`): a video of
  the split, an annotated object, or a frame name missing, or a start frame whose annotation lacks the
  object, is a UserValueError (one line); listed ids that are not scored objects are left out (a warning).
  DAVIS roots only.

- `overlap` (`test.vos_overlap`, default "label_map": the reference and the official protocol): `segment`
  returns per-object masks, which may overlap. The reference writes one indexed PNG per frame
  (`test_tracking_prev`): a float canvas of zeros on which each object's output (after its `acc_key` /
  `end_key` masking) is painted with its id, the objects in their order (the order of the ids in its
  `video_objects_info.json`, in practice ascending), so a pixel claimed by several objects holds the id of the
  LAST one painted; davis2017-evaluation reads those PNGs, one object per pixel. "label_map" does the same
  before scoring and writing (`label_map`, painting in ascending id order, or the info file's order when
  `objects_info` is given; each object scored on its label's region, `label_masks`): on every frame, frame 0 /
  the given frames and the frames after an object's hidden end included (a hidden or not-yet-started object
  paints nothing). "per_object" scores each object's own mask (overlaps counted for both objects); the PNGs
  written are the label map in both modes (the format holds one object per pixel).

Other differences from the reference: a frame where no proposal survives gives an empty mask (the reference
would fail); batched over objects only (one video at a time, as the reference).

`evaluate_vos` scores a DAVIS-2017 download (dinoseg.evaluation.davis.read_davis_sequence) or a prepared video
dataset's tracks with dinoseg.evaluation.davis (J&F); with `out_dir` it writes the DAVIS results layout
(`<out_dir>/<sequence>/<frame stem>.png`, indexed PNGs with the annotations' palette: what davis2017-evaluation
and the DAVIS server read) and a per-video npz, and never overwrites a file it did not write itself.
"""
import dataclasses
import logging
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.errors import UserValueError
from dinoseg.models.dinov.defaults import (VOS_DTYPES, VOS_FIRST_FRAME_OUTPUTS, VOS_LATE_OBJECT_MODES,
                                           VOS_OVERLAP_MODES, VOS_RESIZE_MODES)
from dinoseg.ops import box_cxcywh_to_xyxy, box_iou, interpolate

logger = logging.getLogger(__name__)

CLICK_HALF_SIZE = 3.0  # clicks are +-3 px boxes
MIN_IOU = 0.5  # proposals need a predicted IoU above this
MIN_AREA = 50  # and more than this many positive stride-4 mask pixels
LATE_OBJECT_MODES = VOS_LATE_OBJECT_MODES  # VOSSettings.late_objects: "clean" | "reference" (module docstring)
RESIZE_MODES = VOS_RESIZE_MODES  # VOSSettings.resize: "dinoseg" | "reference"
COMPUTE_DTYPES = VOS_DTYPES  # VOSSettings.dtype
FIRST_FRAME_OUTPUTS = VOS_FIRST_FRAME_OUTPUTS  # VOSSettings.first_frame_output: "given" | "reference"
OVERLAP_MODES = VOS_OVERLAP_MODES  # VOSSettings.overlap: "label_map" | "per_object"
OUTPUTS_MANIFEST = "dinoseg_vos_outputs.json"  # evaluate_vos(out_dir=...): the files it wrote there
OPENCV_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: fixed-point weights of its 8-bit resize


def reference_resize_size(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
  """(new_h, new_w) of torchvision's `Resize(min_size, max_size=max_size)` (the reference's DAVIS mapper): the
  short side becomes `min_size`, the long side int(min_size * long / short) (floored); a long side above
  `max_size` becomes max_size and the short side int(max_size * short / long)."""
  short, long = (w, h) if w <= h else (h, w)
  new_short, new_long = int(min_size), int(min_size * long / short)
  if new_long > max_size:
    new_short, new_long = int(max_size * new_short / new_long), int(max_size)
  new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
  return max(1, new_h), max(1, new_w)


def _opencv_cubic_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
  """One axis of OpenCV's INTER_CUBIC: (dst, 4) clamped source indices and (dst, 4) int weights (float32
  coefficients of the A = -0.75 cubic at the half-pixel source position, times 2^11, rounded to nearest even)."""
  scale = src / dst
  pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
  base = np.floor(pos)
  x = (pos - base).astype(np.float32)
  a = np.float32(-0.75)
  one = np.float32(1.0)
  c0 = ((a * (x + one) - 5 * a) * (x + one) + 8 * a) * (x + one) - 4 * a
  c1 = ((a + 2) * x - (a + 3)) * x * x + one
  c2 = ((a + 2) * (one - x) - (a + 3)) * (one - x) * (one - x) + one
  c3 = one - c0 - c1 - c2
  coef = np.stack([c0, c1, c2, c3], 1).astype(np.float32)
  weights = np.rint(coef * np.float32(1 << OPENCV_COEF_BITS)).astype(np.int64)
  index = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None], 0, src - 1)
  return index, weights


def opencv_cubic_resize(masks: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
  """OpenCV's `cv2.resize(m, (w, h), interpolation=cv2.INTER_CUBIC)` of uint8 images (N, H, W) -> (N, h, w) uint8.

  A transcription of its 8-bit path: a horizontal pass with integer weights (`_opencv_cubic_table`), a
  vertical one, then (sum + 2^21) >> 22 saturated to 0..255; borders replicated, no antialias. The reference's
  DAVIS mapper resizes each object's 0/1 mask so and keeps the non-zero pixels (value >= 0.5 before rounding)."""
  m = np.asarray(masks)
  if m.ndim != 3:
    raise ValueError(f"masks must be (N, H, W), got {m.shape}")
  m = m.astype(np.int64)
  nh, nw = int(size_hw[0]), int(size_hw[1])
  xi, xw = _opencv_cubic_table(m.shape[2], nw)
  yi, yw = _opencv_cubic_table(m.shape[1], nh)
  rows = (m[:, :, xi] * xw[None, None]).sum(-1)  # (N, H, nw)
  full = (rows[:, yi, :] * yw[None, :, :, None]).sum(2)  # (N, nh, nw)
  shift = 2 * OPENCV_COEF_BITS
  return np.clip((full + (1 << (shift - 1))) >> shift, 0, 255).astype(np.uint8)


def reference_resize(image: np.ndarray, masks: np.ndarray | None, min_size: int, max_size: int,
                     canvas_hw: tuple[int, int]):
  """The reference's DAVIS mapper resize, then dinoseg's zero padding: image (H, W, 3) uint8, masks (N, H, W)
  bool -> (canvas image (Hc, Wc, 3) float32, canvas masks (N, Hc, Wc) float32 or None, valid_hw (2,) int32).
  Sizes `reference_resize_size`; the image by PIL's bicubic filter, the masks by `opencv_cubic_resize` (> 0)."""
  from PIL import Image  # noqa: PLC0415

  from dinoseg.structures import pad_image  # noqa: PLC0415
  h, w = image.shape[:2]
  nh, nw = reference_resize_size(h, w, min_size, max_size)
  if nh > canvas_hw[0] or nw > canvas_hw[1]:
    raise UserValueError(f"a {w} x {h} frame resized as the reference's DAVIS mapper ({nw} x {nh}) exceeds the "
                         f"canvas {canvas_hw[1]} x {canvas_hw[0]} (test.max_size)")
  resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC), np.float32)
  canvas = pad_image(resized, canvas_hw)
  out_masks = None
  if masks is not None:
    out_masks = np.zeros((len(masks), *canvas_hw), np.float32)
    nonempty = np.asarray(masks, bool).reshape(len(masks), -1).any(-1)  # an empty mask stays empty: skip it
    if nonempty.any():
      out_masks[nonempty, :nh, :nw] = opencv_cubic_resize(np.asarray(masks, np.uint8)[nonempty], (nh, nw)) > 0
  return canvas, out_masks, np.asarray([nh, nw], np.int32)


def torch_cpu_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float32 weights of PyTorch's CPU `F.interpolate(mode="bilinear", align_corners=False)`
  (no antialias) along one axis: source index max(0, scale * (i + 0.5) - 0.5) with scale = float32(in) / out,
  computed as its CPU kernel is compiled, a fused multiply-add (one float32 rounding, not two: the two differ
  where the exact index is an integer plus a few ulp, e.g. 20 -> 60, and so does which taps get a zero weight),
  taps floor(index) and the next one (clamped to the last), weights 1 - frac and frac.
  (dinoseg.ops.resize_matrix rounds twice; that matters only where exact zero weights matter, as here.)"""
  scale = np.float32(in_size) / np.float32(out_size)
  centres = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
  # float32 * float32 is exact in float64 and, where the result is >= 0, so is subtracting 0.5: one rounding
  src = np.maximum((np.float64(scale) * centres.astype(np.float64) - 0.5).astype(np.float32), np.float32(0))
  low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  frac = np.clip(src - low.astype(np.float32), 0, 1).astype(np.float32)
  m = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(m, (rows, low), np.float32(1) - frac)
  np.add.at(m, (rows, np.minimum(low + 1, in_size - 1)), frac)
  return m


def resized_given_masks(canvas_masks: np.ndarray, valid_hw, out_hw: tuple[int, int]) -> np.ndarray:
  """The reference's output on the frame where an object is given (`test_tracking_prev`, fid 0): the given mask
  as the model input holds it, resized back to the frame by PyTorch's `F.interpolate(mode="bilinear",
  align_corners=False)` (no antialias), > 0. The reference runs that on CPU tensors (the mapper's masks).

  Args:
    canvas_masks: (N, Hc, Wc) the given masks on the canvas (as `VideoObjectSegmenter.resize` returns them);
    valid_hw: (2,) the resized frame's size in the canvas (the part cropped); out_hw: the frame's (H, W).
  Returns:
    (N, H, W) bool. The weights are PyTorch's CPU index arithmetic (`torch_cpu_bilinear_matrix`); the inputs
    are 0 / 1 and the weights non-negative, so "> 0" (a pixel whose taps reach a given pixel with a non-zero
    weight) is exact, not subject to rounding.
  """
  m = np.asarray(canvas_masks)
  if m.ndim != 3:
    raise ValueError(f"canvas masks must be (N, Hc, Wc), got {m.shape}")
  nh, nw = int(valid_hw[0]), int(valid_hw[1])
  crop = (m[:, :nh, :nw] > 0).astype(np.float32)
  rows = torch_cpu_bilinear_matrix(nh, int(out_hw[0]))  # (H, nh)
  cols = torch_cpu_bilinear_matrix(nw, int(out_hw[1]))  # (W, nw)
  return np.einsum("yh,nhw,xw->nyx", rows, crop, cols, optimize=True) > 0


def label_map(masks: np.ndarray, object_ids, order=None) -> np.ndarray:
  """Flattens per-object masks into one label map per frame, as the reference's PNG writer
  (`test_tracking_prev`): starting from background 0, each object's mask is painted with its id, one object
  after another, so a pixel claimed by several objects holds the id of the last one painted.

  Args:
    masks: (O, ..., H, W) bool, e.g. (O, T, H, W) a video's outputs or (O, H, W) one frame's.
    object_ids: (O,) distinct ids in 1..255 (the annotation's ids; the reference's `mappers`).
    order: (O,) a permutation of 0..O-1, the painting order (default 0, 1, ..., O-1: the reference paints its
      objects in their order, the order of the object ids of its `video_objects_info.json`).
  Returns:
    (..., H, W) uint8 label map (0 background).
  """
  masks = np.asarray(masks).astype(bool)
  ids = np.asarray(object_ids, np.int64).reshape(-1)
  if masks.ndim < 3 or len(ids) != masks.shape[0]:
    raise ValueError(f"masks must be (O, ..., H, W) with one id per object, got {masks.shape} and {len(ids)} ids")
  if len(set(ids.tolist())) != len(ids) or ((ids < 1) | (ids > 255)).any():
    raise ValueError(f"object ids must be distinct and in 1..255, got {ids.tolist()}")
  order = np.arange(len(ids)) if order is None else np.asarray(order, np.int64)
  if sorted(order.tolist()) != list(range(len(ids))):
    raise ValueError(f"order must be a permutation of 0..{len(ids) - 1}, got {order.tolist()}")
  labels = np.zeros(masks.shape[1:], np.uint8)
  for o in order:
    labels[masks[o]] = ids[o]
  return labels


def label_masks(labels: np.ndarray, object_ids) -> np.ndarray:
  """(..., H, W) label map and (O,) ids -> (O, ..., H, W) bool: each object's region of the label map (what the
  official DAVIS evaluation scores for it)."""
  ids = np.asarray(object_ids, np.int64).reshape(-1)
  labels = np.asarray(labels)
  return labels[None] == ids.reshape(-1, *([1] * labels.ndim))


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
  hide_after_last_frame: bool = False  # the reference's end_frame (module docstring)
  resize: str = "dinoseg"  # frames and given masks: one of RESIZE_MODES
  dtype: str = "float32"  # compute dtype: one of COMPUTE_DTYPES ("float32": the model as built)
  first_frame_output: str = "given"  # the output where an object is given: one of FIRST_FRAME_OUTPUTS
  objects_info: str = ""  # a video_objects_info.json (evaluate_vos: start / end frames); "": the annotations'
  overlap: str = "label_map"  # evaluate_vos: how overlapping outputs are scored: one of OVERLAP_MODES

  @classmethod
  def from_config(cls, config, **overrides) -> "VOSSettings":
    p = config.prompts
    t = config.get("test", {})
    values = dict(memory_size=int(p.max_memory_size), point_per_side=int(p.point_per_side),
                  nms_threshold=float(p.nms_threshold),
                  late_objects=str(t.get("vos_late_objects", "clean")),
                  hide_after_last_frame=bool(t.get("vos_hide_after_last_frame", False)),
                  resize=str(t.get("vos_resize", "dinoseg")), dtype=str(t.get("vos_dtype", "float32")),
                  first_frame_output=str(t.get("vos_first_frame_output", "given")),
                  objects_info=str(t.get("vos_objects_info", "")),
                  overlap=str(t.get("vos_overlap", "label_map")))
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
    if self.settings.resize not in RESIZE_MODES:
      raise UserValueError(f"resize must be one of {RESIZE_MODES}, got {self.settings.resize!r}")
    if self.settings.dtype not in COMPUTE_DTYPES:
      raise UserValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {self.settings.dtype!r}")
    if self.settings.first_frame_output not in FIRST_FRAME_OUTPUTS:
      raise UserValueError(f"first_frame_output must be one of {FIRST_FRAME_OUTPUTS}, got "
                           f"{self.settings.first_frame_output!r}")
    if self.settings.overlap not in OVERLAP_MODES:
      raise UserValueError(f"overlap must be one of {OVERLAP_MODES}, got {self.settings.overlap!r}")
    if self.settings.dtype != "float32":  # compute dtype only: the same parameters (float32) drive the clone
      self.model = model = with_compute_dtype(model, getattr(jnp, self.settings.dtype))
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
                            method=lambda m, ms, pm: m.predictor.encode_prompts(ms, pm)).astype(jnp.float32)

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
  def resize(self, frame: np.ndarray, masks: np.ndarray | None):
    """One frame (H, W, 3) uint8 and masks (N, H, W) bool -> (canvas (Hc, Wc, 3) float32, canvas masks
    (N, Hc, Wc) float32 or None, valid_hw (2,) int32), as `settings.resize` says (module docstring)."""
    from dinoseg.models.dinov.bank import resize_for_model  # noqa: PLC0415
    if self.settings.resize == "reference":
      t = self.resize_config.test
      return reference_resize(frame, masks, int(t.min_size), int(t.max_size), self.canvas_hw)
    return resize_for_model(frame, masks, self.resize_config, self.canvas_hw)

  def segment(self, frames: np.ndarray, first_masks: np.ndarray, start_frames: np.ndarray | None = None,
              end_frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tracks O objects through a video.

    Args:
      frames: (T, H, W, 3) uint8.
      first_masks: (O, H, W) each object's given mask on its first frame.
      start_frames: (O,) int, the frame of each given mask (default: all 0). An object predicts nothing
        before it; on it, it outputs its given mask (or, with first_frame_output="reference", that mask
        through the model input and back: `resized_given_masks`) and is tracked from the next frame on
        ("clean"), or, for a start frame > 0 with late_objects="reference", outputs its prediction (module
        docstring).
      end_frames: (O,) int, each object's last annotated frame (>= its start frame; default: the last frame).
        With `settings.hide_after_last_frame` its output is empty (score 0) after it; otherwise unused.
    Returns:
      masks (O, T, H, W) bool, scores (O, T) float32 (0 before the start frame; 1 on it where the given mask
      is output).
    """
    from PIL import Image  # noqa: PLC0415
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
    ends = np.full(o, t - 1, np.int64) if end_frames is None else np.asarray(end_frames)
    if ends.shape != (o,) or not np.issubdtype(ends.dtype, np.integer) or ((ends < starts) | (ends >= t)).any():
      raise UserValueError(f"end_frames must be {o} integers in [start frame, {t}), got {ends.tolist()} "
                           f"(start frames {starts.tolist()})")
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
      canvas, cmasks, valid_hw = self.resize(frames[f], given)
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
      if (f == 0 or not reference) and start[:o].any():
        if self.settings.first_frame_output == "reference":  # the given mask through the model input and back
          out[start[:o], f] = resized_given_masks(cmasks[:o][start[:o]], valid_hw, (h, w))
        else:
          out[start[:o], f] = first_masks[start[:o]]
        scores[start[:o], f] = 1.0
    if self.settings.hide_after_last_frame:  # the reference's end_key: empty after the last annotated frame
      hidden = np.arange(t)[None, :] > ends[:, None]  # (O, T)
      out[hidden] = False
      scores[hidden] = 0.0
    return out, scores


def with_compute_dtype(model, dtype):
  """`model` (a DINOv) with its backbone, pixel decoder and predictor cloned with compute `dtype`; the parameter
  tree (float32) is unchanged."""
  parts = {name: getattr(model, name).clone(dtype=dtype) for name in ("backbone", "pixel_decoder", "predictor")
           if hasattr(getattr(model, name), "dtype")}
  return model.clone(**parts)


def last_annotated_frames(present: np.ndarray) -> np.ndarray:
  """(O, T) bool (object present in frame t's annotation) -> (O,) int64 index of each object's last such frame
  (the reference's `end_frame`: the last entry of the object's frame list); -1 for an object never present."""
  present = np.asarray(present, bool)
  last = present.shape[1] - 1 - np.argmax(present[:, ::-1], axis=1)
  return np.where(present.any(1), last, -1).astype(np.int64)


def evaluate_vos(segmenter: VideoObjectSegmenter, data_path: str, split: str, max_videos: int = 0,
                 out_dir: str | None = None, objects_info: str | None = None) -> dict[str, Any]:
  """J&F (dinoseg.evaluation.davis) of a video set: the official DAVIS-2017 layout (`data_path` holds
  JPEGImages/ and Annotations/ and ImageSets/; `split` names ImageSets/2017/<split>.txt) or a prepared video
  dataset (`dinoseg data prepare`; its non-crowd tracks).

  Each object is given on its first annotated frame (start frame; DAVIS semi-supervised) and tracked from there
  (the segmenter's `late_objects` decides what a later start means; with `hide_after_last_frame` its output
  is empty after its last annotated frame, `last_annotated_frames`); before it, it predicts nothing; an
  object that is never present (a DAVIS id without a mask) is scored with an empty prediction, as the official
  evaluation does. With `objects_info` (default: the segmenter's `settings.objects_info`; "" = none), a
  `video_objects_info.json` (dinoseg.evaluation.davis.read_video_objects_info; DAVIS roots only) gives each
  object's start and last frame instead, as the reference reads them (its "frames" list's first and last
  names; `davis.video_object_frames`): every video of the split must be in it (checked before any is run);
  objects it does not list are scored against an empty prediction (only allowed for objects no annotation
  holds).

  Overlaps (`settings.overlap`): "label_map" (default) flattens each frame's outputs into one label map
  (`label_map`: objects painted in order, ascending ids, or the order of the info file's object ids, the last
  painted taking a shared pixel) and scores each object on its label's region (`label_masks`), as the
  reference's PNGs are scored by davis2017-evaluation; "per_object" scores each object's own mask.

  Returns the DAVIS summary (DavisEvaluator.result) plus `num_videos` and `objects_after_first_frame` (objects
  whose start frame is not frame 0). With `out_dir`, writes per video `<out_dir>/<video>/<frame stem>.png`
  (the DAVIS results layout: indexed PNGs of the label map, object ids as the annotation's (a prepared
  dataset's tracks: 1, 2, ...), the palette of the sequence's first annotation PNG or `davis.default_palette`;
  frame stems of a prepared dataset: 00000, 00001, ...) and `<out_dir>/<video>.npz` (masks (O, T, H, W) the
  per-object outputs before flattening, labels (T, H, W) uint8 the label map, object_ids (O,), start_frames
  (O,) and end_frames (O,), -1 for objects never present), and lists them in `<out_dir>/` OUTPUTS_MANIFEST.
  A file that would be written and already exists without being listed there (not written by an earlier
  evaluate_vos) is a UserValueError (for a DAVIS root, checked before any video runs).
  """
  import pathlib  # noqa: PLC0415

  from dinoseg.evaluation import davis  # noqa: PLC0415
  evaluator = davis.DavisEvaluator()
  info_path = segmenter.settings.objects_info if objects_info is None else objects_info
  overlap = segmenter.settings.overlap
  if overlap not in OVERLAP_MODES:
    raise UserValueError(f"overlap must be one of {OVERLAP_MODES}, got {overlap!r}")
  info = None
  is_davis = davis.is_davis_root(data_path)
  if info_path:
    if not is_davis:
      raise UserValueError(f"a video objects info file ({info_path}) names DAVIS sequences and frames: {data_path} "
                           f"is not a DAVIS root (JPEGImages/, Annotations/, ImageSets/)")
    info = davis.read_video_objects_info(info_path)
    absent = [name for name in davis.davis_sequences(data_path, split) if name not in info]
    if absent:
      raise UserValueError(f"{info_path}: videos {absent[:5]} of split {split!r} are not in it "
                           f"({len(absent)} missing)")
  out = pathlib.Path(out_dir) if out_dir else None
  if out is not None and is_davis:  # refuse before anything runs
    planned = []
    for name in davis.davis_sequences(data_path, split):
      planned += _output_files(name, _davis_frame_stems(data_path, name))
    _check_outputs(out, planned)
  late = videos = 0
  for name, frames, gt, sequence in _videos(data_path, split):
    if max_videos and videos >= max_videos:
      break
    if frames.shape[0] < 3:
      continue
    present = gt.reshape(gt.shape[0], gt.shape[1], -1).any(-1)  # (O, T)
    if info is None:
      start_frames = np.where(present.any(1), np.argmax(present, axis=1), -1)
      ends = last_annotated_frames(present)
    else:
      start_frames, ends = davis.video_object_frames(info, sequence, source=str(info_path))
    tracked = start_frames >= 0
    if not tracked.any():
      continue
    if sequence is None and len(gt) > 255:
      raise UserValueError(f"{data_path}: video {name} has {len(gt)} tracks; a DAVIS label map holds at most 255")
    object_ids = np.arange(1, len(gt) + 1) if sequence is None else np.asarray(sequence.object_ids)
    order = None if info is None else _paint_order(info, sequence)
    starts = start_frames[tracked]
    first = gt[tracked][np.arange(int(tracked.sum())), starts]
    pred = np.zeros(gt.shape, bool)
    tracked_masks, _ = segmenter.segment(frames, first, starts, ends[tracked])
    pred[tracked] = tracked_masks
    labels = label_map(pred, object_ids, order)  # (T, H, W)
    evaluator.process(name, gt, label_masks(labels, object_ids) if overlap == "label_map" else pred)
    videos += 1
    late += int((starts > 0).sum())
    if out is not None:
      stems = sequence.frame_names if sequence is not None else [f"{t:05d}" for t in range(len(frames))]
      palette = davis.annotation_palette(data_path, name) if sequence is not None else davis.default_palette()
      _write_outputs(out, name, stems, labels, palette, masks=pred, labels=labels, object_ids=object_ids,
                     start_frames=start_frames, end_frames=ends)
  if not videos:
    raise UserValueError(f"{data_path}: no video of split {split!r} has an object (and >= 3 frames)")
  return {**evaluator.result(), "num_videos": videos, "objects_after_first_frame": late}


def _paint_order(info: Mapping, sequence) -> np.ndarray:
  """(O,) the reference's painting order of `sequence`'s objects: the order of the object ids in its
  `video_objects_info.json` entry (already checked by `davis.video_object_frames`), unlisted objects (never
  present) after them."""
  index = {int(v): o for o, v in enumerate(sequence.object_ids)}
  listed = [index[int(k)] for k in info[sequence.name]["objects"] if int(k) in index]
  return np.asarray(listed + [o for o in range(len(index)) if o not in listed], np.int64)


def _davis_frame_stems(root: str, name: str, resolution: str = "480p") -> list[str]:
  """The frame file stems of a DAVIS sequence, as `davis.read_davis_sequence` lists them (sorted)."""
  import pathlib  # noqa: PLC0415
  image_dir = pathlib.Path(root) / "JPEGImages" / resolution / name
  files = sorted(p for p in image_dir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) \
      if image_dir.is_dir() else []
  return [p.stem for p in files]


def _output_files(name: str, stems: list[str]) -> list[str]:
  """The out_dir-relative files evaluate_vos writes for video `name` (POSIX separators)."""
  if not name or name in (".", "..") or "/" in name or "\\" in name:
    raise UserValueError(f"video name {name!r} cannot name an output folder")
  return [f"{name}.npz"] + [f"{name}/{stem}.png" for stem in stems]


def _read_manifest(out) -> set[str]:
  """The files listed in `out`/OUTPUTS_MANIFEST (empty when there is none)."""
  import json  # noqa: PLC0415
  path = out / OUTPUTS_MANIFEST
  if not path.exists():
    return set()
  try:
    files = json.loads(path.read_text(encoding="utf-8"))["files"]
  except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
    raise UserValueError(f"{path}: not a list of evaluate_vos outputs ({e}); remove it or choose another "
                         f"out_dir") from None
  return {str(f) for f in files}


def _check_outputs(out, files: list[str]) -> None:
  """UserValueError when one of `files` (relative to `out`) exists and was not written by evaluate_vos (not in
  its manifest)."""
  if out.exists() and not out.is_dir():
    raise UserValueError(f"out_dir {out} is a file, not a folder")
  owned = _read_manifest(out)
  clash = [f for f in files if (f not in owned and (out / f).exists())
           or ((out / f).parent.exists() and not (out / f).parent.is_dir())]
  if (out / OUTPUTS_MANIFEST).exists() and not (out / OUTPUTS_MANIFEST).is_file():
    clash.insert(0, OUTPUTS_MANIFEST)
  if clash:
    raise UserValueError(f"out_dir {out}: {out / clash[0]} exists and was not written by an earlier VOS evaluation "
                         f"({len(clash)} such files); it is not overwritten: choose another out_dir")


def _write_outputs(out, name: str, stems: list[str], frame_labels: np.ndarray, palette: list[int], **arrays) -> None:
  """Writes video `name`'s label PNGs (frame_labels (T, H, W), one per stem) and npz (`arrays`) into `out`
  (after `_check_outputs`), listing them in the manifest first (so an interrupted write still marks them as
  evaluate_vos's)."""
  import json  # noqa: PLC0415

  from dinoseg.evaluation import davis  # noqa: PLC0415
  files = _output_files(name, stems)
  _check_outputs(out, files)
  out.mkdir(parents=True, exist_ok=True)
  owned = sorted(_read_manifest(out) | set(files))
  tmp = out / f"{OUTPUTS_MANIFEST}.tmp"
  tmp.write_text(json.dumps({"files": owned}, indent=0) + "\n", encoding="utf-8")
  tmp.replace(out / OUTPUTS_MANIFEST)
  (out / name).mkdir(exist_ok=True)
  for f, stem in enumerate(stems):
    davis.write_label_png(out / name / f"{stem}.png", frame_labels[f], palette)
  np.savez_compressed(out / f"{name}.npz", **arrays)


def _videos(data_path: str, split: str):
  """(name, frames (T, H, W, 3) uint8, gt (O, T, H, W) bool, the DavisSequence or None) per video of a DAVIS root
  or a prepared dataset."""
  from dinoseg.evaluation import davis  # noqa: PLC0415
  if davis.is_davis_root(data_path):
    for name in davis.davis_sequences(data_path, split):
      seq = davis.read_davis_sequence(data_path, name)
      yield name, seq.frames, seq.masks, seq
    return
  from dinoseg.data_pipelines import open_dataset, schema  # noqa: PLC0415
  view = open_dataset(data_path).split(split)
  for i in range(len(view)):
    ex = schema.decode_example(view.record(i), masks=True)
    if ex.get("kind") != "video" or "tracks" not in ex:
      raise UserValueError(f"{data_path}: split {split!r} holds no video records with tracks")
    tr = ex["tracks"]
    use = ~tr["is_crowd"]
    yield str(ex["image_id"]), ex["frames"], (tr["masks"][use] > 0) & tr["present"][use][:, :, None, None], None


__all__ = ["LATE_OBJECT_MODES", "RESIZE_MODES", "COMPUTE_DTYPES", "FIRST_FRAME_OUTPUTS", "OVERLAP_MODES",
           "OUTPUTS_MANIFEST", "label_map", "label_masks", "reference_resize_size",
           "opencv_cubic_resize", "reference_resize", "torch_cpu_bilinear_matrix",
           "resized_given_masks", "with_compute_dtype",
           "last_annotated_frames", "point_grid", "grid_clicks", "fixed_nms", "select_proposals", "VOSSettings",
           "VideoObjectSegmenter", "evaluate_vos"]
