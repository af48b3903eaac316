"""`dinoseg config show --config=FILE.py[:VARIANT] [--config.a.b=value ...]`: the resolved config."""
import json

from dinoseg.config import load_config

HELP = "show a resolved config (file + variant + overrides)"


def add_arguments(parser):
  parser.add_argument("action", choices=["show"], help="what to do with the config")
  parser.add_argument("--config", required=True, help="config file, optionally with :variant")
  parser.add_argument("--json", action="store_true", help="print JSON instead of YAML-like text")


def main(args, overrides) -> int:
  config = load_config(args.config, overrides)
  if args.json:
    print(json.dumps(config.to_dict(), indent=2, default=str))
  else:
    print(config)
  return 0
