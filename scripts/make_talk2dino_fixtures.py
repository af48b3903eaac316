"""Writes the Talk2DINO parity fixtures by running the reference code on random weights.

    python scripts/make_talk2dino_fixtures.py --talk2dino /tmp/ref_t2d \\
        --dinov2 /tmp/ref_dinov2 --clip /tmp/ref_clip

`--talk2dino` is a checkout of lorebianchi98/Talk2DINO, `--dinov2` one of
facebookresearch/dinov2 and `--clip` one of openai/CLIP. Nothing is downloaded: every model
gets random weights at tiny sizes and runs on CPU (xformers disabled).

What runs is the reference's own code: `src/hooks.py`, `src/model.py` (ProjectionLayer),
`src/loss.py` (ContrastiveLoss), and from `src/open_vocabulary_segmentation/`:
`DINOText.encode_image / generate_masks / similarity_assignment_weighted /
build_dataset_class_tokens / build_text_embedding / apply_pamr`, `DINOTextMasker`, `PAMR` and
`DINOTextSegInference.encode_decode`. Their heavy imports are satisfied by stand-in modules:
- mmcv / mmseg / omegaconf / timm / transformers / webdataset are not installed: stand-ins
  provide the names the imports ask for; the code paths used never touch them, except
  `mmseg.models.EncoderDecoder`, whose `slide_inference` / `inference` / `simple_test` the
  stand-in provides, written here from mmsegmentation 0.x (`slide_inference`: windows of
  `crop_size` every `stride`, the last clamped to the border, `encode_decode` per window,
  zero-padded sum divided by the window count, bilinear resize (align_corners=False) to the
  original shape; `inference`: softmax over classes; `simple_test`: argmax);
- torchvision (broken with this torch): `T.Resize((S, S))` + `/255` + `T.Normalize` of
  `DINOText.image_transforms` is replaced by the equivalent tensor ops (the windows are
  exactly S x S here, so the resize is the identity);
- the DINOText constructor (torch.hub / clip.load / weight files) is bypassed: the instance is
  assembled from a tiny random DINOv2-with-registers, a tiny random CLIP and a tiny
  ProjectionLayer, with the same forward hook on the last block's `attn.qkv`.

Outputs (under --out, default tests/fixtures/talk2dino/):
- train_tiny.npz: pooled head embeddings (avg and disentangled) from `DINOText.encode_image`,
  the max-score similarity matrix, selected heads, InfoNCE loss (train and validation style),
  gradients of the projection and its weights after 3 Adam steps (lr 1e-4).
- segment_tiny.npz: class embeddings from the 7 templates, two sliding-window evaluations of
  one image (VOC21-like: background channel + cleaning + PAMR; Context59-like: PAMR only), with
  per-window intermediates (features, raw CLS logits, sigmoid masks, cleaned masks), the
  stitched scores, the resized scores and the label maps.
- pamr_tiny.npz: PAMR alone on a random image and masks.
Weights and images are float16-exact (stored as float16).
"""
import argparse
import json
import os
import pathlib
import sys
import types

import numpy as np

DINO_CFG = dict(embed_dim=16, depth=2, num_heads=4, num_register_tokens=4, pos_embed_grid=2)
PATCH = 14
WINDOW = 42          # crop size = DINOv2 input size (3 x 3 patches), the tiny 448
STRIDE = 21          # the tiny 224
CLIP_CFG = dict(width=16, num_heads=2, depth=1, embed_dim=16, context_length=77, vocab_size=49408)
CLASSNAMES = ["cat", "dog", "grass", "sky", "tvmonitor"]
RESIZED_HW = (42, 70)    # the image after the test-time resize: 1 x 3 windows
ORIGINAL_HW = (31, 52)   # its original size (scores are resized back to it)
BG_THRESH = 0.5          # random weights give cosines near 0: 0.5 splits the pixels (0.55 in the paper)


def _fp16_exact(t):
  return t.half().float()


def _randomize(model, torch, seed, skip=()):
  gen = torch.Generator().manual_seed(seed)
  state = {}
  for name, p in model.state_dict().items():
    if any(name.startswith(s) for s in skip):
      state[name] = p
      continue
    shape = tuple(p.shape)
    randn = torch.randn(shape, generator=gen)
    if name.endswith("gamma"):
      value = 0.5 + torch.rand(shape, generator=gen)
    elif ("norm" in name or "ln_" in name) and name.endswith("weight"):
      value = 1.0 + 0.1 * randn
    elif name.endswith("bias"):
      value = 0.1 * randn
    elif p.ndim >= 2 and ("weight" in name or name == "text_projection"):
      fan_in = int(np.prod(shape[1:])) if name != "text_projection" else shape[0]
      value = randn / np.sqrt(fan_in)
    else:
      value = 0.5 * randn
    state[name] = _fp16_exact(value)
  model.load_state_dict(state, strict=True)
  return state


