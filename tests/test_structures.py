"""The padding convention: fixed-shape targets and images."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg.structures import PaddedImages, PaddedInstances, pad_image, pad_instances


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


def test_containers_are_pytrees_and_pixel_mask():
  images = PaddedImages(images=jnp.zeros((2, 4, 6, 3)), valid_hw=jnp.asarray([[4, 6], [2, 3]]),
                        original_hw=jnp.asarray([[40, 60], [20, 30]]))
  mask = np.asarray(jax.jit(lambda im: im.pixel_mask)(images))
  assert mask[0].all() and mask[1, :2, :3].all() and mask[1].sum() == 6
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
