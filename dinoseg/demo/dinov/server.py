"""The DINOv demo server: visual in-context prompting in the browser, served on 127.0.0.1.

The page (static/index.html + app.js) holds 1 to MAX_EXAMPLES example slots, each an image, a mask the
user paints with a brush (a thin brush draws scribbles; the eraser and the right button erase) and a
category name, and up to MAX_TARGETS target images. After each edit (debounced) it posts every example and
target; the server answers with the instances of every target: category, score, box and mask. Examples that
share a category name are averaged into one class prompt, as `DINOvPredictor.set_examples` averages user
examples, so a target's result equals `predictor.predict(target, examples=[(image, {category: mask}), ...])`.
The score threshold slider filters the shown instances in the page; exports apply it on the server.

Caches (each least-recently-used and bounded), so that an edit costs only what it changes:
- images by content (sha1 of the decoded pixels): uploads and --examples / --inputs files;
- example embeddings by (image, mask) (`predictor.encoder.encode`): an edit of one example re-encodes it alone;
- target features by image (`DINOvPredictor.image_features`): new prompts run only the decoder
  (`DINOvPredictor.predict_features`);
- results by (prompts, target).
Counters of the model calls (`stats`: "encoded", "features", "decoded") come back with every reply.

API (JSON unless noted; errors: status 400 and {"error": message}):
- GET  /                      the page; GET /static/<file>: its script and style.
- GET  /api/info              {"model", "random_init", "max_examples", "max_targets", "input_size", "output",
                              "library": {"examples": [entry], "inputs": [entry]}}; entry {"id", "label"}
- POST /api/image?name=NAME   body: image bytes -> {"id", "name", "height", "width"}
- GET  /api/images/<id>.png   a stored image as PNG (what the page draws)
- POST /api/library           {"kind": "examples" | "inputs", "entry": id} -> as /api/image, plus
                              "category" and "mask_png" for an --examples entry that has a mask
- POST /api/segment           {"examples": [{"image": id, "category": str, "mask_png": base64 PNG}],
                              "targets": [id]} -> {"categories": [str], "examples": [{"category", "status":
                              "ok" | "empty" | "too small", "area", "cached"}], "targets": [{"id", "instances":
                              [{"category", "label", "score", "box": [x0, y0, x1, y1], "area", "mask_png"}],
                              "features_cached", "decode_ms"}], "warnings": [str], "encode_ms", "stats"}
- POST /api/export            the segment request + {"score_threshold": float, "format": "coco" | "png"} ->
                              a COCO instances JSON (images, categories, annotations with RLE masks and
                              scores) or a zip of one PNG mask per instance + masks.json
- POST /api/save              the export request without "format" -> {"path"}: the COCO JSON, the PNG masks
                              and an overlay per target written into a new folder under --output

Model calls are serialized (one lock). The server binds 127.0.0.1 only: it is a local tool, not a service.
"""
import collections
import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import re
import threading
import time
import urllib.parse
import zipfile

import numpy as np

from dinoseg.demo.common import (DemoHandler, bind_server, decode_image, decode_mask_png, encode_image_png,
                                 encode_mask_png)

logger = logging.getLogger(__name__)

STATIC = pathlib.Path(__file__).resolve().parent / "static"
MAX_EXAMPLES = 4
MAX_TARGETS = 4
MAX_CATEGORY_CHARS = 100


@dataclasses.dataclass
class StoredImage:
  """An image the page can use: id (content hash), name (file name), pixels (H, W, 3) uint8."""
  id: str
  name: str
  pixels: np.ndarray


class _LRU:
  """A bounded mapping that forgets the least recently used entry first."""

  def __init__(self, capacity: int):
    self.capacity = int(capacity)
    self.items: collections.OrderedDict = collections.OrderedDict()

  def get(self, key, default=None):
    if key not in self.items:
      return default
    self.items.move_to_end(key)
    return self.items[key]

  def __contains__(self, key) -> bool:
    return key in self.items

  def put(self, key, value) -> None:
    self.items[key] = value
    self.items.move_to_end(key)
    while len(self.items) > self.capacity:
      self.items.popitem(last=False)


