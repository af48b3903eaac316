"""`dinoseg quickstart ov2seg` (or `--system=ov2seg`): open-vocabulary video instance segmentation on the CPU.

Trains a small OV2Seg from scratch on frames of synthetic videos and evaluates it on held-out videos, from the
embedded config configs/ov2seg/quickstart.py; nothing is downloaded. Phases:

  data      `quickstart.*` -> dinoseg.data_pipelines.synth ("lvvis" layout: moving shapes, train + val videos)
            into DIR/raw/lvvis. The 5 shape categories carry LV-VIS partitions (synth: partition = index % 4),
            so 3 are base (partitions 0, 1) and 2 novel (2, 3). The train videos' frames become an LVIS-style
            image dataset, DIR/raw/lvvis/frames_lvis_train.json (`frames_as_lvis`): one image per frame, the
            annotations of the base categories only, the novel categories listed with LVIS frequency "r" (as
            the reference's LVIS norare training set lists the rare ones). Prepared with the existing
            preparers: DIR/data/frames ("lvis") and DIR/data/videos ("lvvis", both splits).
  train     the shared trainer (task "ov2seg": federated sigmoid loss, objectness, point-sampled masks, deep
            supervision) on DIR/data/frames in DIR/train, class embeddings `vocabulary.source="random"`
  eval      video AP / APb / APn (dinoseg.models.ov2seg.evaluate.evaluate_video_dataset: windows, the on-device
            association, dinoseg.evaluation.video_ap against DIR/raw/lvvis/val_instances.json) on the val
            videos, and the track-identity consistency (`track_identity`): DIR/eval/step_<N>.json, the results
            in the LV-VIS server format DIR/eval/results.json, the vocabulary DIR/eval/vocabulary.npy
  overlays  the video predictor of `dinoseg predict` on the first `quickstart.num_overlays` val videos:
            DIR/overlays/<video>/<frame>.png (one colour per track), DIR/overlays/<video>.gif, results.json

and a report (seconds per phase, AP, APb, APn, the identity figure, paths) on stdout and in DIR/report.json.
The workdir rules, lock, resumption, `--fresh` and Ctrl-C / SIGTERM handling are those of the Mask DINO
quickstart (dinoseg/commands/quickstart.py), which runs this module's `run` inside them.

With random class embeddings the novel categories are unseen in training and their embeddings carry nothing
about the shapes, and the training frames show novel shapes unannotated (learned as background): the novel AP
is expected to be near zero. It is reported as measured.
"""
import json
import logging
import pathlib
import platform
import time

import numpy as np

from dinoseg import jsonio
from dinoseg.commands import quickstart as qs

logger = logging.getLogger(__name__)

DEFAULT_CONFIG, DEFAULT_WORKDIR = qs.SYSTEMS["ov2seg"]
FRAMES_JSON = "frames_lvis_{split}.json"  # in DIR/raw/lvvis, beside the LV-VIS annotation files


def _say(text: str) -> None:
  logger.info(text)


def data_options(config) -> dict:
  """The synthetic videos `config.quickstart` asks for (also the stamp of a prepared DIR/data)."""
  q = config.quickstart
  lo, hi = (int(v) for v in q.image_size)
  return {"system": "ov2seg", "layout": "lvvis", "num_train_videos": int(q.num_train_videos),
          "num_val_videos": int(q.num_val_videos), "num_frames": int(q.num_frames), "image_size": [lo, hi],
          "max_objects": int(q.max_objects), "seed": int(q.seed)}


