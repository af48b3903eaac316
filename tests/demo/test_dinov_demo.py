"""The DINOv browser demo (`dinoseg demo dinov`) on the tiny config with random weights.

- Server endpoints through HTTP (fast): routes, uploads, the segmentation against `DINOvPredictor.predict` with the
  same examples, the caches (an edit re-encodes one example; targets keep their features), empty masks and bad
  requests, the exports (COCO JSON read back with pycocotools, the PNG zip), --output saving, --examples /
  --inputs folders.
- The command: busy port, bad flags, folders, weights and config are one line with exit status 2.
- End to end in headless Chromium (the SegNext demo's DevTools client): open an example image through the page's
  file input, paint a scribble with real mouse events, add a target, wait for the overlay and compare it with the
  predictor's result for the mask the page sent; rename the category (no re-encoding), clear the mask (a message,
  no crash), upload a non-image (a message).
"""
import base64
import http.client
import io
import json
import math
import pathlib
import socket
import threading
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from demo.test_segnext_demo import chromium_page
from dinoseg import cli
from dinoseg.config import load_config
from dinoseg.demo import common
from dinoseg.demo.dinov import launch
from dinoseg.demo.dinov.server import make_server, scan_library
from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.models.dinov.model import build_model
from dinoseg.models.dinov.predict import DINOvPredictor

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs/dinov/swint_sam_coco.py:tiny")
EXAMPLE_HW, TARGET_HW = (48, 64), (56, 80)


def _scene(hw, boxes, seed) -> np.ndarray:
  """(H, W, 3) uint8: dark noise with red rectangles (y0, y1, x0, x1)."""
  image = np.random.default_rng(seed).integers(0, 70, (*hw, 3)).astype(np.uint8)
  for y0, y1, x0, x1 in boxes:
    image[y0:y1, x0:x1] = (210, 40, 40)
  return image


EXAMPLE = _scene(EXAMPLE_HW, [(12, 36, 16, 44)], 0)
EXAMPLE_2 = _scene(EXAMPLE_HW, [(6, 30, 24, 56)], 1)
TARGET = _scene(TARGET_HW, [(8, 30, 6, 34), (30, 50, 44, 74)], 2)
MASK = np.zeros(EXAMPLE_HW, bool)
MASK[14:34, 18:42] = True


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def _random_variables(model, seed: int = 0) -> dict:
  """Deterministic random variables of the model's shapes (`jax.eval_shape` of its init, which takes seconds
  where compiling the init takes half a minute): fan-in scaled kernels, unit norm scales, small biases."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name, shape = str(getattr(path[-1], "key", path[-1])), tuple(s.shape)
    if name == "scale":
      return (1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    if name in ("bias", "in_proj_bias"):
      return (0.05 * rng.standard_normal(shape)).astype(np.float32)
    if name in ("embedding", "level_embed"):
      return rng.standard_normal(shape).astype(np.float32)
    return (rng.standard_normal(shape) / np.sqrt(max(int(np.prod(shape[:-1])), 1))).astype(np.float32)

  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  return jax.tree_util.tree_map_with_path(leaf, abstract)


@pytest.fixture(scope="module")
def predictor():
  """The tiny config's DINOv with random weights (the demo shows no panoptic map: none is computed)."""
  config = load_config(TINY, ["model.msda_impl=xla", "test.panoptic_on=False"])
  return DINOvPredictor(config, _random_variables(build_model(config.model)))


@pytest.fixture(scope="module")
def served(predictor, tmp_path_factory):
  """(server, request(method, path, body) -> (status, headers, body bytes)) of a demo with --output."""
  server = make_server(predictor, port=0, model_name="dinov tiny", random_init=True,
                       output_dir=tmp_path_factory.mktemp("dinov_demo_out"))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  host, port = server.server_address[:2]

  def request(method, path, body=None):
    conn = http.client.HTTPConnection(host, port, timeout=120)
    if isinstance(body, dict):
      body = json.dumps(body)
    conn.request(method, path, body=body)
    r = conn.getresponse()
    return r.status, dict(r.getheaders()), r.read()
  yield server, request
  server.shutdown()
  server.server_close()


