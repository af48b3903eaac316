"""The tiny Talk2DINO config end to end on CPU, on data_pipelines' synthetic COCO-captions / VOC data:
extraction command -> training (`dinoseg talk2dino train`: the shared trainer in epochs, and `dinoseg train`)
-> evaluation -> prediction (`dinoseg.load`, `dinoseg predict`, `dinoseg talk2dino predict`)."""
import json

import numpy as np
import pytest

import dinoseg
from dinoseg import cli
from dinoseg.config import load_config
from dinoseg.models.talk2dino import evaluate as ev
from dinoseg.models.talk2dino import predict as pr
from dinoseg.models.talk2dino import weights as wt
from dinoseg.models.talk2dino import sources

CONFIG = "configs/talk2dino/vitb_mlp_infonce.py:tiny"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """`dinoseg talk2dino extract` (train, val) then `dinoseg talk2dino train` on the tiny config."""
  root = tmp_path_factory.mktemp("t2d")
  overrides = [f"--config.features.out_dir={root / 'features'}", f"--config.features.data_dir={root / 'captions'}",
               f"--config.eval.data_dir={root / 'benchmarks'}"]
  for split in ("train", "val"):
    assert cli.main(["talk2dino", "extract", f"--config={CONFIG}", f"--split={split}", "--no-progress"]
                    + overrides) == 0
  assert cli.main(["talk2dino", "train", f"--config={CONFIG}", f"--workdir={root / 'run'}", "--no-progress",
                   "--config.data.num_epochs=4"] + overrides) == 0
  config = load_config(CONFIG, [o[len("--config."):] for o in overrides])
  return config, root


def test_tiny_training_reduces_the_loss(trained):
  config, root = trained
  manifest = json.loads((root / "features" / "train" / "manifest.json").read_text())
  assert manifest["complete"] and manifest["settings"]["num_images"] == 32
  assert sum(map(sum, manifest["shards"].values())) == 160  # 5 synthetic captions per image
  # 4 epochs of 10 batches (160 captions / 16) on the shared trainer; validation and a checkpoint every epoch.
  rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
  losses = [r["infonce"] for r in rows if "infonce" in r]
  assert len(losses) == 40 and all(np.isfinite(losses))
  assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10]), losses
  for step in (10, 20, 30, 40):
    assert (root / "run" / "checkpoints" / str(step)).is_dir() or step < 30  # keep_last=2
    result = json.loads((root / "run" / "eval" / f"step_{step}.json").read_text())
    assert np.isfinite(result["results"]["val_loss"])  # (random tiny backbones: no generalization expected)
  # The export reads back through the reference-layout converter and equals the last checkpoint.
  state = wt.read_state_dict(root / "run" / "projection.safetensors")
  assert sorted(state) == ["hidden_layers.0.bias", "hidden_layers.0.weight", "linear_layer.bias",
                           "linear_layer.weight"]
  from dinoseg.models.talk2dino.task import Talk2DinoTask
  task = Talk2DinoTask(config)
  exported = task.variables_from_weights(root / "run" / "projection.safetensors")["params"]
  last = task.variables_from_weights(root / "run" / "checkpoints" / "40")["params"]
  np.testing.assert_array_equal(exported["linear_layer"]["kernel"], last["linear_layer"]["kernel"])


def test_tiny_training_resumes_and_init_projection_applies(trained, tmp_path):
  """A finished run is complete (resumed, nothing retrained); a fresh run starts from `init.projection`."""
  config, root = trained
  metrics = (root / "run" / "metrics.jsonl").read_text()
  overrides = [f"--config.features.out_dir={root / 'features'}", "--config.data.num_epochs=4"]
  assert cli.main(["talk2dino", "train", f"--config={CONFIG}", f"--workdir={root / 'run'}", "--no-progress"]
                  + overrides) == 0
  assert (root / "run" / "metrics.jsonl").read_text() == metrics
  assert cli.main(["talk2dino", "train", f"--config={CONFIG}", f"--workdir={tmp_path / 'run'}", "--no-progress",
                   f"--config.features.out_dir={root / 'features'}", "--config.data.num_epochs=1",
                   f"--config.init.projection.file={root / 'run' / 'projection.safetensors'}"]) == 0
  report = json.loads((tmp_path / "run" / "init_report.json").read_text())["entries"]
  assert {r["name"]: r["status"] for r in report}["projection"] == "loaded"


