"""OV2Seg as a trainer plug-in (`config.task = "ov2seg"`; dinoseg/train/task.py).

Config groups it reads (configs/ov2seg/r50_lvis.py, defaults.py documents the fields): `model`, `loss`,
`vocabulary`, `data` (dinoseg.data_pipelines, task "instance": LVIS v1 train, `drop_rare` = the reference's
`lvis_v1_train_norare`, `repeat_threshold` = its RepeatFactorTrainingSampler), `train.compute_dtype`, `init`,
`test` (evaluation, dinoseg.models.ov2seg.evaluate).

- Training batch (docs/data.md): image (B, H, W, 3) uint8 on the canvas (LSJ 1024), valid_hw, labels / boxes /
  valid / masks (B, T, ...). The model runs with the training vocabulary's class embeddings (a constant of the
  step, `class_embeddings(data.train_split)`), the loss is criterion.OV2SegCriterion (matcher, federated sigmoid
  class loss, objectness CE, point-sampled mask BCE / dice, deep supervision over all predictions); its point
  draws and the federated category draw come from the step's rng.
- Federated weights: image_count ** 0.5 per category, counted in the prepared training split
  (data_pipelines.sampling.category_index, cached beside the dataset), rare categories (LVIS frequency 'r') 0.
- Vocabulary (`config.vocabulary.source`): "file" reads `vocabulary.train_file` for the training split (the
  DetPro `fg_bg_5_10_lvis_ens.npy`, rows in category-id order) and `vocabulary.file` (or the training file) for
  other splits; "names" encodes the dataset's category names with the CLIP text tower (`vocabulary.clip_file`,
  computed once per split); "random" (synthetic data and tests only; the config must say so) gives each category
  id a fixed seeded random unit vector, the same in every split and dataset.
- Evaluation (video AP on LV-VIS / YouTube-VIS / OVIS) is `evaluate.VideoEvaluation`'s, on the prepared video
  dataset `config.test.eval_path` (else `config.data.path`): a training run on LVIS images evaluates only when
  `test.eval_path` names a video dataset (the released config leaves it empty and its evaluation off, as the
  reference trains on LVIS and evaluates videos separately: `dinoseg eval --config.data.path=<prepared LV-VIS>`).
"""
import logging

import jax.numpy as jnp
import numpy as np

from dinoseg.errors import UserValueError
from dinoseg.models.maskdino import criterion as md_criterion
from dinoseg.models.ov2seg import criterion as criterion_lib
from dinoseg.models.ov2seg.evaluate import VideoEvaluation
from dinoseg.models.ov2seg.model import build_model
from dinoseg.structures import PaddedInstances
from dinoseg.train import task as task_lib

log = logging.getLogger(__name__)
VOCABULARY_SOURCES = ("file", "names", "random")


def _hw(value) -> tuple[int, int]:
  value = tuple(int(v) for v in (value if isinstance(value, (tuple, list)) else (value, value)))
  return value[0], value[1]


def random_class_embeddings(category_ids, dim: int, seed: int = 0) -> np.ndarray:
  """(C, dim) float32 unit rows, row i a fixed function of (seed, category_ids[i]) (vocabulary.source "random")."""
  rows = [np.random.default_rng((int(seed), int(c))).standard_normal(dim) for c in category_ids]
  out = np.asarray(rows, np.float64).reshape(len(rows), dim)
  return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@task_lib.register("ov2seg")
