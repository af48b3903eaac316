"""Stop requests: SIGTERM (preemption) and SIGINT (Ctrl-C) mean "finish this step, save, stop".

Single process: a handler for SIGTERM and SIGINT records the first signal and prints one line
(written straight to stderr: nothing else happens inside the handler); the train loop polls
`should_stop(step)` after every step, then saves a checkpoint, waits for it to commit and returns.
After that first signal both signals get their default action back, so a second Ctrl-C (or
SIGTERM) ends the process at once without saving; the checkpoints already committed stay intact
(saves are atomic). The commands exit with 128 + the signal number after a requested stop (130
for SIGINT, 143 for SIGTERM; `exit_status`).

Python runs signal handlers between bytecodes of the main thread, so a signal that arrives while
the main thread is inside a long native call (compiling the step) is seen when that call returns.

Several processes must stop at the same step or the collective save would hang. There JAX's
preemption sync manager (started by `jax.distributed.initialize`, which owns SIGTERM)
propagates the notice to every process and `should_stop(step)` returns True on all of them at
the same agreed step (`multihost_utils.reached_preemption_sync_point`); no Python SIGTERM handler
is installed then, and a SIGINT is forwarded to the process as a SIGTERM so that it takes the
same route.
"""
import os
import signal
import threading

import jax

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_status(signum: int) -> int:
  """The exit status of a command stopped on request by `signum` (the shell's 128 + N)."""
  return 128 + int(signum)


def signal_name(signum: int) -> str:
  try:
    return signal.Signals(signum).name
  except ValueError:
    return f"signal {signum}"


def _preemption_service_enabled() -> bool:
  """Whether `jax.distributed.initialize` started JAX's preemption service (it handles SIGTERM then)."""
  return bool(getattr(jax.config, "jax_enable_preemption_service", False))


class PreemptionHandler:
  """Context manager watching for stop requests (see module docstring).

  Attributes:
    signal_received: the signal number that asked to stop, or None.
  """

  def __init__(self, signals=STOP_SIGNALS):
    self._signals = tuple(signals)
    self._previous = {}
    self.signal_received: int | None = None
    self._multiprocess = False

  def __enter__(self) -> "PreemptionHandler":
    self._multiprocess = jax.process_count() > 1
    if threading.current_thread() is not threading.main_thread():
      return self
    if not self._multiprocess:
      handled = self._signals
    else:  # JAX owns SIGTERM; SIGINT is forwarded to it when its preemption service runs
      handled = (signal.SIGINT,) if signal.SIGINT in self._signals and _preemption_service_enabled() else ()
    for sig in handled:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signal_received is not None:  # only reached if a default action could not be restored
      return
    self.signal_received = signum
    for sig in self._previous:
      signal.signal(sig, signal.SIG_DFL)  # the next stop signal ends the process at once
    again = "Ctrl-C" if signum == signal.SIGINT else signal_name(signum)
    message = (f"\ndinoseg: {signal_name(signum)} received: stopping after the current step and saving a checkpoint "
               f"({again} again stops at once without saving)\n")
    try:
      os.write(2, message.encode())  # not print(): the handler may interrupt a write to the same stream
    except OSError:
      pass
    if self._multiprocess:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's handler: every process stops at one agreed step

  def should_stop(self, step: int) -> bool:
    """True when the run must checkpoint at `step` and stop (call once per step, on every process)."""
    if self._multiprocess:
      from jax.experimental import multihost_utils  # noqa: PLC0415
      try:
        if multihost_utils.reached_preemption_sync_point(int(step)):
          self.signal_received = self.signal_received or signal.SIGTERM
          return True
      except RuntimeError:  # the preemption service is disabled (jax_enable_preemption_service=False)
        return False
      return False
    return self.signal_received is not None


__all__ = ["PreemptionHandler", "STOP_SIGNALS", "exit_status", "signal_name"]
