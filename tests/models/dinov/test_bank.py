"""DINOv prompt banks (dinoseg.models.dinov.bank): files, validation, example sources, encoding, seeded draws."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dinoseg.config import load_config
from dinoseg.errors import UserError, UserFileNotFoundError, UserValueError
from dinoseg.models.dinov import bank as bank_lib
from dinoseg.models.dinov.evaluate import class_prompts
from dinoseg.models.dinov.model import build_model

TINY = "configs/dinov/swint_sam_coco.py:tiny"


def _bank(dim=8):
  rng = np.random.default_rng(0)
  return bank_lib.bank_from_embeddings({"cat": rng.normal(size=(3, dim)), "dog": rng.normal(size=(1, dim)),
                                        "none": np.zeros((0, dim))}, dim)


def test_write_read_roundtrip_and_refusals(tmp_path):
  bank = _bank()
  index = bank_lib.write_bank(bank, tmp_path / "bank")
  meta = json.loads(index.read_text())
  assert [c["count"] for c in meta["categories"]] == [3, 1, 0] and meta["dim"] == 8
  back = bank_lib.read_bank(tmp_path / "bank", dim=8)
  assert back.names == bank.names
  for c in bank.category_ids:
    np.testing.assert_array_equal(back.embeddings[c], bank.embeddings[c])
    np.testing.assert_array_equal(back.image_ids[c], bank.image_ids[c])
  with pytest.raises(UserValueError, match="not an empty directory"):
    bank_lib.write_bank(bank, tmp_path / "bank")  # never overwritten
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "keep.txt").write_text("user data")
  with pytest.raises(UserValueError):
    bank_lib.write_bank(bank, tmp_path / "other")
  assert (tmp_path / "other" / "keep.txt").read_text() == "user data"
  with pytest.raises(UserValueError, match="8-d"):
    bank_lib.read_bank(tmp_path / "bank", dim=256)


def test_read_rejects_bad_files(tmp_path):
  with pytest.raises(UserFileNotFoundError):
    bank_lib.read_bank(tmp_path)
  bank_lib.write_bank(_bank(), tmp_path / "b")
  np.savez(tmp_path / "b" / "category_1.npz", embeddings=np.zeros((3, 7), np.float32), image_ids=np.zeros(3, np.int64),
           instance_ids=np.zeros(3, np.int64), category_id=np.int64(1), category_name=np.str_("cat"))
  with pytest.raises(UserValueError, match="expected embeddings"):
    bank_lib.read_bank(tmp_path / "b")
  (tmp_path / "b" / "category_1.npz").write_bytes(b"not a zip")
  with pytest.raises(UserValueError, match="not a readable bank file"):
    bank_lib.read_bank(tmp_path / "b")
  (tmp_path / "b" / "category_1.npz").unlink()
  with pytest.raises(UserFileNotFoundError, match="missing"):
    bank_lib.read_bank(tmp_path / "b")
  (tmp_path / "b" / "index.json").write_text("{not json")
  with pytest.raises(UserValueError, match="not a dinoseg DINOv prompt bank"):
    bank_lib.read_bank(tmp_path / "b")


def test_class_prompts_seeded_and_missing_categories():
  bank = _bank()
  p1, v1 = class_prompts(bank, [1, 2, 3, 9], num_examples=16, seed=3)
  p2, v2 = class_prompts(bank, [9, 3, 2, 1], num_examples=16, seed=3)  # order does not change a category's draw
  np.testing.assert_array_equal(p1, p2[::-1])
  assert v1.tolist() == [True, True, False, False] and (p1[2:] == 0).all()
  np.testing.assert_allclose(p1[1], bank.embeddings[2][0], rtol=1e-6)  # one example: its embedding
  draw = np.random.default_rng([3, 1]).integers(0, 3, 16)
  np.testing.assert_allclose(p1[0], bank.embeddings[1][draw].mean(0), rtol=1e-6)
  p3, _ = class_prompts(bank, [1], num_examples=16, seed=4)
  assert not np.allclose(p3[0], p1[0])
  with pytest.raises(UserValueError):
    class_prompts(bank, [1], num_examples=0)


def _write_examples(root):
  root.mkdir()
  rng = np.random.default_rng(1)
  for name in ("a.jpg", "b.png"):
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / name)
  m = np.zeros((40, 56), np.uint8)
  m[5:20, 10:30] = 255
  Image.fromarray(m).save(root / "a.jpg__cat.png")
  Image.fromarray(np.roll(m, 10, 0)).save(root / "a.jpg__dog__1.png")
  Image.fromarray(np.roll(m, 15, 1)).save(root / "b.png__cat__x.png")
  return m > 0


def test_mask_directory_naming(tmp_path):
  m = _write_examples(tmp_path / "ex")
  examples, names = bank_lib.examples_from_path(tmp_path / "ex")
  assert names == {1: "cat", 2: "dog"}
  assert [e.category_ids.tolist() for e in examples] == [[1, 2], [1]]
  np.testing.assert_array_equal(examples[0].masks[0], m)
  Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "ex" / "b.png__cat__small.png")
  with pytest.raises(UserValueError, match="differs from its image"):
    bank_lib.examples_from_mask_dir(tmp_path / "ex")
  (tmp_path / "ex" / "b.png__cat__small.png").unlink()
  Image.fromarray(m.astype(np.uint8)).save(tmp_path / "ex" / "zz.jpg__cat.png")
  with pytest.raises(UserValueError, match="not there"):
    bank_lib.examples_from_mask_dir(tmp_path / "ex")
  with pytest.raises(UserFileNotFoundError):
    bank_lib.examples_from_path(tmp_path / "nothing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserValueError, match="no example masks"):
    bank_lib.examples_from_path(tmp_path / "empty")


def test_coco_json_examples(tmp_path):
  _write_examples(tmp_path / "ex")
  coco = {"images": [{"id": 7, "file_name": "a.jpg", "height": 40, "width": 56}],
          "categories": [{"id": 3, "name": "cat"}, {"id": 4, "name": "dog"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 4, "iscrowd": 0,
                           "segmentation": [[10, 5, 30, 5, 30, 20, 10, 20]]},
                          {"id": 2, "image_id": 7, "category_id": 3, "iscrowd": 1, "segmentation": [[0, 0, 5, 0, 5, 5]]}]}
  (tmp_path / "ex" / "ann.json").write_text(json.dumps(coco))
  examples, names = bank_lib.examples_from_path(tmp_path / "ex")  # a directory with one JSON
  assert names == {3: "cat", 4: "dog"} and len(examples) == 1
  e = examples[0]
  assert e.image_id == 7 and e.category_ids.tolist() == [4] and e.instance_ids.tolist() == [1]  # crowd skipped
  assert e.masks[0, 10, 20] and not e.masks[0, 30, 20]
  coco["annotations"][0]["category_id"] = 99
  (tmp_path / "ex" / "ann.json").write_text(json.dumps(coco))
  with pytest.raises(UserValueError, match="unknown image or category"):
    bank_lib.examples_from_coco_json(tmp_path / "ex" / "ann.json")
  (tmp_path / "ex" / "ann.json").write_text("[")
  with pytest.raises(UserError):
    bank_lib.examples_from_coco_json(tmp_path / "ex" / "ann.json")


@pytest.fixture(scope="module")
def tiny_model():
  config = load_config(TINY)
  model = build_model(config.model)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  return config, model, variables


@pytest.mark.slow  # long: with `pytest -m slow`, keeping the default run under 20 minutes
def test_encoder_matches_model_and_chunks(tiny_model, tmp_path):
  config, model, variables = tiny_model
  rng = np.random.default_rng(2)
  image = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
  masks = np.zeros((3, 48, 40), bool)
  masks[0, 4:20, 4:30] = True
  masks[1, 25:40, 10:35] = True
  masks[2, 0:48, 0:40] = True  # all-ones: a valid prompt
  enc = bank_lib.PromptBankEncoder(model, variables, config, slots=2)  # 3 masks: two calls
  emb, kept = enc.encode(image, masks)
  assert emb.shape == (3, 64) and kept.all()
  canvas, cmasks, valid = bank_lib.resize_for_model(image, masks, config, enc.canvas_hw)
  assert tuple(valid) == (64, 53) and cmasks.shape == (3, 64, 64) and not cmasks[:, :, 53:].any()
  direct = model.apply(variables, canvas[None], cmasks[None], valid[None], method=model.prompt_embeddings)[0]
  np.testing.assert_allclose(emb, np.asarray(direct), rtol=1e-5, atol=1e-5)
  masks[1] = False  # an empty mask is skipped, the others keep their embeddings
  emb2, kept2 = enc.encode(image, masks)
  assert kept2.tolist() == [True, False, True]
  np.testing.assert_allclose(emb2, emb[[0, 2]], rtol=1e-5, atol=1e-5)
  with pytest.raises(UserValueError, match="image's size"):
    enc.encode(image, masks[:, :10])
  # build + write + read from a mask directory
  _write_examples(tmp_path / "ex")
  examples, names = bank_lib.examples_from_path(tmp_path / "ex")
  bank = bank_lib.build_bank(enc, examples, names, source="ex")
  assert {bank.names[c]: bank.count(c) for c in bank.category_ids} == {"cat": 2, "dog": 1}
  assert bank.image_ids[1].tolist() == [0, 1] and bank.instance_ids[1].tolist() == [0, 0]
  bank_lib.write_bank(bank, tmp_path / "bank")
  back = bank_lib.read_bank(tmp_path / "bank", dim=64)
  np.testing.assert_array_equal(back.embeddings[1], bank.embeddings[1])


# ----------------------------------------------------------------------------- the reference's filing order

def _reference_get_content_labels(gt_classes):
  """Host transcription of the reference's `get_content` labels for one image: `getIdx` (unique rows of
  a[None] - a[:, None], sorted, reversed and zipped with the sorted classes), the per-category dict in that
  order, then `torch.cat([full_like(v, k) for k, v in sampled_examples_by_catetory.items()])`."""
  a = np.asarray(gt_classes, np.int64)
  rows = np.unique(a[None, :] - a[:, None], axis=0)  # torch.unique(dim=0): lexicographically sorted rows
  groups = [np.arange(len(a))[r == 0] for r in rows]
  by_category = {str(k): v for k, v in zip(np.unique(a), groups[::-1])}
  assert all((a[v] == int(k)).all() for k, v in by_category.items())  # getIdx pairs each class with its own
  return np.concatenate([np.full(len(v), int(k)) for k, v in by_category.items()])


class _InstanceEncoder:
  """A stand-in for PromptBankEncoder (build_bank reads `config`, `dim`, `encode`): instance i of an image is
  encoded as [image_id, i, mask area, 0...], empty masks skipped as the real encoder skips them."""

  def __init__(self, config, dim=4):
    self.config, self.dim = config, dim

  def encode(self, image, masks):
    kept = masks.reshape(len(masks), -1).any(-1)
    rows = [[float(image[0, 0, 0]), float(i), float(m.sum())] + [0.0] * (self.dim - 3)
            for i, m in enumerate(masks) if kept[i]]
    return np.asarray(rows, np.float32).reshape(-1, self.dim), kept


def _filing_examples():
  masks = np.zeros((5, 8, 8), bool)
  for i in range(4):
    masks[i, i, : i + 1] = True  # areas 1, 2, 3, 4
  image = np.full((8, 8, 3), 7, np.uint8)  # image id 7 in pixel (0, 0)
  first = bank_lib.Example(7, image, masks[:4], np.asarray([5, 1, 5, 7]), np.asarray([70, 71, 72, 73]))
  image2 = np.full((8, 8, 3), 9, np.uint8)
  second = bank_lib.Example(9, image2, masks[[0, 4, 1]], np.asarray([3, 1, 2]),  # its class-1 mask is empty
                            np.asarray([90, 91, 92]))
  return [first, second], {1: "a", 2: "b", 3: "c", 5: "e", 7: "g"}


def test_reference_bank_order():
  """bank order "reference": an image with classes [5, 1, 5, 7] files its instance-ordered embeddings under
  [1, 5, 5, 7], as the transcription of the reference's labels zipped with its tokens; "clean" (the default)
  under their own categories; the config's evaluation.bank_order picks the order; bad values are refused."""
  assert _reference_get_content_labels([5, 1, 5, 7]).tolist() == [1, 5, 5, 7]
  assert bank_lib.reference_filing(np.asarray([5, 1, 5, 7])).tolist() == [1, 5, 5, 7]
  rng = np.random.default_rng(0)
  for _ in range(20):
    classes = rng.integers(0, 12, rng.integers(1, 9))
    np.testing.assert_array_equal(bank_lib.reference_filing(classes), _reference_get_content_labels(classes))
  examples, names = _filing_examples()
  config = load_config(TINY)
  ref = bank_lib.build_bank(_InstanceEncoder(config), examples, names, order="reference")
  # expected: zip(reference labels, tokens in instance order) per image, over the encoded (non-empty) instances
  expected = {c: [] for c in names}
  for ex in examples:
    kept = ex.masks.reshape(len(ex.masks), -1).any(-1)
    tokens = [(ex.image_id, i) for i in np.nonzero(kept)[0]]
    for label, token in zip(_reference_get_content_labels(ex.category_ids[kept]), tokens):
      expected[int(label)].append(token)
  got = {c: [(int(e[0]), int(e[1])) for e in ref.embeddings[c]] for c in names}
  assert got == expected
  assert got[1] == [(7, 0)] and got[5] == [(7, 1), (7, 2)] and got[7] == [(7, 3)]  # class-5, -1, -5, -7 instances
  assert got[2] == [(9, 0)] and got[3] == [(9, 2)]  # kept classes [3, 2] (the empty one dropped) -> [2, 3]
  assert ref.instance_ids[1].tolist() == [70] and ref.instance_ids[5].tolist() == [71, 72]  # ids stay with tokens
  clean = bank_lib.build_bank(_InstanceEncoder(config), examples, names)  # the default
  got_clean = {c: [(int(e[0]), int(e[1])) for e in clean.embeddings[c]] for c in names}
  assert got_clean == {1: [(7, 1)], 2: [(9, 2)], 3: [(9, 0)], 5: [(7, 0), (7, 2)], 7: [(7, 3)]}
  configured = load_config(TINY, ["evaluation.bank_order=reference"])
  from_config = bank_lib.build_bank(_InstanceEncoder(configured), examples, names)
  assert {c: from_config.embeddings[c].tolist() for c in names} == {c: ref.embeddings[c].tolist() for c in names}
  with pytest.raises(UserValueError, match="bank order"):
    bank_lib.build_bank(_InstanceEncoder(config), examples, names, order="sorted")


def test_bank_order_setting_is_checked(tmp_path, capsys):
  from dinoseg import cli
  from dinoseg.config import ConfigError
  assert load_config(TINY).evaluation.bank_order == "clean"
  with pytest.raises(ConfigError, match="evaluation.bank_order"):
    load_config(TINY, ["evaluation.bank_order=sorted"])
  code = cli.main(["dinov", "bank", f"--config={TINY}", "--random-init", f"--data={tmp_path}",
                   f"--out={tmp_path / 'bank'}", "--config.evaluation.bank_order=sorted"])
  assert code == 2 and "evaluation.bank_order must be one of" in capsys.readouterr().err
