"""Shared fixtures of the OV2Seg model tests: the reference fixture (tests/fixtures/ov2seg, written by
scripts/make_ov2seg_fixtures.py), its deterministic weights as a reference state dict, the dinoseg model
config describing the fixture's head, the converted Flax variables and the fixed backbone features."""
import functools
import importlib.util
import json
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "ov2seg"
FIXTURE_NAME = "head_6layers"


@functools.lru_cache(maxsize=None)
def fixture_script():
  """scripts/make_ov2seg_fixtures.py as a module (torch-free at import; its `mdf` gives fixture_weight /
  fixture_input / probe_weight)."""
  spec = importlib.util.spec_from_file_location("make_ov2seg_fixtures", ROOT / "scripts" / "make_ov2seg_fixtures.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def model_config_for(spec: dict):
  """The dinoseg model config describing the fixture's reference head."""
  from dinoseg.models.ov2seg import defaults
  cfg = defaults.model_config()
  cfg.msda_impl = "xla"
  p, d = cfg.pixel_decoder, cfg.decoder
  p.conv_dim = p.mask_dim = spec["hidden_dim"]
  p.dim_feedforward, p.num_encoder_layers, p.nheads = spec["enc_dim_feedforward"], spec["enc_layers"], spec["nheads"]
  d.hidden_dim, d.num_queries, d.nheads = spec["hidden_dim"], spec["num_queries"], spec["nheads"]
  d.dim_feedforward, d.dec_layers = spec["dim_feedforward"], spec["dec_layers"]
  cfg.classifier.embed_dim, cfg.classifier.temperature = spec["embed_dim"], spec["temperature"]
  cfg.num_classes = spec["num_classes"]
  # A small ResNet: the head tests never run it (the fixture feeds fixed features).
  cfg.backbone.kwargs = dict(stage_blocks=(1, 1, 1, 1))
  return cfg


@functools.lru_cache(maxsize=None)
def _load(name: str) -> types.SimpleNamespace:
  from dinoseg.models.ov2seg import convert
  from dinoseg.models.ov2seg.model import build_model
  with np.load(FIXTURES / f"{name}.npz") as data:
    arrays = {k: data[k] for k in data.files}
  spec = json.loads(str(arrays["config"]))
  script = fixture_script()
  mdf = script.mdf
  keys = json.loads(str(arrays["param_keys"]))
  state = {k: mdf.fixture_weight(k, shape, spec["seed"]) for k, shape in keys}
  model_config = model_config_for(spec)
  features = {n: jnp.asarray(mdf.fixture_input(n, s, spec["seed"]).transpose(0, 2, 3, 1))
              for n, s in script.feature_shapes(spec).items()}
  model = build_model(model_config)
  class_embeddings = jnp.asarray(arrays["class_embeddings"])
  # The head's abstract variables for the fixture's feature widths (the converter checks shapes against them).
  expected = dict(jax.eval_shape(functools.partial(model.init, method=head_init), jax.random.key(0), features,
                                 class_embeddings))
  return types.SimpleNamespace(
      name=name, data=arrays, data_dir=FIXTURES, spec=spec, state=state, keys=keys, model_config=model_config, model=model,
      expected=expected, variables=convert.to_flax(state, model_config, head_only=True, expected=expected),
      features=features, class_embeddings=class_embeddings, script=script, model_config_for=model_config_for)


def head_init(m, features, class_embeddings):
  """Runs the pixel decoder and the predictor only (the fixture feeds backbone features)."""
  mask_features, levels = m.pixel_decoder(features)
  return m.predictor(levels, mask_features, class_embeddings)


@pytest.fixture(scope="session")
def ov2seg_fixture() -> types.SimpleNamespace:
  """The fixture: data (the .npz arrays), spec, state (reference head state dict), model_config, model,
  expected (the head's abstract variables), variables (converted head params), features (NHWC res2..res5),
  class_embeddings (C, 512), script (scripts/make_ov2seg_fixtures.py), data_dir, model_config_for."""
  return _load(FIXTURE_NAME)
