"""OV2Seg video inference (dinoseg/models/ov2seg/video.py) against the reference's own post-processing.

Fixtures: scripts/make_ov2seg_association_fixtures.py runs haochenheheda/LVVIS's `OV2SegVideo.forward` (eval,
per-frame network replaced by the stored outputs) and LV-VIS's `instances_to_coco_json_video`
(scripts/ov2seg_association_oracle.py). The slow test runs that oracle live on new random outputs.
"""
import functools
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.errors import UserValueError
from dinoseg.models.ov2seg import video

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "ov2seg"
CASES = ("random", "tracks")
CANVAS_MARGIN = 6  # the output canvas is larger than the output size: the margin must stay empty


@functools.lru_cache(maxsize=None)
def _case(name: str) -> dict:
  with np.load(FIXTURES / f"association_{name}.npz", allow_pickle=False) as z:
    case = {k: z[k] for k in z.files}
  shape = tuple(case["ref/masks_shape"])
  n = int(np.prod(shape))
  case["ref/masks"] = np.unpackbits(case["ref/masks_packed"])[:n].reshape(shape).astype(bool)
  case["ref/near_zero"] = np.unpackbits(case["ref/near_zero_packed"])[:n].reshape(shape).astype(bool)
  return case


def _inputs(case: dict) -> tuple:
  return tuple(jnp.asarray(case[k]) for k in ("logits", "objectness", "masks", "embeddings"))


@functools.partial(jax.jit, static_argnames=("settings", "padded_hw", "canvas_hw"))
def _run(logits, objectness, masks, embeddings, valid_hw, output_hw, frame_valid, *, settings, padded_hw, canvas_hw):
  return video.video_instances(logits, objectness, masks, embeddings, settings=settings, frame_valid=frame_valid,
                               padded_hw=padded_hw, valid_hw=valid_hw, output_hw=output_hw, canvas_hw=canvas_hw)


def _instances(case: dict, settings=video.VideoInferenceSettings(), pad_frames: int = 0):
  logits, objectness, masks, embeddings = _inputs(case)
  t = logits.shape[0]
  frame_valid = jnp.arange(t + pad_frames) < t
  if pad_frames:  # padding frames hold garbage: they must not matter
    garbage = lambda x: jnp.concatenate([x, 7.0 * x[:pad_frames] + 3.0])  # noqa: E731
    logits, objectness, masks, embeddings = map(garbage, (logits, objectness, masks, embeddings))
  out_h, out_w = (int(v) for v in case["output_size"])
  return _run(logits, objectness, masks, embeddings, jnp.asarray(case["image_size"]), jnp.asarray(case["output_size"]),
              frame_valid, settings=settings, padded_hw=tuple(int(v) for v in case["padded_size"]),
              canvas_hw=(out_h + CANVAS_MARGIN, out_w + CANVAS_MARGIN))


@functools.lru_cache(maxsize=None)
def _default_instances(name: str):
  return jax.device_get(_instances(_case(name)))


def _reference_order(ours, case: dict) -> np.ndarray:
  """For each of our instances, the index of the reference instance with the same (track, class)."""
  ref_keys = list(zip(case["ref/track_index"].tolist(), case["ref/labels"].tolist()))
  our_keys = list(zip(np.asarray(ours.track_index).tolist(), np.asarray(ours.labels).tolist()))
  assert len(set(ref_keys)) == len(ref_keys) and -1 not in case["ref/track_index"]
  assert sorted(our_keys) == sorted(ref_keys), "different (track, class) sets"
  return np.array([ref_keys.index(k) for k in our_keys])


def _check_instances(ours, case: dict, frames: int) -> None:
  order = _reference_order(ours, case)
  assert_close(ours.scores, case["ref/scores"][order], rtol=1e-5, name="scores")
  assert np.all(np.diff(np.asarray(ours.video_scores)) <= 0), "instances must come sorted by video score"
  np.testing.assert_array_equal(np.asarray(ours.mask_logits)[:, :frames], case["ref/mask_logits"][order])
  ref_kept = ~np.all(case["ref/mask_logits"][order] == -1, axis=(2, 3))
  np.testing.assert_array_equal(np.asarray(ours.frame_kept)[:, :frames], ref_kept)
  out_h, out_w = (int(v) for v in case["output_size"])
  masks = np.asarray(ours.masks)
  assert not masks[..., out_h:, :].any() and not masks[..., out_w:].any(), "canvas padding must stay empty"
  ref_masks, near_zero = case["ref/masks"][order], case["ref/near_zero"][order]
  differ = masks[:, :frames, :out_h, :out_w] != ref_masks
  assert not np.any(differ & ~near_zero), f"{int((differ & ~near_zero).sum())} mask pixels differ"
  assert ref_masks.any() and (~ref_masks).any()


