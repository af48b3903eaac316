"""Console output of the CLI (`--verbosity`, log records on stderr, results on stdout), the persistent
compilation cache (`--compile-cache`), XLA's C++ log level and the lazy tensorflow-datasets import."""
import logging
import os
import pathlib
import subprocess
import sys

import pytest

from dinoseg import cli, compile_cache, logs
from dinoseg.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY = "configs/toy/toy_segmentation.py:tiny"


def _env() -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if not f.startswith("--xla_force_host_platform_device_count"))
  for name in ("JAX_COMPILATION_CACHE_DIR", "TF_CPP_MIN_LOG_LEVEL"):
    env.pop(name, None)
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def _train(workdir, *flags, code: str = "") -> subprocess.CompletedProcess:
  """`dinoseg [flags before 'train'] train` of the tiny toy config for 2 steps, through `cli.main` in a
  fresh interpreter; `code` runs after it (e.g. checks on sys.modules)."""
  before = [f for f in flags if f.startswith("--verbosity")]
  after = [f for f in flags if not f.startswith("--verbosity")]
  args = [*before, "train", f"--config={TOY}", f"--workdir={workdir}", "--config.train.num_steps=2",
          "--config.train.eval_at_end=False", "--config.train.progress=False", *after]
  script = f"import sys\nfrom dinoseg import cli\nstatus = cli.main({args!r})\n{code}\nsys.exit(status)\n"
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc


@pytest.mark.slow  # long: with `pytest -m slow`, keeping the default run under 20 minutes
def test_a_rerun_reads_the_train_step_from_the_compile_cache(tmp_path):
  cache = tmp_path / "cache"
  first = _train(tmp_path / "a", f"--compile-cache={cache}")
  assert "step 1: compiling the train step" in first.stderr and str(cache) in first.stderr, first.stderr
  assert "0 program(s) read from the compilation cache" in first.stderr, first.stderr
  entries = [p for p in cache.iterdir() if p.is_file()]
  assert entries, "the first run wrote no cache entry"
  second = _train(tmp_path / "b", f"--compile-cache={cache}")  # a fresh workdir, the same programs
  line = next(line for line in second.stderr.splitlines() if "first step (with compilation)" in line)
  read = int(line.split("; ")[1].split()[0])
  assert read >= 1 and line.endswith(", 0 compiled"), second.stderr
  # The default cache lives in the workdir; `none` turns it off.
  _train(tmp_path / "c")
  assert any((tmp_path / "c" / compile_cache.DEFAULT_NAME).iterdir())
  off = _train(tmp_path / "d", "--compile-cache=none")
  assert "compilation cache: none" in off.stderr and not (tmp_path / "d" / compile_cache.DEFAULT_NAME).exists()
  assert "read from the compilation cache" not in off.stderr


def test_verbosity_warning_hides_info_lines_and_training_imports_no_tensorflow(tmp_path):
  code = "assert not [m for m in sys.modules if m.startswith(('tensorflow', 'tensorflow_datasets'))], 'tensorflow'"
  proc = _train(tmp_path / "run", "--verbosity=warning", "--compile-cache=none", code=code)
  assert "completed at step 2" in proc.stdout  # the result
  assert "starting a new run" not in proc.stderr and "step 1:" not in proc.stderr, proc.stderr
  assert "WARNING init.checkpoint: no file given" in proc.stderr  # warnings stay


def test_console_handler_levels_and_format(capsys):
  try:
    logs.configure("warning")
    log = logging.getLogger("dinoseg.some.module")
    log.info("an info line")
    log.warning("a warning line")
    logging.getLogger("otherlib").warning("third-party warning")
    logging.getLogger("otherlib").info("third-party info")
    assert capsys.readouterr().err.splitlines() == ["WARNING a warning line", "WARNING otherlib: third-party warning"]
    logs.configure("info")
    log.info("an info line")
    logging.getLogger("otherlib").info("third-party info")
    assert capsys.readouterr().err.splitlines() == ["an info line"]
    assert sum(isinstance(h, logs.ConsoleHandler) for h in logging.getLogger().handlers) == 1
  finally:
    logs.configure(logs.DEFAULT)


def test_verbosity_flag_is_parsed_before_and_after_the_command(capsys):
  assert cli.main(["--verbosity=error", "config", "show", f"--config={TOY}"]) == 0
  assert logging.getLogger("dinoseg").level == logging.ERROR
  assert cli.main(["config", "show", f"--config={TOY}", "--verbosity=debug"]) == 0
  assert logging.getLogger("dinoseg").level == logging.DEBUG
  assert cli.main(["config", "show", f"--config={TOY}"]) == 0
  assert logging.getLogger("dinoseg").level == logging.INFO
  capsys.readouterr()
  with pytest.raises(SystemExit):
    cli.main(["--verbosity=loud", "config", "show", f"--config={TOY}"])
  assert "invalid choice: 'loud'" in capsys.readouterr().err


def test_xla_native_logs_hidden_unless_debug_or_set_by_the_user(monkeypatch):
  monkeypatch.delenv(logs.NATIVE_LOG_LEVEL_ENV, raising=False)
  logs.quiet_native_logs("debug")
  assert logs.NATIVE_LOG_LEVEL_ENV not in os.environ
  logs.quiet_native_logs("info")
  assert os.environ[logs.NATIVE_LOG_LEVEL_ENV] == "3"  # XLA's "Very slow compile?" alarm is an ERROR line
  monkeypatch.setenv(logs.NATIVE_LOG_LEVEL_ENV, "1")
  logs.quiet_native_logs("info")
  assert os.environ[logs.NATIVE_LOG_LEVEL_ENV] == "1"


def test_compile_cache_resolution(tmp_path, monkeypatch):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  assert compile_cache.resolve(None, tmp_path) == tmp_path.resolve() / "compile_cache"
  assert compile_cache.resolve(None) is None
  assert compile_cache.resolve("none", tmp_path) is None and compile_cache.resolve("NONE") is None
  assert compile_cache.resolve(str(tmp_path / "c"), tmp_path / "w") == (tmp_path / "c").resolve()
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
  assert compile_cache.resolve(None, tmp_path / "w") == (tmp_path / "env").resolve()
  (tmp_path / "file").write_text("x")
  for bad in ("", str(tmp_path / "file")):
    with pytest.raises(UserError, match="--compile-cache"):
      compile_cache.resolve(bad)


def test_compile_cache_settings_are_restored_after_a_command(tmp_path):
  import jax
  before = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
  with compile_cache.use(str(tmp_path / "cache")) as directory:
    assert directory == (tmp_path / "cache").resolve() and compile_cache.directory() == directory
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
  assert (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs) == before


def test_importing_dinoseg_and_its_cli_does_not_import_tensorflow_datasets():
  code = ("import dinoseg, dinoseg.cli, dinoseg.train.trainer, dinoseg.data_pipelines, sys;"
          "dinoseg.cli.build_parser();"
          "assert 'tensorflow_datasets' not in sys.modules, 'tensorflow_datasets imported'")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  code = ("import sys\nfrom dinoseg import cli\ntry:\n  cli.main(['--help'])\nexcept SystemExit:\n  pass\n"
          "assert 'tensorflow_datasets' not in sys.modules, 'tensorflow_datasets imported'")
  help_proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                             timeout=120)
  assert help_proc.returncode == 0 and "--verbosity" in help_proc.stdout, help_proc.stderr
