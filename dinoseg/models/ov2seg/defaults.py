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
loss, test                        recorded for the training / video slices (not used by the model):
                                  the weights of section 2, point sampling, the federated-loss settings,
                                  DETECTIONS_PER_IMAGE (50), INPUT.MIN_SIZE_TEST (480 on LV-VIS), the
                                  association window and memory momentum of section 4.
"""
import ml_collections

from dinoseg.models.maskdino.defaults import PIXEL_MEAN, PIXEL_STD

NUM_LVIS_CLASSES = 1203


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
  ))


def test_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      detections_per_image=50,
      min_size=480,  # INPUT.MIN_SIZE_TEST of eval_video.sh (LV-VIS)
      size_divisibility=32,
      window_size=10,  # frames per forward pass (run_window_inference)
      memory_momentum=0.7,  # mem_t = 0.7 q_t + 0.3 mem_{t-1}
      frame_blank_ratio=0.1,
  ))


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CPU variant: the same structure (3 levels coarse -> fine, masked attention, objectness and zero-shot
  heads) with a 1-block-per-stage ResNet of width 16, 64-wide pixel decoder and decoder, 2 encoder layers,
  3 decoder layers, 10 queries, 32-wide class embeddings."""
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
  m.num_classes = 8
  c.loss.num_points = 64
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


__all__ = ["model_config", "loss_config", "test_config", "tiny", "validate", "NUM_LVIS_CLASSES",
           "PIXEL_MEAN", "PIXEL_STD"]