def frames_as_lvis(video_json: pathlib.Path, out_json: pathlib.Path, base_partitions=None) -> dict:
  """Writes the frames of an LV-VIS-format split as an LVIS v1 image dataset with base-class annotations only.

  Every frame becomes an image (`file_name` = the frame's path under the split's JPEGImages, id = video id *
  1000 + frame index + 1); every frame mask of a track of a base category (LV-VIS `partition` in
  `base_partitions`, default video_ap.BASE_PARTITIONS) an annotation (uncompressed RLE, its box and area).
  Categories keep their ids and names; base ones get LVIS frequency "f", novel ones "r"; `image_count` /
  `instance_count` are counted here. Returns {"images", "annotations", "base_ids", "novel_ids"}.
  """
  from dinoseg.evaluation import video_ap  # noqa: PLC0415
  base_partitions = tuple(video_ap.BASE_PARTITIONS if base_partitions is None else base_partitions)
  data = json.loads(pathlib.Path(video_json).read_text())
  base_ids = sorted(int(c["id"]) for c in data["categories"] if c.get("partition") in base_partitions)
  novel_ids = sorted(int(c["id"]) for c in data["categories"] if int(c["id"]) not in base_ids)
  images, annotations = [], []
  image_of = {}
  for v in data["videos"]:
    for f, name in enumerate(v["file_names"]):
      image_id = int(v["id"]) * 1000 + f + 1
      image_of[(int(v["id"]), f)] = image_id
      images.append({"id": image_id, "file_name": name, "height": int(v["height"]), "width": int(v["width"]),
                     "neg_category_ids": [], "not_exhaustive_category_ids": []})
  images_with = {c: set() for c in base_ids + novel_ids}
  instances = {c: 0 for c in base_ids + novel_ids}
  for track in data["annotations"]:
    cat = int(track["category_id"])
    if cat not in base_ids or track.get("iscrowd"):
      continue
    for f, seg in enumerate(track["segmentations"]):
      if seg is None:
        continue
      image_id = image_of[(int(track["video_id"]), f)]
      annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                          "segmentation": seg, "bbox": track["bboxes"][f], "area": float(track["areas"][f])})
      images_with[cat].add(image_id)
      instances[cat] += 1
  categories = [{"id": int(c["id"]), "name": c["name"], "synset": f"{c['name']}.n.01",
                 "frequency": "f" if int(c["id"]) in base_ids else "r",
                 "image_count": len(images_with[int(c["id"])]), "instance_count": instances[int(c["id"])]}
                for c in sorted(data["categories"], key=lambda c: c["id"])]
  pathlib.Path(out_json).write_text(json.dumps({"images": images, "annotations": annotations,
                                                "categories": categories}))
  return {"images": len(images), "annotations": len(annotations), "base_ids": base_ids, "novel_ids": novel_ids}


def make_data(config, workdir: pathlib.Path) -> dict:
  """Synthesizes DIR/raw/lvvis and prepares DIR/data/{frames,videos} (reused when the stamp matches).

  Returns {"reused", "frames": manifest, "videos": manifest, "base_ids", "novel_ids"}.
  """
  from dinoseg.data_pipelines import synth, writer  # noqa: PLC0415
  qs.claim_workdir(workdir)
  options = data_options(config)
  raw, data = workdir / "raw" / "lvvis", workdir / "data"
  stamp = data / qs.DATA_STAMP
  frames_dir, videos_dir = data / "frames", data / "videos"
  if (stamp.is_file() and json.loads(stamp.read_text()).get("options") == options
      and (frames_dir / writer.MANIFEST).is_file() and (videos_dir / writer.MANIFEST).is_file()):
    saved = json.loads(stamp.read_text())
    return {"reused": True, "frames": writer.read_manifest(frames_dir), "videos": writer.read_manifest(videos_dir),
            "base_ids": saved["base_ids"], "novel_ids": saved["novel_ids"]}
  why = " (its prepared data is missing, incomplete or of other settings; nothing trained on other data is kept)"
  qs._clear(workdir, why=why)  # noqa: SLF001
  common = dict(image_size=tuple(options["image_size"]), seed=options["seed"], max_objects=options["max_objects"],
                num_frames=options["num_frames"])
  for split, key in (("train", "num_train_videos"), ("val", "num_val_videos")):
    synth.synthesize("lvvis", str(raw), num_images=options[key], splits=(split,), **common)
  split_info = frames_as_lvis(raw / "train_instances.json", raw / FRAMES_JSON.format(split="train"))
  frames = writer.prepare("lvis", str(raw), str(frames_dir), splits=["train"], progress=False,
                          options={"annotations": FRAMES_JSON, "images": "{split}/JPEGImages"})
  videos = writer.prepare(synth.PREPARER_FOR_LAYOUT["lvvis"], str(raw), str(videos_dir), splits=["train", "val"],
                          progress=False)
  stamp.write_text(json.dumps({"options": options, "base_ids": split_info["base_ids"],
                               "novel_ids": split_info["novel_ids"]}))
  return {"reused": False, "frames": frames, "videos": videos, "base_ids": split_info["base_ids"],
          "novel_ids": split_info["novel_ids"]}


