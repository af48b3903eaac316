"""Talk2DINO feature pre-extraction (resumable ArrayRecord shards), the caption source and training steps."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.config import load_config
from dinoseg.models.talk2dino import features as feat
from dinoseg.models.talk2dino import task as t2d_task
from dinoseg.models.talk2dino.model import Talk2Dino, build_model, init_params
from dinoseg.models.talk2dino.pooling import average_head_pooling, disentangled_head_pooling
from dinoseg.models.talk2dino.projection import TextProjection
from dinoseg.ops import pixels

IMAGE_SIZE = 28
WORDS = ["cat", "dog", "red", "blue", "car", "tree", "sky", "small", "large", "grass"]


@functools.lru_cache(maxsize=None)
def _model():
  """The tiny config's model (shares compilations with the tiny pipeline tests)."""
  model = build_model(load_config("configs/talk2dino/vitb_mlp_infonce.py:tiny").model)
  return model, init_params(model, jax.random.key(0), image_size=IMAGE_SIZE)


def _samples(n=10, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    shape = (int(rng.integers(20, 40)), int(rng.integers(20, 40)), 3)
    caps = [" ".join(rng.choice(WORDS, 4)) for _ in range(int(rng.integers(1, 4)))]
    out.append(feat.ImageSample(image_id=100 + i, image=rng.integers(0, 256, shape, dtype=np.uint8), captions=caps,
                                caption_ids=[1000 * i + j for j in range(len(caps))]))
  return out


class _Counting(list):
  """A sample list that counts reads (to check resumption)."""
  reads = 0

  def __getitem__(self, i):
    type(self).reads += 1
    return super().__getitem__(i)


def test_extraction_writes_resumable_shards_with_the_pooled_features(tmp_path):
  model, params = _model()
  extractor = feat.FeatureExtractor(model, params, image_batch=8, text_batch=32)
  samples = _Counting(_samples())
  manifest = feat.extract_features(samples, extractor, tmp_path, shard_size=4, image_size=IMAGE_SIZE, progress=False)
  assert manifest["complete"] and len(manifest["shards"]) == 3
  assert sum(len(v) for v in manifest["shards"].values()) == len(samples)
  # Records hold what the model computes directly.
  from array_record.python.array_record_module import ArrayRecordReader
  first = sorted(manifest["shards"])[0]
  reader = ArrayRecordReader(str(tmp_path / first))
  rec = feat.decode_record(reader.read([0])[0])
  reader.close()
  image = jnp.asarray(feat.preprocess_image(samples[0].image, IMAGE_SIZE))[None]
  f = model.apply({"params": params}, image, method=Talk2Dino.encode_image)
  assert_close(rec["avg_self_attn_out"], average_head_pooling(f.cls_logits, f.patch_tokens)[0])
  assert_close(rec["disentangled_self_attn"], disentangled_head_pooling(f.cls_logits, f.patch_tokens)[0])
  assert rec["disentangled_self_attn"].shape == (2, 16)  # 2 heads, width 16
  assert rec["ann_feats"].shape == (len(samples[0].captions), 16)
  assert_close(rec["ann_feats"], extractor.captions(samples[0].captions), rtol=1e-6)
  np.testing.assert_array_equal(rec["caption_ids"], samples[0].caption_ids)
  # A second run reads nothing; a removed shard is redone alone.
  _Counting.reads = 0
  feat.extract_features(samples, extractor, tmp_path, shard_size=4, image_size=IMAGE_SIZE, progress=False)
  assert _Counting.reads == 0
  (tmp_path / first).unlink()
  feat.extract_features(samples, extractor, tmp_path, shard_size=4, image_size=IMAGE_SIZE, progress=False)
  assert _Counting.reads == 4 and (tmp_path / first).exists()
  with pytest.raises(ValueError, match="other settings"):
    feat.extract_features(samples, extractor, tmp_path, shard_size=5, image_size=IMAGE_SIZE, progress=False)


def test_caption_source_and_padded_batches(tmp_path):
  model, params = _model()
  samples = _samples(7, seed=1)
  feat.extract_features(samples, feat.FeatureExtractor(model, params, 8, 32), tmp_path, shard_size=3,
                        image_size=IMAGE_SIZE, progress=False)
  source = feat.CaptionFeatureSource(tmp_path)
  owners = [(s.image_id, cid) for s in samples for cid in s.caption_ids]
  assert len(source) == len(owners)
  for i in (0, len(owners) // 2, len(owners) - 1):
    item = source[i]
    assert (int(item["image_id"]), int(item["caption_id"])) == owners[i]
    assert item["image"].shape == (2, 16) and item["text"].shape == (16,)
  assert feat.CaptionFeatureSource(tmp_path, "avg_self_attn_out")[0]["image"].shape == (16,)
  batches = list(feat.caption_batches(source, 4, seed=0, epoch=0))
  assert len(batches) == -(-len(source) // 4)
  assert all(b["text"].shape == (4, 16) for b in batches)
  assert int(sum(b["valid"].sum() for b in batches)) == len(source)
  ids = lambda e: [float(b["text"][0, 0]) for b in feat.caption_batches(source, 4, seed=0, epoch=e)]  # noqa: E731
  assert ids(0) == ids(0) and ids(0) != ids(1)
  with pytest.raises(IndexError):
    source[len(source)]
  with pytest.raises(ValueError):
    feat.CaptionFeatureSource(tmp_path, "cls")


def test_training_steps_reduce_the_loss():
  """The task's loss (max-score heads in training, averaged features in validation) under Adam steps."""
  import optax
  rng = np.random.default_rng(3)
  b, h, d, e = 8, 3, 16, 12
  heads = rng.normal(size=(b, h, d)).astype(np.float32)
  text = rng.normal(size=(b, e)).astype(np.float32)
  batch = {"image": jnp.asarray(heads), "text": jnp.asarray(text), "valid": jnp.ones((b,), bool)}
  proj = TextProjection(embed_dim=d)
  params = proj.init(jax.random.key(0), jnp.zeros((1, e)))["params"]
  opt = optax.adam(1e-2)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(lambda p: t2d_task.batch_loss(proj, p, batch))(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  first = float(t2d_task.batch_loss(proj, params, batch))
  for _ in range(30):
    params, state, loss = step(params, state)
  assert float(loss) < 0.5 * first
  assert np.isfinite(float(t2d_task.batch_loss(proj, params, {**batch, "image": batch["image"].mean(1)})))
  with pytest.raises(ValueError):
    t2d_task.batch_loss(proj, params, {**batch, "image": batch["image"][..., None]})


def test_preprocessing_geometry_follows_torchvision():
  assert feat.resize_crop_size(375, 500) == (448, 597, 0, 74)
  assert feat.resize_crop_size(640, 427) == (671, 448, 112, 0)
  assert feat.resize_crop_size(448, 448) == (448, 448, 0, 0)
  x = feat.preprocess_image(np.full((30, 50, 3), 255, np.uint8), size=28)
  assert x.shape == (28, 28, 3)
  np.testing.assert_allclose(x[0, 0], (1 - np.asarray(pixels.IMAGENET_MEAN)) / np.asarray(pixels.IMAGENET_STD), rtol=1e-5)
  gray = feat.preprocess_image(_gray(), size=28)
  assert gray.shape == (28, 28, 3)
  with pytest.raises(ValueError):
    feat.preprocess_image(np.zeros((10, 10), np.uint8))
  with pytest.raises(ValueError):
    feat.shard_ranges(10, 0)
  with pytest.raises(FileNotFoundError):
    feat.read_manifest("/nonexistent/dir")
  assert json.loads(json.dumps(feat.shard_ranges(5, 2))) == [[0, 2], [2, 4], [4, 5]]


def _gray():
  from PIL import Image
  return Image.fromarray(np.zeros((30, 40), np.uint8), mode="L")
