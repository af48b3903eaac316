"""Installs dinoseg.

`kernels/` and `data_pipelines/` live at the top of the repository but install as
`dinoseg.kernels` and `dinoseg.data_pipelines`: nothing with a generic top-level
name is put into site-packages.
"""
import pathlib
import re

from setuptools import find_namespace_packages, find_packages, setup

ROOT = pathlib.Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"',
                    (ROOT / "dinoseg" / "__init__.py").read_text(), re.M).group(1)

# Sub-packages that live outside dinoseg/ in the source tree.
MAPPED = {"kernels": "dinoseg.kernels", "data_pipelines": "dinoseg.data_pipelines",
          "configs": "dinoseg.configs"}


def _packages():
  packages = find_packages(include=["dinoseg", "dinoseg.*"])
  package_dir = {"dinoseg": "dinoseg"}
  for src, name in MAPPED.items():
    package_dir[name] = src
    packages.append(name)
    for sub in find_namespace_packages(where=src, exclude=["__pycache__", "*.__pycache__"]):
      packages.append(f"{name}.{sub}")
      package_dir[f"{name}.{sub}"] = f"{src}/{sub.replace('.', '/')}"
  return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

# Lower bounds are the oldest versions the test suite has passed with (README, "Tested versions"): the
# Python 3.11 / jax 0.10.2 CPU environment; the Python 3.12 / jax 0.11 one has the same or newer
# releases. No upper bounds.
INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "array-record>=0.8.6",
    "numpy>=2.4.6",
    "scipy>=1.17.1",
    "einops>=0.8.2",
    "ml-collections>=1.1.0",
    "pycocotools>=2.0.11",
    "pillow>=13.0.0",
    "tqdm>=4.70.1",
    "tensorboardX>=2.6.5",
    "safetensors>=0.8.0",
    "absl-py>=2.5.1",
    # CLIP tokenizer: text cleaning and Unicode-class pre-splitting, as the reference does (its BPE merges
    # ship with dinoseg: dinoseg/backbones/data/).
    "ftfy>=6.3.1",
    "regex>=2026.12.2",
]

# `dinoseg data prepare --format tfds` (TFDS builders); importlib_resources: tfds imports it undeclared.
TFDS = ["tensorflow-datasets>=4.9.10", "importlib_resources>=7.1.0"]

# Video files as `dinoseg predict` input (OV2Seg): PyAV, whose wheels bundle ffmpeg (dinoseg/video_io.py).
VIDEO = ["av>=18.1.0"]

EXTRAS = {
    "tfds": TFDS,
    "video": VIDEO,
    "test": ["pytest>=9.2.0", "pytest-xdist>=3.8.0", "pytest-timeout>=2.4.0", "setuptools>=84.0.0",
             "wheel>=0.46.3",
             # SegNext demo end-to-end test: drives Debian's chromium over the DevTools protocol.
             "websocket-client>=1.9.2", *TFDS,
             # Video files (.mp4, ...) in the OV2Seg predict tests (tests/test_video_io_mp4.py), read with PyAV
             # and with the fallback reader where PyAV is missing (the ffmpeg binary imageio-ffmpeg ships).
             *VIDEO, "imageio-ffmpeg>=0.8.1"],
    # PyTorch is only an oracle (parity tests) and a weight-file format. Install the
    # CPU build: `pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu`.
    "torch": ["torch>=2.13.0"],
    "cuda": ["jax[cuda12]>=0.10.2"],
    "cuda13": ["jax[cuda13]>=0.10.2"],
    "tpu": ["jax[tpu]>=0.10.2"],
}

setup(
    name="dinoseg",
    version=VERSION,
    description="DINO-family segmentation (Mask DINO, DINOv, Talk2DINO, OV2Seg, SegNext) in JAX/Flax",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    include_package_data=True,
    package_data={"dinoseg": ["assets/*", "py.typed", "demo/*/static/*", "backbones/data/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["dinoseg=dinoseg.cli:main"]},
    license="Apache-2.0",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
