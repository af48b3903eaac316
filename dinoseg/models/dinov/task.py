"""DINOv as a trainer plug-in (`config.task = "dinov"`; dinoseg/train/task.py).

Config groups it reads (configs/dinov/*.py): `model`, `prompts`, `loss`, `data.coco` and `data.sam`
(dinoseg.data_pipelines configs; COCO panoptic with task "panoptic", SA-1B with task "instance"),
`train.compute_dtype`, `init`.

Every step holds both tasks, as the reference's (1 SA-1B + 1 COCO image per GPU): the batch is the
concatenation of one COCO batch and one SA-1B batch under the key prefixes "coco." and "sam." (the same global
batch size each), and the loss is the sum of
- the generic task on the COCO images (`visual_openset`): class prompts sampled over the global batch
  (sampling.class_prompts), or per group of `prompts.images_per_group` images with `prompts.cross_gpu_batch`
  False, or per group in steps holding an image without instances with `prompts.empty_image_fallback`
  "reference" (then the empty image's group adds no generic loss; sampling.generic_prompts), encoded from the
  instances' full masks on their own images and averaged, the
  class-agnostic DN group, criterion.DINOvCriterion.generic; metrics "generic/<loss name>";
- the referring task on the SA-1B images (`visual_refer`): clicks, level targets and content prompts
  (sampling.refer_targets; with `prompts.use_shape_sampler` the content prompts are shapes drawn inside their
  instances by sampling.shape_prompts, scribbles in the released configs; an empty shape stays a prompt, as the
  reference, or with `prompts.drop_empty_shapes` is left out), criterion.DINOvCriterion.refer; metrics
  "refer/<loss name>"; with `prompts.openset_use_shape_sampler` the generic task's class-prompt examples are such
  shapes too (with `drop_empty_shapes` an instance with an empty shape is no example).
The reference runs the two as separate forward passes and sums the loss dictionaries; so does this task
(one jitted step, two model applications with static shapes).

With `prompts.coco_track` (the reference's `COCO_TRACK`, off in the released configs) the COCO batch also feeds
the referring task, as a third forward pass of the same COCO images (the data mix is unchanged): every instance of
the image is a click (no repetition up to `prompts.max_clicks`: the click budget is `data.coco.max_instances`,
padded clicks invalid), the first min(`prompts.max_content`, N) instances of the same random order are the content
prompts (shapes as for SA-1B), and the losses are the reference's one-to-one referring criterion
(criterion.DINOvCriterion.track); metrics "coco_track/<loss name>".
"""
import base64
import json
import jax
import jax.numpy as jnp

from dinoseg.models.dinov import criterion as criterion_lib
from dinoseg.models.dinov import sampling
from dinoseg.models.dinov.model import build_model
from dinoseg.models.maskdino import criterion as md_criterion
from dinoseg.models.maskdino import denoising
from dinoseg.structures import PaddedInstances
from dinoseg.train import task as task_lib

SOURCES = ("coco", "sam")


def _hw(value) -> tuple[int, int]:
  value = tuple(int(v) for v in (value if isinstance(value, (tuple, list)) else (value, value)))
  return value[0], value[1]


def _encode_state(state):
  return {"bytes": base64.b64encode(state).decode()} if isinstance(state, bytes) else state


def _decode_state(state):
  return base64.b64decode(state["bytes"]) if isinstance(state, dict) and set(state) == {"bytes"} else state


class MixedIterator:
  """One batch of each source per step, keys prefixed "<source>."; get_state / set_state cover both."""

  def __init__(self, iterators: dict):
    self.iterators = dict(iterators)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    out = {}
    for name, it in self.iterators.items():
      out.update({f"{name}.{k}": v for k, v in next(it).items()})
    return out

  def get_state(self) -> bytes:
    return json.dumps({name: _encode_state(it.get_state()) for name, it in self.iterators.items()}).encode()

  def set_state(self, state) -> None:
    state = json.loads(state) if isinstance(state, (bytes, str)) else state
    for name, it in self.iterators.items():
      it.set_state(_decode_state(state[name]))

  def start_prefetch(self) -> None:
    """Starts each source's background prefetch where it has one (grain's checkpoint restore calls this after
    `set_state`)."""
    for it in self.iterators.values():
      start = getattr(it, "start_prefetch", None)
      if start is not None:
        start()