def test_tiny_evaluation_writes_json_and_the_table(trained, tmp_path, capsys):
  config, root = trained
  out = tmp_path / "eval.json"
  assert cli.main(["talk2dino", "eval", f"--config={CONFIG}", f"--weights={root / 'run'}", "--no-progress",
                   f"--config.eval.output={out}", "--config.eval.max_images=2",
                   f"--config.eval.data_dir={root / 'benchmarks'}"]) == 0
  payload = json.loads(out.read_text())
  assert set(payload["results"]) == {"voc"}
  r = payload["results"]["voc"]
  assert r["num_images"] == 2 and 0 <= r["mIoU"] <= 100 and len(r["per_class_iou"]) == 21
  captured = capsys.readouterr()
  assert "| V20 | C59 | Stuff | City | ADE | V21 | C60 | Obj | Avg |" in captured.out + captured.err
  assert cli.main(["talk2dino", "eval", f"--config={CONFIG}", "--benchmarks=nope"]) == 2


def test_tiny_prediction_writes_the_png_and_the_label_map(trained, tmp_path):
  config, root = trained
  from PIL import Image
  image = sources.CaptionRecords(root / "captions", "val")[0].image
  Image.fromarray(image).save(tmp_path / "in.jpg", quality=95)
  assert cli.main(["talk2dino", "predict", f"--config={CONFIG}", f"--weights={root / 'run'}",
                   f"--input={tmp_path / 'in.jpg'}", "--classes=red,green_square,sky", "--with-background",
                   f"--output={tmp_path / 'out'}"]) == 0
  with Image.open(tmp_path / "out" / "in.jpg.png") as vis:
    assert vis.width > image.shape[1] and vis.height >= image.shape[0]  # legend strip beside the image
  with Image.open(tmp_path / "out" / "in.jpg_labels.png") as raw:
    labels = np.asarray(raw)
  assert labels.shape == image.shape[:2] and labels.max() < 4
  # The Python API gives the same map.
  predictor = dinoseg.load(config, root / "run")
  result = predictor.predict(tmp_path / "in.jpg", class_names=["red", "green square", "sky"], with_background=True)
  assert result.class_names == ("background", "red", "green square", "sky")
  np.testing.assert_array_equal(result.label_map, labels)
  with pytest.raises(SystemExit) as e:  # --input and --output are required
    cli.main(["talk2dino", "predict", f"--config={CONFIG}", "--classes=cat"])
  assert e.value.code == 2


def test_mmseg_miou_counts_predicted_but_absent_classes():
  conf = np.zeros((4, 4), np.int64)  # [pred, gt], 3 classes + ignore
  conf[0, 0], conf[1, 1], conf[2, 0] = 10, 5, 5  # class 2 is predicted but never in the ground truth
  m = ev.mmseg_metrics(conf)
  assert m["IoU"][2] == 0.0 and m["mIoU"] == pytest.approx(100 * (10 / 15 + 1 + 0) / 3)
  from dinoseg.evaluation.semantic import semantic_metrics
  assert semantic_metrics(conf)["mIoU"] == pytest.approx(100 * (10 / 15 + 1) / 2)


def test_paper_table_reproduces_the_published_average():
  row = {"voc20": 88.5, "context59": 42.4, "coco_stuff": 30.2, "cityscapes": 38.1, "ade20k": 22.5, "voc": 65.8,
         "context": 37.7, "coco_object": 45.1}
  assert ev.paper_table(row).splitlines()[-1].endswith("| 45.1 | 46.3 |")


