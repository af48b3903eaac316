"""Helpers of the Mask DINO tests: reference fixtures (tests/fixtures/maskdino) and models built
from them with the deterministic weights of scripts/make_maskdino_fixtures.py."""
import functools
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "maskdino"
FIXTURE_NAMES = ("r50_4lvl", "swin_5lvl", "ade_3lvl", "r50_dn100")


@functools.lru_cache(maxsize=None)
def script_module(name: str):
  """scripts/<name>.py as a module (the fixture scripts: their deterministic weights, inputs and probes)."""
  spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@functools.lru_cache(maxsize=None)
def load_npz_fixture(directory: pathlib.Path, name: str) -> dict:
  """The arrays of `<directory>/<name>.npz` (read once)."""
  with np.load(pathlib.Path(directory) / f"{name}.npz") as data:
    return {k: data[k] for k in data.files}


def npz_fixture_config(directory: pathlib.Path, name: str) -> dict:
  """The JSON `config` entry of `<directory>/<name>.npz` (the fixture script's settings)."""
  return json.loads(str(load_npz_fixture(directory, name)["config"]))


def fixture_script():
  """scripts/make_maskdino_fixtures.py as a module (for fixture_weight / fixture_input / probe_weight)."""
  return script_module("make_maskdino_fixtures")


def load_fixture(name: str) -> dict:
  return load_npz_fixture(FIXTURES, name)


def fixture_config(name: str) -> dict:
  return npz_fixture_config(FIXTURES, name)


def model_config_for(spec: dict) -> ml_collections.ConfigDict:
  """The dinoseg model config describing a fixture's reference model."""
  from dinoseg.models.maskdino import defaults
  cfg = defaults.model_config(spec["num_classes"])
  cfg.semantic_ce_loss = spec["semantic_ce"]
  cfg.pixel_decoder.transformer_in_features = tuple(spec["encoder_in"])
  cfg.pixel_decoder.total_num_feature_levels = spec["total_levels"]
  cfg.pixel_decoder.feature_order = spec["feature_order"]
  cfg.pixel_decoder.conv_dim = cfg.pixel_decoder.mask_dim = spec["hidden_dim"]
  cfg.pixel_decoder.dim_feedforward = spec["enc_ffn"]
  cfg.pixel_decoder.num_encoder_layers = spec["enc_layers"]
  d = cfg.decoder
  d.hidden_dim, d.num_queries, d.nheads = spec["hidden_dim"], spec["num_queries"], spec["nheads"]
  d.dim_feedforward, d.dec_layers = spec["dec_ffn"], spec["dec_layers"]
  d.two_stage, d.initialize_box_type = spec["two_stage"], spec["box_init"]
  d.dn_num, d.dn_noise_scale = spec["dn_num"], spec["noise_scale"]
  return cfg


def head_modules(cfg):
  from dinoseg.models.maskdino.model import build_model
  return build_model(cfg)


def fixture_features(name: str) -> dict:
  spec = fixture_config(name)
  script = fixture_script()
  b = len(spec["image_hw"])
  ph, pw = spec["padded_hw"]
  feats = {}
  for res, stride in (("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32)):
    x = script.fixture_input(res, (b, spec["channels"][res], ph // stride, pw // stride), spec["seed"])
    feats[res] = jnp.asarray(x.transpose(0, 2, 3, 1))
  return feats


@functools.lru_cache(maxsize=None)
def fixture_head_variables(name: str):
  """Flax variables of the fixture's head, converted from the deterministic reference state dict."""
  from dinoseg.models.maskdino import convert
  spec = fixture_config(name)
  script = fixture_script()
  keys = json.loads(str(load_fixture(name)["param_keys"]))
  state = {k: script.fixture_weight(script.canonical_key(k), shape, spec["seed"])
           for k, shape in keys if k != "criterion.empty_weight"}
  state["criterion.empty_weight"] = np.ones(spec["num_classes"] + 1, np.float32)
  return convert.to_flax(state, model_config_for(spec), head_only=True)


def fixture_draws(fx: dict):
  """The criterion's `draws(name, kind, shape)` hook reading a fixture's recorded reference randomness
  (`draws/<name>/<kind>` arrays; the requested shape must match)."""
  import jax.numpy as jnp  # noqa: PLC0415
  table = {tuple(k.split("/")[1:]): v for k, v in fx.items() if k.startswith("draws/")}

  def draw(name, kind, shape):
    value = table[(name, kind)]
    assert value.shape == tuple(shape), (name, kind, value.shape, shape)
    return jnp.asarray(value)
  return draw
