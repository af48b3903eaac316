"""Default OV2Seg settings: `configs/lvvis/instance-segmentation/ov2seg_R50_bs16_50ep_lvis.yaml` of
haochenheheda/LVVIS (cc3cdf4) with the overrides of its `scripts/*.sh` (100 queries, CLIP_CLASSIFIER on)
(shared/reference/ov2seg.md sections 1-3).

Field names are lower-case versions of the reference keys:

model (used by dinoseg.models.ov2seg.model.build_model and convert.py)
  name                            the converter of this layout (`dinoseg convert --config=...`)
  pixel_mean / pixel_std          MODEL.PIXEL_MEAN / PIXEL_STD (RGB, 0-255)
  msda_impl, dtype                deformable-attention kernel; compute dtype ("float32" / "bfloat16")
  backbone.name / .kwargs         MODEL.BACKBONE: "resnet50" = timm's ResNet-50 (TIMM.BASE_NAME resnet50_in21k,
                                  FrozenBN, stride on the 3x3 conv; its checkpoint keys are
                                  `backbone.base.*`), or a Swin (`swin_base` for the paper's Swin-B)
  pixel_decoder.*                 Mask2Former MSDeformAttnPixelDecoder: DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
                                  CONVS_DIM, MASK_DIM, TRANSFORMER_ENC_LAYERS, NHEADS, COMMON_STRIDE; its
                                  FFN is 1024 wide (hard-coded by the reference). It runs as Mask DINO's
                                  encoder with feature_order "high2low" and no extra level.
  decoder.*                       MASK_FORMER: HIDDEN_DIM, NUM_OBJECT_QUERIES (100 in the scripts), NHEADS,
                                  DIM_FEEDFORWARD, dec_layers = DEC_LAYERS - 1 (7 -> 6 transformer layers,
                                  7 predictions with the one from the learnable queries)
  classifier.*                    the ZeroShotClassifier: embed_dim (512, the class-embedding width),
                                  temperature (50)
  num_classes                     SEM_SEG_HEAD.NUM_CLASSES of the training vocabulary (1203, LVIS); the model
                                  itself takes any (C, 512) class-embedding matrix at call time
loss (criterion.OV2SegCriterion)  MASK_FORMER CLASS_WEIGHT / OBJECT_WEIGHT / MASK_WEIGHT / DICE_WEIGHT (also the
                                  matcher's cost weights), the objectness CE's no-object weight 0.4, the federated
                                  loss (scale 1.7, 50 sampled categories incl. the present ones and the background,
                                  image_count ** 0.5), TRAIN_NUM_POINTS / OVERSAMPLE_RATIO / IMPORTANCE_SAMPLE_RATIO,
                                  DEEP_SUPERVISION; matcher (dinoseg.matching), padded_mask_rows / mask_row_chunk
vocabulary (vocabulary_config)    the class embeddings' source: DetPro .npy files, CLIP text, or random (tiny)
test                              DETECTIONS_PER_IMAGE (50), INPUT.MIN_SIZE_TEST (480 on LV-VIS), the
                                  association window and memory momentum of section 4.
"""
import ml_collections

from dinoseg.models.maskdino.defaults import PIXEL_MEAN, PIXEL_STD

NUM_LVIS_CLASSES = 1203
SYNTH_LVIS_NUM_CLASSES = 5  # `dinoseg data synth --layout=lvis` (data_pipelines/synth.py THINGS)


def model_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="ov2seg_r50_lvis",
      num_classes=NUM_LVIS_CLASSES,
      pixel_mean=PIXEL_MEAN,
      pixel_std=PIXEL_STD,
      msda_impl="auto",
      dtype="float32",
      backbone=dict(name="resnet50", kwargs=dict()),
      pixel_decoder=dict(
          transformer_in_features=("res3", "res4", "res5"),
          total_num_feature_levels=3,
          feature_order="high2low",
          conv_dim=256,
          mask_dim=256,
          dim_feedforward=1024,
          num_encoder_layers=6,
          nheads=8,
          common_stride=4,
      ),
      decoder=dict(
          hidden_dim=256,
          num_queries=100,
          nheads=8,
          dim_feedforward=2048,
          dec_layers=6,
      ),
      classifier=dict(embed_dim=512, temperature=50.0),
  ))


def loss_config() -> ml_collections.ConfigDict:
  """MASK_FORMER loss settings and the criterion's fixed values (shared/reference/ov2seg.md section 2)."""
  return ml_collections.ConfigDict(dict(
      class_weight=2.0, object_weight=2.0, mask_weight=5.0, dice_weight=5.0,
      no_object_weight=0.4,  # the objectness CE's weight of the no-object class (hard-coded in the criterion)
      federated_scale=1.7, federated_num_classes=50, federated_freq_power=0.5,
      num_points=112 * 112, oversample_ratio=3.0, importance_sample_ratio=0.75,
      deep_supervision=True,
      matcher="hungarian_device",  # dinoseg.matching.MATCHERS: "hungarian_device" or "scipy_host"
      # Mask-loss rows of padded target slots (Mask DINO's criterion): "auto" skips them on the CPU.
      padded_mask_rows="auto", mask_row_chunk=8,
  ))


