"""OV2Seg evaluation on prepared video datasets (LV-VIS, YouTube-VIS 2019 / 2021, OVIS): video AP, APb, APn.

Two ways in:

- `VideoEvaluation`, a mixin giving a trainer task (`class OV2SegTask(VideoEvaluation, task.Task)`) the
  trainer's eval contract (`dinoseg.train.task`): `eval_iterator`, `predict_fn`, `evaluator`. It uses
  `self.config`, `self.model` (the Flax OV2Seg) and `self.class_embeddings(split)` -> (C, E) float32, the
  vocabulary of the evaluated split in the dataset's category order (label i <-> the i-th category id).
- `evaluate_video_dataset(config, variables)`: the same loop without the trainer (one process).

Batches (`VideoWindowBatches`): every video of `config.data.eval_split` of the prepared dataset
`config.test.eval_path` (else `config.data.path`), in order, cut into windows of `config.test.window_size`
frames; a batch is one window of one video, always `window_size` rows (the last window padded with copies of its last frame, `example_valid`
False), so the model compiles once per canvas. Frames are resized like the reference's test input
(ResizeShortestEdge `test.min_size` (480 on LV-VIS), `test.max_size` (1333)) and zero-padded to a multiple of
32, the reference's canvas (one compilation per distinct padded size; LV-VIS and YouTube-VIS have a handful),
or to the fixed `test.eval_canvas` (H, W) when the config sets it (one compilation; extra zero padding changes
the outputs slightly, since the pixel decoder has no padding mask). Keys: image (W, H, W', 3) float32 0-255,
valid_hw (W, 2), original_hw (W, 2), video_id (W,), frame_index (W,), num_frames (W,), example_valid (W,).
With several processes each process yields its contiguous slice of every window (window_size must divide).

`predict_fn` runs the per-frame model and keeps the final prediction (`video.last_prediction`). The evaluator
(`VideoEvaluator.update`) feeds each window to a `predict.StreamingAssociation` (the released association,
jitted once, state carried across the windows of a video); after a video's last frame its instances are
scored, their masks resized to the video's size and RLE-encoded window by window, and added to the results.
`result()` scores them with `dinoseg.evaluation.video_ap` against the ground truth: the original annotation
JSON when `config.test.eval_annotations` names it (its `areas` define the area ranges: the official numbers),
else one rebuilt from the prepared records (`ground_truth_from_records`). Metrics are in percent (NaN where
undefined): AP, AP50, ..., ARl and, for LV-VIS (categories with a `partition`), the same with suffix b (base)
and n (novel): APb, APn. `config.test.eval_results` (a path) also writes the results JSON. The paper's
memory-query variant (`test.class_source = "memory"`) needs the params in the evaluator, so it is evaluated
by `evaluate_video_dataset` only; the trainer's evaluation refuses it.
"""
import json
import logging
import pathlib
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.errors import UserValueError
from dinoseg.models.ov2seg import predict as predict_lib
from dinoseg.models.ov2seg import video as video_lib

logger = logging.getLogger(__name__)


def _test(config) -> dict:
  return dict(config.get("test") or {})


def _data(config) -> dict:
  return dict(config.get("data") or {})


def eval_split(config) -> str:
  return str(_data(config).get("eval_split") or "val")


def eval_path_key(config) -> tuple[str, str]:
  """(config key, path) of the video dataset evaluated: `config.test.eval_path` when set (a training run on LVIS
  images evaluating on LV-VIS), else `config.data.path`."""
  test = dict(config.get("test") or {})
  if test.get("eval_path"):
    return "config.test.eval_path", str(test["eval_path"])
  return "config.data.path", str(_data(config).get("path") or "")


