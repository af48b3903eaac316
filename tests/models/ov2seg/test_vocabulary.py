"""OV2Seg vocabularies (dinoseg/models/ov2seg/vocabulary.py): DetPro .npy files, names from dataset JSON,
CLIP text embeddings with template ensembling (against a NumPy re-computation on a tiny random tower)."""
import functools
import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.backbones.clip_text import ClipTextTransformer
from dinoseg.backbones.clip_tokenizer import tokenize
from dinoseg.errors import UserError, UserFileNotFoundError, UserValueError
from dinoseg.models.ov2seg import vocabulary

# A tiny random text tower with CLIP's real vocabulary and context (the tokenizer's ids must fit).
TINY = dict(vocab_size=49408, context_length=77, width=16, num_heads=2, depth=2, embed_dim=12)


@functools.lru_cache(maxsize=None)
def _tiny_tower():
  model = ClipTextTransformer(**TINY)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8), jnp.int32))["params"]
  rng = np.random.default_rng(0)  # random weights without compiling the initialisers
  params = jax.tree_util.tree_map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)
  return model, params


# ----------------------------------------------------------------------------- .npy files

def test_reads_class_embedding_files(tmp_path, rng):
  emb = rng.normal(size=(7, 512))
  np.save(tmp_path / "v64.npy", emb)  # float64 on disk -> float32
  out = vocabulary.read_class_embeddings(tmp_path / "v64.npy", num_classes=7)
  assert out.dtype == np.float32 and out.shape == (7, 512)
  np.testing.assert_array_equal(out, emb.astype(np.float32))
  path = vocabulary.save_class_embeddings(tmp_path / "saved.npy", emb)
  np.testing.assert_array_equal(vocabulary.read_class_embeddings(path), emb.astype(np.float32))
  small = vocabulary.read_class_embeddings(vocabulary.save_class_embeddings(tmp_path / "d12.npy", emb[:, :12]), dim=12)
  assert small.shape == (7, 12)


@pytest.mark.parametrize("array, match", [
    (np.zeros((7, 256), np.float32), r"shape \(7, 256\)"),
    (np.zeros((512,), np.float32), r"shape \(512,\)"),
    (np.zeros((2, 7, 512), np.float32), "shape"),
    (np.zeros((0, 512), np.float32), "empty"),
    (np.zeros((7, 512), np.int32), "int32"),
    (np.full((7, 512), np.nan, np.float32), "non-finite"),
])
def test_bad_class_embedding_arrays(tmp_path, array, match):
  np.save(tmp_path / "bad.npy", array)
  with pytest.raises(UserValueError, match=match):
    vocabulary.read_class_embeddings(tmp_path / "bad.npy")


def test_wrong_number_of_classes(tmp_path):
  np.save(tmp_path / "v.npy", np.ones((40, 512), np.float32))
  with pytest.raises(UserValueError, match="40 class embeddings, expected 25"):
    vocabulary.read_class_embeddings(tmp_path / "v.npy", num_classes=25)


