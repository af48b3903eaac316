"""`dinoseg predict`: run a model on an image or a folder of images; write overlays and results.

  dinoseg predict --config=configs/maskdino/coco_instance_r50_3s_d1_2048.py \\
      --weights=maskdino_r50_50ep_300q_hid2048_3sd1_instance_maskenhance_mask46.3ap_box51.7ap.pth \\
      --input=images/ --output=out/

`--weights` takes a reference checkpoint (.pth / .pkl / .safetensors, converted on the fly) or an
Orbax directory written by `dinoseg train`. Every output of an input image is named after the
input's full file name, so `x.png` and `x.jpg` in one folder get distinct outputs. For `x.jpg`, in
--output: `x.jpg.png` (overlay: masks, boxes, labels of the instances scoring >= --score-threshold),
for models with those outputs `x.jpg_panoptic.png` / `x.jpg_semantic.png` (overlays),
`panoptic/x.jpg.png` + `panoptic/x.jpg.json` (COCO panoptic PNG and segments_info),
`semantic/x.jpg.png` (label map), for Talk2DINO `x.jpg_labels.png` (label map); and
`predictions.json` (COCO results, one entry per instance, plus `"file_name": "x.jpg"`). Category
ids are the config's dataset ids (`config.dataset.category_ids`, e.g. COCO's) when it has them,
else contiguous labels. Image ids count the inputs from 0, or, with `--annotations=instances_val2017.json`
(a COCO-format file listing the inputs), are that file's ids matched by file name, so predictions.json
scores directly against it (an input it does not list is refused before anything runs). The predictor comes from the registry in dinoseg/predict.py (by
`config.task`).

Inputs are never overwritten: an --output where an output would land on an input image (e.g.
`--output` = the input folder holding both `x.jpg` and `x.jpg.png`) is refused before anything is
written (exit status 2). Outputs of an earlier run with the same names are replaced. Each image's
line says how many instances were drawn (and, when none, the best score against the threshold).

An image that cannot be read (corrupt, truncated, not an image) is reported and skipped; the other
images' outputs and `predictions.json` are still written, and the command exits with status 1 and
the list of skipped files. `predictions.json` is written even when the run stops on an error, with
the images done until then. Each image's line is a log record (stderr); the closing summary goes to
stdout. `--compile-cache DIR` keeps the compiled model for later runs (default: none, or
$JAX_COMPILATION_CACHE_DIR).

Video models (a config whose predictor reads videos: OV2Seg): `--input` is a video file (.mp4, read with PyAV or
imageio-ffmpeg when installed), a directory of frame images, or a directory of those; the vocabulary is
`--classes="a,b,c"` (CLIP text embeddings; config.vocabulary.clip_file) and / or `--vocabulary=FILE.npy`. For a
video `clip`: `clip/<frame>.png` overlays (one colour per track), `clip.gif`, and over all videos
`results.json` (LV-VIS server format) + `videos.json` (video ids). A frame that is missing, unreadable or of
another size stops its video: one line, exit status 2 for a single video; with several videos it is skipped and
listed (exit status 1). See dinoseg/models/ov2seg/predict.py and docs/ov2seg.md.
"""
import logging
import time

from dinoseg import compile_cache

logger = logging.getLogger(__name__)

HELP = "run a model on images: overlay PNGs and COCO-format results"


def add_arguments(parser):
  parser.add_argument("--config", required=True, help="config file (FILE.py[:variant])")
  parser.add_argument("--weights", required=True, help="checkpoint: .pth/.pkl/.safetensors or an Orbax directory")
  parser.add_argument("--input", required=True, help="an image file or a directory of images; for video models (OV2Seg) a video file (.mp4 etc., needs PyAV: pip install dinoseg[video], or imageio-ffmpeg), a directory of frame images, or a directory of those")
  parser.add_argument("--output", required=True, help="output directory (created)")
  parser.add_argument("--score-threshold", type=float, default=0.5, help="instances drawn on the overlays")
  parser.add_argument("--max-images", type=int, default=0, help="stop after N images (0: all)")
  parser.add_argument("--annotations", default=None, metavar="JSON",
                      help="a COCO-format annotation file listing the input images (e.g. instances_val2017.json): "
                           "predictions.json then uses its image ids (matched by file name) and scores against it")
  parser.add_argument("--classes", default=None,
                      help="open-vocabulary models (Talk2DINO, OV2Seg): comma-separated class names, e.g. "
                           "'cat,dog,grass'")
  parser.add_argument("--with-background", action="store_true",
                      help="open-vocabulary models: add a background class (Talk2DINO's background threshold)")
  parser.add_argument("--vocabulary", default=None, metavar="FILE.npy",
                      help="open-vocabulary video models (OV2Seg): (C, E) class embeddings (e.g. DetPro's "
                           "fg_bg_5_10_lvvis_ens.npy); with --classes, those are the rows' names")
  parser.add_argument("--examples", default=None,
                      help="visual-prompt models (DINOv): a directory of example images with mask PNGs named "
                           "<image file name>__<category>[__<n>].png, a COCO JSON, or a prompt bank directory")
  compile_cache.add_argument(parser, workdir_default=False)


