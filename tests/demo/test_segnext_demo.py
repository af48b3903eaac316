"""End-to-end test of the SegNext browser demo in headless Chromium (Chrome DevTools protocol).

Opens the page, loads an image through the real file input, clicks on the canvas with real mouse
events, reads back the mask the page paints and compares it with the model's output for the same
prompts. Uses Debian's `chromium` (installed with apt-get when missing and possible, else the
test is skipped with the reason) and `websocket-client` (test extra).
"""
import base64
import contextlib
import json
import math
import os
import pathlib
import shutil
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest

from dinoseg.config import load_config
from dinoseg.demo.segnext.server import make_server
from dinoseg.models.segnext import convert
from dinoseg.models.segnext.clicker import Click
from dinoseg.models.segnext.model import build_segnext
from dinoseg.models.segnext.predictor import CPU_FAST_COMPILE, SegNextPredictor

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--mute-audio",
                  "--window-size=800,600", "--remote-debugging-port=0"]


def _find_or_install_chromium() -> str:
  path = shutil.which("chromium")
  if path:
    return path
  if shutil.which("apt-get") is None or os.geteuid() != 0:
    pytest.skip("chromium is not installed and cannot be installed here (needs apt-get as root)")
  for cmd in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"],
              ["apt-get", "install", "-y", "chromium"]):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if cmd[1] == "install" and done.returncode == 0:
      break
  path = shutil.which("chromium")
  if not path:
    pytest.skip(f"installing Debian's chromium failed: {done.stderr[-300:]}")
  return path


class DevTools:
  """A minimal Chrome DevTools protocol client over one page's websocket."""

  def __init__(self, ws_url: str):
    websocket = pytest.importorskip("websocket", reason="websocket-client (test extra) is needed")
    self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
    self.next_id = 0

  def call(self, method: str, **params):
    self.next_id += 1
    self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
    while True:
      msg = json.loads(self.ws.recv())
      if msg.get("id") == self.next_id:
        if "error" in msg:
          raise RuntimeError(f"{method}: {msg['error']}")
        return msg["result"]

  def evaluate(self, expression: str):
    result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
    if "exceptionDetails" in result:
      raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
    return result["result"].get("value")

  def wait_for(self, expression: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      value = self.evaluate(expression)
      if value:
        return value
      time.sleep(0.05)
    raise TimeoutError(f"page condition never became true: {expression}")

  def mouse(self, kind: str, x: float, y: float, button: str = "left", modifiers: int = 0):
    buttons = {"left": 1, "right": 2}[button] if kind != "mouseReleased" else 0
    self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button=button, buttons=buttons, clickCount=1,
              modifiers=modifiers)

  def close(self):
    self.ws.close()


IMAGE_HW = (72, 104)
FIRST_CLICK = (30, 41)


def _test_image() -> np.ndarray:
  h, w = IMAGE_HW
  rng = np.random.default_rng(0)
  return np.kron(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))


@pytest.fixture(scope="module")
def predictor():
  """The tiny config's model with random reference-layout weights, the output bias set so that about
  half of the test image's first mask is foreground (a non-trivial mask to compare)."""
  config = load_config(str(ROOT / "configs/segnext/vitb_sax2.py:tiny"))
  model = build_segnext(config.model)
  arch = convert.arch_from_model_config(config.model)
  params = convert.segnext_to_flax(convert.random_reference_state_dict(arch, seed=1, scale=0.5))
  probe = SegNextPredictor(model, params, min_points=4, compiler_options=CPU_FAST_COMPILE)
  prob = probe.predict(probe.set_image(_test_image()), clicks=[Click(True, FIRST_CLICK, 0)])
  logits = np.log(prob) - np.log1p(-prob)
  params["head"]["seg_conv"]["bias"] = params["head"]["seg_conv"]["bias"] + np.float32(
      np.log(0.49 / 0.51) - np.median(logits))
  probe.params = params  # params are an argument of the jitted functions: nothing recompiles
  return probe


@pytest.fixture(scope="module")
def browser(tmp_path_factory, predictor):
  server = make_server(predictor, port=0, model_name="segnext_tiny", random_init=True)
  with chromium_page(server, tmp_path_factory.mktemp("chromium_profile"),
                     "document.readyState === 'complete' && !!window.segnextDemo") as devtools:
    yield devtools, server


