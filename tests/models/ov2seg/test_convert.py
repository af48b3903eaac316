"""OV2Seg checkpoint import/export: the fixture head's export is exactly the reference head's state dict (keys,
order, values: bit-exact round trip) with `zs_weight` / criterion buffers dropped on import and rebuilt on
request; missing, unexpected and wrongly shaped keys fail with a ConversionError naming them; the full-size
R50 layout equals the released key patterns (tests/fixtures/ov2seg/ov2seg_head_keys.txt, a copy of
shared/reference/keys/ov2seg_head_keys.txt) and parameter count, and its timm backbone names are the ResNet-50
of dinoseg (the detectron2 layout of tests/fixtures/backbones); `dinoseg convert --list` shows the converters."""
import gzip
import json
import pathlib
import re

import numpy as np
import pytest

from dinoseg import cli
from dinoseg.convert.backbones import torchvision_to_detectron2
from dinoseg.convert.keymap import ConversionError, KeyMismatchError
from dinoseg.models.ov2seg import convert

ROOT = pathlib.Path(__file__).resolve().parents[3]
HEAD_KEYS = ROOT / "tests" / "fixtures" / "ov2seg" / "ov2seg_head_keys.txt"
BACKBONE_LAYOUTS = ROOT / "tests" / "fixtures" / "backbones" / "backbone_layouts.json.gz"


def _with_dropped(state, fx):
  """The state dict a released checkpoint would hold: + zs_weight (training vocabulary, any C) + criterion
  buffers + BN counters."""
  return dict(state, **{convert.ZS_WEIGHT: np.ones((512, 1204), np.float32),
                        "criterion.empty_weight": np.ones(1204, np.float32),
                        "criterion.empty_object_weight": np.array([1.0, 0.4], np.float32),
                        "criterion.freq_weight": np.ones(1203, np.float32)})


def test_head_round_trip_is_bit_exact_in_reference_order(ov2seg_fixture):
  fx = ov2seg_fixture
  variables = convert.to_flax({"model": _with_dropped(fx.state, fx)}, fx.model_config, head_only=True,
                              expected=fx.expected)
  back = convert.to_torch(variables, fx.model_config, head_only=True)
  assert list(back) == [k for k, _ in fx.keys]  # the reference head's state-dict order, zs_weight excluded
  for key, value in fx.state.items():
    assert back[key].dtype == value.dtype and back[key].shape == value.shape
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_export_rebuilds_zs_weight_and_criterion_buffers(ov2seg_fixture):
  fx = ov2seg_fixture
  counts = np.arange(1, fx.spec["num_classes"] + 1)
  back = convert.to_torch(fx.variables, fx.model_config, head_only=True, vocabulary=fx.data["class_embeddings"],
                          category_image_counts=counts)
  reference = [k for k, _ in fx.keys]
  np.testing.assert_allclose(back[convert.ZS_WEIGHT], fx.data["zs_weight"], rtol=1e-6, atol=1e-7)
  assert back[convert.ZS_WEIGHT].shape == (512, fx.spec["num_classes"] + 1)
  assert not back[convert.ZS_WEIGHT][:, -1].any() and not back[convert.ZS_WEIGHT][:, fx.spec["zero_class"]].any()
  np.testing.assert_array_equal(back["criterion.empty_object_weight"], np.array([1.0, 0.4], np.float32))
  np.testing.assert_array_equal(back["criterion.empty_weight"], [1] * fx.spec["num_classes"] + [0])
  np.testing.assert_allclose(back["criterion.freq_weight"], np.sqrt(counts), rtol=1e-6)
  assert set(back) == set(reference) | {convert.ZS_WEIGHT, *convert.CRITERION_BUFFERS}
  with pytest.raises(ConversionError, match="vocabulary"):
    convert.to_torch(fx.variables, fx.model_config, head_only=True, vocabulary=np.zeros((0, 512)))


