"""The padding convention (fixed-shape targets and images), prediction results, the one normalisation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.ops import pixels
from dinoseg.structures import PaddedInstances, Segmentation, pad_image, pad_instances, segments_from_label_map


def test_pad_instances_layout_and_overflow():
  out = pad_instances([3, 5], [[0.5, 0.5, 0.2, 0.2], [0.1, 0.2, 0.1, 0.1]], np.ones((2, 4, 5), bool),
                      max_instances=4, mask_hw=(6, 8), is_crowd=[False, True], track_ids=[7, 9])
  assert out["labels"].tolist() == [3, 5, 0, 0]
  assert out["valid"].tolist() == [True, True, False, False]
  assert out["masks"].shape == (4, 6, 8) and out["masks"][:2, :4, :5].all() and out["masks"][:, 4:].sum() == 0
  assert out["is_crowd"].tolist() == [False, True, False, False]
  assert out["track_ids"].tolist() == [7, 9, 0, 0]
  assert out["num_dropped"] == 0
  with pytest.raises(ValueError, match="max_instances"):
    pad_instances([1, 2, 3], np.zeros((3, 4)), max_instances=2)
  trunc = pad_instances([1, 2, 3], np.zeros((3, 4)), max_instances=2, on_overflow="truncate")
  assert trunc["labels"].tolist() == [1, 2] and trunc["num_dropped"] == 1
  empty = pad_instances([], np.zeros((0, 4)), np.zeros((0, 3, 3)), max_instances=3)
  assert not empty["valid"].any() and empty["masks"].shape == (3, 3, 3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(labels=[1], boxes=np.zeros((2, 4))), "boxes"),
    (dict(labels=[1], boxes=np.zeros((1, 4)), masks=np.zeros((2, 3, 3))), "masks"),
    (dict(labels=[1], boxes=np.zeros((1, 4)), masks=np.zeros((1, 9, 3)), mask_hw=(4, 4)), "canvas"),
    (dict(labels=[1], boxes=np.zeros((1, 4)), is_crowd=[0, 1]), "is_crowd"),
    (dict(labels=[1], boxes=np.zeros((1, 4)), on_overflow="drop"), "on_overflow"),
])
def test_pad_instances_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    pad_instances(max_instances=3, **kwargs)


def test_instances_are_pytrees():
  inst = PaddedInstances(labels=jnp.zeros((2, 3), jnp.int32), boxes=jnp.zeros((2, 3, 4)),
                         valid=jnp.asarray([[True, False, False], [True, True, False]]))
  leaves = jax.tree.leaves(inst)
  assert len(leaves) == 3  # None fields are not leaves
  assert np.asarray(inst.num_instances).tolist() == [1, 2]
  stacked = jax.tree.map(lambda *x: jnp.stack(x), inst, inst)
  assert stacked.boxes.shape == (2, 2, 3, 4)


def test_pad_image():
  canvas = pad_image(np.ones((2, 3, 3), np.float32), (4, 5), value=128.0)
  assert canvas.shape == (4, 5, 3) and canvas[:2, :3].min() == 1 and canvas[2:].min() == 128
  with pytest.raises(ValueError, match="canvas"):
    pad_image(np.ones((5, 3, 3)), (4, 5))


def test_segmentation_fields_select_and_semantic_segments():
  label_map = np.array([[0, 2], [2, 2]])
  scores = np.array([[0.5, 0.9], [0.7, 0.8]], np.float32)
  fields = segments_from_label_map(label_map, ("sky", "cat", "dog"), scores, ignore=(0,))
  result = Segmentation(**fields, label_map=label_map)
  assert len(result) == 1 and result.names == ("dog",) and result.labels.tolist() == [2]
  assert result.masks.tolist() == [[[False, True], [True, True]]] and result.image_hw == (2, 2)
  np.testing.assert_allclose(result.scores, [0.8])
  assert len(result.select(result.scores > 0.9)) == 0 and result.select([0]).names == ("dog",)
  with pytest.raises(ValueError, match="N rows"):
    Segmentation(masks=np.zeros((2, 2, 2), bool), scores=np.zeros(1), labels=np.zeros(1, np.int32), names=("a",),
                 class_names=("a",))


def test_normalisation_conventions_are_the_references():
  x = np.arange(256, dtype=np.uint8).reshape(-1, 1).repeat(3, 1)
  unit = pixels.normalize_pixels(x)  # torchvision: ToTensor (x / 255), Normalize on 0..1 statistics
  expected = (x.astype(np.float32) / np.float32(255) - np.float32(pixels.IMAGENET_MEAN)) / np.float32(pixels.IMAGENET_STD)
  np.testing.assert_array_equal(unit, expected)
  d2 = pixels.normalize(x, pixels.IMAGENET_MEAN_255, pixels.IMAGENET_STD_255)  # detectron2: 0..255 statistics
  np.testing.assert_array_equal(d2, (x.astype(np.float32) - np.float32(pixels.IMAGENET_MEAN_255))
                                / np.float32(pixels.IMAGENET_STD_255))
  np.testing.assert_allclose(np.asarray(jax.jit(pixels.normalize_pixels)(x)), unit, atol=1e-6)  # XLA: to 1 ulp
  np.testing.assert_array_equal(np.float32(pixels.IMAGENET_MEAN_255), np.float32(np.asarray(pixels.IMAGENET_MEAN) * 255))
  from dinoseg.models.maskdino.defaults import PIXEL_MEAN, PIXEL_STD
  assert (PIXEL_MEAN, PIXEL_STD) == (pixels.IMAGENET_MEAN_255, pixels.IMAGENET_STD_255)
