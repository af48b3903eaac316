"""Default Mask DINO settings (the reference's `add_maskdino_config` + the common COCO values).

Each configs/maskdino/*.py file starts from `model_config()`, `loss_config()` and `test_config()`, the
way a detectron2 yaml starts from its Base-COCO yaml, sets what its released model changes, and builds
its `:tiny` CPU variant with `tiny()`. Field names are lower-case versions of the reference keys:

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

# detectron2 / Mask DINO RGB statistics on the 0-255 scale (the config defaults; equal to
# dinoseg.ops.pixels.IMAGENET_MEAN_255 / _STD_255, which the model applies with pixels.normalize).
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
          # Recompute the encoder layers' FFNs in the backward pass (only the attention outputs are kept): the six
          # (S, dim_feedforward) activations (170 MiB each at 1024 px) are not held through the step.
          remat_ffn=True,
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
          dn_num=100,  # DN slot budget: groups = dn_num // (largest GT count), computed per step (denoising.py)
          dn_noise_scale=0.4,
          # Images over which that largest count is taken: the reference takes it per GPU (its per-GPU
          # batch, e.g. 4 for batch 16 on 4 GPUs); 0 = the whole global batch.
          dn_group_images=0,
          # How training hands the predictions' masks to the losses: "factored" (query mask embeddings x mask
          # features, sampled at the loss's points: no full-resolution logits of every prediction in memory),
          # "full" (the (P, B, Q, H/4, W/4) logits, as the reference) or "auto" (factored on the CPU, full on
          # accelerators, where they are not measured yet). Same values up to float rounding.
          train_mask_logits="auto",
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
      # Rows per chunk with factored mask logits (decoder.train_mask_logits): each chunk makes its rows'
      # (rows, H/4, W/4) logits (one matmul) and samples them; 4 measured faster than 8 or 16 at 1024.
      factored_mask_row_chunk=4,
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


# detectron2 build_optimizer: no weight decay for norm layers, nn.Embedding weights and Swin's relative
# position tables; biases and level_embed are decayed.
NO_WEIGHT_DECAY = (r"norm", r"input_proj_\d+/1/", r"/embedding$", r"relative_position_bias_table")


# Classes of the synthetic datasets (`dinoseg data synth --layout ...`, prepared): 5 shapes; panoptic adds
# 3 stuff classes; the semantic layouts use the real label maps (ADE20K 150, Cityscapes 19 train ids).
SYNTH_NUM_CLASSES = {"coco": 5, "coco_panoptic": 8, "ade20k": 150, "cityscapes": 19}


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CPU variant of a released config: the same structure (levels, order, box init, two-stage,
  losses) at tiny widths, on the synthetic dataset of its layout (`dinoseg data synth`), from scratch
  (`init.backbone.file` stays "")."""
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
  d.dn_group_images = 0
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


__all__ = ["model_config", "loss_config", "test_config", "tiny", "PIXEL_MEAN", "PIXEL_STD", "NO_WEIGHT_DECAY",
           "SYNTH_NUM_CLASSES"]