def _generic_train(module, images, valid_hw, instance_masks, plan, targets, dn_noise):
  """Generic training forward (a `DINOv.apply` method): one prompt embedding per instance on its own image,
  averaged into each image's class prompts by `plan` (sampling.GenericPrompts: one set over the global batch,
  members (K, B * T), or one per group of images, members (G, K, Bg * T))."""
  mask_features, multi_scale = module.features(images, valid_hw)
  emb = module.predictor.encode_prompts(multi_scale, instance_masks.astype(jnp.float32))  # (B, T, d)
  prompts, prompt_valid = plan.per_image(emb)
  return module.predictor(multi_scale, mask_features, task="generic", prompts=prompts, prompt_valid=prompt_valid,
                          train=True, targets=targets, dn_noise=dn_noise)


def _refer_train(module, images, valid_hw, content_masks, content_valid, clicks, click_valid, click_noise):
  """Referring training forward (a `DINOv.apply` method): content prompts (B, K, H, W) on their own image."""
  mask_features, multi_scale = module.features(images, valid_hw)
  prompts = module.predictor.encode_prompts(multi_scale, content_masks.astype(jnp.float32))
  return module.predictor(multi_scale, mask_features, task="refer", prompts=prompts, prompt_valid=content_valid,
                          clicks=clicks, click_valid=click_valid, train=True, click_noise=click_noise)


def coco_track_targets(key, masks, valid, valid_hw, *, num_content: int, num_tokens: int, half_size: int = 3):
  """Clicks and content prompts of COCO fed to the referring task (the reference's `coco_track`).

  One click per instance, in a random order (the reference's randperm, not repeated up to a click budget), each a
  uniform random pixel of its instance with a +-half_size px box; the first min(num_content, N) instances of the
  same order are the content prompts.

  Args:
    masks: (B, N, H, W) instance masks on the canvas; valid (B, N); valid_hw (B, 2) image size in pixels.
  Returns:
    (clicks (B, N, 4) cxcywh normalized by the valid size, click_valid (B, N), click_index (B, N) int32 instance
    of each click, content_index (B, K) int32, content_valid (B, K)) with K = min(num_content, N).
  """
  n = masks.shape[1]
  k = min(int(num_content), n)
  # refer_targets with as many clicks (and content slots) as instance slots: its content index is then the whole
  # permutation, valid instances first; clicks past an image's instance count repeat earlier ones and are invalid.
  s = sampling.refer_targets(key, masks, valid, valid_hw, num_clicks=n, num_tokens=num_tokens, num_content=n,
                             half_size=half_size)
  count = jnp.sum(valid.astype(bool), axis=1)
  click_valid = jnp.arange(n)[None, :] < count[:, None]
  click_index = s.refer.content_index
  return s.clicks, click_valid, click_index, click_index[:, :k], click_valid[:, :k]


def _check_prompt_groups(prompts, data=None, batch_size=None) -> None:
  """defaults.check_prompt_groups, its ValueError raised as a UserValueError (a one-line CLI error)."""
  from dinoseg.errors import UserValueError  # noqa: PLC0415
  from dinoseg.models.dinov import defaults  # noqa: PLC0415
  try:
    defaults.check_prompt_groups(prompts, data, batch_size)
  except ValueError as e:
    raise UserValueError(str(e)) from None


