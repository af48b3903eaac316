"""OV2Seg video inference (dinoseg/models/ov2seg/predict.py, evaluate.py, dinoseg/video_io.py) and
`dinoseg predict` on videos: the streaming association against the all-at-once `video.video_instances`,
a tiny random-weight model on synthetic frames (overlays, GIF, results JSON, one colour per track), video AP
on a prepared synthetic LV-VIS split, and the bad inputs (one line, exit status 2).

The tiny model (configs/ov2seg/r50_lvis.py:tiny with 1 encoder and 1 decoder layer) gets deterministic random
weights from NumPy (initialising it through Flax compiles for a minute on 2 shared cores); every test that runs
it uses the same input size, so the forward compiles once per session (`predict.frame_predictions` is jitted
with the model static)."""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg import cli, video_io
from dinoseg.data_pipelines import synth, writer
from dinoseg.errors import UserError, UserValueError
from dinoseg.models.ov2seg import evaluate as evaluate_lib
from dinoseg.models.ov2seg import predict as predict_lib
from dinoseg.models.ov2seg import video as video_lib
from dinoseg.train import task as task_lib

ROOT = pathlib.Path(__file__).resolve().parents[3]
BASE_CONFIG = ROOT / "configs" / "ov2seg" / "r50_lvis.py"
SMALL = ["model.decoder.dec_layers=1", "model.pixel_decoder.num_encoder_layers=1"]
EMBED = 32  # the tiny classifier's class-embedding width
# A tiny random CLIP text tower with CLIP's real vocabulary and context (the tokenizer's ids must fit).
TINY_CLIP = dict(vocab_size=49408, context_length=77, width=16, num_heads=2, depth=2, embed_dim=EMBED)
CLIP_OVERRIDES = {k: TINY_CLIP[k] for k in ("width", "num_heads", "depth", "embed_dim")}


# ----------------------------------------------------------------------------- helpers


