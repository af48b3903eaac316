"""`dinoseg predict` never loses a user's data (issue 18): outputs are named after the input's full file
name (x.png and x.jpg get distinct outputs), an --output where an output would land on an input is refused
before anything is written, an image of extreme aspect ratio is predicted like any other, the results of
the images done are kept when one fails, and each image's line says how many instances were drawn."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dinoseg import cli, predict
from dinoseg.config import load_config
from dinoseg.convert.pth_writer import write_pth
from dinoseg.models.maskdino import convert
from dinoseg.models.maskdino.model import build_model
from dinoseg.structures import Segmentation, segments_from_label_map

CONFIG = "configs/maskdino/quickstart.py:tiny"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  config = load_config(CONFIG)
  variables = jax.tree.map(np.asarray, dict(build_model(config.model).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))))
  return write_pth(convert.to_torch(variables, config.model, no_object_weight=config.loss.no_object_weight),
                   tmp_path_factory.mktemp("weights") / "tiny.pth")


def _images(folder, sizes: dict) -> dict:
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for name, (h, w) in sizes.items():
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
  return {name: (folder / name).read_bytes() for name in sizes}


def _predict(weights, images, out, *extra):
  return cli.main(["predict", f"--config={CONFIG}", f"--weights={weights}", f"--input={images}", f"--output={out}",
                   *extra])


def test_an_output_onto_an_input_is_refused_before_anything_is_written(weights, tmp_path, capsys):
  images = tmp_path / "imgs"
  before = _images(images, {"x.png": (32, 48), "x.jpg": (32, 48), "x.jpg.png": (32, 48)})
  assert _predict(weights, images, images) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"dinoseg predict: error: --output={images} would overwrite the input image {images / 'x.jpg.png'} "
                 "(with an output of x.jpg); choose another --output directory"]
  assert {p.name: p.read_bytes() for p in images.iterdir()} == before


@pytest.mark.slow  # long: with `pytest -m slow`, keeping the default run under 20 minutes
def test_names_never_collide_an_extreme_image_predicts_and_counts_are_shown(weights, tmp_path, capsys):
  images = tmp_path / "imgs"
  before = _images(images, {"x.png": (32, 48), "x.jpg": (32, 48), "z_thin.png": (4, 3000)})
  assert _predict(weights, images, images) == 0  # the input folder itself: no output lands on an input
  assert {p.name: p.read_bytes() for p in images.iterdir() if p.name in before} == before
  for name, (h, w) in {"x.png": (32, 48), "x.jpg": (32, 48), "z_thin.png": (4, 3000)}.items():
    with Image.open(images / f"{name}.png") as overlay:
      assert overlay.size == (w, h)
  results = json.loads((images / predict.PREDICTIONS_FILE).read_text())
  assert {r["file_name"] for r in results} == {"x.png", "x.jpg", "z_thin.png"}
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.startswith("[")]
  assert len(lines) == 3 and all(" of 6 instances drawn" in line for line in lines), err
  assert "is below --score-threshold 0.5" in err or "(score >= 0.5)" in err


def test_results_of_the_images_done_are_kept_when_one_fails(weights, tmp_path, monkeypatch):
  images = tmp_path / "imgs"
  _images(images, {"a.png": (32, 48), "b.png": (40, 48)})
  original = predict.MaskDINOPredictor.predict

  def failing(self, image, **prompts):
    if image.shape[0] == 40:
      raise RuntimeError("a bug in the predictor")
    return original(self, image, **prompts)

  monkeypatch.setattr(predict.MaskDINOPredictor, "predict", failing)
  with pytest.raises(RuntimeError, match="a bug in the predictor"):  # a bug keeps its traceback
    _predict(weights, images, tmp_path / "out")
  results = json.loads((tmp_path / "out" / predict.PREDICTIONS_FILE).read_text())
  assert {r["file_name"] for r in results} == {"a.png"}


def test_summary_when_nothing_is_drawn():
  names = ("sky", "cat", "dog")
  result = Segmentation(masks=np.zeros((2, 1, 2), bool), scores=np.array([0.2, 0.1], np.float32),
                        labels=np.array([1, 2], np.int32), names=("cat", "dog"), class_names=names,
                        boxes=np.zeros((2, 4), np.float32))
  assert predict.summarize(result, 0.5) == ("0 of 2 instances drawn: the best score 0.200 is below "
                                            "--score-threshold 0.5")
  assert predict.summarize(result, 0.15) == "1 of 2 instances drawn (score >= 0.15)"
  semantic = Segmentation(**segments_from_label_map(np.array([[0, 2]]), names), label_map=np.array([[0, 2]]))
  assert predict.summarize(semantic) == "2 classes: sky, dog"


def test_annotations_give_the_dataset_image_ids_and_the_results_score_against_it(weights, tmp_path, capsys):
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  images = tmp_path / "imgs"
  _images(images, {"a.jpg": (32, 48), "b.png": (40, 48)})
  config = load_config(CONFIG)
  category_ids = list(config.get("dataset", {}).get("category_ids", ()) or ()) or list(range(config.model.num_classes))
  gt = {"images": [{"id": 139, "file_name": "val/a.jpg", "height": 32, "width": 48},
                   {"id": 785, "file_name": "b.png", "height": 40, "width": 48},
                   {"id": 7, "file_name": "not_an_input.png", "height": 8, "width": 8}],
        "annotations": [{"id": 1, "image_id": 139, "category_id": category_ids[0], "bbox": [4, 4, 20, 10],
                         "area": 200, "iscrowd": 0, "segmentation": [[4, 4, 24, 4, 24, 14, 4, 14]]}],
        "categories": [{"id": c, "name": str(c)} for c in category_ids]}
  annotations = tmp_path / "instances.json"
  annotations.write_text(json.dumps(gt))
  assert _predict(weights, images, tmp_path / "out", f"--annotations={annotations}", "--score-threshold=0") == 0
  results = json.loads((tmp_path / "out" / predict.PREDICTIONS_FILE).read_text())
  assert results and {(r["file_name"], r["image_id"]) for r in results} == {("a.jpg", 139), ("b.png", 785)}
  coco = COCO(str(annotations))
  evaluator = COCOeval(coco, coco.loadRes([{k: v for k, v in r.items() if k != "file_name"} for r in results]), "bbox")
  evaluator.evaluate()  # pycocotools accepts them: every image id and category id exists in the dataset
  capsys.readouterr()
  # an input the file does not list is refused before anything runs
  _images(images, {"c.png": (32, 32)})
  assert _predict(weights, images, tmp_path / "out2", f"--annotations={annotations}") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "1 input image(s) are not in its 'images' list (e.g. c.png)" in err[0], err
  assert not (tmp_path / "out2").exists()
  (tmp_path / "bad.json").write_text("{not json")
  assert _predict(weights, images, tmp_path / "out3", f"--annotations={tmp_path / 'bad.json'}") == 2
  assert "not a readable JSON file" in capsys.readouterr().err


def test_an_option_the_predictor_does_not_take_is_one_line(weights, tmp_path, capsys):
  images = tmp_path / "imgs"
  _images(images, {"a.png": (32, 48)})
  assert _predict(weights, images, tmp_path / "out", f"--examples={images}") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "takes no examples" in err[0], err