def track_identity(ground_truth: dict, results: list[dict], iou_threshold: float = 0.5,
                   category_ids=None) -> dict:
  """Track-identity consistency of video results against a YouTube-VIS / LV-VIS ground truth.

  Each non-crowd ground-truth object (a track with a mask in at least one frame; only those of `category_ids`
  when given) is assigned the predicted instance of its video with the highest video IoU (intersection and union
  summed over the frames, as video AP; any class, any score). The object keeps one identity when that instance's
  mask has IoU >= `iou_threshold` with the object's mask in every frame where the object is visible: an identity
  switch (the track following another object), a fragment (the track losing it in some frames, blanked or
  drifting) or a missed object breaks it.

  Args:
    ground_truth: {"videos": [{id, height, width}], "annotations": [{video_id, category_id, segmentations (per
      frame RLE or None), iscrowd}]}. results: [{"video_id", "segmentations": per-frame RLE or None, ...}].
  Returns:
    {"objects": N, "kept": objects keeping one identity, "consistency": 100 * kept / N (NaN if N = 0),
     "frame_fraction": 100 * mean over objects of the fraction of their visible frames covered at the threshold}.
  """
  from dinoseg.ops.masks import rle_decode  # noqa: PLC0415
  videos = {int(v["id"]): v for v in ground_truth["videos"]}
  by_video: dict[int, list] = {}
  for r in results:
    by_video.setdefault(int(r["video_id"]), []).append(r)
  kept, fractions = 0, []

  def stack(segs, h, w):
    return np.stack([rle_decode(s).astype(bool) if s is not None else np.zeros((h, w), bool) for s in segs])

  for ann in ground_truth["annotations"]:
    if ann.get("iscrowd") or (category_ids is not None and int(ann["category_id"]) not in category_ids):
      continue
    visible = [s is not None for s in ann["segmentations"]]
    if not any(visible):
      continue
    v = videos[int(ann["video_id"])]
    h, w = int(v["height"]), int(v["width"])
    gt = stack(ann["segmentations"], h, w).reshape(len(visible), -1)  # (F, HW)
    preds = by_video.get(int(ann["video_id"]), [])
    if not preds:
      fractions.append(0.0)
      continue
    masks = np.stack([stack(r["segmentations"], h, w).reshape(len(visible), -1) for r in preds])  # (K, F, HW)
    inter = np.einsum("kfp,fp->kf", masks.astype(np.float32), gt.astype(np.float32))
    union = masks.sum(-1) + gt.sum(-1)[None] - inter  # (K, F)
    video_iou = inter.sum(1) / np.maximum(union.sum(1), 1)
    best = int(np.argmax(video_iou))
    frame_iou = inter[best] / np.maximum(union[best], 1)
    covered = (frame_iou >= iou_threshold)[np.asarray(visible)]
    fractions.append(float(covered.mean()))
    kept += bool(covered.all())
  n = len(fractions)
  return {"objects": n, "kept": kept, "consistency": 100.0 * kept / n if n else float("nan"),
          "frame_fraction": 100.0 * float(np.mean(fractions)) if n else float("nan")}


def overlay_videos(ground_truth: dict, frames_root: pathlib.Path, base_ids: set, count: int) -> list[pathlib.Path]:
  """The first `count` val videos (name order) that show at least one base-class object, then the others: a video
  of novel shapes only has nothing the model was trained to name, so its overlay would show nothing learned."""
  with_base = {pathlib.PurePosixPath(v["file_names"][0]).parts[0] for v in ground_truth["videos"]
               if any(a["video_id"] == v["id"] and a["category_id"] in base_ids for a in ground_truth["annotations"])}
  videos = sorted(p for p in frames_root.iterdir() if p.is_dir())
  return sorted(videos, key=lambda p: p.name not in with_base)[:count]