def random_variables(abstract, seed: int = 0) -> dict:
  """Deterministic random variables of the given shapes: fan-in scaled kernels, unit norms, FrozenBN statistics
  with positive variances."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = str(getattr(path[-1], "key", path[-1]))
    shape = tuple(s.shape)
    if name == "running_var":
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name in ("running_mean", "bias", "in_proj_bias"):
      return (0.05 * rng.standard_normal(shape)).astype(np.float32)
    if name in ("weight", "scale"):
      return (1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    if name in ("embedding", "level_embed"):
      return rng.standard_normal(shape).astype(np.float32)
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return (rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def tiny_config(**vocabulary):
  from dinoseg.config import load_config
  config = load_config(f"{BASE_CONFIG}:tiny", SMALL)
  with config.unlocked():
    for key, value in vocabulary.items():
      config.vocabulary[key] = value
  return config


@functools.lru_cache(maxsize=None)
def tiny_model():
  from dinoseg.models.ov2seg.model import build_model
  config = tiny_config()
  model = build_model(config.model)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((3, EMBED)))
  return model, random_variables(dict(abstract))


def write_vocabulary(path, num_classes: int, seed: int = 1, dim: int = EMBED) -> pathlib.Path:
  np.save(path, np.random.default_rng(seed).standard_normal((num_classes, dim)).astype(np.float32))
  return pathlib.Path(path)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  """A synthetic LV-VIS layout (2 val videos of 5 frames of 48 x 48) and its prepared dataset."""
  root = tmp_path_factory.mktemp("ov2seg_video")
  synth.synthesize("lvvis", str(root / "raw"), num_images=2, image_size=(48, 48), max_objects=2, seed=3,
                   num_frames=5, splits=("val",))
  writer.prepare("lvvis", str(root / "raw"), str(root / "data"), splits=("val",), num_shards=1, progress=False)
  videos = sorted((root / "raw" / "val" / "JPEGImages").iterdir())
  return {"root": root, "videos": videos, "data": root / "data",
          "categories": json.loads((root / "raw" / "val_instances.json").read_text())["categories"]}


@pytest.fixture(scope="module")
def predictor(synthetic):
  model, variables = tiny_model()
  vocabulary = write_vocabulary(synthetic["root"] / "vocab.npy", 5)
  config = tiny_config()
  return predict_lib.OV2SegVideoPredictor(config, variables, classes="circle,square,triangle,hexagon,star",
                                          vocabulary=vocabulary)


# ----------------------------------------------------------------------------- streaming association


def _random_video(t=7, q=6, c=5, d=8, h=8, w=12, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(t, q, c + 1)).astype(np.float32)
  logits[..., -1] = 0
  return (logits, rng.normal(size=(t, q, 2)).astype(np.float32), rng.normal(size=(t, q, h, w)).astype(np.float32),
          rng.normal(size=(t, q, d)).astype(np.float32))


def _stream(settings, logits, objectness, masks, embeddings, window, class_head=None):
  assoc = predict_lib.StreamingAssociation(settings, class_head=class_head)
  t = logits.shape[0]
  for start in range(0, t, window):
    n = min(window, t - start)

    def pad(x):
      return np.concatenate([x[start:start + n], np.repeat(x[start + n - 1:start + n], window - n, axis=0)])
    assoc.add({"logits": pad(logits), "objectness": pad(objectness), "masks": pad(masks),
               "embeddings": pad(embeddings)}, n)
  return assoc


@pytest.mark.parametrize("class_source", ["frame_mean", "memory"])
def test_streaming_association_equals_all_at_once(class_source):
  logits, objectness, masks, embeddings = _random_video()
  head = np.random.default_rng(5).normal(size=(8, 6)).astype(np.float32)
  class_head = (lambda m: jnp.matmul(m, head, precision="highest")) if class_source == "memory" else None  # noqa: E731
  settings = video_lib.VideoInferenceSettings(detections_per_image=10, class_source=class_source)
  ref = jax.jit(lambda *a: video_lib.video_instances(
      *a, settings=settings, class_head=class_head, valid_hw=jnp.array([30, 44]), output_hw=jnp.array([40, 50]),
      canvas_hw=(40, 50)))(logits, objectness, masks, embeddings)
  for window in ((3, 10) if class_source == "frame_mean" else (3,)):  # carried across windows; one padded window
    with _stream(settings, logits, objectness, masks, embeddings, window, class_head) as assoc:
      selection = assoc.finish()
      np.testing.assert_array_equal(selection.labels, ref.labels)
      np.testing.assert_array_equal(selection.track_index, ref.track_index)
      # Same operations in the same order; XLA may fuse the final division differently (1 ulp).
      np.testing.assert_allclose(selection.class_logits, ref.association.class_logits, rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(assoc._state.memory, ref.association.memory, rtol=1e-6, atol=1e-7)
      np.testing.assert_array_equal(assoc.frame_kept, ref.frame_kept)
      np.testing.assert_allclose(assoc.scores, ref.scores, rtol=1e-6, atol=1e-7)
      masks_out = np.concatenate([m for _, m in assoc.mask_windows((32, 48), (30, 44), (40, 50))], axis=1)
      np.testing.assert_array_equal(masks_out, ref.masks)
      assert assoc.num_frames == 7


@pytest.mark.parametrize("name", ["random", "tracks"])
def test_streaming_association_matches_the_reference(name):
  """Windows of 3 frames against the reference's own video post-processing (fixtures of test_video.py:
  scripts/make_ov2seg_association_fixtures.py, haochenheheda/LVVIS `OV2SegVideo` on stored per-frame outputs)."""
  with np.load(ROOT / "tests" / "fixtures" / "ov2seg" / f"association_{name}.npz", allow_pickle=False) as z:
    case = {k: z[k] for k in z.files}
  shape = tuple(case["ref/masks_shape"])
  size = int(np.prod(shape))
  ref_masks = np.unpackbits(case["ref/masks_packed"])[:size].reshape(shape).astype(bool)
  near_zero = np.unpackbits(case["ref/near_zero_packed"])[:size].reshape(shape).astype(bool)
  settings = video_lib.VideoInferenceSettings()
  with _stream(settings, case["logits"], case["objectness"], case["masks"], case["embeddings"], 3) as assoc:
    selection = assoc.finish()
    np.testing.assert_array_equal(assoc.perm, case["ref/perm"])
    np.testing.assert_allclose(selection.class_logits, case["ref/class_logits"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(selection.objectness_logits, case["ref/objectness_logits"], rtol=1e-6, atol=1e-6)
    ref_keys = list(zip(case["ref/track_index"].tolist(), case["ref/labels"].tolist()))
    our_keys = list(zip(np.asarray(selection.track_index).tolist(), np.asarray(selection.labels).tolist()))
    assert sorted(our_keys) == sorted(ref_keys)  # the reference's top-k order is unspecified: compare as sets
    order = np.array([ref_keys.index(k) for k in our_keys])
    np.testing.assert_allclose(assoc.scores, case["ref/scores"][order], rtol=1e-5)
    np.testing.assert_array_equal(assoc.frame_kept, ~np.all(case["ref/mask_logits"][order] == -1, axis=(2, 3)))
    out_hw = tuple(int(v) for v in case["output_size"])
    masks = np.concatenate([m for _, m in assoc.mask_windows(tuple(int(v) for v in case["padded_size"]),
                                                             case["image_size"], out_hw)], axis=1)
    differ = masks != ref_masks[order]
    assert not np.any(differ & ~near_zero[order]), int((differ & ~near_zero[order]).sum())


def test_streaming_association_refuses_memory_variant_without_head():
  with pytest.raises(UserValueError, match="class head"):
    predict_lib.StreamingAssociation(video_lib.VideoInferenceSettings(class_source="memory"))


# ----------------------------------------------------------------------------- predictor


def test_predictor_on_synthetic_frames(predictor, synthetic, tmp_path):
  frames_dir = synthetic["videos"][0]
  video = video_io.open_video(frames_dir)
  assert video.num_frames == 5 and video.size == (48, 48)
  result = predictor.predict(video, video_id=7)
  k = predictor.settings.detections_per_image
  assert len(result) == k and result.scores.dtype == np.float32 and np.all((result.scores >= 0) & (result.scores <= 1))
  assert np.all(np.diff(result.scores[np.argsort(-result.scores)]) <= 0)
  assert all(len(s) == 5 and s[0]["size"] == [48, 48] for s in result.segmentations)
  assert result.names == tuple(predictor.class_names[i] for i in result.labels)

  # Windows vs all at once: the same per-frame outputs through video.video_instances give the same instances.
  model, variables = tiny_model()
  (nh, nw), padded = predictor.geometry(video.size)
  from PIL import Image
  frames = np.stack([np.asarray(Image.fromarray(f).resize((nw, nh), Image.BILINEAR), np.float32)
                     for _, _, f in video.frames()])
  canvas = np.zeros((5, *padded, 3), np.float32)
  canvas[:, :nh, :nw] = frames
  window = predictor.settings.window_size
  outputs = video_lib.run_in_windows(
      lambda x: predict_lib.frame_predictions(model, variables, x, predictor.class_embeddings,
                                              np.tile([[nh, nw]], (window, 1)).astype(np.int32)), canvas, window)
  ref = video_lib.video_instances(
      jnp.asarray(outputs["logits"]), jnp.asarray(outputs["objectness"]), jnp.asarray(outputs["masks"]),
      jnp.asarray(outputs["embeddings"]), settings=predictor.settings, padded_hw=padded,
      valid_hw=jnp.array([nh, nw]), output_hw=jnp.array([48, 48]), canvas_hw=(48, 48))
  ref_results = video_lib.to_results(ref, video_id=7, num_frames=5, output_hw=(48, 48))
  # The paper variant's class head is the model's classifier: on a frame's embeddings it gives that frame's logits.
  head = predict_lib.class_head_fn(predictor.config, variables, predictor.class_embeddings)
  np.testing.assert_allclose(head(jnp.asarray(outputs["embeddings"][1])), outputs["logits"][1], rtol=1e-5, atol=1e-5)
  ours = result.to_results()
  assert [(r["category_id"], r["segmentations"]) for r in ours] == \
      [(r["category_id"], r["segmentations"]) for r in ref_results]
  np.testing.assert_allclose([r["score"] for r in ours], [r["score"] for r in ref_results], rtol=1e-5)

  # Outputs: an overlay per frame in the track's colour, an animated GIF, results.json / videos.json.
  paths = predictor.write(result, video, tmp_path, score_threshold=0.0)
  assert paths[0] == tmp_path / f"{frames_dir.name}.gif"
  overlays = sorted((tmp_path / frames_dir.name).glob("*.png"))
  assert [p.name for p in overlays] == [f"{n}.png" for n in video.frame_names]
  from PIL import Image as PILImage
  with PILImage.open(paths[0]) as gif:
    assert gif.n_frames == 5
  # Each overlay is the frame's decoded masks drawn in their tracks' colours; a pixel covered by the instances of
  # one track only is the frame blended with that track's colour (once per instance), in every frame.
  texts = [f"{n} {s:.2f}" for n, s in zip(result.names, result.scores)]
  # The written overlay shows one instance per track: its best-scoring class.
  order = np.argsort(-result.scores, kind="stable")
  _, first = np.unique(result.track_index[order], return_index=True)
  best = np.zeros(len(result), bool)
  best[order[first]] = True
  assert best.sum() == len(np.unique(result.track_index))
  covered = 0
  for index, _, frame in video.frames():
    masks = result.frame_masks(index)
    overlay = np.asarray(PILImage.open(overlays[index]).convert("RGB"))
    drawn = predict_lib.draw_tracks(frame, masks[best], result.track_index[best],
                                    [t for t, b in zip(texts, best) if b])
    np.testing.assert_array_equal(overlay, np.asarray(drawn))
    plain = np.asarray(predict_lib.draw_tracks(frame, masks, result.track_index, [""] * len(result))).astype(float)
    for track in np.unique(result.track_index):
      mine = masks[result.track_index == track]
      only = mine.any(0) & ~masks[result.track_index != track].any(0)
      m = mine.sum(0)[only]
      colour = np.asarray(predict_lib.track_color(track), float)
      expected = 0.5 ** m[:, None] * frame[only] + (1 - 0.5 ** m[:, None]) * colour
      np.testing.assert_allclose(plain[only], expected, atol=1.0)
      covered += int(only.sum())
  assert covered > 0
  assert predict_lib.track_color(3) == predict_lib.track_color(np.int32(3)) != predict_lib.track_color(4)
  results_path = predictor.finish(tmp_path)
  assert results_path == tmp_path / predict_lib.RESULTS_FILE
  entries = json.loads(results_path.read_text())
  assert {e["video_id"] for e in entries} == {7} and len(entries) == k
  assert set(entries[0]) == {"video_id", "category_id", "score", "segmentations"}
  videos = json.loads((tmp_path / predict_lib.VIDEOS_FILE).read_text())
  assert videos[0]["id"] == 7 and videos[0]["name"] == frames_dir.name and videos[0]["frames"] == video.frame_names


@pytest.mark.slow
def test_predictor_paper_variant(predictor, synthetic):
  """class_source="memory" end to end (the class head is checked in test_predictor_on_synthetic_frames, its use
  on the memory in test_streaming_association_equals_all_at_once)."""
  model, variables = tiny_model()
  paper = predict_lib.OV2SegVideoPredictor(predictor.config, variables, vocabulary=synthetic["root"] / "vocab.npy",
                                           class_source="memory")
  assert paper.settings.class_source == "memory"
  result = paper.predict(synthetic["videos"][1])
  released = predictor.predict(synthetic["videos"][1])
  assert len(result) == len(released) and all(len(s) == 5 for s in result.segmentations)
  assert not np.allclose(result.scores, released.scores)  # another class source, other scores


# ----------------------------------------------------------------------------- evaluation


def test_video_ap_on_a_prepared_lvvis_split(synthetic, tmp_path):
  model, variables = tiny_model()
  vocabulary = write_vocabulary(tmp_path / "vocab.npy", 5)
  config = tiny_config(file=str(vocabulary))
  with config.unlocked():
    config.data.path = str(synthetic["data"])
    config.data.eval_split = "val"
    config.test.eval_results = str(tmp_path / "results.json")
  metrics = evaluate_lib.evaluate_video_dataset(config, variables)
  assert metrics["num_videos"] == 2
  for key in ("AP", "AP50", "AR10", "APb", "APn"):
    assert key in metrics and (np.isnan(metrics[key]) or 0.0 <= metrics[key] <= 100.0), (key, metrics[key])
  entries = json.loads((tmp_path / "results.json").read_text())
  assert {e["video_id"] for e in entries} == {1, 2}
  assert {e["category_id"] for e in entries} <= {c["id"] for c in synthetic["categories"]}  # ids 1, 3, 5, 7, 9


def test_eval_batches_are_windows_of_one_video(synthetic):
  config = tiny_config()
  with config.unlocked():
    config.data.path = str(synthetic["data"])
  batches = list(evaluate_lib.VideoWindowBatches(config))
  window = int(config.test.window_size)
  assert len(batches) == 2 * 3  # 5 frames -> windows of 2, 2, 1 (padded)
  for b in batches:
    assert b["image"].shape[0] == window and len(set(b["video_id"].tolist())) == 1
  assert batches[2]["example_valid"].tolist() == [True, False]
  assert batches[2]["frame_index"].tolist() == [4, 4]
  halves = [list(evaluate_lib.VideoWindowBatches(config, p, 2)) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([halves[0][0]["image"], halves[1][0]["image"]]), batches[0]["image"])
  with pytest.raises(UserValueError, match="divisible"):
    evaluate_lib.VideoWindowBatches(config, 0, 3)


def test_evaluator_takes_padding_rows_anywhere_in_a_window(synthetic):
  """With several processes the gathered window holds each process's padding rows after its own slice: the
  evaluator puts the frames in order first (results equal to the same window without interleaved padding)."""
  config = tiny_config()
  with config.unlocked():
    config.data.path = str(synthetic["data"])
  dataset = evaluate_lib.open_eval_dataset(config)
  results = []
  for interleave in (False, True):
    evaluator = evaluate_lib.VideoEvaluator(config, dataset, "val")
    for i, batch in enumerate(evaluate_lib.VideoWindowBatches(config, dataset=dataset)):
      w = batch["image"].shape[0]
      r = np.random.default_rng(i)
      predictions = {"logits": r.normal(size=(w, 10, 6)).astype(np.float32),
                     "objectness": r.normal(size=(w, 10, 2)).astype(np.float32),
                     "masks": r.normal(size=(w, 10, 16, 16)).astype(np.float32),
                     "embeddings": r.normal(size=(w, 10, 64)).astype(np.float32)}
      if interleave:  # two processes' slices of one row each, each followed by a padding row (pad_eval_batch)
        rows = [0, 0, 1, 1]
        batch = {k: np.asarray(v)[rows] for k, v in batch.items()}
        batch["example_valid"] = batch["example_valid"] & np.array([True, False, True, False])
        predictions = {k: v[rows] for k, v in predictions.items()}
      evaluator.update(batch, predictions)
    results.append(evaluator.results)
  assert len(results[0]) == 2 * 10 and json.dumps(results[0]) == json.dumps(results[1])


@pytest.mark.slow
def test_trainer_evaluation_through_the_mixin(synthetic, tmp_path):
  """The mixin's eval contract through the shared trainer (`dinoseg.train.trainer.evaluate_weights`)."""
  from flax import serialization

  from dinoseg.train import trainer
  model, variables = tiny_model()
  vocabulary = write_vocabulary(tmp_path / "vocab.npy", 5)
  config = tiny_config(file=str(vocabulary))
  with config.unlocked():
    config.data.path = str(synthetic["data"])
    config.data.eval_split = "val"
  weights = tmp_path / "tiny.msgpack"
  weights.write_bytes(serialization.to_bytes(variables))
  # The registered "ov2seg" task (OV2SegTask inherits the mixin), else the test task.
  task = task_lib.build(config) if "ov2seg" in task_lib.TASKS else TinyOV2SegTask(config)
  assert isinstance(task, evaluate_lib.VideoEvaluation)
  out = trainer.evaluate_weights(config, str(weights), task=task)
  direct = evaluate_lib.evaluate_video_dataset(config, variables, class_embeddings=task.class_embeddings("val"))
  assert out["results"]["num_videos"] == 2
  for key in ("AP", "APb", "APn"):
    assert (np.isnan(out["results"][key]) and np.isnan(direct[key])) or \
        abs(out["results"][key] - direct[key]) < 1e-6, key


