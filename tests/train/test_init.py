"""Pretrained initialisation (`config.init`, dinoseg.convert.init): converted backbone files start a Mask DINO
run with exactly their values, strict / partial coverage, the user errors of `dinoseg train` (exit status 2,
one line), and the SegNext and Talk2DINO entries."""
import json
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinoseg import cli
from dinoseg.config import load_config
from dinoseg.convert import backbones as bb
from dinoseg.convert import init as init_lib
from dinoseg.convert import readers
from dinoseg.convert.keymap import flatten_variables
from dinoseg.train import task as task_lib
from dinoseg.train import trainer

MASKDINO = "configs/maskdino/coco_instance_r50_3s_d1_2048.py:tiny"
TOY = "configs/toy/toy_segmentation.py:tiny"


def _random_like(abstract, seed: int) -> dict:
  """NumPy values for every leaf (variances positive: they are FrozenBN running_var too)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (np.abs(rng.standard_normal(a.shape)) + 0.5).astype(a.dtype), abstract)


def _abstract(task) -> dict:
  run = trainer.build_run(task.config, task)
  return {"params": run.abstract.params, **run.abstract.model_state}


def _torchvision_keys(state: dict) -> dict:
  """detectron2 ResNet keys -> torchvision's (the inverse of `torchvision_to_detectron2`) + the classifier."""
  out = {}
  for key, value in state.items():
    key = key.replace("shortcut.norm", "downsample.1").replace("shortcut", "downsample.0")
    for t in (1, 2, 3):
      key = key.replace(f"conv{t}.norm", f"bn{t}")
    for t in (2, 3, 4, 5):
      key = key.replace(f"res{t}.", f"layer{t - 1}.")
    out[key.removeprefix("stem.")] = value
  out.update({"fc.weight": np.zeros((10, 4), np.float32), "fc.bias": np.zeros((10,), np.float32),
              "bn1.num_batches_tracked": np.zeros((), np.int64)})
  return out


@pytest.fixture(scope="module")
def maskdino_backbone(tmp_path_factory):
  """The tiny Mask DINO ResNet's random variables {"params", "frozen_bn"} and the same values as a torchvision
  .pth and a detectron2 .pkl (layouts derived from the module through the converter's export direction)."""
  root = tmp_path_factory.mktemp("init_backbone")
  task = task_lib.build(load_config(MASKDINO))
  module = task.backbone_module()
  variables = _random_like(bb.abstract_variables(module, (1, 64, 64, 3)), seed=1)
  d2 = bb.backbone_to_torch(module, variables)
  pth = root / "resnet_tv.pth"
  readers.write_pth(_torchvision_keys(d2), pth)
  pkl = root / "R-50.pkl"
  pkl.write_bytes(pickle.dumps({"model": d2, "__author__": "torchvision", "matching_heuristics": True}))
  return dict(task=task, module=module, variables=variables, d2=d2, pth=pth, pkl=pkl, root=root)


@pytest.fixture(scope="module")
def maskdino_data(tmp_path_factory):
  from dinoseg.data_pipelines import synth, writer
  root = tmp_path_factory.mktemp("init_data")
  synth.synthesize("coco", str(root / "raw"), num_images=4, image_size=(40, 72), max_objects=3, seed=1)
  writer.prepare(synth.PREPARER_FOR_LAYOUT["coco"], str(root / "raw"), str(root / "data"), num_shards=1,
                 progress=False)
  return root / "data"


def _expected_backbone(variables) -> dict:
  """{(collection, "backbone", *path): value} of the backbone's variables inside Mask DINO."""
  return {(p[0], "backbone") + p[1:]: v for p, v in flatten_variables(variables).items()}


def test_both_resnet_layouts_load_exactly_the_file_values(maskdino_backbone):
  b = maskdino_backbone
  abstract = _abstract(b["task"])
  expected = _expected_backbone(b["variables"])
  for path, ignored in ((b["pkl"], []), (b["pth"], ["fc.weight", "fc.bias", "bn1.num_batches_tracked"])):
    entry = init_lib.Entry("backbone", file=str(path), converter="backbone", target=("backbone",))
    arrays, (report,) = init_lib.load([entry], abstract, b["task"].init_converters())
    assert set(arrays) == set(expected)
    for key, value in expected.items():
      np.testing.assert_array_equal(arrays[key], value, err_msg=str(key))
    assert report["status"] == "loaded" and report["random"] == [] and report["unused"] == []
    assert sorted(report["ignored"]) == sorted(ignored) and report["tensors"] == len(expected)
  assert "torchvision" in init_lib.describe(report)


