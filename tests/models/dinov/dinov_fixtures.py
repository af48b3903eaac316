"""Helpers of the DINOv tests: reference fixtures (tests/fixtures/dinov, scripts/make_dinov_fixtures.py) and
models built from them with the fixtures' deterministic weights."""
import functools
import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "dinov"
FIXTURE_NAMES = ("swint_4lvl", "swinl_5lvl")

if str(ROOT / "tests" / "models" / "maskdino") not in sys.path:  # Mask DINO's test helpers (the same module)
  sys.path.append(str(ROOT / "tests" / "models" / "maskdino"))
import maskdino_fixtures  # noqa: E402


def fixture_script():
  """scripts/make_dinov_fixtures.py as a module (its `mdf` is scripts/make_maskdino_fixtures.py: fixture_weight,
  canonical_key, fixture_input, probe_weight)."""
  return maskdino_fixtures.script_module("make_dinov_fixtures")


def load_fixture(name: str) -> dict:
  return maskdino_fixtures.load_npz_fixture(FIXTURES, name)


def fixture_config(name: str) -> dict:
  return maskdino_fixtures.npz_fixture_config(FIXTURES, name)


def model_config_for(spec: dict):
  """The dinoseg model config describing a fixture's reference head."""
  from dinoseg.models.dinov import defaults
  cfg = defaults.model_config()
  cfg.msda_impl = "xla"
  p = cfg.pixel_decoder
  p.transformer_in_features = tuple(spec["encoder_in"])
  p.total_num_feature_levels = spec["total_levels"]
  p.feature_order = spec["feature_order"]
  p.conv_dim = p.mask_dim = spec["hidden_dim"]
  p.dim_feedforward = spec["dim_feedforward"]  # the reference's encoder reads DECODER.DIM_FEEDFORWARD
  p.num_encoder_layers, p.nheads = spec["enc_layers"], spec["nheads"]
  d = cfg.decoder
  d.hidden_dim, d.dim_proj, d.nheads = spec["hidden_dim"], spec["dim_proj"], spec["nheads"]
  d.num_queries = spec["num_queries"]
  d.dim_feedforward, d.dec_layers = spec["dim_feedforward"], spec["dec_layers"]
  d.dn_num, d.dn_noise_scale, d.dn_group_images = spec["dn_num"], spec["noise_scale"], 0  # one process: the batch
  d.num_mask_tokens, d.content_independent = spec["num_mask_tokens"], spec["content_independent"]
  return cfg


@functools.lru_cache(maxsize=None)
def fixture_model(name: str):
  from dinoseg.models.dinov.model import build_model
  return build_model(model_config_for(fixture_config(name)))


def fixture_state(name: str) -> dict[str, np.ndarray]:
  """The reference head's state dict (keys `sem_seg_head.*`) with the fixture's deterministic weights."""
  spec, mdf = fixture_config(name), fixture_script().mdf
  keys = json.loads(str(load_fixture(name)["param_keys"]))
  return {k: mdf.fixture_weight(mdf.canonical_key(k), shape, spec["seed"]) for k, shape in keys}


@functools.lru_cache(maxsize=None)
def fixture_head_variables(name: str):
  """Flax variables of the fixture's head, converted from the reference state dict."""
  from dinoseg.models.dinov import convert
  return convert.to_flax(fixture_state(name), model_config_for(fixture_config(name)), head_only=True)


def fixture_features(name: str, batch: int | None = None) -> dict:
  """The fixed backbone features res2..res5, NHWC (the first `batch` images)."""
  spec, mdf = fixture_config(name), fixture_script().mdf
  b = len(spec["image_hw"])
  ph, pw = spec["padded_hw"]
  feats = {}
  for res, stride in (("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32)):
    x = mdf.fixture_input(res, (b, spec["channels"][res], ph // stride, pw // stride), spec["seed"])
    feats[res] = jnp.asarray(x.transpose(0, 2, 3, 1)[:batch])
  return feats


def probe(name: str, probe_name: str, x, axis: int = 1, k: int = 4) -> np.ndarray:
  """Fixture `name`'s probe `probe_name` of x: `axis` contracted with probe_weight(probe_name, size, seed)."""
  w = fixture_script().mdf.probe_weight(probe_name, x.shape[axis], fixture_config(name)["seed"], k).astype(np.float64)
  return np.moveaxis(np.tensordot(np.moveaxis(np.asarray(x, np.float64), axis, -1), w, axes=1), -1, axis)


def cos_objective(arrays) -> jnp.ndarray:
  """The fixtures' `objective`: sum of mean(x * cos(0.37 i)) over the arrays (reference layouts)."""
  weights = fixture_script().cos_weights
  return sum(jnp.mean(x * jnp.asarray(weights(tuple(x.shape)))) for x in arrays)