def _upload(request, image, name="x.png") -> str:
  status, _, body = request("POST", f"/api/image?name={name}", _png(image))
  assert status == 200, body
  return json.loads(body)["id"]


def _example(image_id, mask, category="object"):
  return {"image": image_id, "category": category, "mask_png": common.encode_mask_png(mask)}


def _threshold_between(scores) -> float:
  """A threshold halfway between two neighbouring scores near the median (no score sits on it)."""
  s = np.sort(np.unique(scores))
  mid = len(s) // 2
  return float((s[mid - 1] + s[mid]) / 2) if len(s) > 1 else float(s[0] / 2)


def _masks(instances, hw) -> np.ndarray:
  return np.stack([common.decode_mask_png(it["mask_png"]) for it in instances]) if instances else \
      np.zeros((0, *hw), bool)


# ----------------------------------------------------------------------------- server endpoints

def test_routes_uploads_and_bad_requests(served):
  server, request = served
  assert server.server_address[0] == "127.0.0.1"
  status, _, body = request("GET", "/api/info")
  info = json.loads(body)
  assert status == 200 and info["random_init"] is True and info["max_examples"] == 4 and info["max_targets"] == 4
  assert info["input_size"] == [64, 64] and info["library"] == {"examples": [], "inputs": []} and info["output"]
  assert request("GET", "/")[0] == 200 and request("GET", "/static/app.js")[0] == 200
  assert request("GET", "/static/../server.py")[0] == 404
  status, _, body = request("POST", "/api/image?name=notes.txt", b"not an image")
  assert status == 400 and "notes.txt" in json.loads(body)["error"] and "not a readable image" in body.decode()
  image = _upload(request, EXAMPLE, "cat.png")
  assert image == _upload(request, EXAMPLE, "again.png")  # ids are by content
  status, headers, body = request("GET", f"/api/images/{image}.png")
  assert status == 200 and headers["Content-Type"] == "image/png"
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body))), EXAMPLE)
  assert request("GET", "/api/images/0123.png")[0] == 404
  bad = [({"examples": [_example("nope", MASK)], "targets": []}, "unknown image"),
         ({"examples": [_example(image, MASK[:-1])], "targets": []}, "the mask is 64 x 47"),
         ({"examples": [dict(_example(image, MASK), mask_png="@@@")], "targets": []}, "not base64"),
         ({"examples": [_example(image, MASK, category="  ")], "targets": []}, "category name"),
         ({"examples": [_example(image, MASK)] * 5, "targets": []}, "at most 4 examples"),
         ({"examples": [], "targets": [image] * 5}, "at most 4 targets"),
         ({"examples": [], "targets": ["nope"]}, "target 1: unknown image")]
  for payload, message in bad:
    status, _, body = request("POST", "/api/segment", payload)
    assert status == 400 and message in json.loads(body)["error"], (message, body)
  assert request("POST", "/api/segment", b"[1, 2]")[0] == 400
  assert request("POST", "/api/nothing", {})[0] == 404


