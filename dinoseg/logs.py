"""Console logging for the `dinoseg` command.

Library code never prints: each module logs through `logging.getLogger(__name__)` (names under
"dinoseg"). Commands print only their results (JSON, tables, summaries) to stdout; progress and
diagnostics are log records. `dinoseg --verbosity LEVEL` calls `configure(LEVEL)`, which installs one
handler on the root logger that writes plain one-line messages to stderr, above a tqdm progress bar
when one is shown:

  starting a new run in /tmp/run (1 process(es), 1 devices, ...)      dinoseg INFO: the message
  WARNING init.backbone: no file given; backbone starts random        dinoseg WARNING / ERROR: level first
  WARNING tensorboardX.x2num: NaN or Inf found in input tensor.       other libraries: level and logger

dinoseg's own records are shown from LEVEL up, other libraries' from WARNING up (from ERROR with
`--verbosity=error`). XLA's C++ log lines are a separate stream: see `quiet_native_logs`.
"""
import logging
import os
import sys

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
DEFAULT = "info"
# C++ (TSL / absl) minimum log level read by jaxlib: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL only.
NATIVE_LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"


class _Formatter(logging.Formatter):
  """dinoseg INFO / DEBUG records: the bare message; warnings and errors: the level first; other
  libraries' records: level and logger name first."""

  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.exc_info:
      message = f"{message}\n{self.formatException(record.exc_info)}"
    if not (record.name == "dinoseg" or record.name.startswith("dinoseg.")):
      return f"{record.levelname} {record.name}: {message}"
    return message if record.levelno < logging.WARNING else f"{record.levelname} {message}"


class ConsoleHandler(logging.Handler):
  """Writes each record as one line to the current `sys.stderr` (looked up per record, so redirections
  and pytest's capture see it), through `tqdm.write` while a tqdm bar is shown so the bar stays intact."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      text = self.format(record)
      tqdm_module = sys.modules.get("tqdm")
      if tqdm_module is not None and getattr(tqdm_module.tqdm, "_instances", None):
        tqdm_module.tqdm.write(text, file=sys.stderr)
      else:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001  (logging's contract: report through handleError, never raise)
      self.handleError(record)


def configure(verbosity: str = DEFAULT) -> None:
  """Shows dinoseg's log records from `verbosity` ("debug", "info", "warning", "error") up on stderr.

  Idempotent: a second call replaces the handler of the first.
  """
  if verbosity not in LEVELS:
    raise ValueError(f"verbosity must be one of {', '.join(LEVELS)}, got {verbosity!r}")
  root = logging.getLogger()
  for handler in [h for h in root.handlers if isinstance(h, ConsoleHandler)]:
    root.removeHandler(handler)
  handler = ConsoleHandler()
  handler.setFormatter(_Formatter())
  root.addHandler(handler)
  root.setLevel(max(LEVELS[verbosity], logging.WARNING))
  logging.getLogger("dinoseg").setLevel(LEVELS[verbosity])


def quiet_native_logs(verbosity: str = DEFAULT) -> None:
  """Hides XLA's C++ log lines below FATAL unless `verbosity` is "debug" (then XLA's defaults apply).

  XLA reports a compilation that runs past two minutes as an ERROR line ("Very slow compile? If you
  want to file a bug, ...", from slow_operation_alarm.cc); on a CPU that is a normal first step, and
  XLA has no flag that turns the alarm off, so the C++ minimum log level is raised instead (the
  trainer says itself when it compiles). Must run before jaxlib logs anything; a value the user set
  in the environment is kept.
  """
  if verbosity != "debug" and NATIVE_LOG_LEVEL_ENV not in os.environ:
    os.environ[NATIVE_LOG_LEVEL_ENV] = "3"


__all__ = ["LEVELS", "DEFAULT", "configure", "quiet_native_logs", "ConsoleHandler"]
