"""Writes tests/fixtures/ov2seg/*.npz: outputs of the reference OV2Seg head on random weights.

Usage:
  # /tmp/ref_lvvis: a checkout of haochenheheda/LVVIS (tested at cc3cdf4)
  python scripts/make_ov2seg_fixtures.py --lvvis /tmp/ref_lvvis

The reference's own modules run on the CPU with the stand-ins of scripts/ov2seg_reference_standin.py:
`MSDeformAttnPixelDecoder.forward_features` (Mask2Former's pixel decoder; MSDA through the reference's
`ms_deform_attn_core_pytorch`) and `MultiScaleMaskedTransformerDecoder` with the `ZeroShotClassifier`
(CLIP_CLASSIFIER on), called as the reference's `MaskFormerHead.layers` calls them. The backbone does not run:
the head takes fixed random res2..res5 features (`fixture_input`).

Sizes: hidden 256 (the reference's ZeroShotClassifier hard-codes a 256-wide input), 10 queries, 8 heads,
decoder FFN 64, DEC_LAYERS 7 (6 layers, 7 predictions: every level visited twice), 2 encoder layers with FFN 64,
a 96 x 128 canvas (levels 3 x 4, 6 x 8, 12 x 16; mask features 24 x 32), batch 2. The vocabulary has C = 7
random 512-d rows, row 5 all zeros (the reference's `zs_weight` is built from it through CLIP_PATH).
Weights are not stored: every parameter and buffer of the head is `fixture_weight(key, shape, seed)` of
scripts/make_maskdino_fixtures.py; the test rebuilds them from the key list through dinoseg's converter.

Each .npz holds (P = 7 predictions, B = 2, Q = 10, C = 7):
  config, param_keys      JSON: the settings; [key, shape] of the head state dict with the `sem_seg_head.`
                          prefix of a full checkpoint, `zs_weight` excluded (reference state-dict order).
  class_embeddings        (C, 512) the vocabulary; zs_weight (512, C + 1) the buffer the reference built from it.
  pixel/mask_features     (B, 4, 24, 32): mask features probed over channels (`probe`, k = 4);
  pixel/multi_scale/{0,1,2}  (B, 4, h, w) the encoder levels (coarse -> fine), probed the same way.
  logits                  (P, B, Q, C + 1) every prediction (aux_outputs, then the final one);
  objectness              (P, B, Q, 2); masks (P, B, Q, 24, 32); embeddings (B, Q, 256) (`pred_embds`).
  grad/<key>              gradients of `objective` w.r.t. a few parameters (GRAD_KEYS).

model_tiny_timm_r50.npz (the whole model, eval; final prediction only): config, param_keys (backbone.base.* +
sem_seg_head.*), class_embeddings (5, 512), images (B, 96, 128, 3) 0-255 (padding filled with noise), image_hw,
logits (B, Q, C + 1), objectness, masks (B, Q, 24, 32), embeddings. The backbone is `timm_resnet_class`, a
stand-in written from timm 0.5.4's ResNet (timm is not installed), with positive BN variances (`model_weight`).

`objective(outputs)` = sum over [mask features, every level, logits, objectness, masks, embeddings] (full, before
probing) of mean(x * cos(0.37 i)), i the flat index of x in the reference's layout.
"""
import argparse
import importlib.util
import json
import os
import pathlib
import tempfile

import numpy as np


