"""Talk2DINO benchmark evaluation: mIoU the way the reference reports it, and the paper's table.

The reference scores with mmseg 0.x `mean_iou` over the whole split: per class
IoU = intersection / union of the dataset-wide pixel counts (ignored ground-truth pixels
excluded), NaN when the union is empty, mIoU = nanmean x 100. This differs from detectron2's
`SemSegEvaluator` (which `dinoseg.evaluation.semantic` follows) only for a class that is never in
the ground truth but is predicted somewhere: mmseg counts it with IoU 0, detectron2 skips it.
Both are computed from the same confusion matrix (`SemanticEvaluator`); the mmseg number is the
one in the table.

Ground truth: (H, W) integer maps in the benchmark's label order (`classnames.Benchmark.classes`,
background = 0 for the with-background sets), 255 = ignore, at the image's original size.
"""
import logging
import math
import os
import pathlib
import time
from typing import Iterable, Mapping

import numpy as np

from dinoseg import jsonio
from dinoseg.evaluation.semantic import SemanticEvaluator, semantic_metrics
from dinoseg.models.talk2dino.classnames import BENCHMARKS, PAPER_COLUMNS, Benchmark

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255


def mmseg_metrics(conf: np.ndarray) -> dict[str, float]:
  """mmseg-style aAcc, mIoU, mAcc (percent) and per-class IoU from a (C+1, C+1) [pred, gt] confusion matrix."""
  conf = np.asarray(conf, np.float64)[:-1, :-1]  # drop the ignore row/column
  tp = np.diagonal(conf)
  area_gt, area_pred = conf.sum(axis=0), conf.sum(axis=1)
  union = area_gt + area_pred - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, tp / union, np.nan)
    acc = np.where(area_gt > 0, tp / area_gt, np.nan)
  total = area_gt.sum()
  return {"aAcc": 100 * float(tp.sum() / total) if total else float("nan"),
          "mIoU": 100 * float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan"),
          "mAcc": 100 * float(np.nanmean(acc)) if np.any(~np.isnan(acc)) else float("nan"),
          "IoU": [None if math.isnan(v) else 100 * float(v) for v in iou]}


def evaluate_benchmark(segment, samples: Iterable[tuple[np.ndarray, np.ndarray]], benchmark: Benchmark,
                       max_images: int = 0, progress: bool = True) -> dict:
  """Runs `segment(image) -> labels` over (image, ground truth) pairs and scores it.

  Args:
    segment: callable (H, W, 3) uint8 RGB -> (H, W) int labels in [0, num_classes).
    samples: iterable of (image, gt) pairs.
    benchmark: the Benchmark (class list, label order).
    max_images: stop after this many images (0: all).
  Returns:
    {"benchmark", "mIoU" (mmseg), "mIoU_detectron2", "aAcc", "mAcc", "per_class_iou", "num_images",
    "seconds_per_image"}.
  """
  from tqdm import tqdm  # noqa: PLC0415
  evaluator = SemanticEvaluator(benchmark.num_classes, IGNORE_LABEL, list(benchmark.classes))
  n, start = 0, time.perf_counter()
  for image, gt in tqdm(samples, desc=benchmark.key, unit="img", disable=not progress):
    gt = np.asarray(gt)
    labels = segment(image)
    if labels.shape != gt.shape:
      raise ValueError(f"{benchmark.key} image {n}: prediction {labels.shape} vs ground truth {gt.shape}")
    evaluator.process(labels, gt)
    n += 1
    if max_images and n >= max_images:
      break
  metrics = mmseg_metrics(evaluator.conf)
  d2 = semantic_metrics(evaluator.conf, list(benchmark.classes))
  return {"benchmark": benchmark.key, "mIoU": metrics["mIoU"], "mIoU_detectron2": d2["mIoU"],
          "aAcc": metrics["aAcc"], "mAcc": metrics["mAcc"],
          "per_class_iou": dict(zip(benchmark.classes, metrics["IoU"])), "num_images": n,
          "seconds_per_image": (time.perf_counter() - start) / max(n, 1)}