def vocabulary_config() -> ml_collections.ConfigDict:
  """`config.vocabulary`: where the class embeddings come from (dinoseg.models.ov2seg.task / evaluate / predict)."""
  return ml_collections.ConfigDict(dict(
      source="file",   # "file": the .npy files below; "names": CLIP text embeddings of the dataset's category
                       # names (clip_file); "random": seeded random rows per category id (synthetic data / tests)
      train_file="",   # (C, 512) .npy of the training classes in category-id order (fg_bg_5_10_lvis_ens.npy)
      file="",         # (C, 512) .npy of the evaluated / predicted classes (fg_bg_5_10_lvvis_ens.npy on LV-VIS)
      clip_file="",    # OpenAI CLIP ViT-B/16 weights for source "names" and `--classes`
      clip_name="clip_vitb16_text",
      names="",        # optional categories JSON / list naming the rows of `file` (predict overlays)
      templates=(),    # prompt templates with "{}" for the class name; empty = ViLD's 63 (vocabulary.VILD_TEMPLATES)
      # fields of the CLIP text tower (e.g. context_length) where they differ from ViT-B/16's
      clip_overrides=ml_collections.ConfigDict(),
      random_seed=0,
  ))


def test_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      detections_per_image=50,
      min_size=480,  # INPUT.MIN_SIZE_TEST of eval_video.sh (LV-VIS)
      size_divisibility=32,
      window_size=10,  # frames per forward pass (run_window_inference)
      memory_momentum=0.7,  # mem_t = 0.7 q_t + 0.3 mem_{t-1}
      frame_blank_ratio=0.1,
      # Video inference / evaluation (dinoseg/models/ov2seg/predict.py, evaluate.py):
      max_size=1333,  # INPUT.MAX_SIZE_TEST (detectron2's default)
      class_source="frame_mean",  # "frame_mean" (released) or "memory" (the paper's class head on the memory)
      matcher="hungarian_device",  # dinoseg.matching.MATCHERS name of the association
      eval_canvas=(),  # () : pad eval frames to a multiple of 32 (the reference); (H, W): one fixed canvas
      eval_annotations="",  # the original annotation JSON to score against (its `areas`); "": from the records
      eval_results="",  # a path: write the results JSON there (LV-VIS server format)
      eval_path="",  # the prepared video dataset evaluated (LV-VIS / YTVIS / OVIS); "": config.data.path. Set it
                     # (with train.eval_at_end / eval_every_steps) to score video AP during an LVIS training run.
  ))


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CPU variant: the same structure (3 levels coarse -> fine, masked attention, objectness and zero-shot
  heads) with a 1-block-per-stage ResNet of width 16, 64-wide pixel decoder and decoder, 2 encoder layers,
  3 decoder layers, 10 queries, 32-wide class embeddings; trained from scratch for a few steps on the synthetic
  LVIS layout (64 x 64 LSJ, batch 2, random class embeddings per category id)."""
  m = c.model
  m.backbone.name = "resnet50"
  m.backbone.kwargs = ml_collections.ConfigDict(dict(stage_blocks=(1, 1, 1, 1), stem_channels=16,
                                                     res2_channels=32, bottleneck_channels=8))
  p = m.pixel_decoder
  p.conv_dim = p.mask_dim = 64
  p.dim_feedforward, p.num_encoder_layers, p.nheads = 64, 2, 4
  d = m.decoder
  d.hidden_dim, d.dim_feedforward, d.dec_layers, d.nheads, d.num_queries = 64, 64, 3, 4, 10
  m.classifier.embed_dim = 32
  m.num_classes = SYNTH_LVIS_NUM_CLASSES
  c.loss.num_points = 64
  # Synthetic LVIS layout (`dinoseg data synth --layout=lvis`: 5 shapes, one of them rare), random vocabulary.
  c.vocabulary.source = "random"
  d = c.data
  d.path = "/tmp/dinoseg_ov2seg_tiny_data"
  d.image_size = (64, 64)
  d.batch_size = 2
  d.max_instances = 8
  d.mask_stride = 1
  d.num_workers = 0
  d.read_threads = 1
  c.train.num_steps = 4
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 0
  c.train.progress = False
  c.test.detections_per_image = 10
  c.test.min_size = 64
  c.test.window_size = 2
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks what the model supports (raised as a ConfigError by dinoseg.config)."""
  m = c.model
  p, d = m.pixel_decoder, m.decoder
  if p.conv_dim != d.hidden_dim:
    raise ValueError(f"model.pixel_decoder.conv_dim ({p.conv_dim}) must equal model.decoder.hidden_dim "
                     f"({d.hidden_dim}): the decoder has no input projection")
  if p.total_num_feature_levels != 3 or len(p.transformer_in_features) != 3:
    raise ValueError("model.pixel_decoder must have 3 levels (the masked-attention decoder cycles over 3)")
  if p.feature_order != "high2low":
    raise ValueError(f"model.pixel_decoder.feature_order must be 'high2low' (coarse -> fine), got {p.feature_order!r}")
  if d.dec_layers < 1:
    raise ValueError(f"model.decoder.dec_layers must be >= 1, got {d.dec_layers}")
  if d.hidden_dim % d.nheads:
    raise ValueError(f"model.decoder.hidden_dim ({d.hidden_dim}) must be divisible by nheads ({d.nheads})")
  if m.classifier.embed_dim % 2:
    raise ValueError(f"model.classifier.embed_dim must be even, got {m.classifier.embed_dim}")


__all__ = ["model_config", "loss_config", "vocabulary_config", "test_config", "tiny", "validate", "NUM_LVIS_CLASSES",
           "SYNTH_LVIS_NUM_CLASSES",
           "PIXEL_MEAN", "PIXEL_STD"]