def write_overlays(config, variables, class_embeddings: np.ndarray, names, videos, out_dir: pathlib.Path,
                   vocabulary_file: pathlib.Path) -> list:
  """The video predictor (`dinoseg predict`'s) on frames directories `videos`: per-frame PNGs and a GIF each,
  results.json / videos.json. The vocabulary is `class_embeddings` (C, E), saved as `vocabulary_file`."""
  from dinoseg.models.ov2seg import predict as ov2seg_predict  # noqa: PLC0415
  out_dir.mkdir(parents=True, exist_ok=True)
  vocabulary_file.parent.mkdir(parents=True, exist_ok=True)
  np.save(vocabulary_file, np.asarray(class_embeddings, np.float32))
  predictor = ov2seg_predict.OV2SegVideoPredictor(config, variables, classes=list(names),
                                                  vocabulary=str(vocabulary_file))
  written = []
  threshold = float(config.quickstart.score_threshold)
  for path in videos:
    result = predictor.predict(path)
    written += [p for p in predictor.write(result, path, out_dir, path.name, score_threshold=threshold)
                if p.suffix == ".gif"]
    _say(f"[quickstart] overlays: {path.name}: {ov2seg_predict.summarize(result, threshold)}")
  predictor.finish(out_dir)
  return written


def report_lines(report: dict) -> list[str]:
  """The printed summary of a report dict (see `run`)."""
  r, p, ident = report["results"], report["paths"], report["track_identity"]
  lines = qs.phase_lines("dinoseg quickstart ov2seg: OV2Seg on synthetic videos", report)
  lines.append(f"  video mask AP {qs.fmt(r.get('AP'))} (AP50 {qs.fmt(r.get('AP50'))}, AP75 {qs.fmt(r.get('AP75'))}); "
               f"base APb {qs.fmt(r.get('APb'))} ({', '.join(report['base_classes'])}), novel APn {qs.fmt(r.get('APn'))} "
               f"({', '.join(report['novel_classes'])}; random class embeddings, never trained) on "
               f"{int(r.get('num_videos', 0))} val videos, step {report['step']}")
  lines.append(f"  track identity: {ident['all']['kept']} of {ident['all']['objects']} objects "
               f"({qs.fmt(ident['all']['consistency'])}%) keep one track at frame IoU >= {ident['iou_threshold']:g} "
               f"in all their frames (base {qs.fmt(ident['base']['consistency'])}%); frames covered "
               f"{qs.fmt(ident['all']['frame_fraction'])}%")
  for name in ("data", "train", "eval", "overlays", "report"):
    lines.append(f"  {name + ':':<10}{p[name]}")
  return lines


