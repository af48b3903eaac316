"""Default Mask DINO settings (the reference's `add_maskdino_config` + the common COCO values).

configs/maskdino/*.py start from `model_config()`, `loss_config()` and `test_config()` and set what
their released config changes. Field names are lower-case versions of the reference keys:

model
  num_classes                      SEM_SEG_HEAD.NUM_CLASSES
  semantic_ce_loss                 SEMANTIC_CE_LOSS (softmax CE with a no-object logit)
  pixel_mean / pixel_std           PIXEL_MEAN / PIXEL_STD (RGB, 0-255)
  msda_impl                        deformable-attention kernel ("auto", "xla", "pallas")
  dtype                            "float32" or "bfloat16" (compute dtype)
  backbone.name / backbone.kwargs  a dinoseg.backbones name and constructor overrides
  pixel_decoder.*                  DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES, TOTAL_NUM_FEATURE_LEVELS,
                                   FEATURE_ORDER, CONVS_DIM, MASK_DIM, SEM_SEG_HEAD.DIM_FEEDFORWARD,
                                   TRANSFORMER_ENC_LAYERS, NHEADS, COMMON_STRIDE
  decoder.*                        HIDDEN_DIM, NUM_OBJECT_QUERIES, NHEADS, DIM_FEEDFORWARD, DEC_LAYERS,
                                   TWO_STAGE, INITIALIZE_BOX_TYPE, INITIAL_PRED, LEARN_TGT, DN, DN_NUM,
                                   DN_NOISE_SCALE
loss                               *_WEIGHT, COST_*_WEIGHT, NO_OBJECT_WEIGHT, TRAIN_NUM_POINTS,
                                   OVERSAMPLE_RATIO, IMPORTANCE_SAMPLE_RATIO, DEEP_SUPERVISION, BOX_LOSS
test                               TEST.* (INSTANCE_ON, PANOPTIC_ON, SEMANTIC_ON, OBJECT_MASK_THRESHOLD,
                                   OVERLAP_THRESHOLD, PANO_TEMPERATURE, PANO_TRANSFORM_EVAL,
                                   SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE, DETECTIONS_PER_IMAGE) and
                                   the thing classes (contiguous ids) for panoptic models.
"""
import ml_collections

from dinoseg.data_pipelines import categories

# detectron2 / Mask DINO RGB statistics on the 0-255 scale.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def model_config(num_classes: int = 80) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      num_classes=num_classes,
      semantic_ce_loss=False,
      pixel_mean=PIXEL_MEAN,
      pixel_std=PIXEL_STD,
      msda_impl="auto",
      dtype="float32",
      backbone=dict(name="resnet50", kwargs=dict()),
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
          num_queries=300,
          nheads=8,
          dim_feedforward=2048,
          dec_layers=9,
          two_stage=True,
          initialize_box_type="mask2box",
          initial_pred=True,
          learn_tgt=False,
          dn="seg",
          dn_num=100,
          dn_noise_scale=0.4,
      ),
  ))


def loss_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      class_weight=4.0, mask_weight=5.0, dice_weight=5.0, box_weight=5.0, giou_weight=2.0,
      cost_class_weight=4.0, cost_mask_weight=5.0, cost_dice_weight=5.0, cost_box_weight=5.0, cost_giou_weight=2.0,
      no_object_weight=0.1,
      focal_alpha=0.25,
      num_points=112 * 112,
      oversample_ratio=3.0,
      importance_sample_ratio=0.75,
      deep_supervision=True,
      box_loss=True,
      matcher="hungarian_device",  # dinoseg.matching.MATCHERS: "hungarian_device" or "scipy_host"
      matching_cost_impl="auto",  # dinoseg.kernels.matching_cost implementation
      # Mask losses of padded target slots: "skip" processes rows in chunks of mask_row_chunk and skips
      # chunks without a real target (lax.cond); "compute" runs every row in one batch; "auto": "skip"
      # on the CPU, "compute" elsewhere.
      padded_mask_rows="auto",
      mask_row_chunk=8,
  ))


def test_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      instance_on=True,
      panoptic_on=False,
      semantic_on=False,
      detections_per_image=100,
      object_mask_threshold=0.25,
      overlap_threshold=0.8,
      pano_temperature=0.06,
      transform_eval=True,
      sem_seg_postprocess_before_inference=False,
      thing_classes=(),  # contiguous ids of the thing classes (panoptic models); empty = all
      min_size=800,  # test-time ResizeShortestEdge (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST)
      max_size=1333,
      eval_output_hw=(640, 640),  # static canvas of evaluation results (>= the originals: COCO <= 640)
  ))




# Overlay names and dataset category ids (label i <-> ids[i]; empty: labels are written as they are)
# of each released config's dataset, for `dinoseg predict` (dinoseg.data_pipelines.categories).
DATASET_CATEGORIES = {
    "coco": (categories.COCO_THING_NAMES, categories.COCO_THING_IDS),
    "coco_panoptic": (categories.COCO_PANOPTIC_NAMES, categories.COCO_PANOPTIC_IDS),
    "ade20k": (categories.ADE20K_NAMES, ()),
    "cityscapes": (categories.CITYSCAPES_NAMES, ()),
}

