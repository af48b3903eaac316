"""Default DINOv settings: the values of the reference's `configs/dinov_sam_coco_train.yaml` (Swin-T) that the
Swin-L file shares (shared/reference/dinov.md section 7).

Each configs/dinov/*.py file starts from these groups and sets what its model changes (backbone, encoder
levels, the match-score loss), as configs/maskdino/*.py do. Field names are lower-case versions of the
reference keys:

model (used by dinoseg.models.dinov.model.build_model and convert.py)
  backbone.name / .kwargs         MODEL.BACKBONE (a dinoseg.backbones name and constructor overrides)
  pixel_decoder.*                 MODEL.ENCODER: DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
                                  TOTAL_NUM_FEATURE_LEVELS, FEATURE_ORDER, CONVS_DIM, MASK_DIM,
                                  TRANSFORMER_ENC_LAYERS, COMMON_STRIDE; dim_feedforward and nheads are
                                  the reference's DECODER.DIM_FEEDFORWARD / NHEADS (the encoder reads them)
  decoder.*                       MODEL.DECODER: HIDDEN_DIM, MODEL.DIM_PROJ, NUM_OBJECT_QUERIES, NHEADS,
                                  DIM_FEEDFORWARD, DEC_LAYERS, DN, DN_NUM, DN_NOISE_SCALE,
                                  NUM_INTERACTIVE_TOKENS, NUM_CONTENT_TOKENS, CONTENT_INDEPENDENT
  num_classes                     ENCODER.NUM_CLASSES (133; classes come from prompts, the count is data)
evaluation                      `dinoseg eval`: the generic protocol (bank, example draws) and the
                                  VOS dataset (evaluation_config)
prompts, loss, test               read by training (dinov.task), the criterion and the protocols:
                                  prompt sampling (MAX_NUM_INSTANCE, MAX_NUM_INSTANCE_CONTENT,
                                  MAX_TRAIN_EXAMPLE, INFERENCE_EXAMPLE, STROKE_SAMPLER (candidates and
                                  their probabilities: sampling.shape_prompts), NMS_THRESHOLD,
                                  MAX_MEMORY_SIZE, point_per_side, MANY2MANY, softmax), loss and cost
                                  weights, point sampling, test thresholds.
"""
import ml_collections

from dinoseg.models.maskdino.defaults import NO_WEIGHT_DECAY, PIXEL_MEAN, PIXEL_STD  # noqa: F401

VOS_LATE_OBJECT_MODES = ("clean", "reference")  # test.vos_late_objects (dinoseg.models.dinov.vos)
VOS_RESIZE_MODES = ("dinoseg", "reference")  # test.vos_resize (dinoseg.models.dinov.vos)
VOS_DTYPES = ("float32", "float16", "bfloat16")  # test.vos_dtype: VOS compute dtype (params stay float32)
VOS_FIRST_FRAME_OUTPUTS = ("given", "reference")  # test.vos_first_frame_output (dinoseg.models.dinov.vos)
VOS_OVERLAP_MODES = ("label_map", "per_object")  # test.vos_overlap (dinoseg.models.dinov.vos)
BANK_ORDERS = ("clean", "reference")  # evaluation.bank_order (dinoseg.models.dinov.bank.build_bank)


def model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      num_classes=133,
      pixel_mean=PIXEL_MEAN,
      pixel_std=PIXEL_STD,
      msda_impl="auto",
      dtype="float32",
      backbone=dict(name="swin_tiny", kwargs=dict()),
      pixel_decoder=dict(
          transformer_in_features=("res3", "res4", "res5"),
          total_num_feature_levels=4,
          feature_order="low2high",
          conv_dim=256,
          mask_dim=256,
          dim_feedforward=2048,
          num_encoder_layers=6,
          nheads=8,
          common_stride=4,
      ),
      decoder=dict(
          hidden_dim=256,
          dim_proj=512,
          num_queries=300,
          nheads=8,
          dim_feedforward=2048,
          dec_layers=9,
          dn="seg",
          dn_num=100,  # DN slot budget; groups = dn_num // (largest GT count) per chunk (maskdino/denoising.py)
          dn_noise_scale=0.4,
          dn_group_images=1,  # the reference counts GTs per GPU, which holds 1 COCO image
          num_mask_tokens=6,
          num_content_tokens=1,
          content_independent=True,
          query_pad_multiple=8,
      ),
  ))


