"""The "ov2seg" trainer task and its data: repeat factors against a NumPy transcription of detectron2's formula,
the repeat-factor grain dataset (epochs, determinism, process slices, resumption), norare filtering on a prepared
synthetic LVIS dataset, federated weights from the prepared split, vocabularies, bad settings; (slow) a `:tiny`
`dinoseg train` run."""
import json
import math

import grain
import numpy as np
import pytest

from dinoseg.config import load_config
from dinoseg.data_pipelines import sampling
from dinoseg.errors import UserFileNotFoundError, UserValueError
from dinoseg.train import task as task_lib

CONFIG = "configs/ov2seg/r50_lvis.py:tiny"
RARE_ID = 5  # the synthetic LVIS layout's rare category (frequency 'r')


def reference_repeat_factors(dataset_dicts, repeat_thresh):
  """A NumPy transcription of detectron2's `RepeatFactorTrainingSampler.repeat_factors_from_category_frequency`
  (written out with dictionaries, as there)."""
  category_freq = {}
  for d in dataset_dicts:
    for cat_id in {ann["category_id"] for ann in d["annotations"]}:
      category_freq[cat_id] = category_freq.get(cat_id, 0) + 1
  num_images = len(dataset_dicts)
  for k in category_freq:
    category_freq[k] = category_freq[k] / num_images
  category_rep = {c: max(1.0, math.sqrt(repeat_thresh / f)) for c, f in category_freq.items()}
  out = []
  for d in dataset_dicts:
    cats = {ann["category_id"] for ann in d["annotations"]}
    out.append(max({category_rep[c] for c in cats}, default=1.0))
  return np.asarray(out, np.float64)


def lvis_like_dicts(seed=0, n=40, num_cats=12):
  rng = np.random.default_rng(seed)
  popularity = rng.dirichlet(np.full(num_cats, 0.3))
  dicts = []
  for i in range(n):
    k = int(rng.integers(0, 5))
    cats = rng.choice(num_cats, size=k, p=popularity) + 1
    dicts.append({"image_id": i, "annotations": [{"category_id": int(c)} for c in cats]})
  return dicts


@pytest.mark.parametrize("threshold", [0.001, 0.05, 0.3])
def test_repeat_factors_match_the_reference_formula(threshold):
  dicts = lvis_like_dicts()
  ours = sampling.repeat_factors([np.asarray([a["category_id"] for a in d["annotations"]]) for d in dicts], threshold)
  np.testing.assert_allclose(ours, reference_repeat_factors(dicts, threshold), rtol=1e-12)
  if threshold == 0.3:
    assert ours.max() > 1.5  # rare categories are repeated


