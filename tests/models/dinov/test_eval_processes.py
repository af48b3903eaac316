"""DINOv protocols during training and over several processes (dinoseg.models.dinov.evaluate / bank / task).

Default tests: the bank merge on the shares of two processes (equal to the one-process bank, both filing
orders), the gather's wire format, the eval batches of two processes put back in the one-process order (the
real data pipeline), the task's evaluator switch and its cache, and the protocols run by the trainer every
`eval_every_steps` (eval/step_<N>.json, keep_best; the protocols' computation replaced by a function of the
parameters, the model by a tiny stand-in). Slow: two local jax.distributed processes on the :tiny config
(merged bank == one-process bank, metrics == one-process metrics) and the real protocols compiled once over two
evaluations.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_bank import _filing_examples, _InstanceEncoder

from dinoseg.config import load_config
from dinoseg.models.dinov import bank as bank_lib
from dinoseg.models.dinov import evaluate as evaluate_lib
from dinoseg.train import task as task_lib

TINY = "configs/dinov/swint_sam_coco.py:tiny"
ROOT = pathlib.Path(__file__).resolve().parents[3]


def _examples():
  """Six images (the filing examples, repeated with new ids, one without instances, one with an empty mask)."""
  base, names = _filing_examples()
  out = []
  for k in range(3):
    for ex in base:
      out.append(bank_lib.Example(ex.image_id + 100 * k, ex.image.copy(), ex.masks, ex.category_ids,
                                  ex.instance_ids + 1000 * k))
  out[3] = bank_lib.Example(out[3].image_id, out[3].image, out[3].masks[:0], out[3].category_ids[:0],
                            out[3].instance_ids[:0])
  return out, names


def _assert_same_bank(a, b):
  assert a.names == b.names and a.dim == b.dim and a.source == b.source
  for c in a.names:
    np.testing.assert_array_equal(a.embeddings[c], b.embeddings[c])
    np.testing.assert_array_equal(a.image_ids[c], b.image_ids[c])
    np.testing.assert_array_equal(a.instance_ids[c], b.instance_ids[c])


@pytest.mark.parametrize("order", ["clean", "reference"])
def test_merged_shares_of_two_processes_equal_the_one_process_bank(order):
  examples, names = _examples()
  config = load_config(TINY)
  encoder = _InstanceEncoder(config)
  one = bank_lib.build_bank(encoder, examples, names, source="s", order=order)
  assert sum(one.count(c) for c in names) > 8  # something to order
  shares = [bank_lib.encode_examples(encoder, examples, names, order, process_index=p, process_count=2)
            for p in range(2)]
  assert {int(i) for i in shares[0].example_index} == {0, 2, 4} and {int(i) for i in shares[1].example_index} == {1, 5}
  for parts in (shares, shares[::-1]):  # the process order of the gather does not matter
    merged = bank_lib.bank_from_rows(bank_lib.merge_bank_rows(parts), names, encoder.dim, source="s")
    _assert_same_bank(merged, one)
  # an iterator (not a sequence) is walked and shared the same way; max_examples counts source examples
  walked = bank_lib.encode_examples(encoder, iter(examples), names, order, process_index=1, process_count=2,
                                    max_examples=5)
  assert {int(i) for i in walked.example_index} == {1}
  first5 = bank_lib.build_bank(encoder, examples[:5], names, source="s", order=order)
  parts = [bank_lib.encode_examples(encoder, examples, names, order, process_index=p, process_count=2,
                                    max_examples=5) for p in range(2)]
  _assert_same_bank(bank_lib.bank_from_rows(bank_lib.merge_bank_rows(parts), names, encoder.dim, "s"), first5)
  with pytest.raises(ValueError, match="two processes"):  # overlapping shares are a bug, not a silent duplicate
    bank_lib.merge_bank_rows([shares[0], shares[0]])
  with pytest.raises(ValueError):
    bank_lib.encode_examples(encoder, examples, names, order, process_index=2, process_count=2)


def test_gather_wire_keeps_int64_and_one_process_is_identity():
  ids = np.asarray([2 ** 40 + 3, -5, 7], np.int64)
  wire = bank_lib._to_wire(ids)
  assert wire.dtype == np.int32 and wire.shape == (3, 2)
  np.testing.assert_array_equal(bank_lib._from_wire(wire, ids), ids)
  flags = np.asarray([True, False])
  assert bank_lib._from_wire(bank_lib._to_wire(flags), flags).dtype == bool
  with pytest.raises(ValueError, match="float64"):
    bank_lib._to_wire(np.zeros(2))
  arrays = {"a": np.arange(3), "b": np.ones((3, 2), np.float32)}
  (only,) = bank_lib.gather_over_processes(arrays)
  assert only.keys() == arrays.keys() and all((only[k] == arrays[k]).all() for k in arrays)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  from dinoseg.data_pipelines import synth, writer
  root = tmp_path_factory.mktemp("dinov_processes")
  synth.synthesize("coco_panoptic", str(root / "raw"), num_images=5, image_size=(40, 72), max_objects=3, seed=1,
                   splits=("train", "val"))
  writer.prepare("coco_panoptic", str(root / "raw"), str(root / "coco"), splits=("train", "val"), num_shards=1,
                 progress=False)
  return root / "coco"


def test_prepared_examples_are_a_sequence_decoded_on_access(prepared):
  examples, names = bank_lib.examples_from_prepared(prepared, "train")
  assert len(examples) == 5 and names
  walked = list(examples)
  assert [ex.image_id for ex in walked] == [examples[i].image_id for i in range(5)]
  assert examples[-1].image_id == walked[4].image_id and [ex.image_id for ex in examples[1:3]] == [
      walked[1].image_id, walked[2].image_id]
  with pytest.raises(IndexError):
    examples[5]
  first = walked[0]
  assert first.masks.dtype == bool and first.masks.shape[1:] == first.image.shape[:2]
  assert len(first.category_ids) == len(first.instance_ids) == len(first.masks)


def test_two_processes_eval_batches_interleave_into_the_one_process_batches(prepared):
  """The real eval pipeline: per step, the batches of processes 0 and 1, interleaved, are the one-process batch
  (5 images, global batch 4: two steps, the last padded)."""
  from dinoseg.data_pipelines import build_eval_iterator
  config = load_config(TINY, [f"data.coco.path={prepared}", "data.coco.eval_split=val", "data.coco.eval_batch_size=4"])
  keys = ("image_id", "original_hw", "example_valid", "valid_hw")
  one = [{k: b[k] for k in keys} for b in build_eval_iterator(config.data.coco, 0, 1)]
  per_process = [[{k: b[k] for k in keys} for b in build_eval_iterator(config.data.coco, p, 2)] for p in range(2)]
  assert len(one) == len(per_process[0]) == len(per_process[1]) == 2
  for step, full in enumerate(one):
    merged = evaluate_lib.interleave_process_rows([per_process[0][step], per_process[1][step]])
    assert merged.keys() == full.keys()
    for k in keys:
      np.testing.assert_array_equal(merged[k], full[k], err_msg=k)
  assert int(one[1]["example_valid"].sum()) == 1  # the padding rows stay marked
  with pytest.raises(ValueError):
    evaluate_lib.interleave_process_rows([])


def test_task_evaluator_only_with_eval_every_steps_and_one_cache(monkeypatch):
  seen = []

  def fake(model, variables, cfg, cache=None):
    seen.append((model, cache, float(np.asarray(variables["params"]["w"]).sum())))
    cache["compiled"] = cache.get("compiled", 0) + 1
    return {"PQ": float(len(seen))}
  monkeypatch.setattr(evaluate_lib, "run_protocols", fake)
  assert task_lib.build(load_config(TINY)).evaluator() is None  # eval_every_steps 0: no training-time protocols
  task = task_lib.build(load_config(TINY, ["train.eval_every_steps=2", "train.compute_dtype=bfloat16"]))
  evaluator = task.evaluator()
  assert isinstance(evaluator, evaluate_lib.ProtocolEvaluator) and task.evaluator() is evaluator
  with pytest.raises(ValueError, match="no DINOv evaluation"):
    evaluator.result()
  with pytest.raises(TypeError, match="eval batches"):
    evaluator.update({}, {})
  assert task.evaluate({"params": {"w": jnp.ones(3)}}) == {"PQ": 1.0}
  assert task.evaluate({"params": {"w": np.full(3, 2.0)}}) == {"PQ": 2.0} == evaluator.result()
  assert seen[0][0] is seen[1][0] and seen[0][1] is seen[1][1] and seen[1][1] == {"compiled": 2}
  assert [s[2] for s in seen] == [3.0, 6.0]
  assert seen[0][0].predictor.dtype == jnp.float32 and task.model.predictor.dtype == jnp.bfloat16  # fp32 protocols
  from dinoseg.errors import UserValueError
  config = load_config(TINY, ["train.eval_every_steps=2"])
  with config.unlocked():
    del config["evaluation"]
  no_group = task_lib.build(config)
  assert no_group.evaluator() is None
  with pytest.raises(UserValueError, match="no `evaluation` group"):
    no_group.evaluate({"params": {}})
  # a training run that would evaluate without data stops before its first step, not at its first evaluation
  with pytest.raises(UserValueError, match="data.coco.path"):
    task_lib.build(load_config(TINY, ["train.eval_every_steps=2", "data.coco.path="])).evaluator()


class _Batches:
  """Endless batches {"x": (8, 2)} with the iterator state the trainer checkpoints."""

  def __init__(self):
    self.n = 0

  def __iter__(self):
    return self

  def __next__(self):
    self.n += 1
    return {"x": np.full((8, 2), 1.0, np.float32)}

  def get_state(self):
    return {"n": self.n}

  def set_state(self, state):
    self.n = int(state["n"])


def test_trainer_runs_the_protocols_every_eval_every_steps(tmp_path, monkeypatch):
  """trainer.train with DINOvTask's evaluation (its model and loss replaced by a 2-parameter stand-in): the
  protocols run at steps 2 and 4 with the current parameters, eval/step_<N>.json and the metrics log hold their
  results, keep_best keeps the best PQ, and the one ProtocolEvaluator (its cache) serves both evaluations."""
  from dinoseg.models.dinov.task import DINOvTask
  from dinoseg.train import trainer
  from dinoseg.train.metrics import read_jsonl

  class StandIn(DINOvTask):
    compute_dtype_inputs = ("x",)

    def init_variables(self, rng):
      return {"params": {"w": jnp.zeros((2,), jnp.float32)}}

    def loss_fn(self, params, model_state, batch, rng, *, train=True):
      loss = jnp.mean((batch["x"] - params["w"][None]) ** 2)
      return loss, {"loss": loss}

    def train_iterator(self, process_index, process_count):
      return _Batches()

    def init_entries(self, entries):
      return []  # no Swin backbone in the stand-in

  caches = []

  def fake(model, variables, cfg, cache=None):
    caches.append(cache)
    w = np.asarray(variables["params"]["w"])
    assert isinstance(w, np.ndarray)  # host arrays
    return {"PQ": float(100 * w.mean()), "bank_source": "stand-in", "categories_without_examples": [3]}
  monkeypatch.setattr(evaluate_lib, "run_protocols", fake)
  config = load_config(TINY, ["train.eval_every_steps=2", "train.num_steps=4", "train.checkpoint_every_steps=2",
                              "train.keep_last=1", "train.keep_best=1", "train.best_metric=PQ",
                              "train.progress=false", "optimizer.learning_rate=0.1", "optimizer.weight_decay=0.0"])
  result = trainer.train(config, str(tmp_path), task=StandIn(config))
  assert result.step == 4 and len(caches) == 2 and caches[0] is caches[1]
  step2 = json.loads((tmp_path / "eval" / "step_2.json").read_text())["results"]
  step4 = json.loads((tmp_path / "eval" / "step_4.json").read_text())["results"]
  assert 0.0 < step2["PQ"] < step4["PQ"] <= 100.0  # the parameters move towards 1 between the evaluations
  assert step4["bank_source"] == "stand-in" and result.eval_results["PQ"] == step4["PQ"]
  logged = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "eval/PQ" in r]
  assert [r["step"] for r in logged] == [2, 4] and logged[1]["eval/PQ"] == pytest.approx(step4["PQ"])
  assert not any("eval/bank_source" in r for r in logged)  # only numbers reach the scalar logs
  kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == [4]  # the last one is also the best PQ


@pytest.mark.slow
def test_tiny_training_run_evaluates_the_protocols(prepared, tmp_path):
  """The real thing on :tiny (`dinoseg train` in a one-device subprocess; 2.5 minutes on 2 busy cores, most of it
  compiling the train step): 2 steps,
  the protocols at step 2 (bank from the first 3 train images, 5 val images), eval/step_2.json, the eval scalars
  and keep_best on PQ."""
  from dinoseg.data_pipelines import synth, writer
  from dinoseg.train.metrics import read_jsonl
  synth.synthesize("sa1b", str(tmp_path / "raw_sam"), num_images=2, image_size=(64, 64), max_objects=3, seed=1)
  writer.prepare(synth.PREPARER_FOR_LAYOUT["sa1b"], str(tmp_path / "raw_sam"), str(tmp_path / "sam"), num_shards=1,
                 progress=False)
  overrides = [f"data.coco.path={prepared}", f"data.sam.path={tmp_path / 'sam'}", "data.coco.train_split=train",
               "data.coco.eval_split=val", "model.msda_impl=xla", "evaluation.bank_max_images=3",
               "evaluation.num_examples=2", "train.num_steps=2", "train.eval_every_steps=2",
               "train.checkpoint_every_steps=2", "train.keep_last=1", "train.keep_best=1", "train.best_metric=PQ",
               "train.progress=false"]
  run = tmp_path / "run"  # one device (the tiny batches of 2 do not divide over this session's 8 fake devices)
  proc = subprocess.run([sys.executable, "-m", "dinoseg.cli", "train", f"--config={TINY}", f"--workdir={run}",
                         *[f"--config.{o}" for o in overrides]], env=_env(1), cwd=ROOT, capture_output=True,
                        text=True, timeout=1500)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
  saved = json.loads((run / "eval" / "step_2.json").read_text())["results"]
  assert saved["num_images"] == 5 and saved["bank_source"] == f"{prepared}:train[:3]"
  assert 0.0 <= saved["PQ"] <= 100.0 and saved["num_examples"] == 2
  logged = [r for r in read_jsonl(run / "metrics.jsonl") if "eval/PQ" in r]
  assert logged[0]["eval/PQ"] == pytest.approx(saved["PQ"])
  assert [r["step"] for r in logged] == [2]


# ----------------------------------------------------------------------------- several processes (slow)

CHILD = r"""
import json, pathlib, sys
import absl.flags
absl.flags.FLAGS.mark_as_parsed()
import jax
import flax.serialization
import numpy as np
config_spec, coco, weights, out, port, nproc, pid = sys.argv[1:8]
if int(nproc) > 1:
  jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=int(nproc), process_id=int(pid))
