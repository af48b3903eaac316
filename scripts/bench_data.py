"""Examples/s of the COCO LSJ training pipeline (grain) against worker count, beside a plain loop.

  python scripts/bench_data.py [--num-images 48] [--target 1024] [--workers 0,1,2] [--max-instances 16]

1. Writes a synthetic COCO-layout dataset (`dinoseg data synth --layout coco`) of ~640x480 images
   (sides drawn in [480, 640]) and prepares it (ArrayRecord shards).
2. Times `build_train_iterator` (task "instance", LSJ 0.1-2.0 at --target, flip, masks at
   --mask-stride, --max-instances rows, batch --batch-size) for each worker count: examples/s over
   --batches batches after the first one (worker start-up excluded, reported separately).
3. Times a plain per-image Python loop doing the same work from the raw files: PIL decode, COCO
   annotations -> masks (pycocotools), flip, resize (PIL bilinear for the image, PIL nearest per mask),
   crop/pad to the target, tight boxes, padding to --max-instances, stacking into batches.

Prints a Markdown table (copied into docs/benchmarks.md).
"""
import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time

import numpy as np
from PIL import Image


def plain_loop(raw_dir: str, num_examples: int, target: int, max_instances: int, stride: int, batch_size: int,
               seed: int = 0) -> float:
  """Examples/s of a straightforward per-image loop over the raw COCO files (no grain, no records)."""
  from pycocotools.coco import COCO  # noqa: PLC0415
  with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO(os.path.join(raw_dir, "annotations", "instances_train2017.json"))
  cat_ids = sorted(coco.getCatIds())
  ids = [i for i in sorted(coco.imgs) if os.path.exists(os.path.join(raw_dir, "train2017", coco.imgs[i]["file_name"]))]
  rng = np.random.default_rng(seed)
  start = time.perf_counter()
  batch = []
  for n in range(num_examples):
    info = coco.imgs[ids[n % len(ids)]]
    image = Image.open(os.path.join(raw_dir, "train2017", info["file_name"])).convert("RGB")
    anns = [a for a in coco.imgToAnns[info["id"]] if not a["iscrowd"]]
    masks = [Image.fromarray(coco.annToMask(a)) for a in anns]
    labels = [cat_ids.index(a["category_id"]) for a in anns]
    if rng.random() < 0.5:
      image = image.transpose(Image.FLIP_LEFT_RIGHT)
      masks = [m.transpose(Image.FLIP_LEFT_RIGHT) for m in masks]
    w, h = image.size
    scale = rng.uniform(0.1, 2.0)
    s = min(target * scale / h, target * scale / w)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    image = np.asarray(image.resize((nw, nh), Image.BILINEAR))
    masks = [np.asarray(m.resize((nw, nh), Image.NEAREST)) for m in masks]
    u = rng.uniform()
    y0, x0 = int(round(max(nh - target, 0) * u)), int(round(max(nw - target, 0) * u))
    canvas = np.full((target, target, 3), 128, np.uint8)
    crop = image[y0:y0 + target, x0:x0 + target]
    canvas[:crop.shape[0], :crop.shape[1]] = crop
    out_masks = np.zeros((max_instances, target // stride, target // stride), np.uint8)
    boxes = np.zeros((max_instances, 4), np.float32)
    out_labels = np.zeros((max_instances,), np.int32)
    valid = np.zeros((max_instances,), bool)
    k = 0
    for m, label in zip(masks, labels):
      full = np.zeros((target, target), np.uint8)
      c = m[y0:y0 + target, x0:x0 + target]
      full[:c.shape[0], :c.shape[1]] = c
      ys, xs = np.nonzero(full)
      if not ys.size or k == max_instances:
        continue
      boxes[k] = ((xs.min() + xs.max() + 1) / 2 / target, (ys.min() + ys.max() + 1) / 2 / target,
                  (xs.max() + 1 - xs.min()) / target, (ys.max() + 1 - ys.min()) / target)
      out_masks[k] = full[stride // 2::stride, stride // 2::stride] if stride > 1 else full
      out_labels[k], valid[k] = label, True
      k += 1
    batch.append({"image": canvas, "masks": out_masks, "boxes": boxes, "labels": out_labels, "valid": valid})
    if len(batch) == batch_size:
      {key: np.stack([b[key] for b in batch]) for key in batch[0]}
      batch = []
  return num_examples / (time.perf_counter() - start)


def grain_pipeline(prepared: str, workers: int, args) -> tuple[float, float]:
  """(examples/s after the first batch, seconds to the first batch)."""
  from dinoseg.data_pipelines import pipeline  # noqa: PLC0415
  cfg = pipeline.default_config()
  cfg.path = prepared
  cfg.image_size = (args.target, args.target)
  cfg.max_instances = args.max_instances
  cfg.mask_stride = args.mask_stride
  cfg.batch_size = args.batch_size
  cfg.num_workers = workers
  cfg.read_threads = args.read_threads
  cfg.worker_buffer_size = 2
  start = time.perf_counter()
  it = pipeline.build_train_iterator(cfg)
  next(it)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(args.batches):
    next(it)
  rate = args.batches * args.batch_size / (time.perf_counter() - start)
  if hasattr(it, "close"):
    it.close()
  return rate, first


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num-images", type=int, default=48)
  parser.add_argument("--target", type=int, default=1024, help="LSJ target / canvas size")
  parser.add_argument("--max-instances", type=int, default=16)
  parser.add_argument("--mask-stride", type=int, default=1)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--batches", type=int, default=8, help="timed batches per configuration")
  parser.add_argument("--workers", default="0,1,2", help="comma-separated grain worker counts")
  parser.add_argument("--read-threads", type=int, default=1, help="grain ReadOptions threads per process")
  parser.add_argument("--work-dir", default=None, help="where the synthetic data goes (default: a temp dir)")
  parser.add_argument("--json", default=None, help="also write the results to this JSON file")
  args = parser.parse_args()

  import absl.flags  # noqa: PLC0415
  absl.flags.FLAGS.mark_as_parsed()   # grain workers read absl flags
  from dinoseg.data_pipelines import synth, writer  # noqa: PLC0415

  work = args.work_dir or tempfile.mkdtemp(prefix="bench_data_")
  raw, prepared = os.path.join(work, "raw"), os.path.join(work, "prepared")
  if not os.path.isdir(raw):
    synth.synthesize("coco", raw, num_images=args.num_images, image_size=(480, 640), splits=("train",))
  if not os.path.isfile(os.path.join(prepared, "manifest.json")):
    writer.prepare("coco_instances", raw, prepared, splits=["train"], num_shards=4, progress=False)

  examples = args.batches * args.batch_size
  rows = [("plain Python loop (PIL/numpy, 1 process)", plain_loop(raw, examples, args.target, args.max_instances,
                                                                  args.mask_stride, args.batch_size), None)]
  for workers in [int(w) for w in args.workers.split(",")]:
    rate, first = grain_pipeline(prepared, workers, args)
    rows.append((f"grain pipeline, {workers} worker process{'es' if workers != 1 else ''}", rate, first))

  print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.platform()})")
  print(f"COCO-layout synthetic images ~640x480, LSJ 0.1-2.0 -> {args.target}x{args.target}, flip, "
        f"{args.max_instances} instance rows, mask stride {args.mask_stride}, batch {args.batch_size}, "
        f"{examples} timed examples\n")
  print("| input path | examples/s | time to first batch (s) |")
  print("|---|---|---|")
  for name, rate, first in rows:
    print(f"| {name} | {rate:.1f} | {'' if first is None else f'{first:.1f}'} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "rows": rows, "cpus": os.cpu_count()}, f, indent=1)


if __name__ == "__main__":
  main()
