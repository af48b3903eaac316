"""Talk2DINO projection training as a task of the shared trainer, on the cached features of `features.py`.

The reference recipe (`train.py`, `src/train_util.py`, `configs/vit*_mlp_infonce.yaml`): only the projection
is trained (image features are constants, cached by `dinoseg talk2dino extract`); training batches use the
disentangled head features with max-score head selection, validation the averaged features with a plain
cosine matrix; symmetric InfoNCE at temperature 0.07 (`loss.infonce_loss`, the padding of the last batch of
an epoch masked out); Adam (the trainer's AdamW with weight decay 0), constant learning rate, no clipping.

`dinoseg train` counts steps (`train.num_steps`); `dinoseg talk2dino train` is the same trainer with the
reference's epochs as steps (`epoch_overrides`: `data.num_epochs` x batches per epoch, validation every
`data.eval_every_epochs`, a checkpoint every `data.checkpoint_every_epochs`) and, at the end, the projection
exported in the reference layout (`projection.safetensors`, keys `linear_layer.*`, `hidden_layers.0.*`) and
as Flax msgpack (`projection.msgpack`). Weight files of the projection are read by
`Task.variables_from_weights` with `weights_converter` (a .pth / .safetensors / .npz in the reference layout,
a .msgpack, a training workdir or one of its checkpoints).
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.models.talk2dino.features import CaptionBatches, CaptionFeatureSource
from dinoseg.models.talk2dino.loss import infonce_loss
from dinoseg.models.talk2dino.pooling import max_score_similarity
from dinoseg.models.talk2dino.projection import TextProjection, normalize
from dinoseg.train import task as train_task


def feature_dirs(config) -> tuple[pathlib.Path, pathlib.Path]:
  """(train, val) feature directories: config.features.out_dir/<train split key>, .../val."""
  root = pathlib.Path(config.features.out_dir)
  return root / "train", root / "val"


def build_projection(config) -> TextProjection:
  return TextProjection(embed_dim=int(config.model.embed_dim), num_hidden_layers=int(config.model.num_hidden_layers),
                        activation=str(config.model.activation))


def batch_similarity(projection: TextProjection, params, batch) -> jax.Array:
  """(B, B) cosines texts x images: max-score head selection for (B, H, D) images, plain otherwise.

  Batches: {"image": (B, H, D) or (B, D), "text": (B, E), "valid": (B,) bool}."""
  text = normalize(projection.apply({"params": params}, batch["text"]))
  image = normalize(batch["image"].astype(jnp.float32))
  if image.ndim == 3:
    return max_score_similarity(text, image)[0]
  if image.ndim != 2:
    raise ValueError(f"batch['image'] must be (B, H, D) or (B, D), got shape {image.shape}")
  return text @ image.T


def batch_loss(projection: TextProjection, params, batch) -> jax.Array:
  """The InfoNCE loss of a batch (padding rows, valid=False, left out)."""
  return infonce_loss(batch_similarity(projection, params, batch), batch.get("valid"))


def epoch_overrides(config) -> list[str]:
  """Config overrides ("a.b=value") running the reference's epochs on the shared trainer: `train.num_steps` =
  data.num_epochs x batches per epoch (ceil(captions / data.batch_size) of the extracted training features),
  evaluation and checkpoints every data.eval_every_epochs / data.checkpoint_every_epochs epochs."""
  d = config.data
  per_epoch = -(-len(CaptionFeatureSource(feature_dirs(config)[0], d.image_feature)) // int(d.batch_size))
  return [f"train.num_steps={int(d.num_epochs) * per_epoch}",
          f"train.eval_every_steps={max(int(d.eval_every_epochs), 1) * per_epoch}",
          f"train.checkpoint_every_steps={max(int(d.checkpoint_every_epochs), 1) * per_epoch}"]


def export_projection(params, workdir: str | pathlib.Path) -> dict[str, pathlib.Path]:
  """Writes the projection in the reference layout (.safetensors) and as Flax msgpack into `workdir`."""
  from dinoseg.convert import readers  # noqa: PLC0415
  from dinoseg.models.talk2dino.convert import projection_to_torch  # noqa: PLC0415
  from dinoseg.models.talk2dino.weights import save_flax_params  # noqa: PLC0415
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  params = jax.device_get(params)
  state = {k: np.ascontiguousarray(v, np.float32) for k, v in projection_to_torch(params).items()}
  paths = {"safetensors": workdir / "projection.safetensors", "msgpack": workdir / "projection.msgpack"}
  readers.write_safetensors(state, paths["safetensors"])
  save_flax_params(params, paths["msgpack"])
  return paths


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

  def weights_converter(self):
    """The reference projection layout (`linear_layer.*`, `hidden_layers.{i}.*`; widths checked against the
    config's by `variables_from_weights`)."""
    from dinoseg.convert.registry import ModelConverter  # noqa: PLC0415
    from dinoseg.models.talk2dino.convert import projection_to_flax, projection_to_torch  # noqa: PLC0415
    return ModelConverter(name="talk2dino projection (from the config)", to_flax=projection_to_flax,
                          to_torch=projection_to_torch, description="Talk2DINO projection")

  def init_converters(self):
    from dinoseg.models.talk2dino.model import build_model  # noqa: PLC0415
    from dinoseg.models.talk2dino.weights import init_converters  # noqa: PLC0415
    return {**super().init_converters(), **init_converters(build_model(self.config.model), self)}

  def init_entries(self, entries):
    """The projection entry only (retargeted to these params, which are the projection, and optional:
    training starts it random); DINOv2 and CLIP text were read when the features were extracted."""
    import dataclasses  # noqa: PLC0415

    from dinoseg.convert.init import rebase  # noqa: PLC0415
    rebased = rebase(entries, ("projection",), "read by feature extraction (dinoseg talk2dino extract), "
                     "not by projection training")
    return [dataclasses.replace(e, required=False) for e in rebased]

  def loss_fn(self, params, model_state, batch, rng, *, train=True):
    loss = batch_loss(self.projection, params, batch)
    return loss, {"infonce": loss}

  def train_iterator(self, process_index, process_count):
    import grain  # noqa: PLC0415
    d = self.config.data
    source = CaptionFeatureSource(feature_dirs(self.config)[0], d.image_feature)
    batches = CaptionBatches(source, int(d.batch_size), int(self.config.seed), bool(d.shuffle), None,
                             process_index, process_count)
    return iter(grain.MapDataset.source(batches).to_iter_dataset())

  def predict_fn(self, params, model_state, batch):
    loss = batch_loss(self.projection, params, batch)
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


__all__ = ["export_projection", "epoch_overrides", "build_projection", "batch_similarity", "batch_loss", "feature_dirs",
           "Talk2DinoTask"]
