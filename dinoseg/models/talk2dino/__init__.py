"""Talk2DINO: open-vocabulary segmentation from DINOv2 patches and projected CLIP text.

Modules: `projection` (CLIP text -> DINOv2 space MLP), `pooling` (attention-head pooling and
max-score head selection), `loss` (the reference's symmetric InfoNCE), `model` (DINOv2 + CLIP
text + projection), `text` (class embeddings from prompt templates), `templates`, `classnames`
(benchmark class lists and settings), `background` (background cleaning), `pamr` (mask
refinement), `inference` (sliding-window segmentation), `convert` (projection weights),
`features` (feature pre-extraction), `task` (trainer plug-in: projection training), `predict`
(`dinoseg.load`'s predictor), `weights` (the `config.init` parts). See docs/talk2dino.md.

The names below are imported lazily, so importing a light sub-module (e.g. `convert`,
`classnames`) does not import JAX models.
"""
import importlib

_EXPORTS = {
    "Talk2Dino": "model", "ImageFeatures": "model", "build_model": "model", "init_params": "model",
    "TextProjection": "projection", "normalize": "projection",
    "cls_patch_logits": "pooling", "average_head_pooling": "pooling", "disentangled_head_pooling": "pooling",
    "max_score_similarity": "pooling",
    "infonce_loss": "loss", "clean_background": "background",
}


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
