"""dinoseg.data_pipelines: record schema, dataset preparers, synthetic data and grain pipelines
(installed as `dinoseg.data_pipelines`). docs/data.md documents the formats.

  writer.prepare(name, raw_dir, out_dir)          raw layout -> ArrayRecord shards + manifest.json
  synth.synthesize(layout, out_dir)               small synthetic raw datasets in each layout
  open_dataset(dir)                               random access to prepared records
  build_train_iterator(config.data, p, P)         grain training batches (checkpointable)
  build_eval_iterator(config.data, p, P)          grain evaluation batches (each example once)

Submodules are imported lazily so that `import dinoseg.data_pipelines` stays light.
"""
import importlib

_LAZY = {
    "build_train_iterator": "pipeline", "build_eval_iterator": "pipeline", "build_train_dataset": "pipeline",
    "build_eval_dataset": "pipeline", "default_config": "pipeline", "num_eval_batches": "pipeline",
    "open_dataset": "dataset", "PreparedDataset": "dataset", "prepare": "writer", "synthesize": "synth",
}
_SUBMODULES = ("schema", "writer", "preparers", "synth", "transforms", "dataset", "tasks", "pipeline",
               "tfds_builders")


def __getattr__(name):
  if name in _LAZY:
    module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
    return getattr(module, name)
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
