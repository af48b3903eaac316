"""`dinoseg demo segnext`: loads SegNext and serves the demo page on 127.0.0.1."""
DEFAULT_CONFIG = "configs/segnext/vitb_sax2.py"


def add_arguments(parser) -> None:
  parser.add_argument("--weights", default=None,
                      help="a SegNext checkpoint: the released .pth (converted on the fly) or an Orbax directory")
  parser.add_argument("--random-init", action="store_true",
                      help="random weights (a smoke test without weights; the page says so)")
  parser.add_argument("--config", default=DEFAULT_CONFIG,
                      help=f"config[:variant] giving the model (default {DEFAULT_CONFIG})")
  parser.add_argument("--port", type=int, default=8008, help="port on 127.0.0.1 (0: any free port)")


def build_predictor(args, overrides=()):
  """(SegNextPredictor, model name) from the parsed arguments."""
  from dinoseg.config import load_config  # noqa: PLC0415
  from dinoseg.models.segnext.predictor import SegNextPredictor  # noqa: PLC0415
  from dinoseg.models.segnext.weights import load_model  # noqa: PLC0415
  if bool(args.weights) == bool(args.random_init):
    raise ValueError("pass exactly one of --weights and --random-init")
  config = load_config(args.config, overrides)
  model, params = load_model(config.model, args.weights, random_init=args.random_init, seed=config.seed)
  return SegNextPredictor(model, params), str(config.model.name)


def main(args, overrides) -> int:
  from dinoseg.demo.segnext.server import make_server  # noqa: PLC0415
  if not 0 <= args.port < 65536:
    raise ValueError(f"--port must be in [0, 65535], got {args.port}")
  predictor, name = build_predictor(args, overrides)
  server = make_server(predictor, port=args.port, model_name=name, random_init=args.random_init)
  host, port = server.server_address[:2]
  label = " (RANDOM WEIGHTS)" if args.random_init else ""
  print(f"SegNext demo{label}: open http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
  return 0
