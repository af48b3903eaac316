"""Runs the OV2Seg reference's own video post-processing on given per-frame outputs (CPU, PyTorch + scipy).

The oracle of dinoseg/models/ov2seg/video.py. Nothing is transcribed: the reference files
`ov2seg/ov2seg_model_video.py` (`OV2SegVideo.forward` in eval mode, `post_processing`, `match_from_embds`
with scipy's `linear_sum_assignment`, `instance_inference`) and `ov2seg/data_video/lvvis_eval.py`
(`instances_to_coco_json_video` with `sem_seg_postprocess`, pycocotools RLE) of haochenheheda/LVVIS
(cc3cdf4) are executed as they are. Only the imports they need from detectron2 (and the evaluator's
unused YTVIS API / tabulate imports) are given small stand-ins, installed in `sys.modules` while the two
files are executed and removed afterwards:

- `configurable`, `retry_if_cuda_oom`: pass-through decorators; registries: `.register()` returns the class.
- `Instances`: an attribute holder with the image size; `Boxes`: holds its tensor.
- `ImageList.from_tensors`: detectron2's padding (zeros, bottom/right, up to the largest size rounded up to
  the size divisibility; `image_sizes` are the unpadded sizes).

The per-frame network is not run: `run_window_inference` of the model object returns the given outputs
(`pred_logits` (T, Q, C+1), `pred_object_logits` (T, Q, 2), `pred_masks` (T, Q, h, w), `pred_embds`
(T, Q, D)), so `forward` runs the reference's normalisation / padding / association / scoring / JSON path.

Used by scripts/make_ov2seg_association_fixtures.py and the slow live test in
tests/models/ov2seg/test_video.py (never by dinoseg). Needs torch, scipy, pycocotools and a checkout of the
reference (default /tmp/ref_lvvis, or $OV2SEG_REFERENCE).
"""
import contextlib
import copy
import importlib.util
import os
import sys
import types

import numpy as np

DEFAULT_REFERENCE = os.environ.get("OV2SEG_REFERENCE", "/tmp/ref_lvvis")
_PACKAGE = "_ov2seg_association_reference"


def _standins(torch) -> dict[str, types.ModuleType]:
  """Stand-in modules for the names the two reference files import."""
  import torch.nn.functional as F  # noqa: N812

  def module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod

  def package(name, **attrs):
    mod = module(name, **attrs)
    mod.__path__ = []
    return mod

  class Registry:
    def register(self, obj=None):
      return (lambda o: o) if obj is None else obj

  class Instances:
    def __init__(self, image_size, **fields):
      self.image_size = image_size
      self.__dict__.update(fields)

  class Boxes:
    def __init__(self, tensor):
      self.tensor = tensor

  class ImageList:
    def __init__(self, tensor, image_sizes):
      self.tensor, self.image_sizes = tensor, image_sizes

    @staticmethod
    def from_tensors(tensors, size_divisibility=0, pad_value=0.0):
      sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
      h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
      if size_divisibility > 1:
        h, w = [-(-x // size_divisibility) * size_divisibility for x in (h, w)]
      batch = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], h, w), pad_value)
      for out, t in zip(batch, tensors):
        out[..., :t.shape[-2], :t.shape[-1]].copy_(t)
      return ImageList(batch, sizes)

  class _Unused:  # names the files import but the oracle never calls
    def __init__(self, *args, **kwargs):
      raise RuntimeError("not available in the association oracle")

  del F
  ref = f"{_PACKAGE}"
  return {
      "detectron2": package("detectron2"),
      "detectron2.config": module("detectron2.config", configurable=lambda f: f, CfgNode=dict),
      "detectron2.data": module("detectron2.data", MetadataCatalog=types.SimpleNamespace(get=lambda name: None)),
      "detectron2.modeling": package("detectron2.modeling", META_ARCH_REGISTRY=Registry(), build_backbone=_Unused,
                                     build_sem_seg_head=_Unused),
      "detectron2.modeling.backbone": module("detectron2.modeling.backbone", Backbone=torch.nn.Module),
      "detectron2.structures": module("detectron2.structures", Boxes=Boxes, ImageList=ImageList,
                                      Instances=Instances, BitMasks=_Unused),
      "detectron2.utils": package("detectron2.utils"),
      "detectron2.utils.memory": module("detectron2.utils.memory", retry_if_cuda_oom=lambda f: f),
      "detectron2.utils.comm": module("detectron2.utils.comm"),
      "detectron2.utils.file_io": module("detectron2.utils.file_io", PathManager=_Unused),
      "detectron2.utils.logger": module("detectron2.utils.logger", create_small_table=_Unused),
      "detectron2.evaluation": module("detectron2.evaluation", DatasetEvaluator=object),
      "tabulate": module("tabulate", tabulate=_Unused),
      ref: package(ref),
      f"{ref}.modeling": package(f"{ref}.modeling"),
      f"{ref}.modeling.criterion": module(f"{ref}.modeling.criterion", SetCriterion=_Unused),
      f"{ref}.modeling.matcher": module(f"{ref}.modeling.matcher", HungarianMatcher=_Unused),
      f"{ref}.data_video": package(f"{ref}.data_video"),
      f"{ref}.data_video.datasets": package(f"{ref}.data_video.datasets"),
      f"{ref}.data_video.datasets.ytvis_api": package(f"{ref}.data_video.datasets.ytvis_api"),
      f"{ref}.data_video.datasets.ytvis_api.lvvis": module(f"{ref}.data_video.datasets.ytvis_api.lvvis",
                                                           LVVIS=_Unused),
      f"{ref}.data_video.datasets.ytvis_api.ytvoseval": module(f"{ref}.data_video.datasets.ytvis_api.ytvoseval",
                                                               YTVOSeval=_Unused),
  }