def test_swin_imagenet_classification_checkpoint_loads_into_the_backbone(tmp_path):
  """The Swin ImageNet-22K layout (the Swin repository's {"model": ...}): head, final norm and attn_mask
  ignored, the output norms (absent there) set to weight 1 / bias 0; a detection checkpoint loads as is."""
  task = task_lib.build(load_config("configs/maskdino/coco_instance_swinl_4s_d1_2048.py:tiny"))
  module = task.backbone_module()
  params = _random_like(bb.abstract_variables(module, (1, 64, 64, 3)), seed=6)["params"]
  d2 = bb.backbone_to_torch(module, params)
  classification = {k: v for k, v in d2.items() if not k.startswith(("norm0.", "norm1.", "norm2.", "norm3."))}
  classification.update({"head.weight": np.zeros((7, 4), np.float32), "head.bias": np.zeros((7,), np.float32),
                         "norm.weight": np.ones((4,), np.float32), "norm.bias": np.zeros((4,), np.float32),
                         "layers.0.blocks.0.attn_mask": np.zeros((4, 16, 16), np.float32)})
  readers.write_pth(classification, tmp_path / "swin_22k.pth", wrap="model")
  readers.write_pth(d2, tmp_path / "swin_d2.pth")
  abstract = _abstract(task)
  for name in ("swin_22k.pth", "swin_d2.pth"):
    entry = init_lib.Entry("backbone", file=str(tmp_path / name), target=("backbone",))
    arrays, (report,) = init_lib.load([entry], abstract, task.init_converters())
    assert report["random"] == [] and report["unused"] == []
    for (c, *path), value in flatten_variables({"params": params}).items():
      expected = value
      if name == "swin_22k.pth" and path[0].startswith("norm"):
        expected = np.ones_like(value) if path[-1] == "scale" else np.zeros_like(value)
      np.testing.assert_array_equal(arrays[(c, "backbone", *path)], expected, err_msg=str(path))
  assert sorted(report["ignored"]) == [] and not report["notes"]  # the detection layout: nothing dropped or set
  arrays, (report,) = init_lib.load([init_lib.Entry("backbone", file=str(tmp_path / "swin_22k.pth"),
                                                    target=("backbone",))], abstract, task.init_converters())
  assert sorted(report["ignored"]) == ["head.bias", "head.weight", "layers.0.blocks.0.attn_mask", "norm.bias",
                                       "norm.weight"]
  assert "classification layout" in report["notes"][0]


@pytest.mark.slow  # 2 min: a Mask DINO train step; the default run checks the same entries without training
def test_maskdino_train_starts_from_the_converted_backbone_and_trains(maskdino_backbone, maskdino_data, tmp_path):
  """The issue's test: `dinoseg train ... --config.init.backbone.file=<converted R50>`; the backbone is frozen
  (lr multiplier 0), so the checkpoint after the first step holds exactly the initial backbone, which must be
  the file's random values (a random init cannot match them)."""
  b = maskdino_backbone
  workdir = tmp_path / "run"
  assert cli.main(["train", f"--config={MASKDINO}", f"--workdir={workdir}", f"--config.init.backbone.file={b['pth']}",
                   f"--config.data.path={maskdino_data}", "--config.data.batch_size=8", "--config.train.num_steps=1",
                   "--config.train.eval_at_end=False",
                   "--config.optimizer.lr_multipliers=(('^backbone/', 0.0),)"]) == 0
  tree = readers.read_orbax(workdir / "checkpoints" / "1")
  for (c, *path), value in _expected_backbone(b["variables"]).items():
    got = tree[c]
    for part in path:
      got = got[part]
    np.testing.assert_array_equal(got, value, err_msg=f"{c}/{'/'.join(path)}")
  (row,) = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert np.isfinite(row["loss"]) and row["grad_norm"] > 0 and row["skipped"] == 0
  report = json.loads((workdir / "init_report.json").read_text())["entries"]
  entries = {r["name"]: r for r in report}
  assert entries["backbone"]["status"] == "loaded" and entries["backbone"]["random"] == []
  assert entries["checkpoint"]["status"] == "not given"  # the config's fine-tuning entry, unused here


