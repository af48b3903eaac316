"""DINOv visual in-context prompting in the browser (paint examples, segment targets), served on 127.0.0.1.

`dinoseg demo dinov` checks its folders and binds the port before the model loads (loading takes a while),
so a busy port or a missing folder fails at once, then loads DINOv and serves the demo page: paint the
object on one to four example images (one category name per example; examples sharing a name are averaged)
and see the instances of that category on the target images, updated after each edit.
"""
import pathlib

from dinoseg.demo import common
from dinoseg.demo.common import check_port
from dinoseg.errors import UserFileNotFoundError, UserValueError

DEFAULT_CONFIG = "configs/dinov/swint_sam_coco.py"
DEFAULT_PORT = 8009


def add_arguments(parser) -> None:
  parser.add_argument("--weights", default=None,
                      help="DINOv weights: the released .pth (converted on the fly), a .msgpack or a dinoseg "
                           "checkpoint directory")
  parser.add_argument("--random-init", action="store_true",
                      help="random weights (a smoke test without weights, e.g. with the :tiny config; the page "
                           "says so)")
  parser.add_argument("--config", default=DEFAULT_CONFIG, help="config[:variant] giving the model")
  parser.add_argument("--examples", default=None,
                      help="a folder of example images the page offers, with optional masks "
                           "<image file name>__<category>.png (as `dinoseg predict --examples`)")
  parser.add_argument("--inputs", default=None, help="a folder of target images the page offers")
  parser.add_argument("--output", default=None,
                      help="a folder where the page's Save button writes results (COCO JSON, PNG masks, overlays)")
  parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1 (0: any free port)")


def check_arguments(args) -> None:
  """The checks that need no model: one of --weights / --random-init (an existing weights path), a valid port,
  --output not a file (the folders --examples / --inputs are checked by the server, `scan_library`)."""
  if bool(args.weights) == bool(args.random_init):
    raise UserValueError("pass exactly one of --weights and --random-init")
  if args.weights and not pathlib.Path(args.weights).exists():
    raise UserFileNotFoundError(f"--weights: no such file or directory: {args.weights}")
  check_port(args.port)
  if args.output and pathlib.Path(args.output).exists() and not pathlib.Path(args.output).is_dir():
    raise UserValueError(f"--output={args.output} is a file; give a folder")


def build_predictor(args, overrides=()):
  """(DINOvPredictor, model name) from the parsed arguments (`dinoseg.predict.build_predictor`, as `dinoseg.load`)."""
  from dinoseg.predict import build_predictor as build, resolve_config  # noqa: PLC0415
  config = resolve_config(args.config, overrides)
  if str(config.get("task")) != "dinov":
    raise UserValueError(f"--config={args.config} is a {config.get('task')!r} config; the DINOv demo needs a DINOv "
                         "config (configs/dinov/...)")
  predictor = build(config, args.weights, allow_random=args.random_init)
  return predictor, f"DINOv {pathlib.Path(args.config).name}"


def main(args, overrides) -> int:
  from dinoseg.demo.dinov.server import make_server  # noqa: PLC0415
  check_arguments(args)
  server = make_server(None, port=args.port, random_init=args.random_init, examples_dir=args.examples,
                       inputs_dir=args.inputs, output_dir=args.output)  # UserError: busy port, bad folders

  def prepare():
    server.app.predictor, server.app.model_name = build_predictor(args, overrides)
  return common.serve(server, "DINOv", args.random_init, prepare)
