"""Synthetic raw datasets in each official layout (`dinoseg data synth --layout NAME --out DIR`).

Every layout is drawn from the same scene generator: a textured background (two or three "stuff"
regions: sky, ground, wall) with 1-6 textured shapes (circle, square, triangle, hexagon, star),
each category with its own hue range, overlapping in drawing order (later shapes occlude
earlier ones), and sometimes a crowd: a cluster of small same-category shapes annotated as one
crowd region. Shapes are polygons; their masks are the polygons rasterized by pycocotools, so a
polygon annotation and the painted pixels agree exactly. Everything is deterministic given the
seed (image i draws from numpy's Generator seeded with (seed, i)).

Annotations use the forms the real datasets use: unoccluded objects as polygons, occluded objects
as compressed RLE strings, crowds as uncompressed RLE (count lists), video masks as uncompressed
RLE with null in frames where the object is absent. `corrupt=True` adds the bad-data cases of
docs/data.md (unreadable and missing images, invalid RLE and polygons, zero-area and out-of-image
boxes, unknown category ids) and returns how many of each it wrote in `expected_issues`.
"""
import base64
import dataclasses
import io
import json
import os
import pathlib
import tarfile
from typing import Callable

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from dinoseg.errors import UserValueError

# Thing categories: (dataset id, name, hue range in degrees). Ids are not contiguous on purpose.
THINGS = ((1, "circle", (0, 30)), (3, "square", (200, 240)), (5, "triangle", (90, 140)),
          (7, "hexagon", (40, 60)), (9, "star", (280, 320)))
# Stuff categories for panoptic / semantic layouts: (dataset id, name, base RGB).
STUFF = ((20, "sky", (120, 170, 235)), (21, "ground", (110, 90, 60)), (22, "wall", (170, 170, 160)))
COLOUR_NAMES = ((0, "red"), (30, "orange"), (55, "yellow"), (120, "green"), (220, "blue"), (300, "purple"))


@dataclasses.dataclass
class SceneObject:
  category: int            # index into THINGS
  polygon: list[float]     # [x0, y0, x1, y1, ...] in pixels
  mask: np.ndarray         # (H, W) uint8 full (unoccluded) mask
  visible: np.ndarray      # (H, W) uint8 visible part
  colour: tuple[int, int, int]
  crowd: bool = False


@dataclasses.dataclass
class Scene:
  image: np.ndarray        # (H, W, 3) uint8
  objects: list[SceneObject]
  stuff: np.ndarray        # (H, W) int: index into STUFF of the background region under each pixel


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
  h = (h % 360) / 60.0
  c = v * s
  x = c * (1 - abs(h % 2 - 1))
  r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
  m = v - c
  return tuple(int(round(255 * (t + m))) for t in (r, g, b))


def shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[float]:
  """A closed polygon (flat [x, y, ...]) of the given shape centred at (cx, cy) with radius r."""
  if kind == "circle":
    n, radii = 32, [r]
  elif kind == "square":
    n, radii = 4, [r]
  elif kind == "triangle":
    n, radii = 3, [r]
  elif kind == "hexagon":
    n, radii = 6, [r]
  elif kind == "star":
    n, radii = 10, [r, 0.45 * r]
  else:
    raise ValueError(f"unknown shape kind {kind!r}")
  pts = []
  for k in range(n):
    a = angle + 2 * np.pi * k / n
    rad = radii[k % len(radii)]
    pts += [cx + rad * np.cos(a), cy + rad * np.sin(a)]
  return [float(round(p, 2)) for p in pts]


def rasterize(polygon: list[float], h: int, w: int) -> np.ndarray:
  rle = coco_mask.frPyObjects([polygon], h, w)
  return coco_mask.decode(coco_mask.merge(rle))