def test_strict_and_partial_coverage(maskdino_backbone):
  b = maskdino_backbone
  abstract = _abstract(b["task"])
  partial = {k: v for k, v in b["d2"].items() if not k.startswith("res5.")}
  partial["extra.weight"] = np.zeros((3,), np.float32)
  path = b["root"] / "partial.pth"
  readers.write_pth(partial, path)
  strict = init_lib.Entry("backbone", file=str(path), target=("backbone",))
  with pytest.raises(init_lib.InitError, match=r"config.init.backbone is strict but \d+ of \d+ variables of backbone "
                                               r"are not in the file \(.*res5_0.*; 1 source tensors are unused \(extra"):
    init_lib.load([strict], abstract, b["task"].init_converters())
  arrays, (report,) = init_lib.load([init_lib.Entry("backbone", file=str(path), target=("backbone",), strict=False)],
                                    abstract, b["task"].init_converters())
  res5 = [k for k in flatten_variables({c: t["backbone"] for c, t in abstract.items()}) if k[1].startswith("res5")]
  assert len(report["random"]) == len(res5) > 0 and all("res5_" in r for r in report["random"])
  assert report["unused"] == ["extra.weight"]
  assert report["tensors"] + len(res5) == len(_expected_backbone(b["variables"]))
  np.testing.assert_array_equal(arrays[("params", "backbone", "res4_0", "conv1", "kernel")],
                                b["variables"]["params"]["res4_0"]["conv1"]["kernel"])


def test_shape_mismatch_unknown_target_converter_and_required(maskdino_backbone):
  b = maskdino_backbone
  abstract, converters = _abstract(b["task"]), b["task"].init_converters()
  bad = dict(b["d2"], **{"res3.0.conv2.weight": np.zeros((3, 3, 3, 3), np.float32)})
  readers.write_pth(bad, b["root"] / "bad.pth")
  entry = init_lib.Entry("backbone", file=str(b["root"] / "bad.pth"), target=("backbone",))
  with pytest.raises(init_lib.InitError, match=r"res3\.0\.conv2\.weight: the model expects shape \(\d+, \d+, 3, 3\), "
                                               r"the file has \(3, 3, 3, 3\)"):
    init_lib.load([entry], abstract, converters)
  with pytest.raises(init_lib.InitError, match="params has no 'backbon' .*backbone, pixel_decoder, predictor"):
    init_lib.load([init_lib.Entry("backbone", file=str(b["pth"]), target=("backbon",))], abstract, converters)
  with pytest.raises(init_lib.InitError, match="converter='nope' is unknown"):
    init_lib.load([init_lib.Entry("backbone", file=str(b["pth"]), converter="nope")], abstract, converters)
  required = init_lib.Entry("backbone", required=True)
  with pytest.raises(init_lib.InitError, match=r"config.init.backbone.file is empty"):
    init_lib.load([required], abstract, converters)
  covering = init_lib.Entry("all", file=str(b["pth"]), converter="orbax", target=())
  init_lib.check([covering, required], abstract, converters)  # a full checkpoint covers the backbone
  with pytest.raises(init_lib.InitError, match="both fill backbone"):
    init_lib.entries({"a": dict(file="x", target="backbone"), "b": dict(file="y", target="backbone/")})
  with pytest.raises(init_lib.InitError, match="unknown keys"):
    init_lib.entries({"a": dict(file="x", strcit=False)})


# ----------------------------------------------------------------------------- dinoseg train: user errors

