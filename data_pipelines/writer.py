"""Sharded ArrayRecord writing: parallel, resumable, with a manifest of counts and checksums.

`prepare(name, raw_dir, out_dir)` runs a preparer (`preparers.base`) over each split and writes

  out_dir/<name>-<split>.array_record-00000-of-00004 ...   the shards (msgpack records, `schema`)
  out_dir/manifest.json                                    counts, checksums, metadata, issues

Shards are named like TFDS ArrayRecord shards. Items are cut into contiguous shards in scan order;
each shard is written to a temporary file, renamed when complete, and recorded in
out_dir/.progress/<split>/shard-NNNNN.json with its count and SHA-256. A crashed preparation
started again with the same arguments keeps every finished shard whose checksum still matches and
writes only the others; different arguments (another item list or shard count) are refused
unless `overwrite`.
"""
import concurrent.futures
import hashlib
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import time
from typing import Any, Sequence

from dinoseg.data_pipelines import schema
from dinoseg.data_pipelines.preparers import base
from dinoseg.errors import UserFileNotFoundError, UserValueError

log = logging.getLogger("dinoseg.data")

MANIFEST = "manifest.json"
PROGRESS_DIR = ".progress"
DEFAULT_EXAMPLES_PER_SHARD = 1024


def shard_file_name(name: str, split: str, index: int, count: int) -> str:
  return f"{name}-{split}.array_record-{index:05d}-of-{count:05d}"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      digest.update(block)
  return digest.hexdigest()