def test_missing_unexpected_and_misshaped_keys_are_named(ov2seg_fixture):
  fx = ov2seg_fixture
  missing_key = "sem_seg_head.predictor.transformer_ffn_layers.4.linear2.bias"
  state = {k: v for k, v in fx.state.items() if k != missing_key}
  with pytest.raises(KeyMismatchError, match=re.escape(missing_key)) as info:
    convert.to_flax(state, fx.model_config, head_only=True, expected=fx.expected)
  assert info.value.missing == [missing_key]
  extra = "sem_seg_head.predictor.transformer_ffn_layers.6.linear2.bias"
  with pytest.raises(KeyMismatchError, match=re.escape(extra)):
    convert.to_flax(dict(fx.state, **{extra: np.zeros(256, np.float32)}), fx.model_config, head_only=True,
                    expected=fx.expected)
  bad = dict(fx.state)
  bad["sem_seg_head.predictor.query_feat.weight"] = np.zeros((11, 256), np.float32)
  with pytest.raises(ConversionError, match="predictor/query_feat/embedding"):
    convert.to_flax(bad, fx.model_config, head_only=True, expected=fx.expected)
  # Without explicit shapes the model's own (its backbone's widths) are checked: the fixture's narrow features
  # do not fit a ResNet-50's, and the error names the layer.
  with pytest.raises(ConversionError, match="input_proj_0"):
    convert.to_flax(fx.state, fx.model_config, head_only=True)
  with pytest.raises(KeyMismatchError, match="pixel_decoder"):
    convert.to_torch({"params": {"predictor": fx.variables["params"]["predictor"]}}, fx.model_config, head_only=True)


def _patterns():
  out = {}
  for line in HEAD_KEYS.read_text().splitlines():
    key, shape = line.split(" ", 1)
    out[key] = tuple(int(s) for s in re.findall(r"\d+", shape))
  return out


@pytest.fixture(scope="module")
def released_layout():
  model = convert.released_model_config("ov2seg_r50_lvis")
  abstract = convert.abstract_variables(model)
  return model, abstract, convert.ov2seg_keymap(model).torch_shapes(abstract)


def test_released_r50_layout(released_layout):
  """Head: every key matches a released pattern, each pattern's first instance has the released shape, 244
  tensors (+ zs_weight = the released 245), 16.6 M parameters with zs_weight (512 x 1197). Backbone: 265 timm
  keys that are detectron2's ResNet-50 layout once renamed."""
  _, _, shapes = released_layout
  patterns = _patterns()
  head = {k: s for k, (s, _) in shapes.items() if k.startswith("sem_seg_head.")}
  used = set()
  for key in head:
    match = [p for p in patterns if re.fullmatch(re.escape(p).replace("N", r"\d+"), key)]
    assert len(match) == 1, key
    used.add(match[0])
  assert set(patterns) - used == {convert.ZS_WEIGHT}
  for pattern, shape in patterns.items():
    if pattern != convert.ZS_WEIGHT:
      assert head[pattern.replace("N", "0")] == shape, pattern
  assert len(head) == 244
  total = sum(int(np.prod(s)) for s in head.values()) + int(np.prod(patterns[convert.ZS_WEIGHT]))
  assert round(total / 1e6, 1) == 16.6
  backbone = {k[len(convert.TIMM_BACKBONE_PREFIX):]: s for k, (s, _) in shapes.items()
              if k.startswith(convert.TIMM_BACKBONE_PREFIX)}
  assert len(backbone) + len(head) == len(shapes)
  with gzip.open(BACKBONE_LAYOUTS, "rt") as f:
    d2 = {k: tuple(s) for k, s, _ in json.load(f)["resnet50"]}
  renamed = torchvision_to_detectron2(backbone)
  assert renamed == d2


def test_released_r50_full_round_trip(released_layout):
  """Random values in the released layout (+ num_batches_tracked counters, zs_weight, criterion buffers) ->
  Flax (shapes checked against the model) -> torch: bit-exact, the dropped keys gone."""
  model, abstract, shapes = released_layout
  rng = np.random.default_rng(0)
  state = {k: rng.standard_normal(s).astype(d) for k, (s, d) in shapes.items()}
  extra = {"backbone.base.layer1.0.bn1.num_batches_tracked": np.array(7), convert.ZS_WEIGHT: np.zeros((512, 1197))}
  variables = convert.to_flax({"model": dict(state, **extra)}, model, expected=abstract)
  assert set(variables) == {"params", "frozen_bn"}
  back = convert.to_torch(variables, model)
  assert list(back) == list(state)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_convert_list_shows_the_converters(capsys):
  code = cli.main(["convert", "--list"])
  out = capsys.readouterr().out
  assert code == 0
  assert "ov2seg_r50_lvis" in out and "ov2seg_swinb_lvis" in out
