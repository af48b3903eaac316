"""`dinoseg quickstart dinov` (or `--system=dinov`): visual in-context prompting on the CPU, nothing downloaded.

Trains a small DINOv from scratch on synthetic shapes, from the embedded config configs/dinov/quickstart.py, and
scores it with prompts taken from training images only. Phases:

  data      the Mask DINO quickstart's synthetic shapes (`quickstart.make_data`: "coco" layout, train + val,
            5 categories) in DIR/raw, prepared as ArrayRecord shards in DIR/data; and `quickstart.num_videos`
            moving-shapes videos (dinoseg.data_pipelines.synth's video scenes) written in the DAVIS-2017 layout
            (`write_davis_videos`: JPEGImages/480p, palette Annotations/480p, ImageSets/2017/val.txt) in
            DIR/raw/davis
  train     the shared trainer (task "dinov": the generic task on the instances, the referring task on the same
            images as class-agnostic masks) in DIR/train
  eval      the prompt bank: every instance of the first `quickstart.bank_images` *train* images encoded as a
            visual prompt (bank.build_bank), DIR/eval/bank; then the generic protocol on the held-out val split
            (evaluate.evaluate_generic: per category the mean of `evaluation.num_examples` seeded bank draws,
            COCO mask / box AP): DIR/eval/step_<N>.json, DIR/eval/results.json (COCO instance results)
  vos       the VOS protocol (vos.evaluate_vos: each object's given mask on its first frame, the memory of 9
            prompts, the click grid) on the DAVIS-layout videos, J&F (DAVIS-2017 semi-supervised, on one label map
            per frame: `test.vos_overlap`): DIR/eval/vos/<video>/<frame>.png (the DAVIS results layout: indexed
            label PNGs), DIR/eval/vos/<video>.npz (per-object masks and the label maps), in
            DIR/eval/step_<N>.json under "vos"
  overlays  the `dinoseg predict` predictor with the bank as examples on the first `quickstart.num_overlays` val
            images (DIR/overlays/<image file name>.png with category names, predictions.json) and, for the first
            `quickstart.num_vos_overlays` videos, a PNG strip (ground truth over prediction, one colour per
            object): DIR/overlays/vos_<video>.png

and a report (seconds per phase, mask AP, J&F, paths) on stdout and in DIR/report.json. The workdir rules, lock,
reuse of the data, resumption, `--fresh` and Ctrl-C / SIGTERM handling are those of the Mask DINO quickstart
(dinoseg/commands/quickstart.py), which runs this module's `run` inside them.
"""
import itertools
import json
import logging
import pathlib
import platform
import shutil
import time

import numpy as np

from dinoseg import jsonio
from dinoseg.commands import quickstart as qs

logger = logging.getLogger(__name__)

DEFAULT_CONFIG, DEFAULT_WORKDIR = qs.SYSTEMS["dinov"]
SYSTEM = "dinov"
VIDEO_STAMP = "quickstart_videos.json"  # in DIR/raw/davis: the settings the videos were written with
DAVIS_SPLIT = "val"


def _say(text: str) -> None:
  logger.info(text)


def video_options(config) -> dict:
  """The synthetic VOS videos `config.quickstart` asks for (also their stamp in DIR/raw/davis)."""
  q = config.quickstart
  return {"num_videos": int(q.num_videos), "num_frames": int(q.num_frames), "size": int(q.video_size),
          "max_objects": int(q.video_max_objects), "seed": int(q.seed)}


def _palette() -> list[int]:
  from dinoseg.predict import color  # noqa: PLC0415
  return [0, 0, 0] + [v for i in range(255) for v in color(i)]


