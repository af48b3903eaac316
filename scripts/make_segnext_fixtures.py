"""Regenerates tests/fixtures/segnext/ by running the reference uncbiag/SegNext code (CPU, tiny sizes).

Usage (the reference is never copied into this repository):
  git clone https://github.com/uncbiag/SegNext /tmp/segnext_ref   # commit 4c45ce8
  pip install opencv-python-headless mmcv-lite==2.2.0 mmengine      # in a scratch environment
  python scripts/make_segnext_fixtures.py /tmp/segnext_ref [--out tests/fixtures/segnext]

Needs torch (CPU), OpenCV (the reference clicker's cv2.distanceTransform) and mmcv's
`ConvModule` (mmcv-lite). The reference predictor imports torchvision only for
`transforms.ToTensor` and `isegm.utils.log` imports tensorboard's SummaryWriter; when either
cannot be imported a minimal stand-in is installed (neither affects the numbers).

Writes:
- model.npz: a tiny SegNext (448 px, width 64, depth 4, f = 2 -> 2x2 windows, sax2) on the
  weights `dinoseg.models.segnext.convert.random_reference_state_dict(arch, seed=0)`:
  an image of 97x131, two prompt sets (points as the reference's `get_points_nd` builds them,
  previous masks), the logits at the original size (reference `predict` path); and a training
  step on a 448x448 image (eval mode, no dropout): normalized focal loss and the gradients of
  a few parameters.
- loss.npz: NormalizedFocalLossSigmoid(alpha=0.5, gamma=2) on random logits with an ignore region:
  per-sample losses and the gradient w.r.t. the logits.
- clicks.npz: the reference `Clicker` on 48 masks x 5 rounds (bit-packed ground truths, ignore
  maps and predictions) and the clicks it made (y, x, is_positive).
"""
import argparse
import pathlib
import sys
import types

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dinoseg.models.segnext.convert import SegNextArch, random_reference_state_dict  # noqa: E402

TINY = SegNextArch(image_size=448, patch_size=16, embed_dim=64, depth=4, mlp_ratio=4.0, fusion_depth=2,
                   neck_dims=(16, 32, 48, 64), head_channels=32)
TINY_HEADS = 4
TINY_GLOBAL_FREQ = 2
GRAD_KEYS = ("visual_prompts_encoder.proj.bias", "fusion_blocks.0.attn.qkv.bias", "fusion_blocks.1.norm2.weight",
             "backbone.blocks.0.norm1.weight", "backbone.blocks.3.mlp.fc2.bias", "neck.down_4.4.weight",
             "neck.down_32.2.bias", "head.convs.2.conv.bias", "head.seg_conv.weight")


def _install_stand_ins():
  try:
    import torchvision.transforms  # noqa: F401,PLC0415
  except Exception:  # the PyPI wheel fails against CPU-only torch: provide ToTensor only
    import torch  # noqa: PLC0415

    class ToTensor:
      def __call__(self, pic):
        arr = np.asarray(pic)
        t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return t.float().div(255) if arr.dtype == np.uint8 else t

    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.ToTensor = ToTensor
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.transforms"] = tv.transforms


def _install_tensorboard_stand_in():
  try:
    import torch.utils.tensorboard  # noqa: F401,PLC0415
  except Exception:  # isegm.utils.log imports SummaryWriter at import time; nothing here logs
    tb = types.ModuleType("torch.utils.tensorboard")
    tb.SummaryWriter = type("SummaryWriter", (), {"__init__": lambda self, *a, **k: None})
    sys.modules["torch.utils.tensorboard"] = tb