@pytest.mark.parametrize("name", CASES)
def test_association_matches_reference(name):
  case = _case(name)
  assoc = _default_instances(name).association
  np.testing.assert_array_equal(assoc.perm, case["ref/perm"])  # the track order, frame by frame
  t = case["logits"].shape[0]
  aligned = case["logits"][np.arange(t)[:, None], assoc.perm].transpose(1, 0, 2)
  np.testing.assert_array_equal(aligned, case["ref/per_frame_logits"])
  assert_close(assoc.class_logits, case["ref/class_logits"], rtol=1e-6, name="video class logits")
  assert_close(assoc.objectness_logits, case["ref/objectness_logits"], rtol=1e-6, name="video objectness")
  assert int(assoc.num_frames) == t


@pytest.mark.parametrize("name", CASES)
def test_instances_match_reference(name):
  case = _case(name)
  _check_instances(_default_instances(name), case, case["logits"].shape[0])


def test_tracks_follow_the_objects():
  # In the "tracks" case 12 embeddings persist through the frames: the 12 tracks the top instances come
  # from must be those objects, i.e. each aligned track keeps one embedding up to the noise.
  case = _case("tracks")
  ours = _default_instances("tracks")
  t = case["logits"].shape[0]
  tracks = np.unique(np.asarray(ours.track_index))
  aligned = case["embeddings"][np.arange(t)[:, None], np.asarray(ours.association.perm)][:, tracks]  # (T, K, D)
  unit = aligned / np.linalg.norm(aligned, axis=-1, keepdims=True)
  cos_to_first = np.einsum("tkd,kd->tk", unit, unit[0])
  assert len(tracks) == 12 and cos_to_first.min() > 0.8


def test_results_json_holds_the_masks():
  from pycocotools import mask as mask_util  # noqa: PLC0415
  case = _case("random")
  ours = _default_instances("random")
  t = case["logits"].shape[0]
  out_h, out_w = (int(v) for v in case["output_size"])
  results = video.to_results(ours, video_id=7, num_frames=t, output_hw=(out_h, out_w))
  order = _reference_order(ours, case)
  assert [r["category_id"] for r in results] == [int(x) + 1 for x in case["ref/labels"][order]]
  assert all(r["video_id"] == 7 and len(r["segmentations"]) == t for r in results)
  np.testing.assert_allclose([r["score"] for r in results], case["ref/scores"][order], rtol=1e-5)
  decoded = np.stack([np.stack([mask_util.decode(s) for s in r["segmentations"]]) for r in results]).astype(bool)
  np.testing.assert_array_equal(decoded, case["ref/masks"][order])


def test_associate_batches_over_videos_with_vmap():
  cases = [_case(name) for name in CASES]
  q, d = 100, 64
  t = min(c["logits"].shape[0] for c in cases)
  c1 = min(c["logits"].shape[-1] for c in cases)
  stack = lambda key, width=None: jnp.stack([jnp.asarray(c[key][:t, :, :width]) for c in cases])  # noqa: E731
  batched = jax.jit(jax.vmap(video.associate))(stack("embeddings"), stack("logits", c1), stack("objectness"))
  assert batched.perm.shape == (2, t, q) and batched.memory.shape == (2, q, d)
  for i, c in enumerate(cases):  # the first t frames of each case align as in the full run
    np.testing.assert_array_equal(batched.perm[i], c["ref/perm"][:t])


def test_scipy_host_matcher_gives_the_same_tracks():
  case = _case("random")
  settings = video.VideoInferenceSettings(matcher="scipy_host")
  logits, objectness, _, embeddings = _inputs(case)
  assoc = jax.jit(functools.partial(video.associate, matcher=settings.matcher))(embeddings, logits, objectness)
  np.testing.assert_array_equal(assoc.perm, case["ref/perm"])


def test_padding_frames_change_nothing():
  case = _case("tracks")
  t = case["logits"].shape[0]
  padded = jax.device_get(_instances(case, pad_frames=3))
  assert padded.mask_logits.shape[1] == t + 3 and int(padded.association.num_frames) == t
  np.testing.assert_array_equal(padded.association.perm[:t], case["ref/perm"])
  np.testing.assert_array_equal(padded.association.perm[t:], np.broadcast_to(np.arange(100), (3, 100)))
  _check_instances(padded, case, t)
  assert np.all(padded.mask_logits[:, t:] == -1) and not padded.masks[:, t:].any()
  assert not padded.frame_kept[:, t:].any()