def open_eval_dataset(config):
  """The prepared video dataset of `eval_path_key(config)` (a UserError when it is missing or not a video one)."""
  from dinoseg.data_pipelines.dataset import open_dataset  # noqa: PLC0415
  from dinoseg.errors import UserFileNotFoundError  # noqa: PLC0415
  key, path = eval_path_key(config)
  if not path:
    raise UserValueError("config.test.eval_path (or config.data.path) must name a prepared video dataset (dinoseg "
                         "data prepare lvvis / ytvis_2019 / ytvis_2021 / ovis) to evaluate on")
  try:
    dataset = open_dataset(path)
  except UserFileNotFoundError as e:
    raise UserFileNotFoundError(f"{key}={path!r}: {e}") from None
  if dataset.metadata.get("task") not in (None, "video"):
    raise UserValueError(f"{key}={path!r} is a {dataset.metadata.get('task')!r} dataset, not a video one")
  return dataset


class VideoWindowBatches:
  """The eval batches (module docstring): an iterable, re-iterable, over this process's window slices."""

  def __init__(self, config, process_index: int = 0, process_count: int = 1, dataset=None):
    test = _test(config)
    self.window = int(test.get("window_size", 10))
    if self.window % process_count:
      raise UserValueError(f"test.window_size ({self.window}) must be divisible by the {process_count} processes "
                           "(each evaluates a slice of every window)")
    self.process_index, self.process_count = process_index, process_count
    self.min_size, self.max_size = int(test.get("min_size", 480)), int(test.get("max_size", 1333))
    self.divisibility = int(test.get("size_divisibility", 32))
    canvas = test.get("eval_canvas")
    self.canvas = tuple(int(v) for v in canvas) if canvas else None
    if self.canvas and (len(self.canvas) != 2 or any(v % 32 for v in self.canvas)):
      raise UserValueError(f"test.eval_canvas must be (H, W), multiples of 32, got {canvas}")
    self.dataset = dataset if dataset is not None else open_eval_dataset(config)
    self.split = eval_split(config)

  def geometry(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized (h, w), canvas (H, W)) of a video of size (h, w)."""
    from dinoseg.predict import resize_shortest_edge  # noqa: PLC0415
    nh, nw = resize_shortest_edge(h, w, self.min_size, self.max_size)
    if self.canvas:
      if nh > self.canvas[0] or nw > self.canvas[1]:
        raise UserValueError(f"test.eval_canvas {self.canvas} cannot hold a {h}x{w} video resized to {nh}x{nw}")
      return (nh, nw), self.canvas
    d = self.divisibility
    return (nh, nw), (-(-nh // d) * d, -(-nw // d) * d)

  def __iter__(self) -> Iterator[dict]:
    from PIL import Image  # noqa: PLC0415

    from dinoseg.data_pipelines import schema  # noqa: PLC0415
    view = self.dataset.split(self.split)
    per = self.window // self.process_count
    rows = slice(self.process_index * per, (self.process_index + 1) * per)
    for i in range(len(view)):
      rec = view.record(i)
      h, w = int(rec["height"]), int(rec["width"])
      frames = rec["frames"]["image"]
      t = len(frames)
      (nh, nw), canvas_hw = self.geometry(h, w)
      for start in range(0, t, self.window):
        n = min(self.window, t - start)
        image = np.zeros((self.window, *canvas_hw, 3), np.float32)
        for j in range(n):
          frame = schema.decode_image(frames[start + j])
          if frame.shape[:2] != (h, w):
            raise UserValueError(f"video {rec['id']} frame {start + j} is {frame.shape[0]}x{frame.shape[1]}, "
                                 f"the record says {h}x{w}")
          image[j, :nh, :nw] = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BILINEAR), np.float32)
        image[n:] = image[n - 1]
        batch = {"image": image, "valid_hw": np.tile(np.asarray([[nh, nw]], np.int32), (self.window, 1)),
                 "original_hw": np.tile(np.asarray([[h, w]], np.int32), (self.window, 1)),
                 "video_id": np.full(self.window, int(rec["id"]), np.int64),
                 "frame_index": np.minimum(start + np.arange(self.window), t - 1).astype(np.int32),
                 "num_frames": np.full(self.window, t, np.int32),
                 "example_valid": np.arange(self.window) < n}
        yield {k: v[rows] for k, v in batch.items()}


class VideoEvaluator:
  """Associates, scores and collects the videos window by window; `result()` -> video AP (module docstring).

  Args:
    config: the OV2Seg config (test settings, test.eval_annotations / eval_results).
    dataset: the prepared dataset; split: its evaluated split.
    class_names: the vocabulary's names (only for logging); class_head: see predict.StreamingAssociation.
  """

  def __init__(self, config, dataset, split: str, class_head=None):
    self.config = config
    self.settings = video_lib.VideoInferenceSettings.from_config(_test(config))
    if self.settings.class_source == "memory" and class_head is None:
      raise UserValueError("test.class_source='memory' (the paper's variant) is evaluated by "
                           "dinoseg.models.ov2seg.evaluate.evaluate_video_dataset (it needs the class head's params), "
                           "not by the trainer's evaluation")
    self.dataset, self.split, self.class_head = dataset, split, class_head
    self.category_ids = dataset.category_ids
    self.results: list[dict] = []
    self.num_videos = 0
    self._video = None  # (video id, StreamingAssociation)

  def update(self, batch: Mapping[str, Any], predictions: Mapping[str, Any]) -> None:
    valid = np.asarray(batch["example_valid"], bool)
    n = int(valid.sum())
    if n == 0:
      return
    # The window's frames in order, then its padding rows (with several processes, each one's padding rows
    # follow its own slice, so they may sit between frames of the gathered batch).
    order = np.concatenate([np.flatnonzero(valid), np.flatnonzero(~valid)])
    padded_hw = tuple(np.shape(batch["image"])[1:3])
    batch = {k: np.asarray(batch[k])[order] for k in ("video_id", "frame_index", "num_frames", "valid_hw",
                                                      "original_hw")}
    predictions = {k: np.asarray(predictions[k])[order] for k in ("logits", "objectness", "masks", "embeddings")}
    video_id = int(batch["video_id"][0])
    first = int(batch["frame_index"][0])
    if self._video is None or self._video[0] != video_id:
      if self._video is not None:
        raise ValueError(f"video {self._video[0]} ended before its last frame (next: video {video_id})")
      if first != 0:
        raise ValueError(f"video {video_id} starts at frame {first}")
      self._video = (video_id, predict_lib.StreamingAssociation(self.settings, class_head=self.class_head))
    assoc = self._video[1]
    assoc.add({k: jnp.asarray(predictions[k]) for k in ("logits", "objectness", "masks", "embeddings")}, n)
    last = int(batch["frame_index"][n - 1])
    if last == int(batch["num_frames"][0]) - 1:
      try:
        out = predict_lib.video_results(
            assoc, video_id=video_id, name=str(video_id), frame_names=[str(i) for i in range(last + 1)],
            padded_hw=padded_hw, valid_hw=batch["valid_hw"][0],
            output_hw=tuple(int(v) for v in batch["original_hw"][0]),
            class_names=[str(c) for c in self.category_ids])
        self.results.extend(out.to_results(self.category_ids))
        self.num_videos += 1
      finally:
        assoc.close()
        self._video = None

  def ground_truth(self) -> dict:
    from dinoseg.evaluation import video_ap  # noqa: PLC0415
    annotations = _test(self.config).get("eval_annotations")
    if annotations:
      return video_ap._read_json(annotations, "config.test.eval_annotations")  # noqa: SLF001
    view = self.dataset.split(self.split)
    return video_ap.ground_truth_from_records((view.record(i) for i in range(len(view))), self.dataset.categories)

  def result(self) -> dict[str, float]:
    from dinoseg.evaluation import video_ap  # noqa: PLC0415
    if self._video is not None:
      raise ValueError(f"the evaluation ended inside video {self._video[0]}")
    path = _test(self.config).get("eval_results")
    if path:
      pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
      pathlib.Path(path).write_text(json.dumps(self.results))
    metrics = video_ap.percent(video_ap.evaluate_video_ap(self.ground_truth(), self.results)["metrics"])
    metrics["num_videos"] = float(self.num_videos)
    return metrics


class VideoEvaluation:
  """The trainer's eval contract for OV2Seg tasks (module docstring). Needs `self.config`, `self.model` and
  `self.class_embeddings(split)` -> (C, E)."""

  def _eval_dataset(self):
    if getattr(self, "_ov2seg_eval_dataset", None) is None:
      self._ov2seg_eval_dataset = open_eval_dataset(self.config)
    return self._ov2seg_eval_dataset

  def eval_iterator(self, process_index: int, process_count: int):
    if not eval_path_key(self.config)[1]:
      return None
    return VideoWindowBatches(self.config, process_index, process_count, dataset=self._eval_dataset())

  def predict_fn(self, params, model_state, batch):
    embeddings = jnp.asarray(self.class_embeddings(eval_split(self.config), self._eval_dataset()), jnp.float32)
    out = self.model.apply({"params": params, **dict(model_state or {})}, batch["image"], embeddings,
                           batch["valid_hw"])
    return video_lib.last_prediction(out)

  def evaluator(self):
    if not eval_path_key(self.config)[1]:
      return None
    return VideoEvaluator(self.config, self._eval_dataset(), eval_split(self.config))


def dataset_class_embeddings(config, dataset) -> np.ndarray:
  """(C, E) class embeddings of the dataset's categories: `config.vocabulary.file` (C must match), else CLIP
  text embeddings of the category names (`config.vocabulary.clip_file`)."""
  from dinoseg.models.ov2seg import vocabulary as vocab_lib  # noqa: PLC0415
  names = vocab_lib.category_names(dataset.categories)
  settings = dict(config.get("vocabulary") or {})
  if settings.get("file"):
    return vocab_lib.read_class_embeddings(settings["file"], num_classes=len(names),
                                           dim=int(config.model.classifier.embed_dim))
  embeddings, _ = predict_lib.resolve_vocabulary(config, classes=names)
  return embeddings


def evaluate_video_dataset(config, variables: Mapping, *, class_embeddings=None) -> dict[str, float]:
  """Video AP of `variables` on `config.test.eval_path` (else `data.path`) / `config.data.eval_split` without the
  trainer (one process).

  Args:
    config: an OV2Seg config. variables: the model's Flax variables.
    class_embeddings: (C, E) in the dataset's category order (default `dataset_class_embeddings`).
  Returns:
    the evaluator's metrics (percent; AP, APb, APn, ...).
  """
  from dinoseg.models.ov2seg.model import build_model  # noqa: PLC0415
  dataset = open_eval_dataset(config)
  if class_embeddings is None:
    class_embeddings = dataset_class_embeddings(config, dataset)
  class_embeddings = jnp.asarray(class_embeddings, jnp.float32)
  if class_embeddings.shape[0] != len(dataset.categories):
    raise UserValueError(f"{class_embeddings.shape[0]} class embeddings for {len(dataset.categories)} categories")
  model = build_model(config.model)
  variables = jax.device_put(dict(variables))
  settings = video_lib.VideoInferenceSettings.from_config(_test(config))
  class_head = (predict_lib.class_head_fn(config, variables, class_embeddings)
                if settings.class_source == "memory" else None)
  evaluator = VideoEvaluator(config, dataset, eval_split(config), class_head=class_head)

  for batch in VideoWindowBatches(config, dataset=dataset):
    evaluator.update(batch, predict_lib.frame_predictions(model, variables, batch["image"], class_embeddings,
                                                          batch["valid_hw"]))
  return evaluator.result()


__all__ = ["VideoEvaluation", "VideoEvaluator", "VideoWindowBatches", "evaluate_video_dataset",
           "dataset_class_embeddings", "open_eval_dataset", "eval_split"]