@task_lib.register("dinov")
class DINOvTask(task_lib.Task):
  """DINOv training on COCO panoptic (generic task) + SA-1B (referring task); module docstring."""
  compute_dtype_inputs = ("coco.image", "sam.image")

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    dtype = task_lib.model_dtype(config)
    self.model = build_model(m, dtype)
    self.criterion = criterion_lib.DINOvCriterion(config.loss, config.prompts, dn=m.decoder.dn)
    _check_prompt_groups(config.prompts, config.get("data"))

  # -- data
  def train_iterator(self, process_index, process_count):
    from dinoseg.data_pipelines import build_train_iterator  # noqa: PLC0415
    sizes = {name: int(self.config.data[name].batch_size) for name in SOURCES}
    if len(set(sizes.values())) != 1:
      from dinoseg.errors import UserValueError  # noqa: PLC0415
      raise UserValueError(f"config.data.coco.batch_size and config.data.sam.batch_size must be equal (one image of "
                           f"each per device and step), got {sizes}")
    return MixedIterator({name: build_train_iterator(self.config.data[name], process_index, process_count)
                          for name in SOURCES})

  # -- model
  def init_variables(self, rng):
    h, w = _hw(self.config.data.coco.image_size)
    return self.model.init(rng, jnp.zeros((1, h, w, 3), jnp.float32))

  def weights_converter(self):
    """Reference state dict <-> Flax variables for this config's model (convert.py, any widths, strict)."""
    from dinoseg.convert.registry import ModelConverter  # noqa: PLC0415
    from dinoseg.models.dinov import convert  # noqa: PLC0415
    model = self.config.model
    return ModelConverter(name="dinov (from the config)", variables=True,
                          to_flax=lambda state: convert.to_flax(state, model),
                          to_torch=lambda variables: convert.to_torch(variables, model),
                          description="DINOv with the config's model settings")

  def init_converters(self):
    """"backbone" (ImageNet Swin, `config.init.backbone`), "task" (a checkpoint of this model), "orbax"; the
    released DINOv files (`config.init.checkpoint`) go through their registered converters
    ("dinov_swint_sam_coco", "dinov_swinl_sam_coco"), registered by importing convert.py here."""
    from dinoseg.models.dinov import convert  # noqa: F401, PLC0415
    return super().init_converters()

  # -- evaluation
  def _protocol_evaluator(self):
    """The one evaluate.ProtocolEvaluator of this task (built on first use; it keeps the protocols' jitted
    functions, so a run compiles them once). UserValueError without an `evaluation` config group."""
    if self.config.get("evaluation") is None:
      from dinoseg.models.dinov import defaults  # noqa: PLC0415
      from dinoseg.errors import UserValueError  # noqa: PLC0415
      raise UserValueError(f"the config has no `evaluation` group (e.g. {defaults.evaluation_config().to_dict()})")
    if getattr(self, "_protocols", None) is None:
      from dinoseg.models.dinov import evaluate as evaluate_lib  # noqa: PLC0415
      self._protocols = evaluate_lib.ProtocolEvaluator(self.config)
    return self._protocols

  def evaluator(self):
    """Training-time evaluation (the trainer asks once per run whether the task evaluates): the DINOv protocols
    (evaluate.ProtocolEvaluator, run by `evaluate`) when the config has an `evaluation` group and
    `train.eval_every_steps` > 0 (then also at the end with `train.eval_at_end`); None otherwise, so a run with
    `eval_every_steps` 0 does not evaluate (the protocols encode a whole bank split: `dinoseg eval` runs them
    on a checkpoint)."""
    train = self.config.get("train") or {}
    if self.config.get("evaluation") is None or int(train.get("eval_every_steps", 0) or 0) <= 0:
      return None
    return self._protocol_evaluator()

  def evaluate(self, variables):
    """`dinoseg eval` (a checkpoint of a run or --weights) and training-time evaluation: the DINOv protocols of
    `config.evaluation` (evaluate.run_protocols: the generic protocol through a prompt bank, VOS when
    `evaluation.vos_path` is set; split over the processes under jax.distributed). Metrics: the generic ones at
    the top level, the VOS ones as "vos/<name>"."""
    return self._protocol_evaluator().evaluate(variables)

  # -- loss
  def _shapes(self, key, masks):
    """The configured shape sampler (`prompts.shape_candidates` / `shape_probs`, sampling.shape_prompts) on
    (B, K, H, W) masks."""
    p = self.config.prompts
    return sampling.shape_prompts(key, masks, candidates=tuple(p.get("shape_candidates", ("Scribble",))),
                                  probs=tuple(p.get("shape_probs", (1.0,))), num_strokes=int(p.stroke_num_strokes),
                                  stroke_presets=tuple(p.stroke_presets), stroke_probs=tuple(p.stroke_probs),
                                  point_radius=float(p.get("shape_point_radius", 3.0)))

  def _generic_loss(self, params, model_state, batch, key):
    p, dec = self.config.prompts, self.config.model.decoder
    labels, valid = batch["coco.labels"].astype(jnp.int32), batch["coco.valid"].astype(bool)
    b = labels.shape[0]
    _check_prompt_groups(p, batch_size=b)  # the batch given (static), not only the configured one
    k_prompt, k_dn, k_points = jax.random.split(key, 3)
    masks = prompt_masks = batch["coco.masks"]
    eligible = None
    if p.openset_use_shape_sampler:  # class-prompt examples are shapes drawn inside the instances
      shapes = self._shapes(jax.random.fold_in(k_prompt, 1), masks)
      prompt_masks = shapes.masks
      if p.get("drop_empty_shapes", False):  # an empty shape is no example (the reference keeps it)
        eligible = shapes.nonempty
    plan = sampling.generic_prompts(
        k_prompt, labels, valid, num_classes=int(self.config.model.num_classes),
        max_examples=int(p.max_train_example), cross_gpu_batch=bool(p.get("cross_gpu_batch", True)),
        images_per_group=int(p.get("images_per_group", 1)),
        empty_image_fallback=str(p.get("empty_image_fallback", "none")), empty_image_targets=int(p.max_content),
        eligible=eligible)
    if p.get("group_examples_as_shapes", False) and plan.grouped is not None:
      # the reference's per-GPU path turns every drawn example into a shape of the shape sampler (its "30%" keep
      # test always passes), on top of the openset shapes when those are on; only in steps that use the groups
      source = prompt_masks
      prompt_masks = jax.lax.cond(
          plan.use_grouped, lambda: self._shapes(jax.random.fold_in(k_prompt, 3), source).masks,
          lambda: source.astype(jnp.float32))
    targets = PaddedInstances(labels=plan.labels, boxes=batch["coco.boxes"].astype(jnp.float32), valid=plan.valid,
                              masks=masks)
    noise = denoising.sample_dn_noise(k_dn, b, dec.dn_num, 1) if dec.dn != "no" else None
    out = self.model.apply({"params": params, **model_state}, batch["coco.image"], batch["coco.valid_hw"],
                           prompt_masks, plan, targets, noise, method=_generic_train)
    losses = self.criterion.generic(out, targets, md_criterion.random_draws(k_points), normalizer=plan.normalizer,
                                    image_active=plan.image_active)
    metrics = {"num_classes": plan.num_slots_used}
    if plan.image_active is not None:  # the reference's empty-image fallback: was it used, how many images counted
      metrics["generic_grouped"] = plan.use_grouped.astype(jnp.float32)
      metrics["generic_images_counted"] = jnp.sum(plan.image_active.astype(jnp.float32))
    return losses, metrics

  def _refer_loss(self, params, model_state, batch, key):
    p = self.config.prompts
    k_sample, k_noise, k_points = jax.random.split(key, 3)
    masks, valid = batch["sam.masks"], batch["sam.valid"].astype(bool)
    s = sampling.refer_targets(k_sample, masks, valid, batch["sam.valid_hw"], num_clicks=int(p.max_clicks),
                               num_tokens=int(self.config.model.decoder.num_mask_tokens),
                               num_content=int(p.max_content), half_size=int(p.click_half_size))
    content_masks = jnp.take_along_axis(masks, s.refer.content_index[:, :, None, None], axis=1)
    refer = s.refer
    if p.use_shape_sampler:  # the reference's SA-1B content prompts are shapes (scribbles) inside the instances
      shapes = self._shapes(jax.random.fold_in(k_sample, 1), content_masks)
      content_masks = shapes.masks
      if p.get("drop_empty_shapes", False):  # an empty shape: no prompt (the reference keeps it)
        refer = refer.replace(content_valid=refer.content_valid & shapes.nonempty)
    noise = jax.random.uniform(k_noise, s.clicks.shape, jnp.float32)
    out = self.model.apply({"params": params, **model_state}, batch["sam.image"], batch["sam.valid_hw"],
                           content_masks, refer.content_valid, s.clicks, s.click_valid, noise, method=_refer_train)
    instances = PaddedInstances(labels=jnp.zeros(valid.shape, jnp.int32), boxes=batch["sam.boxes"].astype(jnp.float32),
                                valid=valid, masks=masks)
    losses = self.criterion.refer(out, instances, refer, md_criterion.random_draws(k_points))
    return losses, {"num_level_targets": jnp.sum(s.refer.level_valid.astype(jnp.float32))}

  def _track_loss(self, params, model_state, batch, key):
    """COCO fed to the referring task (`prompts.coco_track`): a referring forward pass of the COCO images with one
    click per instance, and the one-to-one referring criterion."""
    p = self.config.prompts
    k_sample, k_noise, k_points = jax.random.split(key, 3)
    masks, valid = batch["coco.masks"], batch["coco.valid"].astype(bool)
    clicks, click_valid, click_index, content_index, content_valid = coco_track_targets(
        k_sample, masks, valid, batch["coco.valid_hw"], num_content=int(p.max_content),
        num_tokens=int(self.config.model.decoder.num_mask_tokens), half_size=int(p.click_half_size))
    content_masks = jnp.take_along_axis(masks, content_index[:, :, None, None], axis=1)
    if p.use_shape_sampler:  # the same content prompts as the SA-1B referring task (scribbles in the released configs)
      shapes = self._shapes(jax.random.fold_in(k_sample, 1), content_masks)
      content_masks = shapes.masks
      if p.get("drop_empty_shapes", False):
        content_valid = content_valid & shapes.nonempty
    noise = jax.random.uniform(k_noise, clicks.shape, jnp.float32)
    out = self.model.apply({"params": params, **model_state}, batch["coco.image"], batch["coco.valid_hw"],
                           content_masks, content_valid, clicks, click_valid, noise, method=_refer_train)
    instances = PaddedInstances(labels=jnp.zeros(valid.shape, jnp.int32),
                                boxes=batch["coco.boxes"].astype(jnp.float32), valid=valid, masks=masks)
    losses = self.criterion.track(out, instances, click_index, content_index, content_valid,
                                  md_criterion.random_draws(k_points))
    return losses, {"num_track_clicks": jnp.sum(click_valid.astype(jnp.float32))}

  def loss_fn(self, params, model_state, batch, rng, *, train=True):
    k_generic, k_refer = jax.random.split(rng)
    generic, m_generic = self._generic_loss(params, model_state, batch, k_generic)
    refer, m_refer = self._refer_loss(params, model_state, batch, k_refer)
    metrics = {**{f"generic/{k}": v for k, v in generic.items()}, **{f"refer/{k}": v for k, v in refer.items()},
               **m_generic, **m_refer}
    total = md_criterion.total_loss(generic) + md_criterion.total_loss(refer)
    if self.config.prompts.get("coco_track", False):  # the reference's COCO_TRACK (off in the released configs)
      track, m_track = self._track_loss(params, model_state, batch, jax.random.fold_in(rng, 2))
      metrics.update({**{f"coco_track/{k}": v for k, v in track.items()}, **m_track})
      total = total + md_criterion.total_loss(track)
    return total, metrics


__all__ = ["DINOvTask", "MixedIterator", "coco_track_targets"]
