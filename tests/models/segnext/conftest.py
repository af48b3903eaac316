"""Fixtures shared by the SegNext tests: the tiny architecture of the reference fixtures."""
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.models.segnext import prompts as prompt_lib
from dinoseg.models.segnext.convert import SegNextArch, random_reference_state_dict, segnext_to_flax
from dinoseg.models.segnext.model import SegNext

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "segnext"
# Must equal scripts/make_segnext_fixtures.py: TINY, TINY_HEADS, TINY_GLOBAL_FREQ.
TINY_ARCH = SegNextArch(image_size=448, patch_size=16, embed_dim=64, depth=4, mlp_ratio=4.0, fusion_depth=2,
                        neck_dims=(16, 32, 48, 64), head_channels=32)
TINY_MODEL_KW = dict(image_size=448, patch_size=16, embed_dim=64, depth=4, num_heads=4, global_atten_freq=2,
                     fusion_depth=2, neck_dims=(16, 32, 48, 64), head_channels=32)


@pytest.fixture(scope="session")
def segnext_fixture():
  """Loads tests/fixtures/segnext/<name>.npz."""
  return lambda name: np.load(FIXTURES / f"{name}.npz")


@pytest.fixture(scope="session")
def tiny_arch():
  return TINY_ARCH


@pytest.fixture(scope="session")
def tiny_model():
  return SegNext(**TINY_MODEL_KW)


@pytest.fixture(scope="session")
def tiny_params():
  """Params of the fixtures' random reference weights (seed 0), with the zero extra-prompt kernel."""
  return segnext_to_flax(random_reference_state_dict(TINY_ARCH, 0))


def click_prompts(points) -> prompt_lib.Prompts:
  """Prompts holding only the given (P, 2N, 3) reference points."""
  points = jnp.asarray(points, jnp.float32)
  return prompt_lib.empty_prompts(points.shape[0]).replace(points=points)


@pytest.fixture(scope="session")
def make_click_prompts():
  return click_prompts