class OV2SegTask(VideoEvaluation, task_lib.Task):
  """OV2Seg training on LVIS (module docstring); evaluation from `VideoEvaluation`."""
  compute_dtype_inputs = ("image",)

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    dtype = task_lib.model_dtype(config)
    self.model = build_model(m, dtype)
    self.num_classes = int(m.num_classes)
    self._vocabulary = {}
    self._criterion = None
    self._datasets = {}
    source = self.vocabulary_settings().get("source", "file")
    if source not in VOCABULARY_SOURCES:
      raise UserValueError(f"config.vocabulary.source must be one of {VOCABULARY_SOURCES}, got {source!r}")

  # -- settings and data
  def vocabulary_settings(self) -> dict:
    return dict(self.config.get("vocabulary") or {})

  def _dataset(self, path: str):
    if path not in self._datasets:
      from dinoseg.data_pipelines import open_dataset  # noqa: PLC0415
      from dinoseg.errors import UserFileNotFoundError  # noqa: PLC0415
      if not path:
        raise UserValueError("config.data.path must name a prepared dataset (dinoseg data prepare --dataset=lvis)")
      try:
        self._datasets[path] = open_dataset(path)
      except UserFileNotFoundError as e:
        raise UserFileNotFoundError(f"config.data.path={path!r}: {e}") from None
    return self._datasets[path]

  @property
  def train_dataset(self):
    return self._dataset(str(self.config.data.get("path", "") or ""))

  def train_iterator(self, process_index, process_count):
    from dinoseg.data_pipelines import build_train_iterator  # noqa: PLC0415
    self._check_dataset_classes()
    return build_train_iterator(self.config.data, process_index, process_count)

  def _check_dataset_classes(self):
    have = len(self.train_dataset.categories)
    if have != self.num_classes:
      raise UserValueError(f"config.model.num_classes is {self.num_classes} but the dataset "
                           f"{self.config.data.path} has {have} categories")

  # -- evaluation: VideoEvaluation's, when config.test.eval_path (else data.path) is a video dataset
  def _evaluates(self) -> bool:
    """True when `config.test.eval_path` (else `config.data.path`) names a prepared video dataset (LV-VIS,
    YouTube-VIS, OVIS): otherwise a training run on LVIS images has no evaluation in the trainer (the trainer asks
    `evaluator()` at the start of every run)."""
    from dinoseg.models.ov2seg.evaluate import eval_path_key  # noqa: PLC0415
    _, path = eval_path_key(self.config)
    return bool(path) and self._dataset(path).metadata.get("task") == "video"

  def eval_iterator(self, process_index, process_count):
    return super().eval_iterator(process_index, process_count) if self._evaluates() else None

  def evaluator(self):
    return super().evaluator() if self._evaluates() else None

  # -- vocabulary
  def class_embeddings(self, split: str, dataset=None) -> np.ndarray:
    """(C, E) float32 class embeddings of a dataset split's categories (sorted-id order = label order): the
    vocabulary the model is trained (train split) or evaluated with (module docstring). `dataset`: the prepared
    dataset the split belongs to (default: `config.data.path`)."""
    key = (split, id(dataset))
    if key in self._vocabulary:
      return self._vocabulary[key]
    from dinoseg.models.ov2seg import vocabulary as vocab_lib  # noqa: PLC0415
    s = self.vocabulary_settings()
    source = s.get("source", "file")
    dim = int(self.config.model.classifier.embed_dim)
    train_split = str(self.config.data.get("train_split", "train"))
    if source == "file":
      file = s.get("train_file") if split == train_split else (s.get("file") or s.get("train_file"))
      if not file:
        what = "train_file" if split == train_split else "file"
        raise UserValueError(f"config.vocabulary.{what} must name the (C, {dim}) class-embedding .npy of split "
                             f"{split!r} (e.g. fg_bg_5_10_lvis_ens.npy), or set config.vocabulary.source")
      expected = self.num_classes if split == train_split else None
      out = vocab_lib.read_class_embeddings(file, num_classes=expected, dim=dim)
    else:
      ds = dataset if dataset is not None else self.train_dataset
      if not ds.categories:
        raise UserValueError(f"dataset {ds.path} lists no categories to build a vocabulary from")
      if source == "random":
        out = random_class_embeddings(ds.category_ids, dim, int(s.get("random_seed", 0)))
      else:  # "names"
        clip_file = s.get("clip_file")
        if not clip_file:
          raise UserValueError("config.vocabulary.source='names' needs config.vocabulary.clip_file (an OpenAI CLIP "
                               "ViT-B/16 state dict)")
        names = vocab_lib.category_names(ds.categories)
        templates = tuple(s.get("templates") or ()) or vocab_lib.VILD_TEMPLATES
        out = vocab_lib.class_embeddings_from_names(
            names, clip_file, templates=templates, clip_name=str(s.get("clip_name") or "clip_vitb16_text"),
            clip_overrides=dict(s.get("clip_overrides") or {}))
        if out.shape[1] != dim:
          raise UserValueError(f"the CLIP text tower gives {out.shape[1]}-d embeddings; the classifier takes {dim}")
    out = np.asarray(out, np.float32)
    log.info("vocabulary of split %s: %d classes x %d (source %s)", split, out.shape[0], out.shape[1], source)
    self._vocabulary[key] = out
    return out

  # -- loss
  def federated_weights(self) -> np.ndarray:
    """(C,) image_count ** power of each category in the prepared training split, rare categories 0."""
    from dinoseg.data_pipelines import sampling  # noqa: PLC0415
    ds = self.train_dataset
    split = str(self.config.data.get("train_split", "train"))
    counts = sampling.category_index(ds, split).image_counts(ds.category_ids)
    by_id = {int(c["id"]): c for c in ds.categories}
    freqs = [by_id[i].get("frequency", "f") for i in ds.category_ids]
    return criterion_lib.federated_category_weights(counts, freqs, float(self.config.loss.federated_freq_power))

  @property
  def criterion(self) -> criterion_lib.OV2SegCriterion:
    if self._criterion is None:
      self._check_dataset_classes()
      self._criterion = criterion_lib.OV2SegCriterion(self.num_classes, self.config.loss,
                                                      class_weights=self.federated_weights())
    return self._criterion

  def loss_fn(self, params, model_state, batch, rng, *, train=True):
    split = str(self.config.data.get("train_split", "train"))
    embeddings = jnp.asarray(self.class_embeddings(split), jnp.float32)
    criterion = self.criterion
    out = self.model.apply({"params": params, **model_state}, batch["image"], embeddings, batch["valid_hw"])
    targets = PaddedInstances(labels=batch["labels"].astype(jnp.int32), boxes=batch["boxes"].astype(jnp.float32),
                              valid=batch["valid"].astype(bool), masks=batch["masks"])
    losses = criterion(out, targets, md_criterion.random_draws(rng))
    metrics = dict(losses)
    metrics["num_instances"] = jnp.sum(targets.valid.astype(jnp.float32))
    return criterion_lib.total_loss(losses), metrics

  # -- model and weights
  def init_variables(self, rng):
    h, w = _hw(self.config.data.image_size)
    embeddings = jnp.zeros((1, int(self.config.model.classifier.embed_dim)), jnp.float32)
    return self.model.init(rng, jnp.zeros((1, h, w, 3), jnp.float32), embeddings)

  def weights_converter(self):
    """Reference state dict <-> Flax variables for this config's model (convert.py, strict; `zs_weight` and the
    criterion buffers dropped on import): `variables_from_weights`, `config.init` "task", `dinoseg convert
    --config`."""
    from dinoseg.convert.registry import ModelConverter  # noqa: PLC0415
    from dinoseg.models.ov2seg import convert  # noqa: PLC0415
    model = self.config.model
    return ModelConverter(name="ov2seg (from the config)", variables=True,
                          to_flax=lambda state: convert.to_flax(state, model),
                          to_torch=lambda variables: convert.to_torch(variables, model),
                          abstract=lambda: convert.abstract_variables(model),
                          description="OV2Seg with the config's model settings")

  def init_converters(self):
    """"backbone" (the ImageNet-21K MIIL ResNet-50, `config.init.backbone`), "task", "orbax", and the registered
    released layouts ("ov2seg_r50_lvis", "ov2seg_swinb_lvis", registered by importing convert.py here)."""
    from dinoseg.models.ov2seg import convert  # noqa: F401, PLC0415
    return super().init_converters()


__all__ = ["OV2SegTask", "random_class_embeddings", "VOCABULARY_SOURCES"]
