"""Makes this directory's helper module (maskdino_fixtures.py) importable by the Mask DINO tests."""
import pathlib
import sys

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
