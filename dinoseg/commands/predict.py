"""`dinoseg predict`: run a model on an image or a folder of images; write overlays and results.

  dinoseg predict --config=configs/maskdino/coco_instance_r50_3s_d1_2048.py \\
      --weights=maskdino_r50_50ep_300q_hid2048_3sd1_instance_maskenhance_mask46.3ap_box51.7ap.pth \\
      --input=images/ --output=out/

`--weights` takes a reference checkpoint (.pth / .pkl / .safetensors, converted on the fly) or an
Orbax directory written by `dinoseg train`. Outputs in --output: `<stem>.png` overlays (masks,
boxes, labels), `predictions.json` (COCO results, one entry per instance, plus "file_name"), and
for models with those outputs `panoptic/<stem>.png` + `.json` (COCO panoptic PNG and segments_info)
and `semantic/<stem>.png` (label map). Category ids are the config's dataset ids
(`config.dataset.category_ids`, e.g. COCO's) when it has them, else contiguous labels. The predictor comes from the
registry in dinoseg/predict.py (by `config.task`).

An image that cannot be read (corrupt, truncated, not an image) is reported and skipped; the other
images' outputs and `predictions.json` are still written, and the command exits with status 1 and
the list of skipped files.
"""
import pathlib
import sys
import time

HELP = "run a model on images: overlay PNGs and COCO-format results"


def add_arguments(parser):
  parser.add_argument("--config", required=True, help="config file (FILE.py[:variant])")
  parser.add_argument("--weights", required=True, help="checkpoint: .pth/.pkl/.safetensors or an Orbax directory")
  parser.add_argument("--input", required=True, help="an image file or a directory of images")
  parser.add_argument("--output", required=True, help="output directory (created)")
  parser.add_argument("--score-threshold", type=float, default=0.5, help="instances drawn on the overlays")
  parser.add_argument("--max-images", type=int, default=0, help="stop after N images (0: all)")
  parser.add_argument("--classes", default=None,
                      help="open-vocabulary models (Talk2DINO): comma-separated class names, e.g. 'cat,dog,grass'")
  parser.add_argument("--with-background", action="store_true",
                      help="open-vocabulary models: add a background class (Talk2DINO's background threshold)")


def main(args, config_overrides) -> int:
  from dinoseg import predict  # noqa: PLC0415
  from dinoseg.config import load_config  # noqa: PLC0415

  config_overrides = list(config_overrides)
  if args.classes is not None:
    config_overrides.append(f"predict.classes={args.classes}")
  if args.with_background:
    config_overrides.append("predict.with_background=True")
  config = load_config(args.config, config_overrides)
  images = predict.list_images(args.input)
  if args.max_images > 0:
    images = images[:args.max_images]
  out_dir = pathlib.Path(args.output)
  out_dir.mkdir(parents=True, exist_ok=True)
  predictor = predict.build_predictor(config, args.weights)
  start = time.time()
  skipped = []
  for i, path in enumerate(images):
    try:
      image = predict.read_image(path)
    except predict.UnreadableImageError as e:
      skipped.append(path)
      print(f"[{i + 1}/{len(images)}] {path.name}: skipped: {e}", file=sys.stderr)
      continue
    result = predictor.predict(image)
    written = predictor.write(result, image, out_dir, path.stem, score_threshold=args.score_threshold)
    print(f"[{i + 1}/{len(images)}] {path.name} -> {', '.join(p.name for p in written)}", file=sys.stderr)
  finish = getattr(predictor, "finish", None)
  results = finish(out_dir) if finish else None
  done = len(images) - len(skipped)
  print(f"{done} image(s) in {time.time() - start:.1f} s; outputs in {out_dir}"
        + (f"; results: {results}" if results else ""))
  if skipped:
    print(f"error: {len(skipped)} unreadable image(s) skipped: {', '.join(str(p) for p in skipped)}", file=sys.stderr)
    return 1
  return 0
