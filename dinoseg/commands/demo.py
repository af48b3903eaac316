"""`dinoseg demo NAME ...`: local browser demos, a registry of demo modules by name.

A demo module defines `add_arguments(parser)` and `main(args, config_overrides) -> int`; it is
imported only when its demo runs. Demos serve on 127.0.0.1 only.
"""
import importlib

from dinoseg.errors import UserValueError

HELP = ("run a local browser demo (segnext: interactive segmentation with clicks, boxes and scribbles; "
        "dinov: paint example masks, see every similar object segmented)")
DESCRIPTION = ("Runs a local browser demo, served on 127.0.0.1 only. `dinoseg demo segnext --help` (or "
               "`dinov --help`) lists the options of a demo.")

# name -> module implementing the demo.
DEMOS: dict[str, str] = {
    "segnext": "dinoseg.demo.segnext.launch",
    "dinov": "dinoseg.demo.dinov.launch",
}


def add_arguments(parser) -> None:
  sub = parser.add_subparsers(dest="demo", metavar="DEMO")
  for name, module_name in DEMOS.items():
    module = importlib.import_module(module_name)
    summary = (module.__doc__ or name).strip().splitlines()[0]
    p = sub.add_parser(name, help=summary, description=(module.__doc__ or summary).strip())
    module.add_arguments(p)
    p.set_defaults(_demo_module=module)


def main(args, overrides) -> int:
  if getattr(args, "demo", None) is None:
    raise UserValueError(f"name a demo: {', '.join(sorted(DEMOS))}")
  return int(args._demo_module.main(args, overrides) or 0)
