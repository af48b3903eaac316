"""DAVIS-2017 semi-supervised video object segmentation scores: region J, boundary F, J&F.

The definitions of davisvideochallenge/davis2017-evaluation (the code DINOv's `--eval_track_prev`
results are scored with), written with numpy / scipy:

- J (region similarity): |pred & gt| / |pred | gt| per frame; 1 when both are empty.
- F (boundary measure): the one-pixel boundary maps of both masks (a pixel whose right, lower or
  lower-right neighbour differs; the last row / column compare along the border only; the corner pixel
  is never a boundary), each dilated by a disk of radius ceil(bound_th * ||(H, W)||) (bound_th = 0.008 of
  the image diagonal; >= 1 means pixels); precision = matched predicted boundary / predicted boundary,
  recall = matched GT boundary / GT boundary (no predicted boundary: precision 1; no GT boundary: recall
  1; neither: both 1), F = 2PR / (P + R) (0 when P + R = 0).
- Per object over its frames (the first and last frames of a sequence are not scored): mean, recall =
  fraction of frames > 0.5, decay = mean of the first quarter minus mean of the last quarter (4 bins at
  round(linspace(1, T, 5)) - 1, each bin including its right edge).
- Summary over every object of every sequence: J-Mean, J-Recall, J-Decay, F-..., J&F-Mean = (J-Mean +
  F-Mean) / 2. Objects missing from a prediction count as empty masks.

Differences: none in the numbers for sequences up to 255 scored frames; the official code indexes the decay
bins with uint8, which wraps beyond that (longer than any DAVIS sequence); here the indices are int64.
Checked number for number against a transcription of the official functions on fixture masks
(scripts/make_davis_fixtures.py, tests/evaluation/test_davis.py).

The official DAVIS-2017 download is read as it unpacks (`is_davis_root`, `davis_sequences`,
`read_davis_sequence`):

  <root>/JPEGImages/480p/<sequence>/00000.jpg ...
  <root>/Annotations/480p/<sequence>/00000.png ...   indexed (palette) PNGs: pixel value = object id, 0 background
  <root>/ImageSets/2017/val.txt                       one sequence name per line

Objects are counted as davis2017-evaluation counts them: the ids 1..N, N = the largest id of the first
frame's annotation (an id up to N that is absent from the first frame is an object that enters later; one
that is never present is still scored, as the official code does); ids above N are left out of the score
there and here (with a warning; `all_objects=True` takes every id found in any annotation instead). 255
(DAVIS's void label) is background, as in the official code, which zeroes it before separating objects. Masks
are stacked as (O, T, H, W). Every frame needs its annotation (the val split has them).

`read_video_objects_info` / `video_object_frames` read the per-object frame lists of a `video_objects_info.json`
(what DINOv's DAVIS registration reads beside the data; not part of the download): each object's first and
last listed frame, checked against the sequence.

Results in the layout davis2017-evaluation and the DAVIS server read: `<results>/<sequence>/<frame stem>.png`,
one indexed PNG of object ids per frame (`write_label_png`, palette `annotation_palette` / `default_palette`;
`read_result_masks` reads them back as the official evaluator does).
"""
import dataclasses
import logging
import os
import pathlib
from typing import Mapping

import numpy as np
from scipy import ndimage

from dinoseg.errors import UserFileNotFoundError, UserValueError

BOUND_TH = 0.008  # the reference tolerance: 0.8 % of the image diagonal

logger = logging.getLogger(__name__)


