"""Talk2DINO training as a task: projection training on the cached features of `features.py`.

`fit(config, workdir)` (`dinoseg talk2dino train`) runs the reference recipe end to end (see
`training.py`): `data.num_epochs` epochs over shuffled caption batches (the last one padded, its
padding masked out of the loss), one validation pass per `data.eval_every_epochs` with the
averaged image features, an Orbax checkpoint of (step, projection params, Adam state) per
`data.checkpoint_every_epochs` (a restarted run resumes after the last saved epoch), and at the
end the projection exported in the reference layout (`projection.safetensors`, keys
`linear_layer.*`, `hidden_layers.0.*`) and as Flax msgpack (`projection.msgpack`). Metrics go to
`metrics.jsonl` in the workdir. `Talk2DinoTask` is the same training as a plug-in of the shared
trainer (`dinoseg train`), counted in steps (`train.num_steps`).
"""
import functools
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dinoseg import jsonio
from dinoseg.models.talk2dino import training
from dinoseg.models.talk2dino.features import CaptionBatches, CaptionFeatureSource, caption_batches
from dinoseg.models.talk2dino.projection import TextProjection


def feature_dirs(config) -> tuple[pathlib.Path, pathlib.Path]:
  """(train, val) feature directories: config.features.out_dir/<train split key>, .../val."""
  root = pathlib.Path(config.features.out_dir)
  return root / "train", root / "val"


def build_projection(config) -> TextProjection:
  return TextProjection(embed_dim=int(config.model.embed_dim), num_hidden_layers=int(config.model.num_hidden_layers),
                        activation=str(config.model.activation))


def _optimizer(config):
  o = config.optimizer
  if float(o.get("clip_grad_norm", 0.0)) or o.get("schedule", "constant") != "constant" or o.get("warmup_steps", 0):
    raise ValueError("`dinoseg talk2dino train` runs the reference recipe only (constant learning rate, no "
                     "clipping, no warmup); use `dinoseg train` for other optimizer settings")
  return training.make_optimizer(o.name, o.learning_rate, o.weight_decay, o.b1, o.b2, o.eps)


def export_projection(params, workdir: pathlib.Path) -> dict[str, pathlib.Path]:
  """Writes the projection in the reference layout (.safetensors) and as Flax msgpack."""
  from safetensors.numpy import save_file  # noqa: PLC0415

  from dinoseg.models.talk2dino.convert import projection_to_torch  # noqa: PLC0415
  from dinoseg.models.talk2dino.weights import save_flax_params  # noqa: PLC0415
  workdir.mkdir(parents=True, exist_ok=True)
  state = {k: np.ascontiguousarray(v, np.float32) for k, v in projection_to_torch(jax.device_get(params)).items()}
  paths = {"safetensors": workdir / "projection.safetensors", "msgpack": workdir / "projection.msgpack"}
  save_file(state, str(paths["safetensors"]))
  save_flax_params(jax.device_get(params), paths["msgpack"])
  return paths


def evaluate_loss(projection, params, source, batch_size: int) -> float:
  """Mean of the per-batch validation losses (reference `validate`)."""
  step = jax.jit(functools.partial(training.eval_step, projection))
  losses = [float(step(params, batch)["loss"]) for batch in caption_batches(source, batch_size, 0, 0, shuffle=False)]
  return float(np.mean(losses)) if losses else float("nan")