def test_memory_class_source_applies_the_class_head_to_the_final_memory():
  case = _case("tracks")
  logits, objectness, masks, embeddings = _inputs(case)
  t, q, c1 = logits.shape
  head = np.random.default_rng(3).normal(0, 0.3, (embeddings.shape[-1], c1)).astype(np.float32)
  class_head = lambda m: jnp.matmul(m, head, precision="highest")  # noqa: E731
  settings = video.VideoInferenceSettings(class_source="memory")
  ours = jax.jit(lambda *a: video.video_instances(*a, settings=settings, class_head=class_head))(
      logits, objectness, masks, embeddings)
  # NumPy: the released memory update along the reference's permutation, then the head.
  perm, emb = case["ref/perm"], case["embeddings"]
  memory = emb[0]
  for f in range(1, t):
    memory = np.float32(0.7) * emb[f][perm[f]] + np.float32(0.3) * memory
  assert_close(ours.association.memory, memory, rtol=1e-6, name="memory")
  video_logits = memory @ head
  assert_close(ours.association.class_logits, video_logits, rtol=1e-5, name="class logits from memory")
  p_object = np.exp(case["ref/objectness_logits"])
  p_object = p_object[:, 0] / p_object.sum(-1)
  scores = np.sqrt(1 / (1 + np.exp(-video_logits[:, :-1])) * p_object[:, None])
  top = np.sort(scores.reshape(-1))[::-1][:50]
  assert_close(ours.video_scores, top, rtol=1e-5, name="video scores")
  with pytest.raises(UserValueError, match="class_head"):
    video.video_instances(logits, objectness, masks, embeddings, settings=settings)


def test_masks_at_output_size_works_on_chunks_of_frames():
  case = _case("random")
  ours = _default_instances("random")
  args = (tuple(int(v) for v in case["padded_size"]), case["image_size"], case["output_size"],
          ours.masks.shape[-2:])
  chunk = video.masks_at_output_size(ours.mask_logits[:, 1:3], *args)
  np.testing.assert_array_equal(chunk, ours.masks[:, 1:3])
  logits = video.masks_at_output_size(ours.mask_logits[:, 1:3], *args, threshold=False)
  assert logits.dtype == jnp.float32 and np.array_equal(np.asarray(logits) > 0, np.asarray(chunk))


def test_run_in_windows_pads_every_window_and_keeps_frame_order():
  frames = np.arange(23 * 2 * 3, dtype=np.float32).reshape(23, 2, 3)
  calls = []

  def per_frame_model(x):  # outputs in the per-frame model's layout: predictions first, then frames
    calls.append(x.shape[0])
    p = jnp.stack([x.sum(-1), 2 * x.sum(-1)])  # (P=2, W, 2)
    return {"logits": p, "objectness": p[..., :1], "masks": p[..., None], "embeddings": x}

  out = video.run_in_windows(lambda x: video.last_prediction(per_frame_model(x)), frames, window_size=10)
  assert calls == [10, 10, 10]
  np.testing.assert_array_equal(out["logits"], 2 * frames.sum(-1))
  np.testing.assert_array_equal(out["embeddings"], frames)
  assert out["masks"].shape == (23, 2, 1)
  raw = video.run_in_windows(per_frame_model, iter(list(frames)), window_size=4,
                             frame_axes={"logits": 1, "objectness": 1, "masks": 1, "embeddings": 0})
  assert raw["logits"].shape == (2, 23, 2) and raw["embeddings"].shape == (23, 2, 3)
  np.testing.assert_array_equal(raw["logits"][1], out["logits"])
  with pytest.raises(UserValueError, match="window_size"):
    video.run_in_windows(per_frame_model, frames, window_size=0)
  with pytest.raises(UserValueError, match="no frames"):
    video.run_in_windows(per_frame_model, iter([]))


def test_settings():
  from dinoseg.models.ov2seg.defaults import test_config  # noqa: PLC0415
  settings = video.VideoInferenceSettings.from_config(test_config())
  assert settings == video.VideoInferenceSettings()
  for bad in (dict(detections_per_image=0), dict(memory_momentum=1.5), dict(class_source="paper"),
              dict(matcher="greedy"), dict(window_size=0), dict(frame_blank_ratio=-1)):
    with pytest.raises(UserValueError):
      video.VideoInferenceSettings(**bad)


@pytest.mark.slow
def test_live_reference_on_new_outputs():
  """Runs the reference (needs torch, scipy, pycocotools and the LVVIS checkout) on new random outputs."""
  pytest.importorskip("torch")
  pytest.importorskip("pycocotools")
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "scripts"))
  import ov2seg_association_oracle as oracle  # noqa: PLC0415
  if not os.path.isdir(oracle.DEFAULT_REFERENCE):
    pytest.skip(f"no reference checkout at {oracle.DEFAULT_REFERENCE}")
  ref = oracle.load_reference()
  rng = np.random.default_rng(11)
  t, q, c, d = 5, 100, 25, 256
  case = dict(logits=rng.normal(0, 5, (t, q, c + 1)), objectness=rng.normal(0, 3, (t, q, 2)),
              masks=rng.normal(0, 2, (t, q, 16, 24)), embeddings=rng.normal(0, 1, (t, q, d)))
  case = {k: v.astype(np.float32) for k, v in case.items()}
  out = oracle.reference_video_inference(ref, **case, image_size=(60, 90), output_size=(100, 130))
  case.update({f"ref/{k}": v for k, v in out.items()}, image_size=np.array([60, 90]),
              output_size=np.array([100, 130]), padded_size=out["padded_size"])
  case["ref/near_zero"] = np.abs(out["resized_logits"]) < 1e-4
  ours = jax.device_get(_instances(case))
  np.testing.assert_array_equal(ours.association.perm, out["perm"])
  _check_instances(ours, case, t)
