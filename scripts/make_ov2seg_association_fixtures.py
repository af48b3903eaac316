"""Writes tests/fixtures/ov2seg/association_*.npz: the OV2Seg reference's video post-processing on random
per-frame outputs (the oracle of dinoseg/models/ov2seg/video.py).

    .venv/bin/python scripts/make_ov2seg_association_fixtures.py [--reference /tmp/ref_lvvis]

The reference code itself runs (scripts/ov2seg_association_oracle.py: `OV2SegVideo.forward` in eval mode
with the per-frame network replaced by the given outputs, then LV-VIS's `instances_to_coco_json_video`).

Cases:
- random: independent Gaussian outputs per frame (T=4, Q=100, C=30, D=64, masks 16x16 on a 64x64 padded
  input, frames 45x61, video 72x98; class logits with std 5, so some frames get blanked): arbitrary but
  exact assignments.
- tracks: 100 query slots of which 12 are objects with a class and an embedding that persist (shuffled
  differently in every frame, with noise; an object is hidden in about one frame of five), the rest noise
  (T=6, C=20, D=64, masks 16x24 on 64x96, frames 50x70, video 75x110): the association must follow the
  objects.

Each file holds the inputs (`logits` (T, Q, C+1), `objectness` (T, Q, 2), `masks` (T, Q, h, w),
`embeddings` (T, Q, D), `image_size`, `output_size`, `padded_size`) and the reference's outputs under
`ref/` (see `reference_video_inference`): the aligned per-frame logits and objectness, their means, the
permutation, instances (scores, labels, track_index, blanked stride-4 mask logits), the output masks
(bit-packed, `ref/masks_packed` + `ref/masks_shape`) and `ref/near_zero_packed`: where the evaluator's
resized logit is within 1e-4 of 0 (a float rounding difference may flip the > 0 test there).
"""
import argparse
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ov2seg_association_oracle as oracle  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ov2seg"
NEAR_ZERO = 1e-4


def random_case(rng):
  t, q, c, d = 4, 100, 30, 64
  inputs = dict(logits=rng.normal(0, 5, (t, q, c + 1)), objectness=rng.normal(0, 3, (t, q, 2)),
                masks=rng.normal(0, 2, (t, q, 16, 16)), embeddings=rng.normal(0, 1, (t, q, d)))
  return inputs, (45, 61), (72, 98)


def tracks_case(rng):
  t, q, c, d, objects = 6, 100, 20, 64, 12
  h, w = 16, 24
  obj_embed = rng.normal(0, 1, (objects, d))
  obj_class = rng.integers(0, c, objects)
  obj_masks = rng.normal(0, 2, (objects, h, w))
  logits = rng.normal(-4, 1.5, (t, q, c + 1))
  objectness = np.stack([rng.normal(-2, 1, (t, q)), rng.normal(2, 1, (t, q))], -1)
  masks = rng.normal(0, 2, (t, q, h, w))
  embeddings = rng.normal(0, 1, (t, q, d))
  for f in range(t):
    slots = rng.permutation(q)[:objects]
    embeddings[f, slots] = obj_embed + rng.normal(0, 0.3, (objects, d))
    # An object is hidden (its class logit very low) in about one frame of five: those frames get blanked.
    hidden = rng.random(objects) < 0.2
    logits[f, slots, obj_class] = np.where(hidden, rng.normal(-9, 1, objects), rng.normal(3, 1.5, objects))
    objectness[f, slots] = np.stack([rng.normal(2, 1, objects), rng.normal(-2, 1, objects)], -1)
    masks[f, slots] = obj_masks + rng.normal(0, 0.5, (objects, h, w))
  inputs = dict(logits=logits, objectness=objectness, masks=masks, embeddings=embeddings)
  return inputs, (50, 70), (75, 110)


def write(name: str, ref, inputs, image_size, output_size) -> None:
  inputs = {k: np.asarray(v, np.float32) for k, v in inputs.items()}
  out = oracle.reference_video_inference(ref, **inputs, image_size=image_size, output_size=output_size)
  kept = ~np.all(out["mask_logits"] == -1, axis=(2, 3))
  print(f"{name}: {kept.size} instance-frames, {int((~kept).sum())} blanked, "
        f"{len(set(out['track_index'].tolist()))} tracks, {int((out['track_index'] < 0).sum())} undetermined")
  assert 0 < int((~kept).sum()) < kept.size, "the case should exercise frame blanking both ways"
  arrays = dict(inputs)
  arrays.update(image_size=np.array(image_size), output_size=np.array(output_size), padded_size=out["padded_size"])
  for key in ("per_frame_logits", "per_frame_objectness", "class_logits", "objectness_logits", "perm",
              "track_index", "scores", "labels", "mask_logits"):
    arrays[f"ref/{key}"] = out[key]
  arrays["ref/masks_packed"] = np.packbits(out["masks"].reshape(-1))
  arrays["ref/masks_shape"] = np.array(out["masks"].shape)
  arrays["ref/near_zero_packed"] = np.packbits((np.abs(out["resized_logits"]) < NEAR_ZERO).reshape(-1))
  path = OUT / f"association_{name}.npz"
  np.savez_compressed(path, **arrays)
  print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference", default=oracle.DEFAULT_REFERENCE, help="haochenheheda/LVVIS checkout")
  args = parser.parse_args()
  ref = oracle.load_reference(args.reference)
  OUT.mkdir(parents=True, exist_ok=True)
  for name, make, seed in (("random", random_case, 0), ("tracks", tracks_case, 1)):
    write(name, ref, *make(np.random.default_rng(seed)))


if __name__ == "__main__":
  main()