@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
  """A toy .pth of a wider model than the tiny config's, a corrupt .pth, and an Orbax tree lacking the
  classifier."""
  from dinoseg.convert import registry
  from dinoseg.models.toy.model import build_model
  root = tmp_path_factory.mktemp("init_toy")
  config = load_config(TOY)
  wide_config = config.model.copy_and_resolve_references()
  wide_config.width = 16
  wide = nn.meta.unbox(build_model(wide_config).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
  readers.write_pth(registry.get("toy_segmenter").to_torch(jax.tree.map(np.asarray, dict(wide))), root / "wide.pth")
  (root / "corrupt.pth").write_bytes(b"PK\x03\x04 not really a zip")
  variables = jax.tree.map(np.asarray, dict(nn.meta.unbox(task_lib.build(config).init_variables(jax.random.key(3)))))
  head = "classifier"
  readers.write_orbax({"params": {k: v for k, v in variables["params"].items() if k != head},
                       "frozen_bn": variables["frozen_bn"]}, root / "partial")
  return root, variables, head


def _train_error(capsys, tmp_path, *overrides) -> str:
  assert cli.main(["train", f"--config={TOY}", f"--workdir={tmp_path / 'run'}", *overrides]) == 2
  err = capsys.readouterr().err.strip()  # the run's progress lines (log records), then the error
  errors = [line for line in err.splitlines() if line.startswith("dinoseg train: error: ")]
  assert len(errors) == 1 and err.endswith(errors[0]) and "Traceback" not in err, err
  return errors[0]


def test_train_reports_bad_init_entries_in_one_line(toy_files, capsys, tmp_path):
  root, _, head = toy_files
  assert "no such file or directory" in _train_error(capsys, tmp_path, f"--config.init.checkpoint.file={root}/x.pth")
  err = _train_error(capsys, tmp_path, f"--config.init.checkpoint.file={root}/corrupt.pth")
  assert "not a readable PyTorch checkpoint" in err
  assert "converter='resnet5' is unknown" in _train_error(
      capsys, tmp_path, f"--config.init.checkpoint.file={root}/wide.pth", "--config.init.checkpoint.converter=resnet5")
  assert "has no 'heads'" in _train_error(
      capsys, tmp_path, f"--config.init.checkpoint.file={root}/wide.pth", "--config.init.checkpoint.target=heads")
  err = _train_error(capsys, tmp_path, f"--config.init.checkpoint.file={root}/wide.pth")
  assert "the model expects shape" in err and "the file has" in err
  err = _train_error(capsys, tmp_path, f"--config.init.checkpoint.file={root}/partial",
                     "--config.init.checkpoint.converter=orbax")
  assert "is strict but" in err and f"params/{head}/" in err
  assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_partial_toy_init_trains_and_reports_what_stayed_random(toy_files, tmp_path, capsys):
  root, variables, head = toy_files
  workdir = tmp_path / "run"
  args = ["train", f"--config={TOY}", f"--workdir={workdir}", f"--config.init.checkpoint.file={root}/partial",
          "--config.init.checkpoint.converter=orbax", "--config.init.checkpoint.strict=False",
          "--config.train.num_steps=2", "--config.train.eval_every_steps=0", "--config.train.eval_at_end=False",
          "--config.optimizer.lr_multipliers=(('.', 0.0),)"]
  assert cli.main(args) == 0
  out = capsys.readouterr().err  # the trainer's messages are log records (stderr)
  (report,) = json.loads((workdir / "init_report.json").read_text())["entries"]
  assert report["random"] and all(r.startswith(f"params/{head}/") for r in report["random"])
  assert f"{len(report['random'])} stayed random" in out
  tree = readers.read_orbax(workdir / "checkpoints" / "2")
  for key, value in flatten_variables({k: v for k, v in variables["params"].items() if k != head}).items():
    got = tree["params"]
    for part in key:
      got = got[part]
    np.testing.assert_array_equal(got, value)  # every parameter frozen: still the loaded values
  # A resumed run keeps its checkpoint and says so.
  assert cli.main(args) == 0
  assert "config.init is not applied" in capsys.readouterr().err


# ----------------------------------------------------------------------------- SegNext and Talk2DINO entries

def test_segnext_mae_backbone_and_full_checkpoint_entries(tmp_path):
  from dinoseg.models.segnext import convert as sn_convert
  config = load_config("configs/segnext/vitb_sax2.py:tiny")
  task = task_lib.build(config)
  run = trainer.build_run(config, task)
  abstract = {"params": run.abstract.params}
  vit = task.backbone_module()
  values = _random_like(bb.abstract_variables(vit, (1, 128, 128, 3)), seed=2)["params"]
  mae = bb.backbone_to_torch(vit, values)
  del mae["fc_norm.weight"], mae["fc_norm.bias"]
  d = mae["pos_embed"].shape[-1]
  mae["pos_embed"] = np.random.default_rng(0).standard_normal((1, 1 + 4 * 4, d)).astype(np.float32)  # MAE's grid
  mae.update({"cls_token": np.zeros((1, 1, d), np.float32), "norm.weight": np.ones((d,), np.float32),
              "norm.bias": np.zeros((d,), np.float32)})
  readers.write_pth(mae, tmp_path / "mae.pth", wrap="model")  # MAE releases: {"model": state_dict}
  full = _random_like(run.abstract.params, seed=3)
  sn_convert.write_checkpoint(str(tmp_path / "sax2.pth"), sn_convert.segnext_to_torch(full, drop_new_params=True))
  said = []
  entries = init_lib.entries(load_config("configs/segnext/vitb_sax2.py:tiny", [
      f"init.backbone.file={tmp_path / 'mae.pth'}"]).init)
  state, reports = trainer.initialise(run, task.init_entries(entries), said.append)
  assert [r["status"] for r in reports] == ["not given", "loaded"]
  assert sorted(reports[1]["unused"]) == ["cls_token", "norm.bias", "norm.weight"]
  assert reports[1]["random"] == ["params/backbone/fc_norm/bias", "params/backbone/fc_norm/scale"]
  assert any("position grid resized" in line for line in said)
  placed = jax.tree.map(lambda a, sh: a.sharding.is_equivalent_to(sh, a.ndim), state, run.shardings)
  assert all(jax.tree.leaves(placed)) and len(state.params["backbone"]["pos_embed"].sharding.device_set) == 8
  backbone = jax.device_get(state.params["backbone"])
  np.testing.assert_array_equal(backbone["blocks_1"]["attn"]["qkv"]["kernel"], values["blocks_1"]["attn"]["qkv"]["kernel"])
  assert backbone["pos_embed"].shape == values["pos_embed"].shape
  np.testing.assert_array_equal(backbone["pos_embed"][:, 0], mae["pos_embed"][:, 0])  # the CLS slot is kept
  # The full checkpoint (converter "task": the reference .pth, extra prompt kernel set to zero) covers the
  # required backbone entry.
  config = load_config("configs/segnext/vitb_sax2.py:tiny", [f"init.checkpoint.file={tmp_path / 'sax2.pth'}",
                                                            "init.backbone.required=True"])
  arrays, reports = init_lib.load(task.init_entries(init_lib.entries(config.init)), abstract, task.init_converters())
  assert reports[0]["status"] == "loaded" and reports[0]["random"] == [] and reports[1]["status"] == "not given"
  for key, value in flatten_variables({"params": full}).items():
    expected = np.zeros_like(value) if key[1] == "extra_prompts_encoder" else value
    np.testing.assert_array_equal(arrays[key], expected, err_msg=str(key))
  with pytest.raises(init_lib.InitError, match="config.init.backbone.file is empty"):
    init_lib.load(init_lib.entries(load_config("configs/segnext/vitb_sax2.py:tiny", ["init.backbone.required=True"]).init),
                  abstract, task.init_converters())


def test_talk2dino_entries_for_training_and_inference(tmp_path):
  from dinoseg.convert.dinov2_clip import clip_text_key_table, dinov2_key_table, table_to_torch
  from dinoseg.models.talk2dino import weights as wt
  from dinoseg.models.talk2dino.convert import projection_to_torch
  from dinoseg.models.talk2dino.model import build_model, init_params
  config = load_config("configs/talk2dino/vitb_mlp_infonce.py:tiny")
  model = build_model(config.model)
  values = _random_like(jax.eval_shape(lambda: init_params(model, jax.random.key(0))), seed=4)
  d = model.dinov2
  files = {"dinov2": table_to_torch(values["dinov2"], dinov2_key_table(d.depth, d.ffn, d.num_register_tokens)),
           "clip_text": dict(table_to_torch(values["clip_text"], clip_text_key_table(model.clip_text.depth)),
                             logit_scale=np.ones((), np.float32)),
           "projection": projection_to_torch(values["projection"])}
  for name, state in files.items():
    readers.write_safetensors(state, tmp_path / f"{name}.safetensors")
  overrides = [f"init.{n}.file={tmp_path / n}.safetensors" for n in files]
  # Inference (extraction / eval / predict): all three parts, exactly the files' values.
  params = wt.load_model_params(model, load_config("configs/talk2dino/vitb_mlp_infonce.py:tiny", overrides))
  for key, value in flatten_variables(values).items():
    got = params
    for part in key:
      got = got[part]
    np.testing.assert_array_equal(got, value, err_msg=str(key))
  # `dinoseg train`: the projection entry only, onto the task's params (which are the projection).
  config = load_config("configs/talk2dino/vitb_mlp_infonce.py:tiny", overrides)
  task = task_lib.build(config)
  run = trainer.build_run(config, task)
  state, reports = trainer.initialise(run, task.init_entries(init_lib.entries(config.init)), lambda s: None)
  assert {r["name"]: r["status"] for r in reports} == {"dinov2": "skipped", "clip_text": "skipped",
                                                       "projection": "loaded"}
  for key, value in flatten_variables(values["projection"]).items():
    got = jax.device_get(state.params)
    for part in key:
      got = got[part]
    np.testing.assert_array_equal(got, value)
  # A wrong width is a shape error naming the variable.
  wide = projection_to_torch(_random_like(jax.eval_shape(lambda: init_params(
      build_model(dict(config.model, embed_dim=8, dinov2_overrides=dict(config.model.dinov2_overrides, embed_dim=8))),
      jax.random.key(0))), seed=5)["projection"])
  readers.write_safetensors(wide, tmp_path / "wide.safetensors")
  bad = load_config("configs/talk2dino/vitb_mlp_infonce.py:tiny", [f"init.projection.file={tmp_path / 'wide.safetensors'}"])
  with pytest.raises(init_lib.InitError, match="projection/linear_layer/kernel: the model expects shape"):
    wt.load_model_params(model, bad)
