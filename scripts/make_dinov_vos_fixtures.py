"""Writes tests/fixtures/dinov/vos_first_frame.npz: the reference DINOv's frame-0 output of DAVIS video object
segmentation, on a DAVIS-sized (854 x 480) synthetic annotation.

Usage:
  python scripts/make_dinov_vos_fixtures.py [--out tests/fixtures/dinov/vos_first_frame.npz]

What is transcribed (UX-Decoder/DINOv at 53bf20d; nothing of it is needed to run this script):
- `datasets/dataset_mappers/davis_dataset_mapper.py` (`VideoReader`): the frame is resized by torchvision's
  `Resize(MIN_SIZE_TEST, max_size=1333)` (`torchvision_resize_size` below: short side MIN_SIZE_TEST, long side
  floored), each object's 0/1 mask (`annotation == id`) by `cv2.resize(..., INTER_CUBIC)` to that size and made
  boolean (`BitMasks`). OpenCV is not installed here: the cubic resize is dinoseg's numpy transcription of
  OpenCV's fixed-point bicubic (`dinoseg.models.dinov.vos.opencv_cubic_resize`, checked against PyTorch's
  bicubic in tests/models/dinov/test_vos.py); its result is stored (`given/<min_size>`) and is the input of the
  step under test.
- `train_net.py` `test_tracking_prev`, frame 0 (`fid == 0`): `rand_shape` = the masks of the objects whose key
  frame is frame 0 (others all False), the output `F.interpolate(rand_shape[None].float(), size=(height,
  width), mode="bilinear", align_corners=False)[0] > 0`, ANDed with `acc_key` (the objects given on frame 0)
  and `~end_key` (all False on frame 0). That part runs here in PyTorch (CPU) as the reference runs it.

The file holds (masks bit-packed along the last axis with np.packbits; O = 3 objects, object 3 enters later,
so its frame-0 output is empty):
  annotation               (480, 854) uint8 object ids of frame 0 (0 background; objects 1 and 2 touch)
  key_frame                (3,) bool: the objects given on frame 0
  size/<m>                 (2,) the resized (h, w) at MIN_SIZE_TEST m (640: Swin-T, 800: Swin-L)
  given/<m>                (3, h, w) packed: the mapper's resized masks
  output/<m>               (3, 480, 854) packed: the reference's frame-0 output masks
"""
import argparse
import pathlib

import numpy as np
import torch

from dinoseg.models.dinov.vos import opencv_cubic_resize

HEIGHT, WIDTH = 480, 854
MIN_SIZES = (640, 800)
MAX_SIZE = 1333  # the DAVIS mapper's hard-coded max_size


def torchvision_resize_size(h: int, w: int, size: int, max_size: int) -> tuple[int, int]:
  """torchvision's `_compute_resized_output_size` for an int size (the reference pins torchvision 0.14)."""
  short, long = (w, h) if w <= h else (h, w)
  new_short, new_long = size, int(size * long / short)
  if new_long > max_size:
    new_short, new_long = int(max_size * new_short / new_long), max_size
  new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
  return new_h, new_w


def synthetic_annotation() -> np.ndarray:
  """Object 1: an ellipse; object 2: a tilted band touching it; object 3: a 2-pixel wire (enters later)."""
  yy, xx = np.mgrid[:HEIGHT, :WIDTH].astype(np.float64)
  ids = np.zeros((HEIGHT, WIDTH), np.uint8)
  ids[((yy - 210) / 95.0) ** 2 + ((xx - 330) / 160.0) ** 2 <= 1.0] = 1
  band = (np.abs((yy - 300) - 0.35 * (xx - 520)) < 41.5) & (xx > 455) & (xx < 801)
  ids[band & (ids == 0)] = 2
  ids[(np.abs(xx - 0.9 * yy - 60) < 1.0) & (yy > 20) & (yy < 460)] = 3
  return ids


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="tests/fixtures/dinov/vos_first_frame.npz")
  args = parser.parse_args()
  ids = synthetic_annotation()
  object_ids = (1, 2, 3)
  key_frame = np.asarray([True, True, False])
  masks = np.stack([ids == i for i in object_ids]).astype(np.uint8)
  out = {"annotation": ids, "key_frame": key_frame}
  for m in MIN_SIZES:
    nh, nw = torchvision_resize_size(HEIGHT, WIDTH, m, MAX_SIZE)
    given = opencv_cubic_resize(masks, (nh, nw)) > 0  # the mapper's cv2 INTER_CUBIC masks (BitMasks: bool)
    rand_shape = torch.from_numpy(given) & torch.from_numpy(key_frame)[:, None, None]
    resized = torch.nn.functional.interpolate(rand_shape[None].float(), size=(HEIGHT, WIDTH), mode="bilinear",
                                              align_corners=False)[0]
    acc_key, end_key = torch.from_numpy(key_frame), torch.zeros(len(object_ids), dtype=torch.bool)
    output = ((resized > 0) & acc_key[:, None, None] & ~end_key[:, None, None]).numpy()
    out[f"size/{m}"] = np.asarray([nh, nw], np.int32)
    out[f"given/{m}"] = np.packbits(given, axis=-1)
    out[f"output/{m}"] = np.packbits(output, axis=-1)
    annotated = masks[key_frame].astype(bool)
    grown, lost = output[key_frame] & ~annotated, annotated & ~output[key_frame]
    print(f"MIN_SIZE_TEST {m}: resized {nw} x {nh}; frame-0 output {int(output.sum())} pixels, "
          f"{int(grown.sum())} outside the annotation ({int(annotated.sum())}), {int(lost.sum())} of it missing; "
          f"objects 1 and 2 overlap on {int((output[0] & output[1]).sum())} pixels")
  path = pathlib.Path(args.out)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, **out)
  print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
  main()
