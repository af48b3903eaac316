"""`dinoseg data`: bad arguments are one-line user errors (exit 2) found before any work."""
from dinoseg import cli


def test_data_command_bad_input(tmp_path, capsys):
  def fails(*argv, says):
    assert cli.main(["data", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err

  fails(says="give a subcommand")
  fails("inspect", tmp_path, says="holds no manifest.json")
  fails("prepare", "--dataset", "coco_instances", "--raw", tmp_path / "nope", "--output", tmp_path / "o",
        says="is not a directory")
  (tmp_path / "raw").mkdir()
  fails("prepare", "--dataset", "coco_instances", "--raw", tmp_path / "raw", "--output", tmp_path / "o", "--workers", 0,
        says="--workers must be >= 1")
  fails("prepare", "--dataset", "coco_instances", "--raw", tmp_path / "raw", "--output", tmp_path / "o", "--option", "x",
        says="KEY=VALUE")
  fails("prepare", "--dataset", "sa1b", "--raw", tmp_path / "raw", "--output", tmp_path / "raw", says="is inside --raw")
  fails("prepare", "--dataset", "sa1b", "--raw", tmp_path / "raw", "--output", tmp_path / "raw" / "o",
        says="is inside --raw")
  assert list((tmp_path / "raw").iterdir()) == []
  fails("synth", "--layout", "coco", "--output", tmp_path / "s", "--image-size", "8", says="--image-size")
  fails("synth", "--layout", "coco", "--output", tmp_path / "s", "--num-images", 0, says="--num-images")
  fails("synth", "--layout", "ade20k", "--output", tmp_path / "s", "--corrupt", says="--corrupt")
  assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_inspect_show_out_of_range(tmp_path, capsys):
  raw, out = tmp_path / "raw", tmp_path / "out"
  assert cli.main(["data", "synth", "--layout", "coco", "--output", str(raw), "--num-images", "1",
                   "--image-size", "32", "--splits", "val"]) == 0
  assert cli.main(["data", "prepare", "--dataset", "coco_instances", "--raw", str(raw), "--output", str(tmp_path / "x"),
                   "--no-progress"]) == 2  # no train split in the raw data
  assert "instances_train2017.json not found" in capsys.readouterr().err
  assert cli.main(["data", "prepare", "--dataset", "coco_instances", "--raw", str(raw), "--output", str(out),
                   "--split", "val", "--no-progress"]) == 0
  capsys.readouterr()
  assert cli.main(["data", "inspect", str(out), "--show", "5"]) == 2
  assert "--show 5 is out of range" in capsys.readouterr().err
  assert cli.main(["data", "inspect", str(out), "--show", "0", "--split", "train"]) == 2
  assert "not prepared" in capsys.readouterr().err