def build_reference_model(reference: pathlib.Path, a: SegNextArch = TINY, num_heads: int = TINY_HEADS,
                          global_atten_freq: int = TINY_GLOBAL_FREQ):
  """The reference `PlainVitModel` for an architecture (imports isegm from the checkout)."""
  if str(reference / "segnext") not in sys.path:
    sys.path.insert(0, str(reference / "segnext"))
  _install_stand_ins()
  _install_tensorboard_stand_in()
  from isegm.model.is_plainvit_model import PlainVitModel  # noqa: PLC0415
  return PlainVitModel(
      backbone_params=dict(img_size=(a.image_size, a.image_size), patch_size=(a.patch_size, a.patch_size),
                           in_chans=3, embed_dim=a.embed_dim, depth=a.depth, global_atten_freq=global_atten_freq,
                           num_heads=num_heads, mlp_ratio=a.mlp_ratio, qkv_bias=True),
      neck_params=dict(in_dim=a.embed_dim, out_dims=list(a.neck_dims)),
      head_params=dict(in_channels=list(a.neck_dims), in_select_index=[0, 1, 2, 3], dropout_ratio=0.1,
                       num_classes=1, out_channels=a.head_channels),
      fusion_params=dict(type="self_attention", depth=a.fusion_depth,
                         params=dict(dim=a.embed_dim, num_heads=num_heads, mlp_ratio=a.mlp_ratio, qkv_bias=True)),
      use_disks=True, norm_radius=5)


