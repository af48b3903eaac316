"""Writes tests/fixtures/maskdino/*.npz: outputs of the reference Mask DINO on random weights.

Usage:
  # /tmp/ref_maskdino: a checkout of IDEA-Research/MaskDINO (tested at 3831d85)
  python scripts/make_maskdino_fixtures.py --maskdino /tmp/ref_maskdino

The reference modeling code runs on the CPU with the stand-in of scripts/maskdino_reference_standin.py
(no detectron2, no CUDA op: MSDA takes the reference's own PyTorch fallback). Each fixture builds the
reference `MaskDINO` meta-architecture at a tiny size (hidden 256 is fixed by the reference's sine
embedding; few layers, small FFNs, 5 classes, 10 queries) with a backbone stand-in that returns fixed
random res2..res5 features, so the head is compared in isolation from the backbone.

Weights are NOT stored: every parameter is `fixture_weight(canonical_key(key), shape, seed)` (a NumPy
generator seeded by the key's CRC32; tied keys share one value), so the test rebuilds them from the
key list through dinoseg's converter.

Each .npz holds:
  config             JSON: the fixture's settings (see FIXTURES) and the batch layout.
  param_keys         JSON: [key, shape] of the reference state dict (the strict-load layout).
  (backbone features: fixture_input(res, (B, C, h, w), seed), not stored)
  image_hw, padded_hw, output_hw   valid size, padded canvas, requested output size per image.
  gt/labels, gt/boxes (cxcywh / valid size), gt/masks (padded canvas), gt/valid  (B, T, ...).
  eval/...           eval-mode predictions: logits/boxes of every prediction (initial + layers),
                     interm logits/boxes; large arrays only as probes (`probe/<name>`: the channel or
                     query axis contracted with probe_weight(name, size, seed)): pixel-decoder outputs,
                     last-layer and interm masks.
  post/...           instance (sorted by score), panoptic and semantic (probe + argmax) results.
  dn/label_u, dn/random_labels, dn/box_u   the denoising noise the reference drew per DN slot
                     g * m + j (m = the largest GT count): (B, dn_num) / (B, dn_num, 4)
                     (dinoseg.models.maskdino.denoising.DNNoise; fixtures written before the
                     reference-groups change hold the equal-sized (B, groups, m) layout).
  dn/probe/query_label, dn/query_bbox, dn/attn_mask   (with store_dn_queries) the reference's DN content
                     queries (probed over channels), box logits (B, pad, 4) and self-attention mask.
  draws/match/<out>  (B, P, 2) uniform matcher points of each matched output.
  draws/cand/<out>, draws/rand/<out>   (B, T, S, 2) / (B, T, R, 2) point-loss draws per target
                     (DN outputs: per DN slot, (B, dn_num, ...)).
  indices/<out>      (B, T) prediction matched to each ground truth (-1: padding).
  loss/<name>        the weighted loss dictionary of MaskDINO.forward in train mode.
  grad/<key>         gradients of the summed losses for a few parameters.
"""
import argparse
import json
import pathlib
import re
import sys
import zlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "maskdino"

