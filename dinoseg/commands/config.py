"""`dinoseg config show --config=FILE.py[:VARIANT] [--config.a.b=value ...]`: the resolved config."""
from dinoseg import jsonio
from dinoseg.config import load_config, to_yaml

HELP = "show a resolved config (file + variant + overrides)"
DESCRIPTION = ("Prints the config a command would run with: the file's get_config(variant) with the "
               "--config.a.b=value overrides applied and validated, as plain YAML (or JSON with --json; "
               "tuples are written as lists). The key paths are the ones overrides take.")


def add_arguments(parser):
  parser.add_argument("action", choices=["show"], help="what to do with the config")
  parser.add_argument("--config", required=True, help="config file, optionally with :variant")
  parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")


def main(args, overrides) -> int:
  config = load_config(args.config, overrides)
  if args.json:
    print(jsonio.dumps(config.to_dict(), indent=2))
  else:
    print(to_yaml(config), end="")
  return 0