def _module(name, **attrs):
  mod = types.ModuleType(name)
  mod.__dict__.update(attrs)
  sys.modules[name] = mod
  return mod


class _Anything:
  """A stand-in class: constructible and callable with anything, returns itself."""

  def __init__(self, *args, **kwargs):
    pass

  def __call__(self, *args, **kwargs):
    return self

  def __getattr__(self, name):
    return _Anything()


def _install_stand_ins(torch):
  """Stand-in modules for the imports the used reference code never exercises."""
  import torch.nn.functional as F  # noqa: PLC0415

  class Registry:
    def __init__(self, *args, **kwargs):
      pass

    def register_module(self, *args, **kwargs):
      return lambda cls: cls

  class Config(dict):
    def __getattr__(self, key):
      return self[key]

  class BaseSegmentor(torch.nn.Module):
    pass

  class EncoderDecoder(BaseSegmentor):
    """mmsegmentation 0.x `EncoderDecoder` test path (slide mode), written from its documented behaviour."""

    def slide_inference(self, img, img_meta, rescale):
      h_stride, w_stride = self.test_cfg.stride
      h_crop, w_crop = self.test_cfg.crop_size
      batch_size, _, h_img, w_img = img.size()
      h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
      w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
      preds = img.new_zeros((batch_size, self.num_classes, h_img, w_img))
      count = img.new_zeros((batch_size, 1, h_img, w_img))
      for h_idx in range(h_grids):
        for w_idx in range(w_grids):
          y1, x1 = h_idx * h_stride, w_idx * w_stride
          y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
          y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
          logit = self.encode_decode(img[:, :, y1:y2, x1:x2], img_meta)
          preds += F.pad(logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
          count[:, :, y1:y2, x1:x2] += 1
      assert (count == 0).sum() == 0
      self.stitched = preds / count
      preds = self.stitched
      if rescale:
        preds = F.interpolate(preds, size=img_meta[0]["ori_shape"][:2], mode="bilinear",
                              align_corners=self.align_corners)
      return preds

    def inference(self, img, img_meta, rescale):
      self.seg_logit = self.slide_inference(img, img_meta, rescale)
      return F.softmax(self.seg_logit, dim=1)

    def simple_test(self, img, img_meta, rescale=True):
      return self.inference(img, img_meta, rescale).argmax(dim=1)

  def get_logger(*args, **kwargs):
    import logging  # noqa: PLC0415
    return logging.getLogger("talk2dino-fixtures")

  _module("mmcv", Config=Config, Registry=Registry)
  _module("mmcv.utils", Registry=Registry)
  _module("mmcv.engine", collect_results_cpu=None, collect_results_gpu=None)
  _module("mmcv.image", tensor2imgs=None)
  _module("mmcv.runner", get_dist_info=None, CheckpointLoader=None)
  _module("mmseg")
  _module("mmseg.apis")
  _module("mmseg.apis.test", np2tmp=None)
  _module("mmseg.models", EncoderDecoder=EncoderDecoder)
  _module("mmseg.datasets", build_dataloader=None, build_dataset=None, DATASETS=Registry(), CustomDataset=object,
          PascalVOCDataset=object)
  _module("mmseg.datasets.pipelines", Compose=None)
  _module("omegaconf", OmegaConf=_Anything(), read_write=None)
  _module("timm", create_model=None)
  _module("transformers", BertModel=_Anything, AutoTokenizer=_Anything)
  _module("webdataset")
  _module("utils", get_logger=get_logger)  # the OVS `utils` package (only get_logger is used)
  tv = _module("torchvision")
  transforms = _module("torchvision.transforms")
  for attr in ("Compose", "Resize", "CenterCrop", "ToTensor", "Normalize"):
    setattr(transforms, attr, _Anything)
  transforms.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")
  tv.transforms = transforms


def _import_reference(args, torch):
  os.environ["XFORMERS_DISABLED"] = "1"
  _install_stand_ins(torch)
  ovs = args.talk2dino / "src" / "open_vocabulary_segmentation"
  for path in (args.clip, args.dinov2, args.talk2dino, ovs):
    sys.path.insert(0, str(path))
  import clip  # noqa: PLC0415
  import clip.model  # noqa: PLC0415
  from dinov2.layers import MemEffAttention, NestedTensorBlock  # noqa: PLC0415
  from dinov2.models.vision_transformer import DinoVisionTransformer  # noqa: PLC0415
  from models.dinotext.dinotext import DINOText  # noqa: PLC0415
  from models.dinotext.masker import DINOTextMasker  # noqa: PLC0415
  from models.dinotext.pamr import PAMR  # noqa: PLC0415
  from segmentation.evaluation.dinotext_seg import DINOTextSegInference  # noqa: PLC0415
  from src.loss import ContrastiveLoss  # noqa: PLC0415
  from src.model import ProjectionLayer  # noqa: PLC0415
  return types.SimpleNamespace(
      clip=clip, DinoVisionTransformer=DinoVisionTransformer, MemEffAttention=MemEffAttention,
      NestedTensorBlock=NestedTensorBlock, DINOText=DINOText, DINOTextMasker=DINOTextMasker, PAMR=PAMR,
      DINOTextSegInference=DINOTextSegInference, ContrastiveLoss=ContrastiveLoss, ProjectionLayer=ProjectionLayer)


def _build_dinotext(ref, torch, with_bg_clean, dino_cfg=DINO_CFG, clip_cfg=CLIP_CFG, window=WINDOW):
  """A DINOText instance assembled from random parts (its constructor downloads weights).

  dino_cfg: embed_dim, depth, num_heads, num_register_tokens, pos_embed_grid of a DINOv2 with
  registers; clip_cfg: the CLIP text tower; window: the DINOv2 input size (`resize_dim`).
  Returns (model, DINOv2 state, CLIP state, projection state).
  """
  from functools import partial  # noqa: PLC0415
  torch.manual_seed(0)
  dino = ref.DinoVisionTransformer(
      img_size=PATCH * dino_cfg["pos_embed_grid"], patch_size=PATCH, embed_dim=dino_cfg["embed_dim"],
      depth=dino_cfg["depth"], num_heads=dino_cfg["num_heads"], mlp_ratio=4, init_values=1.0, ffn_layer="mlp",
      block_chunks=0, num_register_tokens=dino_cfg["num_register_tokens"], interpolate_antialias=True,
      interpolate_offset=0.0, block_fn=partial(ref.NestedTensorBlock, attn_class=ref.MemEffAttention)).eval()
  dino_state = _randomize(dino, torch, 11)
  clip_model = ref.clip.model.CLIP(
      embed_dim=clip_cfg["embed_dim"], image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
      context_length=clip_cfg["context_length"], vocab_size=clip_cfg["vocab_size"],
      transformer_width=clip_cfg["width"], transformer_heads=clip_cfg["num_heads"],
      transformer_layers=clip_cfg["depth"]).eval()
  clip_state = _randomize(clip_model, torch, 12)
  proj = ref.ProjectionLayer.from_config({"act": "tanh", "hidden_layer": True, "dino_embed_dim": dino_cfg["embed_dim"],
                                          "clip_embed_dim": clip_cfg["embed_dim"]})
  proj_state = _randomize(proj, torch, 13)

  m = ref.DINOText.__new__(ref.DINOText)
  torch.nn.Module.__init__(m)
  m.feats = {}
  m.model_name = "dinov2_vitb14_reg"
  m.model = dino
  mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
  std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)

  def image_transforms(x):  # T.Resize((S, S)) (identity: windows are S x S), /255, T.Normalize
    assert x.shape[-2:] == (window, window)
    return (x / 255.0 - mean) / std

  m.image_transforms = image_transforms
  m.clip_model_name = "ViT-B/16"
  m.clip_model = clip_model
  m.proj = proj
  m.masker = ref.DINOTextMasker(similarity_type="cosine").eval()
  m.pamr = None
  m.avg_self_attn_token = False
  m.disentangled_self_attn_token = True
  m.num_global_tokens = 5
  m.num_attn_heads = dino_cfg["num_heads"]
  m.scale = 0.125
  m.use_avg_text_token = False
  m.with_bg_clean = with_bg_clean
  dino.blocks[-1].attn.qkv.register_forward_hook(m.get_self_attention)
  m.eval()
  return m, dino_state, clip_state, proj_state