# ----------------------------------------------------------------------------- CLI


class TinyOV2SegTask(evaluate_lib.VideoEvaluation, task_lib.Task):
  """A test-local task: the video evaluation mixin over the tiny model (the "ov2seg" task when none is
  registered); reads .msgpack weights."""

  def __init__(self, config):
    super().__init__(config)
    self.model = tiny_model()[0]

  def init_variables(self, rng):
    return self.model.init(rng, jnp.zeros((1, 64, 64, 3)), jnp.zeros((3, EMBED)))

  def loss_fn(self, params, model_state, batch, rng, *, train=True):
    raise NotImplementedError("evaluation only")

  def train_iterator(self, process_index, process_count):
    raise NotImplementedError("evaluation only")

  def class_embeddings(self, split):
    del split
    return np.load(self.config.vocabulary.file)

  def weights_converter(self):
    return None


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
  """A config file (the tiny model + a tiny CLIP tower), its weights (.msgpack) and the "ov2seg" task (the test
  task when none is registered)."""
  from flax import serialization

  from dinoseg.convert.dinov2_clip import clip_text_converter
  root = tmp_path_factory.mktemp("ov2seg_cli")
  model, variables = tiny_model()
  (root / "tiny.msgpack").write_bytes(serialization.to_bytes(variables))
  from dinoseg.backbones.clip_text import ClipTextTransformer
  tower = ClipTextTransformer(**TINY_CLIP)
  shapes = jax.eval_shape(tower.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8), jnp.int32))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)
  np.savez(root / "clip.npz", **clip_text_converter("tiny", TINY_CLIP["depth"]).to_torch(params))
  (root / "config.py").write_text(f'''
import importlib.util
_spec = importlib.util.spec_from_file_location("ov2seg_r50_lvis_for_tests", {str(BASE_CONFIG)!r})
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)
validate = _base.validate


def get_config(variant=None):
  c = _base.get_config("tiny")
  c.model.decoder.dec_layers = 1
  c.model.pixel_decoder.num_encoder_layers = 1
  c.vocabulary.clip_file = {str(root / "clip.npz")!r}
  c.vocabulary.clip_overrides = {CLIP_OVERRIDES!r}
  c.vocabulary.templates = ("a photo of a {{}}.",)
  return c
''')
  registered = "ov2seg" not in task_lib.TASKS
  if registered:
    task_lib.TASKS.register("ov2seg", TinyOV2SegTask)
  yield {"root": root, "config": str(root / "config.py"), "weights": str(root / "tiny.msgpack")}
  if registered:
    task_lib.TASKS.unregister("ov2seg")


