"""dinoseg: the DINO family of segmentation systems in JAX/Flax.

    import dinoseg
    predictor = dinoseg.load("configs/maskdino/coco_instance_r50_3s_d1_2048.py", "maskdino_r50.pth")
    result = predictor.predict("image.jpg")       # a dinoseg.Segmentation: masks, boxes, scores, names

`load` and `Segmentation` are imported on first use (from dinoseg.predict, dinoseg.structures).
Sub-packages: `ops` (torch-exact array ops), `parallel` (meshes and sharding), `kernels` (Pallas/XLA
kernels; source in the repository's `kernels/`), `data_pipelines` (ArrayRecord datasets and grain
pipelines; source in `data_pipelines/`), `backbones`, `models`, `train`, `evaluation`, `convert`;
`registry` (the one registry class and the `dinoseg.plugins` entry points).
"""
import importlib
import importlib.abc
import importlib.util
import pathlib
import sys

__version__ = "0.1.0"
_LAZY = {"load": "dinoseg.predict", "Segmentation": "dinoseg.structures"}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# In an installed wheel `kernels/` and `data_pipelines/` are copied into this package.
# In a source checkout (running from the repository, or an editable install whose
# path hook is shadowed by the checkout on sys.path) they sit next to `dinoseg/`:
# map `dinoseg.<name>` onto them so both layouts import the same way.
_HERE = pathlib.Path(__file__).resolve().parent
_MAPPED = ("kernels", "data_pipelines")


class _SourceTreeFinder(importlib.abc.MetaPathFinder):
  """Finds `dinoseg.kernels[.x]` / `dinoseg.data_pipelines[.x]` in a source checkout."""

  def find_spec(self, fullname, path=None, target=None):
    parts = fullname.split(".")
    if len(parts) < 2 or parts[0] != __name__ or parts[1] not in _MAPPED:
      return None
    if (_HERE / parts[1]).is_dir():  # Installed layout: the normal finder handles it.
      return None
    base = _HERE.parent.joinpath(*parts[1:])
    if base.is_dir() and (base / "__init__.py").is_file():
      return importlib.util.spec_from_file_location(
          fullname, base / "__init__.py", submodule_search_locations=[str(base)])
    if len(parts) == 2:
      return None
    module_file = base.with_suffix(".py")
    if module_file.is_file():
      return importlib.util.spec_from_file_location(fullname, module_file)
    return None


if not any((_HERE / name).is_dir() for name in _MAPPED):
  if not any(isinstance(f, _SourceTreeFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _SourceTreeFinder())
