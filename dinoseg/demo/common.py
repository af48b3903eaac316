"""What every browser demo shares: a standard-library HTTP server bound to 127.0.0.1, static files, JSON
replies, uploaded images and binary masks as PNG.

A demo subclasses `DemoHandler` (setting `static_dir`, the folder of its page), binds it with `bind_server`
(a busy port is a one-line `UserError`, raised before any model loads) and exchanges masks as base64 PNGs
(`encode_mask_png` / `decode_mask_png`). The server is a local tool, not a service: it listens on
127.0.0.1 only.
"""
import base64
import errno
import http.server
import io
import json
import logging
import pathlib
from typing import Any

import numpy as np

from dinoseg.errors import UserError, UserValueError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_BODY = 64 * 1024 * 1024
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}


def encode_mask_png(mask: np.ndarray) -> str:
  """(H, W) bool -> base64 PNG (8-bit gray, 255 = object)."""
  from PIL import Image  # noqa: PLC0415
  buf = io.BytesIO()
  Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
  return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_mask_png(data: str | bytes) -> np.ndarray:
  """A mask PNG (base64 text, optionally a `data:image/png;base64,` URL, or raw bytes) -> (H, W) bool:
  gray value > 127 (the alpha channel is ignored). Raises ValueError when it is not a readable image."""
  from PIL import Image, UnidentifiedImageError  # noqa: PLC0415
  if isinstance(data, str):
    if data.startswith("data:"):
      data = data.split(",", 1)[-1]
    try:
      data = base64.b64decode(data, validate=True)
    except ValueError as e:
      raise ValueError(f"the mask is not base64 text: {e}") from None
  try:
    with Image.open(io.BytesIO(data)) as im:
      gray = np.asarray(im.convert("L"))
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"the mask is not a readable PNG: {e}") from None
  return gray > 127


def decode_image(data: bytes) -> np.ndarray:
  """PNG/JPEG/... bytes -> (H, W, 3) uint8 RGB (ValueError if unreadable)."""
  from PIL import Image, UnidentifiedImageError  # noqa: PLC0415
  try:
    with Image.open(io.BytesIO(data)) as im:
      return np.asarray(im.convert("RGB"), np.uint8)
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"the uploaded file is not a readable image: {e}") from e


def encode_image_png(image: np.ndarray) -> bytes:
  """(H, W, 3) uint8 RGB -> PNG bytes."""
  from PIL import Image  # noqa: PLC0415
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def check_port(port: int) -> None:
  """A port number a demo can be asked for (0 = any free port); UserValueError otherwise."""
  if not 0 <= port < 65536:
    raise UserValueError(f"--port must be in [0, 65535], got {port}")


class DemoHandler(http.server.BaseHTTPRequestHandler):
  """Request handler base: quiet logging, replies (`send_body`, `send_json`), bounded request bodies
  (`read_body`) and the page's static files (`serve_static`: "/" is index.html, "/static/<file>" a file
  of `static_dir` with a known type; nothing outside `static_dir`)."""
  server_version = "dinoseg-demo"
  static_dir: pathlib.Path

  def log_message(self, fmt, *args):  # quiet by default
    pass

  def send_body(self, code: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
    self.send_response(code)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.end_headers()
    self.wfile.write(body)

  def send_json(self, code: int, obj: Any) -> None:
    self.send_body(code, json.dumps(obj).encode(), "application/json")

  def read_body(self) -> bytes | None:
    """The request body, or None after answering 413 when it is larger than MAX_BODY."""
    length = int(self.headers.get("Content-Length") or 0)
    if length > MAX_BODY:
      self.send_json(413, {"error": f"request body larger than {MAX_BODY} bytes"})
      return None
    return self.rfile.read(length)

  def serve_static(self, path: str) -> None:
    """Answers GET `path` ("/", "/index.html" or "/static/<file>") from `static_dir`, else 404."""
    static = self.static_dir.resolve()
    name = "index.html" if path in ("/", "/index.html") else path[len("/static/"):] if path.startswith(
        "/static/") else None
    target = (static / name).resolve() if name else None
    if target is None or target.parent != static or not target.is_file() or target.suffix not in STATIC_TYPES:
      return self.send_json(404, {"error": f"not found: {path}"})
    return self.send_body(200, target.read_bytes(), STATIC_TYPES[target.suffix])


def bind_server(handler_class, port: int) -> http.server.ThreadingHTTPServer:
  """A ThreadingHTTPServer with `handler_class` bound to 127.0.0.1:port (0 = any free port), daemon threads.

  Raises:
    UserError: the port cannot be bound (in use by another program, or privileged).
  """
  try:
    server = http.server.ThreadingHTTPServer((HOST, port), handler_class)
  except OSError as e:
    reason = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror or e})"
    raise UserError(f"port {port} on {HOST} {reason}; pick another with --port (0 takes any free port)") from None
  server.daemon_threads = True
  return server


def serve(server, name: str, random_init: bool, prepare) -> int:
  """Runs `prepare()` (e.g. loading the model into the server's app), then serves `server` (`bind_server`'s)
  until Ctrl-C; the server is closed however this ends. Returns 0."""
  try:
    prepare()
    host, port = server.server_address[:2]
    label = " (RANDOM WEIGHTS)" if random_init else ""
    logger.info("%s demo%s: open http://%s:%s/ (Ctrl-C stops it)", name, label, host, port)
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
  return 0


__all__ = ["HOST", "MAX_BODY", "serve", "STATIC_TYPES", "encode_mask_png", "decode_mask_png", "decode_image",
           "encode_image_png", "check_port", "DemoHandler", "bind_server"]

