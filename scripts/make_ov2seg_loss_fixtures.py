"""Writes tests/fixtures/ov2seg/loss_federated.npz: the matcher indices and every loss term of the reference OV2Seg
criterion (haochenheheda/LVVIS cc3cdf4 `ov2seg/modeling/criterion.py`, `matcher.py`, `util.py`), and the gradients
of their weighted sum w.r.t. the predictions, on fixed random predictions and targets.

Usage:
  # /tmp/ref_lvvis: a checkout of haochenheheda/LVVIS (tested at cc3cdf4)
  python scripts/make_ov2seg_loss_fixtures.py --lvvis /tmp/ref_lvvis

The reference's own `SetCriterion` and `HungarianMatcher` run on the CPU, imported through
scripts/ov2seg_reference_standin.py (`install_criterion`). The model does not run: the criterion gets random
outputs in the decoder's layout (`pred_logits` (B, Q, C + 1), `pred_object_logits` (B, Q, 2), `pred_masks`,
`aux_outputs`), the weights of the reference's `weight_dict` (class 2, object 2, mask 5, dice 5) are applied here
(its meta-architecture does that). The criterion reads its federated weights from
`datasets/metadata/lvis_v1_train_cat_info.json` relative to the working directory: the script writes a small
one (C categories, some rare) into a temporary directory and runs there.

Random draws are recorded and stored so that the port can be fed them: the matcher's uniform points (one
torch.rand per image and call), the mask loss's candidate / random points (Mask DINO's stand-in RECORDER),
re-indexed from the reference's matched-pair order to dinoseg's target-slot order, and the federated categories
drawn by torch.multinomial (one call per prediction).

File (P = 7 predictions, last = final; B = 3 images, the last without targets; Q = 10 queries; C = 64 classes,
16 of them rare; T = 4 target slots):
  logits (P, B, Q, C + 1), objectness (P, B, Q, 2), masks (P, B, Q, h, w), gt/{labels, masks, valid} (B, T, ...),
  class_weights (C,) (image_count ** 0.5, rare 0), sampled (P, C) bool (the drawn categories), indices (P, B, T)
  (matched query per target slot, -1 for padded slots), draws/pred{p}/{match, cand, rand}, losses/<name>,
  grad/{logits, objectness, masks}.
"""
import argparse
import contextlib
import json
import os
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "ov2seg"
NUM_POINTS = 64
P, B, Q, C, T = 7, 3, 10, 64, 4
H, W, h, w = 64, 96, 16, 24
WEIGHTS = {"loss_ce": 2.0, "loss_object_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def weight_of(name: str) -> float:
  base = name if name in WEIGHTS else name.rsplit("_", 1)[0]
  return WEIGHTS[base]


@contextlib.contextmanager
def recording(torch, name, log):
  """Replaces torch.<name> by a wrapper that appends every result to `log`."""
  fn = getattr(torch, name)

  def rec(*a, **k):
    r = fn(*a, **k)
    log.append(r.clone())
    return r
  setattr(torch, name, rec)
  try:
    yield
  finally:
    setattr(torch, name, fn)


def make(lvvis: str) -> dict:
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  import torch  # noqa: PLC0415

  import maskdino_reference_standin as md_standin  # noqa: PLC0415
  import ov2seg_reference_standin as standin  # noqa: PLC0415
  standin.install_criterion(lvvis)
  ref = standin.import_criterion()
  torch.manual_seed(0)
  rng = np.random.default_rng(0)

  freq = np.asarray(["f", "c", "c", "r"] * (C // 4))  # 16 rare
  image_count = rng.integers(1, 400, C)
  cats = [{"id": i + 1, "name": f"c{i}", "frequency": str(freq[i]), "image_count": int(image_count[i])}
          for i in range(C)]
  counts = [3, 2, 0]
  labels = [np.asarray([5, 3, 40]), np.asarray([17, 5]), np.zeros(0, np.int64)]  # 3 and 43 rare; 3 present
  from make_dinov_loss_fixtures import blob_masks  # noqa: PLC0415  (random ellipses, shared with DINOv's)
  gt_masks = [blob_masks(rng, n, H, W) for n in counts]
  arrays = {
      "logits": rng.normal(0, 2.0, (P, B, Q, C + 1)).astype(np.float32),
      "objectness": rng.normal(0, 1.5, (P, B, Q, 2)).astype(np.float32),
      "masks": rng.normal(0, 3.0, (P, B, Q, h, w)).astype(np.float32),
  }
  arrays["logits"][..., -1] = 0.0  # the background column of the zero-shot classifier
  tens = {k: torch.tensor(v, requires_grad=True) for k, v in arrays.items()}

  def out_at(i):
    return {"pred_logits": tens["logits"][i], "pred_object_logits": tens["objectness"][i],
            "pred_masks": tens["masks"][i]}
  outputs = dict(out_at(P - 1), aux_outputs=[out_at(i) for i in range(P - 1)])
  targets = [{"labels": torch.as_tensor(labels[i], dtype=torch.int64), "masks": torch.as_tensor(gt_masks[i])}
             for i in range(B)]

  matcher = ref.matcher.HungarianMatcher(cost_object=2.0, cost_class=2.0, cost_mask=5.0, cost_dice=5.0,
                                         num_points=NUM_POINTS)
  match_calls, multinomial, mask_calls = [], [], []
  forward = matcher.memory_efficient_forward

  def rec_match(outputs_, targets_):
    rand = []
    with recording(torch, "rand", rand):
      indices = forward(outputs_, targets_)
    match_calls.append((outputs_, rand, indices))
    return indices
  matcher.memory_efficient_forward = rec_match
  with tempfile.TemporaryDirectory() as tmp:
    os.makedirs(os.path.join(tmp, "datasets", "metadata"))
    with open(os.path.join(tmp, "datasets", "metadata", "lvis_v1_train_cat_info.json"), "w") as f:
      json.dump(cats, f)
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
      crit = ref.criterion.SetCriterion(C, matcher=matcher, weight_dict=dict(WEIGHTS), eos_coef=0.1,
                                        losses=["labels", "masks"], num_points=NUM_POINTS, oversample_ratio=3.0,
                                        importance_sample_ratio=0.75)
    finally:
      os.chdir(cwd)
  loss_masks = crit.loss_masks

  def rec_loss_masks(outputs_, targets_, indices, num_masks):
    res = loss_masks(outputs_, targets_, indices, num_masks)
    mask_calls.append((outputs_, indices, md_standin.RECORDER.point_draws[-1]))
    return res
  crit.loss_masks = rec_loss_masks
  md_standin.RECORDER.enabled = True
  md_standin.RECORDER.reset()
  with recording(torch, "multinomial", multinomial):
    losses = crit(outputs, targets)
  md_standin.RECORDER.enabled = False
  total = sum(v * weight_of(n) for n, v in losses.items())
  total.backward()

  def pred_index(o):
    for i in range(P):
      if o["pred_logits"] is (outputs if i == P - 1 else outputs["aux_outputs"][i])["pred_logits"]:
        return i
    raise AssertionError("unknown output")

  out = dict(arrays)
  g_labels, g_masks, g_valid = (np.zeros((B, T), np.int32), np.zeros((B, T, H, W), np.uint8), np.zeros((B, T), bool))
  for i in range(B):
    n = counts[i]
    g_labels[i, :n], g_masks[i, :n], g_valid[i, :n] = labels[i], gt_masks[i], True
  out.update({"gt/labels": g_labels, "gt/masks": g_masks, "gt/valid": g_valid})
  weights = crit.freq_weight.numpy().astype(np.float32)
  out["class_weights"] = weights
  indices_out = np.full((P, B, T), -1, np.int32)
  for outputs_, rand, indices in match_calls:  # the final prediction first, then aux 0, 1, ...
    k = pred_index(outputs_)
    out[f"draws/pred{k}/match"] = np.concatenate([r.numpy() for r in rand], 0)
    for i, (src, tgt) in enumerate(indices):
      indices_out[k, i, tgt.numpy()] = src.numpy()
  out["indices"] = indices_out
  # multinomial: one call per loss_labels call, in the same order as the matcher calls
  sampled = np.zeros((P, C), bool)
  assert len(multinomial) == P, f"expected {P} federated draws, got {len(multinomial)}"
  for (outputs_, _, _), drawn in zip(match_calls, multinomial):
    idx = drawn.numpy()
    assert not np.any(idx == C), "the background was drawn"
    sampled[pred_index(outputs_), idx] = True
  out["sampled"] = sampled
  s, r = int(NUM_POINTS * 3.0), NUM_POINTS - int(0.75 * NUM_POINTS)
  for outputs_, indices, (cand, rnd) in mask_calls:
    k = pred_index(outputs_)
    c_t = rng.uniform(size=(B, T, s, 2)).astype(np.float32)
    r_t = rng.uniform(size=(B, T, r, 2)).astype(np.float32)
    row = 0
    for i, (src, tgt) in enumerate(indices):
      for tj in tgt.tolist():
        c_t[i, tj], r_t[i, tj] = cand[row].numpy(), rnd[row].numpy()
        row += 1
    out[f"draws/pred{k}/cand"], out[f"draws/pred{k}/rand"] = c_t, r_t
  for n, v in losses.items():
    out[f"losses/{n}"] = np.float32(float(v.detach()) * weight_of(n))
  for name, tensor in tens.items():
    out[f"grad/{name}"] = tensor.grad.numpy()
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lvvis", required=True, help="checkout of haochenheheda/LVVIS (cc3cdf4)")
  parser.add_argument("--out", default=str(OUT))
  args = parser.parse_args()
  out = make(args.lvvis)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "loss_federated.npz")
  np.savez_compressed(path, **out)
  print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB, {sum(k.startswith('losses/') for k in out)} losses)")


if __name__ == "__main__":
  main()