def test_repeat_factor_dataset_epochs_determinism_slices_and_resume():
  factors = np.asarray([1.0, 2.5, 0.0, 1.3, 3.0])
  ds = sampling.RepeatFactorDataset(grain.MapDataset.range(5), factors, seed=3)
  for epoch in range(3):
    counts = np.bincount(ds.epoch_order(epoch), minlength=5)
    assert np.all((counts == np.floor(factors)) | (counts == np.ceil(factors))), counts
  means = np.mean([np.bincount(ds.epoch_order(e), minlength=5) for e in range(400)], axis=0)
  np.testing.assert_allclose(means, factors, atol=0.08)
  first = [ds[i] for i in range(60)]
  again = sampling.RepeatFactorDataset(grain.MapDataset.range(5), factors, seed=3)
  assert [again[i] for i in range(60)] == first
  other = sampling.RepeatFactorDataset(grain.MapDataset.range(5), factors, seed=4)
  assert [other[i] for i in range(60)] != first
  # the epochs follow one another: positions of epoch 1 start after epoch 0's length
  n0 = len(ds.epoch_order(0))
  assert first[:n0] == ds.epoch_order(0).tolist() and first[n0:n0 + 5] == ds.epoch_order(1)[:5].tolist()
  # two processes read interleaved, disjoint slices of the same sequence
  parts = [sampling.RepeatFactorDataset(grain.MapDataset.range(5), factors, seed=3, process_index=p, process_count=2)
           for p in range(2)]
  assert [parts[i % 2][i // 2] for i in range(60)] == first
  # finite epochs
  finite = sampling.RepeatFactorDataset(grain.MapDataset.range(5), factors, seed=3, num_epochs=2)
  assert len(finite) == len(ds.epoch_order(0)) + len(ds.epoch_order(1))
  # a grain iterator resumes exactly
  serial = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)  # no prefetch threads: get_state is exact
  it = iter(ds.to_iter_dataset(serial))
  _ = [next(it) for _ in range(7)]
  state = it.get_state()
  expected = [next(it) for _ in range(9)]
  resumed = iter(sampling.RepeatFactorDataset(grain.MapDataset.range(5), factors, seed=3).to_iter_dataset(serial))
  resumed.set_state(state)
  assert [next(resumed) for _ in range(9)] == expected == first[7:16]
  with pytest.raises(ValueError):
    sampling.RepeatFactorDataset(grain.MapDataset.range(5), factors[:4])


@pytest.fixture(scope="module")
def tiny_lvis(tmp_path_factory):
  """A prepared synthetic LVIS dataset (64 px, 10 images per split); image 0 of train is annotated with the rare
  category only, so norare leaves it without annotations. Returns (prepared path, raw train JSON)."""
  from dinoseg.data_pipelines import synth, writer
  root = tmp_path_factory.mktemp("ov2seg_lvis")
  raw, out = root / "raw", root / "data"
  synth.synthesize("lvis", str(raw), num_images=10, image_size=(64, 64), max_objects=4, seed=2)
  path = raw / "lvis_v1_train.json"
  data = json.loads(path.read_text())
  first = min(img["id"] for img in data["images"])
  for a in data["annotations"]:
    if a["image_id"] == first:
      a["category_id"] = RARE_ID
  assert any(a["image_id"] == first for a in data["annotations"])
  path.write_text(json.dumps(data))
  writer.prepare("lvis", str(raw), str(out), num_shards=1, progress=False)
  return str(out), data


def _config(path, **data):
  config = load_config(CONFIG)
  with config.unlocked():
    config.data.path = path
    config.data.update(data)
  return config


def test_norare_drops_rare_annotations_and_images_left_empty(tiny_lvis):
  from dinoseg.data_pipelines import build_train_iterator
  from dinoseg.data_pipelines.dataset import open_dataset
  path, raw = tiny_lvis
  dataset = open_dataset(path)
  np.testing.assert_array_equal(sampling.rare_category_ids(dataset), [RARE_ID])
  by_image = {}
  for a in raw["annotations"]:
    by_image.setdefault(a["image_id"], []).append(a["category_id"])
  ids = dataset.split("train").ids
  keep = [i for i, image_id in enumerate(ids) if any(c != RARE_ID for c in by_image.get(int(image_id), []))]
  with_any = [i for i, image_id in enumerate(ids) if by_image.get(int(image_id))]
  assert len(keep) < len(with_any)  # image 0 (rare only) is dropped
  from dinoseg.data_pipelines import tasks
  for drop_rare, expected in ((True, keep), (False, with_any)):
    cfg = _config(path, drop_rare=drop_rare, repeat_threshold=0.0).data
    task = tasks.get("instance")(cfg, dataset, True)
    assert task.elements("train", dataset)[:, 0].tolist() == expected
  # the batches never hold a rare label (contiguous label of id 5 = 2), but hold the other classes
  rare_label = dataset.category_ids.index(RARE_ID)
  it = build_train_iterator(_config(path, drop_rare=True).data)
  labels = []
  for _ in range(6):
    batch = next(it)
    labels += batch["labels"][batch["valid"]].tolist()
  assert rare_label not in labels and len(set(labels)) >= 3
  it = build_train_iterator(_config(path, drop_rare=False, repeat_threshold=0.0).data)
  seen = []
  for _ in range(6):
    batch = next(it)
    seen += batch["labels"][batch["valid"]].tolist()
  assert rare_label in seen


def test_train_iterator_repeat_factors_from_the_prepared_split_and_resume(tiny_lvis):
  from dinoseg.data_pipelines import build_train_dataset, build_train_iterator
  from dinoseg.data_pipelines.dataset import open_dataset
  path, raw = tiny_lvis
  dataset = open_dataset(path)
  by_image = {}
  for a in raw["annotations"]:
    if a["category_id"] != RARE_ID:
      by_image.setdefault(a["image_id"], []).append({"category_id": a["category_id"]})
  dicts = [{"annotations": by_image[int(i)]} for i in dataset.split("train").ids if by_image.get(int(i))]
  cfg = _config(path, repeat_threshold=0.4).data
  ds = build_train_dataset(cfg)
  expected = reference_repeat_factors(dicts, 0.4)
  # the RepeatFactorDataset under the pipeline: its factors are the reference's on the norare images
  node = ds
  while not isinstance(node, sampling.RepeatFactorDataset):
    node = node._parent  # noqa: SLF001
  np.testing.assert_allclose(node.int_part + node.frac_part, expected)
  assert expected.max() > 1
  it = build_train_iterator(cfg)
  next(it)
  state = it.get_state()
  a = [next(it)["image_id"].tolist() for _ in range(3)]
  it2 = build_train_iterator(cfg)
  it2.set_state(state)
  assert [next(it2)["image_id"].tolist() for _ in range(3)] == a
  # the category index is cached beside the dataset
  assert list((open_dataset(path).path / "cache").glob("category_index-train-*.npz"))


def test_task_registered_vocabulary_and_federated_weights(tiny_lvis):
  from dinoseg.data_pipelines.dataset import open_dataset
  from dinoseg.models.ov2seg.task import OV2SegTask, random_class_embeddings
  path, raw = tiny_lvis
  assert task_lib.get("ov2seg") is OV2SegTask
  task = task_lib.build(_config(path))
  emb = task.class_embeddings("train")
  assert emb.shape == (5, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-6)
  np.testing.assert_array_equal(task.class_embeddings("val"), emb)  # the same rows per category id
  np.testing.assert_array_equal(random_class_embeddings([3], 32), emb[1:2])
  counts = {}
  for img in raw["images"]:
    for c in {a["category_id"] for a in raw["annotations"] if a["image_id"] == img["id"]}:
      counts[c] = counts.get(c, 0) + 1
  ids = open_dataset(path).category_ids
  expected = np.asarray([0.0 if c == RARE_ID else math.sqrt(counts.get(c, 0)) for c in ids], np.float32)
  np.testing.assert_allclose(task.federated_weights(), expected, rtol=1e-6)
  assert task.evaluator() is None and task.eval_iterator(0, 1) is None  # an image dataset: no video evaluation


def test_bad_settings_are_user_errors(tiny_lvis, tmp_path):
  path, _ = tiny_lvis
  config = _config(path)
  with config.unlocked():
    config.vocabulary.source = "clip"
  with pytest.raises(UserValueError, match="vocabulary.source"):
    task_lib.build(config)
  config = _config(path)
  with config.unlocked():
    config.vocabulary.source = "file"
  with pytest.raises(UserValueError, match="train_file"):
    task_lib.build(config).class_embeddings("train")
  with config.unlocked():
    config.vocabulary.train_file = str(tmp_path / "missing.npy")
  with pytest.raises(UserFileNotFoundError):
    task_lib.build(config).class_embeddings("train")
  np.save(tmp_path / "wrong.npy", np.zeros((5, 512), np.float32))
  with config.unlocked():
    config.vocabulary.train_file = str(tmp_path / "wrong.npy")
  with pytest.raises(UserValueError, match="shape"):
    task_lib.build(config).class_embeddings("train")
  config = _config(path)
  with config.unlocked():
    config.vocabulary.source = "names"
  with pytest.raises(UserValueError, match="clip_file"):
    task_lib.build(config).class_embeddings("train")
  config = _config(path)
  with config.unlocked():
    config.model.num_classes = 7
  with pytest.raises(UserValueError, match="num_classes"):
    task_lib.build(config).train_iterator(0, 1)
  with pytest.raises(UserFileNotFoundError):
    task_lib.build(_config(str(tmp_path / "nothing"))).train_iterator(0, 1)
  with pytest.raises(UserValueError, match="unknown data config"):
    from dinoseg.data_pipelines import build_train_iterator
    build_train_iterator({**_config(path).data.to_dict(), "repeat_thresh": 0.1})


@pytest.mark.slow
def test_tiny_dinoseg_train_writes_a_checkpoint_with_finite_loss(tiny_lvis, tmp_path):
  """`dinoseg train --config=configs/ov2seg/r50_lvis.py:tiny` for 4 steps (CPU compilation: minutes)."""
  from dinoseg import cli
  from dinoseg.train.metrics import read_jsonl
  path, _ = tiny_lvis
  workdir = tmp_path / "run"
  rc = cli.main(["train", f"--config={CONFIG}", f"--workdir={workdir}", f"--config.data.path={path}",
                 "--config.data.batch_size=8", "--compile-cache=none"])  # tests run on 8 CPU devices
  assert rc == 0
  assert (workdir / "checkpoints" / "4").is_dir()
  rows = [r for r in read_jsonl(workdir / "metrics.jsonl") if "loss" in r]
  assert rows and all(np.isfinite(r["loss"]) for r in rows)
  assert {"loss_ce", "loss_object_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_2"} <= set(rows[-1])
