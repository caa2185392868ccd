"""A pool of worker processes that scores batches of host-side checks, each under a time limit.

Used by every host verifier whose per-item check is plain Python that could hang or crash: math
answers (math-verify), instruction-following checkers (IFEval), answer clustering. One item is
`item_fn(completion, reference) -> float`; a check that raises, times out or kills its worker scores 0
and is counted — never raised into the training loop.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import signal
import time
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


class _ItemTimeout(BaseException):
  """Raised by the per-item timer; a BaseException so math-verify's `except Exception` can't eat it."""


_SLOTS = None  # Per worker: [item sequence number or -1, start time (monotonic)]; see _init_worker.
_SLOT = -1


def _init_worker(slots, counter) -> None:
  global _SLOTS, _SLOT
  logging.getLogger("math_verify").setLevel(logging.ERROR)  # per-parse notices from the math checks
  with counter.get_lock():
    _SLOT = counter.value
    counter.value += 1
  _SLOTS = slots


def _on_alarm(signum, frame):
  raise _ItemTimeout()


def _run_item(seq: int, fn: Callable[[str, Any], float], completion: str, gold: Any,
              timeout_s: float) -> tuple[str, float, str]:
  """Runs one item in a worker under an interval timer; returns (status, score, detail)."""
  _SLOTS[2 * _SLOT] = seq
  _SLOTS[2 * _SLOT + 1] = time.monotonic()
  start = time.monotonic()
  signal.signal(signal.SIGALRM, _on_alarm)
  signal.setitimer(signal.ITIMER_REAL, timeout_s)
  try:
    score = float(fn(completion, gold))
    # A too-broad `except:` in the scored code could swallow the timer; judge by the clock.
    if time.monotonic() - start > timeout_s:
      return "timeout", 0.0, ""
    return "ok", score, ""
  except _ItemTimeout:
    return "timeout", 0.0, ""
  except Exception as e:  # noqa: BLE001 - any failure of one item scores 0.
    return "error", 0.0, f"{type(e).__name__}: {e}"[:500]
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    _SLOTS[2 * _SLOT] = -1


class VerifierPool:
  """Scores batches of completions against references in a pool of worker processes.

  Each item gets `timeout_s` of wall clock (an interval timer in the worker). A worker that stays
  on one item past `timeout_s + grace_s` (stuck where the timer can't interrupt it) is killed and
  the pool recreated; the other unfinished items are resubmitted. Timed-out and failing items score
  0 and are counted in `self.counters` ('timeouts', 'errors'; also 'items', 'pool_restarts').

  Workers start with the 'spawn' (or 'forkserver') method, never 'fork': forking a process that
  runs JAX threads can deadlock. `item_fn(completion, reference) -> float` must be picklable (a
  module-level function or a functools.partial of one), and so must the references. `name` prefixes
  the warnings.
  """

  def __init__(self, *, num_workers: int | None = None, timeout_s: float = 5.0, grace_s: float = 2.0,
               item_fn: Callable[[str, Any], float], mp_context: str = "spawn", name: str = "verifier"):
    if mp_context not in ("spawn", "forkserver"):
      raise ValueError(f"mp_context must be 'spawn' or 'forkserver' (not fork), got {mp_context!r}")
    if timeout_s <= 0:
      raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    self.num_workers = num_workers or min(4, os.cpu_count() or 1)
    self.timeout_s = float(timeout_s)
    self.grace_s = float(grace_s)
    self.item_fn = item_fn
    self.name = name
    self._ctx = mp.get_context(mp_context)
    self._pool: cf.ProcessPoolExecutor | None = None
    self._slots = None
    self._seq = 0
    self._suspects: set[int] = set()
    self.counters = {"items": 0, "timeouts": 0, "errors": 0, "pool_restarts": 0}

  def _ensure_pool(self) -> cf.ProcessPoolExecutor:
    if self._pool is None:
      self._slots = self._ctx.Array("d", [-1.0, 0.0] * self.num_workers, lock=False)
      counter = self._ctx.Value("i", 0)
      self._pool = cf.ProcessPoolExecutor(
          self.num_workers, mp_context=self._ctx, initializer=_init_worker,
          initargs=(self._slots, counter))
    return self._pool

  def _kill_pool(self, restart: bool = True) -> None:
    """Kills every worker (they may be stuck) and drops the pool."""
    if self._pool is None:
      return
    # Process.kill() does nothing for an already reaped worker, so a recycled pid is never hit.
    workers = getattr(self._pool, "_processes", None) or {}
    for proc in list(workers.values()):
      proc.kill()
    self._pool.shutdown(wait=True, cancel_futures=True)
    self._pool = None
    self.counters["pool_restarts"] += int(restart)

  def _stuck_item(self) -> int | None:
    """Sequence number of an item some worker has run past timeout + grace, if any."""
    now = time.monotonic()
    for k in range(self.num_workers):
      seq = self._slots[2 * k]
      if seq >= 0 and now - self._slots[2 * k + 1] > self.timeout_s + self.grace_s:
        return int(seq)
    return None

  def score(self, completions: Sequence[str], golds: Sequence[Any]) -> np.ndarray:
    """Returns rewards_B (float32) for completions[i] against golds[i] (0 where the check failed)."""
    if len(completions) != len(golds):
      raise ValueError(f"completions ({len(completions)}) and golds ({len(golds)}) differ in length")
    rewards_B = np.zeros(len(completions), dtype=np.float32)
    todo = list(range(len(completions)))
    self._suspects = set()
    stalls = 0
    while todo:
      retry = self._run_round(todo, completions, golds, rewards_B)
      stalls = stalls + 1 if len(retry) == len(todo) else 0
      if stalls >= 3:  # The pool breaks without finishing anything (e.g. workers fail to start).
        for idx in retry:
          self._finish(idx, "error", 0.0, "worker pool keeps breaking", rewards_B)
        retry = []
      todo = retry
    self.counters["items"] += len(completions)
    return rewards_B

  def _finish(self, idx: int, status: str, score: float, detail: str, rewards_B: np.ndarray) -> None:
    if status == "ok":
      rewards_B[idx] = score
      return
    key = "timeouts" if status == "timeout" else "errors"
    self.counters[key] += 1
    log.warning("%s: item %d %s%s; scored 0", self.name, idx, status, f" ({detail})" if detail else "")

  def _run_round(self, todo: list[int], completions, golds, rewards_B: np.ndarray) -> list[int]:
    """Submits `todo`; returns the items to run again after the pool had to be killed."""
    pool = self._ensure_pool()
    pending: dict[cf.Future, tuple[int, int]] = {}
    for idx in todo:
      self._seq += 1
      fut = pool.submit(_run_item, self._seq, self.item_fn, completions[idx], golds[idx], self.timeout_s)
      pending[fut] = (self._seq, idx)
    while pending:
      done, _ = cf.wait(pending, timeout=min(0.25, self.timeout_s), return_when=cf.FIRST_COMPLETED)
      broken = False
      for fut in done:
        exc = fut.exception()
        if isinstance(exc, cf.process.BrokenProcessPool):
          broken = True
          continue
        _, idx = pending.pop(fut)
        if exc is not None:  # E.g. item_fn or its arguments could not be pickled.
          self._finish(idx, "error", 0.0, f"{type(exc).__name__}: {exc}"[:500], rewards_B)
        else:
          self._finish(idx, *fut.result(), rewards_B)
      stuck = self._stuck_item()
      if not broken and stuck is None:
        continue
      in_flight = {int(self._slots[2 * k]) for k in range(self.num_workers) if self._slots[2 * k] >= 0}
      self._kill_pool()
      retry = []
      for seq, idx in pending.values():
        if seq == stuck:
          self._finish(idx, "timeout", 0.0, f"worker killed after {self.timeout_s + self.grace_s:.1f}s",
                       rewards_B)
        elif stuck is None and seq in in_flight and idx in self._suspects:
          # In flight at two pool breaks: most likely the item that kills its worker.
          self._finish(idx, "error", 0.0, "worker process died", rewards_B)
        else:
          if stuck is None and seq in in_flight:
            self._suspects.add(idx)
          retry.append(idx)
      return retry
    return []

  def close(self) -> None:
    """Shuts the worker pool down (killing workers that are still busy)."""
    self._kill_pool(restart=False)

  def __enter__(self) -> "VerifierPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
