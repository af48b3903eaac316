"""Preemption: turn SIGTERM into "save a checkpoint at the current step and exit cleanly".

Single process: a SIGTERM handler sets a flag (nothing else happens inside the handler); the
train loop polls `should_stop(step)` after every step, then saves, waits for the save to commit
and returns normally (exit status 0).

Several processes must stop at the same step or the collective save would hang. There JAX's
preemption sync manager (started by `jax.distributed.initialize`, which owns SIGTERM)
propagates the notice to every process and `should_stop(step)` returns True on all of them at
the same agreed step (`multihost_utils.reached_preemption_sync_point`); no Python handler is
installed then.
"""
import signal
import threading

import jax


class PreemptionHandler:
  """Context manager watching for SIGTERM (see module docstring).

  Attributes:
    signal_received: the signal number that asked to stop, or None.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self._signals = tuple(signals)
    self._previous = {}
    self.signal_received: int | None = None
    self._multiprocess = False

  def __enter__(self) -> "PreemptionHandler":
    self._multiprocess = jax.process_count() > 1
    if not self._multiprocess and threading.current_thread() is threading.main_thread():
      for sig in self._signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    del frame
    self.signal_received = signum

  def should_stop(self, step: int) -> bool:
    """True when the run must checkpoint at `step` and stop (call once per step, on every process)."""
    if self._multiprocess:
      from jax.experimental import multihost_utils  # noqa: PLC0415
      try:
        if multihost_utils.reached_preemption_sync_point(int(step)):
          self.signal_received = signal.SIGTERM
          return True
      except RuntimeError:  # the preemption service is disabled (jax_enable_preemption_service=False)
        return False
      return False
    return self.signal_received is not None


__all__ = ["PreemptionHandler"]
