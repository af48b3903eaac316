"""`dinoseg demo segnext --port=N` with N in use fails at once, before any model is loaded."""
import socket

from dinoseg import cli
from dinoseg.demo.segnext import launch


def test_busy_port_fails_before_the_model_loads(monkeypatch, capsys):
  def never(*args, **kwargs):
    raise AssertionError("the model must not be loaded when the port is busy")

  monkeypatch.setattr(launch, "build_predictor", never)
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    code = cli.main(["demo", "segnext", "--random-init", f"--port={port}"])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1
  assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err


def test_bad_port_and_weights_flags_are_user_errors(capsys):
  assert cli.main(["demo", "segnext", "--random-init", "--port=70000"]) == 2
  assert "--port must be in [0, 65535]" in capsys.readouterr().err
  assert cli.main(["demo", "segnext", "--random-init", "--weights=w.pth"]) == 2
  assert "exactly one of --weights and --random-init" in capsys.readouterr().err
  assert cli.main(["demo"]) == 2
  assert "name a demo" in capsys.readouterr().err