def make_model_fixture(reference: pathlib.Path) -> dict:
  import torch  # noqa: PLC0415
  torch.manual_seed(0)
  model = build_reference_model(reference)
  state = random_reference_state_dict(TINY, seed=0)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  model.eval()
  from isegm.inference.clicker import Click  # noqa: PLC0415
  from isegm.inference.predictor import BasePredictor  # noqa: PLC0415
  from isegm.model.losses import NormalizedFocalLossSigmoid  # noqa: PLC0415

  rng = np.random.default_rng(1)
  h, w = 97, 131
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  predictor = BasePredictor(model)
  clicks = [
      [Click(True, (40, 60))],
      [Click(True, (40, 60)), Click(False, (10, 120)), Click(True, (96, 0)), Click(False, (0, 130)),
       Click(True, (48, 65)), Click(True, (3, 3))],
  ]
  for cl in clicks:
    for i, c in enumerate(cl):
      c.indx = i
  prev = np.stack([np.zeros((h, w), np.float16), rng.random((h, w)).astype(np.float16)])
  with torch.no_grad():
    predictor.set_image(image)
    points = predictor.get_points_nd(clicks)
    points_saved = points.numpy().astype(np.float32)
    prompts = {"points": points.clone(), "prev_mask": torch.from_numpy(prev.astype(np.float32))[:, None]}
    prompt_feats = model.get_prompt_feats(predictor.orig_img_shape, prompts)
    feats = predictor.image_feats.expand(2, -1, -1, -1)
    logits = model(predictor.orig_img_shape, feats, prompt_feats)["instances"][:, 0].numpy()

  # A training step (square input, no stretch, float points as the data loader yields them).
  s = TINY.image_size
  # Blocky (compressible) uint8 image on the reference's 0-1 scale, and a blocky float16 previous mask.
  block = np.ones((16, 16, 1), np.uint8)
  train_u8 = np.kron(rng.integers(0, 256, (s // 16, s // 16, 3), dtype=np.uint8), block)
  train_image = torch.from_numpy(train_u8.transpose(2, 0, 1)[None].astype(np.float32) / 255)
  yy, xx = np.mgrid[:s, :s]
  gt = (((yy - 200) / 120.0) ** 2 + ((xx - 250) / 90.0) ** 2 < 1).astype(np.float32)
  gt[:20, :20] = -1  # an ignore region
  train_points = np.full((1, 6, 3), -1, np.float32)
  train_points[0, 0] = (200, 250, 0)
  train_points[0, 1] = (150, 260, 100)
  train_points[0, 3] = (50, 400, 100)
  train_prev = np.kron(rng.random((s // 16, s // 16)), np.ones((16, 16)))[None, None].astype(np.float16)
  for p in model.parameters():
    p.requires_grad_(True)
  model.zero_grad()
  feats = model.get_image_feats(train_image)
  tprompts = {"points": torch.from_numpy(train_points.copy()),
              "prev_mask": torch.from_numpy(train_prev.astype(np.float32))}
  out = model(train_image.shape, feats, model.get_prompt_feats(train_image.shape, tprompts))["instances"]
  loss = torch.mean(NormalizedFocalLossSigmoid(alpha=0.5, gamma=2)(out, torch.from_numpy(gt)[None, None]))
  loss.backward()
  named = dict(model.named_parameters())
  grads = {f"grad/{k}": named[k].grad.numpy().copy() for k in GRAD_KEYS}
  return dict(image=image, points=points_saved, prev_mask=prev, logits=logits.astype(np.float32),
              train_image=train_u8,
              train_points=train_points, train_prev_mask=train_prev[0, 0], train_gt=gt.astype(np.int8),
              train_loss=np.float32(loss.item()), **grads)


def make_loss_fixture(reference: pathlib.Path) -> dict:
  import torch  # noqa: PLC0415
  from isegm.model.losses import NormalizedFocalLossSigmoid  # noqa: PLC0415
  rng = np.random.default_rng(2)
  logits = (3 * rng.standard_normal((3, 1, 24, 24))).astype(np.float32)
  labels = (rng.random((3, 1, 24, 24)) > 0.6).astype(np.float32)
  labels[1, :, :5] = -1
  t = torch.from_numpy(logits).requires_grad_(True)
  per_sample = NormalizedFocalLossSigmoid(alpha=0.5, gamma=2)(t, torch.from_numpy(labels))
  per_sample.mean().backward()
  return dict(logits=logits[:, 0], labels=labels[:, 0], per_sample=per_sample.detach().numpy(),
              grad=t.grad.numpy()[:, 0])


def _random_masks(rng, n, h, w):
  """Ground truths of several kinds (rectangles have many exact distance ties)."""
  yy, xx = np.mgrid[:h, :w]
  masks = []
  for i in range(n):
    kind = i % 4
    if kind == 0:  # rectangle
      y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
      m = (yy >= y0) & (yy < y0 + rng.integers(4, h // 2)) & (xx >= x0) & (xx < x0 + rng.integers(4, w // 2))
    elif kind == 1:  # ellipse
      cy, cx, ry, rx = rng.uniform(10, h - 10), rng.uniform(10, w - 10), rng.uniform(4, 20), rng.uniform(4, 25)
      m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    elif kind == 2:  # smooth random blob
      noise = rng.standard_normal((h // 8 + 1, w // 8 + 1))
      up = np.kron(noise, np.ones((8, 8)))[:h, :w]
      m = up > 0.3
    else:  # touching the border
      m = (yy < rng.integers(5, h)) & (xx > rng.integers(0, w - 5))
    masks.append(m)
  return np.stack(masks)


def make_click_fixture(reference: pathlib.Path) -> dict:
  from isegm.inference.clicker import Clicker  # noqa: PLC0415
  rng = np.random.default_rng(3)
  n, rounds, h, w = 48, 5, 48, 64
  gts = _random_masks(rng, n, h, w)
  ignore = np.zeros_like(gts)
  ignore[1::6, :4, :] = True  # a few samples with an ignore band
  preds = np.zeros((n, rounds, h, w), bool)
  clicks = np.zeros((n, rounds, 3), np.int32)
  for i in range(n):
    gt = np.where(ignore[i], -1, gts[i].astype(np.int32))
    clicker = Clicker(gt_mask=gt)
    for r in range(rounds):
      if r > 0:  # a prediction that is the ground truth with random blobs flipped
        flips = _random_masks(rng, 1, h, w)[0] & (rng.random((h, w)) < 0.9)
        preds[i, r] = np.where(rng.random() < 0.5, gts[i] ^ flips, gts[i] & ~flips)
      clicker.make_next_click(preds[i, r])
      c = clicker.get_clicks()[-1]
      clicks[i, r] = (c.coords[0], c.coords[1], int(c.is_positive))
  return dict(gt=np.packbits(gts, axis=-1), ignore=np.packbits(ignore, axis=-1), pred=np.packbits(preds, axis=-1),
              clicks=clicks, shape=np.array([h, w], np.int32))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("reference", type=pathlib.Path, help="uncbiag/SegNext checkout (the folder holding segnext/)")
  parser.add_argument("--out", type=pathlib.Path, default=ROOT / "tests" / "fixtures" / "segnext")
  args = parser.parse_args()
  if not (args.reference / "segnext" / "isegm").is_dir():
    parser.error(f"{args.reference} does not look like an uncbiag/SegNext checkout (no segnext/isegm)")
  args.out.mkdir(parents=True, exist_ok=True)
  for name, fn in (("model", make_model_fixture), ("loss", make_loss_fixture), ("clicks", make_click_fixture)):
    data = fn(args.reference)
    np.savez_compressed(args.out / f"{name}.npz", **data)
    print(f"wrote {args.out / (name + '.npz')} ({(args.out / (name + '.npz')).stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
  main()
