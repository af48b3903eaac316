"""SegNext interactive segmentation in the browser (clicks, boxes, scribbles), served on 127.0.0.1.

`dinoseg demo segnext` binds the port before the model loads (loading takes a while), so a busy port
fails at once, then loads SegNext and serves the demo page.
"""
from dinoseg.demo import common
from dinoseg.errors import UserValueError

DEFAULT_CONFIG = "configs/segnext/vitb_sax2.py"


def add_arguments(parser) -> None:
  parser.add_argument("--weights", default=None,
                      help="a SegNext checkpoint: the released .pth (converted on the fly) or an Orbax directory")
  parser.add_argument("--random-init", action="store_true",
                      help="random weights (a smoke test without weights; the page says so)")
  parser.add_argument("--config", default=DEFAULT_CONFIG, help="config[:variant] giving the model")
  parser.add_argument("--port", type=int, default=8008, help="port on 127.0.0.1 (0: any free port)")


def check_arguments(args) -> None:
  """The checks that need no model: one of --weights / --random-init, a valid port number."""
  if bool(args.weights) == bool(args.random_init):
    raise UserValueError("pass exactly one of --weights and --random-init")
  if not 0 <= args.port < 65536:
    raise UserValueError(f"--port must be in [0, 65535], got {args.port}")


def build_predictor(args, overrides=()):
  """(SegNextPredictor, model name) from the parsed arguments: the session of `dinoseg.load`'s predictor."""
  from dinoseg.predict import load  # noqa: PLC0415
  check_arguments(args)
  predictor = load(args.config, args.weights, overrides=overrides, allow_random=args.random_init)
  return predictor.session, str(predictor.config.model.name)


def main(args, overrides) -> int:
  from dinoseg.demo.segnext.server import make_server  # noqa: PLC0415
  check_arguments(args)
  server = make_server(None, port=args.port, random_init=args.random_init)  # UserError if the port is busy

  def prepare():
    server.app.predictor, server.app.model_name = build_predictor(args, overrides)
  return common.serve(server, "SegNext", args.random_init, prepare)
