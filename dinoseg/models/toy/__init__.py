"""A toy segmentation system: the worked example of the trainer's plug-in interface.

A tiny conv net (`model.ToySegmenter`) learns per-pixel classes of synthetic squares and disks
(`data`), trained and evaluated through `dinoseg train/eval` by `task.ToySegmentationTask`
(config.task = "toy_segmentation"), exported to PyTorch by `convert` (model name
"toy_segmenter"). Tests and `scripts/bench_train.py` use it; docs/training.md walks through it.
"""