@contextlib.contextmanager
def chromium_page(server, profile: pathlib.Path, ready: str):
  """Serves `server` in a thread, opens its page in headless Chromium (profile dir `profile`), waits until the
  JavaScript expression `ready` holds and yields the page's DevTools; then closes the browser and the server.
  Skips the test when Chromium does not start."""
  chromium = _find_or_install_chromium()
  threading.Thread(target=server.serve_forever, daemon=True).start()
  url = "http://%s:%d/" % server.server_address[:2]
  proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text().strip():
      if time.monotonic() > deadline or proc.poll() is not None:
        pytest.skip("headless chromium did not start")
      time.sleep(0.05)
    port = int(port_file.read_text().split()[0])
    pages = []
    while not pages and time.monotonic() < deadline:
      targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5).read())
      pages = [t for t in targets if t.get("type") == "page" and t.get("url", "").startswith(url)]
      time.sleep(0.05)
    devtools = DevTools(pages[0]["webSocketDebuggerUrl"])
    devtools.wait_for(ready)
    yield devtools
    devtools.close()
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
    server.shutdown()
    server.server_close()


def _read_mask(devtools, h, w) -> np.ndarray:
  raw = base64.b64decode(devtools.evaluate("window.segnextDemo.readMask()"))
  return np.frombuffer(raw, np.uint8).reshape(h, w).astype(bool)


def _page_point(devtools, y, x, h, w):
  rect = devtools.evaluate("(() => { const r = document.getElementById('prompts').getBoundingClientRect();"
                           " return [r.left, r.top, r.width, r.height]; })()")
  assert rect[2:] == [w, h], "the canvas is shown at its natural size"
  # Mouse events carry integer CSS pixels: the first integer position inside image pixel (y, x).
  return math.ceil(rect[0] + x), math.ceil(rect[1] + y)


def _wait_idle(devtools, requests):
  devtools.wait_for(f"window.segnextDemo.state.requests === {requests} && !window.segnextDemo.state.busy")
  assert devtools.evaluate("window.segnextDemo.state.error") is None