def test_prepared_benchmark_ground_truth_follows_the_label_map(trained, tmp_path):
  _, root = trained
  if not (root / "benchmarks" / "voc" / "manifest.json").exists():  # `talk2dino eval` prepares it; under xdist
    # the evaluation test may run in another worker, so this test must not depend on the order
    assert cli.main(["talk2dino", "eval", f"--config={CONFIG}", f"--weights={root / 'run'}", "--no-progress",
                     f"--config.eval.output={tmp_path / 'eval.json'}", "--config.eval.max_images=1",
                     f"--config.eval.data_dir={root / 'benchmarks'}"]) == 0
  voc21 = sources.SemanticRecords(root / "benchmarks" / "voc", "val", "voc21")
  voc20 = sources.SemanticRecords(root / "benchmarks" / "voc", "val", "voc20")
  (image, gt21), (_, gt20) = voc21[0], voc20[0]
  assert gt21.shape == image.shape[:2] and set(np.unique(gt21)) <= set(range(21)) | {255}
  np.testing.assert_array_equal(gt20[gt21 == 0], 255)  # background is ignored in VOC20
  np.testing.assert_array_equal(gt20[(gt21 > 0) & (gt21 < 255)], gt21[(gt21 > 0) & (gt21 < 255)] - 1)
  with pytest.raises(ValueError, match="label map"):
    sources.SemanticRecords(root / "benchmarks" / "voc", "val", "ade20k")
  with pytest.raises(FileNotFoundError):
    sources.PreparedRecords(root / "nothing", "val")


def test_missing_weights_are_an_error_when_required(tmp_path):
  config = load_config("configs/talk2dino/vitb_mlp_infonce.py:tiny", ["init.dinov2.required=True"])
  with pytest.raises(ValueError, match="config.init.dinov2.file is empty"):
    ev.load_for_inference(config)
  with pytest.raises(FileNotFoundError):
    wt.read_state_dict(tmp_path / "missing.pth")
  (tmp_path / "w.txt").write_text("x")
  with pytest.raises(ValueError, match="unsupported"):
    wt.read_state_dict(tmp_path / "w.txt")
  with pytest.raises(ValueError):
    pr.parse_classes(" , ")
  with pytest.raises(ValueError):
    pr.parse_classes("cat,cat")
  assert cli.main(["talk2dino", "extract", "--config=configs/talk2dino/vitb_mlp_infonce.py:tiny",
                   "--split=test"]) == 2


def test_projection_weights_of_the_wrong_width_are_refused(tmp_path):
  from safetensors.numpy import save_file

  from dinoseg.models.talk2dino.convert import projection_to_flax
  from dinoseg.models.talk2dino.model import build_model
  rng = np.random.default_rng(0)
  save_file({"linear_layer.weight": rng.normal(size=(8, 16)).astype(np.float32),
             "linear_layer.bias": np.zeros(8, np.float32), "hidden_layers.0.weight": np.zeros((8, 8), np.float32),
             "hidden_layers.0.bias": np.zeros(8, np.float32)}, str(tmp_path / "p.safetensors"))
  wt.save_flax_params(projection_to_flax(wt.read_state_dict(tmp_path / "p.safetensors")), tmp_path / "p.msgpack")
  for name in ("p.safetensors", "p.msgpack"):  # an 8-wide projection for the 16-wide tiny model
    config = load_config("configs/talk2dino/vitb_mlp_infonce.py:tiny", [f"init.projection.file={tmp_path / name}"])
    with pytest.raises(ValueError, match=r"params/projection/.*: the model expects shape \(16"):
      wt.load_model_params(build_model(config.model), config)