def test_corrupt_missing_and_unsafe_files(tmp_path):
  with pytest.raises(UserFileNotFoundError):
    vocabulary.read_class_embeddings(tmp_path / "missing.npy")
  (tmp_path / "noise.npy").write_bytes(b"\x00garbage, not numpy" * 10)
  with pytest.raises(UserValueError, match="noise.npy"):
    vocabulary.read_class_embeddings(tmp_path / "noise.npy")
  np.save(tmp_path / "cut.npy", np.ones((40, 512), np.float32))
  data = (tmp_path / "cut.npy").read_bytes()
  (tmp_path / "cut.npy").write_bytes(data[:len(data) // 2])
  with pytest.raises(UserValueError, match="cut.npy"):
    vocabulary.read_class_embeddings(tmp_path / "cut.npy")
  # A pickled object array is refused without unpickling it.
  np.save(tmp_path / "objects.npy", np.array([{"boom": 1}, None], dtype=object), allow_pickle=True)
  with pytest.raises(UserValueError, match="objects.npy"):
    vocabulary.read_class_embeddings(tmp_path / "objects.npy")
  (tmp_path / "raw.pkl").write_bytes(pickle.dumps(np.ones((3, 512))))
  with pytest.raises(UserValueError):
    vocabulary.read_class_embeddings(tmp_path / "raw.pkl")
  np.savez(tmp_path / "archive.npz", a=np.ones((3, 512)))
  with pytest.raises(UserValueError, match="npz"):
    vocabulary.read_class_embeddings(tmp_path / "archive.npz")
  with pytest.raises(UserValueError, match=".npy"):
    vocabulary.save_class_embeddings(tmp_path / "v.txt", np.ones((3, 512)))


# ----------------------------------------------------------------------------- class names

def test_category_names_from_dataset_json(tmp_path):
  coco = {"images": [], "annotations": [],
          "categories": [{"supercategory": "animal", "id": 18, "name": "dog"},
                         {"supercategory": "person", "id": 1, "name": "person"},
                         {"supercategory": "vehicle", "id": 3, "name": "car"}]}
  (tmp_path / "coco.json").write_text(json.dumps(coco))
  assert vocabulary.category_names(tmp_path / "coco.json") == ["person", "car", "dog"]
  lvis = {"categories": [{"id": 2, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"],
                          "frequency": "c", "synset": "aerosol.n.02", "def": "a dispenser"},
                         {"id": 1, "name": "acorn", "synonyms": ["acorn"], "frequency": "r"}]}
  assert vocabulary.category_names(lvis) == ["acorn", "aerosol_can"]
  lvvis = [{"id": 3, "name": "aerosol_can", "partition": 1}, {"id": 1, "name": "accordion", "partition": 3},
           {"id": 2, "name": "action_camera", "partition": 3}]
  assert vocabulary.category_names(lvvis) == ["accordion", "action_camera", "aerosol_can"]
  ytvis = {"videos": [], "annotations": [], "categories": [{"id": 2, "name": "giant_panda"},
                                                           {"id": 1, "name": "person"}]}
  assert vocabulary.category_names(ytvis) == ["person", "giant_panda"]


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"images": []}), "no 'categories'"),
    (json.dumps({"categories": []}), "non-empty"),
    (json.dumps({"categories": [{"id": 1}]}), "category 0"),
    (json.dumps({"categories": [{"id": "1", "name": "a"}]}), "category 0"),
    (json.dumps({"categories": [{"id": 1, "name": " "}]}), "category 0"),
    (json.dumps({"categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}), "repeated"),
])
def test_bad_categories(tmp_path, content, match):
  (tmp_path / "c.json").write_text(content)
  with pytest.raises(UserValueError, match=match):
    vocabulary.category_names(tmp_path / "c.json")


def test_missing_categories_file(tmp_path):
  with pytest.raises(UserFileNotFoundError):
    vocabulary.category_names(tmp_path / "none.json")


def test_prompts():
  assert len(vocabulary.VILD_TEMPLATES) == 63 and len(set(vocabulary.VILD_TEMPLATES)) == 63
  prompts = vocabulary.class_prompts(["aerosol_can", "Trash/Garbage"], ("a photo of {article} {}.", "the {}."))
  assert prompts == ["a photo of an aerosol can.", "the aerosol can.", "a photo of a trash or garbage.",
                     "the trash or garbage."]
  for names in ([], ["cat", ""]):
    with pytest.raises(UserValueError):
      vocabulary.class_prompts(names)
  with pytest.raises(UserValueError, match="templates"):
    vocabulary.class_prompts(["cat"], ("no slot",))


# ----------------------------------------------------------------------------- CLIP text embeddings

def test_text_embeddings_ensemble_templates_like_numpy():
  model, params = _tiny_tower()
  names = ["aerosol_can", "apple", "traffic light"]
  templates = vocabulary.VILD_TEMPLATES[:4] + vocabulary.VILD_TEMPLATES[-3:]
  ours = vocabulary.text_class_embeddings(names, model, params, templates=templates, chunk_size=5)
  # NumPy: each prompt encoded alone at the full 77-token context, normalised, averaged, normalised.
  prompts = [t.format(n.replace("_", " "), article="an" if n[0] in "aeiou" else "a")
             for n in names for t in templates]
  raw = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(tokenize(prompts))).text_embeds,
                   np.float64).reshape(len(names), len(templates), -1)
  unit = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
  mean = unit.mean(1)
  expected = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
  assert ours.shape == (3, TINY["embed_dim"]) and ours.dtype == np.float32
  assert_close(ours, expected, rtol=1e-5, name="ensembled class embeddings")
  # Not the mean of raw embeddings (Talk2DINO's rule): the per-template normalisation matters here.
  raw_mean = raw.mean(1) / np.linalg.norm(raw.mean(1), axis=-1, keepdims=True)
  assert np.abs(raw_mean - expected).max() > 1e-4


def test_text_embeddings_bad_names():
  model, params = _tiny_tower()
  with pytest.raises(UserValueError, match="empty"):
    vocabulary.text_class_embeddings([], model, params)
  with pytest.raises(UserValueError, match="too long") as err:
    vocabulary.text_class_embeddings(["cat", "very " * 80 + "long"], model, params, templates=("{}",))
  assert "very very" in str(err.value)


def test_clip_weights_from_a_state_dict_file(tmp_path):
  from dinoseg.convert.dinov2_clip import clip_text_converter  # noqa: PLC0415
  model, params = _tiny_tower()
  state = clip_text_converter("tiny", TINY["depth"]).to_torch(params)
  state["visual.proj"] = np.zeros((3, 3), np.float32)  # a full CLIP checkpoint's image keys are ignored
  state["logit_scale"] = np.zeros((), np.float32)
  np.savez(tmp_path / "clip.npz", **state)
  overrides = {k: v for k, v in TINY.items() if k in ("width", "num_heads", "depth", "embed_dim")}
  loaded_model, loaded = vocabulary.load_clip_text(tmp_path / "clip.npz", **overrides)
  assert loaded_model.depth == TINY["depth"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
  emb = vocabulary.class_embeddings_from_names(["cat", "dog"], tmp_path / "clip.npz", templates=("a {}.", "the {}."),
                                               clip_overrides=overrides)
  direct = vocabulary.text_class_embeddings(["cat", "dog"], model, params, templates=("a {}.", "the {}."))
  np.testing.assert_allclose(emb, direct, rtol=1e-6)
  with pytest.raises(UserError):  # depth 3 does not fit a depth-2 file
    vocabulary.load_clip_text(tmp_path / "clip.npz", **{**overrides, "depth": 3})
  with pytest.raises(UserError, match="do not fit"):  # a wider tower: same keys, other shapes
    vocabulary.load_clip_text(tmp_path / "clip.npz", **{**overrides, "width": 32})
  with pytest.raises(UserFileNotFoundError):
    vocabulary.load_clip_text(tmp_path / "missing.pth", **overrides)