def paper_table(results: Mapping[str, float], title: str = "Talk2DINO (dinoseg)") -> str:
  """The paper's table layout: V20 C59 Stuff City ADE V21 C60 Obj Avg (markdown), mIoU values.

  `results` maps benchmark keys to mIoU; missing benchmarks print "-" and the average is over
  the present ones (marked with * when some are missing). Keys outside the paper's eight are
  appended as extra columns.
  """
  cols = [BENCHMARKS[k].title for k in PAPER_COLUMNS]
  values = [results.get(k) for k in PAPER_COLUMNS]
  present = [v for v in values if v is not None]
  avg = (f"{np.mean(present):.1f}" + ("" if len(present) == len(values) else "*")) if present else "-"
  cells = [f"{v:.1f}" if v is not None else "-" for v in values] + [avg]
  extra = [k for k in results if k not in BENCHMARKS]
  cols += ["Avg"] + extra
  cells += [f"{results[k]:.1f}" for k in extra]
  return "\n".join([f"| model | {' | '.join(cols)} |", "|---" * (len(cols) + 1) + "|",
                    f"| {title} | {' | '.join(cells)} |"])


def write_results(results: Mapping[str, dict], path: str | os.PathLike) -> None:
  """Writes {benchmark: metrics} (and the table) as strict JSON (NaN -> null)."""
  payload = {"results": dict(results), "table": paper_table({k: v["mIoU"] for k, v in results.items()})}
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(path).write_text(jsonio.dumps(payload, indent=1))


def load_for_inference(config, weights: str | None = None, without: tuple[str, ...] = ()):
  """(model, params) for evaluation / prediction from `config.init`: `weights` (a projection file or
  training workdir) overrides `config.init.projection.file`; parts in `without` are not read (random)."""
  import jax  # noqa: PLC0415

  from dinoseg.models.talk2dino.model import build_model  # noqa: PLC0415
  from dinoseg.models.talk2dino.weights import load_model_params  # noqa: PLC0415
  if weights:
    config = config.copy_and_resolve_references()
    config.init.projection.file = str(weights)
  model = build_model(config.model)
  return model, load_model_params(model, config, jax.random.key(int(config.seed)), without=without)


def inference_settings(config, benchmark):
  """InferenceSettings of a benchmark with the resize / window / PAMR values of `config.eval`."""
  from dinoseg.models.talk2dino.inference import settings_for  # noqa: PLC0415
  e = config.eval
  return settings_for(benchmark, e.backbone_size, short_side=e.short_side, max_long_side=e.max_long_side,
                      crop_size=e.crop_size, stride=e.stride, input_size=e.input_size, pamr=e.pamr,
                      pamr_iters=e.pamr_iters, lambda_bg=e.lambda_bg)


def run_evaluation(config, weights: str | None = None, benchmarks=None, progress: bool = True) -> dict[str, dict]:
  """Evaluates every benchmark of `config.eval.benchmarks` (or `benchmarks`); writes
  `config.eval.output` (JSON) and logs the paper-layout table (`paper_table`). Returns {key: metrics}."""
  from dinoseg.models.talk2dino.inference import Talk2DinoSegmenter  # noqa: PLC0415
  from dinoseg.models.talk2dino.classnames import get_benchmark  # noqa: PLC0415
  from dinoseg.models.talk2dino.sources import semantic_samples  # noqa: PLC0415
  from dinoseg.models.talk2dino.templates import get_templates  # noqa: PLC0415
  from dinoseg.models.talk2dino.text import class_embeddings  # noqa: PLC0415
  keys = tuple(benchmarks or config.eval.benchmarks)
  chosen = [get_benchmark(k) for k in keys]  # unknown keys fail before any work
  model, params = load_for_inference(config, weights)
  templates = get_templates(config.eval.template_set)
  results = {}
  for benchmark in chosen:
    segmenter = Talk2DinoSegmenter(model, params, inference_settings(config, benchmark))
    segmenter.set_text_embeddings(class_embeddings(model, params, benchmark.prompt_classes, templates))
    results[benchmark.key] = evaluate_benchmark(segmenter, semantic_samples(config.eval, benchmark), benchmark,
                                                int(config.eval.max_images), progress)
  if config.eval.output:
    write_results(results, config.eval.output)
  logger.info("%s", paper_table({k: v["mIoU"] for k, v in results.items()}))
  return results


__all__ = ["mmseg_metrics", "evaluate_benchmark", "paper_table", "write_results", "run_evaluation",
           "load_for_inference", "inference_settings", "IGNORE_LABEL"]