def run(args, overrides, config, workdir: pathlib.Path, start: float, stop) -> int:
  """The phases (module docstring) in a locked workdir the quickstart owns; `stop` (a PreemptionHandler) ends the
  command after the phase in progress, training after its current step."""
  import jax  # noqa: PLC0415
  seconds, notes = {}, {}

  # -- data
  t = time.perf_counter()
  _say(f"[quickstart] data: synthetic videos (LV-VIS layout) -> {workdir / 'data'}")
  data = make_data(config, workdir)
  config.data.path = str(workdir / "data" / "frames")
  config.test.eval_path = str(workdir / "data" / "videos")
  config.data.eval_split = "val"
  categories = {int(c["id"]): str(c["name"]) for c in data["videos"].get("metadata", {}).get("categories", [])}
  base_names = [categories.get(i, str(i)) for i in data["base_ids"]]
  novel_names = [categories.get(i, str(i)) for i in data["novel_ids"]]
  frames_split, video_splits = data["frames"]["splits"]["train"], data["videos"]["splits"]
  seconds["data"] = time.perf_counter() - t
  notes["data"] = (f"{video_splits['train']['num_records']} train / {video_splits['val']['num_records']} val videos "
                   f"of {int(config.quickstart.num_frames)} frames; {frames_split['num_records']} training frames "
                   f"with base classes ({', '.join(base_names)})" + (" (reused)" if data["reused"] else ""))
  if stop.signal_received is not None:
    return qs._stopped(stop.signal_received, "after the data phase")  # noqa: SLF001

  # -- train
  result, code = qs.train_phase(config, workdir, seconds, notes)
  if result is None:
    return code

  # -- eval
  from dinoseg.models.ov2seg import evaluate as ov2seg_eval  # noqa: PLC0415
  from dinoseg.models.ov2seg.task import random_class_embeddings  # noqa: PLC0415
  t = time.perf_counter()
  eval_dir = workdir / "eval"
  eval_dir.mkdir(parents=True, exist_ok=True)
  raw = workdir / "raw" / "lvvis"
  config.test.eval_annotations = str(raw / "val_instances.json")
  config.test.eval_results = str(eval_dir / "results.json")
  _say(f"[quickstart] eval: video AP / APb / APn on the {video_splits['val']['num_records']} val videos")
  state = result.state
  variables = qs.trained_variables(state)
  dataset = ov2seg_eval.open_eval_dataset(config)
  embeddings = random_class_embeddings(dataset.category_ids, int(config.model.classifier.embed_dim),
                                       int(config.vocabulary.get("random_seed", 0)))
  results = ov2seg_eval.evaluate_video_dataset(config, variables, class_embeddings=embeddings)
  ground_truth = json.loads((raw / "val_instances.json").read_text())
  predictions = json.loads((eval_dir / "results.json").read_text())
  threshold = float(config.quickstart.identity_iou)
  identity = {"iou_threshold": threshold,
              "all": track_identity(ground_truth, predictions, threshold),
              "base": track_identity(ground_truth, predictions, threshold, category_ids=set(data["base_ids"])),
              "novel": track_identity(ground_truth, predictions, threshold, category_ids=set(data["novel_ids"]))}
  eval_path = eval_dir / f"step_{result.step}.json"
  eval_path.write_text(jsonio.dumps({"step": result.step, "split": "val", "results": results,
                                     "track_identity": identity}, indent=2, sort_keys=True) + "\n")
  seconds["eval"] = time.perf_counter() - t
  notes["eval"] = f"{int(results.get('num_videos', 0))} videos, {len(predictions)} predicted instances"
  if stop.signal_received is not None:
    return qs._stopped(stop.signal_received, "after the eval phase")  # noqa: SLF001

  # -- overlays
  t = time.perf_counter()
  frames_root = raw / "val" / "JPEGImages"
  videos = overlay_videos(ground_truth, frames_root, set(data["base_ids"]), int(config.quickstart.num_overlays))
  _say(f"[quickstart] overlays: predictor on {len(videos)} val videos -> {workdir / 'overlays'}")
  names = [categories.get(i, str(i)) for i in dataset.category_ids]
  gifs = write_overlays(config, variables, embeddings, names, videos, workdir / "overlays",
                        eval_dir / "vocabulary.npy")
  seconds["overlays"] = time.perf_counter() - t
  notes["overlays"] = f"{len(gifs)} GIFs + per-frame PNGs + results.json"
  seconds["total"] = time.perf_counter() - start

  report = {
      "system": "ov2seg",
      "config": args.config + "".join(f" --config.{o}" for o in overrides),
      "machine": f"{platform.machine()}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
                 f"{qs._cpu_count()} CPU cores",  # noqa: SLF001
      "step": result.step, "seconds": seconds, "notes": notes, "results": results, "track_identity": identity,
      "base_classes": base_names, "novel_classes": novel_names,
      "paths": {"data": str(workdir / "data"), "train": str(workdir / "train"), "eval": str(eval_path),
                "overlays": str(workdir / "overlays"), "gifs": [str(g) for g in gifs],
                "report": str(workdir / "report.json")},
  }
  (workdir / "report.json").write_text(jsonio.dumps(report, indent=2) + "\n")
  print("\n".join(report_lines(report)))
  return 0


__all__ = ["run", "make_data", "frames_as_lvis", "track_identity", "write_overlays", "report_lines", "data_options",
           "DEFAULT_CONFIG", "DEFAULT_WORKDIR"]
