"""`dinoseg predict` for Mask DINO end to end: a reference-layout .pth (random tiny panoptic model,
written by the converter) on a folder of images of different sizes, one EXIF-rotated, one corrupt and
one truncated. Checks every output (overlays at the original size, COCO results, panoptic and semantic
maps), that the .pth round trip predicts what the in-memory weights predict, and that bad images are
reported and skipped without losing the others' outputs."""
import io
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

CONFIG = "configs/maskdino/coco_panoptic_r50_3s_d1_2048.py:tiny"
SIZES = {"wide.png": (48, 80), "tall.png": (72, 40)}  # (H, W) of the good images


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("predict")
  config = load_config(CONFIG)
  variables = build_model(config.model).init(jax.random.key(3), jnp.zeros((1, 64, 64, 3)))
  variables = jax.tree.map(np.asarray, dict(variables))
  weights = write_pth(convert.to_torch(variables, config.model, no_object_weight=config.loss.no_object_weight),
                      root / "tiny_panoptic.pth")
  images = root / "images"
  images.mkdir()
  rng = np.random.default_rng(0)
  for name, (h, w) in SIZES.items():
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / name)
  # Stored 40 wide x 56 high with EXIF orientation 6 (rotate 90 degrees clockwise to view): 56 x 40 upright.
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(rng.integers(0, 256, (56, 40, 3), dtype=np.uint8)).save(images / "rotated.jpg", exif=exif)
  (images / "corrupt.jpg").write_bytes(b"this is not a JPEG at all" * 10)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
  (images / "truncated.jpg").write_bytes(buf.getvalue()[:200])
  out = root / "out"
  rc = cli.main(["predict", f"--config={CONFIG}", f"--weights={weights}", f"--input={images}", f"--output={out}",
                 "--score-threshold=0.0"])
  return config, variables, weights, images, out, rc


def test_bad_images_are_reported_and_the_others_written(setup, capsys):
  *_, images, out, rc = setup
  assert rc == 1
  good = {"wide.png", "tall.png", "rotated.jpg"}  # overlays are named <input file name>.png
  assert {p.name.removesuffix(".png") for p in out.glob("*.png") if "_" not in p.name} == good
  with pytest.raises(predict.UnreadableImageError, match="corrupt.jpg"):
    predict.read_image(images / "corrupt.jpg")
  with pytest.raises(predict.UnreadableImageError, match="truncated.jpg"):
    predict.read_image(images / "truncated.jpg")
  with pytest.raises(FileNotFoundError):
    predict.read_image(images / "missing.jpg")


def test_outputs_at_the_original_size(setup):
  config, _, _, _, out, _ = setup
  sizes = {**SIZES, "rotated.jpg": (40, 56)}  # EXIF applied: the stored 56 x 40 (W x H) image viewed upright
  for stem, (h, w) in sizes.items():
    for suffix in ("", "_panoptic", "_semantic"):
      with Image.open(out / f"{stem}{suffix}.png") as overlay:
        assert overlay.size == (w, h) and overlay.mode == "RGB", (stem, suffix)
    with Image.open(out / "panoptic" / f"{stem}.png") as seg:
      assert seg.size == (w, h)
      ids = np.asarray(seg.convert("RGB")).astype(np.int64) @ np.array([1, 256, 256 * 256])
    info = json.loads((out / "panoptic" / f"{stem}.json").read_text())
    assert set(np.unique(ids)) - {0} == {s["id"] for s in info}
    for s in info:  # the reference's segments_info (contiguous category ids)
      assert set(s) == {"id", "isthing", "category_id"} and 0 <= s["category_id"] < config.model.num_classes
    with Image.open(out / "semantic" / f"{stem}.png") as sem:
      labels = np.asarray(sem)
    assert labels.shape == (h, w) and labels.max() < config.model.num_classes


def test_coco_results(setup):
  from pycocotools import mask as mask_util
  config, _, _, _, out, _ = setup
  results = json.loads((out / "predictions.json").read_text())
  sizes = {**SIZES, "rotated.jpg": (40, 56)}
  per_image = {}
  for r in results:
    per_image.setdefault(r["file_name"], []).append(r)
    h, w = sizes[r["file_name"]]
    assert r["segmentation"]["size"] == [h, w]
    # Boxes are not clipped, as in the reference: sigmoid (cx, cy, w, h) -> xyxy in [-0.5, 1.5], scaled by
    # padded / valid x original size (dinoseg/models/maskdino/postprocess.py).
    nh, nw = predict.resize_shortest_edge(h, w, config.test.min_size, config.test.max_size)
    reach_h, reach_w = -(-nh // 32) * 32 / nh * h, -(-nw // 32) * 32 / nw * w
    x, y, bw, bh = r["bbox"]
    assert bw >= 0 and bh >= 0
    assert -0.5 * reach_w <= x and x + bw <= 1.5 * reach_w and -0.5 * reach_h <= y and y + bh <= 1.5 * reach_h
    assert 0.0 <= r["score"] <= 1.0 and 0 <= r["category_id"] < config.model.num_classes
    assert mask_util.decode(r["segmentation"]).shape == (h, w)
  assert set(per_image) == set(sizes)
  assert len({r["image_id"] for r in results}) == 3
  for rows in per_image.values():
    assert len(rows) == config.test.detections_per_image


def test_pth_round_trip_predicts_as_the_original_weights(setup):
  config, variables, weights, images, _, _ = setup
  image = predict.read_image(images / "wide.png")
  from_file = predict.build_predictor(config, weights).predict(image)
  in_memory = predict.build_predictor(config, None, variables=variables).predict(image)
  np.testing.assert_allclose(from_file.scores, in_memory.scores, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(from_file.labels, in_memory.labels)
  np.testing.assert_allclose(from_file.semantic, in_memory.semantic, rtol=1e-5, atol=1e-6)


def test_dataset_category_ids_in_both_json_outputs(setup, tmp_path):
  config, variables, _, images, _, _ = setup
  ids = tuple(100 + 3 * i for i in range(config.model.num_classes))
  mapped = load_config(CONFIG, [f"dataset.category_ids={ids}"])
  predictor = predict.build_predictor(mapped, None, variables=variables)
  image = predict.read_image(images / "wide.png")
  result = predictor.predict(image)
  predictor.write(result, image, tmp_path, "wide")
  predictor.finish(tmp_path)
  info = json.loads((tmp_path / "panoptic" / "wide.json").read_text())
  assert [s["category_id"] for s in info] == [ids[s["category_id"]] for s in result.segments]
  coco = json.loads((tmp_path / "predictions.json").read_text())
  assert [r["category_id"] for r in coco] == [ids[k] for k in result.labels]
