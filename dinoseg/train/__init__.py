"""Training and evaluation runtime shared by every system (docs/training.md).

- `task`: the plug-in interface (`Task`, `Evaluator`) and the registry keyed by `config.task`.
- `defaults`: the `config.train` / `config.optimizer` groups every config starts from.
- `optimizer`: AdamW with regex parameter groups, clipping, schedules.
- `state`: the `TrainState` pytree, created already sharded.
- `step`: the jitted train step (gradient accumulation, bf16 compute, non-finite skipping, EMA).
- `checkpointing`: Orbax manager wrapper (async, keep-last/keep-best, verified restore, fallback).
- `metrics`: TensorBoard + JSONL writers and the progress bar.
- `preemption`, `distributed`: SIGTERM handling and `jax.distributed` set-up.
- `trainer`: the train and evaluate loops.

Import the submodules directly (`from dinoseg.train import trainer`); this package imports nothing
heavy on its own.
"""