# Tiny settings per fixture; names follow the reference config keys loosely.
FIXTURES = {
    # COCO instance R50 "3s_dowsample1": res3-res5 + one extra level, low2high, mask2box init; the
    # panoptic/semantic postprocessing also runs on its outputs.
    "r50_4lvl": dict(channels=dict(res2=16, res3=24, res4=32, res5=40), encoder_in=["res3", "res4", "res5"],
                     total_levels=4, feature_order="low2high", box_init="mask2box", two_stage=True,
                     semantic_ce=False, instance_on=True, panoptic_on=True, semantic_on=True, seed=1,
                     overlap_threshold=0.1),  # low enough that random weights give segments
    # Swin-L "4s_dowsample1": res2-res5 + one extra level (res2 is also the lateral input), bitmask init.
    "swin_5lvl": dict(channels=dict(res2=24, res3=32, res4=40, res5=48), encoder_in=["res2", "res3", "res4", "res5"],
                      total_levels=5, feature_order="low2high", box_init="bitmask", two_stage=True,
                      semantic_ce=False, instance_on=True, panoptic_on=False, semantic_on=False, seed=2),
    # ADE20K semantic: high2low, no extra level, learnable queries (no two-stage), softmax CE.
    "ade_3lvl": dict(channels=dict(res2=16, res3=24, res4=32, res5=40), encoder_in=["res3", "res4", "res5"],
                     total_levels=3, feature_order="high2low", box_init="no", two_stage=False,
                     semantic_ce=True, instance_on=False, panoptic_on=False, semantic_on=True, seed=3),
    # The reference's denoising groups: DN_NUM 100 with 3 and 2 objects -> pad size 99, 33 groups of 3 (dinoseg pads
    # the targets to max_instances 100 and keeps 100 DN slots; the test checks the DN queries, the attention mask, the
    # DN losses and gradients). Also stores the DN queries (probes) and the attention mask.
    "r50_dn100": dict(channels=dict(res2=16, res3=24, res4=32, res5=40), encoder_in=["res3", "res4", "res5"],
                      total_levels=4, feature_order="low2high", box_init="mask2box", two_stage=True,
                      semantic_ce=False, instance_on=True, panoptic_on=False, semantic_on=False, seed=4,
                      dn_num=100, store_dn_queries=True),
}
COMMON = dict(num_classes=5, thing_classes=[0, 1, 2], hidden_dim=256, num_queries=10, nheads=8, enc_layers=2,
              enc_ffn=64, dec_layers=3, dec_ffn=64, dn_num=6, noise_scale=0.4, num_points=12,
              oversample_ratio=3.0, importance_sample_ratio=0.75, detections_per_image=20,
              object_mask_threshold=0.25, overlap_threshold=0.8, pano_temperature=0.06)
IMAGE_HW = [(64, 96), (50, 70)]      # valid image sizes (padded to 64 x 96)
OUTPUT_HW = [(48, 72), (42, 60)]     # requested output sizes ("height"/"width" of the inputs)
NUM_GT = [3, 2]                      # m = 3 (largest count): groups = dn_num // 3 (2 with DN_NUM 6, 33 with 100)
GRAD_KEYS = ["sem_seg_head.predictor.class_embed.weight", "sem_seg_head.predictor.label_enc.weight",
             "sem_seg_head.predictor._bbox_embed.layers.2.weight", "sem_seg_head.pixel_decoder.transformer.level_embed",
             "sem_seg_head.pixel_decoder.mask_features.bias"]


