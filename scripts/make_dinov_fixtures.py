"""Writes tests/fixtures/dinov/*.npz: outputs of the reference DINOv head on random weights.

Usage:
  # /tmp/ref_dinov: a checkout of UX-Decoder/DINOv (tested at 53bf20d)
  python scripts/make_dinov_fixtures.py --dinov /tmp/ref_dinov

The reference's own head runs on the CPU (`dinov/body/general_head.py` IMaskDINOHead = the Mask DINO pixel
decoder `encoder_deform.py` + `DINOvOpenSet`, whose parent `DINOvRefer` holds the referring task), with
the stand-ins of scripts/dinov_reference_standin.py for detectron2 / fvcore / timm / omegaconf and the
CUDA op (the deformable attention takes the reference's PyTorch fallback). The meta-architecture
(`dinov/architectures/dinov.py`: data-side target preparation, scribble sampling, the criterion) does
not run: the head is called with the target dictionaries that architecture would build, written here.
A backbone stand-in is not needed either: the head takes fixed random res2..res5 features
(`fixture_input`), so the head is compared in isolation from the backbone.

Sizes are tiny (hidden 256 as the sine embeddings of the decoder need it; 10 generic queries, 3 decoder
layers, FFN 64, projection 32); the settings DINOv fixes (6 click tokens, 1 content token, class-agnostic
DN, no two-stage, no initial prediction, CONTENT_INDEPENDENT) are the released ones. Weights are not
stored: every parameter is `fixture_weight(canonical_key(key), shape, seed)` of
scripts/make_maskdino_fixtures.py (tied keys share one value); the test rebuilds them from the key list
through dinoseg's converter.

Each .npz holds (B = batch, L = decoder layers, Q generic queries, K prompts, C clicks, T = 6 tokens):
  config, param_keys     JSON: the settings; [key, shape] of the reference head state dict with the
                         `sem_seg_head.` prefix of a full checkpoint (the strict-load layout).
  (features: fixture_input(res, (B, C, h, w), seed) on the 64 x 96 canvas, not stored)
  prompt/masks           (B, M, 64, 96) uint8: the prompt masks of the training batch (image 0: two objects and a
                         3 x 3 square; image 1: one object and an empty mask; M = 3, image 1's last slot
                         unused), prompt/num (B,) masks per image.
  prompt/key_mask/level{i}  (B, M, S_i) bool: the cross-attention mask (True = blocked) each prompt-encoder
                         layer i (decoder level order, coarse -> fine) used.
  prompt/embeddings      (sum(num), d) the prompt embeddings (images in order, their masks in order).
  generic_train/members  (K, sum(num)) bool: the examples averaged into each class prompt
                         (the reference's `sampled_examples_by_catetory`).
  generic_train/gt/{labels, boxes, valid}  (B, n) the generic targets (DN boxes, cxcywh / image size).
  generic_train/dn_box_u (B, dn_num, 4) the reference's DN box noise per slot g * m + j (m = largest GT
                         count; unused slots 0.5); DN is class-agnostic (no label noise is drawn).
  generic_train/{logits, boxes}  (L, B, Q, K) / (L, B, Q, 4); generic_train/probe/masks (L, B, 4, h, w);
  generic_train/dn/{logits, boxes, probe/masks}  the same for the 2 x 3 DN queries.
  generic_train/grad/<key>  gradients of `objective` (below) of every output above.
  generic_eval/bank      (K, d) the stored prompt embedding of each category (category 2 has none: the
                         reference gives it a zero vector), one file per category, INFERENCE_EXAMPLE 1,
                         image 0 only (the reference's inference takes batch 1).
  generic_eval/{logits, boxes}  every layer; generic_eval/probe/masks (1, 4, h, w) the final masks.
  refer_{train,eval}/clicks (1, C, 4) click boxes (cxcywh on the canvas); the referring prompts are image 0's
                         three prompt masks (prompt/masks[:1]),
  refer_train/click_u    (1, C, 4) the reference's click noise; refer_*/{logits (L, 1, K, C*T), boxes
                         (L, 1, C*T, 4), ious (L, 1, C, T)}, refer_*/probe/masks, refer_train/grad/<key>.

`objective(outputs)` = sum over the stored arrays (full, before probing) of mean(x * cos(0.37 i)), i the
flat index of x in the reference's layout.
"""
import argparse
import importlib.util
import json
import pathlib

