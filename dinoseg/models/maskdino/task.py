"""Mask DINO as a trainer plug-in (`config.task = "maskdino"`; dinoseg/train/task.py).

Config groups it reads (configs/maskdino/*.py, defaults.py documents the fields): `model`, `loss`,
`test`, `dataset` (class names / category ids for overlays), `data` (dinoseg.data_pipelines;
task "instance", "panoptic" or "semantic"), `train.compute_dtype`.

- Training batch (docs/data.md): image (B, H, W, 3) uint8 on the canvas, valid_hw, labels / boxes /
  valid / masks (B, T, ...). The model normalizes the images; the loss is the reference's weighted
  loss dictionary (criterion.py), the denoising noise and point draws come from the step's rng.
- Evaluation: `predict_fn` runs the model and the jitted postprocessing on the eval canvas and
  writes results at each image's original size into a static output canvas `test.eval_output_hw`
  (an original larger than it is predicted at a reduced size and upsampled on the host with
  nearest neighbours). The evaluator computes COCO box/mask AP (pycocotools), PQ and/or mIoU,
  following `test.instance_on / panoptic_on / semantic_on`, against the prepared dataset's
  ground truth at original resolution.
"""
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.errors import UserValueError
from dinoseg.models.maskdino import criterion as criterion_lib
from dinoseg.models.maskdino import denoising
from dinoseg.models.maskdino import postprocess as pp
from dinoseg.models.maskdino.model import build_model
from dinoseg.structures import PaddedInstances
from dinoseg.train import task as task_lib


def _hw(value) -> tuple[int, int]:
  value = tuple(int(v) for v in (value if isinstance(value, (tuple, list)) else (value, value)))
  return value[0], value[1]


def thing_classes(config, dataset=None) -> tuple[int, ...]:
  """Contiguous ids of the thing classes: from the dataset's categories ("isthing") when known,
  else `config.test.thing_classes`, else every class."""
  if dataset is not None and dataset.categories and any("isthing" in c for c in dataset.categories):
    ids = dataset.category_ids
    things = {int(c["id"]) for c in dataset.categories if c.get("isthing", 1)}
    return tuple(i for i, cid in enumerate(ids) if cid in things)
  return tuple(config.test.thing_classes) or tuple(range(config.model.num_classes))


def fit_output_hw(original_hw: jax.Array, canvas_hw: tuple[int, int]) -> jax.Array:
  """(B, 2) output sizes: the original size, shrunk (aspect kept) when it exceeds the canvas."""
  orig = original_hw.astype(jnp.float32)
  scale = jnp.minimum(1.0, jnp.minimum(canvas_hw[0] / orig[:, 0], canvas_hw[1] / orig[:, 1]))
  out = jnp.floor(orig * scale[:, None] + 0.5).astype(jnp.int32)
  return jnp.clip(out, 1, jnp.asarray(canvas_hw, jnp.int32))


