"""Host transforms: geometry sampling (detectron2 formulas), warping consistency, targets, clips, prompts."""
import numpy as np
import pytest
from PIL import Image

from dinoseg.data_pipelines import transforms as T


class FixedDraws:
  """A stand-in generator returning preset draws (to check the geometry formulas)."""

  def __init__(self, random=0.9, uniform=(1.5, 0.5)):
    self._random, self._uniform = random, list(uniform)

  def random(self):
    return self._random

  def uniform(self, lo=0.0, hi=1.0):
    return self._uniform.pop(0)


def test_lsj_geometry_follows_detectron2():
  # ResizeScale: scale 1.5 of 1024 -> output scale min(1536/480, 1536/640) = 2.4 -> 1152 x 1536;
  # FixedSizeCrop: max offset (128, 512) times one uniform 0.5 -> (64, 256).
  g = T.lsj_geometry(FixedDraws(random=0.9, uniform=(1.5, 0.5)), (480, 640), (1024, 1024))
  assert g == T.Geometry((480, 640), (1152, 1536), (1024, 1024), (64, 256), False)
  assert g.content_hw == (1024, 1024)
  g = T.lsj_geometry(FixedDraws(random=0.1, uniform=(0.5, 0.7)), (480, 640), (1024, 1024))
  assert g == T.Geometry((480, 640), (384, 512), (1024, 1024), (0, 0), True)
  assert g.content_hw == (384, 512)


def test_lsj_statistics(rng):
  scales, flips = [], []
  for _ in range(400):
    g = T.lsj_geometry(rng, (100, 200), (64, 64), 0.1, 2.0)
    scales.append(g.resized_hw[1] / 200 / (64 / 200))
    flips.append(g.flip)
    assert g.content_hw[0] <= 64 and g.content_hw[1] <= 64
  assert 0.1 <= min(scales) and max(scales) <= 2.01 and abs(np.mean(scales) - 1.05) < 0.1
  assert 0.4 < np.mean(flips) < 0.6


def test_shortest_edge_sizes():
  assert T.shortest_edge_size((480, 640), 800, 1333) == (800, 1067)
  assert T.shortest_edge_size((400, 1200), 800, 1333) == (444, 1333)
  g = T.resize_shortest_edge_geometry((480, 640), 800, 1333, (1344, 1344))
  assert g.resized_hw == (800, 1067) and g.content_hw == (800, 1067) and not g.flip
  g = T.resize_shortest_edge_geometry((480, 640), 800, 1333, (512, 512))   # shrunk to fit the canvas
  assert g.resized_hw == (384, 512)


@pytest.mark.parametrize("flip", [False, True])
def test_warp_image_equals_resize_then_crop(rng, flip):
  image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
  g = T.Geometry((30, 40), (57, 76), (48, 48), (5, 20), flip)
  src = image[:, ::-1] if flip else image
  full = np.asarray(Image.fromarray(src).resize((76, 57), Image.BILINEAR))
  expected = np.full((48, 48, 3), 128, np.uint8)
  expected[:48, :48] = full[5:53, 20:68]
  # Resampling only the kept window (PIL's box argument) differs from resize-then-crop by float
  # rounding of the window coordinates (PIL's fixed-point weights): at most 2 grey levels, rarely.
  diff = np.abs(T.warp_image(image, g, 128).astype(int) - expected)
  assert diff.max() <= 2 and diff.mean() < 0.1
  small = T.Geometry((30, 40), (15, 20), (24, 24), (0, 0), flip)   # downscale (antialiased) + padding
  out = T.warp_image(image, small, 7)
  np.testing.assert_allclose(out[:15, :20], np.asarray(Image.fromarray(src).resize((20, 15), Image.BILINEAR)), atol=2)
  assert (out[15:] == 7).all() and (out[:, 20:] == 7).all()


@pytest.mark.parametrize("flip", [False, True])
def test_image_masks_and_boxes_stay_consistent(flip):
  h, w = 60, 80
  mask = np.zeros((h, w), np.uint8)
  mask[10:30, 5:35] = 1
  image = np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8)
  g = T.Geometry((h, w), (90, 120), (64, 64), (12, 30), flip)
  warped_image = T.warp_image(image, g)
  warped_mask = T.warp_masks(mask[None], g)[0]
  bright = warped_image[..., 0] > 127
  iou = (bright & (warped_mask > 0)).sum() / (bright | (warped_mask > 0)).sum()
  assert iou > 0.97
  # The tight box of the warped mask is the original box mapped through flip, scale 1.5 and crop.
  x0, x1 = (5, 35) if not flip else (w - 35, w - 5)
  expected = np.clip([x0 * 1.5 - 30, 10 * 1.5 - 12, x1 * 1.5 - 30, 30 * 1.5 - 12], 0, 64)
  np.testing.assert_allclose(T.masks_to_boxes_xyxy(warped_mask[None])[0], expected, atol=1)