def test_click_mask_matches_model(browser, predictor, tmp_path):
  devtools, _ = browser
  h, w = IMAGE_HW
  image = _test_image()
  from PIL import Image  # noqa: PLC0415
  path = tmp_path / "image.png"
  Image.fromarray(image).save(path)

  # Open the image through the page's file input.
  devtools.call("DOM.enable")
  root = devtools.call("DOM.getDocument")["root"]["nodeId"]
  node = devtools.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
  devtools.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node)
  devtools.wait_for("window.segnextDemo.state.session !== null && !window.segnextDemo.state.busy", timeout=60)
  assert devtools.evaluate("[window.segnextDemo.state.height, window.segnextDemo.state.width]") == [h, w]
  assert devtools.evaluate("!document.getElementById('random-banner').hidden")  # labelled as random weights

  # A left click (positive) with real mouse events.
  y, x = FIRST_CLICK
  px, py = _page_point(devtools, y, x, h, w)
  devtools.mouse("mousePressed", px, py)
  devtools.mouse("mouseReleased", px, py)
  _wait_idle(devtools, 1)
  assert devtools.evaluate("JSON.stringify(window.segnextDemo.state.interactions)") == json.dumps(
      [{"type": "click", "y": y, "x": x, "positive": True}], separators=(",", ":"))
  shown = _read_mask(devtools, h, w)
  state = predictor.set_image(image)
  prob1 = predictor.predict(state, clicks=[Click(True, (y, x), 0)])
  expected = prob1 > 0.49
  assert 0 < expected.sum() < expected.size, "the test model should give a non-trivial mask"
  np.testing.assert_array_equal(shown, expected)
  assert devtools.evaluate("window.segnextDemo.state.lastLatencyMs") > 0
  assert "ms" in devtools.evaluate("document.getElementById('status').textContent")

  # A right click (negative): the previous probability map is fed back.
  y2, x2 = 60, 90
  px, py = _page_point(devtools, y2, x2, h, w)
  devtools.mouse("mousePressed", px, py, button="right")
  devtools.mouse("mouseReleased", px, py, button="right")
  _wait_idle(devtools, 2)
  prob2 = predictor.predict(state, clicks=[Click(True, (y, x), 0), Click(False, (y2, x2), 1)], prev_prob=prob1)
  np.testing.assert_array_equal(_read_mask(devtools, h, w), prob2 > 0.49)

  # A drag draws a box.
  (bx0, by0), (bx1, by1) = _page_point(devtools, 10, 12, h, w), _page_point(devtools, 50, 70, h, w)
  devtools.mouse("mousePressed", bx0, by0)
  devtools.mouse("mouseMoved", (bx0 + bx1) / 2, (by0 + by1) / 2)
  devtools.mouse("mouseMoved", bx1, by1)
  devtools.mouse("mouseReleased", bx1, by1)
  _wait_idle(devtools, 3)
  assert devtools.evaluate("JSON.stringify(window.segnextDemo.state.interactions[2])") == json.dumps(
      {"type": "box", "box": [12, 10, 70, 50]}, separators=(",", ":"))
  clicks = [Click(True, (y, x), 0), Click(False, (y2, x2), 1)]
  prob3 = predictor.predict(state, clicks=clicks, box=(12, 10, 70, 50), prev_prob=prob2)
  np.testing.assert_array_equal(_read_mask(devtools, h, w), prob3 > 0.49)

  # A shift + drag draws a scribble (left button: positive) through the mouse path.
  path = [_page_point(devtools, py_, px_, h, w) for py_, px_ in ((20, 20), (30, 50), (40, 80))]
  devtools.mouse("mousePressed", *path[0], modifiers=8)
  for point in path[1:]:
    devtools.mouse("mouseMoved", *point, modifiers=8)
  devtools.mouse("mouseReleased", *path[-1], modifiers=8)
  _wait_idle(devtools, 4)
  scribble = json.loads(devtools.evaluate("JSON.stringify(window.segnextDemo.state.interactions[3])"))
  assert scribble["type"] == "scribble" and scribble["positive"] is True
  assert scribble["points"][0] == [20, 20] and scribble["points"][-1] == [40, 80]
  prob4 = predictor.predict(state, clicks=clicks, box=(12, 10, 70, 50),
                            scribbles=[([tuple(v) for v in scribble["points"]], True)], prev_prob=prob3)
  np.testing.assert_array_equal(_read_mask(devtools, h, w), prob4 > 0.49)

  # Undo restores the previous mask; reset clears it.
  devtools.evaluate("document.getElementById('undo').click()")
  _wait_idle(devtools, 5)
  np.testing.assert_array_equal(_read_mask(devtools, h, w), prob3 > 0.49)
  devtools.evaluate("document.getElementById('reset').click()")
  _wait_idle(devtools, 6)
  assert not _read_mask(devtools, h, w).any()


def test_server_routes_and_errors():
  """Routing, the 127.0.0.1 binding and bad requests, without a model call."""
  import http.client  # noqa: PLC0415
  import types  # noqa: PLC0415
  stand_in = types.SimpleNamespace(model=types.SimpleNamespace(image_size=224), num_scribbles=2)
  server = make_server(stand_in, port=0, model_name="m", random_init=False)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    host, port = server.server_address[:2]
    assert host == "127.0.0.1"

    def request(method, path, body=None):
      conn = http.client.HTTPConnection(host, port, timeout=10)
      conn.request(method, path, body=body)
      r = conn.getresponse()
      return r.status, r.read()

    status, body = request("GET", "/api/info")
    assert status == 200 and json.loads(body) == {"model": "m", "random_init": False, "image_size": 224}
    assert request("GET", "/")[0] == 200 and request("GET", "/static/app.js")[0] == 200
    assert request("GET", "/static/../server.py")[0] == 404
    status, body = request("POST", "/api/interact", json.dumps({"session": "nope", "clicks": []}))
    assert status == 400 and "open an image" in json.loads(body)["error"]
    status, body = request("POST", "/api/image", b"not an image")
    assert status == 400 and "not a readable image" in json.loads(body)["error"]
  finally:
    server.shutdown()
    server.server_close()


def test_command_needs_weights_or_random_init(capsys):
  from dinoseg import cli  # noqa: PLC0415
  assert cli.main(["demo", "segnext", f"--config={ROOT}/configs/segnext/vitb_sax2.py:tiny"]) == 2
  assert "--weights" in capsys.readouterr().err
  assert cli.main(["demo", "segnext", "--random-init", "--port=70000"]) == 2
