"""`dinoseg dinov bank / eval` and `dinoseg predict --examples` for DINOv: every bad input is one line, exit 2;
end to end (slow): bank from a prepared dataset, generic eval, predict with an examples directory."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dinoseg import cli

CONFIG = "configs/dinov/swint_sam_coco.py:tiny"
MASKDINO = "configs/maskdino/coco_instance_r50_3s_d1_2048.py"


def _run(capsys, *argv):
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


def _one_line_error(capsys, *argv, match=""):
  code, _, err = _run(capsys, *argv)
  lines = [line for line in err.strip().splitlines() if line.startswith("dinoseg")]
  assert code == 2, err
  assert len(lines) == 1 and "Traceback" not in err, err
  assert match in lines[0], lines[0]
  return lines[0]


def test_bad_inputs_exit_2(capsys, tmp_path):
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x.txt").write_text("keep")
  _one_line_error(capsys, "dinov", match="name a job")
  _one_line_error(capsys, "dinov", "bank", f"--config={CONFIG}", f"--data={tmp_path}/none", f"--out={tmp_path}/o",
                  "--random-init", match="no such")
  _one_line_error(capsys, "dinov", "bank", f"--config={CONFIG}", f"--data={tmp_path}", f"--out={tmp_path}/full",
                  "--random-init", match="not an empty directory")
  assert (tmp_path / "full" / "x.txt").read_text() == "keep"
  _one_line_error(capsys, "dinov", "bank", f"--config={CONFIG}", f"--data={tmp_path}/full", f"--out={tmp_path}/o",
                  match="--weights")
  _one_line_error(capsys, "dinov", "bank", f"--config={MASKDINO}", f"--data={tmp_path}", f"--out={tmp_path}/o",
                  "--random-init", match="not a DINOv config")
  _one_line_error(capsys, "dinov", "bank", f"--config={CONFIG}", f"--data={tmp_path}/full", f"--out={tmp_path}/o",
                  "--random-init", match="no example masks")
  _one_line_error(capsys, "dinov", "bank", f"--config={CONFIG}", f"--data={tmp_path}/full", f"--out={tmp_path}/o",
                  "--weights=/nonexistent.pth", match="no such weights")
  _one_line_error(capsys, "dinov", "eval", "--protocol=generic", f"--config={CONFIG}", "--random-init",
                  match="--bank")
  _one_line_error(capsys, "dinov", "eval", "--protocol=generic", f"--config={CONFIG}", "--random-init",
                  f"--bank={tmp_path}/full", match="no prompt bank")
  _one_line_error(capsys, "dinov", "eval", "--protocol=vos", f"--config={CONFIG}", "--random-init", match="--vos=DIR")
  _one_line_error(capsys, "dinov", "eval", "--protocol=generic", f"--config={CONFIG}", "--random-init",
                  f"--bank={tmp_path}", f"--output={tmp_path}/full/x.txt", match="exists")
  _one_line_error(capsys, "dinov", "eval", "--protocol=generic", f"--config={CONFIG}", "--random-init",
                  f"--bank={tmp_path}", "--num-examples=0", match="--num-examples")
  with pytest.raises(SystemExit) as e:  # argparse's usage error: exit status 2
    cli.main(["dinov", "eval", "--protocol=nope", f"--config={CONFIG}"])
  assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
  # dinoseg predict --examples: a bad examples directory is refused before any image runs
  (tmp_path / "in").mkdir()
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in" / "a.png")
  weights = tmp_path / "w.msgpack"
  weights.write_bytes(b"\x00not msgpack")
  _one_line_error(capsys, "predict", f"--config={CONFIG}", f"--weights={weights}", f"--input={tmp_path}/in",
                  f"--output={tmp_path}/out", f"--examples={tmp_path}/full", match="")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
  from flax import serialization

  from dinoseg.config import load_config
  from dinoseg.models.dinov.model import build_model
  config = load_config(CONFIG)
  model = build_model(config.model)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  path = tmp_path_factory.mktemp("w") / "dinov_tiny.msgpack"
  path.write_bytes(serialization.msgpack_serialize(jax.tree.map(np.asarray, dict(variables))))
  return path


@pytest.mark.slow
def test_bank_eval_predict_end_to_end(capsys, tmp_path, tiny_weights):
  from dinoseg.data_pipelines import synth, writer
  synth.synthesize("coco_panoptic", str(tmp_path / "raw"), num_images=2, image_size=(40, 72), max_objects=3, seed=2,
                   splits=("val",))
  writer.prepare("coco_panoptic", str(tmp_path / "raw"), str(tmp_path / "data"), splits=("val",), num_shards=1,
                 progress=False)
  code, out, err = _run(capsys, "dinov", "bank", f"--config={CONFIG}", f"--weights={tiny_weights}",
                        f"--data={tmp_path / 'data'}", "--split=val", f"--out={tmp_path / 'bank'}")
  assert code == 0, err
  assert (tmp_path / "bank" / "index.json").is_file() and "embeddings of" in out
  code, out, err = _run(capsys, "dinov", "eval", "--protocol=generic", f"--config={CONFIG}", f"--weights={tiny_weights}",
                        f"--bank={tmp_path / 'bank'}", f"--data={tmp_path / 'data'}", "--split=val",
                        "--num-examples=2", f"--output={tmp_path / 'metrics.json'}")
  assert code == 0, err
  metrics = json.loads((tmp_path / "metrics.json").read_text())["results"]
  assert metrics["num_images"] == 2 and "PQ" in metrics and "segm/AP" in metrics
  # predict with an examples directory (images + mask PNGs)
  ex, inp = tmp_path / "examples", tmp_path / "inputs"
  ex.mkdir()
  inp.mkdir()
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
  Image.fromarray(image).save(ex / "e.png")
  Image.fromarray(image).save(inp / "t.png")
  m = np.zeros((48, 64), np.uint8)
  m[10:30, 10:40] = 255
  Image.fromarray(m).save(ex / "e.png__box.png")
  code, out, err = _run(capsys, "predict", f"--config={CONFIG}", f"--weights={tiny_weights}", f"--input={inp}",
                        f"--output={tmp_path / 'out'}", f"--examples={ex}", "--score-threshold=0")
  assert code == 0, err
  assert (tmp_path / "out" / "t.png.png").is_file()
  results = json.loads((tmp_path / "out" / "predictions.json").read_text())
  assert results and {r["category_id"] for r in results} == {1} and {r["file_name"] for r in results} == {"t.png"}
