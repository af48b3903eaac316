"""Talk2DINO open-vocabulary inference against the reference (fixture segment_tiny.npz).

The fixture runs the reference DINOText (`build_dataset_class_tokens`, `build_text_embedding`,
`generate_masks` with background cleaning and PAMR) inside `DINOTextSegInference` and the mmseg
0.x sliding-window composition on one image with tiny random weights: crop 42 / stride 21 (the
tiny 448 / 224), 3 windows, 5 classes, once VOC21-like (background channel + cleaning) and once
Context59-like (no background).
"""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.backbones.clip_text import ClipTextTransformer
from dinoseg.backbones.dinov2 import DinoV2
from dinoseg.convert.dinov2_clip import clip_text_key_table, dinov2_key_table, table_to_flax
from dinoseg.models.talk2dino import inference as inf
from dinoseg.models.talk2dino.background import clean_background
from dinoseg.models.talk2dino.convert import projection_to_flax
from dinoseg.models.talk2dino.model import Talk2Dino, normalize_images
from dinoseg.models.talk2dino.projection import TextProjection
from dinoseg.models.talk2dino.text import class_embeddings, tokenize_prompts
from dinoseg.models.talk2dino.templates import SUBSET_IMAGENET_TEMPLATES, class_prompts

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "talk2dino" / "segment_tiny.npz"
CASES = {"voc": dict(with_background=True, bg_clean=True), "context59": dict(with_background=False, bg_clean=False)}


def _state(z, prefix):
  return {k[len(prefix):]: v.astype(np.float32) for k, v in z.items()
          if k.startswith(prefix) and not k.endswith("_rows")}


@functools.lru_cache(maxsize=None)
def _setup():
  z = dict(np.load(FIXTURE))
  cfg = json.loads(str(z["config"]))
  d, c = cfg["dino"], cfg["clip"]
  model = Talk2Dino(
      dinov2=DinoV2(**d, interpolate_antialias=True, interpolate_offset=0.0),
      clip_text=ClipTextTransformer(vocab_size=c["vocab_size"], context_length=c["context_length"],
                                    width=c["width"], num_heads=c["num_heads"], depth=c["depth"],
                                    embed_dim=c["embed_dim"]),
      projection=TextProjection(embed_dim=d["embed_dim"]))
  clip_state = _state(z, "clip/")
  rows = z["clip/token_embedding_rows"]
  table = np.zeros((c["vocab_size"], c["width"]), np.float32)
  table[rows] = clip_state["token_embedding.weight"]  # only the rows the prompts use are stored
  clip_state["token_embedding.weight"] = table
  params = {"dinov2": table_to_flax(_state(z, "dino/"), dinov2_key_table(d["depth"], "mlp", d["num_register_tokens"])),
            "clip_text": table_to_flax(clip_state, clip_text_key_table(c["depth"])),
            "projection": projection_to_flax(_state(z, "proj/"))}
  return z, cfg, model, params


def _settings(cfg, case):
  return inf.InferenceSettings(crop_size=cfg["window"], stride=cfg["stride"], input_size=cfg["window"],
                               bg_thresh=cfg["bg_thresh"], **CASES[case])


@functools.lru_cache(maxsize=None)
def _text_embeds():
  z, cfg, model, params = _setup()
  return class_embeddings(model, params, cfg["classnames"])


def test_prompt_tokens_and_class_embeddings_match_reference():
  z, cfg, _, _ = _setup()
  prompts = class_prompts(cfg["classnames"], SUBSET_IMAGENET_TEMPLATES)
  ids = tokenize_prompts(prompts)
  ref = z["tokens"].reshape(len(prompts), -1)
  np.testing.assert_array_equal(ids, ref[:, :ids.shape[1]])
  assert not ref[:, ids.shape[1]:].any()
  for case in CASES:
    assert_close(_text_embeds(), z[f"{case}/text_emb"], name=f"{case} text_emb")


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_matches_reference(case):
  z, cfg, model, params = _setup()
  seg = inf.Talk2DinoSegmenter(model, params, _settings(cfg, case))
  settings = seg.settings
  text = _text_embeds()
  seg.set_text_embeddings(text)
  prepared = inf.prepare_resized(z["image_rgb"], cfg["original_hw"], settings)
  assert prepared.boxes.tolist() == [[0, 42, 0, 42], [0, 42, 21, 63], [0, 42, 28, 70]]
  windows = jnp.asarray(prepared.windows)
  # Per-window intermediates: DINOv2 features, raw CLS -> patch logits, sigmoid masks, cleaned masks.
  feats = model.apply({"params": params}, normalize_images(windows), method=Talk2Dino.encode_image)
  n = windows.shape[0]
  assert_close(feats.patch_tokens.reshape(n, 9, -1), z[f"{case}/patch_tokens"], name="patch tokens")
  assert_close(feats.cls_logits, z[f"{case}/self_attn_maps"], name="CLS->patch logits")
  masks = inf.patch_text_masks(feats.patch_tokens, text)
  assert_close(masks, z[f"{case}/masks"], name="sigmoid masks")
  if settings.bg_clean:
    cleaned = jax.vmap(clean_background, in_axes=(0, 0, 0, None))(masks, feats.patch_tokens, feats.cls_logits, text)
    assert_close(cleaned, z[f"{case}/cleaned"], name="cleaned masks")
  # The jitted window stage (one batch of windows), stitching, resize, labels.
  scores = seg.window_scores(prepared)
  if f"{case}/pamr_window0" in z:
    assert_close(scores[0, int(settings.with_background):], z[f"{case}/pamr_window0"], name="PAMR window 0")
  offsets = jnp.asarray(prepared.boxes[:, [0, 2]], jnp.int32)
  stitched = inf.stitch_windows(scores, offsets, jnp.asarray(prepared.counts))
  h, w = prepared.resized_hw
  assert_close(stitched[:, :h, :w], z[f"{case}/stitched"], name="stitched scores")
  out_hw = tuple(cfg["original_hw"])
  resized = inf.resize_scores(stitched, jnp.asarray((h, w)), jnp.asarray(out_hw), (64, 64))
  logit = z[f"{case}/seg_logit"]
  assert_close(resized[:, :out_hw[0], :out_hw[1]], logit, name="scores at the original size")
  labels, best = seg.segment_prepared(prepared, return_scores=True)
  expected = z[f"{case}/labels"].astype(np.int32)
  assert labels.shape == expected.shape == out_hw
  # Identical except where the two best reference scores tie to float precision.
  top2 = np.sort(logit, axis=0)[-2:]
  tie = (top2[1] - top2[0]) <= 1e-6 * np.abs(top2[1])
  assert np.array_equal(labels[~tie], expected[~tie]), f"{(labels != expected).sum()} labels differ"
  assert len(np.unique(expected)) > 1  # the fixture exercises a real decision
  assert_close(best, logit.max(0), name="winning score")