def region_similarity(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """J of (..., H, W) binary masks -> (...) float64 (1 where both masks are empty)."""
  gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
  if gt.shape != pred.shape:
    raise ValueError(f"gt {gt.shape} and pred {pred.shape} must have one shape")
  inter = (gt & pred).sum((-2, -1)).astype(np.float64)
  union = (gt | pred).sum((-2, -1)).astype(np.float64)
  return np.where(union == 0, 1.0, inter / np.maximum(union, 1.0))


def boundary_map(mask: np.ndarray) -> np.ndarray:
  """(H, W) binary mask -> (H, W) bool one-pixel boundary (see the module docstring)."""
  m = np.asarray(mask).astype(bool)
  right = np.zeros_like(m)
  right[:, :-1] = m[:, 1:]
  down = np.zeros_like(m)
  down[:-1, :] = m[1:, :]
  diag = np.zeros_like(m)
  diag[:-1, :-1] = m[1:, 1:]
  edge = (m != right) | (m != down) | (m != diag)
  edge[-1, :] = m[-1, :] != right[-1, :]
  edge[:, -1] = m[:, -1] != down[:, -1]
  edge[-1, -1] = False
  return edge


def disk_structure(radius: float) -> np.ndarray:
  """Bool disk of radius r on the (2r + 1)^2 grid: x^2 + y^2 <= r^2."""
  r = int(radius)
  yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
  return (xx * xx + yy * yy) <= radius * radius


def boundary_tolerance(hw: tuple[int, int], bound_th: float = BOUND_TH) -> float:
  """Dilation radius in pixels: bound_th if >= 1, else ceil(bound_th * ||(H, W)||)."""
  return float(bound_th) if bound_th >= 1 else float(np.ceil(bound_th * np.hypot(float(hw[0]), float(hw[1]))))


def boundary_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
  """F of one frame: (H, W) binary masks -> float."""
  gt, pred = np.asarray(gt), np.asarray(pred)
  if gt.shape != pred.shape or gt.ndim != 2:
    raise ValueError(f"gt {gt.shape} and pred {pred.shape} must be one (H, W) shape")
  b_pred, b_gt = boundary_map(pred), boundary_map(gt)
  n_pred, n_gt = int(b_pred.sum()), int(b_gt.sum())
  if n_pred == 0 or n_gt == 0:
    precision = 1.0 if n_pred == 0 else 0.0
    recall = 1.0 if n_gt == 0 else 0.0
  else:
    structure = disk_structure(boundary_tolerance(gt.shape, bound_th))
    near_gt = ndimage.binary_dilation(b_gt, structure=structure)
    near_pred = ndimage.binary_dilation(b_pred, structure=structure)
    precision = float((b_pred & near_gt).sum()) / n_pred
    recall = float((b_gt & near_pred).sum()) / n_gt
  if precision + recall == 0:
    return 0.0
  return 2.0 * precision * recall / (precision + recall)


def statistics(values: np.ndarray) -> tuple[float, float, float]:
  """(mean, recall (> 0.5), decay) of per-frame values (T,) (NaN ignored as the official nanmean)."""
  v = np.asarray(values, np.float64)
  if v.ndim != 1 or len(v) == 0:
    raise ValueError(f"per-frame values must be a non-empty (T,) array, got shape {v.shape}")
  with np.errstate(invalid="ignore"):
    import warnings  # noqa: PLC0415
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", category=RuntimeWarning)
      mean = float(np.nanmean(v))
      recall = float(np.nanmean(v > 0.5))
      edges = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
      decay = float(np.nanmean(v[edges[0]:edges[1] + 1]) - np.nanmean(v[edges[3]:edges[4] + 1]))
  return mean, recall, decay


def evaluate_sequence(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> tuple[np.ndarray, np.ndarray]:
  """Per-frame J and F of one sequence, semi-supervised protocol.

  Args:
    gt: (O, T, H, W) binary masks per object; pred: (O', T, H, W), O' <= O (missing objects are empty).
  Returns:
    j, f: (O, T - 2) float64 (the first and the last frame are not scored).
  """
  gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
  if gt.ndim != 4 or pred.ndim != 4 or pred.shape[1:] != gt.shape[1:]:
    raise ValueError(f"gt (O, T, H, W) and pred (O', T, H, W) must agree, got {gt.shape} and {pred.shape}")
  if pred.shape[0] > gt.shape[0]:
    raise ValueError(f"the prediction has {pred.shape[0]} objects, the ground truth {gt.shape[0]}")
  if gt.shape[1] < 3:
    raise ValueError(f"a sequence needs at least 3 frames (first and last are not scored), got {gt.shape[1]}")
  pred = np.concatenate([pred, np.zeros((gt.shape[0] - pred.shape[0], *pred.shape[1:]), bool)], 0)
  gt, pred = gt[:, 1:-1], pred[:, 1:-1]
  j = region_similarity(gt, pred)
  f = np.asarray([[boundary_measure(gt[o, t], pred[o, t], bound_th) for t in range(gt.shape[1])]
                  for o in range(gt.shape[0])], np.float64).reshape(j.shape)
  return j, f


class DavisEvaluator:
  """Accumulates sequences; `result()` -> the official global table (module docstring)."""

  def __init__(self, bound_th: float = BOUND_TH):
    self.bound_th = bound_th
    self.j_stats: list[tuple[float, float, float]] = []
    self.f_stats: list[tuple[float, float, float]] = []
    self.per_object: dict[str, float] = {}

  def process(self, name: str, gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores sequence `name`: gt (O, T, H, W), pred (O', T, H, W). Returns its per-frame (j, f)."""
    j, f = evaluate_sequence(gt, pred, self.bound_th)
    for o in range(j.shape[0]):
      js, fs = statistics(j[o]), statistics(f[o])
      self.j_stats.append(js)
      self.f_stats.append(fs)
      self.per_object[f"{name}_{o + 1}"] = (js[0] + fs[0]) / 2
    return j, f

  def result(self) -> Mapping[str, float]:
    if not self.j_stats:
      raise ValueError("no sequence was processed")
    j, f = np.asarray(self.j_stats).mean(0), np.asarray(self.f_stats).mean(0)
    return {"J&F-Mean": float((j[0] + f[0]) / 2), "J-Mean": float(j[0]), "J-Recall": float(j[1]),
            "J-Decay": float(j[2]), "F-Mean": float(f[0]), "F-Recall": float(f[1]), "F-Decay": float(f[2]),
            "num_objects": len(self.j_stats)}


VOID_ID = 255  # DAVIS's "void" label in the annotation PNGs


def is_davis_root(path: str | os.PathLike) -> bool:
  """Whether `path` looks like an unpacked DAVIS download (JPEGImages/, Annotations/, ImageSets/)."""
  p = pathlib.Path(path)
  return all((p / d).is_dir() for d in ("JPEGImages", "Annotations", "ImageSets"))


def davis_sequences(root: str | os.PathLike, split: str = "val", year: str = "2017") -> list[str]:
  """The sequence names of `<root>/ImageSets/<year>/<split>.txt` (in file order, blank lines skipped)."""
  path = pathlib.Path(root) / "ImageSets" / str(year) / f"{split}.txt"
  if not path.is_file():
    raise UserFileNotFoundError(f"no DAVIS split list {path} (expected ImageSets/{year}/<split>.txt)")
  names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
  if not names:
    raise UserValueError(f"{path} names no sequence")
  return names


@dataclasses.dataclass
class DavisSequence:
  """One sequence: frames (T, H, W, 3) uint8, masks (O, T, H, W) bool, object_ids (O,) int (annotation
  values), frame_names (T,) file stems."""
  name: str
  frames: np.ndarray
  masks: np.ndarray
  object_ids: np.ndarray
  frame_names: list[str]


def _read_annotation(path: pathlib.Path, hw: tuple[int, int]) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError  # noqa: PLC0415
  try:
    with Image.open(path) as im:
      if im.mode not in ("P", "L"):
        raise UserValueError(f"{path}: a DAVIS annotation must be an indexed (palette) or grey PNG of object ids, "
                             f"got mode {im.mode}")
      ids = np.asarray(im)
  except (OSError, UnidentifiedImageError) as e:
    if isinstance(e, FileNotFoundError):
      raise UserFileNotFoundError(f"missing DAVIS annotation {path} (J&F needs every frame's annotation)") from None
    raise UserValueError(f"{path}: unreadable annotation ({e})") from None
  if ids.shape != hw:
    raise UserValueError(f"{path}: annotation size {ids.shape} differs from its frame's {hw}")
  return ids


def read_davis_sequence(root: str | os.PathLike, name: str, resolution: str = "480p",
                        all_objects: bool = False) -> DavisSequence:
  """Reads `<root>/JPEGImages/<resolution>/<name>/*.jpg` (sorted) and the annotation PNG of every frame.

  Objects: ids 1..(the largest id of the first frame), as the official evaluation (module docstring); with
  `all_objects`, every id of any annotation (sorted)."""
  from PIL import Image, UnidentifiedImageError  # noqa: PLC0415
  root = pathlib.Path(root)
  image_dir, mask_dir = root / "JPEGImages" / resolution / name, root / "Annotations" / resolution / name
  files = sorted(p for p in image_dir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) \
      if image_dir.is_dir() else []
  if not files:
    raise UserFileNotFoundError(f"DAVIS sequence {name!r}: no frames in {image_dir}")
  frames, ids = [], []
  for p in files:
    try:
      with Image.open(p) as im:
        frame = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
      raise UserValueError(f"{p}: unreadable frame ({e})") from None
    if frames and frame.shape != frames[0].shape:
      raise UserValueError(f"{p}: frame size {frame.shape[:2]} differs from the sequence's {frames[0].shape[:2]}")
    frames.append(frame)
    ids.append(_read_annotation(mask_dir / f"{p.stem}.png", frame.shape[:2]))
  ids = np.where(np.stack(ids) == VOID_ID, 0, np.stack(ids))  # (T, H, W), void -> background
  found = sorted(int(v) for v in np.unique(ids) if v != 0)
  if all_objects:
    object_ids = np.asarray(found, np.int64)
  else:
    object_ids = np.arange(1, int(ids[0].max()) + 1, dtype=np.int64)
    beyond = [v for v in found if v > len(object_ids)]
    if beyond:
      logger.warning("DAVIS sequence %s: ids %s are above the first frame's largest id %d and are not scored "
                     "(as davis2017-evaluation)", name, beyond, len(object_ids))
  masks = ids[None] == object_ids[:, None, None, None]
  return DavisSequence(name=name, frames=np.stack(frames), masks=masks, object_ids=object_ids,
                       frame_names=[p.stem for p in files])


def read_video_objects_info(path: str | os.PathLike) -> dict:
  """Reads a `video_objects_info.json` (the file the reference's DAVIS registration reads beside the data; not
  part of the DAVIS download; YouTube-VOS's meta.json has the same layout):

    {"videos": {"<sequence>": {"objects": {"<object id>": {"frames": ["00000", "00001", ...], ...}, ...}}, ...}}

  Object ids are decimal strings (the annotation value), frames are frame file stems. Returns the parsed
  "videos" mapping; each video's entry is checked when it is used (`video_object_frames`). Raises
  UserFileNotFoundError (no file) or UserValueError (not UTF-8 JSON, no "videos" mapping)."""
  import json  # noqa: PLC0415
  p = pathlib.Path(path)
  if not p.is_file():
    raise UserFileNotFoundError(f"no video objects info file {p}")
  try:
    data = json.loads(p.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserValueError(f"{p}: not a JSON file ({e})") from None
  if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
    raise UserValueError(f'{p}: a video objects info file is a JSON object with a "videos" mapping '
                         f'({{"videos": {{"<sequence>": {{"objects": {{"<id>": {{"frames": [...]}}}}}}}}}})')
  return data["videos"]


def video_object_frames(videos: Mapping, sequence: DavisSequence, source: str = "video objects info"
                        ) -> tuple[np.ndarray, np.ndarray]:
  """Each scored object's first and last frame from a `read_video_objects_info` mapping, as the reference's
  DAVIS mapper takes them: `objects["<id>"]["frames"][0]` (its key frame: the object is given there) and
  `["frames"][-1]` (its end frame), frame names matched to `sequence.frame_names`.

  Returns (start (O,), end (O,)) int64 frame indices in `sequence` order (`sequence.object_ids`), -1 for an
  object the file does not list (allowed only when no annotation holds it). Listed ids that are not scored
  objects are left out with a warning (the official evaluation refuses predictions of them). Raises
  UserValueError (one line) when the video is absent, an entry is malformed, a frame name is not a frame of the
  sequence, the last frame precedes the first, an annotated object is not listed, or a listed object's first
  frame does not hold its mask."""
  name = sequence.name
  entry = videos.get(name)
  if not isinstance(entry, Mapping) or not isinstance(entry.get("objects"), Mapping):
    what = "is not in it" if entry is None else 'has no "objects" mapping'
    raise UserValueError(f"{source}: video {name!r} {what}")
  index = {stem: t for t, stem in enumerate(sequence.frame_names)}
  scored = {int(v): o for o, v in enumerate(sequence.object_ids)}
  starts = np.full(len(scored), -1, np.int64)
  ends = np.full(len(scored), -1, np.int64)
  ignored = []
  for key, obj in entry["objects"].items():
    try:
      object_id = int(key)
    except ValueError:
      raise UserValueError(f"{source}: video {name!r}: object key {key!r} is not an integer id") from None
    frames = obj.get("frames") if isinstance(obj, Mapping) else None
    if not isinstance(frames, list) or not frames or not all(isinstance(f, str) for f in frames):
      raise UserValueError(f'{source}: video {name!r} object {key}: "frames" must be a non-empty list of frame '
                           f"names")
    unknown = [f for f in frames if f not in index]
    if unknown:
      raise UserValueError(f"{source}: video {name!r} object {key}: frames {unknown[:3]} are not frames of the "
                           f"sequence ({sequence.frame_names[0]} .. {sequence.frame_names[-1]})")
    if object_id not in scored:
      ignored.append(object_id)
      continue
    o = scored[object_id]
    starts[o], ends[o] = index[frames[0]], index[frames[-1]]
    if ends[o] < starts[o]:
      raise UserValueError(f"{source}: video {name!r} object {key}: its last frame {frames[-1]} precedes its first "
                           f"frame {frames[0]}")
    if not sequence.masks[o, starts[o]].any():
      raise UserValueError(f"{source}: video {name!r} object {key}: the annotation of its first frame "
                           f"{frames[0]} does not hold it")
  annotated = sequence.masks.reshape(*sequence.masks.shape[:2], -1).any(-1).any(1)  # (O,)
  missing = [int(sequence.object_ids[o]) for o in np.nonzero(annotated & (starts < 0))[0]]
  if missing:
    raise UserValueError(f"{source}: video {name!r}: annotated objects {missing} are not listed")
  if ignored:
    logger.warning("%s: video %s: objects %s are not scored objects of the sequence and are left out", source, name,
                   sorted(ignored))
  return starts, ends


def default_palette() -> list[int]:
  """The 256-colour palette of the DAVIS annotation PNGs (PASCAL VOC's): colour i spreads the bits of i over the
  channels, bit 3k + c of i (c = 0 red, 1 green, 2 blue) becoming bit 7 - k of channel c. Index 1 is
  (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0). Returns 768 ints (r, g, b per index), as PIL's `getpalette()`."""
  palette = []
  for index in range(256):
    rgb = [0, 0, 0]
    for k in range(8):
      for c in range(3):
        rgb[c] |= ((index >> (3 * k + c)) & 1) << (7 - k)
    palette.extend(rgb)
  return palette


def annotation_palette(root: str | os.PathLike, name: str, resolution: str = "480p") -> list[int]:
  """The palette of sequence `name`'s first annotation PNG (sorted by file name; what the reference's DAVIS
  reader copies into its outputs), padded to 768 values; `default_palette()` when the PNG has none (a grey
  PNG) or there is no annotation."""
  from PIL import Image, UnidentifiedImageError  # noqa: PLC0415
  mask_dir = pathlib.Path(root) / "Annotations" / resolution / name
  pngs = sorted(mask_dir.glob("*.png")) if mask_dir.is_dir() else []
  if not pngs:
    return default_palette()
  try:
    with Image.open(pngs[0]) as im:
      palette = im.getpalette() if im.mode == "P" else None
  except (OSError, UnidentifiedImageError) as e:
    raise UserValueError(f"{pngs[0]}: unreadable annotation ({e})") from None
  if not palette:
    return default_palette()
  return (list(palette) + [0] * 768)[:768]


def write_label_png(path: str | os.PathLike, labels: np.ndarray, palette: list[int] | None = None) -> None:
  """Writes one frame's label map (H, W) of object ids 0..255 (0 background) as an indexed ('P' mode) PNG with
  `palette` (768 ints; default `default_palette()`): the DAVIS annotation / results format."""
  from PIL import Image  # noqa: PLC0415
  labels = np.asarray(labels)
  if labels.ndim != 2 or (labels < 0).any() or (labels > 255).any():
    raise ValueError(f"a label map is (H, W) with ids in 0..255, got shape {labels.shape}")
  image = Image.fromarray(labels.astype(np.uint8), mode="P")
  image.putpalette(list(palette) if palette is not None else default_palette())
  image.save(path)


def read_result_masks(results_dir: str | os.PathLike, name: str, frame_names: list[str]) -> np.ndarray:
  """A results folder's predictions of sequence `name` as davis2017-evaluation reads them:
  `<results_dir>/<name>/<frame name>.png` of every frame (indexed or grey PNGs of object ids), object o + 1 =
  the pixels of value o + 1 for o < the largest value of the sequence. Returns (O', T, H, W) bool (O' = that
  largest value; pass to `DavisEvaluator.process`, which scores missing objects as empty and refuses more
  objects than the ground truth has). Raises UserFileNotFoundError for a missing PNG, UserValueError for an
  unreadable one or one of another size."""
  from PIL import Image, UnidentifiedImageError  # noqa: PLC0415
  labels = []
  for stem in frame_names:
    path = pathlib.Path(results_dir) / name / f"{stem}.png"
    try:
      with Image.open(path) as im:
        if im.mode not in ("P", "L"):
          raise UserValueError(f"{path}: a result must be an indexed (palette) or grey PNG of object ids, got mode "
                               f"{im.mode}")
        labels.append(np.asarray(im))
    except FileNotFoundError:
      raise UserFileNotFoundError(f"missing result {path} (every frame of {name} needs one)") from None
    except (OSError, UnidentifiedImageError) as e:
      raise UserValueError(f"{path}: unreadable result PNG ({e})") from None
    if labels[-1].shape != labels[0].shape:
      raise UserValueError(f"{path}: size {labels[-1].shape} differs from the sequence's {labels[0].shape}")
  stack = np.stack(labels).astype(np.int64)  # (T, H, W)
  ids = np.arange(1, int(stack.max()) + 1)
  return stack[None] == ids[:, None, None, None]


__all__ = ["VOID_ID", "is_davis_root", "davis_sequences", "DavisSequence", "read_davis_sequence",
           "BOUND_TH", "region_similarity", "boundary_map", "disk_structure", "boundary_tolerance",
           "boundary_measure", "statistics", "evaluate_sequence", "DavisEvaluator",
           "read_video_objects_info", "video_object_frames", "default_palette", "annotation_palette",
           "write_label_png", "read_result_masks"]