def _run(cli_setup, *args):
  return cli.main(["predict", f"--config={cli_setup['config']}", f"--weights={cli_setup['weights']}", *args])


def test_cli_predicts_a_directory_of_videos(cli_setup, synthetic, tmp_path, capsys):
  rc = _run(cli_setup, f"--input={synthetic['videos'][0].parent}", f"--output={tmp_path / 'out'}",
            "--classes=circle, square,triangle,hexagon,star", "--score-threshold=0")
  assert rc == 0, capsys.readouterr().err
  out = tmp_path / "out"
  for video in synthetic["videos"]:
    assert (out / f"{video.name}.gif").is_file()
    assert len(list((out / video.name).glob("*.png"))) == 5
  entries = json.loads((out / "results.json").read_text())
  assert {e["video_id"] for e in entries} == {1, 2}
  assert [v["name"] for v in json.loads((out / "videos.json").read_text())] == [v.name for v in synthetic["videos"]]
  assert "2 video(s)" in capsys.readouterr().out


def _one_line_error(capsys, *words):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("dinoseg predict: error:"), err
  for w in words:
    assert w in err[0], err
  return err[0]


def _frames(tmp_path, sizes=((48, 48),) * 3, name="clip"):
  from PIL import Image
  folder = tmp_path / name
  folder.mkdir()
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(folder / f"{i:05d}.jpg")
  return folder


