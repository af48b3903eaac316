"""Every config file in configs/ loads, with its default and its tiny variant, and documents its run command."""
import ast
import pathlib

import pytest

from dinoseg.config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p for p in (ROOT / "configs").rglob("*.py")
                      if p.name != "__init__.py" and not p.name.startswith("_"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_loads_and_documents_itself(path):
  doc = ast.get_docstring(ast.parse(path.read_text())) or ""
  assert "dinoseg " in doc, f"{path}: the docstring must hold the run command"
  assert ":tiny" in doc, f"{path}: the docstring must show the tiny CPU variant"
  load_config(str(path))
  tiny = load_config(f"{path}:tiny")
  assert tiny.is_locked
