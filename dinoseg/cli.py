"""The `dinoseg` command: a registry of subcommands, each a small module.

A subcommand module defines `HELP` (one line), `add_arguments(parser)` and
`main(args, config_overrides) -> int`. Modules are imported only when their command runs,
so `dinoseg --help` stays fast. Later systems add their commands to `COMMANDS`.

Config handling is shared: a command that declares `--config` receives the
`--config.a.b=value` overrides, which `dinoseg.config.load_config` applies.

Output: a command prints its results to stdout; progress and diagnostics are log records, shown on
stderr from `--verbosity` up (`dinoseg.logs`; default info). XLA's C++ log lines (among them its
"Very slow compile?" alarm) are hidden unless `--verbosity=debug` or TF_CPP_MIN_LOG_LEVEL is set.

Errors: a `dinoseg.errors.UserError` (bad input) is printed as one line with exit status 2, as are
argparse's usage errors; any other exception is a bug and propagates with its traceback (exit
status 1). Exit statuses: 0 success, 1 internal error or partial failure, 2 bad input.
"""
import argparse
import sys
from typing import Sequence

from dinoseg import __version__, logs
from dinoseg.config import split_config_args
from dinoseg.errors import UserError
from dinoseg.registry import Registry

# name -> module implementing it (imported when the parser is built; plugins add theirs: dinoseg.registry).
COMMANDS = Registry("command", entries={
    "env": "dinoseg.commands.env",
    "config": "dinoseg.commands.config",
    "convert": "dinoseg.commands.convert",
    "talk2dino": "dinoseg.commands.talk2dino",
    "dinov": "dinoseg.commands.dinov",
    "demo": "dinoseg.commands.demo",
    "data": "dinoseg.commands.data",
    "train": "dinoseg.commands.train",
    "eval": "dinoseg.commands.eval",
    "predict": "dinoseg.commands.predict",
    "quickstart": "dinoseg.commands.quickstart",
})


CONFIG_EPILOG = (
    "Config overrides: --config.a.b=value (or --config.a.b value) sets any key of the config, e.g. "
    "--config.train.num_steps=100 or --config.data.image_size='(512, 512)' (a sequence: '(a, b)', '[a, b]' or "
    "a,b). `dinoseg config show --config=FILE` lists the keys and their values.")
INTERNAL_ERROR_NOTE = "dinoseg: internal error (a bug); please report it with this traceback and `dinoseg env`"


class HelpFormatter(argparse.HelpFormatter):
  """Shows each option's default (unless it is None / False / empty or its help already names one)."""

  def _get_help_string(self, action):
    text = action.help or ""
    default = action.default
    if (default is None or default is False or default == [] or default == argparse.SUPPRESS
        or "default" in text or not action.option_strings):
      return text
    return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
  """An ArgumentParser whose help shows defaults; subparsers (commands, jobs) inherit it, and a parser
  taking `--config` explains the `--config.a.b=value` overrides in its help."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", HelpFormatter)
    super().__init__(*args, **kwargs)

  def format_help(self) -> str:
    if "--config" in self._option_string_actions and not self.epilog:
      self.epilog = CONFIG_EPILOG
    return super().format_help()


def build_parser() -> argparse.ArgumentParser:
  parser = Parser(prog="dinoseg",
                  description="DINO-family segmentation in JAX: train, evaluate, predict, convert.",
                  epilog="Exit status: 0 success, 1 internal error or partial failure, 2 bad input. "
                         "`dinoseg COMMAND --help` describes a command.")
  parser.add_argument("--version", action="version", version=f"dinoseg {__version__}")
  parser.add_argument("--verbosity", choices=tuple(logs.LEVELS), default=logs.DEFAULT,
                      help="messages shown on stderr: from this level up (results always go to stdout)")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name, module in COMMANDS.items():
    p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
    p.add_argument("--verbosity", choices=tuple(logs.LEVELS), default=argparse.SUPPRESS,
                   help=f"as `dinoseg --verbosity` (default: {logs.DEFAULT})")
    module.add_arguments(p)
    p.set_defaults(_module=module)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    argv, overrides = split_config_args(argv)
  except UserError as e:
    print(f"dinoseg: error: {e}", file=sys.stderr)
    return 2
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return 2
  if overrides and not hasattr(args, "config"):
    parser.error(f"'{args.command}' takes no --config overrides")
  logs.configure(args.verbosity)
  logs.quiet_native_logs(args.verbosity)
  try:
    return int(args._module.main(args, overrides) or 0)
  except UserError as e:  # bad input: one line, no traceback
    print(f"dinoseg {args.command}: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # a bug: the traceback follows (exit status 1)
    e.add_note(INTERNAL_ERROR_NOTE)
    raise


if __name__ == "__main__":
  sys.exit(main())