def fit(config, workdir: str, progress: bool = True) -> dict[str, Any]:
  """Trains the projection; returns {"train_loss": [...per epoch], "val_loss": [...], "exported": paths}."""
  import orbax.checkpoint as ocp  # noqa: PLC0415
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  train_dir, val_dir = feature_dirs(config)
  t = config.data
  train_source = CaptionFeatureSource(train_dir, t.image_feature)
  val_source = CaptionFeatureSource(val_dir, t.val_image_feature) if (val_dir / "manifest.json").exists() else None
  text_dim = int(train_source[0]["text"].shape[-1])
  projection, optimizer = build_projection(config), _optimizer(config)
  state = training.init_state(projection, optimizer, jax.random.key(int(config.seed)), text_dim)
  step_fn = jax.jit(functools.partial(training.train_step, projection, optimizer), donate_argnums=0)

  manager = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(max_to_keep=2))
  start_epoch = 0
  if manager.latest_step() is not None:
    epoch = manager.latest_step()
    state = manager.restore(epoch, args=ocp.args.StandardRestore(jax.device_get(state)))
    start_epoch = epoch
    print(f"resumed from {workdir / 'checkpoints'} after epoch {epoch}")
  log = (workdir / "metrics.jsonl").open("a")
  history = {"train_loss": [], "val_loss": []}
  for epoch in range(start_epoch, int(t.num_epochs)):
    t0, losses = time.perf_counter(), []
    for batch in caption_batches(train_source, int(t.batch_size), int(config.seed), epoch, bool(t.shuffle)):
      state, metrics = step_fn(state, {k: jnp.asarray(v) for k, v in batch.items()})
      losses.append(metrics["loss"])
      every = int(config.train.get("log_every_steps", 0))
      if every and int(state.step) % every == 0:
        log.write(jsonio.dumps({"step": int(state.step), "epoch": epoch, "loss": float(metrics["loss"]),
                                "grad_norm": float(metrics["grad_norm"])}) + "\n")
    train_loss = float(np.mean([float(x) for x in losses]))
    record = {"epoch": epoch + 1, "train_loss": train_loss, "seconds": time.perf_counter() - t0}
    if val_source is not None and (epoch + 1) % max(int(t.eval_every_epochs), 1) == 0:
      record["val_loss"] = evaluate_loss(projection, state.params, val_source, int(t.batch_size))
      history["val_loss"].append(record["val_loss"])
    history["train_loss"].append(train_loss)
    log.write(jsonio.dumps(record) + "\n")  # NaN -> null
    log.flush()
    if progress:
      print(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    if (epoch + 1) % max(int(t.checkpoint_every_epochs), 1) == 0 or epoch + 1 == int(t.num_epochs):
      manager.save(epoch + 1, args=ocp.args.StandardSave(jax.device_get(state)))
  manager.wait_until_finished()
  log.close()
  history["exported"] = {k: str(v) for k, v in export_projection(state.params, workdir).items()}
  history["state"] = state
  return history


# --------------------------------------------------------------------------- shared-trainer plug-in


def _text_dim(config) -> int:
  """Width of the CLIP text embeddings the projection takes (CLIP ViT-B/16: 512)."""
  from dinoseg.backbones.clip_text import CLIP_TEXT_VARIANTS  # noqa: PLC0415
  overrides = dict(config.model.get("clip_text_overrides", {}) or {})
  return int(overrides.get("embed_dim", CLIP_TEXT_VARIANTS[config.model.get("clip_text", "clip_vitb16_text")]
                           ["embed_dim"]))


class _ValidationLoss:
  """Evaluator: the mean of the per-batch validation losses (reference `validate`)."""

  def __init__(self):
    self.losses = []

  def update(self, batch, predictions) -> None:
    if np.asarray(batch["valid"]).any():
      self.losses.append(float(np.asarray(predictions["loss"]).reshape(-1)[0]))

  def result(self) -> dict[str, float]:
    return {"val_loss": float(np.mean(self.losses)) if self.losses else float("nan"),
            "num_batches": len(self.losses)}


def _register_task():
  from dinoseg.train import task as train_task  # noqa: PLC0415

  @train_task.register("talk2dino")
  class Talk2DinoTask(train_task.Task):
    """Talk2DINO projection training for `dinoseg train`.

    Params: the projection only (the image features are cached, `dinoseg talk2dino extract`); of
    `config.init` the trainer applies `init.projection` (e.g. to continue from a released projection).
    Batches: `features.CaptionBatches` over `features.out_dir/train` (disentangled features, one
    sample per caption, reshuffled every epoch, padded last batch); validation: the mean
    per-batch InfoNCE over `features.out_dir/val` with the averaged features.
    """

    def __init__(self, config):
      super().__init__(config)
      self.projection = build_projection(config)
      self.text_dim = _text_dim(config)

    def init_variables(self, rng):
      return {"params": self.projection.init(rng, jnp.zeros((1, self.text_dim), jnp.float32))["params"]}

    def init_converters(self):
      from dinoseg.models.talk2dino.model import build_model  # noqa: PLC0415
      from dinoseg.models.talk2dino.weights import init_converters  # noqa: PLC0415
      return {**super().init_converters(), **init_converters(build_model(self.config.model))}

    def init_entries(self, entries):
      """The projection entry only (retargeted to these params, which are the projection, and optional:
      training starts it random); DINOv2 and CLIP text were read when the features were extracted."""
      import dataclasses  # noqa: PLC0415

      from dinoseg.convert.init import rebase  # noqa: PLC0415
      rebased = rebase(entries, ("projection",), "read by feature extraction (dinoseg talk2dino extract), "
                       "not by projection training")
      return [dataclasses.replace(e, required=False) for e in rebased]

    def loss_fn(self, params, model_state, batch, rng, *, train=True):
      loss = training.batch_loss(self.projection, params, batch)
      return loss, {"infonce": loss}

    def train_iterator(self, process_index, process_count):
      import grain  # noqa: PLC0415
      d = self.config.data
      source = CaptionFeatureSource(feature_dirs(self.config)[0], d.image_feature)
      batches = CaptionBatches(source, int(d.batch_size), int(self.config.seed), bool(d.shuffle), None,
                               process_index, process_count)
      return iter(grain.MapDataset.source(batches).to_iter_dataset())

    def predict_fn(self, params, model_state, batch):
      loss = training.batch_loss(self.projection, params, batch)
      return {"loss": jnp.broadcast_to(loss, batch["valid"].shape)}

    def eval_iterator(self, process_index, process_count):
      val_dir = feature_dirs(self.config)[1]
      if not (val_dir / "manifest.json").exists():
        return None
      d = self.config.data
      source = CaptionFeatureSource(val_dir, d.val_image_feature)
      batches = CaptionBatches(source, int(d.batch_size), 0, False, 1, process_index, process_count)
      return (batches[s] for s in range(len(batches)))

    def evaluator(self):
      return _ValidationLoss()

    def evaluate_weights(self, path, workdir):
      """`dinoseg eval --weights`: the open-vocabulary benchmarks of `config.eval` (mIoU per
      benchmark, JSON + the paper's table), as `dinoseg talk2dino eval` runs them."""
      del workdir
      from dinoseg.models.talk2dino.evaluate import run_evaluation  # noqa: PLC0415
      return run_evaluation(self.config, path, None, progress=True)

  return Talk2DinoTask


try:  # the shared trainer is optional for the rest of this module
  Talk2DinoTask = _register_task()
except ImportError:  # pragma: no cover
  Talk2DinoTask = None

__all__ = ["fit", "export_projection", "evaluate_loss", "build_projection", "feature_dirs", "Talk2DinoTask"]
