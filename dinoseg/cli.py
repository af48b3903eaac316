"""The `dinoseg` command: a registry of subcommands, each a small module.

A subcommand module defines `HELP` (one line), `add_arguments(parser)` and
`main(args, config_overrides) -> int`. Modules are imported only when their command runs,
so `dinoseg --help` stays fast. Later systems add their commands to `COMMANDS`.

Config handling is shared: a command that declares `--config` receives the
`--config.a.b=value` overrides, which `dinoseg.config.load_config` applies.
"""
import argparse
import importlib
import sys
from typing import Sequence

from dinoseg import __version__
from dinoseg.config import split_config_args

# name -> module implementing it.
COMMANDS: dict[str, str] = {
    "env": "dinoseg.commands.env",
    "config": "dinoseg.commands.config",
    "convert": "dinoseg.commands.convert",
    "talk2dino": "dinoseg.commands.talk2dino",
    "demo": "dinoseg.commands.demo",
    "data": "dinoseg.commands.data",
    "train": "dinoseg.commands.train",
    "eval": "dinoseg.commands.eval",
    "predict": "dinoseg.commands.predict",
    "quickstart": "dinoseg.commands.quickstart",
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="dinoseg", description="DINO-family segmentation in JAX: train, evaluate, predict, convert.")
  parser.add_argument("--version", action="version", version=f"dinoseg {__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name, module_name in COMMANDS.items():
    module = importlib.import_module(module_name)
    p = sub.add_parser(name, help=module.HELP, description=module.HELP)
    module.add_arguments(p)
    p.set_defaults(_module=module)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    argv, overrides = split_config_args(argv)
  except ValueError as e:
    print(f"dinoseg: error: {e}", file=sys.stderr)
    return 2
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return 2
  if overrides and not hasattr(args, "config"):
    parser.error(f"'{args.command}' takes no --config overrides")
  try:
    return int(args._module.main(args, overrides) or 0)
  except (ValueError, FileNotFoundError) as e:  # bad input: a clear message, no traceback
    print(f"dinoseg {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
