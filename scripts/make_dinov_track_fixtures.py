"""Writes tests/fixtures/dinov/loss_track_{softmax,sigmoid}.npz: every loss term of the reference's one-to-one
referring criterion (`SetCriterionReferOne`, `dinov/modules/criterion_visual_refer_one2one.py`, the criterion of
COCO fed to the referring task, `COCO_TRACK`) and the gradients of their weighted sum w.r.t. the outputs, on fixed
random outputs and targets.

Usage:
  # /tmp/ref_dinov: a checkout of UX-Decoder/DINOv (tested at 53bf20d)
  python scripts/make_dinov_track_fixtures.py --dinov /tmp/ref_dinov

As scripts/make_dinov_loss_fixtures.py (whose helpers this reuses): the reference criterion runs on the CPU through
scripts/dinov_reference_standin.py (`install_criteria`; its `.cuda()` calls are made no-ops here), on random
outputs in the decoder's layout; `weight_dict`'s weights are applied here; the random draws (the mask losses'
candidate / random points per (click, token) pair, the content matcher's uniform points) are recorded and stored
under dinoseg's names (`draws/track{k}/{cand,rand,content}`).

Files (P = 3 predictions, batch 1 as the reference, C = 4 clicks x T = 6 tokens, 5 instances, K = 3 content
prompts + 1 invalid slot): logits (P, 1, C*T, K+1) (pred_match_score transposed), boxes (P, 1, C*T, 4), masks
(P, 1, C*T, h, w), iou (P, 1, C, T), gt/{boxes, masks, valid} (1, 5, ...), click_index (1, C), content_index /
content_valid (1, K+1), losses/<dinoseg name>, grad/<array name>.
"""
import argparse
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


