"""grain pipelines: fixed-shape batches per task, determinism, resumption, multi-process coverage."""
import numpy as np
import pytest

from dinoseg.data_pipelines import dataset as dataset_lib
from dinoseg.data_pipelines import pipeline


def _config(path, **kw):
  cfg = pipeline.default_config()
  cfg.path = str(path)
  cfg.image_size = (64, 64)
  cfg.eval_image_size = (96, 96)
  cfg.eval_short_edge, cfg.eval_max_size = 64, 96
  cfg.max_instances = 6
  cfg.batch_size = 2
  cfg.eval_batch_size = 2
  cfg.num_workers = 0
  cfg.read_threads = 1
  for k, v in kw.items():
    setattr(cfg, k, v)
  return cfg


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _check_instances(b, num_classes, t=6, hw=(64, 64), stride=1):
  bs = b["image"].shape[0]
  assert b["image"].shape == (bs, *hw, 3) and b["image"].dtype == np.uint8
  assert b["labels"].shape == (bs, t) and b["labels"].dtype == np.int32
  assert b["boxes"].shape == (bs, t, 4) and b["boxes"].dtype == np.float32
  assert b["masks"].shape == (bs, t, hw[0] // stride, hw[1] // stride) and b["masks"].dtype == np.uint8
  assert b["valid"].dtype == bool and b["is_crowd"].shape == (bs, t)
  assert b["valid_hw"].shape == (bs, 2) and b["original_hw"].shape == (bs, 2) and b["image_id"].dtype == np.int64
  valid = b["valid"]
  assert (b["labels"][valid] < num_classes).all() and (b["labels"][~valid] == 0).all()
  assert (b["boxes"] >= 0).all() and (b["boxes"] <= 1 + 1e-6).all()
  assert (b["boxes"][~valid] == 0).all() and (b["masks"][~valid] == 0).all()
  assert b["masks"][valid].reshape(valid.sum(), -1).any(axis=1).all()   # every valid row has a mask


def test_instance_train_batches(datasets):
  cfg = _config(datasets.prepared("coco"))
  batches = _take(pipeline.build_train_iterator(cfg), 4)
  for b in batches:
    _check_instances(b, num_classes=5)
    assert (b["valid_hw"] == 64).all() and b["example_valid"].all()
  assert sum(int(b["valid"].sum()) for b in batches) > 4
  again = _take(pipeline.build_train_iterator(cfg), 4)      # deterministic given the seed
  _assert_same(batches, again)
  other = _take(pipeline.build_train_iterator(_config(datasets.prepared("coco"), seed=1)), 4)
  assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(batches, other))


def test_mask_stride_and_crowds(datasets):
  cfg = _config(datasets.prepared("coco"), mask_stride=4, keep_crowd=True, batch_size=3)
  seen_crowd = False
  for b in _take(pipeline.build_train_iterator(cfg), 4):
    _check_instances(b, num_classes=5, stride=4)
    seen_crowd |= bool(b["is_crowd"].any())
  assert seen_crowd


def test_eval_targets_equal_the_source_annotations(datasets):
  """Evaluation geometry at scale 1 (short edge = the image's): targets are the source masks and labels."""
  path = datasets.prepared("coco")
  ds = dataset_lib.open_dataset(path)
  view = ds.split("val")
  for i in range(len(view)):
    ex = view[i]
    h, w = ex["original_hw"]
    cfg = _config(path, eval_short_edge=int(min(h, w)), eval_max_size=1000, eval_image_size=(96, 96),
                  eval_targets=True, eval_batch_size=1, max_instances=12)
    b = list(pipeline.build_eval_iterator(cfg))[i]
    assert b["image_id"][0] == ex["image_id"] and tuple(b["valid_hw"][0]) == (h, w)
    np.testing.assert_array_equal(b["image"][0, :h, :w], ex["image"])
    keep = ~ex["instances"]["is_crowd"]
    n = int(keep.sum())
    assert b["valid"][0].sum() == n
    np.testing.assert_array_equal(b["masks"][0, :n, :h, :w], ex["instances"]["masks"][keep])
    labels = [ds.category_ids.index(c) for c in ex["instances"]["category_id"][keep]]
    assert b["labels"][0, :n].tolist() == labels


def test_panoptic_train_batches(datasets):
  path = datasets.prepared("coco_panoptic")
  cfg = _config(path, max_instances=10)
  for b in _take(pipeline.build_train_iterator(cfg), 2):
    _check_instances(b, num_classes=8, t=10)
    assert b["pan_seg"].shape == (2, 64, 64) and b["pan_seg"].dtype == np.int32
    assert b["segment_ids"].shape == (2, 10) and b["is_thing"].shape == (2, 10)
    for i in range(2):
      for t in np.flatnonzero(b["valid"][i]):   # each target is exactly its segment's pixels
        np.testing.assert_array_equal(b["masks"][i, t], b["pan_seg"][i] == b["segment_ids"][i, t])
    assert (~b["is_thing"][b["valid"]]).any()    # stuff targets are there too