@contextlib.contextmanager
def _installed(mods: dict[str, types.ModuleType]):
  saved = {name: sys.modules.get(name) for name in mods}
  sys.modules.update(mods)
  try:
    yield
  finally:
    for name, old in saved.items():
      if old is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = old


def _exec_file(name: str, path: str) -> types.ModuleType:
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[name] = mod
  spec.loader.exec_module(mod)
  return mod


def load_reference(root: str = DEFAULT_REFERENCE) -> types.SimpleNamespace:
  """The reference's `ov2seg_model_video` and `data_video/lvvis_eval` modules, executed from `root`.

  Raises:
    FileNotFoundError: no reference checkout at `root`.
  """
  import torch
  video_path = os.path.join(root, "ov2seg", "ov2seg_model_video.py")
  eval_path = os.path.join(root, "ov2seg", "data_video", "lvvis_eval.py")
  for path in (video_path, eval_path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"reference file {path} not found (set OV2SEG_REFERENCE)")
  standins = _standins(torch)
  with _installed(standins):
    video = _exec_file(f"{_PACKAGE}.ov2seg_model_video", video_path)
    evaluation = _exec_file(f"{_PACKAGE}.data_video.lvvis_eval", eval_path)
  for name in (f"{_PACKAGE}.ov2seg_model_video", f"{_PACKAGE}.data_video.lvvis_eval"):
    sys.modules.pop(name, None)
  return types.SimpleNamespace(video=video, evaluation=evaluation, root=root)