@pytest.mark.parametrize("n", [1, 3, 11])
def test_warp_masks_is_a_nearest_gather(rng, n):
  masks = (rng.random((n, 30, 40)) < 0.4).astype(np.uint8)
  for g in (T.Geometry((30, 40), (57, 76), (48, 48), (5, 20), True), T.Geometry((30, 40), (20, 26), (24, 32))):
    rows, cols = g.source_indices()
    expected = np.zeros((n, *g.canvas_hw), np.uint8)
    ch, cw = g.content_hw
    expected[:, :ch, :cw] = masks[:, rows[:, None], cols[None, :]]
    np.testing.assert_array_equal(T.warp_masks(masks, g), expected)
    # PIL's NEAREST resize of the flipped mask uses the same pixel-centre mapping; it accumulates the
    # source coordinate incrementally, so it can round exact ties differently (rare single rows/columns).
    src = masks[0, :, ::-1] if g.flip else masks[0]
    pil = np.asarray(Image.fromarray(src).resize(g.resized_hw[::-1], Image.NEAREST))
    y0, x0 = g.crop_yx
    assert (expected[0, :ch, :cw] != pil[y0:y0 + ch, x0:x0 + cw]).mean() < 0.02


def test_downsample_masks_half_rule():
  m = np.zeros((1, 4, 4), np.uint8)
  m[0, 0, 0] = m[0, 0, 1] = 1            # 2 of 4 pixels -> 1
  m[0, 2, 2] = 1                         # 1 of 4 -> 0
  np.testing.assert_array_equal(T.downsample_masks(m, 2)[0], [[1, 0], [0, 0]])
  g = T.Geometry((8, 8), (8, 8), (8, 8))
  assert T.warp_masks(np.ones((2, 8, 8), np.uint8), g, stride=4).shape == (2, 2, 2)


def test_instance_targets_pad_truncate_and_drop_empty():
  masks = np.zeros((4, 16, 16), np.uint8)
  masks[0, 0:4, 0:8] = 1
  masks[2, 8:16, 8:16] = 1                # masks[1] empty -> dropped
  masks[3, 4:6, 4:6] = 1
  out = T.instance_targets(masks, np.array([3, 1, 2, 0]), valid_hw=(16, 16), max_instances=2, mask_stride=2,
                           is_crowd=np.array([False, False, True, False]))
  assert out["labels"].tolist() == [3, 2] and out["valid"].tolist() == [True, True]
  assert out["num_truncated"] == 1 and out["masks"].shape == (2, 8, 8)
  np.testing.assert_allclose(out["boxes"][0], [4 / 16, 2 / 16, 8 / 16, 4 / 16])
  assert out["is_crowd"].tolist() == [False, True]
  empty = T.instance_targets(np.zeros((0, 16, 16), np.uint8), np.zeros(0, np.int32), valid_hw=(16, 16),
                             max_instances=3)
  assert empty["valid"].tolist() == [False] * 3 and empty["masks"].shape == (3, 16, 16)


def test_sem_seg_instances():
  sem = np.full((8, 8), 255, np.int32)
  sem[:4] = 2
  sem[4:, :4] = 0
  out = T.sem_seg_instances(sem, 5, valid_hw=(8, 8), max_instances=4)
  assert out["labels"].tolist()[:2] == [0, 2] and out["valid"].tolist() == [True, True, False, False]
  np.testing.assert_array_equal(out["masks"][1], (sem == 2).astype(np.uint8))


def test_sample_clip(rng):
  for _ in range(50):
    idx = T.sample_clip(rng, 30, 3, frame_range=5)
    assert len(idx) == 3 and (np.diff(idx) >= 0).all() and idx.max() - idx.min() <= 10
  assert T.sample_clip(rng, 1, 3).tolist() == [0, 0, 0]
  assert T.sample_clip(None, 2, 3).tolist() == [0, 1, 1]
  with pytest.raises(ValueError, match="clip_length"):
    T.sample_clip(rng, 5, 0)


def test_prompt_samplers(rng):
  mask = np.zeros((20, 20), np.uint8)
  mask[2:12, 4:10] = 1
  center = T.build_prompt_sampler("center_click")({"gt_mask": mask}, None)["points"]
  assert center.shape == (1, 3) and mask[center[0, 0], center[0, 1]] and center[0, 2] == 1
  clicks = T.build_prompt_sampler("random_clicks", {"num_positive": 3, "num_negative": 2})(
      {"gt_mask": mask, "valid_hw": np.array([20, 20])}, rng)["points"]
  assert clicks.shape == (5, 3)
  for y, x, label in clicks:
    if label >= 0:
      assert mask[y, x] == label
  example = {"masks": np.stack([mask, np.zeros_like(mask)]), "valid": np.array([True, False])}
  out = T.build_prompt_sampler("instance_clicks", {"num_clicks": 6})(example, rng)
  assert out["click_points"].shape == (6, 2) and out["click_instance"].tolist() == [0] * 6
  for x, y in out["click_points"]:
    assert mask[int(y * 20), int(x * 20)]
  assert T.build_prompt_sampler("") is None
  with pytest.raises(ValueError, match="unknown prompt_sampler"):
    T.build_prompt_sampler("nope")


def test_bad_arguments_are_value_errors(rng):
  with pytest.raises(ValueError, match="input_hw"):
    T.lsj_geometry(rng, (0, 5), (8, 8))
  with pytest.raises(ValueError, match="min_scale"):
    T.lsj_geometry(rng, (5, 5), (8, 8), 2.0, 1.0)
  with pytest.raises(ValueError, match="geometry expects"):
    T.warp_image(np.zeros((4, 4, 3), np.uint8), T.Geometry((5, 5), (5, 5), (5, 5)))
  with pytest.raises(ValueError, match="stride"):
    T.downsample_masks(np.zeros((1, 4, 4), np.uint8), 0)
