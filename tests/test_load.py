"""The Python API: `dinoseg.load(config, weights).predict(image, **prompts)` -> `dinoseg.Segmentation`, the same
way for Mask DINO, SegNext and Talk2DINO, on the tiny configs with random weights written to files (the one
route from a weights file to variables, `Task.variables_from_weights`)."""
import jax
import numpy as np
import pytest
from PIL import Image

import dinoseg
from dinoseg.config import load_config
from dinoseg.convert import readers
from dinoseg.errors import UserError
from dinoseg.train import task as task_lib

MASKDINO = "configs/maskdino/quickstart.py:tiny"
SEGNEXT = "configs/segnext/vitb_sax2.py:tiny"
TALK2DINO = "configs/talk2dino/vitb_mlp_infonce.py:tiny"
NAMES = ("circle", "square", "triangle", "star", "ring")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return np.kron(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))


def _random_variables(config, seed: int = 0) -> dict:
  import flax.linen as nn
  task = task_lib.build(config)
  return jax.tree.map(np.asarray, dict(nn.meta.unbox(jax.jit(task.init_variables)(jax.random.key(seed)))))


def _check(result, hw, *, boxes: bool):
  n = len(result)
  assert isinstance(result, dinoseg.Segmentation)
  assert result.masks.shape == (n, *hw) and result.masks.dtype == bool and result.image_hw == hw
  assert result.scores.shape == (n,) and result.scores.dtype == np.float32
  assert result.labels.shape == (n,) and result.labels.dtype == np.int32
  assert result.names == tuple(result.class_names[i] for i in result.labels)
  assert (result.boxes is not None) == boxes
  if boxes:
    assert result.boxes.shape == (n, 4) and result.boxes.dtype == np.float32


@pytest.fixture(scope="module")
def maskdino_weights(tmp_path_factory):
  from dinoseg.models.maskdino import convert
  config = load_config(MASKDINO)
  state = convert.to_torch(_random_variables(config), config.model, no_object_weight=config.loss.no_object_weight)
  path = tmp_path_factory.mktemp("maskdino") / "tiny.pth"
  readers.write_pth(state, path, wrap="model")  # the released layout: {"model": state_dict}
  return path


def test_maskdino_load_and_predict(maskdino_weights, tmp_path):
  predictor = dinoseg.load(MASKDINO, maskdino_weights, overrides=[f"dataset.class_names={','.join(NAMES)}"])
  image = _image(48, 72)
  result = predictor.predict(image)
  _check(result, (48, 72), boxes=True)
  assert len(result) == predictor.config.test.detections_per_image and result.class_names == NAMES
  # A file (EXIF orientation applied) and a PIL image give the same result; score_threshold filters.
  exif = Image.Exif()
  exif[0x0112] = 6  # stored rotated: the upright image is the array above
  Image.fromarray(np.ascontiguousarray(np.rot90(image, 1))).save(tmp_path / "x.png", exif=exif)
  for same in (predictor.predict(tmp_path / "x.png"), predictor.predict(Image.open(tmp_path / "x.png"))):
    np.testing.assert_array_equal(same.masks, result.masks)
  top = float(np.sort(result.scores)[-2])
  assert len(predictor.predict(image, score_threshold=top)) == 2
  assert len(predictor._forwards) == len(predictor._postprocessors) == 1  # one input size bucket: one compilation
  # Another output size with the same padded input (both resize to the 64 x 64 test size): the model is not
  # compiled again, only the postprocessing for the new output bucket.
  _check(predictor.predict(_image(144, 216)), (144, 216), boxes=True)
  (forward,) = predictor._forwards.values()
  assert forward._cache_size() == 1 and len(predictor._forwards) == 1 and len(predictor._postprocessors) == 2
  with pytest.raises(UserError, match=r"\(H, W, 3\) uint8"):
    predictor.predict(image.astype(np.float32))


