"""DINOv checkpoint import/export: the fixture model's export is exactly the reference head's state dict (strict
load), full-size Swin-T / Swin-L layouts equal the reference key lists (shared/reference/keys, the backbone
layouts of tests/fixtures/backbones) and the stated parameter count, round trips are bit-exact with the released
`model.` prefix, tied copies are written everywhere and must agree on import."""
import functools
import gzip
import json
import pathlib
import re

import jax
import numpy as np
import pytest
from dinov_fixtures import FIXTURE_NAMES, fixture_config, fixture_head_variables, load_fixture, model_config_for

from dinoseg.config import load_config
from dinoseg.convert import registry
from dinoseg.convert.keymap import ConversionError, KeyMismatchError, check_shapes
from dinoseg.models.dinov import convert

ROOT = pathlib.Path(__file__).resolve().parents[3]
KEYS = pathlib.Path("/work/shared/reference/keys")
EXCERPT = KEYS / "keys_dinov_swint_predictor_excerpt.txt"
BACKBONE_LAYOUTS = ROOT / "tests" / "fixtures" / "backbones" / "backbone_layouts.json.gz"
PREDICTOR = "sem_seg_head.predictor."


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_export_equals_reference_strict_layout(name):
  """The fixture's reference head state dict (built by the reference code) has exactly the exported keys and
  shapes, and its values come back unchanged."""
  keys = {k: tuple(s) for k, s in json.loads(str(load_fixture(name)["param_keys"]))}
  state = convert.to_torch(fixture_head_variables(name), model_config_for(fixture_config(name)), head_only=True,
                           prefix="")
  assert {k: v.shape for k, v in state.items()} == keys


@functools.lru_cache(maxsize=None)
def _full_size(config: str):
  cfg = load_config(f"configs/dinov/{config}.py").model
  abstract = convert.abstract_variables(cfg)
  return cfg, abstract, convert.torch_shapes(abstract, cfg)


def _excerpt(num_layers: int = 9):
  """The Swin-T predictor excerpt with the omitted decoder layers and box-MLP copies filled in by the pattern."""
  lines = EXCERPT.read_text().splitlines()
  n_params = int(lines[-1].split()[1])
  want = {}
  for line in lines[:-1]:
    key, shape = line.split(" ", 1)
    shape = tuple(json.loads(shape.replace("(", "[").replace(")", "]").replace(",]", "]")))
    m = re.search(r"(decoder\.layers|bbox_embed)\.0\.", key)
    for i in range(num_layers) if m else [None]:
      want[key if i is None else key.replace(m.group(0), f"{m.group(1)}.{i}.")] = shape
  return want, n_params


@pytest.mark.skipif(not EXCERPT.exists(), reason="reference key excerpt not available")
def test_full_size_swint_predictor_equals_reference():
  want, n_params = _excerpt()
  cfg, abstract, got = _full_size("swint_sam_coco")
  predictor = {k[len("model.sem_seg_head."):]: v[0] for k, v in got.items() if k.startswith("model." + PREDICTOR)}
  assert predictor == {k[len("sem_seg_head."):]: v for k, v in want.items()}
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]["predictor"])) == n_params


@pytest.mark.skipif(not (KEYS / "keys_swinl_panoptic.tsv").exists(), reason="reference key dumps not available")
def test_full_size_swinl_equals_reference_parts():
  """Swin-L DINOv = Mask DINO Swin-L's pixel decoder and decoder layers (same 5-level layout, FFN 2048) +
  the DINOv predictor keys of the Swin-T excerpt with a fifth prompt-encoder layer + the Swin-L backbone."""
  maskdino = {}
  for line in (KEYS / "keys_swinl_panoptic.tsv").read_text().splitlines():
    key, shape, _ = line.split("\t")
    maskdino[key] = tuple(json.loads(shape.replace("(", "[").replace(")", "]").replace(",]", "]")))
  _, _, got = _full_size("swinl_sam_coco")
  got = {k[len("model."):]: v[0] for k, v in got.items()}
  shared = re.compile(r"^sem_seg_head\.(pixel_decoder\.|"
                      r"predictor\.(decoder\.|_bbox_embed|bbox_embed|mask_embed|decoder_norm))")
  assert {k: v for k, v in got.items() if shared.match(k)} == {k: v for k, v in maskdino.items() if shared.match(k)}
  swint, _ = _excerpt()
  own = {k: v for k, v in swint.items() if not shared.match(k)}
  own.update({k.replace(".3.", ".4."): v for k, v in own.items() if "project_cross_attention_layers.3." in k})
  assert {k: v for k, v in got.items() if k.startswith(PREDICTOR) and not shared.match(k)} == own
  layouts = json.loads(gzip.decompress(BACKBONE_LAYOUTS.read_bytes()))
  assert {k: v for k, v in got.items() if k.startswith("backbone.")} == {
      "backbone." + k: tuple(s) for k, s, _ in layouts["swin_large"]}


def test_full_size_swint_backbone_and_converter():
  """Swin-T backbone keys = the D2 Swin-T layout; the registered converter reads its own full-size export (zeros)
  and the result has the model's shapes."""
  layouts = json.loads(gzip.decompress(BACKBONE_LAYOUTS.read_bytes()))
  cfg, abstract, got = _full_size("swint_sam_coco")
  assert {k: v[0] for k, v in got.items() if k.startswith("model.backbone.")} == {
      "model.backbone." + k: tuple(s) for k, s, _ in layouts["swin_tiny"]}
  assert not [k for k in got if not k.startswith(("model.backbone.", "model.sem_seg_head."))]
  conv = registry.get("dinov_swint_sam_coco")
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  state = conv.to_torch(zeros)
  assert {k: v.shape for k, v in state.items()} == {k: v[0] for k, v in got.items()}
  check_shapes(conv.to_flax(state), conv.abstract())
  assert {c.name for c in convert.CONVERTERS} == {"dinov_swint_sam_coco", "dinov_swinl_sam_coco"}


def test_round_trip_released_prefix_and_tied_copies():
  cfg = load_config("configs/dinov/swint_sam_coco.py:tiny").model
  abstract = convert.abstract_variables(cfg)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), abstract)
  state = convert.to_torch(variables, cfg)
  assert all(k.startswith("model.") for k in state)
  n = cfg.decoder.dec_layers
  copies = [k for k in state if k.endswith("layers.2.weight") and "bbox_embed" in k]
  assert len(copies) == 2 * n + 1 and all(np.array_equal(state[copies[0]], state[c]) for c in copies)
  np.testing.assert_array_equal(state["model.sem_seg_head.predictor.decoder_norm.weight"],
                                state["model.sem_seg_head.predictor.decoder.norm.weight"])
  for wrapped in (state, {"model": state}, {k[len("model."):]: v for k, v in state.items()}):
    back = convert.to_flax(wrapped, cfg)
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(variables), jax.tree_util.tree_leaves_with_path(back)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (_, a), (_, b) in zip(flat_a, flat_b):
      np.testing.assert_array_equal(np.asarray(a), b)
  again = convert.to_torch(convert.to_flax(state, cfg), cfg)
  assert list(again) == list(state) and all(np.array_equal(again[k], state[k]) for k in state)
  bad = dict(state)
  bad[copies[1]] = bad[copies[1]] + 1
  with pytest.raises(ConversionError):
    convert.to_flax(bad, cfg)
  missing = {k: v for k, v in state.items() if "iou_prediction_head" not in k}
  with pytest.raises(KeyMismatchError, match="iou_prediction_head"):
    convert.to_flax(missing, cfg)
