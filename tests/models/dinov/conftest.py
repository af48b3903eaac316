"""Makes this directory's helper module (dinov_fixtures.py) importable by the DINOv tests."""
import pathlib
import sys

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