def test_segment_equals_predictor_and_caches(served, predictor):
  server, request = served
  example, example_2, target = (_upload(request, im) for im in (EXAMPLE, EXAMPLE_2, TARGET))
  stats = dict(server.app.stats)
  status, _, body = request("POST", "/api/segment", {"examples": [_example(example, MASK)], "targets": [target]})
  reply = json.loads(body)
  assert status == 200 and reply["categories"] == ["object"] and reply["warnings"] == []
  assert reply["examples"] == [{"category": "object", "area": int(MASK.sum()), "cached": False, "status": "ok"}]
  instances = reply["targets"][0]["instances"]
  direct = predictor.predict(TARGET, examples=[(EXAMPLE, {"object": MASK})])
  assert len(direct) > 0, "the random model should find instances"
  assert [it["category"] for it in instances] == list(direct.names)
  np.testing.assert_allclose([it["score"] for it in instances], direct.scores, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose([it["box"] for it in instances], direct.boxes, atol=0.01)
  np.testing.assert_array_equal(_masks(instances, TARGET_HW), direct.masks)
  assert reply["stats"] == {"encoded": stats["encoded"] + 1, "features": stats["features"] + 1,
                            "decoded": stats["decoded"] + 1}

  # the same request again: everything cached, no model call
  reply2 = json.loads(request("POST", "/api/segment", {"examples": [_example(example, MASK)],
                                                       "targets": [target]})[2])
  assert reply2["stats"] == reply["stats"] and reply2["examples"][0]["cached"]
  assert reply2["targets"][0]["features_cached"] and reply2["targets"][0]["instances"] == instances

  # a second example of the same category: only it is encoded; the target's features are kept; averaged
  edited = MASK.copy()
  edited[14:20, 18:42] = False
  payload = {"examples": [_example(example, MASK), _example(example_2, edited)], "targets": [target]}
  reply3 = json.loads(request("POST", "/api/segment", payload)[2])
  assert reply3["stats"] == {"encoded": reply["stats"]["encoded"] + 1, "features": reply["stats"]["features"],
                             "decoded": reply["stats"]["decoded"] + 1}
  assert [e["cached"] for e in reply3["examples"]] == [True, False] and reply3["categories"] == ["object"]
  both = predictor.predict(TARGET, examples=[(EXAMPLE, {"object": MASK}), (EXAMPLE_2, {"object": edited})])
  np.testing.assert_allclose([it["score"] for it in reply3["targets"][0]["instances"]], both.scores, rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_array_equal(_masks(reply3["targets"][0]["instances"], TARGET_HW), both.masks)

  # two categories
  payload["examples"][1]["category"] = "other"
  reply4 = json.loads(request("POST", "/api/segment", payload)[2])
  assert reply4["categories"] == ["object", "other"] and reply4["stats"]["encoded"] == reply3["stats"]["encoded"]
  assert {it["category"] for it in reply4["targets"][0]["instances"]} <= {"object", "other"}


def test_empty_masks_are_messages_not_errors(served):
  _, request = served
  example, target = _upload(request, EXAMPLE), _upload(request, TARGET)
  empty = np.zeros(EXAMPLE_HW, bool)
  status, _, body = request("POST", "/api/segment", {"examples": [_example(example, empty)], "targets": [target]})
  reply = json.loads(body)
  assert status == 200 and reply["examples"][0]["status"] == "empty" and reply["categories"] == []
  assert reply["targets"][0]["instances"] == [] and any("the mask is empty" in w for w in reply["warnings"])
  assert any("no example has a usable mask" in w for w in reply["warnings"])
  # one empty example beside a good one: a warning, the good one still segments
  reply = json.loads(request("POST", "/api/segment", {"examples": [_example(example, empty),
                                                                   _example(example, MASK)], "targets": [target]})[2])
  assert [e["status"] for e in reply["examples"]] == ["empty", "ok"] and reply["targets"][0]["instances"]
  reply = json.loads(request("POST", "/api/segment", {"examples": [], "targets": [target]})[2])
  assert reply["warnings"] == ["add an example image and paint the object on it"]
  status, _, body = request("POST", "/api/export", {"examples": [_example(example, empty)], "targets": [target],
                                                    "format": "coco"})
  assert status == 400 and "nothing to export" in json.loads(body)["error"]


def test_exports_and_save(served, predictor):
  server, request = served
  from pycocotools.coco import COCO
  example, target = _upload(request, EXAMPLE), _upload(request, TARGET, "street.png")
  direct = predictor.predict(TARGET, examples=[(EXAMPLE, {"object": MASK})])
  threshold = _threshold_between(direct.scores)
  kept = direct.select(direct.scores >= threshold)
  payload = {"examples": [_example(example, MASK)], "targets": [target], "score_threshold": threshold}
  status, headers, body = request("POST", "/api/export", dict(payload, format="coco"))
  assert status == 200 and headers["Content-Type"] == "application/json"
  coco = COCO()
  coco.dataset = json.loads(body)
  coco.createIndex()
  assert coco.dataset["images"] == [{"id": 1, "file_name": "street.png", "height": 56, "width": 80}]
  assert coco.dataset["categories"] == [{"id": 1, "name": "object"}]
  anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
  assert len(anns) == len(kept) > 0
  np.testing.assert_array_equal(np.stack([coco.annToMask(a) for a in anns]).astype(bool), kept.masks)
  np.testing.assert_allclose([a["score"] for a in anns], kept.scores, rtol=1e-4)
  assert [a["area"] for a in anns] == [int(m.sum()) for m in kept.masks]

  status, headers, body = request("POST", "/api/export", dict(payload, format="png"))
  assert status == 200 and headers["Content-Type"] == "application/zip"
  with zipfile.ZipFile(io.BytesIO(body)) as z:
    index = json.loads(z.read("masks.json"))
    assert [e["category"] for e in index] == list(kept.names) and len(z.namelist()) == len(kept) + 1
    masks = np.stack([np.asarray(Image.open(io.BytesIO(z.read(e["file"])))) > 127 for e in index])
  np.testing.assert_array_equal(masks, kept.masks)
  assert request("POST", "/api/export", dict(payload, format="tiff"))[0] == 400

  status, _, body = request("POST", "/api/save", payload)
  out = pathlib.Path(json.loads(body)["path"])
  assert status == 200 and out.parent == server.app.output_dir and out.name == "dinov_demo_1"
  assert len(json.loads((out / "results.json").read_text())["annotations"]) == len(kept)
  assert (out / "01_street.png_overlay.png").is_file() and len(list((out / "masks").glob("*.png"))) == len(kept)
  assert pathlib.Path(json.loads(request("POST", "/api/save", payload)[2])["path"]).name == "dinov_demo_2"


def test_library_folders(tmp_path, predictor):
  examples, inputs = tmp_path / "examples", tmp_path / "inputs"
  examples.mkdir()
  inputs.mkdir()
  Image.fromarray(EXAMPLE).save(examples / "a.png")
  Image.fromarray(MASK.astype(np.uint8) * 255).save(examples / "a.png__cat.png")
  Image.fromarray(EXAMPLE_2).save(examples / "b.jpg")
  Image.fromarray(TARGET).save(inputs / "t.png")
  (inputs / "broken.png").write_bytes(b"not a png")
  entries = scan_library(examples, "examples")
  assert [(e["label"], e["category"]) for e in entries] == [("a.png (cat)", "cat"), ("b.jpg", None)]
  server = make_server(predictor, port=0, examples_dir=examples, inputs_dir=inputs)
  app = server.app
  try:
    info = app.info()["library"]
    assert [e["label"] for e in info["inputs"]] == ["broken.png", "t.png"]
    opened = app.open_library({"kind": "examples", "entry": entries[0]["id"]})
    assert opened["category"] == "cat" and (opened["height"], opened["width"]) == EXAMPLE_HW
    np.testing.assert_array_equal(common.decode_mask_png(opened["mask_png"]), MASK)
    assert "mask_png" not in app.open_library({"kind": "examples", "entry": "b.jpg"})
    assert app.open_library({"kind": "inputs", "entry": "t.png"})["width"] == 80
    with pytest.raises(ValueError, match="not a readable image"):
      app.open_library({"kind": "inputs", "entry": "broken.png"})
    with pytest.raises(ValueError, match="no entry"):
      app.open_library({"kind": "inputs", "entry": "../examples/a.png"})
  finally:
    server.server_close()
  with pytest.raises(UserFileNotFoundError, match="no such directory"):
    scan_library(tmp_path / "missing", "inputs")
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserValueError, match="holds no images"):
    scan_library(tmp_path / "empty", "examples")


# ----------------------------------------------------------------------------- the command

def _never(*args, **kwargs):
  raise AssertionError("the model must not be loaded")


def test_command_bad_input_is_one_line(monkeypatch, capsys, tmp_path):
  assert cli.main(["demo", "dinov", "--random-init", "--port=70000"]) == 2
  assert "--port must be in [0, 65535]" in capsys.readouterr().err
  assert cli.main(["demo", "dinov", "--random-init", f"--weights={tmp_path}"]) == 2
  assert "exactly one of --weights and --random-init" in capsys.readouterr().err
  assert cli.main(["demo", "dinov", f"--weights={tmp_path / 'missing.pth'}"]) == 2
  assert "no such file or directory" in capsys.readouterr().err
  monkeypatch.setattr(launch, "build_predictor", _never)
  assert cli.main(["demo", "dinov", "--random-init", "--port=0", f"--examples={tmp_path / 'nope'}"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "--examples: no such directory" in err
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    assert cli.main(["demo", "dinov", "--random-init", f"--port={port}"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and f"port {port} on 127.0.0.1 is already in use" in err


def test_command_bad_weights_and_config(capsys, tmp_path):
  corrupt = tmp_path / "dinov.pth"
  corrupt.write_bytes(b"this is not a checkpoint")
  assert cli.main(["demo", "dinov", f"--config={TINY}", f"--weights={corrupt}", "--port=0"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert "dinov.pth" in err[-1] and "Traceback" not in "\n".join(err)
  segnext = str(ROOT / "configs/segnext/vitb_sax2.py:tiny")
  assert cli.main(["demo", "dinov", f"--config={segnext}", "--random-init", "--port=0"]) == 2
  assert "the DINOv demo needs a DINOv config" in capsys.readouterr().err


# ----------------------------------------------------------------------------- end to end in Chromium

@pytest.fixture(scope="module")
def browser(tmp_path_factory, predictor):
  server = make_server(predictor, port=0, model_name="dinov tiny", random_init=True)
  with chromium_page(server, tmp_path_factory.mktemp("chromium_profile_dinov"),
                     "document.readyState === 'complete' && !!window.dinovDemo && window.dinovDemo.state.ready"
                     ) as devtools:
    yield devtools, server


def _set_files(devtools, selector, paths):
  devtools.call("DOM.enable")
  root = devtools.call("DOM.getDocument")["root"]["nodeId"]
  node = devtools.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
  devtools.call("DOM.setFileInputFiles", files=[str(p) for p in paths], nodeId=node)


def _bytes(devtools, expression, hw) -> np.ndarray:
  return np.frombuffer(base64.b64decode(devtools.evaluate(expression)), np.uint8).reshape(hw).astype(bool)


def _wait_idle(devtools, completed: int):
  devtools.wait_for(f"(s => s.completed >= {completed} && !s.busy && !s.pending && !s.scheduled)"
                    "(window.dinovDemo.state)", timeout=60)


def test_paint_an_example_and_segment_a_target_in_chromium(browser, predictor, tmp_path):
  devtools, server = browser
  Image.fromarray(EXAMPLE).save(tmp_path / "example.png")
  Image.fromarray(TARGET).save(tmp_path / "target.png")
  (tmp_path / "notes.txt").write_text("not an image")
  assert devtools.evaluate("!document.getElementById('random-banner').hidden")  # labelled as untrained
  assert devtools.evaluate("window.dinovDemo.state.examples.length") == 1  # one empty slot to start

  _set_files(devtools, "#examples .example input.file", [tmp_path / "example.png"])
  devtools.wait_for("window.dinovDemo.state.examples[0].image !== null")
  h, w = EXAMPLE_HW
  rect = devtools.evaluate("(() => { const r = document.querySelector('#examples canvas.mask')"
                           ".getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()")
  assert rect[2:] == [w, h], "the example is shown at its natural size"
  # a scribble over the red rectangle with real mouse events (brush 12 px)
  path = [(16, 20), (24, 30), (30, 40), (22, 36)]  # (y, x) image pixels
  points = [(math.floor(rect[0] + x) + 0.5, math.floor(rect[1] + y) + 0.5) for y, x in path]
  devtools.mouse("mousePressed", *points[0])
  for p in points[1:]:
    devtools.mouse("mouseMoved", *p)
  devtools.mouse("mouseReleased", *points[-1])
  _set_files(devtools, "#target-file", [tmp_path / "target.png"])
  devtools.wait_for("window.dinovDemo.state.targets.length === 1")
  _wait_idle(devtools, 1)
  assert devtools.evaluate("window.dinovDemo.state.error") is None

  mask = _bytes(devtools, "window.dinovDemo.exampleMask(0)", EXAMPLE_HW)
  assert all(mask[y, x] for y, x in path) and 50 < mask.sum() < mask.size / 2
  direct = predictor.predict(TARGET, examples=[(EXAMPLE, {"object": mask})])
  threshold = float(np.median(direct.scores))
  devtools.evaluate(f"(() => {{ const s = document.getElementById('threshold'); s.value = '{threshold}'; "
                    "s.dispatchEvent(new Event('input')); })()")
  shown = json.loads(devtools.evaluate("JSON.stringify(window.dinovDemo.shownInstances(0))"))
  expected = direct.select(direct.scores >= devtools.evaluate("window.dinovDemo.state.threshold"))
  assert len(expected) > 0 and sorted(it["score"] for it in shown) == pytest.approx(sorted(expected.scores),
                                                                                     rel=1e-4)
  overlay = _bytes(devtools, "window.dinovDemo.readTargetMask(0)", TARGET_HW)
  assert overlay.any()
  np.testing.assert_array_equal(overlay, expected.masks.any(0))
  stats = devtools.evaluate("window.dinovDemo.state.last.stats")

  # renaming the category: the decoder runs again, nothing is re-encoded
  completed = devtools.evaluate("window.dinovDemo.state.completed")
  devtools.evaluate("(() => { const c = document.querySelector('#examples .category'); c.value = 'red box'; "
                    "c.dispatchEvent(new Event('input')); })()")
  _wait_idle(devtools, completed + 1)
  last = devtools.evaluate("window.dinovDemo.state.last")
  assert last["categories"] == ["red box"] and last["stats"]["encoded"] == stats["encoded"]
  assert last["stats"]["features"] == stats["features"] and last["stats"]["decoded"] == stats["decoded"] + 1
  assert "red box" in devtools.evaluate("document.querySelector('#targets .instances').textContent")

  # clearing the mask: a message beside the example and on the page, the overlay empties, no error
  completed = devtools.evaluate("window.dinovDemo.state.completed")
  devtools.evaluate("document.querySelector('#examples .clear').click()")
  _wait_idle(devtools, completed + 1)
  assert "empty" in devtools.evaluate("document.querySelector('#examples .note').textContent")
  assert "the mask is empty" in devtools.evaluate("document.getElementById('messages').textContent")
  assert devtools.evaluate("window.dinovDemo.state.error") is None
  assert not _bytes(devtools, "window.dinovDemo.readTargetMask(0)", TARGET_HW).any()

  # a file that is not an image: a message, nothing added
  _set_files(devtools, "#target-file", [tmp_path / "notes.txt"])
  devtools.wait_for("window.dinovDemo.state.error !== null")
  assert "not a readable image" in devtools.evaluate("document.getElementById('messages').textContent")
  assert devtools.evaluate("window.dinovDemo.state.targets.length") == 1