def test_cli_bad_frames(cli_setup, tmp_path, capsys):
  vocab = write_vocabulary(tmp_path / "v.npy", 2)
  # Frames of different sizes: refused before any frame is processed.
  mixed = _frames(tmp_path, ((48, 48), (48, 48), (40, 72)), "mixed")
  assert _run(cli_setup, f"--input={mixed}", f"--output={tmp_path / 'o1'}", f"--vocabulary={vocab}") == 2
  _one_line_error(capsys, "00002.jpg", "40x72", "48x48")
  # An unreadable (corrupt) frame.
  corrupt = _frames(tmp_path, name="corrupt")
  (corrupt / "00001.jpg").write_bytes(b"not a jpeg")
  assert _run(cli_setup, f"--input={corrupt}", f"--output={tmp_path / 'o2'}", f"--vocabulary={vocab}") == 2
  _one_line_error(capsys, "00001.jpg", "not a readable image")
  # A missing input.
  assert _run(cli_setup, f"--input={tmp_path / 'nothing'}", f"--output={tmp_path / 'o3'}",
              f"--vocabulary={vocab}") == 2
  _one_line_error(capsys, "no such file or directory")
  # An empty directory.
  (tmp_path / "empty").mkdir()
  assert _run(cli_setup, f"--input={tmp_path / 'empty'}", f"--output={tmp_path / 'o4'}", f"--vocabulary={vocab}") == 2
  _one_line_error(capsys, "no frames")
  # Several videos: the one with a bad frame is skipped and listed (exit status 1), the others are written.
  videos = tmp_path / "videos"
  videos.mkdir()
  _frames(videos, name="a_good")
  (_frames(videos, name="b_corrupt") / "00002.jpg").write_bytes(b"\xff\xd8 truncated")
  assert _run(cli_setup, f"--input={videos}", f"--output={tmp_path / 'o5'}", f"--vocabulary={vocab}") == 1
  err = capsys.readouterr().err
  assert "1 unreadable video(s) skipped" in err and "b_corrupt" in err
  assert (tmp_path / "o5" / "a_good.gif").is_file() and not (tmp_path / "o5" / "b_corrupt.gif").exists()
  assert [v["name"] for v in json.loads((tmp_path / "o5" / "videos.json").read_text())] == ["a_good"]
  # Outputs would land in the input frames directory.
  good = _frames(tmp_path, name="good")
  assert _run(cli_setup, f"--input={good}", f"--output={tmp_path}", f"--vocabulary={vocab}") == 2
  _one_line_error(capsys, "would write")