def track_fixture(base, ref, torch, md_standin, softmax: bool):
  rng = np.random.default_rng(5 if softmax else 6)
  c, tok, p, n_inst, k = 4, 6, 3, 5, 3
  q = c * tok
  H, W, h, w = base.H, base.W, base.h, base.w
  masks = base.blob_masks(rng, n_inst, H, W)
  boxes = base.boxes_of(masks)
  click_index = [2, 0, 4, 1]  # a permutation of the instances, as the reference's randperm; instance 3 unclicked
  content = click_index[:k]
  clicks = []
  for inst in click_index:
    ys, xs = np.nonzero(masks[inst])
    j = rng.integers(len(ys))
    clicks.append((int(xs[j]), int(ys[j])))
  base_boxes = np.repeat(np.asarray([[x / W, y / H, 0, 0] for x, y in clicks], np.float32), tok, 0)
  base_boxes[:, 2:] = np.repeat(boxes[click_index][:, 2:], tok, 0)
  arrays = {
      "logits": rng.normal(0, 2.0, (p, 1, q, k + 1)).astype(np.float32),
      "boxes": np.clip(base_boxes[None, None] + rng.normal(0, 0.02, (p, 1, q, 4)), 0.02, 0.98).astype(np.float32),
      "masks": rng.normal(0, 3.0, (p, 1, q, h, w)).astype(np.float32),
      "iou": rng.uniform(0, 1, (p, 1, c, tok)).astype(np.float32),
  }
  tens = base._tensor_tree(torch, arrays)  # noqa: SLF001

  def out_at(i):
    return {"pred_match_score": tens["logits"][i][..., :k].transpose(1, 2), "pred_boxes": tens["boxes"][i],
            "pred_masks": tens["masks"][i], "pred_ious": tens["iou"][i]}
  outputs = dict(out_at(p - 1), aux_outputs=[out_at(i) for i in range(p - 1)])
  t_masks = torch.as_tensor(masks)
  position = [{"boxes": torch.as_tensor(boxes[click_index]), "masks": t_masks[click_index]}]
  targets = {"position": position, "content": [{"masks": t_masks[content]}]}
  matcher = ref.matcher.HungarianMatcher(cost_class=4.0, cost_mask=5.0, cost_dice=5.0, cost_box=5.0, cost_giou=2.0,
                                         num_points=base.NUM_POINTS)
  content_matcher = ref.matcher.HungarianMatcher(cost_class=4.0, cost_mask=5.0, cost_dice=5.0, cost_box=5.0,
                                                 cost_giou=2.0, num_points=base.NUM_POINTS)
  crit = ref.refer_one.SetCriterionReferOne(
      1, matcher=matcher, content_matcher=content_matcher, weight_dict={}, eos_coef=0.1,
      losses=["masks", "boxes", "match_content" if softmax else "match_content_sigmoid"],
      num_points=base.NUM_POINTS, oversample_ratio=3.0, importance_sample_ratio=0.75, dn="no", num_mask_tokens=tok,
      nms_threshold=0.7)
  rec_content = base.RandRecorder(torch)
  crit.content_matcher.forward = rec_content.wrap(crit.content_matcher.forward)
  mask_calls = []
  loss_masks = crit.loss_masks

  def rec_loss_masks(outputs_, targets_, indices, num_masks, **kw):
    res = loss_masks(outputs_, targets_, indices, num_masks, **kw)
    mask_calls.append((outputs_, indices, md_standin.RECORDER.point_draws[-1]))
    return res
  crit.loss_masks = rec_loss_masks
  md_standin.RECORDER.enabled = True
  md_standin.RECORDER.reset()
  # a non-None mask_dict: the reference's referring decoder always returns one (its DN is off for this task)
  losses = crit(outputs, targets, {}, extra={"part": False, "whole": False, "seg": True, "det": True},
                task="visual_refer")
  md_standin.RECORDER.enabled = False
  total = sum(v * base.weight_of(n) for n, v in losses.items())
  total.backward()

  def index_of(o):
    return p - 1 if o is outputs else [i for i in range(p - 1) if o is outputs["aux_outputs"][i]][0]

  out = dict(arrays)
  ct_idx, ct_valid = np.zeros((1, k + 1), np.int32), np.zeros((1, k + 1), bool)
  ct_idx[0, :k], ct_valid[0, :k] = content, True
  out.update({"gt/boxes": boxes[None], "gt/masks": masks[None].astype(np.uint8),
              "gt/valid": np.ones((1, n_inst), bool), "click_index": np.asarray([click_index], np.int32),
              "content_index": ct_idx, "content_valid": ct_valid})
  for j, (_, calls, _) in enumerate(rec_content.calls):  # the final prediction's losses run first, then aux 0, 1, ...
    out[f"draws/track{p - 1 if j == 0 else j - 1}/content"] = calls[0].numpy()
  for outputs_, indices, (cand, rnd) in mask_calls:
    src, _ = indices[0]
    assert src.tolist() == list(range(q))  # row r of the reference's pairs is dinoseg's slot r
    name = f"track{index_of(outputs_)}"
    out[f"draws/{name}/cand"], out[f"draws/{name}/rand"] = cand.numpy()[None], rnd.numpy()[None]
  for n, v in losses.items():
    out[f"losses/{base.dinoseg_name(n, p - 1)}"] = np.float32(float(v) * base.weight_of(n))
  for name, tensor in tens.items():
    out[f"grad/{name}"] = tensor.grad.numpy()
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dinov", required=True, help="checkout of UX-Decoder/DINOv")
  args = parser.parse_args()
  import importlib  # noqa: PLC0415
  import torch  # noqa: PLC0415
  torch.manual_seed(0)
  torch.Tensor.cuda = lambda self, *a, **kw: self  # the reference criterion moves index tensors to the GPU
  sys.path.insert(0, str(HERE))
  base = importlib.import_module("make_dinov_loss_fixtures")
  standin = base._sibling("dinov_reference_standin")  # noqa: SLF001
  md_standin = sys.modules["maskdino_reference_standin"]
  standin.install_criteria(args.dinov)
  ref = standin.import_criteria()
  ref.refer_one = importlib.import_module("dinov.modules.criterion_visual_refer_one2one")
  base.OUT.mkdir(parents=True, exist_ok=True)
  for name, softmax in (("loss_track_softmax", True), ("loss_track_sigmoid", False)):
    arrays = track_fixture(base, ref, torch, md_standin, softmax)
    path = base.OUT / f"{name}.npz"
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {len([a for a in arrays if a.startswith('losses/')])} "
          "loss terms)")


if __name__ == "__main__":
  main()
