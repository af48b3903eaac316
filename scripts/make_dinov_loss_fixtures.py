"""Writes tests/fixtures/dinov/loss_*.npz: every loss term of the reference DINOv criteria, and the gradients of
their weighted sum w.r.t. the model outputs, on fixed random outputs and targets.

Usage:
  # /tmp/ref_dinov: a checkout of UX-Decoder/DINOv (tested at 53bf20d)
  python scripts/make_dinov_loss_fixtures.py --dinov /tmp/ref_dinov

The reference's own criterion code runs on the CPU (`dinov/modules/criterion_visual_openset.py` with
`matcher.py`; `criterion_visual_refer_many2many.py` with `matcher_many2many.py` and `matcher.py` as the content
matcher), imported through scripts/dinov_reference_standin.py (`install_criteria`). The model does not run: the
criteria get random outputs in the layout the decoder returns (`pred_logits` / `pred_match_score`, `pred_boxes`,
`pred_masks`, `pred_ious`, `aux_outputs`, the DN `mask_dict`), and targets in the layout the meta-architecture
builds. The weights of `weight_dict` are applied here (the reference's meta-architecture does that).

Random draws are recorded and stored so the port can be fed them: the matchers' uniform points (one torch.rand
per image and call) and the mask losses' candidate / random points (Mask DINO's stand-in RECORDER), re-indexed
from the reference's matched-pair order to dinoseg's slot order (`draws/<name>/<kind>`, the names of
dinoseg.models.dinov.criterion).

Files (P predictions, last = final; B images; Q queries; K prompt slots; T targets):
  loss_generic.npz   generic task, B = 2, Q = 10, K = 3 classes present + 1 invalid prompt slot, DN 2 groups of 3
                     in 8 slots: logits (P, B, Q, K+1), boxes (P, B, Q, 4), masks (P, B, Q, h, w),
                     dn/boxes, dn/masks (P, B, 8, ...), dn/target, dn/matched (B, 8), dn/groups (B,),
                     prompt_valid (B, K+1), gt/{labels, boxes, masks, valid} (B, T, ...), losses/<name>,
                     grad/<array name>.
  loss_refer_{softmax,sigmoid}.npz  referring task (batch 1, as the reference), C = 4 clicks x 6 tokens, 6
                     instances, K = 3 content prompts + 1 invalid slot: logits (P, 1, C*6, K+1) (the reference's
                     pred_match_score transposed), boxes, masks, iou (P, 1, C, 6), gt/{boxes, masks, valid},
                     level_index / level_valid (1, C, 6), content_index / content_valid (1, K+1), losses/<name>,
                     grad/<array name>.
"""
import argparse
import importlib.util
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "dinov"
NUM_POINTS = 64
H, W, h, w = 64, 96, 16, 24
WEIGHTS = dict(loss_mask_cls=4.0, loss_mask_bce=5.0, loss_mask_dice=5.0, loss_bbox=5.0, loss_giou=2.0,
               iou_score_loss=1.0, loss_match_score=2.0)
NAMES = dict(loss_mask_cls="loss_ce", loss_mask_bce="loss_mask", loss_mask_dice="loss_dice", loss_bbox="loss_bbox",
             loss_giou="loss_giou", iou_score_loss="loss_iou", loss_match_score="loss_match")