def _texture(rng, h: int, w: int, base: tuple[int, int, int], amount: float = 18.0) -> np.ndarray:
  """base colour with smooth low-frequency shading, stripes and pixel noise: (h, w, 3) float."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  fx, fy = rng.uniform(0.02, 0.12, 2)
  phase = rng.uniform(0, 2 * np.pi)
  stripes = np.sin(fx * xx + fy * yy + phase)[..., None] * amount
  shade = (rng.uniform(-1, 1) * (xx / max(w, 1)) + rng.uniform(-1, 1) * (yy / max(h, 1)))[..., None] * amount
  noise = rng.normal(0, amount / 3, (h, w, 3))
  return np.asarray(base, np.float32)[None, None] + stripes + shade + noise


def draw_scene(rng: np.random.Generator, h: int, w: int, *, max_objects: int = 6, min_objects: int = 1,
               crowd_prob: float = 0.2, things=THINGS) -> Scene:
  """One synthetic scene (module docstring)."""
  # Background: horizontal bands of stuff classes.
  num_bands = int(rng.integers(2, 4))
  cuts = np.sort(rng.uniform(0.25, 0.75, num_bands - 1)) * h
  kinds = rng.permutation(len(STUFF))[:num_bands]
  stuff = np.zeros((h, w), np.int32)
  rows = np.arange(h)[:, None]
  wobble = (np.sin(np.arange(w) * rng.uniform(0.02, 0.08) + rng.uniform(0, 6)) * h * 0.04)[None, :]
  band = np.zeros((h, w), np.int32)
  for c in cuts:
    band += (rows > c + wobble).astype(np.int32)
  stuff = kinds[band]
  image = np.zeros((h, w, 3), np.float32)
  for k in range(len(STUFF)):
    region = stuff == k
    if region.any():
      image[region] = _texture(rng, h, w, STUFF[k][2], 14.0)[region]

  objects: list[SceneObject] = []
  num = int(rng.integers(min_objects, max_objects + 1))
  scale = min(h, w)
  for _ in range(num):
    cat = int(rng.integers(len(things)))
    r = float(rng.uniform(0.1, 0.25) * scale)
    cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
    polygon = shape_polygon(things[cat][1], cx, cy, r, float(rng.uniform(0, 2 * np.pi)))
    mask = rasterize(polygon, h, w)
    if mask.sum() < 16:
      continue
    lo, hi = things[cat][2]
    colour = _hsv_to_rgb(rng.uniform(lo, hi), rng.uniform(0.6, 0.95), rng.uniform(0.6, 0.95))
    image[mask > 0] = _texture(rng, h, w, colour, 22.0)[mask > 0]
    objects.append(SceneObject(cat, polygon, mask, mask.copy(), colour))
  if rng.random() < crowd_prob:
    cat = int(rng.integers(len(things)))
    lo, hi = things[cat][2]
    colour = _hsv_to_rgb(rng.uniform(lo, hi), 0.8, 0.8)
    gx, gy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
    union = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(4, 9))):
      px, py = gx + rng.normal(0, 0.06 * w), gy + rng.normal(0, 0.06 * h)
      poly = shape_polygon(things[cat][1], px, py, 0.035 * scale + 1.5, float(rng.uniform(0, 6)))
      union |= rasterize(poly, h, w)
    if union.sum() >= 16:
      image[union > 0] = _texture(rng, h, w, colour, 10.0)[union > 0]
      objects.append(SceneObject(cat, [], union, union.copy(), colour, crowd=True))
  # Occlusion: later objects hide earlier ones.
  covered = np.zeros((h, w), bool)
  for obj in reversed(objects):
    obj.visible = (obj.mask.astype(bool) & ~covered).astype(np.uint8)
    covered |= obj.mask.astype(bool)
  objects = [o for o in objects if o.visible.sum() >= 8]
  return Scene(np.clip(image, 0, 255).astype(np.uint8), objects, stuff)


def encode_image(image: np.ndarray, fmt: str = "JPEG") -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
  return buf.getvalue()


def _write(path: pathlib.Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


def _write_json(path: pathlib.Path, data) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data))


def _box(mask: np.ndarray) -> list[float]:
  ys, xs = np.nonzero(mask)
  return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def object_annotation(obj: SceneObject, ann_id: int, image_id: int, things=THINGS) -> dict:
  """COCO annotation of a scene object: polygon if unoccluded, RLE string if occluded, count-list RLE if crowd."""
  vis = obj.visible
  if obj.crowd:
    rle = coco_mask.encode(np.asfortranarray(vis))
    seg = {"size": [int(s) for s in rle["size"]], "counts": _uncompressed_counts(vis)}
  elif np.array_equal(vis, obj.mask) and obj.polygon:
    seg = [obj.polygon]
  else:
    rle = coco_mask.encode(np.asfortranarray(vis))
    seg = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
  return {"id": ann_id, "image_id": image_id, "category_id": things[obj.category][0], "segmentation": seg,
          "area": float(vis.sum()), "bbox": _box(vis), "iscrowd": int(obj.crowd)}


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
  """Column-major run lengths starting with a run of zeros (COCO's uncompressed RLE)."""
  flat = np.asarray(mask, np.uint8).ravel(order="F")
  change = np.flatnonzero(np.diff(flat)) + 1
  bounds = np.concatenate([[0], change, [flat.size]])
  runs = np.diff(bounds).tolist()
  if flat.size and flat[0] == 1:
    runs = [0] + runs
  return [int(r) for r in runs]


def _sizes(rng, image_size) -> tuple[int, int]:
  lo, hi = image_size
  return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))


@dataclasses.dataclass
class SynthOptions:
  num_images: int = 8
  image_size: tuple[int, int] = (128, 192)   # min, max side length
  seed: int = 0
  splits: tuple[str, ...] = ("train", "val")
  corrupt: bool = False
  max_objects: int = 6
  num_frames: int = 6                          # video layouts


def _categories(things=THINGS) -> list[dict]:
  return [{"id": i, "name": n, "supercategory": "shape"} for i, n, _ in things]


def _split_seed(opts: SynthOptions, split: str) -> int:
  return opts.seed * 1000 + sum(ord(c) for c in split)


# ----------------------------------------------------------------------------- image layouts