def test_cli_video_file_without_or_with_a_reader(cli_setup, tmp_path, capsys):
  vocab = write_vocabulary(tmp_path / "v.npy", 2)
  (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
  rc = _run(cli_setup, f"--input={tmp_path / 'clip.mp4'}", f"--output={tmp_path / 'out'}", f"--vocabulary={vocab}")
  assert rc == 2
  if video_io.available_reader() is None:
    _one_line_error(capsys, "pip install av")
  else:
    _one_line_error(capsys, "not a readable video")


def test_cli_predicts_an_mp4_like_its_frames(cli_setup, tmp_path, capsys):
  """`--input=clip.mp4` (H.264 written with PyAV) writes the per-frame overlays, the GIF, results.json and
  videos.json, and its results equal those of its decoded frames given as a frames directory."""
  pytest.importorskip("av")
  from PIL import Image
  from test_video_io_mp4 import moving_squares, write_video
  clip = write_video(tmp_path / "clip.mp4", moving_squares(5, 48, 48))  # the other tests' frame size: no compile
  frames_dir = tmp_path / "frames" / "clip"
  frames_dir.mkdir(parents=True)
  for _, name, frame in video_io.open_video(clip).frames():
    Image.fromarray(frame).save(frames_dir / f"{name}.png")
  vocab = write_vocabulary(tmp_path / "v.npy", 3)
  for source, out in ((clip, tmp_path / "out_mp4"), (frames_dir, tmp_path / "out_frames")):
    assert _run(cli_setup, f"--input={source}", f"--output={out}", f"--vocabulary={vocab}",
                "--score-threshold=0") == 0, capsys.readouterr().err
  out = tmp_path / "out_mp4"
  assert sorted(p.name for p in (out / "clip.mp4").iterdir()) == [f"{i:05d}.png" for i in range(5)]
  with Image.open(out / "clip.mp4.gif") as gif:
    assert gif.n_frames == 5
  videos = json.loads((out / "videos.json").read_text())
  assert videos == [{"id": 1, "name": "clip.mp4", "frames": [f"{i:05d}" for i in range(5)], "height": 48,
                     "width": 48}]
  results = json.loads((out / "results.json").read_text())
  assert len(results) == 10 and all(len(r["segmentations"]) == 5 for r in results)
  assert results == json.loads((tmp_path / "out_frames" / "results.json").read_text())
  for i in range(5):  # the overlays too: the same frames, masks and colours
    np.testing.assert_array_equal(np.asarray(Image.open(out / "clip.mp4" / f"{i:05d}.png")),
                                  np.asarray(Image.open(tmp_path / "out_frames" / "clip" / f"{i:05d}.png.png")))


def test_cli_bad_video_files(cli_setup, tmp_path, capsys):
  """Truncated .mp4s (index at the end: no index; index first: fewer frames than the index lists) and a text
  file named .mp4: one line, exit status 2; among several videos they are skipped and listed (exit status 1)."""
  pytest.importorskip("av")
  from test_video_io_mp4 import moving_squares, write_video
  vocab = write_vocabulary(tmp_path / "v.npy", 3)
  videos = tmp_path / "videos"
  videos.mkdir()
  data = write_video(videos / "a_good.mp4", moving_squares(4, 48, 48)).read_bytes()
  (videos / "b_half.mp4").write_bytes(data[:len(data) // 2])
  faststart = write_video(tmp_path / "faststart.mp4", moving_squares(4, 48, 48),
                          container_options={"movflags": "faststart"}).read_bytes()
  (videos / "c_faststart_half.mp4").write_bytes(faststart[:len(faststart) // 2])
  (videos / "d_notes.mp4").write_text("not a video\n")
  for i, (name, words) in enumerate((("b_half.mp4", "not a readable video"), ("c_faststart_half.mp4", "truncated"),
                                     ("d_notes.mp4", "not a readable video"))):
    assert _run(cli_setup, f"--input={videos / name}", f"--output={tmp_path / f'o{i}'}", f"--vocabulary={vocab}") == 2
    _one_line_error(capsys, name, words)
  assert _run(cli_setup, f"--input={videos}", f"--output={tmp_path / 'all'}", f"--vocabulary={vocab}") == 1
  err = capsys.readouterr().err
  assert "3 unreadable video(s) skipped" in err and all(n in err for n in ("b_half", "c_faststart", "d_notes"))
  assert [v["name"] for v in json.loads((tmp_path / "all" / "videos.json").read_text())] == ["a_good.mp4"]


def test_cli_bad_vocabularies(cli_setup, tmp_path, capsys):
  good = _frames(tmp_path, name="clip")
  out = f"--output={tmp_path / 'out'}"
  assert _run(cli_setup, f"--input={good}", out, "--classes= , ,") == 2
  _one_line_error(capsys, "vocabulary is empty")
  assert _run(cli_setup, f"--input={good}", out, "--classes=cat," + "very " * 80 + "long dog") == 2
  _one_line_error(capsys, "too long", "context")
  wrong = write_vocabulary(tmp_path / "wide.npy", 3, dim=EMBED + 8)
  assert _run(cli_setup, f"--input={good}", out, f"--vocabulary={wrong}") == 2
  _one_line_error(capsys, "wide.npy", f"(num_classes, {EMBED})")


def test_bad_vocabularies(cli_setup, tmp_path):
  """The other vocabulary errors (UserErrors, so one line and exit status 2 on the command line)."""
  from dinoseg.config import load_config
  config = load_config(cli_setup["config"])
  right = write_vocabulary(tmp_path / "v.npy", 3)
  with pytest.raises(UserValueError, match="2 classes but .* 3 class embeddings"):
    predict_lib.resolve_vocabulary(config, classes="a,b", vocabulary=right)
  with pytest.raises(UserValueError, match="no vocabulary"):
    predict_lib.resolve_vocabulary(config)
  with pytest.raises(UserValueError, match="empty"):
    predict_lib.parse_class_names([" ", ""])
  categories = [{"id": 4, "name": "z"}, {"id": 1, "name": "x"}, {"id": 2, "name": "y"}]
  (tmp_path / "two.json").write_text(json.dumps({"categories": categories[1:]}))
  config.vocabulary.names = str(tmp_path / "two.json")
  with pytest.raises(UserValueError, match="lists 2 categories"):
    predict_lib.resolve_vocabulary(config, vocabulary=right)
  (tmp_path / "three.json").write_text(json.dumps({"categories": categories}))
  config.vocabulary.names = str(tmp_path / "three.json")
  assert predict_lib.resolve_vocabulary(config, vocabulary=right)[1] == ("x", "y", "z")  # by category id


def test_text_vocabulary_uses_the_clip_tower(cli_setup):
  from dinoseg.config import load_config
  from dinoseg.models.ov2seg import vocabulary
  config = load_config(cli_setup["config"])
  embeddings, names = predict_lib.resolve_vocabulary(config, classes="red circle, blue square")
  assert names == ("red circle", "blue square") and embeddings.shape == (2, EMBED)
  direct = vocabulary.class_embeddings_from_names(["red circle", "blue square"], config.vocabulary.clip_file,
                                                  templates=("a photo of a {}.",), clip_overrides=CLIP_OVERRIDES)
  np.testing.assert_allclose(embeddings, direct, rtol=1e-6)
  with pytest.raises(UserError, match="clip_file"):
    predict_lib.resolve_vocabulary(tiny_config(), classes="cat")


# ----------------------------------------------------------------------------- convert --vocabulary


def test_convert_export_buffers_for_a_strict_load(tmp_path):
  """`dinoseg convert --vocabulary / --category-image-counts` add the buffers `convert.to_torch(vocabulary=...,
  category_image_counts=...)` builds (the reference's zs_weight and criterion buffers)."""
  import argparse

  from dinoseg.commands import convert as convert_command
  from dinoseg.models.ov2seg import convert
  model, variables = tiny_model()
  config = tiny_config()
  state = convert.to_torch(variables, config.model)
  vocab = write_vocabulary(tmp_path / "v.npy", 3)
  cats = {"categories": [{"id": 5, "image_count": 4}, {"id": 1, "image_count": 9}, {"id": 2, "image_count": 1}]}
  (tmp_path / "cats.json").write_text(json.dumps(cats))
  converter = argparse.Namespace(name="ov2seg (test)")
  args = argparse.Namespace(vocabulary=str(vocab), category_image_counts=str(tmp_path / "cats.json"))
  extra = convert_command._ov2seg_buffers(args, converter, state)
  full = convert.to_torch(variables, config.model, vocabulary=np.load(vocab), category_image_counts=[9, 1, 4])
  assert set(state) | set(extra) == set(full)
  for key, value in extra.items():
    np.testing.assert_array_equal(value, full[key])
  wrong = write_vocabulary(tmp_path / "wide.npy", 3, dim=EMBED * 2)
  with pytest.raises(UserValueError, match="wide.npy"):
    convert_command._ov2seg_buffers(argparse.Namespace(vocabulary=str(wrong), category_image_counts=None),
                                    converter, state)
  with pytest.raises(UserValueError, match="2 categories"):
    (tmp_path / "two.json").write_text(json.dumps({"categories": cats["categories"][:2]}))
    convert_command._ov2seg_buffers(argparse.Namespace(vocabulary=str(vocab),
                                                       category_image_counts=str(tmp_path / "two.json")),
                                    converter, state)
  with pytest.raises(UserValueError, match="OV2Seg"):
    convert_command._ov2seg_buffers(args, converter, {"backbone.conv1.weight": np.zeros(1)})