def _sibling(name: str):
  spec = importlib.util.spec_from_file_location(name, pathlib.Path(__file__).resolve().with_name(f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def dinoseg_name(ref_name: str, last: int) -> str:
  """Reference loss name -> dinoseg's: `<base>_<i>[_dn]`, i = 0 final, i + 1 aux layer i."""
  dn = ref_name.endswith("_dn")
  core = ref_name[:-3] if dn else ref_name
  base, i = core.rsplit("_", 1)
  k = last if int(i) == 0 else int(i) - 1
  suffix = ("_dn" if dn else "") + ("" if k == last else f"_{k}")
  return NAMES[base] + suffix


def weight_of(ref_name: str) -> float:
  core = ref_name[:-3] if ref_name.endswith("_dn") else ref_name
  return WEIGHTS[core.rsplit("_", 1)[0]]


def blob_masks(rng, n, hh, ww):
  """n random ellipses (n, hh, ww) float32, each non-empty."""
  yy, xx = np.mgrid[:hh, :ww]
  out = np.zeros((n, hh, ww), np.float32)
  for i in range(n):
    cy, cx = rng.uniform(0.2, 0.8) * hh, rng.uniform(0.2, 0.8) * ww
    ry, rx = rng.uniform(0.1, 0.35) * hh, rng.uniform(0.1, 0.35) * ww
    out[i] = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.float32)
  return out


def boxes_of(masks):
  """(n, H, W) -> (n, 4) cxcywh normalized by (W, H) of the tight boxes (pixel edges)."""
  out = []
  for m in masks:
    ys, xs = np.nonzero(m)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    out.append([(x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H])
  return np.asarray(out, np.float32)


class RandRecorder:
  """Records torch.rand calls while active."""

  def __init__(self, torch):
    self.torch, self.calls = torch, []

  def wrap(self, fn):
    torch = self.torch

    def run(*a, **k):
      rand = torch.rand
      calls = []

      def rec(*aa, **kk):
        r = rand(*aa, **kk)
        calls.append(r.clone())
        return r
      torch.rand = rec
      try:
        result = fn(*a, **k)
      finally:
        torch.rand = rand
      self.calls.append((a, calls, result))
      return result
    return run


def _tensor_tree(torch, arrays):
  return {k: torch.tensor(v, requires_grad=True) for k, v in arrays.items()}


def generic_fixture(standin, ref, torch, md_standin):
  rng = np.random.default_rng(0)
  b, q, k, p, t_max = 2, 10, 3, 3, 4
  counts = [3, 2]
  labels = [np.asarray([0, 2, 1]), np.asarray([1, 0])]
  gt_masks = [blob_masks(rng, n, H, W) for n in counts]
  gt_boxes = [boxes_of(m) for m in gt_masks]
  groups, single = 2, max(counts)
  n_dn = 8
  arrays = {
      "logits": rng.normal(0, 2.0, (p, b, q, k + 1)).astype(np.float32),
      "boxes": (1 / (1 + np.exp(-rng.normal(0, 1.0, (p, b, q, 4))))).astype(np.float32),
      "masks": rng.normal(0, 3.0, (p, b, q, h, w)).astype(np.float32),
      "dn/boxes": (1 / (1 + np.exp(-rng.normal(0, 1.0, (p, b, n_dn, 4))))).astype(np.float32),
      "dn/masks": rng.normal(0, 3.0, (p, b, n_dn, h, w)).astype(np.float32),
  }
  tens = _tensor_tree(torch, arrays)

  def out_at(i):
    return {"pred_logits": tens["logits"][i][..., :k], "pred_boxes": tens["boxes"][i], "pred_masks": tens["masks"][i]}

  def dn_at(i):
    n = groups * single
    return {"pred_boxes": tens["dn/boxes"][i][:, :n], "pred_masks": tens["dn/masks"][i][:, :n]}
  outputs = dict(out_at(p - 1), aux_outputs=[out_at(i) for i in range(p - 1)])
  mask_dict = {"output_known_lbs_bboxes": dict(dn_at(p - 1), aux_outputs=[dn_at(i) for i in range(p - 1)]),
               "known_indice": torch.arange(sum(counts) * groups), "scalar": groups, "pad_size": groups * single}
  targets = {"generic": [{"labels": torch.as_tensor(labels[i]), "gt_whole_classes": torch.as_tensor(labels[i]),
                          "masks": torch.as_tensor(gt_masks[i]), "boxes": torch.as_tensor(gt_boxes[i])}
                         for i in range(b)]}
  matcher = ref.matcher.HungarianMatcher(cost_class=4.0, cost_mask=5.0, cost_dice=5.0, cost_box=5.0, cost_giou=2.0,
                                         num_points=NUM_POINTS)
  crit = ref.openset.SetCriterionVisualOpenSet(
      k, matcher=matcher, weight_dict={}, top_x_layers={}, eos_coef=0.1, losses=["labels", "masks", "boxes"],
      num_points=NUM_POINTS, oversample_ratio=3.0, importance_sample_ratio=0.75, grounding_weight=None, dn="seg",
      dn_losses=["masks", "boxes"])
  rec = RandRecorder(torch)
  crit.matcher.forward = rec.wrap(crit.matcher.forward)
  mask_calls = []
  loss_masks = crit.loss_masks

  def rec_loss_masks(outputs_, targets_, indices, num_masks, **kw):
    res = loss_masks(outputs_, targets_, indices, num_masks, **kw)
    mask_calls.append((outputs_, indices, md_standin.RECORDER.point_draws[-1]))
    return res
  crit.loss_masks = rec_loss_masks
  md_standin.RECORDER.enabled = True
  md_standin.RECORDER.reset()
  losses = crit(outputs, targets, mask_dict, extra={"part": False, "whole": True, "seg": True, "det": True},
                task="visual_openset")
  md_standin.RECORDER.enabled = False
  total = sum(v * weight_of(n) for n, v in losses.items())
  total.backward()

  def name_of(o):
    for i in range(p):
      if o is (outputs if i == p - 1 else outputs["aux_outputs"][i]):
        return f"pred{i}"
      dn = mask_dict["output_known_lbs_bboxes"]
      if o is (dn if i == p - 1 else dn["aux_outputs"][i]):
        return f"dn{i}"
    raise AssertionError("unknown output")

  out = {name: v for name, v in arrays.items()}
  pv = np.zeros((b, k + 1), bool)
  pv[:, :k] = True
  out["prompt_valid"] = pv
  g_labels, g_boxes, g_masks, g_valid = (np.zeros((b, t_max), np.int32), np.zeros((b, t_max, 4), np.float32),
                                         np.zeros((b, t_max, H, W), np.uint8), np.zeros((b, t_max), bool))
  for i in range(b):
    n = counts[i]
    g_labels[i, :n], g_boxes[i, :n], g_masks[i, :n], g_valid[i, :n] = labels[i], gt_boxes[i], gt_masks[i], True
  out.update({"gt/labels": g_labels, "gt/boxes": g_boxes, "gt/masks": g_masks, "gt/valid": g_valid})
  dn_target, dn_matched = np.zeros((b, n_dn), np.int32), np.zeros((b, n_dn), bool)
  for i in range(b):
    for g in range(groups):
      for j in range(counts[i]):
        dn_target[i, g * single + j], dn_matched[i, g * single + j] = j, True
  out.update({"dn/target": dn_target, "dn/matched": dn_matched, "dn/groups": np.full((b,), groups, np.float32)})
  for j, (_, calls, _) in enumerate(rec.calls):  # the final prediction is matched first, then aux 0, 1, ...
    out[f"draws/pred{p - 1 if j == 0 else j - 1}/match"] = np.concatenate([c.numpy() for c in calls], 0)
  s, r = int(NUM_POINTS * 3.0), NUM_POINTS - int(0.75 * NUM_POINTS)
  for outputs_, indices, (cand, rnd) in mask_calls:
    name = name_of(outputs_)
    slots = n_dn if name.startswith("dn") else t_max
    c_t = rng.uniform(size=(b, slots, s, 2)).astype(np.float32)
    r_t = rng.uniform(size=(b, slots, r, 2)).astype(np.float32)
    row = 0
    for i, (src, tgt) in enumerate(indices):
      for qi, tj in zip(src.tolist(), tgt.tolist()):
        slot = qi if name.startswith("dn") else tj
        c_t[i, slot], r_t[i, slot] = cand[row].numpy(), rnd[row].numpy()
        row += 1
    out[f"draws/{name}/cand"], out[f"draws/{name}/rand"] = c_t, r_t
  for n, v in losses.items():
    out[f"losses/{dinoseg_name(n, p - 1)}"] = np.float32(float(v) * weight_of(n))
  for name, tensor in tens.items():
    out[f"grad/{name}"] = tensor.grad.numpy()
  return out


def refer_fixture(standin, ref, torch, md_standin, softmax: bool):
  rng = np.random.default_rng(1)
  c, tok, p, n_inst, k = 4, 6, 3, 6, 3
  q = c * tok
  masks = blob_masks(rng, n_inst, H, W)
  masks[1] = np.maximum(masks[1], masks[0])  # nested instances: a click in 0 has levels {0, 1, ...}
  masks[2] = np.maximum(masks[2], masks[1])
  boxes = boxes_of(masks)
  clicks, levels = [], []
  for ci in range(c):
    inst = [0, 3, 4, 5][ci]
    ys, xs = np.nonzero(masks[inst])
    j = rng.integers(len(ys))
    y, x = int(ys[j]), int(xs[j])
    clicks.append((x, y))
    levels.append([m for m in range(n_inst) if masks[m, y, x] > 0])
  click_boxes = np.asarray([[x / W, y / H, 6 / W, 6 / H] for x, y in clicks], np.float32)
  base = np.repeat(click_boxes, tok, 0)
  base[:, 2:] = np.repeat(boxes[[0, 3, 4, 5]][:, 2:], tok, 0)
  content = [0, 3, 5]
  arrays = {
      "logits": rng.normal(0, 2.0, (p, 1, q, k + 1)).astype(np.float32),
      "boxes": np.clip(base[None, None] + rng.normal(0, 0.02, (p, 1, q, 4)), 0.02, 0.98).astype(np.float32),
      "masks": rng.normal(0, 3.0, (p, 1, q, h, w)).astype(np.float32),
      "iou": rng.uniform(0, 1, (p, 1, c, tok)).astype(np.float32),
  }
  tens = _tensor_tree(torch, arrays)

  def out_at(i):
    return {"pred_match_score": tens["logits"][i][..., :k].transpose(1, 2), "pred_boxes": tens["boxes"][i],
            "pred_masks": tens["masks"][i], "pred_ious": tens["iou"][i]}
  outputs = dict(out_at(p - 1), aux_outputs=[out_at(i) for i in range(p - 1)])
  t_masks = torch.as_tensor(masks)
  position = [{"level_target_inds": levels, "max_num_tgt_per_click": max(len(v) for v in levels),
               "ori_boxes": torch.as_tensor(boxes), "ori_masks": t_masks, "masks": t_masks[[0, 3, 4, 5]]}]
  targets = {"position": position, "content": [{"masks": t_masks[content]}]}
  m2m = ref.matcher_many.HungarianMatcherMany2Many(cost_class=4.0, cost_mask=5.0, cost_dice=5.0, cost_box=5.0,
                                                   cost_giou=2.0, num_points=NUM_POINTS, num_mask_tokens=tok)
  content_matcher = ref.matcher.HungarianMatcher(cost_class=4.0, cost_mask=5.0, cost_dice=5.0, cost_box=5.0,
                                                 cost_giou=2.0, num_points=NUM_POINTS)
  crit = ref.refer_many.SetCriterionReferMany(
      1, matcher=m2m, content_matcher=content_matcher, weight_dict={}, eos_coef=0.1,
      losses=["masks", "boxes", "match_content" if softmax else "match_content_sigmoid"], num_points=NUM_POINTS,
      oversample_ratio=3.0, importance_sample_ratio=0.75, dn="no", num_mask_tokens=tok, nms_threshold=0.7)
  rec_m2m, rec_content = RandRecorder(torch), RandRecorder(torch)
  crit.matcher.forward = rec_m2m.wrap(crit.matcher.forward)
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
  losses = crit(outputs, targets, None, extra={"part": False, "whole": False, "seg": True, "det": True},
                task="visual_refer")
  md_standin.RECORDER.enabled = False
  total = sum(v * weight_of(n) for n, v in losses.items())
  total.backward()

  def index_of(o):
    return p - 1 if o is outputs else [i for i in range(p - 1) if o is outputs["aux_outputs"][i]][0]

  out = dict(arrays)
  lv_idx, lv_valid = np.zeros((1, c, tok), np.int32), np.zeros((1, c, tok), bool)
  offsets = np.concatenate([[0], np.cumsum([len(v) for v in levels])])
  flat_to_slot = {}
  for ci, v in enumerate(levels):
    for t, m in enumerate(v):
      lv_idx[0, ci, t], lv_valid[0, ci, t] = m, True
      flat_to_slot[offsets[ci] + t] = ci * tok + t
  ct_idx, ct_valid = np.zeros((1, k + 1), np.int32), np.zeros((1, k + 1), bool)
  ct_idx[0, :k], ct_valid[0, :k] = content, True
  out.update({"gt/boxes": boxes[None], "gt/masks": masks[None].astype(np.uint8), "gt/valid": np.ones((1, n_inst), bool),
              "level_index": lv_idx, "level_valid": lv_valid, "content_index": ct_idx, "content_valid": ct_valid})
  (_, calls, _), = rec_m2m.calls
  out["draws/m2m/match"] = calls[0].numpy()
  for j, (_, calls, _) in enumerate(rec_content.calls):  # the final prediction's losses run first, then aux 0, 1, ...
    out[f"draws/refer{p - 1 if j == 0 else j - 1}/content"] = calls[0].numpy()
  s, r = int(NUM_POINTS * 3.0), NUM_POINTS - int(0.75 * NUM_POINTS)
  for outputs_, indices, (cand, rnd) in mask_calls:
    c_t = rng.uniform(size=(1, q, s, 2)).astype(np.float32)
    r_t = rng.uniform(size=(1, q, r, 2)).astype(np.float32)
    src, tgt = indices[0]
    for row, tj in enumerate(tgt.tolist()):
      slot = flat_to_slot[tj]
      c_t[0, slot], r_t[0, slot] = cand[row].numpy(), rnd[row].numpy()
    name = f"refer{index_of(outputs_)}"
    out[f"draws/{name}/cand"], out[f"draws/{name}/rand"] = c_t, r_t
  for n, v in losses.items():
    out[f"losses/{dinoseg_name(n, p - 1)}"] = np.float32(float(v) * weight_of(n))
  for name, tensor in tens.items():
    out[f"grad/{name}"] = tensor.grad.numpy()
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dinov", required=True, help="checkout of UX-Decoder/DINOv")
  args = parser.parse_args()
  import torch  # noqa: PLC0415
  torch.manual_seed(0)
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  standin = _sibling("dinov_reference_standin")
  md_standin = sys.modules["maskdino_reference_standin"]
  standin.install_criteria(args.dinov)
  ref = standin.import_criteria()
  OUT.mkdir(parents=True, exist_ok=True)
  files = {"loss_generic": generic_fixture(standin, ref, torch, md_standin),
           "loss_refer_softmax": refer_fixture(standin, ref, torch, md_standin, softmax=True),
           "loss_refer_sigmoid": refer_fixture(standin, ref, torch, md_standin, softmax=False)}
  for name, arrays in files.items():
    path = OUT / f"{name}.npz"
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {len([a for a in arrays if a.startswith('losses/')])} "
          "loss terms)")


if __name__ == "__main__":
  main()