def _coco_images(opts: SynthOptions, split: str):
  """Yields (image_id, file_name, scene) for a split."""
  for i in range(opts.num_images):
    rng = np.random.default_rng((_split_seed(opts, split), i))
    h, w = _sizes(rng, opts.image_size)
    image_id = {"train": 100000, "val": 200000}.get(split, 300000) + i + 1
    # The first image of a split always has a crowd region, the others with probability 0.2.
    yield image_id, rng, draw_scene(rng, h, w, max_objects=opts.max_objects, crowd_prob=1.0 if i == 0 else 0.2)


def _corruptions(out: pathlib.Path, images: list, annotations: list, image_dir: pathlib.Path, split: str,
                 start_id: int) -> dict:
  """Adds one case of each bad-data kind to a COCO-format split; returns the expected counts."""
  good = images[0]
  next_ann = max([a["id"] for a in annotations] + [0]) + 1
  # An unreadable image and a missing one (their annotations are irrelevant).
  bad_img = {"id": start_id, "file_name": f"{start_id:012d}.jpg", "height": 32, "width": 32}
  _write(image_dir / bad_img["file_name"], b"\xff\xd8\xff\xe0 this is not a jpeg")
  missing = {"id": start_id + 1, "file_name": f"{start_id + 1:012d}.jpg", "height": 32, "width": 32}
  images += [bad_img, missing]
  h, w = good["height"], good["width"]

  bad_ids = []

  def ann(**kw):
    nonlocal next_ann
    bad_ids.append(next_ann)
    a = {"id": next_ann, "image_id": good["id"], "category_id": THINGS[0][0], "iscrowd": 0, "area": 10.0,
         "bbox": [1.0, 1.0, 5.0, 5.0], "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]}
    a.update(kw)
    next_ann += 1
    annotations.append(a)

  ann(segmentation={"size": [h, w], "counts": "this is not an rle"})           # invalid_rle
  ann(segmentation=[[1.0, 2.0, 3.0]])                                         # invalid_polygon
  ann(bbox=[3.0, 3.0, 0.0, 4.0])                                              # zero_area_box
  ann(bbox=[w + 10.0, h + 10.0, 5.0, 5.0])                                    # box_outside_image
  ann(category_id=999)                                                        # unknown_category
  return {"skipped_examples": {"unreadable_image": 1, "missing_file": 1},
          "dropped_annotations": {"invalid_rle": 1, "invalid_polygon": 1, "zero_area_box": 1,
                                  "box_outside_image": 1, "unknown_category": 1},
          "annotation_ids": bad_ids, "image_ids": [bad_img["id"], missing["id"]]}


def synth_coco(out: str, opts: SynthOptions) -> dict:
  """COCO 2017 instances layout: annotations/instances_{split}2017.json + {split}2017/*.jpg."""
  root = pathlib.Path(out)
  summary = {"layout": "coco", "splits": {}, "expected_issues": {}}
  for split in opts.splits:
    image_dir = root / f"{split}2017"
    images, annotations = [], []
    ann_id = 1
    for image_id, _, scene in _coco_images(opts, split):
      h, w = scene.image.shape[:2]
      name = f"{image_id:012d}.jpg"
      _write(image_dir / name, encode_image(scene.image))
      images.append({"id": image_id, "file_name": name, "height": h, "width": w})
      for obj in scene.objects:
        annotations.append(object_annotation(obj, ann_id, image_id))
        ann_id += 1
    if opts.corrupt:
      summary["expected_issues"][split] = _corruptions(root, images, annotations, image_dir, split, 900000)
    _write_json(root / "annotations" / f"instances_{split}2017.json",
                {"info": {"description": "dinoseg synthetic shapes"}, "images": images,
                 "annotations": annotations, "categories": _categories()})
    summary["splits"][split] = {"images": len(images), "annotations": len(annotations)}
  return summary


def synth_lvis(out: str, opts: SynthOptions) -> dict:
  """LVIS v1 layout: lvis_v1_{split}.json (coco_url -> {split}2017/), federated fields."""
  root = pathlib.Path(out)
  summary = {"layout": "lvis", "splits": {}, "expected_issues": {}}
  freq = "fcr"
  cats = [{"id": i, "name": n, "synset": f"{n}.n.01", "frequency": freq[k % 3], "image_count": 1,
           "instance_count": 1} for k, (i, n, _) in enumerate(THINGS)]
  for split in opts.splits:
    images, annotations = [], []
    ann_id = 1
    for image_id, rng, scene in _coco_images(opts, split):
      h, w = scene.image.shape[:2]
      name = f"{image_id:012d}.jpg"
      _write(root / f"{split}2017" / name, encode_image(scene.image))
      present = {THINGS[o.category][0] for o in scene.objects}
      absent = [c["id"] for c in cats if c["id"] not in present]
      images.append({"id": image_id, "coco_url": f"http://images.cocodataset.org/{split}2017/{name}",
                     "height": h, "width": w, "neg_category_ids": absent[:2],
                     "not_exhaustive_category_ids": sorted(present)[:1]})
      for obj in scene.objects:
        if obj.crowd:
          continue  # LVIS has no crowd annotations
        a = object_annotation(obj, ann_id, image_id)
        a.pop("iscrowd")
        annotations.append(a)
        ann_id += 1
    _write_json(root / f"lvis_v1_{split}.json", {"images": images, "annotations": annotations, "categories": cats})
    summary["splits"][split] = {"images": len(images), "annotations": len(annotations)}
  return summary


def _panoptic_from_scene(scene: Scene, image_id: int) -> tuple[np.ndarray, list[dict]]:
  """(H, W, 3) uint8 panoptic PNG content and segments_info (stuff regions + things + crowds)."""
  h, w = scene.stuff.shape
  ids = np.zeros((h, w), np.int64)
  segments = []
  next_id = 1
  rng = np.random.default_rng(image_id)
  for k in range(len(STUFF)):
    region = scene.stuff == k
    for obj in scene.objects:
      region &= ~obj.visible.astype(bool)
    if region.sum() == 0:
      continue
    seg_id = int(next_id * 97 + rng.integers(0, 50))
    next_id += 1
    ids[region] = seg_id
    segments.append({"id": seg_id, "category_id": STUFF[k][0], "iscrowd": 0, "bbox": _box(region),
                     "area": int(region.sum())})
  for obj in scene.objects:
    seg_id = int(next_id * 97 + rng.integers(0, 50))
    next_id += 1
    ids[obj.visible > 0] = seg_id
    segments.append({"id": seg_id, "category_id": THINGS[obj.category][0], "iscrowd": int(obj.crowd),
                     "bbox": _box(obj.visible), "area": int(obj.visible.sum())})
  rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
  return rgb, segments


def _panoptic_categories() -> list[dict]:
  cats = [{"id": i, "name": n, "supercategory": "shape", "isthing": 1, "color": list(_hsv_to_rgb(hue[0], .8, .8))}
          for i, n, hue in THINGS]
  cats += [{"id": i, "name": n, "supercategory": "stuff", "isthing": 0, "color": list(c)} for i, n, c in STUFF]
  return cats


def synth_coco_panoptic(out: str, opts: SynthOptions, *, ade: bool = False) -> dict:
  """COCO panoptic layout (or ADE20K panoptic with `ade`): JSON + panoptic PNGs + images."""
  root = pathlib.Path(out)
  summary = {"layout": "ade20k_panoptic" if ade else "coco_panoptic", "splits": {}, "expected_issues": {}}
  for split in opts.splits:
    if ade:
      sub = {"train": "training", "val": "validation"}.get(split, split)
      image_dir, png_dir, ann_file = (root / "images" / sub, root / f"ade20k_panoptic_{split}",
                                      root / f"ade20k_panoptic_{split}.json")
    else:
      image_dir, png_dir, ann_file = (root / f"{split}2017", root / "annotations" / f"panoptic_{split}2017",
                                      root / "annotations" / f"panoptic_{split}2017.json")
    images, annotations = [], []
    for image_id, _, scene in _coco_images(opts, split):
      h, w = scene.image.shape[:2]
      name = f"ADE_{split}_{image_id:08d}.jpg" if ade else f"{image_id:012d}.jpg"
      png_name = os.path.splitext(name)[0] + ".png"
      _write(image_dir / name, encode_image(scene.image))
      rgb, segments = _panoptic_from_scene(scene, image_id)
      _write(png_dir / png_name, encode_image(rgb, "PNG"))
      images.append({"id": image_id, "file_name": name, "height": h, "width": w})
      annotations.append({"image_id": image_id, "file_name": png_name, "segments_info": segments})
    _write_json(ann_file, {"images": images, "annotations": annotations, "categories": _panoptic_categories()})
    summary["splits"][split] = {"images": len(images), "segments": sum(len(a["segments_info"]) for a in annotations)}
  return summary


def _colour_name(colour: tuple[int, int, int]) -> str:
  r, g, b = (c / 255 for c in colour)
  mx, mn = max(r, g, b), min(r, g, b)
  if mx == mn:
    return "grey"
  if mx == r:
    hue = (60 * ((g - b) / (mx - mn)) + 360) % 360
  elif mx == g:
    hue = 60 * ((b - r) / (mx - mn)) + 120
  else:
    hue = 60 * ((r - g) / (mx - mn)) + 240
  return min(COLOUR_NAMES, key=lambda hn: min(abs(hue - hn[0]), 360 - abs(hue - hn[0])))[1]


def scene_captions(scene: Scene) -> list[str]:
  """Five captions that describe what is drawn (shapes, colours, background)."""
  objs = [o for o in scene.objects if not o.crowd] or scene.objects
  names = [f"{_colour_name(o.colour)} {THINGS[o.category][1]}" for o in objs]
  bg = STUFF[int(np.bincount(scene.stuff.ravel()).argmax())][1]
  first = names[-1]
  many = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
  return [f"a {first} in front of the {bg}", f"a picture of {len(objs)} shapes over the {bg}",
          f"{many}", f"the {bg} behind a {first}", f"some shapes: {many}"]


def synth_coco_captions(out: str, opts: SynthOptions) -> dict:
  """COCO 2014 captions layout: annotations/captions_{split}2014.json + {split}2014/*.jpg."""
  root = pathlib.Path(out)
  summary = {"layout": "coco_captions", "splits": {}, "expected_issues": {}}
  for split in opts.splits:
    images, annotations = [], []
    for image_id, _, scene in _coco_images(opts, split):
      h, w = scene.image.shape[:2]
      name = f"COCO_{split}2014_{image_id:012d}.jpg"
      _write(root / f"{split}2014" / name, encode_image(scene.image))
      images.append({"id": image_id, "file_name": name, "height": h, "width": w})
      for k, text in enumerate(scene_captions(scene)):
        annotations.append({"id": image_id * 10 + k, "image_id": image_id, "caption": text})
    _write_json(root / "annotations" / f"captions_{split}2014.json",
                {"images": images, "annotations": annotations})
    summary["splits"][split] = {"images": len(images), "captions": len(annotations)}
  return summary


def sa1b_entries(opts: SynthOptions) -> list[tuple[str, bytes, bytes]]:
  """The synthetic SA-1B images: (name "sa_<n>", JPEG bytes, SA-1B JSON bytes) each, the same for every layout."""
  entries = []
  ann_id = 1
  for i in range(opts.num_images):
    rng = np.random.default_rng((opts.seed, 77, i))
    h, w = _sizes(rng, opts.image_size)
    scene = draw_scene(rng, h, w, max_objects=opts.max_objects, crowd_prob=0.0)
    anns = []
    masks = [o.visible for o in scene.objects]
    masks += [(scene.stuff == k).astype(np.uint8) for k in range(len(STUFF)) if (scene.stuff == k).sum() >= 8]
    for m in masks:
      rle = coco_mask.encode(np.asfortranarray(m))
      ys, xs = np.nonzero(m)
      j = int(rng.integers(len(ys)))
      anns.append({"id": ann_id, "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                   "bbox": _box(m), "area": int(m.sum()), "predicted_iou": float(rng.uniform(0.8, 1.0)),
                   "point_coords": [[float(xs[j]), float(ys[j])]], "crop_box": [0.0, 0.0, float(w), float(h)],
                   "stability_score": float(rng.uniform(0.85, 1.0))})
      ann_id += 1
    name = f"sa_{i + 1}"
    meta = {"image": {"image_id": i + 1, "width": w, "height": h, "file_name": f"{name}.jpg"}, "annotations": anns}
    entries.append((name, encode_image(scene.image), json.dumps(meta).encode()))
  return entries


def synth_sa1b(out: str, opts: SynthOptions, *, images_per_tar: int = 4) -> dict:
  """SA-1B layout: sa_00000N.tar shards of sa_<n>.jpg + sa_<n>.json (class-agnostic RLE masks)."""
  root = pathlib.Path(out)
  root.mkdir(parents=True, exist_ok=True)
  entries = sa1b_entries(opts)
  for t in range(0, len(entries), images_per_tar):
    with tarfile.open(root / f"sa_{t // images_per_tar:06d}.tar", "w") as tar:
      for name, jpg, js in entries[t:t + images_per_tar]:
        for suffix, data in ((".jpg", jpg), (".json", js)):
          info = tarfile.TarInfo(name + suffix)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
  return {"layout": "sa1b", "splits": {"train": {"images": len(entries)}}, "expected_issues": {}}


def write_tsv_shard(path: str | os.PathLike, rows) -> list[int]:
  """Writes `rows` (each a sequence of str/bytes fields) as one TSV shard + its `.lineidx`; returns the offsets.

  The layout DINOv's reference reads (`datasets/utils/tsv/`): one row per line, fields separated by tabs,
  and beside the shard `<stem>.lineidx` with each row's byte offset on its own line.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  offsets = []
  with open(path, "wb") as f:
    for row in rows:
      offsets.append(f.tell())
      f.write(b"\t".join(v if isinstance(v, bytes) else str(v).encode() for v in row) + b"\n")
  path.with_suffix(".lineidx").write_text("".join(f"{o}\n" for o in offsets))
  return offsets


def sa1b_tsv_name(number: int, naming: str = "part") -> str:
  """A TSV shard name in one of the reference's two forms: "part" (SA-1B.part_000NN.tsv) or "dash" (sa1b-NN.tsv)."""
  if naming == "part":
    return f"SA-1B.part_{number:05d}.tsv"
  if naming == "dash":
    return f"sa1b-{number:02d}.tsv"
  raise UserValueError(f"TSV shard naming must be 'part' or 'dash', got {naming!r}")


def synth_sa1b_tsv(out: str, opts: SynthOptions, *, images_per_shard: int = 2, naming: str = "part",
                   first_shard: int = 0) -> dict:
  """SA-1B in the reference's TSV layout: the images of `synth_sa1b` as rows (key, JSON, base64 JPEG).

  Shards are numbered from `first_shard`, `images_per_shard` rows each, named by `sa1b_tsv_name(n, naming)`,
  each with its `.lineidx`. The same `opts` give the same images and JSON as the tar layout.
  """
  root = pathlib.Path(out)
  root.mkdir(parents=True, exist_ok=True)
  entries = sa1b_entries(opts)
  shards = []
  for t in range(0, len(entries), images_per_shard):
    name = sa1b_tsv_name(first_shard + t // images_per_shard, naming)
    write_tsv_shard(root / name, [(key, js, base64.b64encode(jpg)) for key, jpg, js in entries[t:t + images_per_shard]])
    shards.append(name)
  return {"layout": "sa1b_tsv", "splits": {"train": {"images": len(entries)}}, "shards": shards,
          "expected_issues": {}}


# ----------------------------------------------------------------------------- semantic layouts


def semantic_labels(scene: Scene, thing_values, stuff_values, background: int, boundary: int | None = None):
  """(H, W) raw label values of a scene: things over stuff; an optional 1-px boundary value."""
  labels = np.asarray(stuff_values, np.int64)[scene.stuff] if stuff_values is not None else \
      np.full(scene.stuff.shape, background, np.int64)
  for obj in scene.objects:
    labels[obj.visible > 0] = thing_values[obj.category]
  if boundary is not None:
    edge = np.zeros_like(labels, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    labels[edge] = boundary
  return labels.astype(np.uint8)


def _palette_png(labels: np.ndarray) -> bytes:
  img = Image.fromarray(labels, mode="P")
  palette = []
  for v in range(256):
    palette += [(v * 37) % 256, (v * 91) % 256, (v * 53) % 256] if v else [0, 0, 0]
  img.putpalette(palette)
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  return buf.getvalue()


def _semantic_scenes(opts: SynthOptions, split: str):
  for i in range(opts.num_images):
    rng = np.random.default_rng((_split_seed(opts, split), 5, i))
    h, w = _sizes(rng, opts.image_size)
    yield i, draw_scene(rng, h, w, max_objects=opts.max_objects, crowd_prob=0.0)


def synth_ade20k(out: str, opts: SynthOptions) -> dict:
  """ADEChallengeData2016 layout: images/{training,validation}, annotations/... (0 = other)."""
  root = pathlib.Path(out)
  n = 0
  for split in opts.splits:
    sub = {"train": "training", "val": "validation"}.get(split, split)
    for i, scene in _semantic_scenes(opts, split):
      name = f"ADE_{split}_{i + 1:08d}"
      labels = semantic_labels(scene, [1 + k for k in range(len(THINGS))], [0, 11, 12], 0)
      _write(root / "images" / sub / f"{name}.jpg", encode_image(scene.image))
      _write(root / "annotations" / sub / f"{name}.png", encode_image(labels, "PNG"))
      n += 1
  return {"layout": "ade20k", "splits": {s: {"images": opts.num_images} for s in opts.splits}, "expected_issues": {}}


def synth_voc(out: str, opts: SynthOptions, *, context: bool = False) -> dict:
  """VOC2012 (or VOC2010 Pascal Context with `context`) segmentation layout, palette PNG labels."""
  root = pathlib.Path(out)
  label_dir, list_dir = (("SegmentationClassContext", "SegmentationContext") if context
                         else ("SegmentationClass", "Segmentation"))
  for split in opts.splits:
    ids = []
    for i, scene in _semantic_scenes(opts, split):
      name = f"20{10 if context else 12}_{split}{i:06d}"
      if context:
        labels = semantic_labels(scene, [2 + k for k in range(len(THINGS))], [0, 30, 40], 0)
        png = encode_image(labels, "PNG")
      else:
        labels = semantic_labels(scene, [1 + k for k in range(len(THINGS))], None, 0, boundary=255)
        png = _palette_png(labels)
      _write(root / "JPEGImages" / f"{name}.jpg", encode_image(scene.image))
      _write(root / label_dir / f"{name}.png", png)
      ids.append(name)
    (root / "ImageSets" / list_dir).mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / list_dir / f"{split}.txt").write_text("\n".join(ids) + "\n")
  return {"layout": "pascal_context" if context else "voc",
          "splits": {s: {"images": opts.num_images} for s in opts.splits}, "expected_issues": {}}


def synth_cityscapes(out: str, opts: SynthOptions) -> dict:
  """Cityscapes layout: leftImg8bit/{split}/<city>/*_leftImg8bit.png + gtFine/..._gtFine_labelIds.png."""
  root = pathlib.Path(out)
  thing_ids = [24, 26, 25, 27, 33]   # person, car, rider, truck, bicycle
  for split in opts.splits:
    for i, scene in _semantic_scenes(opts, split):
      city = ["aachen", "bremen"][i % 2]
      stem = f"{city}_{i:06d}_000019"
      labels = semantic_labels(scene, thing_ids, [23, 7, 11], 0)   # sky, road, building
      _write(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", encode_image(scene.image, "PNG"))
      _write(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", encode_image(labels, "PNG"))
  return {"layout": "cityscapes", "splits": {s: {"images": opts.num_images} for s in opts.splits},
          "expected_issues": {}}


# ----------------------------------------------------------------------------- video layouts


def _video(rng, h: int, w: int, num_frames: int, max_objects: int):
  """Frames (F, H, W, 3) uint8 and tracks [(category, [mask or None per frame])] of moving shapes."""
  base = draw_scene(rng, h, w, max_objects=0, min_objects=0, crowd_prob=0.0)
  num = int(rng.integers(min(2, max_objects), max(2, max_objects) + 1))
  tracks = []
  scale = min(h, w)
  for _ in range(num):
    cat = int(rng.integers(len(THINGS)))
    r = float(rng.uniform(0.1, 0.2) * scale)
    x, y = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
    vx, vy = rng.uniform(-0.08, 0.08, 2) * scale
    angle, spin = rng.uniform(0, 6), rng.uniform(-0.2, 0.2)
    lo, hi = THINGS[cat][2]
    colour = _hsv_to_rgb(rng.uniform(lo, hi), 0.85, 0.85)
    # The first object is there from the start; the others may enter later.
    enter = 0 if not tracks else int(rng.integers(0, max(2, num_frames // 2)))
    tracks.append((cat, r, x, y, vx, vy, angle, spin, colour, enter))
  textures = [_texture(rng, h, w, tr[8], 15.0) for tr in tracks]
  frames, masks = [], [[None] * num_frames for _ in tracks]
  for f in range(num_frames):
    image = base.image.astype(np.float32).copy()
    covered = np.zeros((h, w), bool)
    full = []
    for t, (cat, r, x, y, vx, vy, angle, spin, colour, enter) in enumerate(tracks):
      if f < enter:
        full.append(None)
        continue
      poly = shape_polygon(THINGS[cat][1], x + vx * f, y + vy * f, r * (1 + 0.03 * f), angle + spin * f)
      m = rasterize(poly, h, w)
      image[m > 0] = textures[t][m > 0]
      full.append(m)
    for t in reversed(range(len(tracks))):
      if full[t] is None:
        continue
      vis = (full[t].astype(bool) & ~covered)
      covered |= full[t].astype(bool)
      masks[t][f] = vis.astype(np.uint8) if vis.sum() >= 4 else None
    frames.append(np.clip(image, 0, 255).astype(np.uint8))
  return np.stack(frames), [(tr[0], masks[t]) for t, tr in enumerate(tracks)]


def synth_video(out: str, opts: SynthOptions, *, flavour: str = "ytvis_2019") -> dict:
  """YouTube-VIS 2019 / 2021 or LV-VIS layout: JPEGImages/<video>/<frame>.jpg + instances JSON."""
  root = pathlib.Path(out)
  cats = [{"id": i, "name": n} for i, n, _ in THINGS]
  if flavour == "lvvis":
    for k, c in enumerate(cats):
      c["partition"] = k % 4
  for split in opts.splits:
    split_dir = split if flavour == "lvvis" else {"val": "valid"}.get(split, split)
    videos, annotations = [], []
    ann_id = 1
    for v in range(opts.num_images):
      rng = np.random.default_rng((_split_seed(opts, split), 9, v))
      h, w = _sizes(rng, opts.image_size)
      frames, tracks = _video(rng, h, w, opts.num_frames, opts.max_objects)
      vid = v + 1
      folder = f"{vid:05d}" if flavour == "lvvis" else f"{vid:04x}abcd{v:02d}"
      names = []
      for f, frame in enumerate(frames):
        name = f"{folder}/{f * 5:05d}.jpg"
        _write(root / split_dir / "JPEGImages" / name, encode_image(frame))
        names.append(name)
      videos.append({"id": vid, "file_names": names, "height": h, "width": w, "length": len(names)})
      for cat, masks in tracks:
        if all(m is None for m in masks):
          continue
        segs, boxes, areas = [], [], []
        for m in masks:
          if m is None:
            segs.append(None), boxes.append(None), areas.append(None)
          else:
            segs.append({"size": [h, w], "counts": _uncompressed_counts(m)})
            boxes.append(_box(m))
            areas.append(int(m.sum()))
        annotations.append({"id": ann_id, "video_id": vid, "category_id": THINGS[cat][0], "segmentations": segs,
                            "bboxes": boxes, "areas": areas, "iscrowd": 0, "height": h, "width": w,
                            "length": 1})
        ann_id += 1
    data = {"info": {"description": f"dinoseg synthetic {flavour}"}, "videos": videos,
            "annotations": annotations, "categories": cats}
    if flavour == "lvvis":
      path = root / f"{split}_instances.json"
    elif flavour == "ytvis_2021":
      path = root / split_dir / "instances.json"
    else:
      path = root / f"{split_dir}.json"
    _write_json(path, data)
  return {"layout": flavour, "splits": {s: {"videos": opts.num_images} for s in opts.splits}, "expected_issues": {}}


# ----------------------------------------------------------------------------- interactive layouts


def _single_object(rng, h: int, w: int):
  scene = draw_scene(rng, h, w, max_objects=3, min_objects=1, crowd_prob=0.0)
  target = max(scene.objects, key=lambda o: int(o.visible.sum()))
  return scene.image, target.visible


def synth_davis345(out: str, opts: SynthOptions) -> dict:
  """DAVIS-345 layout: img/<name>.jpg + gt/<name>.png (one object, 0/255)."""
  root = pathlib.Path(out)
  for i in range(opts.num_images):
    rng = np.random.default_rng((opts.seed, 345, i))
    image, mask = _single_object(rng, *_sizes(rng, opts.image_size))
    _write(root / "img" / f"frame_{i:05d}.jpg", encode_image(image))
    _write(root / "gt" / f"frame_{i:05d}.png", encode_image(mask * 255, "PNG"))
  return {"layout": "davis345", "splits": {"val": {"images": opts.num_images}}, "expected_issues": {}}


def synth_hqseg44k(out: str, opts: SynthOptions) -> dict:
  """HQSeg-44K layout: every train/val source folder with a few image/mask pairs."""
  from dinoseg.data_pipelines.preparers.interactive import HQSEG_SUBSETS  # noqa: PLC0415
  root = pathlib.Path(out)
  counts = {}
  for split in opts.splits:
    subsets = HQSEG_SUBSETS.get(split, [])
    counts[split] = 0
    for k in range(opts.num_images):
      subset, im_dir, gt_dir = subsets[k % len(subsets)]
      rng = np.random.default_rng((_split_seed(opts, split), 44, k))
      image, mask = _single_object(rng, *_sizes(rng, opts.image_size))
      stem = f"{subset.lower()}_{k:05d}"
      _write(root / im_dir / f"{stem}.jpg", encode_image(image))
      _write(root / gt_dir / f"{stem}.png", encode_image(mask * 255, "PNG"))
      counts[split] += 1
  return {"layout": "hqseg44k", "splits": {s: {"images": n} for s, n in counts.items()}, "expected_issues": {}}


LAYOUTS: dict[str, Callable[[str, SynthOptions], dict]] = {
    "coco": synth_coco,
    "coco_panoptic": synth_coco_panoptic,
    "coco_captions": synth_coco_captions,
    "lvis": synth_lvis,
    "sa1b": synth_sa1b,
    "sa1b_tsv": synth_sa1b_tsv,
    "ade20k": synth_ade20k,
    "ade20k_panoptic": lambda out, opts: synth_coco_panoptic(out, opts, ade=True),
    "voc": synth_voc,
    "pascal_context": lambda out, opts: synth_voc(out, opts, context=True),
    "cityscapes": synth_cityscapes,
    "ytvis_2019": lambda out, opts: synth_video(out, opts, flavour="ytvis_2019"),
    "ytvis_2021": lambda out, opts: synth_video(out, opts, flavour="ytvis_2021"),
    "lvvis": lambda out, opts: synth_video(out, opts, flavour="lvvis"),
    "davis345": synth_davis345,
    "hqseg44k": synth_hqseg44k,
}

# The preparer (`dinoseg data prepare --dataset`) that reads each layout.
PREPARER_FOR_LAYOUT = {"coco": "coco_instances", "coco_panoptic": "coco_panoptic", "coco_captions": "coco_captions",
                       "lvis": "lvis", "sa1b": "sa1b", "ade20k": "ade20k", "ade20k_panoptic": "ade20k_panoptic",
                       "sa1b_tsv": "sa1b",
                       "voc": "voc", "pascal_context": "pascal_context", "cityscapes": "cityscapes",
                       "ytvis_2019": "ytvis_2019", "ytvis_2021": "ytvis_2021", "lvvis": "lvvis",
                       "davis345": "davis345", "hqseg44k": "hqseg44k"}


def synthesize(layout: str, out: str, **options) -> dict:
  """Writes the synthetic raw dataset `layout` under `out`; returns a summary (counts, expected issues).

  Options: SynthOptions fields (num_images, image_size=(min, max), seed, splits, corrupt,
  max_objects, num_frames). `corrupt` is supported by the "coco" layout.
  """
  if layout not in LAYOUTS:
    raise UserValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
  opts = SynthOptions(**options)
  if opts.num_images <= 0:
    raise UserValueError(f"num_images must be positive, got {opts.num_images}")
  lo, hi = opts.image_size
  if not 16 <= lo <= hi:
    raise UserValueError(f"image_size must be (min, max) with 16 <= min <= max, got {opts.image_size}")
  if opts.corrupt and layout != "coco":
    raise UserValueError("corrupt=True is only supported for the 'coco' layout")
  if layout in ("davis345",):
    opts.splits = ("val",)
  elif layout in ("sa1b", "sa1b_tsv"):
    opts.splits = ("train",)
  summary = LAYOUTS[layout](out, opts)
  summary["preparer"] = PREPARER_FOR_LAYOUT[layout]
  return summary


__all__ = ["synthesize", "LAYOUTS", "PREPARER_FOR_LAYOUT", "SynthOptions", "draw_scene", "THINGS", "STUFF",
           "scene_captions", "sa1b_entries", "write_tsv_shard", "sa1b_tsv_name", "synth_sa1b_tsv"]