# The released Mask DINO configs (shared/reference/maskdino.md section 1): what each one changes.
RELEASED = {
    "coco_instance_r50_3s_hid1024": dict(
        backbone="resnet50", dataset="coco", num_classes=80, encoder_in=("res3", "res4", "res5"), total_levels=3,
        feature_order="high2low", enc_ffn=1024, box_init="bitmask"),
    "coco_instance_r50_3s_d1_2048": dict(
        backbone="resnet50", dataset="coco", num_classes=80, encoder_in=("res3", "res4", "res5"), total_levels=4,
        feature_order="low2high", enc_ffn=2048, box_init="mask2box"),
    "coco_instance_swinl_4s_d1_2048": dict(
        backbone="swin_large", dataset="coco", num_classes=80, encoder_in=("res2", "res3", "res4", "res5"),
        total_levels=5, feature_order="low2high", enc_ffn=2048, box_init="bitmask"),
    "coco_instance_swinl_4s_d1_2048_no_mask_enhance": dict(
        backbone="swin_large", dataset="coco", num_classes=80, encoder_in=("res2", "res3", "res4", "res5"),
        total_levels=5, feature_order="low2high", enc_ffn=2048, box_init="no"),
    "coco_panoptic_r50_3s_d1_2048": dict(
        backbone="resnet50", dataset="coco_panoptic", num_classes=133, encoder_in=("res3", "res4", "res5"),
        total_levels=4, feature_order="low2high", enc_ffn=2048, box_init="no"),
    "coco_panoptic_swinl_4s_d1_2048": dict(
        backbone="swin_large", dataset="coco_panoptic", num_classes=133, encoder_in=("res2", "res3", "res4", "res5"),
        total_levels=5, feature_order="low2high", enc_ffn=2048, box_init="no"),
    "coco_panoptic_swinl_4s_d1_2048_mask_enhance": dict(
        backbone="swin_large", dataset="coco_panoptic", num_classes=133, encoder_in=("res2", "res3", "res4", "res5"),
        total_levels=5, feature_order="low2high", enc_ffn=2048, box_init="bitmask"),
    "ade20k_semantic_r50": dict(
        backbone="resnet50", dataset="ade20k", num_classes=150, encoder_in=("res3", "res4", "res5"), total_levels=3,
        feature_order="high2low", enc_ffn=1024, box_init="no", two_stage=False, num_queries=100, semantic_ce=True),
    "cityscapes_semantic_r50": dict(
        backbone="resnet50", dataset="cityscapes", num_classes=19, encoder_in=("res3", "res4", "res5"),
        total_levels=3, feature_order="high2low", enc_ffn=1024, box_init="no", two_stage=False, num_queries=100,
        semantic_ce=True),
}


def _data_config(dataset: str) -> ml_collections.ConfigDict:
  from dinoseg.data_pipelines.pipeline import default_config  # noqa: PLC0415
  d = default_config()
  if dataset in ("coco", "coco_panoptic"):
    d.task = "instance" if dataset == "coco" else "panoptic"
    d.name = dataset
    d.image_size, d.eval_image_size = (1024, 1024), (1344, 1344)
    d.max_instances = 100
    d.mask_stride = 2  # GT masks at 512 x 512 (the loss samples them at normalized points)
    d.eval_batch_size = 8
  else:
    d.task = "semantic"
    d.name = dataset
    d.augment = "resize_crop"
    short = 512 if dataset == "ade20k" else 1024
    d.image_size = (512, 512) if dataset == "ade20k" else (512, 1024)
    d.train_short_sizes = tuple(int(x * 0.1 * short) for x in range(5, 21))
    d.train_max_size = 2048 if dataset == "ade20k" else 4096
    d.eval_short_edge, d.eval_max_size = short, 2048
    d.eval_image_size = (1024, 1024) if dataset == "ade20k" else (1024, 2048)
    d.max_instances = 160 if dataset == "ade20k" else 32  # one target per class present
    d.mask_stride = 1
    d.eval_batch_size = 4
  return d