def _state_arrays(prefix, state, keep_rows=None):
  out = {}
  for key, value in state.items():
    value = value.numpy()
    if keep_rows is not None and key == "token_embedding.weight":
      out[f"{prefix}token_embedding_rows"] = keep_rows.astype(np.int32)
      value = value[keep_rows]
    out[f"{prefix}{key}"] = value.astype(np.float16)
  return out


def _train_fixture(ref, torch, out):
  m, dino_state, _, proj_state = _build_dinotext(ref, torch, with_bg_clean=False)
  gen = torch.Generator().manual_seed(21)
  images = _fp16_exact(torch.randn(3, 3, WINDOW, WINDOW, generator=gen))
  with torch.no_grad():
    m.avg_self_attn_token, m.disentangled_self_attn_token = True, False
    avg, _ = m.encode_image(images)
    m.avg_self_attn_token, m.disentangled_self_attn_token = False, True
    heads, maps = m.encode_image(images)
  # One sample per caption: image i has captions 2i and 2i+1 (in-batch duplicates, as with COCO).
  caption_image = torch.tensor([0, 0, 1, 1, 2, 2])
  texts = _fp16_exact(torch.randn(6, CLIP_CFG["embed_dim"], generator=gen))
  proj = m.proj
  criterion = ref.ContrastiveLoss(proj, ltype="infonce")
  loss, sims, index = criterion(heads[caption_image], texts, return_similarity_mat=True, return_index=True)
  loss.backward()
  grads = {f"grad/{k}": p.grad.numpy().copy() for k, p in proj.named_parameters()}
  with torch.no_grad():
    val_loss = criterion(avg[caption_image], texts)
  optimizer = torch.optim.Adam(proj.parameters(), lr=1e-4)
  for _ in range(3):
    optimizer.zero_grad()
    criterion(heads[caption_image], texts).backward()
    optimizer.step()
  arrays = {"config": np.array(json.dumps(dict(dino=DINO_CFG, clip_embed_dim=CLIP_CFG["embed_dim"]))),
            "images_nhwc": images.permute(0, 2, 3, 1).numpy().astype(np.float16),
            "caption_image": caption_image.numpy(), "texts": texts.numpy().astype(np.float16),
            "out/avg_self_attn_out": avg.numpy(), "out/disentangled_self_attn": heads.numpy(),
            "out/self_attn_maps": maps.numpy(), "out/similarity": sims.detach().numpy(),
            "out/index": index.numpy(), "out/loss": loss.detach().numpy(), "out/val_loss": val_loss.numpy(),
            **grads, **{f"adam3/{k}": p.detach().numpy() for k, p in proj.named_parameters()}}
  arrays.update(_state_arrays("dino/", dino_state))
  arrays.update(_state_arrays("proj/", proj_state))
  np.savez_compressed(out / "train_tiny.npz", **arrays)
  print(f"wrote train_tiny.npz ({(out / 'train_tiny.npz').stat().st_size} bytes)")