def reference_video_inference(ref: types.SimpleNamespace, *, logits: np.ndarray, objectness: np.ndarray,
                              masks: np.ndarray, embeddings: np.ndarray, image_size: tuple[int, int],
                              output_size: tuple[int, int], size_divisibility: int = 32,
                              detections_per_image: int = 50, video_id: int = 1) -> dict[str, np.ndarray]:
  """The reference's video inference on given per-frame outputs.

  Args:
    logits (T, Q, C+1), objectness (T, Q, 2), masks (T, Q, h, w), embeddings (T, Q, D): float32 per-frame
      outputs; (h, w) must be the padded input size / 4.
    image_size: (H, W) of the resized frames fed to the network (before padding to `size_divisibility`).
    output_size: (height, width) of the original video.
  Returns:
    {"per_frame_logits" (Q, T, C+1), "per_frame_objectness" (Q, T, 2): the aligned per-frame outputs
     (post_processing), "class_logits" (Q, C+1), "objectness_logits" (Q, 2): their frame means,
     "perm" (T, Q): recovered from the aligned logits, "track_index" (K,): recovered from the masks (-1 when
     every frame of the instance is blanked), "scores" (K,), "labels" (K,) 0-based,
     "mask_logits" (K, T, h, w) after blanking, "masks" (K, T, height, width) bool decoded from the RLE
     results, "resized_logits" (K, T, height, width) float32 (what the evaluator thresholds at 0),
     "padded_size" (2,)} (K in the reference's topk(sorted=False) order).
  """
  import torch
  t, q, c1 = logits.shape
  model = ref.video.OV2SegVideo.__new__(ref.video.OV2SegVideo)
  torch.nn.Module.__init__(model)
  model.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1), False)
  model.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1), False)
  model.num_queries = q
  model.sem_seg_head = types.SimpleNamespace(num_classes=c1 - 1)
  model.test_topk_per_image = detections_per_image
  model.size_divisibility = size_divisibility
  model.eval()

  per_frame = {"pred_logits": torch.from_numpy(np.ascontiguousarray(logits, np.float32)),
               "pred_object_logits": torch.from_numpy(np.ascontiguousarray(objectness, np.float32)),
               "pred_masks": torch.from_numpy(np.ascontiguousarray(masks, np.float32)),
               "pred_embds": torch.from_numpy(np.ascontiguousarray(embeddings, np.float32))}
  record: dict = {}

  def run_window_inference(images_tensor, window_size=10):
    hp, wp = images_tensor.shape[-2:]
    if (hp // 4, wp // 4) != tuple(masks.shape[-2:]):
      raise ValueError(f"masks {masks.shape[-2:]} do not match the padded input {(hp, wp)} / 4")
    return {k: v.clone() for k, v in per_frame.items()}

  post_processing = model.post_processing
  instance_inference = model.instance_inference

  def recording_post_processing(outputs):
    out = post_processing(outputs)
    record["post"] = {k: v.clone() for k, v in out.items()}
    return out

  def recording_instance_inference(*args):
    result = instance_inference(*args)
    record["instances"] = copy.copy(result.__dict__)
    record["instances"]["pred_masks"] = result.pred_masks.clone()
    return result

  model.run_window_inference = run_window_inference
  model.post_processing = recording_post_processing
  model.instance_inference = recording_instance_inference

  frame = torch.zeros((3, *image_size))
  batched_inputs = [{"image": [frame] * t, "height": output_size[0], "width": output_size[1],
                     "video_id": video_id, "length": t}]
  with torch.no_grad():
    processed = model.forward(batched_inputs)
    resized = []
    postprocess = ref.evaluation.sem_seg_postprocess

    def recording_postprocess(*args):
      out = postprocess(*args)
      resized.append(out.clone())
      return out

    ref.evaluation.sem_seg_postprocess = recording_postprocess
    try:
      results = ref.evaluation.instances_to_coco_json_video(batched_inputs, processed)
    finally:
      ref.evaluation.sem_seg_postprocess = postprocess

  from pycocotools import mask as mask_util
  decoded = np.stack([np.stack([mask_util.decode({"size": s["size"], "counts": s["counts"].encode()})
                                for s in r["segmentations"]]) for r in results]).astype(bool)
  post, inst = record["post"], record["instances"]
  per_frame_logits = post["pred_per_frame_logits"].numpy()
  # Recover the permutation: frame t's row j equals the raw logits of exactly one query.
  perm = np.zeros((t, q), np.int64)
  for f in range(t):
    eq = np.all(per_frame_logits[:, f][:, None, :] == logits[f][None, :, :], axis=-1)  # (Q track, Q query)
    if not np.all(eq.sum(1) == 1):
      raise RuntimeError("aligned logits are not a permutation of the frame's logits")
    perm[f] = eq.argmax(1)
  # Recover each instance's track: its unblanked frames equal that track's aligned masks (-1 if none is
  # unblanked, which leaves the track undetermined).
  mask_logits = inst["pred_masks"].numpy()
  aligned_masks = masks[np.arange(t)[:, None], perm]  # (T, Q track, h, w)
  track = np.full((mask_logits.shape[0],), -1, np.int64)
  for i, m in enumerate(mask_logits):
    shown = ~np.all(m == -1, axis=(1, 2))
    if shown.any():
      hits = np.flatnonzero(np.all(aligned_masks[shown] == m[shown][:, None], axis=(0, 2, 3)))
      if hits.size != 1:
        raise RuntimeError(f"instance {i}: {hits.size} tracks have its masks")
      track[i] = hits[0]
  scores = np.array([r["score"] for r in results], np.float32)
  labels = np.array([r["category_id"] - 1 for r in results], np.int64)
  if not (np.array_equal(labels, inst["pred_classes"].numpy())
          and np.allclose(scores, inst["scores"].numpy(), rtol=0, atol=0)):
    raise RuntimeError("results JSON and recorded instances disagree")
  return {"per_frame_logits": per_frame_logits,
          "per_frame_objectness": post["pred_per_frame_obj_logits"].numpy(),
          "class_logits": post["pred_logits"][0].numpy(), "objectness_logits": post["pred_obj_logits"][0].numpy(),
          "perm": perm, "track_index": track, "scores": scores, "labels": labels, "mask_logits": mask_logits,
          "masks": decoded, "resized_logits": np.stack([r[0].numpy() for r in resized]).astype(np.float32),
          "padded_size": np.array(processed[0]["interpolate_meta"][3], np.int64)}


__all__ = ["DEFAULT_REFERENCE", "load_reference", "reference_video_inference"]