def _sibling(name: str):
  """scripts/<name>.py as a module (also when this file is imported by the tests)."""
  spec = importlib.util.spec_from_file_location(name, pathlib.Path(__file__).resolve().with_name(f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


mdf = _sibling("make_maskdino_fixtures")  # fixture_weight, fixture_input, probe, probe_weight

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "ov2seg"

FIXTURES = {
    "head_6layers": dict(channels=dict(res2=16, res3=24, res4=32, res5=40), canvas=(96, 128), batch=2,
                         num_classes=7, zero_class=5, seed=31),
}
# The whole model from 0-255 images: a timm-layout ResNet (TimmResNet below, tiny widths: stem 16, bottlenecks
# 8 / 16 / 32 / 64, outputs 32 / 64 / 128 / 256, blocks (1, 2, 1, 1)) -> the reference head; image 1 is 80 x 100 on
# the 96 x 128 canvas (normalised, then zero-padded, as detectron2's ImageList does).
MODEL_FIXTURES = {
    "model_tiny_timm_r50": dict(stem_width=16, planes=(8, 16, 32, 64), blocks=(1, 2, 1, 1), canvas=(96, 128),
                                image_hw=[(96, 128), (80, 100)], num_classes=5, zero_class=2, seed=32),
}
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
COMMON = dict(hidden_dim=256, num_queries=10, nheads=8, dim_feedforward=64, dec_layers=6, enc_layers=2,
              enc_dim_feedforward=64, embed_dim=512, temperature=50.0)
STRIDES = dict(res2=4, res3=8, res4=16, res5=32)
GRAD_KEYS = [
    "sem_seg_head.predictor.query_feat.weight",
    "sem_seg_head.predictor.query_embed.weight",
    "sem_seg_head.predictor.level_embed.weight",
    "sem_seg_head.predictor.class_embed.linear.0.weight",
    "sem_seg_head.predictor.transformer_cross_attention_layers.3.multihead_attn.in_proj_weight",
    "sem_seg_head.predictor.transformer_self_attention_layers.1.self_attn.out_proj.bias",
    "sem_seg_head.predictor.transformer_ffn_layers.5.linear1.weight",
    "sem_seg_head.predictor.object_embed.layers.1.bias",
    "sem_seg_head.predictor.mask_embed.layers.2.weight",
    "sem_seg_head.pixel_decoder.transformer.level_embed",
    "sem_seg_head.pixel_decoder.input_proj.0.0.weight",
    "sem_seg_head.pixel_decoder.adapter_1.weight",
]


def cos_weights(shape) -> np.ndarray:
  """cos(0.37 i) over the flat index i, in `shape` (the weights of `objective`)."""
  return np.cos(0.37 * np.arange(int(np.prod(shape)), dtype=np.float64)).reshape(shape).astype(np.float32)


def feature_shapes(spec) -> dict:
  """{name: (B, C, H/stride, W/stride)} of the backbone features (torch layout)."""
  h, w = spec["canvas"]
  return {n: (spec["batch"], c, h // STRIDES[n], w // STRIDES[n]) for n, c in spec["channels"].items()}


def class_embeddings(spec) -> np.ndarray:
  emb = mdf.fixture_input("class_embeddings", (spec["num_classes"], spec["embed_dim"]), spec["seed"])
  emb[spec["zero_class"]] = 0.0
  return emb


def build_head(standin, spec, torch, clip_path):
  ref = standin.import_reference()
  shape_spec = standin.md.ShapeSpec
  pixel_decoder = ref.pixel_decoder.MSDeformAttnPixelDecoder(
      {n: shape_spec(channels=c, stride=STRIDES[n]) for n, c in spec["channels"].items()},
      transformer_dropout=0.0, transformer_nheads=spec["nheads"],
      transformer_dim_feedforward=spec["enc_dim_feedforward"],
      transformer_enc_layers=spec["enc_layers"], conv_dim=spec["hidden_dim"], mask_dim=spec["hidden_dim"], norm="GN",
      transformer_in_features=["res3", "res4", "res5"], common_stride=4)
  predictor = ref.decoder.MultiScaleMaskedTransformerDecoder(
      spec["hidden_dim"], True, num_classes=spec["num_classes"], hidden_dim=spec["hidden_dim"],
      # The constructor takes the layer count (from_config passes DEC_LAYERS - 1 = 6).
      num_queries=spec["num_queries"], nheads=spec["nheads"], dim_feedforward=spec["dim_feedforward"],
      dec_layers=spec["dec_layers"], pre_norm=False, mask_dim=spec["hidden_dim"], enforce_input_project=False,
      clip_classifier=True, clip_path=clip_path)
  head = torch.nn.Module()
  head.pixel_decoder, head.predictor = pixel_decoder, predictor
  state = head.state_dict()
  new, keys = {}, []
  for k, v in state.items():
    full = "sem_seg_head." + k
    if k.endswith("class_embed.zs_weight"):
      new[k] = v  # built by the reference from the vocabulary file
      continue
    new[k] = torch.from_numpy(mdf.fixture_weight(full, tuple(v.shape), spec["seed"]))
    keys.append([full, list(v.shape)])
  head.load_state_dict(new, strict=True)
  return head, keys


def run_fixture(spec, standin, torch, workdir):
  emb = class_embeddings(spec)
  clip_path = os.path.join(workdir, "vocabulary.npy")
  np.save(clip_path, emb)
  head, keys = build_head(standin, spec, torch, clip_path)
  feats = {n: torch.from_numpy(mdf.fixture_input(n, s, spec["seed"])) for n, s in feature_shapes(spec).items()}
  mask_features, _, multi_scale = head.pixel_decoder.forward_features(feats)
  out = head.predictor(multi_scale, mask_features, None)
  preds = out["aux_outputs"] + [out]
  logits = torch.stack([p["pred_logits"] for p in preds])
  objectness = torch.stack([p["pred_object_logits"] for p in preds])
  masks = torch.stack([p["pred_masks"] for p in preds])
  embeddings = out["pred_embds"]
  arrays = [mask_features, *multi_scale, logits, objectness, masks, embeddings]
  sum((x * torch.from_numpy(cos_weights(tuple(x.shape)))).mean() for x in arrays).backward()
  params = {"sem_seg_head." + k: v for k, v in head.named_parameters()}
  seed = spec["seed"]
  data = {
      "config": json.dumps(spec), "param_keys": json.dumps(keys), "class_embeddings": emb,
      "zs_weight": head.predictor.class_embed.zs_weight.numpy().copy(),
      "pixel/mask_features": mdf.probe("mask_features", mask_features.detach().numpy(), seed),
      **{f"pixel/multi_scale/{i}": mdf.probe(f"multi_scale/{i}", x.detach().numpy(), seed)
         for i, x in enumerate(multi_scale)},
      "logits": logits.detach().numpy(), "objectness": objectness.detach().numpy(),
      "masks": masks.detach().numpy(), "embeddings": embeddings.detach().numpy(),
      **{f"grad/{k}": params[k].grad.numpy().copy() for k in GRAD_KEYS},
  }
  return data


def timm_resnet_class(torch):
  """A stand-in for timm 0.5.4's `ResNet` with `Bottleneck` blocks as the reference's `CustomResNet` uses it
  (timm is not installed here): written from timm's structure and names, default settings (no deep stem, no
  avg-down, no attention / drop layers), BatchNorm replaced by detectron2's FrozenBatchNorm2d (the reference
  converts it), outputs layer1..layer4 (the reference's `layer2..layer5` = res2..res5)."""
  nn, F = torch.nn, torch.nn.functional

  class FrozenBN(nn.Module):
    def __init__(self, c):
      super().__init__()
      for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        self.register_buffer(name, torch.full((c,), fill))

    def forward(self, x):  # detectron2 FrozenBatchNorm2d, eps 1e-5
      scale = self.weight * (self.running_var + 1e-5).rsqrt()
      shift = self.bias - self.running_mean * scale
      return x * scale[None, :, None, None] + shift[None, :, None, None]

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride, downsample):
      super().__init__()
      width, out = planes, planes * self.expansion
      self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
      self.bn1 = FrozenBN(width)
      self.act1 = nn.ReLU()
      self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
      self.bn2 = FrozenBN(width)
      self.act2 = nn.ReLU()
      self.conv3 = nn.Conv2d(width, out, 1, bias=False)
      self.bn3 = FrozenBN(out)
      self.act3 = nn.ReLU()
      self.downsample = downsample

    def forward(self, x):
      shortcut = x
      x = self.act1(self.bn1(self.conv1(x)))
      x = self.act2(self.bn2(self.conv2(x)))
      x = self.bn3(self.conv3(x))
      if self.downsample is not None:
        shortcut = self.downsample(shortcut)
      return self.act3(x + shortcut)

  class TimmResNet(nn.Module):
    def __init__(self, stem_width, planes, blocks):
      super().__init__()
      self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
      self.bn1 = FrozenBN(stem_width)
      self.act1 = nn.ReLU()
      self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
      inplanes = stem_width
      for i, (p, n) in enumerate(zip(planes, blocks)):
        stride = 1 if i == 0 else 2
        layers = []
        for b in range(n):
          down = None
          if b == 0 and (stride != 1 or inplanes != p * 4):
            down = nn.Sequential(nn.Conv2d(inplanes, p * 4, 1, stride=stride, bias=False), FrozenBN(p * 4))
          layers.append(Bottleneck(inplanes, p, stride if b == 0 else 1, down))
          inplanes = p * 4
        setattr(self, f"layer{i + 1}", nn.Sequential(*layers))

    def forward(self, x):
      x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
      out = {}
      for i, name in enumerate(("res2", "res3", "res4", "res5")):
        x = getattr(self, f"layer{i + 1}")(x)
        out[name] = x
      return out

  return TimmResNet


def model_weight(key: str, shape, seed: int) -> np.ndarray:
  """fixture_weight, with positive BN variances (0.5 + |value|)."""
  w = mdf.fixture_weight(key, shape, seed)
  return (0.5 + np.abs(w)).astype(np.float32) if key.endswith("running_var") else w


def model_images(spec) -> tuple[np.ndarray, np.ndarray]:
  """(B, H, W, 3) 0-255 images on the canvas (padding filled with noise: the model must ignore it), (B, 2) sizes."""
  h, w = spec["canvas"]
  x = np.clip(mdf.fixture_input("images", (len(spec["image_hw"]), h, w, 3), spec["seed"]) * 50 + 120, 0, 255)
  return x.astype(np.float32), np.array(spec["image_hw"], np.int32)


def run_model_fixture(spec, standin, torch, workdir):
  emb = class_embeddings(spec)
  clip_path = os.path.join(workdir, "vocabulary_model.npy")
  np.save(clip_path, emb)
  backbone = timm_resnet_class(torch)(spec["stem_width"], spec["planes"], spec["blocks"])
  channels = dict(zip(("res2", "res3", "res4", "res5"), (p * 4 for p in spec["planes"])))
  head, head_keys = build_head(standin, dict(spec, channels=channels), torch, clip_path)
  for k, v in backbone.state_dict().items():
    v.copy_(torch.from_numpy(model_weight("backbone.base." + k, tuple(v.shape), spec["seed"])))
  keys = [["backbone.base." + k, list(v.shape)] for k, v in backbone.state_dict().items()] + head_keys
  images, image_hw = model_images(spec)
  mean, std = torch.tensor(PIXEL_MEAN)[:, None, None], torch.tensor(PIXEL_STD)[:, None, None]
  canvas = torch.zeros((len(images), 3) + tuple(spec["canvas"]))
  for i, (ih, iw) in enumerate(image_hw):  # normalise each image, then zero-pad (ImageList.from_tensors)
    canvas[i, :, :ih, :iw] = (torch.from_numpy(images[i, :ih, :iw]).permute(2, 0, 1) - mean) / std
  with torch.no_grad():
    mask_features, _, multi_scale = head.pixel_decoder.forward_features(backbone(canvas))
    out = head.predictor(multi_scale, mask_features, None)
  return {"config": json.dumps(spec), "param_keys": json.dumps(keys), "class_embeddings": emb,
          "images": images, "image_hw": image_hw, "logits": out["pred_logits"].numpy(),
          "objectness": out["pred_object_logits"].numpy(), "masks": out["pred_masks"].numpy(),
          "embeddings": out["pred_embds"].numpy()}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lvvis", required=True, help="checkout of haochenheheda/LVVIS (cc3cdf4)")
  args = parser.parse_args()
  import sys  # noqa: PLC0415

  import torch  # noqa: PLC0415
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  import ov2seg_reference_standin as standin  # noqa: PLC0415
  standin.install(args.lvvis)
  torch.manual_seed(0)
  OUT.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as workdir:
    for name, spec in FIXTURES.items():
      data = run_fixture(dict(COMMON, **spec), standin, torch, workdir)
      path = OUT / f"{name}.npz"
      np.savez_compressed(path, **data)
      print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    for name, spec in MODEL_FIXTURES.items():
      data = run_model_fixture(dict(COMMON, **spec), standin, torch, workdir)
      path = OUT / f"{name}.npz"
      np.savez_compressed(path, **data)
      print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
  main()