def shard_ranges(num_items: int, num_shards: int | None, examples_per_shard: int | None) -> list[tuple[int, int]]:
  """Contiguous [start, end) item ranges: `num_shards` near-equal shards, or shards of
  `examples_per_shard` items (default 1024). At least one shard, none empty unless no items."""
  if num_shards is not None and examples_per_shard is not None:
    raise UserValueError("give num_shards or examples_per_shard, not both")
  if num_shards is not None and num_shards <= 0:
    raise UserValueError(f"num_shards must be positive, got {num_shards}")
  if examples_per_shard is not None and examples_per_shard <= 0:
    raise UserValueError(f"examples_per_shard must be positive, got {examples_per_shard}")
  if num_shards is None:
    per = examples_per_shard or DEFAULT_EXAMPLES_PER_SHARD
    num_shards = max(1, -(-num_items // per))
  num_shards = max(1, min(num_shards, num_items)) if num_items else 1
  bounds = [num_items * i // num_shards for i in range(num_shards + 1)]
  return list(zip(bounds[:-1], bounds[1:]))


def _write_shard(task: dict) -> dict:
  """Builds and writes one shard (runs in a worker process or inline). Returns its summary."""
  from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415

  preparer = base.get(task["dataset"], **task["options"])
  issues = base.Issues(strict=task["strict"], context=f"{task['dataset']}/{task['split']}")
  path = pathlib.Path(task["path"])
  tmp = path.with_name(path.name + ".tmp")
  ids, counts = [], []
  writer = ArrayRecordWriter(str(tmp), "group_size:1")
  try:
    for item in task["items"]:
      try:
        record = preparer.build(item, task["raw_dir"], issues)
      except base.SkipExample as e:
        issues.skip(e.reason, f"{preparer.item_key(item)}: {e.detail}")
        continue
      writer.write(schema.encode_record(record))
      ids.append(int(record["id"]))
      counts.append(schema.num_instances(record))
  finally:
    writer.close()
  os.replace(tmp, path)
  summary = {"file": path.name, "num_records": len(ids), "num_items": len(task["items"]),
             "bytes": path.stat().st_size, "sha256": sha256_file(path), "ids": ids, "num_instances": counts,
             "issues": issues.as_dict()}
  done = pathlib.Path(task["progress_dir"]) / f"shard-{task['index']:05d}.json"
  tmp_done = done.with_suffix(".json.tmp")
  tmp_done.write_text(json.dumps(summary))
  os.replace(tmp_done, done)
  return summary


def _fingerprint(dataset: str, options: dict, split: str, keys: Sequence[str], ranges) -> str:
  digest = hashlib.sha256()
  digest.update(json.dumps({"dataset": dataset, "options": options, "split": split, "schema": schema.SCHEMA_VERSION,
                            "ranges": ranges}, sort_keys=True, default=str).encode())
  for key in keys:
    digest.update(key.encode("utf-8", "replace") + b"\0")
  return digest.hexdigest()


def _finished(progress_dir: pathlib.Path, out_dir: pathlib.Path, index: int, file_name: str) -> dict | None:
  done = progress_dir / f"shard-{index:05d}.json"
  shard = out_dir / file_name
  if not done.is_file() or not shard.is_file():
    return None
  try:
    summary = json.loads(done.read_text())
  except json.JSONDecodeError:
    return None
  if summary.get("file") != file_name or summary.get("sha256") != sha256_file(shard):
    log.warning("shard %s does not match its progress record; writing it again", file_name)
    return None
  return summary


def prepare_split(dataset: str, raw_dir: str, out_dir: str, split: str, *, options: dict | None = None,
                  num_shards: int | None = None, examples_per_shard: int | None = None, num_workers: int = 1,
                  strict: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
  """Prepares one split; returns its manifest entry (see `prepare`)."""
  options = dict(options or {})
  preparer = base.get(dataset, **options)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  scan_issues = base.Issues(strict=strict, context=f"{dataset}/{split}")
  started = time.time()
  scan = preparer.scan(str(raw_dir), split, scan_issues)
  ranges = shard_ranges(len(scan.items), num_shards, examples_per_shard)
  fingerprint = _fingerprint(dataset, options, split, [preparer.item_key(i) for i in scan.items], ranges)
  progress_dir = out / PROGRESS_DIR / split
  plan_file = progress_dir / "plan.json"
  if plan_file.is_file():
    plan = json.loads(plan_file.read_text())
    if plan.get("fingerprint") != fingerprint:
      if not overwrite:
        raise UserValueError(f"{out} holds an unfinished preparation of {plan.get('dataset')}/{split} with other "
                             "arguments or raw data; pass overwrite (--overwrite) to start over")
      shutil.rmtree(progress_dir)
  progress_dir.mkdir(parents=True, exist_ok=True)
  files = [shard_file_name(dataset, split, i, len(ranges)) for i in range(len(ranges))]
  for stale in out.glob(f"{dataset}-{split}.array_record-*"):
    if stale.name not in files:
      stale.unlink()
  plan_file.write_text(json.dumps({"dataset": dataset, "split": split, "fingerprint": fingerprint,
                                   "num_items": len(scan.items), "num_shards": len(ranges)}))

  summaries: dict[int, dict] = {}
  tasks = []
  for index, ((start, end), file_name) in enumerate(zip(ranges, files)):
    done = _finished(progress_dir, out, index, file_name)
    if done is not None:
      summaries[index] = done
      continue
    tasks.append({"dataset": dataset, "options": options, "split": split, "raw_dir": str(raw_dir),
                  "items": scan.items[start:end], "path": str(out / file_name), "index": index,
                  "progress_dir": str(progress_dir), "strict": strict})
  if summaries:
    log.info("%s/%s: %d of %d shards already finished, resuming", dataset, split, len(summaries), len(ranges))

  from tqdm import tqdm  # noqa: PLC0415
  total = len(scan.items)
  bar = tqdm(total=total, initial=sum(s["num_items"] for s in summaries.values()), unit="ex",
             desc=f"{dataset}/{split}", disable=not progress, dynamic_ncols=True)
  try:
    if num_workers <= 1 or len(tasks) <= 1:
      for task in tasks:
        summaries[task["index"]] = _write_shard(task)
        bar.update(len(task["items"]))
    else:
      ctx = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(min(num_workers, len(tasks)), mp_context=ctx) as pool:
        futures = {pool.submit(_write_shard, task): task for task in tasks}
        try:
          for future in concurrent.futures.as_completed(futures):
            summary = future.result()
            task = futures[future]
            summaries[task["index"]] = summary
            bar.update(len(task["items"]))
        except BaseException:
          for f in futures:
            f.cancel()
          raise
  finally:
    bar.close()

  issues = base.Issues(strict=False)
  issues.merge(scan_issues)
  shards = []
  for index in range(len(ranges)):
    s = summaries[index]
    issues.merge(s["issues"])
    shards.append({k: s[k] for k in ("file", "num_records", "bytes", "sha256", "ids", "num_instances")})
  entry = {
      "num_records": sum(s["num_records"] for s in shards),
      "num_items": total,
      "shards": shards,
      "issues": issues.as_dict(),
      "fingerprint": fingerprint,
      "seconds": round(time.time() - started, 2),
  }
  return {"entry": entry, "metadata": scan.metadata}


def prepare(dataset: str, raw_dir: str, out_dir: str, *, splits: Sequence[str] | None = None,
            options: dict | None = None, num_shards: int | None = None, examples_per_shard: int | None = None,
            num_workers: int = 1, strict: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
  """Prepares `dataset` from `raw_dir` into ArrayRecord shards under `out_dir`.

  Args:
    dataset: a registered preparer name (`preparers.names()`).
    raw_dir: the dataset's raw root (official layout, docs/data.md).
    out_dir: output directory (created); holds the shards and manifest.json.
    splits: splits to prepare (default: the preparer's default splits).
    options: preparer-specific options (e.g. annotation file paths).
    num_shards / examples_per_shard: shard count, or records per shard (default 1024 per shard).
    num_workers: processes writing shards in parallel (1: inline).
    strict: raise `BadRawData` on the first bad example/annotation instead of skipping it.
    overwrite: discard an unfinished preparation made with other arguments.
    progress: show a tqdm progress bar.
  Returns:
    The manifest (also written to out_dir/manifest.json): {"dataset", "schema", "options",
    "metadata", "splits": {split: {num_records, num_items, shards: [{file, num_records, bytes,
    sha256, ids, num_instances}], issues: {counts, samples}, fingerprint, seconds}}}.
  """
  if not os.path.isdir(raw_dir):
    raise UserFileNotFoundError(f"raw_dir {raw_dir} is not a directory")
  preparer = base.get(dataset, **(options or {}))
  splits = list(splits or preparer.splits)
  out = pathlib.Path(out_dir)
  manifest_path = out / MANIFEST
  manifest = {"dataset": dataset, "schema": schema.SCHEMA_VERSION, "options": dict(options or {}),
              "metadata": {}, "splits": {}}
  if manifest_path.is_file():
    old = json.loads(manifest_path.read_text())
    if old.get("dataset") == dataset and old.get("options") == manifest["options"]:
      manifest["splits"].update(old.get("splits", {}))
      manifest["metadata"] = old.get("metadata", {})
  for split in splits:
    result = prepare_split(dataset, raw_dir, out_dir, split, options=options, num_shards=num_shards,
                           examples_per_shard=examples_per_shard, num_workers=num_workers, strict=strict,
                           overwrite=overwrite, progress=progress)
    manifest["splits"][split] = result["entry"]
    manifest["metadata"] = result["metadata"] or manifest["metadata"]
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, manifest_path)
    shutil.rmtree(out / PROGRESS_DIR / split, ignore_errors=True)
    counts = result["entry"]["issues"]["counts"]
    log.info("%s/%s: %d records in %d shards; skipped %s, dropped %s", dataset, split,
             result["entry"]["num_records"], len(result["entry"]["shards"]),
             counts["skipped_examples"] or "none", counts["dropped_annotations"] or "none")
  progress_root = out / PROGRESS_DIR
  if progress_root.is_dir() and not any(progress_root.iterdir()):
    progress_root.rmdir()
  return manifest


def read_manifest(dataset_dir: str | os.PathLike) -> dict[str, Any]:
  path = pathlib.Path(dataset_dir) / MANIFEST
  if not path.is_file():
    raise UserFileNotFoundError(f"{path} not found: prepare the dataset first (dinoseg data prepare)")
  manifest = json.loads(path.read_text())
  if manifest.get("schema") != schema.SCHEMA_VERSION:
    raise UserValueError(f"{path} was written with record schema {manifest.get('schema')}, this dinoseg reads "
                         f"{schema.SCHEMA_VERSION}: prepare the dataset again")
  return manifest


def verify(dataset_dir: str | os.PathLike, splits: Sequence[str] | None = None) -> dict[str, list[str]]:
  """Checks every shard's size and SHA-256 against the manifest; returns {split: [problems]}."""
  manifest = read_manifest(dataset_dir)
  problems = {}
  for split, entry in manifest["splits"].items():
    if splits and split not in splits:
      continue
    bad = []
    for shard in entry["shards"]:
      path = pathlib.Path(dataset_dir) / shard["file"]
      if not path.is_file():
        bad.append(f"{shard['file']}: missing")
      elif path.stat().st_size != shard["bytes"] or sha256_file(path) != shard["sha256"]:
        bad.append(f"{shard['file']}: checksum mismatch")
    problems[split] = bad
  return problems


__all__ = ["prepare", "prepare_split", "read_manifest", "verify", "shard_ranges", "shard_file_name", "MANIFEST"]