class MaskDINOEvaluator:
  """COCO AP / PQ / mIoU of Mask DINO predictions on a prepared dataset split (see module docstring)."""

  def __init__(self, config, dataset, split: str):
    from dinoseg.evaluation.coco import COCOEvaluator  # noqa: PLC0415
    from dinoseg.evaluation.panoptic import PanopticEvaluator  # noqa: PLC0415
    from dinoseg.evaluation.semantic import SemanticEvaluator  # noqa: PLC0415
    t = config.test
    have = dataset.num_classes(config.data.get("label_map", "") or None)
    if have != config.model.num_classes:
      raise UserValueError(f"config.model.num_classes is {config.model.num_classes} but the dataset {dataset.path} "
                           f"has {have} classes")
    self.dataset, self.split = dataset, split
    self.category_ids = dataset.category_ids
    self.instance = (COCOEvaluator(dataset.coco_ground_truth(split), category_ids=self.category_ids)
                     if t.instance_on else None)
    self.panoptic = PanopticEvaluator(dataset.categories) if t.panoptic_on else None
    self.semantic = None
    if t.semantic_on:
      label_map = config.data.get("label_map", "") or None
      self.lut = dataset.label_map(label_map) if dataset.metadata.get("label_maps") else None
      self.semantic = SemanticEvaluator(config.model.num_classes)
    self._records = None
    self.num_images = 0

  def _record(self, image_id: int) -> dict:
    from dinoseg.data_pipelines import schema  # noqa: PLC0415
    view = self.dataset.split(self.split)
    if self._records is None:
      self._records = {int(view.record(i)["id"]): i for i in range(len(view))}
    return schema.decode_example(view.record(self._records[int(image_id)]), image=False, masks=False)

  @staticmethod
  def _to_original(x: np.ndarray, out_hw, orig_hw) -> np.ndarray:
    """Crops (..., h, w) to out_hw and, when it was shrunk, upsamples to orig_hw (nearest)."""
    x = x[..., :out_hw[0], :out_hw[1]]
    if tuple(out_hw) == tuple(orig_hw):
      return x
    rows = np.minimum((np.arange(orig_hw[0]) * out_hw[0]) // orig_hw[0], out_hw[0] - 1)
    cols = np.minimum((np.arange(orig_hw[1]) * out_hw[1]) // orig_hw[1], out_hw[1] - 1)
    return x[..., rows[:, None], cols[None, :]]

  def update(self, batch: Mapping[str, Any], predictions: Mapping[str, Any]) -> None:
    from dinoseg.evaluation.panoptic import semantic_from_panoptic  # noqa: PLC0415
    valid = np.asarray(batch.get("example_valid", np.ones(len(batch["image_id"]), bool)))
    for b in np.nonzero(valid)[0]:
      image_id = int(batch["image_id"][b])
      orig = tuple(int(v) for v in batch["original_hw"][b])
      out_hw = tuple(int(v) for v in predictions["output_hw"][b])
      self.num_images += 1
      if self.instance is not None:
        keep = np.asarray(predictions["inst_valid"][b])
        boxes = np.asarray(predictions["inst_boxes"][b])[keep]
        scale = np.asarray([orig[1] / out_hw[1], orig[0] / out_hw[0]] * 2)
        masks = self._to_original(np.asarray(predictions["inst_masks"][b])[keep], out_hw, orig)
        self.instance.process(image_id, np.asarray(predictions["inst_scores"][b])[keep],
                              np.asarray(predictions["inst_labels"][b])[keep], boxes_xyxy=boxes * scale, masks=masks)
      if self.panoptic is not None or self.semantic is not None:
        ex = self._record(image_id)
      if self.panoptic is not None:
        seg = self._to_original(np.asarray(predictions["pano_seg"][b]), out_hw, orig)
        new = np.asarray(predictions["pano_is_new"][b])
        info = [{"id": int(predictions["pano_segment_id"][b][k]),
                 "category_id": self.category_ids[int(predictions["pano_category"][b][k])]}
                for k in np.nonzero(new)[0]]
        segs = ex["panoptic"]["segments"]
        gt_info = [{"id": int(i), "category_id": int(c), "iscrowd": int(z), "area": float(a)}
                   for i, c, z, a in zip(segs["id"], segs["category_id"], segs["is_crowd"], segs["area"])]
        self.panoptic.process(ex["panoptic"]["pan_seg"], gt_info, seg, info)
      if self.semantic is not None:
        pred = self._to_original(np.asarray(predictions["sem_labels"][b]), out_hw, orig)
        if "sem_seg" in ex:
          gt = ex["sem_seg"].astype(np.int64)
          if self.lut is not None:
            gt = self.lut[np.minimum(gt, 255)]
        elif "panoptic" in ex:  # panoptic datasets: the semantic labels of the panoptic annotation
          segs = ex["panoptic"]["segments"]
          gt = semantic_from_panoptic(ex["panoptic"]["pan_seg"], segs["id"], segs["category_id"], self.category_ids)
        else:
          raise UserValueError(f"test.semantic_on needs semantic or panoptic ground truth; dataset "
                               f"{self.dataset.path} has neither (image {image_id})")
        self.semantic.process(pred, gt)

  def result(self) -> dict[str, Any]:
    out: dict[str, Any] = {"num_images": self.num_images}
    if self.instance is not None:
      for iou_type, metrics in self.instance.evaluate().items():
        for name, value in metrics.items():
          out[f"{iou_type}/{name}"] = value
    if self.panoptic is not None:
      res = self.panoptic.evaluate()
      out.update({k: v for k, v in res.items() if isinstance(v, float)})
    if self.semantic is not None:
      res = self.semantic.evaluate()
      out.update({k: res[k] for k in ("mIoU", "fwIoU", "mACC", "pACC")})
    return out


@task_lib.register("maskdino")
class MaskDINOTask(task_lib.Task):
  """Mask DINO training and evaluation (module docstring)."""
  # bf16 compute casts the images only: boxes in bf16 are off by up to 4 px at 1024.
  compute_dtype_inputs = ("image",)

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    dtype = task_lib.model_dtype(config)
    self.model = build_model(m, dtype)
    self.num_classes = int(m.num_classes)
    self.criterion = criterion_lib.SetCriterion(self.num_classes, config.loss, semantic_ce_loss=m.semantic_ce_loss,
                                                dn=m.decoder.dn)
    self._dataset = None

  # -- data
  @property
  def dataset(self):
    if self._dataset is None:
      from dinoseg.data_pipelines import open_dataset  # noqa: PLC0415
      self._dataset = open_dataset(self.config.data.path)
    return self._dataset

  def train_iterator(self, process_index, process_count):
    from dinoseg.data_pipelines import build_train_iterator  # noqa: PLC0415
    return build_train_iterator(self.config.data, process_index, process_count)

  def eval_iterator(self, process_index, process_count):
    from dinoseg.data_pipelines import build_eval_iterator  # noqa: PLC0415
    return build_eval_iterator(self.config.data, process_index, process_count)

  def evaluator(self):
    return MaskDINOEvaluator(self.config, self.dataset, self.config.data.eval_split)

  # -- model
  def init_variables(self, rng):
    h, w = _hw(self.config.data.image_size)
    return self.model.init(rng, jnp.zeros((1, h, w, 3), jnp.float32))

  def weights_converter(self):
    """Reference state dict <-> Flax variables for this config's model (any widths, not only the released
    ones; every layout of convert.py, strict): `variables_from_weights` and `dinoseg convert --config`."""
    from dinoseg.convert.registry import ModelConverter  # noqa: PLC0415
    from dinoseg.models.maskdino import convert  # noqa: PLC0415
    model, no_object_weight = self.config.model, float(self.config.loss.no_object_weight)
    return ModelConverter(name="maskdino (from the config)", variables=True,
                          to_flax=lambda state: convert.to_flax(state, model),
                          to_torch=lambda variables: convert.to_torch(variables, model, no_object_weight=no_object_weight),
                          description="Mask DINO with the config's model settings")

  def loss_fn(self, params, model_state, batch, rng, *, train=True):
    images = batch["image"]
    targets = PaddedInstances(labels=batch["labels"].astype(jnp.int32), boxes=batch["boxes"].astype(jnp.float32),
                              valid=batch["valid"].astype(bool), masks=batch["masks"])
    k_dn, k_points = jax.random.split(rng)
    dec = self.config.model.decoder
    noise = (denoising.sample_dn_noise(k_dn, targets.labels.shape[0], dec.dn_num, self.num_classes)
             if dec.dn != "no" else None)
    out = self.model.apply({"params": params, **model_state}, images, batch["valid_hw"], train=True,
                           targets=targets, dn_noise=noise)
    losses = self.criterion(out, targets, criterion_lib.random_draws(k_points))
    loss = criterion_lib.total_loss(losses)
    metrics = dict(losses)
    metrics["num_instances"] = jnp.sum(targets.valid.astype(jnp.float32))
    return loss, metrics

  def predict_fn(self, params, model_state, batch):
    t, m = self.config.test, self.config.model
    images = batch["image"]
    padded_hw = tuple(images.shape[1:3])
    canvas = _hw(t.get("eval_output_hw", padded_hw))
    valid_hw = batch["valid_hw"].astype(jnp.int32)
    out_hw = fit_output_hw(batch["original_hw"].astype(jnp.int32), canvas)
    out = self.model.apply({"params": params, **model_state}, images, valid_hw)
    logits, boxes, masks = out.logits[-1], out.boxes[-1], out.masks[-1]
    things = thing_classes(self.config, self._dataset_or_none())
    pred = {"output_hw": out_hw}
    if t.instance_on:
      r = pp.instance_inference(logits, boxes, masks, padded_hw=padded_hw, valid_hw=valid_hw, output_hw=out_hw,
                                canvas_hw=canvas, top_k=min(t.detections_per_image, logits.shape[1] * logits.shape[2]),
                                thing_classes=things if t.panoptic_on else None)
      pred.update(inst_scores=r.scores, inst_labels=r.labels, inst_boxes=r.boxes, inst_masks=r.masks,
                  inst_valid=r.valid)
    if t.panoptic_on:
      r = pp.panoptic_inference(logits, masks, padded_hw=padded_hw, valid_hw=valid_hw, output_hw=out_hw,
                                canvas_hw=canvas, thing_classes=things, object_mask_threshold=t.object_mask_threshold,
                                overlap_threshold=t.overlap_threshold, transform_eval=t.transform_eval,
                                temperature=t.pano_temperature)
      pred.update(pano_seg=r.segmentation, pano_segment_id=r.segment_id, pano_category=r.category,
                  pano_is_new=r.is_new)
    if t.semantic_on:
      before = t.sem_seg_postprocess_before_inference or t.instance_on or t.panoptic_on

      def one(args):  # one image at a time: (C, Ho, Wo) scores can be large
        lg, mk, v, o = args
        sem = pp.semantic_inference(lg[None], mk[None], padded_hw=padded_hw, valid_hw=v[None], output_hw=o[None],
                                    canvas_hw=canvas, semantic_ce_loss=m.semantic_ce_loss,
                                    transform_eval=t.transform_eval, temperature=t.pano_temperature,
                                    postprocess_before_inference=before)
        return jnp.argmax(sem[0], axis=0).astype(jnp.int32)
      pred["sem_labels"] = jax.lax.map(one, (logits, masks, valid_hw, out_hw))
    return pred

  def _dataset_or_none(self):
    try:
      return self.dataset if self.config.data.get("path", "") else None
    except (FileNotFoundError, ValueError):
      return None


__all__ = ["MaskDINOTask", "MaskDINOEvaluator", "thing_classes", "fit_output_hw"]