def write_davis_videos(root: pathlib.Path, *, num_videos: int, num_frames: int, size: int, max_objects: int,
                       seed: int) -> dict:
  """Writes `num_videos` synthetic moving-shapes videos (synth's video scenes: 2..`max_objects` textured shapes
  moving, turning, occluding each other, some entering after frame 0) as a DAVIS-2017 tree under `root`:
  JPEGImages/480p/<video>/<frame:05d>.jpg (size x size), Annotations/480p/<video>/<frame:05d>.png (indexed PNGs
  of object ids, 0 background, on every frame) and ImageSets/2017/val.txt.

  Object ids: the objects entering later come first, those visible on frame 0 last, so frame 0 holds the
  largest id and DAVIS-2017 counts every object (ids 1..the first frame's largest; an id below it that is
  absent on frame 0 enters later). Objects never visible are not written.

  Returns {"videos": names, "objects": count, "objects_after_first_frame": count}.
  """
  from PIL import Image  # noqa: PLC0415

  from dinoseg.data_pipelines import synth  # noqa: PLC0415
  if num_frames < 3:
    from dinoseg.errors import UserValueError  # noqa: PLC0415
    raise UserValueError(f"quickstart.num_frames must be >= 3 (DAVIS scores neither the first nor the last frame), "
                         f"got {num_frames}")
  root = pathlib.Path(root)
  palette = _palette()
  names, objects, late = [], 0, 0
  for v in range(num_videos):
    rng = np.random.default_rng((seed, 2017, v))
    frames, tracks = synth._video(rng, size, size, num_frames, max_objects)  # noqa: SLF001
    present = [[m is not None for m in masks] for _, masks in tracks]
    order = sorted((i for i, p in enumerate(present) if any(p)), key=lambda i: (present[i][0], i))
    labels = np.zeros((num_frames, size, size), np.uint8)
    for object_id, i in enumerate(order, start=1):
      for f, m in enumerate(tracks[i][1]):
        if m is not None:
          labels[f][m > 0] = object_id  # visible parts: disjoint
    name = f"shapes{v:02d}"
    image_dir = root / "JPEGImages" / "480p" / name
    mask_dir = root / "Annotations" / "480p" / name
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for f in range(num_frames):
      (image_dir / f"{f:05d}.jpg").write_bytes(synth.encode_image(frames[f]))
      png = Image.fromarray(labels[f])
      png.putpalette(palette)  # "L" -> "P": the values stay the object ids
      png.save(mask_dir / f"{f:05d}.png")
    names.append(name)
    objects += len(order)
    late += sum(not present[i][0] for i in order)
  split = root / "ImageSets" / "2017" / f"{DAVIS_SPLIT}.txt"
  split.parent.mkdir(parents=True, exist_ok=True)
  split.write_text("".join(f"{n}\n" for n in names))
  return {"videos": names, "objects": objects, "objects_after_first_frame": late}


def make_videos(config, workdir: pathlib.Path) -> dict:
  """DIR/raw/davis (`write_davis_videos`), reused when its stamp matches `video_options`. Returns the summary."""
  options = video_options(config)
  root = workdir / "raw" / "davis"
  stamp = root / VIDEO_STAMP
  if stamp.is_file():
    saved = json.loads(stamp.read_text())
    if saved.get("options") == options:
      return {**saved["summary"], "reused": True}
  if root.exists():
    shutil.rmtree(root)
  summary = write_davis_videos(root, **options)
  stamp.write_text(json.dumps({"options": options, "summary": summary}))
  return {**summary, "reused": False}


def build_train_bank(config, model, variables, data_path: str, out_dir: pathlib.Path):
  """The prompt bank of the train split's instances (the first `quickstart.bank_images` images; 0: all),
  written to `out_dir` (replaced). Returns (bank, number of images encoded)."""
  from dinoseg.data_pipelines import open_dataset  # noqa: PLC0415
  from dinoseg.models.dinov import bank as bank_lib  # noqa: PLC0415
  split = config.data.coco.train_split
  examples, names = bank_lib.examples_from_prepared(data_path, split)
  available = len(open_dataset(data_path).split(split))
  limit = int(config.quickstart.bank_images) or available
  encoder = bank_lib.PromptBankEncoder(model, variables, config, slots=int(config.evaluation.bank_slots))
  bank = bank_lib.build_bank(encoder, itertools.islice(examples, limit), names, source=f"{data_path}:{split}")
  if out_dir.exists():
    shutil.rmtree(out_dir)
  bank_lib.write_bank(bank, out_dir)
  return bank, min(limit, available)


def write_vos_strips(davis_root: pathlib.Path, predictions: pathlib.Path, names, out_dir: pathlib.Path) -> list:
  """For each video of `names`: DIR/overlays/vos_<video>.png, its frames side by side, the ground-truth objects
  on the top row and the predicted ones (DIR/eval/vos/<video>.npz) below, one colour per object."""
  from PIL import Image  # noqa: PLC0415

  from dinoseg.evaluation import davis  # noqa: PLC0415
  from dinoseg.predict import draw_instances  # noqa: PLC0415
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for name in names:
    seq = davis.read_davis_sequence(davis_root, name)
    pred = np.load(predictions / f"{name}.npz")["masks"]  # (O, T, H, W)
    labels = np.arange(len(seq.object_ids))
    titles = [f"object {int(i)}" for i in seq.object_ids]
    t, h, w = seq.frames.shape[:3]
    strip = Image.new("RGB", (w * t, h * 2))
    for f in range(t):
      for row, masks in enumerate((seq.masks[:, f], pred[:, f])):
        drawn = draw_instances(seq.frames[f], masks, None, labels, None, titles)
        strip.paste(drawn, (f * w, row * h))
    path = out_dir / f"vos_{name}.png"
    strip.save(path)
    written.append(path)
  return written