from dinoseg.config import load_config
from dinoseg.models.dinov import bank as bank_lib, evaluate
from dinoseg.models.dinov.model import build_model
config = load_config(config_spec, [f"data.coco.path={coco}", "data.coco.train_split=train", "data.coco.eval_split=val",
                                   "data.coco.eval_batch_size=2", "evaluation.num_examples=3", "model.msda_impl=xla"])
model = build_model(config.model)
template = jax.eval_shape(model.init, jax.random.key(0), jax.numpy.zeros((1, 64, 64, 3)))
variables = flax.serialization.from_bytes(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template),
                                          pathlib.Path(weights).read_bytes())
encoder = bank_lib.PromptBankEncoder(model, variables, config, slots=int(config.evaluation.bank_slots))
examples, names = bank_lib.examples_from_prepared(coco, "train")
bank = bank_lib.build_bank(encoder, examples, names, process_index=jax.process_index(),
                           process_count=jax.process_count())
# the parameters as a training run holds them: global arrays over every process's devices, the leaves whose first
# axis divides split over the devices (so that no process holds all of them), the others replicated
from jax.sharding import Mesh, NamedSharding, PartitionSpec
mesh = Mesh(np.asarray(jax.devices()), ("data",))
def place(x):
  x = np.asarray(x)
  spec = PartitionSpec("data") if x.ndim and x.shape[0] % jax.device_count() == 0 else PartitionSpec()
  return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: x[index])