def _recording(obj, name, log, pick=lambda result: result):
  """Wraps obj.name so that every call's (picked) result is appended to log[name]."""
  original = getattr(obj, name)

  def wrapper(*args, **kwargs):
    result = original(*args, **kwargs)
    log.setdefault(name, []).append(pick(result))
    return result
  setattr(obj, name, wrapper)


def _segment_fixture(ref, torch, out):
  arrays = {}
  gen = torch.Generator().manual_seed(31)
  # A blocky image with noise (integer RGB values), already at the test-time resized size.
  blocks = torch.randint(0, 256, (1, 3, 4, 6), generator=gen).float()
  image = torch.nn.functional.interpolate(blocks, size=RESIZED_HW, mode="nearest")
  image = (image + torch.randint(-20, 21, image.shape, generator=gen)).clamp(0, 255).round()
  arrays["image_rgb"] = image[0].permute(1, 2, 0).numpy().astype(np.uint8)
  img_bgr = image[:, [2, 1, 0]]  # mmseg loads BGR; generate_masks flips back to RGB
  img_meta = [{"ori_shape": ORIGINAL_HW + (3,), "img_shape": RESIZED_HW + (3,)}]
  for case, (with_bg, bg_clean) in {"voc": (True, True), "context59": (False, False)}.items():
    m, dino_state, clip_state, proj_state = _build_dinotext(ref, torch, with_bg_clean=bg_clean)
    with torch.no_grad():
      tokens = m.build_dataset_class_tokens("sub_imagenet_template", CLASSNAMES)
      text_emb = m.build_text_embedding(tokens)
      seg = ref.DINOTextSegInference(m, text_emb, CLASSNAMES, with_bg=with_bg,
                                     test_cfg=dict(mode="slide", stride=(STRIDE, STRIDE),
                                                   crop_size=(WINDOW, WINDOW)),
                                     pamr=True, bg_thresh=BG_THRESH)
      log = {}
      _recording(m.masker, "forward_seg", log, pick=lambda r: r[0])
      _recording(m, "similarity_assignment_weighted", log)
      _recording(m, "apply_pamr", log)
      _recording(m, "process_self_attention", log, pick=lambda r: r[1])
      _recording(m.model, "forward_features", log, pick=lambda r: r["x_norm_patchtokens"])
      labels = seg.simple_test(img_bgr, img_meta)
    prefix = f"{case}/"
    arrays[prefix + "text_emb"] = text_emb.numpy()
    arrays[prefix + "patch_tokens"] = torch.cat(log["forward_features"]).numpy()
    arrays[prefix + "self_attn_maps"] = torch.cat(log["process_self_attention"]).numpy()
    arrays[prefix + "masks"] = torch.cat(log["forward_seg"]).numpy()
    if bg_clean:
      arrays[prefix + "cleaned"] = torch.cat(log["similarity_assignment_weighted"]).numpy()
    if case == "voc":
      arrays[prefix + "pamr_window0"] = log["apply_pamr"][0][0].numpy()
    arrays[prefix + "stitched"] = seg.stitched[0].numpy()
    arrays[prefix + "seg_logit"] = seg.seg_logit[0].numpy()
    arrays[prefix + "labels"] = labels[0].numpy().astype(np.uint8)
    if case == "voc":
      used_ids = np.unique(tokens.numpy())
      arrays["tokens"] = tokens.numpy().astype(np.int32)
      arrays.update(_state_arrays("dino/", dino_state))
      arrays.update(_state_arrays("proj/", proj_state))
      arrays.update(_state_arrays("clip/", {k: v for k, v in clip_state.items() if not k.startswith("visual.")
                                            and k != "logit_scale"}, keep_rows=used_ids))
  arrays["config"] = np.array(json.dumps(dict(dino=DINO_CFG, clip=CLIP_CFG, classnames=CLASSNAMES, window=WINDOW,
                                              stride=STRIDE, resized_hw=RESIZED_HW, original_hw=ORIGINAL_HW,
                                              bg_thresh=BG_THRESH)))
  np.savez_compressed(out / "segment_tiny.npz", **arrays)
  print(f"wrote segment_tiny.npz ({(out / 'segment_tiny.npz').stat().st_size} bytes)")