def _digest(*parts: bytes) -> str:
  h = hashlib.sha1()
  for p in parts:
    h.update(p)
  return h.hexdigest()[:20]


def image_id(pixels: np.ndarray) -> str:
  """The content id of an (H, W, 3) uint8 image."""
  return _digest(str(pixels.shape).encode(), np.ascontiguousarray(pixels).tobytes())


def mask_digest(mask: np.ndarray) -> str:
  """The content id of an (H, W) bool mask."""
  return _digest(str(mask.shape).encode(), np.packbits(mask.astype(bool)).tobytes())


# ----------------------------------------------------------------------------- --examples / --inputs folders

def scan_library(directory: str | os.PathLike | None, kind: str) -> list[dict]:
  """The entries a folder offers the page: for "inputs" every image; for "examples" every image, once per
  mask PNG named `<image file name>__<category>[__<n>].png` beside it (the layout of `dinoseg predict
  --examples`) or once without a mask. Entry: {"id", "label", "image", "mask" (file name or None),
  "category" (or None)}.

  Raises:
    UserError: the folder does not exist or holds no image.
  """
  from dinoseg.errors import UserFileNotFoundError, UserValueError  # noqa: PLC0415
  from dinoseg.models.dinov.bank import MASK_SEPARATOR  # noqa: PLC0415
  from dinoseg.predict import IMAGE_SUFFIXES  # noqa: PLC0415
  if directory is None:
    return []
  path = pathlib.Path(directory)
  if not path.is_dir():
    raise UserFileNotFoundError(f"--{kind}: no such directory: {path}")
  files = sorted(p.name for p in path.iterdir() if p.is_file())
  images = [n for n in files if pathlib.Path(n).suffix.lower() in IMAGE_SUFFIXES and MASK_SEPARATOR not in n]
  if not images:
    raise UserValueError(f"--{kind}={path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
  entries = []
  for name in images:
    masks = [n for n in files if kind == "examples" and n.startswith(name + MASK_SEPARATOR)
             and n.lower().endswith(".png")]
    for mask in masks:
      category = mask[len(name) + len(MASK_SEPARATOR):-len(".png")].split(MASK_SEPARATOR)[0]
      entries.append({"id": f"{name}{MASK_SEPARATOR}{mask}", "label": f"{name} ({category})", "image": name,
                      "mask": mask, "category": category})
    if not masks:
      entries.append({"id": name, "label": name, "image": name, "mask": None, "category": None})
  return entries


# ----------------------------------------------------------------------------- the application

class DINOvDemoApp:
  """The state behind the handler: the predictor, the caches (module docstring) and a lock around model calls.

  Args:
    predictor: a `DINOvPredictor` (may be set after binding, before serving); model_name: shown in the page.
    random_init: the weights are random (the page says so).
    examples_dir / inputs_dir: folders offered in the page (`scan_library`); output_dir: where /api/save writes.
  """

  def __init__(self, predictor, model_name: str = "dinov", random_init: bool = False, *,
               examples_dir: str | os.PathLike | None = None, inputs_dir: str | os.PathLike | None = None,
               output_dir: str | os.PathLike | None = None):
    self.predictor = predictor
    self.model_name = model_name
    self.random_init = random_init
    self.dirs = {"examples": pathlib.Path(examples_dir) if examples_dir else None,
                 "inputs": pathlib.Path(inputs_dir) if inputs_dir else None}
    self.library = {kind: scan_library(d, kind) for kind, d in self.dirs.items()}
    self.output_dir = pathlib.Path(output_dir) if output_dir else None
    self.lock = threading.Lock()
    self.images = _LRU(64)
    self.embeddings = _LRU(256)   # (image id, mask digest) -> (d,) float32, or None: empty at the model's size
    self.features = _LRU(MAX_TARGETS + 2)  # image id -> ImageFeatures
    self.results = _LRU(MAX_TARGETS)       # (prompts digest, image id) -> Segmentation (the latest ones)
    self.stats = {"encoded": 0, "features": 0, "decoded": 0}

  # -- images
  def info(self) -> dict:
    test = self.predictor.config.test
    return {"model": self.model_name, "random_init": self.random_init, "max_examples": MAX_EXAMPLES,
            "max_targets": MAX_TARGETS, "input_size": [int(test.min_size), int(test.max_size)],
            "output": str(self.output_dir) if self.output_dir else None,
            "library": {k: [{"id": e["id"], "label": e["label"]} for e in v] for k, v in self.library.items()}}

  def _store(self, pixels: np.ndarray, name: str) -> dict:
    stored = StoredImage(image_id(pixels), name, pixels)
    with self.lock:
      self.images.put(stored.id, stored)
    return {"id": stored.id, "name": name, "height": int(pixels.shape[0]), "width": int(pixels.shape[1])}

  def add_image(self, data: bytes, name: str = "image") -> dict:
    """Stores uploaded image bytes (ValueError: not an image)."""
    try:
      pixels = decode_image(data)
    except ValueError as e:
      raise ValueError(f"{name}: {e}") from None
    if 0 in pixels.shape:
      raise ValueError(f"{name}: the image is empty")
    return self._store(pixels, name)

  def image_png(self, image: str) -> bytes:
    with self.lock:
      stored = self.images.get(image)
    if stored is None:
      raise KeyError(f"unknown image {image!r} (upload it again)")
    return encode_image_png(stored.pixels)

  def open_library(self, payload: dict) -> dict:
    """Loads an entry of --examples / --inputs (`scan_library`)."""
    from dinoseg.predict import read_image  # noqa: PLC0415
    kind = payload.get("kind")
    if kind not in self.library:
      raise ValueError(f"kind must be 'examples' or 'inputs', got {kind!r}")
    entry = next((e for e in self.library[kind] if e["id"] == payload.get("entry")), None)
    if entry is None:
      raise ValueError(f"no entry {payload.get('entry')!r} in --{kind}")
    folder = self.dirs[kind]
    pixels = read_image(folder / entry["image"])  # UnreadableImageError (a ValueError): a corrupt file
    reply = self._store(pixels, entry["image"])
    if entry["mask"]:
      from PIL import Image  # noqa: PLC0415
      try:
        with Image.open(folder / entry["mask"]) as im:
          mask = np.asarray(im)
      except Exception as e:  # PIL raises several types for corrupt files
        raise ValueError(f"{entry['mask']}: not a readable mask PNG ({type(e).__name__}: {e})") from None
      mask = (mask.max(-1) if mask.ndim == 3 else mask) > 0
      if mask.shape != pixels.shape[:2]:
        raise ValueError(f"{entry['mask']}: mask size {mask.shape[1]} x {mask.shape[0]} differs from its image's "
                         f"{pixels.shape[1]} x {pixels.shape[0]}")
      reply.update(category=entry["category"], mask_png=encode_mask_png(mask))
    return reply

  # -- segmentation
  def _parse(self, payload: dict) -> tuple[list[tuple[StoredImage, str, np.ndarray]], list[StoredImage]]:
    examples, targets = payload.get("examples", []), payload.get("targets", [])
    if not isinstance(examples, list) or not isinstance(targets, list):
      raise ValueError("examples and targets must be lists")
    if len(examples) > MAX_EXAMPLES:
      raise ValueError(f"at most {MAX_EXAMPLES} examples, got {len(examples)}")
    if len(targets) > MAX_TARGETS:
      raise ValueError(f"at most {MAX_TARGETS} targets, got {len(targets)}")
    parsed = []
    for i, ex in enumerate(examples):
      if not isinstance(ex, dict):
        raise ValueError(f"example {i + 1} must be an object {{image, category, mask_png}}")
      stored = self.images.get(ex.get("image"))
      if stored is None:
        raise ValueError(f"example {i + 1}: unknown image (upload it again)")
      category = " ".join(str(ex.get("category") or "").split())
      if not category or len(category) > MAX_CATEGORY_CHARS:
        raise ValueError(f"example {i + 1}: give a category name of 1 to {MAX_CATEGORY_CHARS} characters")
      try:
        mask = decode_mask_png(ex.get("mask_png") or "")
      except ValueError as e:
        raise ValueError(f"example {i + 1}: {e}") from None
      if mask.shape != stored.pixels.shape[:2]:
        raise ValueError(f"example {i + 1}: the mask is {mask.shape[1]} x {mask.shape[0]}, its image "
                         f"{stored.pixels.shape[1]} x {stored.pixels.shape[0]}")
      parsed.append((stored, category, mask))
    found = []
    for i, t in enumerate(targets):
      stored = self.images.get(t)
      if stored is None:
        raise ValueError(f"target {i + 1}: unknown image (upload it again)")
      found.append(stored)
    return parsed, found

  def _class_prompts(self, examples) -> tuple[list[str], np.ndarray | None, list[dict], list[str]]:
    """(names (K,), prompts (K, d) or None, per-example report, warnings): each category the mean of its
    examples' embeddings (float64 sums, as `DINOvPredictor.set_examples`)."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    report, warnings = [], []
    for i, (stored, category, mask) in enumerate(examples):
      area = int(mask.sum())
      entry = {"category": category, "area": area, "cached": False, "status": "ok"}
      report.append(entry)
      if not area:
        entry["status"] = "empty"
        warnings.append(f"example {i + 1} ({category}): the mask is empty; paint over the object with the brush")
        continue
      key = (stored.id, mask_digest(mask))
      entry["cached"] = key in self.embeddings
      if entry["cached"]:
        embedding = self.embeddings.get(key)
      else:
        emb, kept = self.predictor.encoder.encode(stored.pixels, mask[None])
        embedding = emb[0] if kept[0] else None
        self.embeddings.put(key, embedding)
        self.stats["encoded"] += 1
      if embedding is None:
        entry["status"] = "too small"
        warnings.append(f"example {i + 1} ({category}): the mask vanishes at the model's input size; paint a "
                        "larger area")
        continue
      sums[category] = sums.get(category, 0.0) + embedding.astype(np.float64)
      counts[category] = counts.get(category, 0) + 1
    names = list(sums)
    prompts = np.stack([sums[n] / counts[n] for n in names]).astype(np.float32) if names else None
    return names, prompts, report, warnings

  def _segment(self, payload: dict) -> tuple[dict, list[str], list[StoredImage], list]:
    """Runs the model as needed: (reply without masks, categories, targets, Segmentation per target or None)."""
    examples, targets = self._parse(payload)
    start = time.perf_counter()
    names, prompts, report, warnings = self._class_prompts(examples)
    encode_ms = 1000 * (time.perf_counter() - start)
    if not examples:
      warnings.append("add an example image and paint the object on it")
    elif prompts is None:
      warnings.append("no example has a usable mask: paint over the object in at least one example")
    if prompts is not None:
      self.predictor.set_prompts(names, prompts)
      prompt_key = _digest(json.dumps(names).encode(), prompts.tobytes())
    results, replies = [], []
    for stored in targets:
      reply = {"id": stored.id, "instances": [], "features_cached": stored.id in self.features, "decode_ms": None}
      replies.append(reply)
      if prompts is None:
        results.append(None)
        continue
      features = self.features.get(stored.id)
      if features is None:
        features = self.predictor.image_features(stored.pixels)
        self.features.put(stored.id, features)
        self.stats["features"] += 1
      result = self.results.get((prompt_key, stored.id))
      if result is None:
        t0 = time.perf_counter()
        result = self.predictor.predict_features(features, panoptic=False)
        reply["decode_ms"] = round(1000 * (time.perf_counter() - t0), 2)
        self.results.put((prompt_key, stored.id), result)
        self.stats["decoded"] += 1
      results.append(result)
    out = {"categories": names, "examples": report, "targets": replies, "warnings": warnings,
           "encode_ms": round(encode_ms, 2), "stats": dict(self.stats)}
    return out, names, targets, results

  def segment(self, payload: dict) -> dict:
    """/api/segment (module docstring)."""
    with self.lock:
      out, _, _, results = self._segment(payload)
    for reply, result in zip(out["targets"], results):
      if result is None:
        continue
      reply["instances"] = [
          {"category": result.names[i], "label": int(result.labels[i]), "score": float(result.scores[i]),
           "box": [round(float(v), 2) for v in result.boxes[i]], "area": int(result.masks[i].sum()),
           "mask_png": encode_mask_png(result.masks[i])} for i in range(len(result))]
    return out

  def segmentations(self, payload: dict) -> tuple[list[str], list[StoredImage], list]:
    """(categories, targets, their Segmentations with score >= payload["score_threshold"] (default 0.5),
    None where no example is usable) for the exports."""
    threshold = float(payload.get("score_threshold", 0.5))
    with self.lock:
      _, names, targets, results = self._segment(payload)
    if not names:
      raise ValueError("nothing to export: no example has a usable mask")
    return names, targets, [r.select(r.scores >= threshold) for r in results]

  def coco_json(self, names, targets, results) -> dict:
    """A COCO instances file of the results: images (the targets), categories (ids 1..K), annotations with
    RLE masks, xywh boxes and scores."""
    from dinoseg.evaluation.coco import instances_to_coco_json  # noqa: PLC0415
    images, annotations = [], []
    for i, (stored, result) in enumerate(zip(targets, results)):
      images.append({"id": i + 1, "file_name": stored.name, "height": int(stored.pixels.shape[0]),
                     "width": int(stored.pixels.shape[1])})
      entries = instances_to_coco_json(i + 1, result.scores, result.labels, boxes_xyxy=result.boxes,
                                       masks=result.masks, category_ids=range(1, len(names) + 1))
      for entry, mask in zip(entries, result.masks):
        annotations.append({"id": len(annotations) + 1, **entry, "area": int(mask.sum()), "iscrowd": 0})
    return {"info": {"description": f"dinoseg demo dinov ({self.model_name})"}, "images": images,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)], "annotations": annotations}

  def _mask_files(self, names, targets, results) -> tuple[dict[str, bytes], list[dict]]:
    """{file name: PNG bytes} of every instance mask and their index ({"file", "target", "category", "score",
    "box"})."""
    files, index = {}, []
    for i, (stored, result) in enumerate(zip(targets, results)):
      stem = f"{i + 1:02d}_{_safe(stored.name)}"
      for j in range(len(result)):
        name = f"{stem}_{j + 1:03d}_{_safe(result.names[j])}.png"
        files[name] = _png_bytes(result.masks[j])
        index.append({"file": name, "target": stored.name, "category": result.names[j],
                      "score": float(result.scores[j]), "box": [float(v) for v in result.boxes[j]]})
    return files, index

  def export(self, payload: dict) -> tuple[bytes, str, str]:
    """/api/export -> (body, content type, file name)."""
    kind = payload.get("format", "coco")
    if kind not in ("coco", "png"):
      raise ValueError(f"format must be 'coco' or 'png', got {kind!r}")
    names, targets, results = self.segmentations(payload)
    if kind == "coco":
      return json.dumps(self.coco_json(names, targets, results)).encode(), "application/json", "dinov_results.json"
    files, index = self._mask_files(names, targets, results)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
      for name, data in files.items():
        z.writestr(name, data)
      z.writestr("masks.json", json.dumps(index, indent=1))
    return buf.getvalue(), "application/zip", "dinov_masks.zip"

  def save(self, payload: dict) -> dict:
    """/api/save: COCO JSON, PNG masks and overlays into a new folder `<--output>/dinov_demo_<n>`."""
    from dinoseg.predict import draw_instances  # noqa: PLC0415
    if self.output_dir is None:
      raise ValueError("saving on the server needs --output DIR (the downloads work without it)")
    names, targets, results = self.segmentations(payload)
    self.output_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while (self.output_dir / f"dinov_demo_{n}").exists():
      n += 1
    out = self.output_dir / f"dinov_demo_{n}"
    (out / "masks").mkdir(parents=True)
    (out / "results.json").write_text(json.dumps(self.coco_json(names, targets, results)))
    files, index = self._mask_files(names, targets, results)
    for name, data in files.items():
      (out / "masks" / name).write_bytes(data)
    (out / "masks" / "masks.json").write_text(json.dumps(index, indent=1))
    for i, (stored, result) in enumerate(zip(targets, results)):
      draw_instances(stored.pixels, result.masks, result.boxes, result.labels, result.scores, names).save(
          out / f"{i + 1:02d}_{_safe(stored.name)}_overlay.png")
    logger.info("saved %d target(s) to %s", len(targets), out)
    return {"path": str(out)}


def _safe(name: str) -> str:
  """A file-name-safe version of `name` (letters, digits, . _ - kept)."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "x"


def _png_bytes(mask: np.ndarray) -> bytes:
  from PIL import Image  # noqa: PLC0415
  buf = io.BytesIO()
  Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
  return buf.getvalue()


# ----------------------------------------------------------------------------- HTTP

def make_handler(app: DINOvDemoApp):
  class Handler(DemoHandler):
    static_dir = STATIC

    def do_GET(self):  # noqa: N802
      path = urllib.parse.urlsplit(self.path).path
      if path == "/api/info":
        return self.send_json(200, app.info())
      if path.startswith("/api/images/") and path.endswith(".png"):
        try:
          return self.send_body(200, app.image_png(path[len("/api/images/"):-len(".png")]), "image/png")
        except KeyError as e:
          return self.send_json(404, {"error": str(e.args[0])})
      return self.serve_static(path)

    def do_POST(self):  # noqa: N802
      body = self.read_body()
      if body is None:
        return None
      url = urllib.parse.urlsplit(self.path)
      routes = {"/api/library": app.open_library, "/api/segment": app.segment, "/api/save": app.save}
      try:
        if url.path == "/api/image":
          name = urllib.parse.parse_qs(url.query).get("name", ["image"])[0]
          return self.send_json(200, app.add_image(body, name))
        if url.path not in routes and url.path != "/api/export":
          return self.send_json(404, {"error": f"not found: {url.path}"})
        payload = json.loads(body or b"{}")
        if not isinstance(payload, dict):
          raise ValueError("the request body must be a JSON object")
        if url.path == "/api/export":
          data, content_type, filename = app.export(payload)
          return self.send_body(200, data, content_type,
                                {"Content-Disposition": f'attachment; filename="{filename}"'})
        return self.send_json(200, routes[url.path](payload))
      except (ValueError, KeyError, TypeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        return self.send_json(400, {"error": str(message)})

  return Handler


def make_server(predictor, *, port: int = 0, model_name: str = "dinov", random_init: bool = False,
                examples_dir=None, inputs_dir=None, output_dir=None):
  """A ThreadingHTTPServer bound to 127.0.0.1:port (0 = any free port); `.app` (a `DINOvDemoApp`) holds the
  state (its `predictor` may be set after binding, before serving).

  Raises:
    UserError: the port cannot be bound; --examples / --inputs is not a folder of images.
  """
  app = DINOvDemoApp(predictor, model_name, random_init, examples_dir=examples_dir, inputs_dir=inputs_dir,
                     output_dir=output_dir)
  server = bind_server(make_handler(app), port)
  server.app = app
  return server


__all__ = ["DINOvDemoApp", "StoredImage", "make_server", "scan_library", "image_id", "mask_digest", "MAX_EXAMPLES",
           "MAX_TARGETS"]
