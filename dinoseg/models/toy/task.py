"""The toy segmentation task: the smallest complete implementation of `dinoseg.train.task.Task`.

Config keys it reads (configs/toy/toy_segmentation.py):
  model: name ("toy_segmenter": the converter of `dinoseg convert` and weight files), num_classes, width, image_size, dropout_rate
  data: batch_size (global), num_train_examples, num_eval_examples, seed
  loss: ce_weight, dice_weight
  train.compute_dtype: the model's compute dtype
"""
import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.evaluation.semantic import SemanticEvaluator
from dinoseg.models.toy import data
from dinoseg.models.toy.model import build_model
from dinoseg.ops import softmax_cross_entropy
from dinoseg.train import task as task_lib


def soft_dice_loss(probs: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """1 - mean over classes of 2 |P ∩ Y| / (|P| + |Y|) with +1 smoothing; probs (B, H, W, K)."""
  onehot = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)
  inter = jnp.sum(probs * onehot, axis=(0, 1, 2))
  total = jnp.sum(probs, axis=(0, 1, 2)) + jnp.sum(onehot, axis=(0, 1, 2))
  return 1.0 - jnp.mean((2.0 * inter + 1.0) / (total + 1.0))


class ToyEvaluator:
  """mIoU / pixel accuracy (dinoseg.evaluation.semantic) over the valid eval images."""

  def __init__(self, num_classes: int):
    self._semantic = SemanticEvaluator(num_classes, class_names=data.CLASS_NAMES[:num_classes])
    self.num_images = 0

  def update(self, batch, predictions) -> None:
    for pred, gt, valid in zip(predictions["labels"], batch["labels"], batch["valid"]):
      if valid:
        self._semantic.process(np.asarray(pred), np.asarray(gt))
        self.num_images += 1

  def result(self) -> dict:
    return {**self._semantic.evaluate(), "num_images": self.num_images}


@task_lib.register("toy_segmentation")
class ToySegmentationTask(task_lib.Task):
  """Per-pixel classification of synthetic shapes with a ToySegmenter."""

  def __init__(self, config):
    super().__init__(config)
    dtype = jnp.dtype(config.get("train", {}).get("compute_dtype", "float32"))
    self.model = build_model(config.model, dtype)
    self.num_classes = int(config.model.num_classes)
    self.image_size = int(config.model.image_size)

  def init_variables(self, rng):
    return self.model.init(rng, jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32))

  def _logits(self, params, model_state, images, rng=None, train=False):
    rngs = {"dropout": rng} if train else {}
    return self.model.apply({"params": params, **model_state}, images, deterministic=not train,
                            rngs=rngs).astype(jnp.float32)

  def loss_fn(self, params, model_state, batch, rng, *, train=True):
    logits = self._logits(params, model_state, batch["image"], rng, train)
    labels = batch["labels"]
    ce = softmax_cross_entropy(logits, labels)
    dice = soft_dice_loss(jax.nn.softmax(logits, axis=-1), labels, self.num_classes)
    loss = self.config.loss.ce_weight * ce + self.config.loss.dice_weight * dice
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
    return loss, {"loss_ce": ce, "loss_dice": dice, "pixel_accuracy": accuracy}

  def predict_fn(self, params, model_state, batch):
    return {"labels": jnp.argmax(self._logits(params, model_state, batch["image"]), axis=-1).astype(jnp.int32)}

  def train_iterator(self, process_index, process_count):
    return data.iterator(data.train_dataset(self.config.data, self.image_size, process_index, process_count))

  def eval_iterator(self, process_index, process_count):
    return data.eval_dataset(self.config.data, self.image_size, process_index, process_count)

  def evaluator(self):
    return ToyEvaluator(self.num_classes)


__all__ = ["ToySegmentationTask", "ToyEvaluator", "soft_dice_loss"]