def test_trainer_plugin_task(trained):
  import jax
  from dinoseg.models.talk2dino import task as t2d_task
  from dinoseg.train import task as train_task
  config, root = trained
  assert train_task.TASKS["talk2dino"] is t2d_task.Talk2DinoTask
  task = t2d_task.Talk2DinoTask(config)
  variables = jax.jit(task.init_variables)(jax.random.key(0))
  assert set(variables["params"]) == {"linear_layer", "hidden_layers_0"}
  it = task.train_iterator(0, 1)
  first = next(it)
  assert first["image"].shape == (16, 2, 16) and first["text"].shape == (16, 16) and first["valid"].all()
  state = it.get_state()
  second = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["text"], second["text"])  # resumable
  halves = [next(task.train_iterator(p, 2)) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h["text"] for h in halves]), first["text"])
  loss, metrics = jax.jit(lambda p, b: task.loss_fn(p, {}, b, None))(variables["params"], first)
  assert np.isfinite(float(loss)) and float(metrics["infonce"]) == float(loss)
  evaluator = task.evaluator()
  for batch in task.eval_iterator(0, 1):
    evaluator.update(batch, jax.device_get(task.predict_fn(variables["params"], {}, batch)))
  result = evaluator.result()
  assert result["num_batches"] == 10 and np.isfinite(result["val_loss"])


def test_shared_predict_command_registry(trained, tmp_path):
  from dinoseg import predict as shared
  from dinoseg.models.talk2dino.weights import load_flax_params
  config, root = trained
  config = load_config(CONFIG, ["predict.classes=red,sky", "predict.with_background=True"])
  predictor = shared.build_predictor(config, None, {"params": load_flax_params(root / "run" / "projection.msgpack")})
  image = sources.CaptionRecords(root / "captions", "val")[1].image
  result = predictor.predict(image)
  assert result.label_map.shape == image.shape[:2] and result.class_names == ("background", "red", "sky")
  paths = predictor.write(result, image, tmp_path, "x")
  assert [p.name for p in paths] == ["x.png", "x_labels.png"] and all(p.exists() for p in paths)


def test_dinoseg_train_runs_the_task(trained, tmp_path):
  config, root = trained
  overrides = [f"--config.features.out_dir={root / 'features'}", "--config.train.num_steps=4",
               "--config.train.eval_every_steps=4", "--config.train.checkpoint_every_steps=4"]
  assert cli.main(["train", f"--config={CONFIG}", f"--workdir={tmp_path / 'run'}"] + overrides) == 0
  steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  losses = [s["infonce"] for s in steps if "infonce" in s]
  assert len(losses) == 4 and all(np.isfinite(losses))
  assert (tmp_path / "run" / "checkpoints" / "4").is_dir()


def test_generic_predict_and_eval_commands(trained, tmp_path):
  """`dinoseg predict --classes ... --with-background` and `dinoseg eval --weights` run Talk2DINO
  through the shared commands, with the same results as the Talk2DINO API."""
  from PIL import Image
  config, root = trained
  image = sources.CaptionRecords(root / "captions", "val")[0].image
  Image.fromarray(image).save(tmp_path / "in.png")
  out = tmp_path / "out"
  assert cli.main(["predict", f"--config={CONFIG}", f"--weights={root / 'run'}", f"--input={tmp_path / 'in.png'}",
                   f"--output={out}", "--classes=red,sky", "--with-background"]) == 0
  with Image.open(out / "in.png_labels.png") as raw:  # outputs start with the input's file name
    labels = np.asarray(raw)
  predictor = dinoseg.load(config, root / "run")
  np.testing.assert_array_equal(predictor.predict(image, class_names=["red", "sky"], with_background=True).label_map,
                                labels)
  data_dir = f"--config.eval.data_dir={root / 'benchmarks'}"
  output = tmp_path / "eval.json"
  assert cli.main(["eval", f"--config={CONFIG}", f"--weights={root / 'run'}", data_dir,
                   f"--config.eval.output={output}"]) == 0
  got = json.loads(output.read_text())["results"]
  assert sorted(got) == list(config.eval.benchmarks) and all(0.0 <= got[k]["mIoU"] <= 100.0 for k in got)
