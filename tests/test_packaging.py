"""A non-editable install exposes dinoseg.kernels / dinoseg.data_pipelines and no generic top-level names."""
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_layout_and_imports_from_another_directory(tmp_path):
  # Build from a clean copy: setuptools would reuse a stale build/ folder of the checkout.
  src = tmp_path / "src"
  shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns("build", "dist", ".venv", ".ci-venv", "*.egg-info",
                                                            "__pycache__", ".git", "tests", ".pytest_cache"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                  str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
  wheel = next((tmp_path / "dist").glob("dinoseg-*.whl"))
  names = zipfile.ZipFile(wheel).namelist()
  top = {n.split("/")[0] for n in names}
  assert "dinoseg" in top
  assert not top & {"kernels", "data_pipelines", "configs", "scripts", "tests"}, top
  assert "dinoseg/kernels/__init__.py" in names and "dinoseg/data_pipelines/__init__.py" in names
  # Every module of the source tree is in the wheel (a folder without __init__.py would be left out).
  mapped = {"dinoseg": "dinoseg", "kernels": "dinoseg/kernels", "data_pipelines": "dinoseg/data_pipelines",
            "configs": "dinoseg/configs"}
  sources = {f"{mapped[f.relative_to(ROOT).parts[0]]}/{'/'.join(f.relative_to(ROOT).parts[1:])}"
             for src in mapped for f in (ROOT / src).rglob("*.py") if "__pycache__" not in f.parts}
  assert not sources - set(names), sorted(sources - set(names))[:10]
  # Package data: CLIP's BPE merges (with their licence note).
  assert {"dinoseg/backbones/data/bpe_simple_vocab_16e6.txt.gz", "dinoseg/backbones/data/README.md"} <= set(names)
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                 check=True, capture_output=True)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(target))
  code = ("import dinoseg, dinoseg.kernels, dinoseg.data_pipelines, dinoseg.ops, dinoseg.parallel;"
          "import dinoseg.models.maskdino.model, dinoseg.models.segnext.model, dinoseg.models.talk2dino.model;"
          "from dinoseg.backbones import clip_tokenizer;"
          "assert clip_tokenizer.tokenize('a photo')[0, :4].tolist() == [49406, 320, 1125, 49407];"
          "print(dinoseg.__file__); print(dinoseg.kernels.__file__)")
  out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert all(line.startswith(str(target)) for line in out.stdout.split()), out.stdout
  bad = subprocess.run([sys.executable, "-c", "import kernels"], cwd=elsewhere, env=env, capture_output=True,
                       text=True)
  assert bad.returncode != 0 and "No module named 'kernels'" in bad.stderr