def test_window_geometry_matches_mmseg_rules():
  # 448 x 597 (a VOC image after the resize): one row of two windows, the last clamped to the border.
  assert inf.window_boxes(448, 597).tolist() == [[0, 448, 0, 448], [0, 448, 149, 597]]
  assert inf.window_boxes(448, 448).tolist() == [[0, 448, 0, 448]]
  boxes = inf.window_boxes(448, 896)
  assert boxes[:, 2].tolist() == [0, 224, 448] and boxes[:, 3].tolist() == [448, 672, 896]
  # A side shorter than the crop gives a window of that side.
  assert inf.window_boxes(300, 2048)[0].tolist() == [0, 300, 0, 448]
  counts = inf.window_counts(448, 597, inf.window_boxes(448, 597))
  assert counts[0, 0] == 1 and counts[0, 300] == 2 and counts[0, 596] == 1
  # mmcv imrescale with img_scale (2048, 448).
  assert inf.resized_hw(375, 500) == (448, 597)
  assert inf.resized_hw(1024, 2048) == (448, 896)
  assert inf.resized_hw(100, 1000) == (205, 2048)


def test_resize_short_side_is_half_pixel_bilinear(torch):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
  got = inf.resize_short_side(image, short_side=44, max_long_side=2048)
  assert got.shape == (44, 60, 3) and got.dtype == np.uint8
  x = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None]
  ref = torch.nn.functional.interpolate(x, size=(44, 60), mode="bilinear", align_corners=False)
  ref = torch.floor(ref + 0.5).clamp(0, 255)[0].permute(1, 2, 0).numpy()
  assert np.abs(got.astype(np.float32) - ref).max() <= 1  # rounding of exact halves may differ
  assert (got.astype(np.float32) == ref).mean() > 0.99


def test_dynamic_resize_matches_torch(torch):
  rng = np.random.default_rng(1)
  canvas = rng.normal(size=(3, 40, 50)).astype(np.float32)
  for in_hw, out_hw in (((37, 45), (23, 61)), ((40, 50), (40, 50)), ((10, 11), (33, 9))):
    got = inf.resize_scores(jnp.asarray(canvas), jnp.asarray(in_hw), jnp.asarray(out_hw), (64, 64))
    ref = torch.nn.functional.interpolate(torch.tensor(canvas[None, :, :in_hw[0], :in_hw[1]]), size=out_hw,
                                          mode="bilinear", align_corners=False)[0].numpy()
    assert_close(got[:, :out_hw[0], :out_hw[1]], ref, rtol=1e-6, name=f"{in_hw}->{out_hw}")


def test_small_windows_are_resized_to_the_input_size():
  _, cfg, model, params = _setup()
  settings = inf.InferenceSettings(crop_size=42, stride=21, input_size=42, pamr=False)
  image = np.random.default_rng(2).integers(0, 256, (30, 90, 3), dtype=np.uint8)  # short side < crop
  prepared = inf.prepare_resized(image, (15, 45), settings)
  assert prepared.windows.shape[1:3] == (30, 42)
  seg = inf.Talk2DinoSegmenter(model, params, settings)
  seg.set_text_embeddings(_text_embeds())
  labels = seg.segment_prepared(prepared)
  assert labels.shape == (15, 45) and labels.min() >= 0 and labels.max() < 5


@pytest.mark.parametrize("bad", [
    lambda: inf.prepare_image(np.zeros((10, 10), np.uint8), inf.InferenceSettings()),
    lambda: inf.prepare_image(np.zeros((10, 10, 3), np.float32), inf.InferenceSettings()),
    lambda: inf.InferenceSettings(stride=0),
    lambda: inf.window_boxes(0, 5),
    lambda: inf.resize_short_side(np.zeros((4, 4, 4), np.uint8)),
    lambda: class_embeddings(None, None, []),
    lambda: class_embeddings(None, None, ["cat"], templates=["no placeholder"]),
])
def test_bad_input_raises_value_error(bad):
  with pytest.raises(ValueError):
    bad()
