"""Shared fixtures: synthetic raw datasets in every layout, prepared once per test session."""
import pathlib

import pytest

from dinoseg.data_pipelines import synth, writer

SMALL = {"num_images": 3, "image_size": (48, 72), "num_frames": 4, "max_objects": 4}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("synth")


class Datasets:
  """raw(layout) writes the synthetic raw layout once; prepared(layout) prepares it once."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.summaries: dict[str, dict] = {}
    self.manifests: dict[str, dict] = {}

  def raw(self, layout: str, **options) -> pathlib.Path:
    path = self.root / "raw" / layout
    if layout not in self.summaries:
      opts = {**SMALL, "corrupt": layout == "coco", **options}
      self.summaries[layout] = synth.synthesize(layout, str(path), **opts)
    return path

  def prepared(self, layout: str) -> pathlib.Path:
    raw = self.raw(layout)
    out = self.root / "prepared" / layout
    if layout not in self.manifests:
      self.manifests[layout] = writer.prepare(synth.PREPARER_FOR_LAYOUT[layout], str(raw), str(out), num_shards=2,
                                              progress=False)
    return out


@pytest.fixture(scope="session")
def datasets(synth_root) -> Datasets:
  return Datasets(synth_root)
