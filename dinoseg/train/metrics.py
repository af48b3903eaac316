"""Run logging: per-step scalars to TensorBoard and JSONL, a console progress bar, JSON results.

Files in the workdir (written by process 0 only):

  metrics.jsonl           one JSON object per line: {"step": N, "loss": ..., "learning_rate": ...,
                          "grad_norm": ..., "step_time": s, "examples_per_sec": ...} for every train
                          step, {"step": N, "eval/<key>": ...} after each evaluation
  tensorboard/            TensorBoard event files with the same scalars (tensorboardX)
  eval/step_<N>.json      the evaluator's full results at step N (see trainer)

Both are strict JSON (dinoseg.jsonio): a NaN or infinite value is written as null.

On resume from step S the JSONL rows after S (written by the interrupted run past its last
checkpoint) are dropped and TensorBoard purges events after S, so the logs read as one run.
The progress bar (tqdm, stderr) shows steps, rate and ETA with the latest loss and learning rate.
"""
import json
import logging
import pathlib
import sys
from typing import Any, Iterable, Mapping

import jax
import numpy as np

from dinoseg import jsonio

logger = logging.getLogger(__name__)


def _scalar(value) -> float | int | None:
  arr = np.asarray(value)
  if arr.ndim != 0 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
    return None  # arrays, and results that are not numbers (e.g. a string naming a data source)
  return arr.item()


class MetricWriter:
  """Writes scalars and results of one run; inert on processes other than 0.

  Args:
    workdir: the run directory.
    num_steps: total steps (progress bar length).
    start_step: the step the run starts (or resumes) at.
    progress: show the tqdm progress bar.
  """

  def __init__(self, workdir, *, num_steps: int, start_step: int = 0, progress: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.enabled = jax.process_index() == 0
    self._tb = self._jsonl = self._bar = None
    if not self.enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    path = self.workdir / "metrics.jsonl"
    if path.exists():
      _truncate_jsonl(path, start_step)
    self._jsonl = path.open("a")
    self._tb = _summary_writer_class()(str(self.workdir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
    if progress:
      from tqdm import tqdm  # noqa: PLC0415
      self._bar = tqdm(total=num_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr,
                       mininterval=1.0, desc="train")

  def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
    """Writes per-step rows (each with a "step" key) to JSONL and TensorBoard."""
    if not self.enabled:
      return
    for row in rows:
      step = int(row["step"])
      clean = {"step": step}
      for key, value in row.items():
        if key == "step":
          continue
        value = _scalar(value)
        if value is None:
          continue
        clean[key] = value
        self._tb.add_scalar(key, value, step)
      self._jsonl.write(jsonio.dumps(clean) + "\n")  # NaN / inf -> null
    self._jsonl.flush()
    self._tb.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, Any], prefix: str = "") -> None:
    self.write_rows([{"step": step, **{f"{prefix}{k}": v for k, v in scalars.items()}}])

  def write_json(self, relative_path: str, obj: Any) -> pathlib.Path | None:
    """Writes `obj` as indented strict JSON (NaN -> null) under the workdir (process 0); returns the path."""
    if not self.enabled:
      return None
    path = self.workdir / relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(jsonio.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path

  def progress(self, step: int, **postfix) -> None:
    """Moves the bar to `step` and shows `postfix` values."""
    if self._bar is None:
      return
    self._bar.update(step - self._bar.n)
    if postfix:
      self._bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in postfix.items()},
                            refresh=False)

  def message(self, text: str) -> None:
    """Logs a line on process 0 (the `dinoseg` console handler writes it above the bar)."""
    if self.enabled:
      logger.info(text)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()
    self._tb = self._jsonl = self._bar = None


def _summary_writer_class():
  """tensorboardX.SummaryWriter, imported without PyTorch.

  tensorboardX imports torch at import time when it is installed (only to accept torch tensors,
  which the trainer never passes); that costs seconds per run. torch is hidden for the duration
  of the import unless it is already loaded.
  """
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
    return SummaryWriter
  sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def _truncate_jsonl(path: pathlib.Path, last_step: int) -> None:
  """Keeps the rows with step <= last_step (and any unparsable tail line is dropped)."""
  kept = []
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if int(row.get("step", 0)) <= last_step:
      kept.append(line)
  tmp = path.with_suffix(".jsonl.tmp")
  tmp.write_text("".join(line + "\n" for line in kept))
  tmp.replace(path)


def read_jsonl(path) -> list[dict]:
  """The rows of a metrics.jsonl file."""
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


__all__ = ["MetricWriter", "read_jsonl"]