def test_maskdino_weights_must_fit_and_exist(maskdino_weights, tmp_path):
  with pytest.raises(UserError, match="do not fit the model's shapes|do not have the model's variables"):
    dinoseg.load(MASKDINO, maskdino_weights, overrides=["model.num_classes=7"])
  with pytest.raises(UserError, match="no such weights"):
    dinoseg.load(MASKDINO, tmp_path / "missing.pth")
  with pytest.raises(UserError, match="would stay random.*allow_random=True"):
    dinoseg.load(load_config(MASKDINO))  # a ConfigDict, no weights, no config.init file


@pytest.fixture(scope="module")
def segnext_weights(tmp_path_factory):
  from dinoseg.models.segnext import convert
  config = load_config(SEGNEXT)
  state = convert.random_reference_state_dict(convert.arch_from_model_config(config.model), seed=1, scale=0.5)
  path = tmp_path_factory.mktemp("segnext") / "tiny.pth"
  readers.write_pth(state, path, wrap="state_dict")  # the released layout: {"state_dict", "config"}
  return path


def test_segnext_clicks_box_scribbles_reuse_the_image_embedding(segnext_weights, monkeypatch):
  from dinoseg.models.segnext.predictor import CPU_FAST_COMPILE
  predictor = dinoseg.load(SEGNEXT, segnext_weights, compiler_options=CPU_FAST_COMPILE)
  embeddings = []
  set_image = predictor.session.set_image
  monkeypatch.setattr(predictor.session, "set_image", lambda image: embeddings.append(1) or set_image(image))
  image = _image(72, 104)
  first = predictor.predict(image, clicks=[(41, 30, True)])
  _check(first, (72, 104), boxes=False)
  assert len(first) == 1 and first.names == ("object",) and first.probability.shape == (72, 104)
  np.testing.assert_array_equal(first.masks[0], first.probability > 0.49)
  second = predictor.predict(image, clicks=[(41, 30, True), (90, 60, False)], prev_mask=first.probability)
  both = predictor.predict(image.copy(), box=(10, 5, 80, 60), scribbles=[([(20, 20), (40, 30)], True)])
  assert len(embeddings) == 1  # three predictions, one embedding: only the prompt path runs per click
  assert not np.array_equal(second.probability, first.probability) and both.probability.shape == (72, 104)
  predictor.predict(_image(72, 104, seed=1), clicks=[(5, 5, True)])
  assert len(embeddings) == 2  # another image is embedded once
  with pytest.raises(UserError, match="needs prompts"):
    predictor.predict(image)
  with pytest.raises(UserError, match="outside the 104 x 72 image"):
    predictor.predict(image, clicks=[(104, 0, True)])


def test_talk2dino_class_names_from_a_projection_file(tmp_path):
  from dinoseg.models.talk2dino.convert import projection_to_torch
  config = load_config(TALK2DINO)
  readers.write_safetensors(projection_to_torch(_random_variables(config)["params"]), tmp_path / "projection.safetensors")
  predictor = dinoseg.load(TALK2DINO, tmp_path / "projection.safetensors")  # backbones: config.init (random, tiny)
  image = _image(40, 56)
  result = predictor.predict(image, class_names=["red", "green square", "sky"])
  _check(result, (40, 56), boxes=False)
  assert result.class_names == ("red", "green square", "sky") and result.label_map.shape == (40, 56)
  np.testing.assert_array_equal(result.masks.sum(0), np.ones((40, 56)))  # one segment per class present
  with_bg = predictor.predict(image, class_names=["red", "sky"], with_background=True)
  assert with_bg.class_names == ("background", "red", "sky") and "background" not in with_bg.names
  with pytest.raises(UserError, match="duplicates"):
    predictor.predict(image, class_names=["cat", "cat"])
  # Without a weights file the config's init.projection entry gives the projection (here: none, so random).
  assert dinoseg.load(TALK2DINO, allow_random=True).predict(image, class_names=["sky"]).label_map.max() == 0
