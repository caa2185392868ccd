"""Running each side of a benchmark in its own process, and summarising repeated measurements.

A benchmark module re-invokes itself with `--side=NAME` (plus its other flags); that process
measures one side and prints one JSON object as its last stdout line. Separate processes keep one
side's threads, caches and allocator state from disturbing the other's.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys


def spawn(module: str, side: str, extra: list[str]) -> dict:
  """Runs `python -m module --side=side *extra`; returns the JSON its last stdout line holds.

  Raises:
    SystemExit: the side failed (its stderr tail is in the message).
  """
  cmd = [sys.executable, "-m", module, f"--side={side}", *extra]
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    raise SystemExit(f"side {side} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def passthrough_flags(own: tuple[str, ...]) -> list[str]:
  """This process's command-line flags minus those the parent sets per side (e.g. --side)."""
  return [a for a in sys.argv[1:] if not a.startswith(own)]


def summary(values: list[float], fmt: str = ".3f") -> str:
  """'median M (range LO-HI, n=N)'."""
  return (f"median {statistics.median(values):{fmt}} (range {min(values):{fmt}}-{max(values):{fmt}}, "
          f"n={len(values)})")


def peak_rss_mb() -> float:
  """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_note(idle_below: float = 0.5) -> str:
  """The 1-minute load average, flagged when the machine is not idle (results from a loaded
  machine are not results: torch's thread pools in particular slow down by orders of magnitude)."""
  load = os.getloadavg()[0]
  note = f"load average {load:.2f}"
  return note if load < idle_below else f"{note} -- NOT IDLE, do not report these numbers"