def main(args, config_overrides) -> int:
  from dinoseg import predict  # noqa: PLC0415
  from dinoseg.config import load_config  # noqa: PLC0415
  from dinoseg.train.workdir import prepare  # noqa: PLC0415

  config_overrides = list(config_overrides)
  video_config = _video_config(args.config, config_overrides)
  if video_config is not None:  # a video predictor (OV2Seg): --input holds videos
    return _predict_videos(video_config, args)
  if args.vocabulary is not None:
    from dinoseg.errors import UserValueError  # noqa: PLC0415
    raise UserValueError("--vocabulary applies to open-vocabulary video models (OV2Seg configs)")
  if args.classes is not None:
    config_overrides.append(f"predict.classes={args.classes}")
  if args.with_background:
    config_overrides.append("predict.with_background=True")
  config = load_config(args.config, config_overrides)
  images = predict.list_images(args.input)
  if args.max_images > 0:
    images = images[:args.max_images]
  predict.check_outputs(images, args.output)
  image_ids, categories = (predict.image_ids_from_annotations(args.annotations, images) if args.annotations
                           else (None, None))
  out_dir = prepare(args.output, what="--output")
  with compile_cache.use(args.compile_cache):
    results, skipped, seconds = _predict_images(config, args, images, out_dir)
  if results and image_ids is not None:
    unknown = predict.set_image_ids(results, image_ids, categories)
    if unknown:
      logger.warning("%d result(s) have a category id that %s does not list: check config.dataset.category_ids",
                     unknown, args.annotations)
  return _closing_line("image", len(images), skipped, seconds, out_dir, results)


def _predict_images(config, args, images, out_dir) -> tuple:
  """Writes the outputs of every readable image. Returns the predictor's results file (or None), the
  skipped paths and the seconds taken after the model was loaded."""
  from dinoseg import predict  # noqa: PLC0415
  options = {"examples": args.examples} if getattr(args, "examples", None) else {}
  predictor = predict.build_predictor(config, args.weights, **options)
  start = time.time()
  skipped = []
  finish = getattr(predictor, "finish", None)
  try:
    for i, path in enumerate(images):
      try:
        image = predict.read_image(path)
      except predict.UnreadableImageError as e:
        skipped.append(path)
        logger.warning("[%d/%d] %s: skipped: %s", i + 1, len(images), path.name, e)
        continue
      result = predictor.predict(image)
      written = predictor.write(result, image, out_dir, predict.output_name(path), score_threshold=args.score_threshold)
      summary = predict.summarize(result, args.score_threshold)
      logger.info("[%d/%d] %s -> %s%s", i + 1, len(images), path.name, ", ".join(p.name for p in written),
                  f": {summary}" if summary else "")
  finally:  # the results of the images done so far are kept, even if one fails
    results = finish(out_dir) if finish else None
  return results, skipped, time.time() - start


# ----------------------------------------------------------------------------- videos (OV2Seg)

def _video_config(config_path, overrides):
  """The loaded config when its task's predictor reads videos (`input_kind = "video"`), else None."""
  from dinoseg import predict  # noqa: PLC0415
  from dinoseg.config import load_config  # noqa: PLC0415
  config = load_config(config_path, list(overrides))
  task = str(config.get("task") or "")
  if task not in predict.PREDICTORS:
    return None
  return config if getattr(predict.PREDICTORS.get(task), "input_kind", "image") == "video" else None


def _predict_videos(config, args) -> int:
  """`dinoseg predict` for a video predictor: --input is a video file, a frames directory, or a directory of
  those. Writes <output>/<video>/<frame>.png, <output>/<video>.gif, results.json and videos.json
  (dinoseg/models/ov2seg/predict.py). A video that cannot be read is reported and skipped (exit status 1)."""
  from dinoseg import predict, video_io  # noqa: PLC0415
  from dinoseg.errors import UserValueError  # noqa: PLC0415
  from dinoseg.models.ov2seg import predict as video_predict  # noqa: PLC0415
  from dinoseg.train.workdir import prepare  # noqa: PLC0415
  if args.annotations or args.examples or args.with_background:
    raise UserValueError("--annotations / --examples / --with-background do not apply to video models")
  videos = video_io.list_videos(args.input)
  if args.max_images > 0:
    videos = videos[:args.max_images]
  video_predict.check_video_outputs(videos, args.output)
  out_dir = prepare(args.output, what="--output")
  options = {k: v for k, v in (("classes", args.classes), ("vocabulary", args.vocabulary)) if v is not None}
  skipped = []
  with compile_cache.use(args.compile_cache):
    predictor = predict.build_predictor(config, args.weights, **options)
    start = time.time()
    try:
      for i, path in enumerate(videos):
        try:
          video = video_io.open_video(path)
          result = predictor.predict(video, video_id=i + 1)
          predictor.write(result, video, out_dir, video.name, score_threshold=args.score_threshold)
        except video_io.UnreadableFrameError as e:
          if len(videos) == 1:  # the only video: one line, exit status 2
            raise
          skipped.append(path)
          logger.warning("[%d/%d] %s: skipped: %s", i + 1, len(videos), path.name, e)
          continue
        logger.info("[%d/%d] %s: %s", i + 1, len(videos), path.name,
                    video_predict.summarize(result, args.score_threshold))
    finally:
      results = predictor.finish(out_dir)
  return _closing_line("video", len(videos), skipped, time.time() - start, out_dir, results)


def _closing_line(what: str, total: int, skipped: list, seconds: float, out_dir, results) -> int:
  """Prints the summary line; the exit status: 1 when some inputs were unreadable (listed), else 0."""
  print(f"{total - len(skipped)} {what}(s) in {seconds:.1f} s; outputs in {out_dir}"
        + (f"; results: {results}" if results else ""))
  if skipped:
    logger.error("%d unreadable %s(s) skipped: %s", len(skipped), what, ", ".join(str(p) for p in skipped))
    return 1
  return 0