def test_semantic_train_and_eval_batches(datasets):
  path = datasets.prepared("ade20k")
  cfg = _config(path, train_short_sizes=(48, 64, 80), max_instances=8)
  for b in _take(pipeline.build_train_iterator(cfg), 2):
    assert b["sem_seg"].shape == (2, 64, 64) and b["sem_seg"].dtype == np.int32
    values = set(np.unique(b["sem_seg"]).tolist())
    assert values <= set(range(150)) | {255} and values - {255}
    _check_instances(b, num_classes=150, t=8)
    for i in range(2):
      for t in np.flatnonzero(b["valid"][i]):
        np.testing.assert_array_equal(b["masks"][i, t], b["sem_seg"][i] == b["labels"][i, t])
  ev = list(pipeline.build_eval_iterator(_config(path, eval_targets=True)))
  assert all(e["sem_seg"].shape == (2, 96, 96) for e in ev)


def test_captions_batches(datasets):
  path = datasets.prepared("coco_captions")
  cfg = _config(path, task="captions", image_size=(32, 32), batch_size=4, max_caption_bytes=64)
  b = next(pipeline.build_train_iterator(cfg))
  assert b["image"].shape == (4, 32, 32, 3) and b["caption_bytes"].shape == (4, 64)
  view = dataset_lib.open_dataset(path).split("train")
  texts = {int(c): t for i in range(len(view)) for c, t in zip(view[i]["captions"]["id"], view[i]["captions"]["text"])}
  for k in range(4):
    text = bytes(b["caption_bytes"][k, :b["caption_length"][k]]).decode()
    assert texts[int(b["caption_id"][k])].startswith(text)
  n = sum(len(view[i]["captions"]["id"]) for i in range(len(view)))
  ev = list(pipeline.build_eval_iterator(_config(path, task="captions", eval_split="train", eval_batch_size=4,
                                                 image_size=(32, 32))))
  assert sum(int(e["example_valid"].sum()) for e in ev) == n   # one example per caption


def test_video_train_and_eval_batches(datasets):
  path = datasets.prepared("ytvis_2019")
  cfg = _config(path, task="video", clip_length=3, max_instances=4, mask_stride=2)
  b = next(pipeline.build_train_iterator(cfg))
  assert b["image"].shape == (2, 3, 64, 64, 3) and b["frame_indices"].shape == (2, 3)
  assert b["masks"].shape == (2, 4, 3, 32, 32) and b["boxes"].shape == (2, 4, 3, 4)
  assert b["present"].shape == (2, 4, 3) and b["track_ids"].shape == (2, 4)
  assert (b["present"][~b["valid"]] == 0).all() and b["present"][b["valid"]].any(axis=-1).all()
  for i in range(2):
    assert (np.diff(b["frame_indices"][i]) >= 0).all()
  view = dataset_lib.open_dataset(path).split("val")
  frames = sum(len(view.record(i)["frames"]["file_name"]) for i in range(len(view)))
  ev = list(pipeline.build_eval_iterator(_config(path, task="video", eval_batch_size=4)))
  pairs = [(int(v), int(f)) for e in ev for v, f, ok in zip(e["image_id"], e["frame_index"], e["example_valid"]) if ok]
  assert len(pairs) == len(set(pairs)) == frames


@pytest.mark.parametrize("layout,split", [("davis345", "val"), ("hqseg44k", "train")])
def test_interactive_batches(datasets, layout, split):
  path = datasets.prepared(layout)
  cfg = _config(path, task="interactive", train_split=split, eval_split=split, prompt_sampler="random_clicks",
                prompt_sampler_options={"num_positive": 3, "num_negative": 2})
  b = next(pipeline.build_train_iterator(cfg))
  assert b["image"].shape == (2, 64, 64, 3) and b["gt_mask"].shape == (2, 64, 64) and b["points"].shape == (2, 5, 3)
  for i in range(2):
    for y, x, label in b["points"][i]:
      if label >= 0:
        assert b["gt_mask"][i, y, x] == label
  ev = list(pipeline.build_eval_iterator(_config(path, task="interactive", eval_split=split,
                                                 prompt_sampler="center_click", eval_image_size=(64, 64))))
  first = ev[0]
  assert first["points"].shape == (2, 1, 3)
  assert max(first["valid_hw"][0]) == 64   # longest side fits the canvas
  y, x, _ = first["points"][0, 0]
  assert first["gt_mask"][0, y, x] == 1


def test_sa1b_with_instance_clicks(datasets):
  cfg = _config(datasets.prepared("sa1b"), max_instances=12, min_scale=0.99, max_scale=1.01,
                prompt_sampler="instance_clicks", prompt_sampler_options={"num_clicks": 5})
  b = next(pipeline.build_train_iterator(cfg))
  _check_instances(b, num_classes=1, t=12)
  assert b["click_points"].shape == (2, 5, 2) and b["click_valid"].all()
  for i in range(2):
    for (x, y), t in zip(b["click_points"][i], b["click_instance"][i]):
      assert b["valid"][i, t] and b["masks"][i, t, int(y * 64), int(x * 64)]