def prompt_config() -> ml_collections.ConfigDict:
  """Prompt sampling and inference protocols (shared/reference/dinov.md sections 4-6)."""
  return ml_collections.ConfigDict(dict(
      max_clicks=50,  # MAX_NUM_INSTANCE: clicks per SA-1B image (x num_mask_tokens queries)
      click_half_size=3,  # a click is a +-3 px box
      max_content=8,  # MAX_NUM_INSTANCE_CONTENT: scribble prompts per SA-1B image
      max_train_example=4,  # MAX_TRAIN_EXAMPLE: examples averaged into a class prompt (1..4)
      inference_example=4,  # INFERENCE_EXAMPLE (the README's evaluation command uses 16)
      cross_gpu_batch=True,  # CROSS_GPU_BATCH: one class-prompt set over the whole global batch; False: one per
                             # group of `images_per_group` consecutive images (sampling.generic_prompts)
      images_per_group=1,  # the reference's COCO images per GPU (COCO.TRAIN.BATCH_SIZE_PER_GPU); divides the batch
      empty_image_fallback="none",  # "none" | "reference": an image without instances switches the step to the
                                    # per-group prompts and zeroes its group's generic losses (the reference's
                                    # `fake` targets; sampling.generic_prompts)
      group_examples_as_shapes=False,  # True: in steps that use the per-group prompts, the examples are shapes of
                                       # the shape sampler, as the reference's per-GPU path (USE_SHAPE_SAMPLER)
      use_shape_sampler=True,  # SA-1B content prompts are scribbles
      openset_use_shape_sampler=False,  # COCO class prompts are the full GT masks
      shape_candidates=("Scribble",),  # STROKE_SAMPLER.CANDIDATE_NAMES: of "Scribble", "Point", "Box", "Mask"
      shape_probs=(1.0,),  # STROKE_SAMPLER.CANDIDATE_PROBS: one weight >= 0 per candidate, positive sum
      shape_point_radius=3.0,  # "Point": the click's disc radius in pixels of the prompt canvas
      drop_empty_shapes=False,  # True: a prompt whose drawn shape is empty takes no part (the reference keeps it)
      stroke_num_strokes=5,
      stroke_presets=("rand_curve", "rand_curve_small"),
      stroke_probs=(0.5, 0.5),
      stroke_dilation=3,
      stroke_max_candidate=50,
      nms_threshold=0.7,
      max_memory_size=9,  # video object segmentation: prompt memory per object
      point_per_side=20,  # referring inference: click grid
      many2many=True,
      match_softmax=True,  # `softmax`: match-score loss as softmax CE (False: sigmoid focal)
      coco_track=False,  # COCO_TRACK: COCO also feeds the referring task (one-to-one criterion; task.py)
  ))


def loss_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      class_weight=4.0, mask_weight=5.0, dice_weight=5.0, box_weight=5.0, giou_weight=2.0,
      iou_weight=1.0, match_class_weight=2.0,
      cost_class_weight=4.0, cost_mask_weight=5.0, cost_dice_weight=5.0, cost_box_weight=5.0, cost_giou_weight=2.0,
      no_object_weight=0.1,
      focal_alpha=0.25,
      num_points=112 * 112,
      oversample_ratio=3.0,
      importance_sample_ratio=0.75,
      deep_supervision=True,
  ))


def test_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      semantic_on=True,
      instance_on=True,
      panoptic_on=True,
      detections_per_image=100,  # the reference's instance inference hard-codes top-300
      object_mask_threshold=0.25,
      overlap_threshold=0.8,
      pano_temperature=0.06,
      transform_eval=True,
      sem_seg_postprocess_before_inference=False,
      min_size=800,
      max_size=1333,
      davis_min_size=640,  # video object segmentation (DAVIS.INPUT.MIN_SIZE_TEST; Swin-L: 800)
      vos_late_objects="clean",  # VOS objects entering after frame 0: "clean" | "reference" (the reference's
                                 # key_frame path; dinoseg.models.dinov.vos)
      vos_hide_after_last_frame=False,  # True: an object's output is empty after its last annotated frame (the
                                        # reference's end_frame)
      vos_resize="dinoseg",  # DAVIS frames / given masks: "dinoseg" (bilinear / nearest, detectron2 sizes) |
                             # "reference" (the reference's DAVIS mapper: PIL bicubic / OpenCV cubic)
      vos_dtype="float32",  # VOS compute dtype: "float32" | "float16" (the reference's autocast) | "bfloat16"
      vos_first_frame_output="given",  # an object's output on its given frame: "given" (its annotation) |
                                       # "reference" (the given mask resized to the model input and back)
      vos_objects_info="",  # a video_objects_info.json giving each DAVIS object's first / last frame ("": from
                            # the annotations; dinoseg.evaluation.davis.read_video_objects_info)
      vos_overlap="label_map",  # VOS masks that overlap: "label_map" (the reference's PNG writer and the official
                                # DAVIS protocol: one label map per frame, a pixel of several objects goes to
                                # the last painted; each object scored on its label's region) | "per_object"
                                # (each object's own mask scored, overlaps kept)
  ))