def write_generic_overlays(config, variables, bank, images, out_dir: pathlib.Path) -> list:
  """The `dinoseg predict` predictor (DINOvPredictor, the bank as examples: `evaluation.num_examples` seeded draws
  per category) on `images`: overlay PNGs with category names and predictions.json in `out_dir`."""
  from dinoseg.models.dinov.predict import DINOvPredictor  # noqa: PLC0415
  out_dir.mkdir(parents=True, exist_ok=True)
  e = config.evaluation
  predictor = DINOvPredictor(config, variables, examples=bank, num_examples=int(e.num_examples), seed=int(e.seed))
  return qs.predict_images(predictor, images, out_dir, float(config.quickstart.score_threshold))


def report_lines(report: dict) -> list[str]:
  """The printed summary of a report dict (see `run`)."""
  r, v, p = report["results"], report["vos"], report["paths"]
  lines = qs.phase_lines("dinoseg quickstart dinov: DINOv on synthetic shapes", report)
  lines.append(f"  mask AP {qs.fmt(r.get('segm/AP'))} (AP50 {qs.fmt(r.get('segm/AP50'))}, "
               f"AP75 {qs.fmt(r.get('segm/AP75'))}), box AP {qs.fmt(r.get('bbox/AP'))} on "
               f"{int(r.get('num_images', 0))} held-out images with visual prompts from the train images "
               f"({r.get('num_examples')} bank draws per category, seed {r.get('seed')}), step {report['step']}")
  lines.append(f"  VOS J&F {qs.fmt(100 * v['J&F-Mean'])} (J {qs.fmt(100 * v['J-Mean'])}, F {qs.fmt(100 * v['F-Mean'])}) on "
               f"{v['num_videos']} synthetic videos, {v['num_objects']} objects "
               f"({v['objects_after_first_frame']} entering after frame 0)")
  for name in ("data", "videos", "train", "bank", "eval", "overlays", "report"):
    lines.append(f"  {name + ':':<10}{p[name]}")
  return lines