def test_train_sharding_covers_every_index_once(datasets):
  path = datasets.prepared("coco")
  n = len(dataset_lib.open_dataset(path).split("train"))
  for processes in (2, 3):
    seen = []
    for p in range(processes):
      cfg = _config(path, batch_size=processes, num_epochs=1, filter_empty=False, image_size=(32, 32))
      it = pipeline.build_train_iterator(cfg, p, processes)
      seen.append([int(i) for b in it for i in b["image_id"]])
    flat = [i for s in seen for i in s]
    assert len(flat) == len(set(flat))            # disjoint
    assert len(flat) >= n - processes + 1         # per-process remainders are the only gaps
    assert set(flat) <= set(dataset_lib.open_dataset(path).split("train").ids.tolist())
  # With a table divisible by the process count nothing is dropped (3 records, 3 processes):
  seen = [int(i) for p in range(n) for b in pipeline.build_train_iterator(
      _config(path, batch_size=n, num_epochs=1, filter_empty=False, image_size=(32, 32)), p, n)
      for i in b["image_id"]]
  assert sorted(seen) == sorted(dataset_lib.open_dataset(path).split("train").ids.tolist())


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_eval_sharding_covers_every_example_exactly_once(datasets, processes):
  path = datasets.prepared("coco")
  ids = dataset_lib.open_dataset(path).split("val").ids.tolist()
  cfg = _config(path, eval_batch_size=2 * processes)
  per_process = [list(pipeline.build_eval_iterator(cfg, p, processes)) for p in range(processes)]
  assert len({len(b) for b in per_process}) == 1     # the same number of batches everywhere
  assert len(per_process[0]) == pipeline.num_eval_batches(cfg, processes)
  real = [int(i) for bs in per_process for b in bs for i, ok in zip(b["image_id"], b["example_valid"]) if ok]
  assert sorted(real) == sorted(ids)
  for bs in per_process:
    for b in bs:
      assert b["image"].shape == (2, 96, 96, 3)


def test_config_errors(datasets):
  path = datasets.prepared("coco")
  with pytest.raises(ValueError, match="unknown data config keys"):
    pipeline.build_train_iterator({"path": str(path), "batchsize": 2})
  with pytest.raises(ValueError, match="divisible by the process count"):
    pipeline.build_train_iterator(_config(path, batch_size=3), 0, 2)
  with pytest.raises(ValueError, match="process_index"):
    pipeline.build_train_iterator(_config(path), 2, 2)
  with pytest.raises(ValueError, match="path"):
    pipeline.build_train_iterator({"batch_size": 2})
  with pytest.raises(ValueError, match="unknown data task"):
    pipeline.build_train_iterator(_config(path, task="nope"))
  with pytest.raises(FileNotFoundError, match="manifest"):
    pipeline.build_train_iterator(_config(path.parent / "nothing"))


def test_resume_from_orbax_checkpoint(datasets, tmp_path):
  import grain  # noqa: PLC0415
  import orbax.checkpoint as ocp  # noqa: PLC0415
  cfg = _config(datasets.prepared("coco"))
  full = _take(pipeline.build_train_iterator(cfg), 7)
  it = pipeline.build_train_iterator(cfg)
  _take(it, 4)
  with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data_iter",)) as mngr:
    mngr.save(4, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    fresh = pipeline.build_train_iterator(cfg)
    mngr.restore(4, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_same(_take(fresh, 3), full[4:])


def test_two_worker_pipeline_fixed_shapes_resume_and_worker_independence(datasets):
  """2 worker processes: fixed-shape batches, equal to the in-process pipeline, and resuming after N
  batches (state taken from the worker pipeline) yields exactly the batches of the uninterrupted run."""
  cfg = _config(datasets.prepared("coco"), num_workers=2, worker_buffer_size=1)
  it = pipeline.build_train_iterator(cfg)
  first = _take(it, 3)
  state = it.get_state()
  rest = _take(it, 3)
  it.close()
  for b in first + rest:
    _check_instances(b, num_classes=5)
  inline = _take(pipeline.build_train_iterator(_config(datasets.prepared("coco"))), 6)
  _assert_same(first + rest, inline)
  resumed = pipeline.build_train_iterator(cfg)
  resumed.set_state(state)
  _assert_same(_take(resumed, 3), rest)
  resumed.close()


def test_global_batch_on_the_mesh(datasets):
  """A process batch goes through the foundation's mesh helper unchanged (8 fake devices, data axis)."""
  import jax  # noqa: PLC0415
  from dinoseg import parallel  # noqa: PLC0415
  b = next(pipeline.build_train_iterator(_config(datasets.prepared("coco"), batch_size=8, image_size=(32, 32),
                                                 mask_stride=2)))
  mesh = parallel.make_mesh({"data": -1})
  g = parallel.global_batch(b, mesh)
  assert g["image"].shape == (8, 32, 32, 3) and g["masks"].shape == (8, 6, 16, 16)
  assert len(g["image"].sharding.device_set) == jax.device_count()
  for k in b:
    np.testing.assert_array_equal(np.asarray(g[k]), b[k], err_msg=k)