def _pamr_fixture(ref, torch, out):
  gen = torch.Generator().manual_seed(41)
  image = torch.randint(0, 256, (1, 3, 20, 26), generator=gen).float()
  masks = torch.rand(1, 3, 20, 26, generator=gen)
  arrays = {"image_rgb": image[0].permute(1, 2, 0).numpy().astype(np.uint8), "masks": masks[0].numpy()}
  with torch.no_grad():
    arrays["out/pamr"] = ref.PAMR(10, [1, 2, 4, 8, 12, 24])(image, masks)[0].numpy()
    arrays["out/pamr_d12_3"] = ref.PAMR(3, [1, 2])(image, masks)[0].numpy()
  np.savez_compressed(out / "pamr_tiny.npz", **arrays)
  print(f"wrote pamr_tiny.npz ({(out / 'pamr_tiny.npz').stat().st_size} bytes)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--talk2dino", required=True, type=pathlib.Path, help="lorebianchi98/Talk2DINO checkout")
  parser.add_argument("--dinov2", required=True, type=pathlib.Path, help="facebookresearch/dinov2 checkout")
  parser.add_argument("--clip", required=True, type=pathlib.Path, help="openai/CLIP checkout")
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "talk2dino")
  args = parser.parse_args()
  for path, marker in ((args.talk2dino, "src/open_vocabulary_segmentation/models/dinotext/dinotext.py"),
                       (args.dinov2, "dinov2/models/vision_transformer.py"), (args.clip, "clip/model.py")):
    if not (path / marker).is_file():
      parser.error(f"{path} is not a checkout with {marker}")
  args.talk2dino, args.dinov2, args.clip, args.out = (
      p.resolve() for p in (args.talk2dino, args.dinov2, args.clip, args.out))
  import torch  # noqa: PLC0415
  torch.set_num_threads(1)
  args.out.mkdir(parents=True, exist_ok=True)
  cwd = os.getcwd()
  os.chdir(args.talk2dino)  # the reference resolves some paths relative to its root
  try:
    ref = _import_reference(args, torch)
    _train_fixture(ref, torch, args.out)
    _segment_fixture(ref, torch, args.out)
    _pamr_fixture(ref, torch, args.out)
  finally:
    os.chdir(cwd)


if __name__ == "__main__":
  main()