def run(args, overrides, config, workdir: pathlib.Path, start: float, stop) -> int:
  """The phases (module docstring) in a locked workdir the quickstart owns; `stop` (a PreemptionHandler) ends the
  command after the phase in progress, training after its current step."""
  import jax  # noqa: PLC0415
  seconds, notes = {}, {}
  stopped = qs._stopped  # noqa: SLF001

  # -- data
  t = time.perf_counter()
  _say(f"[quickstart] data: synthetic shapes -> {workdir / 'data'}, videos -> {workdir / 'raw' / 'davis'}")
  data = qs.make_data(config, workdir, system=SYSTEM)
  videos = make_videos(config, workdir)
  splits = data["manifest"]["splits"]
  categories = data["manifest"].get("metadata", {}).get("categories", [])
  data_path = str(workdir / "data")
  config.data.coco.path = config.data.sam.path = data_path
  if not tuple(config.dataset.class_names) and categories:
    config.dataset.class_names = tuple(str(c["name"]) for c in categories)
    config.dataset.category_ids = tuple(int(c["id"]) for c in categories)
  seconds["data"] = time.perf_counter() - t
  notes["data"] = (f"{splits['train']['num_records']} train / {splits['val']['num_records']} val images; "
                   f"{len(videos['videos'])} videos of {int(config.quickstart.num_frames)} frames"
                   + (" (reused)" if data["reused"] and videos["reused"] else ""))
  if stop.signal_received is not None:
    return stopped(stop.signal_received, "after the data phase")

  # -- train
  result, code = qs.train_phase(config, workdir, seconds, notes)
  if result is None:
    return code

  # -- eval: bank from the train split, generic protocol on the val split
  from dinoseg.models.dinov import evaluate as dinov_eval  # noqa: PLC0415
  from dinoseg.models.dinov.model import build_model  # noqa: PLC0415
  t = time.perf_counter()
  eval_dir = workdir / "eval"
  eval_dir.mkdir(parents=True, exist_ok=True)
  state = result.state
  variables = qs.trained_variables(state)
  model = build_model(config.model)
  _say(f"[quickstart] eval: prompt bank from the {config.data.coco.train_split} split -> {eval_dir / 'bank'}")
  bank, bank_images = build_train_bank(config, model, variables, data_path, eval_dir / "bank")
  bank_seconds = time.perf_counter() - t
  e = config.evaluation
  _say(f"[quickstart] eval: mask AP on the {config.data.coco.eval_split} split, {int(e.num_examples)} bank draws "
       "per category")
  results = dinov_eval.evaluate_generic(model, variables, config, bank, data=config.data.coco,
                                        num_examples=int(e.num_examples), seed=int(e.seed),
                                        results_json=str(eval_dir / "results.json"))
  eval_path = eval_dir / f"step_{result.step}.json"
  eval_path.write_text(jsonio.dumps({"step": result.step, "split": config.data.coco.eval_split, "results": results},
                                    indent=2, sort_keys=True) + "\n")
  seconds["eval"] = time.perf_counter() - t
  counts = {bank.names[c]: bank.count(c) for c in bank.category_ids}
  notes["eval"] = (f"bank {sum(counts.values())} instances of {bank_images} train images ({bank_seconds:.1f} s); "
                   f"{int(results.get('num_images', 0))} val images")
  if stop.signal_received is not None:
    return stopped(stop.signal_received, "after the eval phase")

  # -- vos
  from dinoseg.models.dinov import vos  # noqa: PLC0415
  t = time.perf_counter()
  davis_root = workdir / "raw" / "davis"
  _say(f"[quickstart] vos: J&F on the {len(videos['videos'])} videos of {davis_root}")
  # object slots: synth's videos hold 2..max(2, video_max_objects) shapes
  settings = vos.VOSSettings.from_config(config, max_objects=max(2, int(config.quickstart.video_max_objects)),
                                         min_area=int(config.quickstart.vos_min_area))
  segmenter = vos.VideoObjectSegmenter(model, variables, config, settings)
  vos_results = vos.evaluate_vos(segmenter, str(davis_root), DAVIS_SPLIT, out_dir=str(eval_dir / "vos"))
  eval_path.write_text(jsonio.dumps({"step": result.step, "split": config.data.coco.eval_split, "results": results,
                                     "vos": vos_results}, indent=2, sort_keys=True) + "\n")
  seconds["vos"] = time.perf_counter() - t
  notes["vos"] = (f"{vos_results['num_videos']} videos, {vos_results['num_objects']} objects, click grid "
                  f"{settings.point_per_side} x {settings.point_per_side}")
  if stop.signal_received is not None:
    return stopped(stop.signal_received, "after the vos phase")

  # -- overlays
  t = time.perf_counter()
  q = config.quickstart
  overlay_dir = workdir / "overlays"
  if overlay_dir.exists():
    shutil.rmtree(overlay_dir)
  images = sorted((workdir / "raw" / "val2017").glob("*.jpg"))[:int(q.num_overlays)]
  _say(f"[quickstart] overlays: predictor with the bank on {len(images)} val images -> {overlay_dir}")
  pngs = write_generic_overlays(config, variables, bank, images, overlay_dir)
  strips = write_vos_strips(davis_root, eval_dir / "vos", videos["videos"][:int(q.num_vos_overlays)], overlay_dir)
  seconds["overlays"] = time.perf_counter() - t
  notes["overlays"] = f"{len(pngs)} image PNGs + predictions.json, {len(strips)} VOS strips"
  seconds["total"] = time.perf_counter() - start

  report = {
      "system": SYSTEM,
      "config": args.config + "".join(f" --config.{o}" for o in overrides),
      "machine": f"{platform.machine()}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
                 f"{qs._cpu_count()} CPU cores",  # noqa: SLF001
      "step": result.step, "seconds": seconds, "notes": notes, "results": results, "vos": vos_results,
      "bank": {"images": bank_images, "instances": counts},
      "paths": {"data": data_path, "videos": str(davis_root), "train": str(workdir / "train"),
                "bank": str(eval_dir / "bank"), "eval": str(eval_path), "overlays": str(overlay_dir),
                "vos_strips": [str(s) for s in strips], "report": str(workdir / "report.json")},
  }
  (workdir / "report.json").write_text(jsonio.dumps(report, indent=2) + "\n")
  print("\n".join(report_lines(report)))
  return 0


__all__ = ["run", "write_davis_videos", "make_videos", "video_options", "build_train_bank", "write_vos_strips",
           "write_generic_overlays", "report_lines", "DEFAULT_CONFIG", "DEFAULT_WORKDIR"]
