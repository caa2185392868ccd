"""Graceful stop on SIGTERM (TPU-VM / spot preemption) and SIGINT (Ctrl-C).

    with PreemptionHandler() as preempt:
      for step in range(start, num_steps):
        state = train_step(state, batch)
        stop = preempt.should_stop(step + 1)   # once per step: it may be a collective
        if stop or ckpt.should_save(step + 1):
          ckpt.save(step + 1, state, data_state, config, force=stop)
        if stop:
          break                      # exits 0 after the loop's normal clean-up
      ckpt.wait_until_finished()

The first signal only sets a flag, so the current step finishes and a checkpoint is written; a
second signal of the same kind restores the previous handler and re-delivers the signal (SIGTERM
kills the process, SIGINT raises KeyboardInterrupt).

Multi-host: a per-host flag cannot be used to stop, because hosts that did not get the signal
would keep stepping and the collective save would hang. When `jax.distributed` runs with its
preemption service (the default on TPU pods), JAX catches SIGTERM itself and agrees on a safe step
across hosts; this handler then leaves SIGTERM alone and `should_stop(step)` asks
`multihost_utils.reached_preemption_sync_point(step)`, which every host must call at every step.
Without a coordinator that call returns False, so the single-host path is just the flag.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _jax_preemption_service_active() -> bool:
  """True when jax.distributed runs a preemption sync manager (it owns SIGTERM then)."""
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    return distributed.global_state.preemption_sync_manager is not None
  except (ImportError, AttributeError):
    return False


def reached_preemption_sync_point(step: int) -> bool:
  """Multi-host agreed preemption step; False when JAX has no coordinator or no service."""
  if "jax" not in sys.modules:
    return False  # jax never imported -> no distributed runtime either
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  try:
    return bool(multihost_utils.reached_preemption_sync_point(int(step)))
  except RuntimeError:  # coordinator up but preemption service disabled
    return False


# Exit status of an entry point that stopped early on request after saving (resumable): EX_TEMPFAIL
# from sysexits.h, "temporary failure, retry". 0 means finished; anything else, an error.
EXIT_PREEMPTED = 75


class PreemptionHandler:
  """Turns the first SIGTERM/SIGINT into a stop request checked at step boundaries.

  Attributes:
    signals: the signals handled.
    received: name of the first signal received (e.g. "SIGTERM"), or None.
  """

  def __init__(self, signals: Sequence[int] = DEFAULT_SIGNALS):
    self.signals = tuple(signal.Signals(s) for s in signals)
    self.received: str | None = None
    self._stop = threading.Event()
    self._previous: dict[int, Any] = {}

  def install(self) -> PreemptionHandler:
    """Installs the handlers (main thread only); returns self."""
    if threading.current_thread() is not threading.main_thread():
      raise RuntimeError("PreemptionHandler.install() must run in the main thread "
                         "(Python only delivers signals there)")
    if self._previous:
      raise RuntimeError("PreemptionHandler is already installed")
    for sig in self.signals:
      if sig == signal.SIGTERM and _jax_preemption_service_active():
        # Replacing JAX's C++ SIGTERM notifier would break the cross-host sync point.
        log.info("PreemptionHandler: SIGTERM left to the JAX preemption service")
        continue
      if signal.getsignal(sig) == signal.SIG_IGN:
        # The launcher asked for this signal to be ignored (nohup, a background job's SIGINT):
        # respect it, as Python does for SIGINT, rather than turn it into a stop request.
        log.info("PreemptionHandler: %s is ignored by the launcher; left ignored", signal.Signals(sig).name)
        continue
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def uninstall(self) -> None:
    """Restores the handlers that were in place before `install`."""
    for sig, prev in self._previous.items():
      signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
    self._previous.clear()

  def __enter__(self) -> PreemptionHandler:
    return self.install()

  def __exit__(self, *exc) -> None:
    self.uninstall()

  def request_stop(self, reason: str = "requested") -> None:
    """Sets the stop flag without a signal (e.g. a time budget ran out)."""
    if self.received is None:
      self.received = reason
    self._stop.set()

  def should_stop(self, step: int | None = None) -> bool:
    """True once a stop was requested; with `step`, also at the multi-host preemption point."""
    if self._stop.is_set():
      return True
    if step is not None and reached_preemption_sync_point(step):
      self.request_stop("jax_preemption_sync_point")
      return True
    return False

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if not self._stop.is_set():
      self.request_stop(name)
      log.warning("Received %s: will save a checkpoint and stop after the current step "
                      "(send it again to stop immediately)", name)
      return
    log.warning("Received %s again: stopping immediately", name)
    prev = self._previous.pop(signum, signal.SIG_DFL)
    prev = signal.SIG_DFL if prev is None else prev
    signal.signal(signum, prev)
    if callable(prev):
      prev(signum, frame)  # e.g. default_int_handler raises KeyboardInterrupt here
    elif prev == signal.SIG_DFL:
      signal.raise_signal(signum)