def evaluation_config() -> ml_collections.ConfigDict:
  """`dinoseg eval` of a DINOv run or weights file (task.DINOvTask.evaluate, evaluate.run_protocols)."""
  return ml_collections.ConfigDict(dict(
      generic=True,  # the generic protocol on data.coco (its eval_split): COCO PQ / mask AP / box AP
      bank="",  # generic: a prompt bank directory (`dinoseg dinov bank`); "" builds one with the evaluated weights
      bank_split="",  # the data.coco split the bank is built from ("" = data.coco.train_split)
      bank_slots=16,  # prompts encoded per call while building the bank
      bank_max_images=0,  # build the bank from the first N images of bank_split only (0: all; e.g. to keep
                          # training-time evaluation short)
      bank_order="clean",  # "clean": each embedding under its instance's category; "reference": the reference's
                           # get_content filing (sorted labels against instance-ordered tokens; bank.build_bank)
      num_examples=16,  # bank draws averaged per category (the README's INFERENCE_EXAMPLE=16)
      seed=0,  # seed of the draws
      max_batches=0,  # generic: stop after N eval batches (0: all)
      vos_path="",  # a DAVIS-2017 root (JPEGImages/, Annotations/, ImageSets/) or a prepared video dataset:
                    # also run video object segmentation (J&F); "" = no VOS
      vos_split="val",
      max_videos=0,  # VOS: stop after N videos (0: all)
  ))


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CPU variant of a released config: the same structure (levels, order, tokens, DN, prompt layout)
  at tiny widths (a 1-block-per-stage Swin of width 32, 64-wide head, 2 decoder layers, 10 generic
  queries), small data settings, no backbone file."""
  m = c.model
  m.backbone.name = "swin_tiny"
  m.backbone.kwargs = ml_collections.ConfigDict(dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                                                     window_size=4, drop_path_rate=0.0))
  p = m.pixel_decoder
  p.conv_dim = p.mask_dim = 64
  p.dim_feedforward, p.num_encoder_layers, p.nheads = 64, 1, 4
  d = m.decoder
  d.hidden_dim, d.dim_proj, d.dim_feedforward, d.dec_layers, d.nheads = 64, 32, 64, 2, 4
  d.num_queries, d.dn_num = 10, 8
  c.prompts.max_clicks, c.prompts.max_content, c.prompts.point_per_side = 4, 2, 4
  c.loss.num_points = 64
  c.test.detections_per_image = 10
  c.test.min_size = c.test.max_size = c.test.davis_min_size = 64
  for name, source in c.data.items():
    source.path = f"/tmp/dinoseg_dinov_tiny_{name}"
    source.image_size = source.eval_image_size = (64, 64)
    source.eval_short_edge = source.eval_max_size = 64
    source.batch_size, source.eval_batch_size = 2, 2
    source.max_instances = 8
    source.num_workers = 0
  c.train.num_steps = 4
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 0
  c.train.eval_every_steps = 0
  c.optimizer.decay_steps = ()
  c.optimizer.schedule = "constant"
  return c


def check_prompt_groups(prompts, data=None, batch_size: int | None = None) -> None:
  """Raises ValueError for `prompts.cross_gpu_batch` / `images_per_group` / `empty_image_fallback` /
  `group_examples_as_shapes` values the generic task cannot use, or a COCO batch (`data.coco.batch_size`, or
  `batch_size`) that is not a whole number of groups of `images_per_group` images."""
  from dinoseg.models.dinov.sampling import EMPTY_IMAGE_FALLBACKS  # noqa: PLC0415
  for key in ("cross_gpu_batch", "group_examples_as_shapes"):
    if not isinstance(prompts.get(key, False), bool):
      raise ValueError(f"prompts.{key} must be True or False, got {prompts[key]!r}")
  fallback = prompts.get("empty_image_fallback", "none")
  if fallback not in EMPTY_IMAGE_FALLBACKS:
    raise ValueError(f"prompts.empty_image_fallback must be one of {EMPTY_IMAGE_FALLBACKS}, got {fallback!r}")
  group = prompts.get("images_per_group", 1)
  if isinstance(group, bool) or not isinstance(group, int) or group < 1:
    raise ValueError(f"prompts.images_per_group must be an integer >= 1, got {group!r}")
  if batch_size is None and data is not None and data.get("coco") is not None:
    batch_size = data.coco.get("batch_size")
  if batch_size is not None and int(batch_size) % group:
    raise ValueError(f"the COCO batch ({batch_size} images, data.coco.batch_size) must be a multiple of "
                     f"prompts.images_per_group ({group})")


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks what the model supports (raised as a ConfigError by dinoseg.config)."""
  d = c.model.decoder
  if d.num_content_tokens != 1:
    raise ValueError(f"model.decoder.num_content_tokens must be 1 (the released models), got {d.num_content_tokens}")
  if d.dn not in ("seg", "no"):
    raise ValueError(f"model.decoder.dn must be 'seg' or 'no', got {d.dn!r}")
  e = c.get("evaluation")
  if e is not None:
    for key in ("bank_slots", "num_examples"):
      if int(e[key]) < 1:
        raise ValueError(f"evaluation.{key} must be >= 1, got {e[key]}")
    for key in ("max_batches", "max_videos", "bank_max_images"):
      if int(e.get(key, 0)) < 0:
        raise ValueError(f"evaluation.{key} must be >= 0, got {e[key]}")
  t = c.get("test")
  if t is not None and t.get("vos_late_objects") is not None:
    if t.vos_late_objects not in VOS_LATE_OBJECT_MODES:
      raise ValueError(f"test.vos_late_objects must be one of {VOS_LATE_OBJECT_MODES}, got {t.vos_late_objects!r}")
  if t is not None:
    for key, allowed in (("vos_resize", VOS_RESIZE_MODES), ("vos_dtype", VOS_DTYPES)):
      if t.get(key) is not None and t[key] not in allowed:
        raise ValueError(f"test.{key} must be one of {allowed}, got {t[key]!r}")
    if t.get("vos_hide_after_last_frame") is not None and not isinstance(t.vos_hide_after_last_frame, bool):
      raise ValueError(f"test.vos_hide_after_last_frame must be True or False, got {t.vos_hide_after_last_frame!r}")
    if t.get("vos_first_frame_output") is not None and t.vos_first_frame_output not in VOS_FIRST_FRAME_OUTPUTS:
      raise ValueError(f"test.vos_first_frame_output must be one of {VOS_FIRST_FRAME_OUTPUTS}, "
                       f"got {t.vos_first_frame_output!r}")
    if t.get("vos_overlap") is not None and t.vos_overlap not in VOS_OVERLAP_MODES:
      raise ValueError(f"test.vos_overlap must be one of {VOS_OVERLAP_MODES}, got {t.vos_overlap!r}")
  if e is not None and e.get("bank_order") is not None and e.bank_order not in BANK_ORDERS:
    raise ValueError(f"evaluation.bank_order must be one of {BANK_ORDERS}, got {e.bank_order!r}")
  p = c.get("prompts")
  if p is not None:
    check_prompt_groups(p, c.get("data"))
  if p is not None and p.get("shape_candidates") is not None:
    from dinoseg.models.dinov import sampling  # noqa: PLC0415
    sampling.check_shape_config(p.shape_candidates, p.get("shape_probs", ()))
    if not float(p.get("shape_point_radius", 0.0)) >= 0.0:
      raise ValueError(f"prompts.shape_point_radius must be >= 0, got {p.shape_point_radius}")
    unknown = [n for n in p.stroke_presets if n not in sampling.STROKE_PRESETS]
    if unknown or len(p.stroke_presets) != len(p.stroke_probs):
      raise ValueError(f"prompts.stroke_presets must name presets of {tuple(sampling.STROKE_PRESETS)} with one "
                       f"prompts.stroke_probs value each, got {tuple(p.stroke_presets)} and {tuple(p.stroke_probs)}")
  if c.model.pixel_decoder.conv_dim != d.hidden_dim:
    raise ValueError("model.pixel_decoder.conv_dim must equal model.decoder.hidden_dim (no input projection)")


__all__ = ["model_config", "prompt_config", "loss_config", "test_config", "evaluation_config", "tiny", "validate",
           "check_prompt_groups",
           "NO_WEIGHT_DECAY", "VOS_LATE_OBJECT_MODES", "VOS_RESIZE_MODES", "VOS_DTYPES", "BANK_ORDERS",
           "VOS_FIRST_FRAME_OUTPUTS", "VOS_OVERLAP_MODES"]
