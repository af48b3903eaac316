"""The SegNext demo server: `http.server` on 127.0.0.1 serving a static page and a small JSON API.

The page (static/index.html + app.js) lets the user open an image and interact: left click =
positive click, right click = negative click, drag = box, shift + drag = scribble (left button
positive, right button negative), Undo, Reset. After each interaction it posts every prompt so
far; the server runs one `SegNextPredictor.predict` (the jitted per-click path) with the previous
probability map, pushes the result on a per-session stack and returns the binary mask (threshold
0.49, the evaluation protocol's) as a PNG with the model latency. Undo pops the stack.

API (JSON unless noted):
- GET  /                      the page; GET /static/<file>: its script and style.
- GET  /api/info              {"model": str, "random_init": bool, "image_size": int}
- POST /api/image             body: PNG/JPEG bytes -> {"session": id, "height", "width", "embed_ms"}
- POST /api/interact          {"session", "clicks": [[y, x, positive]], "box": [x0, y0, x1, y1] | null,
                              "scribbles": [{"points": [[y, x], ...], "positive": bool}]}
                              -> {"mask_png": base64, "latency_ms", "area", "history"}
- POST /api/undo, /api/reset  {"session"} -> the same as interact (mask of the new top; empty if none)

Only one image session is kept per server (the last opened image); model calls are serialized.
The server binds 127.0.0.1 only: it is a local tool, not a service.
"""
import json
import pathlib
import threading
import time
import uuid

import numpy as np

from dinoseg.demo.common import DemoHandler, bind_server, decode_image, encode_mask_png

STATIC = pathlib.Path(__file__).resolve().parent / "static"


class DemoSession:
  """One image: its embedding and the stack of probability maps (one per interaction)."""

  def __init__(self, predictor, image: np.ndarray):
    self.id = uuid.uuid4().hex
    self.predictor = predictor
    self.image_hw = image.shape[:2]
    start = time.perf_counter()
    self.state = predictor.set_image(image)
    self.state.features.block_until_ready()
    self.embed_ms = 1000 * (time.perf_counter() - start)
    self.history: list[np.ndarray] = []

  def interact(self, clicks, box, scribbles) -> tuple[np.ndarray, float]:
    from dinoseg.models.segnext.clicker import Click  # noqa: PLC0415
    h, w = self.image_hw
    parsed = []
    for i, c in enumerate(clicks):
      y, x, positive = int(c[0]), int(c[1]), bool(c[2])
      if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"click {i} at (y={y}, x={x}) is outside the {h}x{w} image")
      parsed.append(Click(positive, (y, x), i))
    if box is not None:
      if len(box) != 4:
        raise ValueError(f"box must be [x0, y0, x1, y1], got {box}")
      x0, y0, x1, y1 = (float(v) for v in box)
      box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    scr = []
    for s in scribbles or ():
      pts = [(float(p[0]), float(p[1])) for p in s.get("points", [])]
      if pts:
        scr.append((pts, bool(s.get("positive", True))))
    if len(scr) > self.predictor.num_scribbles:
      scr = scr[-self.predictor.num_scribbles:]  # the most recent scribbles
    prev = self.history[-1] if self.history else None
    start = time.perf_counter()
    prob = self.predictor.predict(self.state, clicks=parsed, box=box, scribbles=scr, prev_prob=prev)
    latency = 1000 * (time.perf_counter() - start)
    self.history.append(prob)
    return prob, latency

  def top_mask(self) -> np.ndarray:
    if not self.history:
      return np.zeros(self.image_hw, bool)
    return self.history[-1] > 0.49


class DemoApp:
  """The state behind the handler: the predictor, the session and a lock around model calls."""

  def __init__(self, predictor, model_name: str, random_init: bool):
    self.predictor = predictor
    self.model_name = model_name
    self.random_init = random_init
    self.session: DemoSession | None = None
    self.lock = threading.Lock()

  def info(self) -> dict:
    return {"model": self.model_name, "random_init": self.random_init,
            "image_size": int(self.predictor.model.image_size)}

  def open_image(self, data: bytes) -> dict:
    image = decode_image(data)
    with self.lock:
      self.session = DemoSession(self.predictor, image)
      return {"session": self.session.id, "height": image.shape[0], "width": image.shape[1],
              "embed_ms": round(self.session.embed_ms, 2)}

  def _session(self, payload: dict) -> DemoSession:
    if self.session is None or payload.get("session") != self.session.id:
      raise ValueError("unknown session: open an image first")
    return self.session

  def _reply(self, session: DemoSession, latency: float | None) -> dict:
    mask = session.top_mask()
    return {"mask_png": encode_mask_png(mask), "latency_ms": None if latency is None else round(latency, 2),
            "area": int(mask.sum()), "history": len(session.history)}

  def interact(self, payload: dict) -> dict:
    with self.lock:
      session = self._session(payload)
      _, latency = session.interact(payload.get("clicks", []), payload.get("box"), payload.get("scribbles", []))
      return self._reply(session, latency)

  def undo(self, payload: dict) -> dict:
    with self.lock:
      session = self._session(payload)
      if session.history:
        session.history.pop()
      return self._reply(session, None)

  def reset(self, payload: dict) -> dict:
    with self.lock:
      session = self._session(payload)
      session.history.clear()
      return self._reply(session, None)


def make_handler(app: DemoApp):
  class Handler(DemoHandler):
    static_dir = STATIC

    def do_GET(self):  # noqa: N802
      path = self.path.split("?", 1)[0]
      if path == "/api/info":
        return self.send_json(200, app.info())
      return self.serve_static(path)

    def do_POST(self):  # noqa: N802
      body = self.read_body()
      if body is None:
        return None
      routes = {"/api/interact": app.interact, "/api/undo": app.undo, "/api/reset": app.reset}
      try:
        if self.path == "/api/image":
          return self.send_json(200, app.open_image(body))
        if self.path in routes:
          return self.send_json(200, routes[self.path](json.loads(body or b"{}")))
        return self.send_json(404, {"error": f"not found: {self.path}"})
      except (ValueError, KeyError, TypeError) as e:
        return self.send_json(400, {"error": str(e)})

  return Handler


def make_server(predictor, *, port: int = 0, model_name: str = "segnext", random_init: bool = False):
  """A ThreadingHTTPServer bound to 127.0.0.1:port (0 = any free port); `.app` holds the state (its
  `predictor` may be set after binding, before serving).

  Raises:
    UserError: the port cannot be bound (in use by another program, or privileged).
  """
  app = DemoApp(predictor, model_name, random_init)
  server = bind_server(make_handler(app), port)
  server.app = app
  return server