placed = jax.tree.map(place, variables)
spread = sum(not leaf.is_fully_addressable for leaf in jax.tree.leaves(placed))
evaluator = evaluate.ProtocolEvaluator(config)
metrics = evaluator.evaluate(placed)
compiled = evaluator.cache["bank_encoder"]._encode._cache_size()
again = evaluator.evaluate(placed)
predicts = [v for k, v in evaluator.cache.items() if isinstance(k, tuple) and k[0] == "generic_predict"]
record = {"metrics": metrics, "again": again, "spread_leaves": spread,
          "encode_compiles": [compiled, evaluator.cache["bank_encoder"]._encode._cache_size()],
          "predict_compiles": [p._cache_size() for p in predicts], "processes": jax.process_count()}
np.savez(f"{out}/bank_{pid}.npz", **{f"{k}.{c}": getattr(bank, k)[c] for k in ("embeddings", "image_ids",
                                                                              "instance_ids") for c in bank.names})
pathlib.Path(f"{out}/result_{pid}.json").write_text(json.dumps(record, default=float))
"""


def _env(devices: int) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env.update(XLA_FLAGS=" ".join([f"--xla_force_host_platform_device_count={devices}"] + flags), JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="2")
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _children(nproc: int, prepared, weights, out, timeout=900):
  out.mkdir()
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-c", CHILD, TINY, str(prepared), str(weights), str(out), str(port),
                             str(nproc), str(p)], env=_env(1), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for p in range(nproc)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=timeout))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (o, e) in zip(procs, outputs):
    assert p.returncode == 0, o + e[-4000:]
  return [json.loads((out / f"result_{p}.json").read_text()) for p in range(nproc)]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_build_the_one_process_bank_and_metrics(prepared, tmp_path):
  """2 jax.distributed processes vs 1 on the :tiny config (random weights, a synthetic COCO panoptic set of 5
  train / 5 val images): every process holds the one-process bank (the same embeddings, ids and order) and
  ProtocolEvaluator, given the parameters as global arrays split over the processes' devices, reports the
  one-process metrics on every process; its second evaluation compiles nothing new."""
  import flax.serialization

  from dinoseg.models.dinov.model import build_model
  config = load_config(TINY, ["model.msda_impl=xla"])
  model = build_model(config.model)
  variables = jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, 64, 64, 3)))
  weights = tmp_path / "w.msgpack"
  weights.write_bytes(flax.serialization.to_bytes(jax.device_get(variables)))
  one = _children(1, prepared, weights, tmp_path / "one")
  two = _children(2, prepared, weights, tmp_path / "two")
  assert one[0]["processes"] == 1 and two[0]["processes"] == 2
  assert one[0]["spread_leaves"] == 0 and two[0]["spread_leaves"] > 0  # host_variables gathered them
  ref = np.load(tmp_path / "one" / "bank_0.npz")
  assert sum(ref[k].shape[0] for k in ref.files if k.startswith("embeddings.")) > 0
  for p in range(2):
    got = np.load(tmp_path / "two" / f"bank_{p}.npz")
    assert sorted(got.files) == sorted(ref.files)
    for k in ref.files:
      np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  expected = one[0]["metrics"]
  for p in range(2):
    for name in ("metrics", "again"):
      got = two[p][name]
      assert got.keys() == expected.keys()
      for k, v in expected.items():
        if isinstance(v, float):
          assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9, nan_ok=True), (p, name, k)
        else:
          assert got[k] == v, (p, name, k)
  assert expected["num_images"] == 5 and expected["bank_source"].endswith(":train")
  assert expected["PQ"] > 0 and expected["mIoU"] > 0  # (random weights: AP is 0, PQ and mIoU are not)
  for record in one + two:
    assert record["encode_compiles"] == [1, 1] and record["predict_compiles"] == [1]