import numpy as np


def _sibling(name: str):
  """scripts/<name>.py as a module (also when this file is imported by the tests)."""
  spec = importlib.util.spec_from_file_location(name, pathlib.Path(__file__).resolve().with_name(f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


mdf = _sibling("make_maskdino_fixtures")  # fixture_weight, canonical_key, fixture_input, probe, make_ground_truth

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "dinov"

FIXTURES = {
    # Swin-T layout: res3-res5 + one extra level (4 levels, low2high): prompt masks halved twice before level 1/8.
    "swint_4lvl": dict(channels=dict(res2=16, res3=24, res4=32, res5=40), encoder_in=["res3", "res4", "res5"],
                       total_levels=4, seed=11),
    # Swin-L layout: res2-res5 + one extra level (5 levels): one halving before level 1/4.
    "swinl_5lvl": dict(channels=dict(res2=24, res3=32, res4=40, res5=48), encoder_in=["res2", "res3", "res4", "res5"],
                       total_levels=5, seed=12),
}
COMMON = dict(hidden_dim=256, dim_proj=32, num_queries=10, nheads=8, enc_layers=2, dim_feedforward=64, dec_layers=3,
              dn_num=8, noise_scale=0.4, num_mask_tokens=6, num_content_tokens=1, content_independent=True,
              feature_order="low2high")
PADDED_HW = (64, 96)
IMAGE_HW = [(64, 96), (50, 70)]
NUM_GT = [3, 2]                          # m = 3: DN_NUM 8 -> 2 groups, 6 DN queries (dinoseg: 2 unused slots)
MEMBERS = [[0, 3], [1], [2, 4]]           # class prompts: averages of these examples (image 0: 0-2, image 1: 3-4)
BANK_CATEGORIES = [0, 1, 3]               # inference bank: K = 4 categories, category 2 has no example
CLICKS = [[0.30, 0.40, 0.06, 0.09], [0.62, 0.25, 0.06, 0.09], [0.50, 0.70, 0.06, 0.09]]
GRAD_KEYS = {
    "generic_train": ["sem_seg_head.predictor.class_embed_openset", "sem_seg_head.predictor.content_tokens.weight",
                      "sem_seg_head.predictor.project_cross_attention_layers.0.multihead_attn.in_proj_bias",
                      "sem_seg_head.predictor.query_feat.weight", "sem_seg_head.predictor.query_embed.weight",
                      "sem_seg_head.predictor.label_enc.weight", "sem_seg_head.predictor.pb_embedding.weight",
                      "sem_seg_head.predictor._bbox_embed.layers.2.weight",
                      "sem_seg_head.predictor.mask_embed.layers.2.bias",
                      "sem_seg_head.pixel_decoder.transformer.level_embed"],
    "refer_train": ["sem_seg_head.predictor.class_embed", "sem_seg_head.predictor.mask_tokens.weight",
                    "sem_seg_head.predictor.pb_embedding.weight", "sem_seg_head.predictor.label_enc.weight",
                    "sem_seg_head.predictor.iou_prediction_head.layers.2.weight",
                    "sem_seg_head.predictor.content_tokens.weight",
                    "sem_seg_head.predictor.project_cross_attention_layers.1.norm.weight",
                    "sem_seg_head.predictor._bbox_embed.layers.0.bias"],
}
SWITCH = {"part": False, "whole": True, "seg": True, "det": True}


def cos_weights(shape) -> np.ndarray:
  """cos(0.37 i) over the flat index i, in `shape` (the weights of `objective`)."""
  return np.cos(0.37 * np.arange(int(np.prod(shape)), dtype=np.float64)).reshape(shape).astype(np.float32)


def build_cfg(spec):
  enc = dict(NAME="encoder_deform", IGNORE_VALUE=255, NUM_CLASSES=133, LOSS_WEIGHT=1.0, CONVS_DIM=spec["hidden_dim"],
             MASK_DIM=spec["hidden_dim"], NORM="GN", IN_FEATURES=["res2", "res3", "res4", "res5"],
             DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES=list(spec["encoder_in"]), COMMON_STRIDE=4,
             TRANSFORMER_ENC_LAYERS=spec["enc_layers"], TOTAL_NUM_FEATURE_LEVELS=spec["total_levels"],
             NUM_FEATURE_LEVELS=len(spec["encoder_in"]), FEATURE_ORDER=spec["feature_order"])
  dec = dict(NAME="dinov_openset_decoder", HIDDEN_DIM=spec["hidden_dim"], NUM_OBJECT_QUERIES=spec["num_queries"],
             NHEADS=spec["nheads"], DROPOUT=0.0, DIM_FEEDFORWARD=spec["dim_feedforward"], ENFORCE_INPUT_PROJ=False,
             DEC_LAYERS=spec["dec_layers"], TWO_STAGE=False, INITIALIZE_BOX_TYPE="no", DN="seg",
             DN_NOISE_SCALE=spec["noise_scale"], DN_NUM=spec["dn_num"], INITIAL_PRED=False, LEARN_TGT=False,
             TOTAL_NUM_FEATURE_LEVELS=spec["total_levels"], NUM_INTERACTIVE_TOKENS=spec["num_mask_tokens"],
             NUM_CONTENT_TOKENS=spec["num_content_tokens"], CONTENT_INDEPENDENT=spec["content_independent"],
             INFERENCE_EXAMPLE=1, MAX_TRAIN_EXAMPLE=4)
  return {"MODEL": {"ENCODER": enc, "DECODER": dec, "DIM_PROJ": spec["dim_proj"]}, "OUTPUT_DIR": spec["bank_dir"]}


def build_head(standin, spec, torch):
  md = standin.md
  ref = standin.import_reference()
  cfg = build_cfg(spec)
  strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
  input_shape = {k: md.ShapeSpec(channels=spec["channels"][k], stride=s) for k, s in strides.items()}
  head = ref.head.get_interactive_maskdino_head(cfg, input_shape, None, {"task_switch": {}})
  state = head.state_dict()
  full = {"sem_seg_head." + k: v for k, v in state.items()}
  new = {k: torch.from_numpy(mdf.fixture_weight(mdf.canonical_key(k), v.shape, spec["seed"])) for k, v in full.items()}
  head.load_state_dict({k[len("sem_seg_head."):]: v for k, v in new.items()}, strict=True)
  return head, [[k, list(v.shape)] for k, v in full.items()]


def gradients(head, keys):
  params = {mdf.canonical_key("sem_seg_head." + k): v for k, v in head.named_parameters()}
  return {f"grad/{k}": params[k].grad.numpy().copy() for k in keys}


def objective(arrays):
  return sum((x * x.new_tensor(cos_weights(tuple(x.shape)))).mean() for x in arrays)


def layers(out, key):
  """The per-layer values of `key` (aux layers, then the final one)."""
  return [a[key] for a in out["aux_outputs"]] + [out[key]]


def probe(name, x, seed):
  return mdf.probe(name, x, seed)


def record_rand_like(torch, sink):
  """Context: torch.rand_like calls are recorded in `sink`."""
  original = torch.rand_like

  class Ctx:
    def __enter__(self):
      def rec(t, *a, **k):
        r = original(t, *a, **k)
        sink.append(r.clone())
        return r
      torch.rand_like = rec

    def __exit__(self, *exc):
      torch.rand_like = original
  return Ctx()


def prompt_masks(gt_masks, padded_hw):
  """Image 0: its first two objects and a 3 x 3 square; image 1: its first object and an empty mask."""
  h, w = padded_hw
  tiny = np.zeros((h, w), np.float32)
  tiny[30:33, 60:63] = 1.0
  img0 = np.stack([gt_masks[0, 0], gt_masks[0, 1], tiny]).astype(np.float32)
  img1 = np.stack([gt_masks[1, 0], np.zeros((h, w))]).astype(np.float32)
  return [img0, img1]


def run_generic_train(head, spec, feats, gt, masks, out, torch):
  seed = spec["seed"]
  b = len(IMAGE_HW)
  content, generic = [], []
  for i, m in enumerate(masks):
    n = len(m)
    content.append({"pb": torch.ones(n), "boxes_dn": torch.tensor([[0.0, 0.0, 1.0, 1.0]] * n),
                    "rand_shape": torch.from_numpy(m), "cross_gpu": False,
                    "sampled_examples_by_catetory": {str(k): torch.tensor(v) for k, v in enumerate(MEMBERS)}})
    ng = NUM_GT[i]
    generic.append({"gt_whole_classes": torch.as_tensor(gt["labels"][i, :ng], dtype=torch.int64),
                    "boxes": torch.from_numpy(gt["boxes"][i, :ng])})
  pred = head.predictor
  key_masks, tokens, hooks = {}, {}, []
  for i, layer in enumerate(pred.project_cross_attention_layers):
    def hook(module, args, kwargs, i=i):
      key_masks[i] = kwargs["memory_mask"][::spec["nheads"]].clone()
    hooks.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
  original = pred.prepare_visual_prompt
  def prepare_visual_prompt(*a, **k):
    res = original(*a, **k)
    tokens["all"] = res[4]
    return res
  pred.prepare_visual_prompt = prepare_visual_prompt
  head.train()
  draws = []
  with record_rand_like(torch, draws):
    output, mask_dict = head({k: torch.from_numpy(v) for k, v in feats.items()},
                             targets={"content": content, "generic": generic}, task="visual_openset", extra=SWITCH)
  pred.prepare_visual_prompt = original
  for h in hooks:
    h.remove()
  for i, km in key_masks.items():
    out[f"prompt/key_mask/level{i}"] = km.numpy()
  out["prompt/embeddings"] = tokens["all"].detach().numpy()
  total = sum(len(m) for m in masks)
  members = np.zeros((len(MEMBERS), total), bool)
  for k, idx in enumerate(MEMBERS):
    members[k, idx] = True
  out["generic_train/members"] = members
  # DN box noise per slot g * m + j (the reference draws rows g * sum(n) + offset_b + j).
  (box_u,) = draws
  m = max(NUM_GT)
  groups = spec["dn_num"] // m
  noise = np.full((b, spec["dn_num"], 4), 0.5, np.float32)
  for g in range(groups):
    offset = 0
    for i, n in enumerate(NUM_GT):
      for j in range(n):
        noise[i, g * m + j] = box_u[g * sum(NUM_GT) + offset + j].numpy()
      offset += n
  out["generic_train/dn_box_u"] = noise
  known = mask_dict["output_known_lbs_bboxes"]
  arrays = []
  for prefix, o in (("generic_train", output), ("generic_train/dn", known)):
    logits, boxes, pmasks = (torch.stack(layers(o, k)) for k in ("pred_logits", "pred_boxes", "pred_masks"))
    out[f"{prefix}/logits"], out[f"{prefix}/boxes"] = logits.detach().numpy(), boxes.detach().numpy()
    out[f"{prefix}/probe/masks"] = np.stack([probe("masks", x, seed) for x in pmasks.detach().numpy()])
    arrays += [logits, boxes, pmasks]
  head.zero_grad()
  objective(arrays).backward()
  out.update({f"generic_train/{k}": v for k, v in gradients(head, GRAD_KEYS["generic_train"]).items()})


def write_bank(spec, bank):
  """One safetensors file per category under OUTPUT_DIR/<category>/ (the `get_content` layout)."""
  from safetensors.torch import save_file  # noqa: PLC0415
  import torch  # noqa: PLC0415
  root = pathlib.Path(spec["bank_dir"])
  for k in BANK_CATEGORIES:
    (root / str(k)).mkdir(parents=True, exist_ok=True)
    save_file({"embedding": torch.from_numpy(bank[k])}, str(root / str(k) / "id_0_idx_0.safetensors"))


def run_generic_eval(head, spec, feats, out, torch):
  seed = spec["seed"]
  k = max(BANK_CATEGORIES) + 1
  bank = mdf.fixture_input("bank", (k, spec["hidden_dim"]), seed)
  bank[[c for c in range(k) if c not in BANK_CATEGORIES]] = 0.0
  write_bank(spec, bank)
  out["generic_eval/bank"] = bank
  head.eval()
  with torch.no_grad():
    output, _ = head({n: torch.from_numpy(v[:1]) for n, v in feats.items()}, targets={"generic": None, "content": None},
                     task="visual_openset", extra=SWITCH)
  out["generic_eval/logits"] = torch.stack(layers(output, "pred_logits")).numpy()
  out["generic_eval/boxes"] = torch.stack(layers(output, "pred_boxes")).numpy()
  out["generic_eval/probe/masks"] = probe("masks", output["pred_masks"].numpy(), seed)


def run_refer(head, spec, feats, masks, out, torch, train):
  seed = spec["seed"]
  name = "refer_train" if train else "refer_eval"
  clicks = np.asarray([CLICKS], np.float32)
  c = clicks.shape[1]
  prompts = masks[0][None]  # image 0's prompt masks as the referring prompts (incl. the 3 x 3 one)
  out[f"{name}/clicks"] = clicks
  position = [{"pb": torch.ones(c) if train else torch.zeros(c), "boxes_dn": torch.from_numpy(clicks[0]),
               "box_start": c}]
  kp = prompts.shape[1]
  content = [{"pb": torch.ones(kp), "boxes_dn": torch.tensor([[0.0, 0.0, 1.0, 1.0]] * kp),
              "rand_shape": torch.from_numpy(prompts[0])}]
  head.train(train)
  draws = []
  with record_rand_like(torch, draws), torch.set_grad_enabled(train):
    output, _ = head({n: torch.from_numpy(v[:1]) for n, v in feats.items()},
                     targets={"position": position, "content": content}, task="visual_refer", extra=SWITCH)
  if train:
    (click_u,) = draws
    out[f"{name}/click_u"] = click_u.numpy()
  logits, boxes, ious = (torch.stack(layers(output, k)) for k in ("pred_logits", "pred_boxes", "pred_ious"))
  out[f"{name}/logits"], out[f"{name}/boxes"] = logits.detach().numpy(), boxes.detach().numpy()
  out[f"{name}/ious"] = ious.detach().numpy()
  if train:
    pmasks = torch.stack(layers(output, "pred_masks"))
    out[f"{name}/probe/masks"] = np.stack([probe("masks", x, seed) for x in pmasks.detach().numpy()])
    head.zero_grad()
    objective([logits, boxes, ious, pmasks]).backward()
    out.update({f"{name}/{k}": v for k, v in gradients(head, GRAD_KEYS[name]).items()})
  else:
    out[f"{name}/probe/masks"] = probe("masks", output["pred_masks"].numpy(), seed)


def run_fixture(name, spec, standin, torch, workdir):
  seed = spec["seed"]
  spec = dict(spec, bank_dir=str(pathlib.Path(workdir) / name / "bank"))
  torch.manual_seed(seed)
  head, param_keys = build_head(standin, spec, torch)
  b = len(IMAGE_HW)
  feats = {res: mdf.fixture_input(res, (b, spec["channels"][res], PADDED_HW[0] // s, PADDED_HW[1] // s), seed)
           for res, s in (("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32))}
  _, gt = mdf.make_ground_truth(np.random.default_rng(seed), IMAGE_HW, NUM_GT, PADDED_HW, 5, max(NUM_GT))
  masks = prompt_masks(gt["masks"], PADDED_HW)
  saved = {k: v for k, v in spec.items() if k != "bank_dir"}
  out = {"config": json.dumps(dict(saved, name=name, image_hw=IMAGE_HW, padded_hw=PADDED_HW, num_gt=NUM_GT,
                                   members=MEMBERS, bank_categories=BANK_CATEGORIES, grad_keys=GRAD_KEYS)),
         "param_keys": json.dumps(param_keys)}
  m_max = max(len(m) for m in masks)
  padded = np.zeros((b, m_max) + PADDED_HW, np.float32)
  for i, m in enumerate(masks):
    padded[i, :len(m)] = m
  out["prompt/masks"], out["prompt/num"] = padded.astype(np.uint8), np.asarray([len(m) for m in masks], np.int32)
  for k in ("labels", "boxes", "valid"):
    out[f"generic_train/gt/{k}"] = gt[k]
  run_generic_train(head, spec, feats, gt, masks, out, torch)
  run_generic_eval(head, spec, feats, out, torch)
  run_refer(head, spec, feats, masks, out, torch, train=False)
  run_refer(head, spec, feats, masks, out, torch, train=True)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dinov", required=True, help="checkout of UX-Decoder/DINOv")
  parser.add_argument("--only", nargs="*", default=None, help="fixture names (default: all)")
  args = parser.parse_args()
  import tempfile  # noqa: PLC0415

  import torch  # noqa: PLC0415

  import dinov_reference_standin as standin  # noqa: PLC0415
  torch.set_num_threads(2)
  standin.install(args.dinov)
  OUT.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as workdir:
    for name, spec in FIXTURES.items():
      if args.only and name not in args.only:
        continue
      data = run_fixture(name, dict(COMMON, **spec), standin, torch, workdir)
      path = OUT / f"{name}.npz"
      np.savez_compressed(path, **data)
      print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB, {len(data)} arrays)")


if __name__ == "__main__":
  main()