def fixture_weight(name: str, shape, seed: int) -> np.ndarray:
  """The deterministic random value of parameter `name` (also used by the tests).

  Matrices and kernels: normal / sqrt(fan_in). 1-d "...weight" (norm scales): 1 + 0.1 normal.
  Other 1-d tensors (biases): 0.1 normal.
  """
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  shape = tuple(int(s) for s in shape)
  if len(shape) >= 2:
    return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
  if name.endswith("weight"):
    return (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
  return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def canonical_key(key: str) -> str:
  """The key whose value a tied tensor takes (the box MLP and the decoder norm are shared modules)."""
  key = re.sub(r"predictor\.(decoder\.)?bbox_embed\.\d+\.", "predictor._bbox_embed.", key)
  return key.replace("predictor.decoder.norm.", "predictor.decoder_norm.")


def fixture_input(name: str, shape, seed: int) -> np.ndarray:
  """A deterministic standard-normal input array (the backbone features; also used by the tests)."""
  rng = np.random.default_rng([seed, zlib.crc32(("input/" + name).encode())])
  return rng.standard_normal(tuple(int(s) for s in shape)).astype(np.float32)


def probe_weight(name: str, size: int, seed: int, k: int = 4) -> np.ndarray:
  """(size, k) projection used to store large outputs compactly (see `probe`)."""
  return fixture_weight(f"probe/{name}", (size, k), seed)


def make_ground_truth(rng, image_hw, num_gt, padded_hw, num_classes, max_instances):
  """Random ellipses/rectangles; returns per-image torch-ready lists and the padded arrays."""
  b = len(image_hw)
  labels = np.zeros((b, max_instances), np.int32)
  boxes = np.zeros((b, max_instances, 4), np.float32)
  masks = np.zeros((b, max_instances, *padded_hw), np.uint8)
  valid = np.zeros((b, max_instances), bool)
  per_image = []
  for i, ((h, w), n) in enumerate(zip(image_hw, num_gt)):
    ms, xyxy = [], []
    for t in range(n):
      m = np.zeros((h, w), bool)
      y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
      y1, x1 = y0 + rng.integers(8, h // 2), x0 + rng.integers(8, w // 2)
      if t % 2:
        m[y0:y1, x0:x1] = True
      else:
        yy, xx = np.mgrid[:h, :w]
        m = ((yy - (y0 + y1) / 2) / ((y1 - y0) / 2)) ** 2 + ((xx - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2 <= 1
      ys, xs = np.nonzero(m)
      ms.append(m)
      xyxy.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    lab = rng.integers(0, num_classes, n)
    xyxy = np.asarray(xyxy, np.float32)
    cxcywh = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                       xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], -1) / np.array([w, h, w, h], np.float32)
    labels[i, :n] = lab
    boxes[i, :n] = cxcywh
    masks[i, :n, :h, :w] = np.stack(ms)
    valid[i, :n] = True
    per_image.append(dict(labels=lab, xyxy=xyxy, masks=np.stack(ms)))
  return per_image, dict(labels=labels, boxes=boxes, masks=masks, valid=valid)


def build_cfg(standin, spec):
  cfg = standin.CfgNode()
  ref = standin.import_reference()
  ref.config.add_maskdino_config(cfg)
  m, h = cfg.MODEL, cfg.MODEL.SEM_SEG_HEAD
  m.META_ARCHITECTURE = "MaskDINO"
  m.BACKBONE.NAME = "FixtureBackbone"
  m.PIXEL_MEAN = [123.675, 116.28, 103.53]
  m.PIXEL_STD = [58.395, 57.12, 57.375]
  cfg.FIXTURE_CHANNELS = spec["channels"]
  h.NAME = "MaskDINOHead"
  h.IGNORE_VALUE = 255
  h.NUM_CLASSES = spec["num_classes"]
  h.LOSS_WEIGHT = 1.0
  h.CONVS_DIM = spec["hidden_dim"]
  h.MASK_DIM = spec["hidden_dim"]
  h.NORM = "GN"
  h.PIXEL_DECODER_NAME = "MaskDINOEncoder"
  h.DIM_FEEDFORWARD = spec["enc_ffn"]
  h.NUM_FEATURE_LEVELS = len(spec["encoder_in"])
  h.TOTAL_NUM_FEATURE_LEVELS = spec["total_levels"]
  h.IN_FEATURES = ["res2", "res3", "res4", "res5"]
  h.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = list(spec["encoder_in"])
  h.COMMON_STRIDE = 4
  h.TRANSFORMER_ENC_LAYERS = spec["enc_layers"]
  h.FEATURE_ORDER = spec["feature_order"]
  d = m.MaskDINO
  d.TRANSFORMER_DECODER_NAME = "MaskDINODecoder"
  d.DEEP_SUPERVISION = True
  d.NO_OBJECT_WEIGHT = 0.1
  d.CLASS_WEIGHT, d.MASK_WEIGHT, d.DICE_WEIGHT, d.BOX_WEIGHT, d.GIOU_WEIGHT = 4.0, 5.0, 5.0, 5.0, 2.0
  d.HIDDEN_DIM = spec["hidden_dim"]
  d.NUM_OBJECT_QUERIES = spec["num_queries"]
  d.NHEADS = spec["nheads"]
  d.DROPOUT = 0.0
  d.DIM_FEEDFORWARD = spec["dec_ffn"]
  d.ENC_LAYERS = 0
  d.PRE_NORM = False
  d.ENFORCE_INPUT_PROJ = False
  d.SIZE_DIVISIBILITY = 32
  d.DEC_LAYERS = spec["dec_layers"]
  d.TRAIN_NUM_POINTS = spec["num_points"]
  d.OVERSAMPLE_RATIO = spec["oversample_ratio"]
  d.IMPORTANCE_SAMPLE_RATIO = spec["importance_sample_ratio"]
  d.INITIAL_PRED = True
  d.TWO_STAGE = spec["two_stage"]
  d.DN = "seg"
  d.DN_NUM = spec["dn_num"]
  d.DN_NOISE_SCALE = spec["noise_scale"]
  d.INITIALIZE_BOX_TYPE = spec["box_init"]
  d.SEMANTIC_CE_LOSS = spec["semantic_ce"]
  d.TEST.SEMANTIC_ON = spec["semantic_on"]
  d.TEST.INSTANCE_ON = spec["instance_on"]
  d.TEST.PANOPTIC_ON = spec["panoptic_on"]
  d.TEST.OVERLAP_THRESHOLD = spec["overlap_threshold"]
  d.TEST.OBJECT_MASK_THRESHOLD = spec["object_mask_threshold"]
  d.TEST.PANO_TEMPERATURE = spec["pano_temperature"]
  cfg.TEST.DETECTIONS_PER_IMAGE = spec["detections_per_image"]
  cfg.INPUT.DATASET_MAPPER_NAME = "coco_instance_lsj"
  cfg.DATASETS.TRAIN = ("dinoseg_fixture",)
  meta = standin.MetadataCatalog.get("dinoseg_fixture")
  meta.thing_dataset_id_to_contiguous_id = {c + 1: c for c in spec["thing_classes"]}
  return cfg


def register_backbone(standin):
  import torch  # noqa: PLC0415

  if "FixtureBackbone" in standin.BACKBONE_REGISTRY._obj:
    return
  class FixtureBackbone(standin.Backbone):
    """Returns the features stored in `self.features`, whatever the image."""

    def __init__(self, cfg, input_shape):
      super().__init__()
      self._out_features = ["res2", "res3", "res4", "res5"]
      self._out_feature_channels = dict(cfg.FIXTURE_CHANNELS)
      self._out_feature_strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
      self.features = None
      self.dummy = torch.nn.Identity()

    def forward(self, images):
      return self.features
  standin.BACKBONE_REGISTRY.register(FixtureBackbone)


def probe(name, x, seed, axis=1, k=4):
  """Contracts `axis` of x with probe_weight(name, x.shape[axis], seed, k) (keeps fixtures small)."""
  w = probe_weight(name, x.shape[axis], seed, k).astype(np.float64)
  return np.moveaxis(np.tensordot(np.moveaxis(x.astype(np.float64), axis, -1), w, axes=1), -1, axis).astype(np.float32)


def run_fixture(name, spec, standin, ref, torch):
  seed = spec["seed"]
  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  cfg = build_cfg(standin, spec)
  model = ref.meta_arch.MaskDINO(cfg)
  state = model.state_dict()
  new_state = {k: torch.from_numpy(fixture_weight(canonical_key(k), v.shape, seed)) for k, v in state.items()
               if k != "criterion.empty_weight"}
  new_state["criterion.empty_weight"] = state["criterion.empty_weight"]
  model.load_state_dict(new_state, strict=True)
  param_keys = [[k, list(v.shape)] for k, v in state.items()]

  b = len(IMAGE_HW)
  padded = (64, 96)
  feats = {}
  for res, stride in (("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32)):
    feats[res] = fixture_input(res, (b, spec["channels"][res], padded[0] // stride, padded[1] // stride), seed)
  model.backbone.features = {k: torch.from_numpy(v) for k, v in feats.items()}
  per_image, gt = make_ground_truth(rng, IMAGE_HW, NUM_GT, padded, spec["num_classes"], max(NUM_GT))
  images = [torch.zeros(3, h, w) for h, w in IMAGE_HW]

  out = {"config": json.dumps(dict(spec, name=name, image_hw=IMAGE_HW, output_hw=OUTPUT_HW, padded_hw=padded,
                                   num_gt=NUM_GT, grad_keys=GRAD_KEYS)),
         "param_keys": json.dumps(param_keys),
         "image_hw": np.asarray(IMAGE_HW, np.int32), "padded_hw": np.asarray(padded, np.int32),
         "output_hw": np.asarray(OUTPUT_HW, np.int32)}
  for k, v in gt.items():
    out[f"gt/{k}"] = v

  # ---- eval mode
  model.eval()
  captured = {}
  pixel_decoder = model.sem_seg_head.pixel_decoder
  orig_ff = pixel_decoder.forward_features
  def forward_features(*a, **k):
    res = orig_ff(*a, **k)
    captured["pixel"] = res
    return res
  pixel_decoder.forward_features = forward_features
  head = model.sem_seg_head
  orig_head = head.forward
  def head_forward(*a, **k):
    res = orig_head(*a, **k)
    captured["head"] = res
    return res
  head.forward = head_forward
  inputs = [{"image": im, "height": oh, "width": ow} for im, (oh, ow) in zip(images, OUTPUT_HW)]
  with torch.no_grad():
    results = model(inputs)
  mask_features, _, multi_scale = captured["pixel"]
  out["eval/probe/mask_features"] = probe("mask_features", mask_features.numpy(), seed)
  for i, f in enumerate(multi_scale):
    out[f"eval/probe/level{i}"] = probe(f"level{i}", f.numpy(), seed)
  outputs, _ = captured["head"]
  preds = list(outputs["aux_outputs"]) + [outputs]
  out["eval/logits"] = np.stack([p["pred_logits"].numpy() for p in preds])
  out["eval/boxes"] = np.stack([p["pred_boxes"].numpy() for p in preds])
  out["eval/probe/masks"] = probe("masks", outputs["pred_masks"].numpy(), seed)
  if "interm_outputs" in outputs:
    interm = outputs["interm_outputs"]
    out["eval/interm_logits"] = interm["pred_logits"].numpy()
    out["eval/interm_boxes"] = interm["pred_boxes"].numpy()
    out["eval/probe/interm_masks"] = probe("interm_masks", interm["pred_masks"].numpy(), seed)
  for i, r in enumerate(results):
    if "instances" in r:
      inst = r["instances"]
      order = torch.argsort(inst.scores, descending=True)
      out[f"post/inst_scores/{i}"] = inst.scores[order].numpy()
      out[f"post/inst_labels/{i}"] = inst.pred_classes[order].numpy().astype(np.int32)
      out[f"post/inst_boxes/{i}"] = inst.pred_boxes.tensor[order].numpy()
      out[f"post/inst_masks/{i}"] = np.packbits(inst.pred_masks[order].numpy().astype(bool), axis=-1)
    if "panoptic_seg" in r:
      seg, info = r["panoptic_seg"]
      out[f"post/pano_seg/{i}"] = seg.numpy().astype(np.int32)
      out[f"post/pano_info/{i}"] = json.dumps(info)
    if "sem_seg" in r:
      out[f"post/probe/sem_seg/{i}"] = probe("sem_seg", r["sem_seg"].numpy(), seed, axis=0, k=2)
      out[f"post/sem_argmax/{i}"] = r["sem_seg"].argmax(0).numpy().astype(np.uint8)

  # ---- train mode
  model.train()
  dec = head.predictor
  orig_prepare = dec.prepare_for_dn
  def prepare_for_dn(*a, **k):
    draws = []
    rand_like, randint_like = torch.rand_like, torch.randint_like
    def rec_rand_like(t, *aa, **kk):
      r = rand_like(t, *aa, **kk)
      draws.append(r.clone())
      return r
    def rec_randint_like(t, *aa, **kk):
      r = randint_like(t, *aa, **kk)
      draws.append(r.clone())
      return r
    torch.rand_like, torch.randint_like = rec_rand_like, rec_randint_like
    try:
      res = orig_prepare(*a, **k)
      captured["dn_queries"] = res
      return res
    finally:
      torch.rand_like, torch.randint_like = rand_like, randint_like
      captured["dn_draws"] = draws
  dec.prepare_for_dn = prepare_for_dn
  matcher = model.criterion.matcher
  orig_match = matcher.forward
  match_calls = []
  def match_forward(outputs_, targets_, *a, **k):
    points = []
    rand = torch.rand
    def rec_rand(*aa, **kk):
      r = rand(*aa, **kk)
      points.append(r.clone())
      return r
    torch.rand = rec_rand
    try:
      idx = orig_match(outputs_, targets_, *a, **k)
    finally:
      torch.rand = rand
    match_calls.append((points, idx))
    return idx
  matcher.forward = match_forward
  orig_loss_masks = model.criterion.loss_masks
  mask_calls = []
  def loss_masks(outputs_, targets_, indices, num_masks):
    standin.RECORDER.reset()
    standin.RECORDER.enabled = True
    try:
      res = orig_loss_masks(outputs_, targets_, indices, num_masks)
    finally:
      standin.RECORDER.enabled = False
    mask_calls.append((outputs_, indices, standin.RECORDER.point_draws[0]))
    return res
  model.criterion.loss_masks = loss_masks

  train_inputs = []
  for im, pi, (h, w) in zip(images, per_image, IMAGE_HW):
    inst = standin.Instances((h, w), gt_classes=torch.as_tensor(pi["labels"], dtype=torch.int64),
                             gt_boxes=standin.Boxes(torch.as_tensor(pi["xyxy"])),
                             gt_masks=torch.as_tensor(pi["masks"]))
    train_inputs.append({"image": im, "instances": inst})
  losses = model(train_inputs)
  total = sum(losses.values())
  model.zero_grad()
  total.backward()
  params = {canonical_key(k): v for k, v in model.named_parameters()}  # tied parameters appear once
  for k in GRAD_KEYS:
    if k in params:
      out[f"grad/{k}"] = params[k].grad.numpy().copy()
  for k, v in losses.items():
    out[f"loss/{k}"] = np.float32(v.item())

  # DN noise per slot g * m + j (m = the largest GT count), (B, dn_num).
  t_max = max(NUM_GT)
  groups = spec["dn_num"] // t_max
  dn_num = spec["dn_num"]
  p, new_label, box_u = captured["dn_draws"]
  total_gt = sum(NUM_GT)
  label_u = np.full((b, dn_num), 0.99, np.float32)
  random_labels = np.zeros((b, dn_num), np.int32)
  box_noise = np.full((b, dn_num, 4), 0.5, np.float32)
  chosen = np.nonzero(p.numpy() < spec["noise_scale"] * 0.5)[0].tolist()
  for g in range(groups):
    offset = 0
    for i, n in enumerate(NUM_GT):
      for j in range(n):
        s = g * total_gt + offset + j
        label_u[i, g * t_max + j] = p[s]
        box_noise[i, g * t_max + j] = box_u[s].numpy()
        if s in chosen:
          random_labels[i, g * t_max + j] = new_label[chosen.index(s)]
      offset += n
  out["dn/label_u"], out["dn/random_labels"], out["dn/box_u"] = label_u, random_labels, box_noise
  if spec.get("store_dn_queries"):
    query_label, query_bbox, attn_mask, _ = captured["dn_queries"]
    out["dn/probe/query_label"] = probe("dn_query_label", query_label.detach().numpy(), seed, axis=2)
    out["dn/query_bbox"] = query_bbox.detach().numpy()
    out["dn/attn_mask"] = attn_mask.numpy()

  # Matched outputs: matcher call order is final, aux 0..L-1, interm.
  outputs, mask_dict = captured["head"]
  n_layers = spec["dec_layers"]
  names = [f"pred{n_layers}"] + [f"pred{i}" for i in range(n_layers)] + (["interm"] if spec["two_stage"] else [])
  assert len(match_calls) == len(names), (len(match_calls), names)
  indices = {}
  for out_name, (points, idx) in zip(names, match_calls):
    out[f"draws/match/{out_name}"] = np.stack([pt[0].numpy() for pt in points])
    table = np.full((b, t_max), -1, np.int32)
    for i, (src, tgt) in enumerate(idx):
      table[i, tgt.numpy()] = src.numpy()
    out[f"indices/{out_name}"] = table
    indices[out_name] = idx
  # Which dict each loss_masks call saw.
  by_id = {id(outputs): f"pred{n_layers}"}
  for i, a in enumerate(outputs["aux_outputs"]):
    by_id[id(a)] = f"pred{i}"
  if "interm_outputs" in outputs:
    by_id[id(outputs["interm_outputs"])] = "interm"
  known = mask_dict["output_known_lbs_bboxes"]
  by_id[id(known)] = f"dn{n_layers}"
  for i, a in enumerate(known["aux_outputs"]):
    by_id[id(a)] = f"dn{i}"
  for outputs_, idx, (cand, rand) in mask_calls:
    out_name = by_id[id(outputs_)]
    s, r = cand.shape[1], rand.shape[1]
    if out_name.startswith("dn"):
      c_t = np.full((b, dn_num, s, 2), 0.5, np.float32)
      r_t = np.full((b, dn_num, r, 2), 0.5, np.float32)
      row = 0
      for i, n in enumerate(NUM_GT):
        for g in range(groups):
          for j in range(n):
            c_t[i, g * t_max + j], r_t[i, g * t_max + j] = cand[row].numpy(), rand[row].numpy()
            row += 1
    else:
      c_t = np.full((b, t_max, s, 2), 0.5, np.float32)
      r_t = np.full((b, t_max, r, 2), 0.5, np.float32)
      row = 0
      for i, (src, tgt) in enumerate(idx):
        for j in tgt.tolist():
          c_t[i, j], r_t[i, j] = cand[row].numpy(), rand[row].numpy()
          row += 1
    out[f"draws/cand/{out_name}"] = c_t
    out[f"draws/rand/{out_name}"] = r_t
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--maskdino", required=True, help="checkout of IDEA-Research/MaskDINO")
  parser.add_argument("--only", nargs="*", default=None, help="fixture names (default: all)")
  args = parser.parse_args()
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  import torch  # noqa: PLC0415

  import maskdino_reference_standin as standin  # noqa: PLC0415
  torch.set_num_threads(2)
  standin.install(args.maskdino)
  ref = standin.import_reference()
  register_backbone(standin)
  OUT.mkdir(parents=True, exist_ok=True)
  for name, spec in FIXTURES.items():
    if args.only and name not in args.only:
      continue
    data = run_fixture(name, dict(COMMON, **spec), standin, ref, torch)
    path = OUT / f"{name}.npz"
    np.savez_compressed(path, **data)
    n_loss = sum(k.startswith("loss/") for k in data)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB, {n_loss} loss terms)")


if __name__ == "__main__":
  main()