def released_config(name: str) -> ml_collections.ConfigDict:
  """The full config (task, model, loss, test, dataset, data, train, optimizer) of a released model."""
  from dinoseg.train import defaults as train_defaults  # noqa: PLC0415
  if name not in RELEASED:
    raise ValueError(f"unknown released config {name!r}; known: {', '.join(sorted(RELEASED))}")
  r = dict(RELEASED[name])
  c = ml_collections.ConfigDict()
  c.task = "maskdino"
  c.seed = 0
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  m = model_config(r["num_classes"])
  m.backbone.name = r["backbone"]
  m.semantic_ce_loss = r.get("semantic_ce", False)
  m.pixel_decoder.transformer_in_features = r["encoder_in"]
  m.pixel_decoder.total_num_feature_levels = r["total_levels"]
  m.pixel_decoder.feature_order = r["feature_order"]
  m.pixel_decoder.dim_feedforward = r["enc_ffn"]
  m.decoder.initialize_box_type = r["box_init"]
  m.decoder.two_stage = r.get("two_stage", True)
  m.decoder.num_queries = r.get("num_queries", 300)
  c.model = m
  c.loss = loss_config()
  t = test_config()
  dataset = r["dataset"]
  if dataset == "coco_panoptic":
    t.instance_on = t.panoptic_on = t.semantic_on = True
    t.thing_classes = tuple(range(80))
  elif dataset in ("ade20k", "cityscapes"):
    t.instance_on, t.semantic_on = False, True
    t.object_mask_threshold = 0.8
    t.min_size, t.max_size = (512, 2048) if dataset == "ade20k" else (1024, 2048)
    t.eval_output_hw = (1024, 1024) if dataset == "ade20k" else (1024, 2048)
  c.test = t
  names, ids = DATASET_CATEGORIES[dataset]
  c.dataset = ml_collections.ConfigDict(dict(class_names=names, category_ids=ids))
  c.data = _data_config(dataset)
  if dataset in ("coco", "coco_panoptic"):
    c.train = train_defaults.train_config(num_steps=368_750, checkpoint_every_steps=5000, eval_every_steps=5000)
    decay = (327_778, 355_092)
  else:
    steps = 160_000 if dataset == "ade20k" else 90_000
    c.train = train_defaults.train_config(num_steps=steps, checkpoint_every_steps=5000, eval_every_steps=5000)
    decay = (135_000, 150_000) if dataset == "ade20k" else (80_000, 87_000)
  c.optimizer = train_defaults.optimizer_config(
      learning_rate=1e-4, weight_decay=0.05, lr_multipliers=((r"^backbone/", 0.1),), clip_grad_norm=0.01,
      no_weight_decay=NO_WEIGHT_DECAY, schedule="step", decay_steps=decay)
  return c


# detectron2 build_optimizer: no weight decay for norm layers, nn.Embedding weights and Swin's relative
# position tables; biases and level_embed are decayed.
NO_WEIGHT_DECAY = (r"norm", r"input_proj_\d+/1/", r"/embedding$", r"relative_position_bias_table")


# Classes of the synthetic datasets (`dinoseg data synth --layout ...`, prepared): 5 shapes; panoptic adds
# 3 stuff classes; the semantic layouts use the real label maps (ADE20K 150, Cityscapes 19 train ids).
SYNTH_NUM_CLASSES = {"coco": 5, "coco_panoptic": 8, "ade20k": 150, "cityscapes": 19}


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CPU variant of a released config: the same structure (levels, order, box init, two-stage,
  losses) at tiny widths, on the synthetic dataset of its layout (`dinoseg data synth`)."""
  m = c.model
  m.num_classes = SYNTH_NUM_CLASSES[c.data.name]
  c.dataset.class_names, c.dataset.category_ids = (), ()
  c.test.thing_classes = ()
  if m.backbone.name.startswith("resnet"):
    m.backbone.kwargs = ml_collections.ConfigDict(dict(stage_blocks=(1, 1, 1, 1), stem_channels=16,
                                                       res2_channels=32, bottleneck_channels=8))
  else:
    m.backbone.name = "swin_tiny"
    m.backbone.kwargs = ml_collections.ConfigDict(dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                                                       window_size=4, drop_path_rate=0.0))
  for g in (m.pixel_decoder,):
    g.conv_dim = g.mask_dim = 64
    g.dim_feedforward = 64
    g.num_encoder_layers = 1
    g.nheads = 4
  d = m.decoder
  d.hidden_dim, d.dim_feedforward, d.dec_layers, d.nheads = 64, 64, 2, 4
  d.num_queries = 10
  d.dn_num = 8
  c.loss.num_points = 64
  c.test.detections_per_image = 10
  c.test.min_size = c.test.max_size = 64
  c.test.eval_output_hw = (64, 64)
  c.data.path = "/tmp/dinoseg_maskdino_tiny_data"
  c.data.image_size = c.data.eval_image_size = (64, 64)
  c.data.eval_short_edge = c.data.eval_max_size = 64
  c.data.batch_size, c.data.eval_batch_size = 2, 2
  c.data.max_instances = 8
  c.data.mask_stride = 1
  c.data.num_workers = 0
  c.data.train_short_sizes = (64,)
  c.data.train_max_size = 128
  c.train.num_steps = 4
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 0
  c.train.eval_every_steps = 0
  c.optimizer.decay_steps = ()
  c.optimizer.schedule = "constant"
  return c


def get_released(name: str, variant: str | None) -> ml_collections.ConfigDict:
  """get_config of configs/maskdino/<name>.py."""
  c = released_config(name)
  if variant == "tiny":
    c = tiny(c)
  elif variant:
    raise ValueError(f"unknown variant {variant!r} (known: tiny)")
  return c


__all__ = ["model_config", "loss_config", "test_config", "released_config", "tiny", "get_released", "RELEASED",
           "PIXEL_MEAN", "PIXEL_STD", "DATASET_CATEGORIES", "NO_WEIGHT_DECAY"]
