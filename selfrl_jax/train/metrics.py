"""Metric writers: one `write(step, metrics)` fans out to console, JSONL and TensorBoard.

    writer = MetricWriter(workdir, resume_step=restored_step)   # None on a fresh run
    timer = Timer()
    with timer("sample"):
      out = jax.block_until_ready(sample(...))
    writer.write(step, {**train_metrics, **timer.pop()})
    writer.close()

TensorBoard files are written with tensorboardX (no TensorFlow). Standard metric names are listed
in docs/metrics.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

JSONL_NAME = "metrics.jsonl"
TB_SUBDIR = "tb"

# Pre-binned histograms (bin counts over equal-width bins on a known range) are written to
# TensorBoard as raw histograms; treating counts as values would plot a histogram of counts.
DEFAULT_COUNT_HISTOGRAMS: Mapping[str, tuple[float, float]] = {"edit_ratio_hist": (0.0, 1.0)}


def _finite_or_none(x: float) -> float | None:
  return x if math.isfinite(x) else None


def _parse_jsonl(path: str) -> list[dict[str, Any]]:
  """Parses a JSONL file; a torn last line (crash mid-write) is dropped, any other bad line raises."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  rows = []
  last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      if i == last:
        log.warning("%s: dropping torn last line %d (%s)", path, i + 1, e)
        continue
      raise ValueError(f"{path}: line {i + 1} is not valid JSON ({e}): {line[:200]!r}") from e
    if not isinstance(row, dict) or "step" not in row:
      raise ValueError(f"{path}: line {i + 1} must be a JSON object with a 'step' key, got {line[:200]!r}")
    rows.append(row)
  return rows


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a metrics JSONL file written by `MetricWriter` into a list of dicts (non-finite -> None)."""
  return _parse_jsonl(os.fspath(path))


class Timer:
  """Accumulates wall-clock time per phase: `with timer("sample"): ...` -> `time/sample_s`.

  JAX dispatch is asynchronous: block on the phase's outputs (`jax.block_until_ready`) inside the
  `with` block or the time lands in whichever later phase first waits for the result.
  """

  def __init__(self):
    self._totals: dict[str, float] = {}

  @contextlib.contextmanager
  def __call__(self, phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      key = f"time/{phase}_s"
      self._totals[key] = self._totals.get(key, 0.0) + time.perf_counter() - start

  def metrics(self) -> dict[str, float]:
    """Returns the accumulated seconds per phase without resetting."""
    return dict(self._totals)

  def pop(self) -> dict[str, float]:
    """Returns the accumulated seconds per phase and resets, ready for the next step."""
    out, self._totals = self._totals, {}
    return out


# Console groups, in order: what the policy earns, how the update moved it, what it cost.
_GROUP_ORDER = ("reward", "eval", "policy", "timing", "other")
_GROUP_PREFIXES = {
    "reward": ("reward", "zero_std_group_frac", "completion_", "host/"),
    "eval": ("eval/",),
    "policy": ("loss", "pg_", "kl", "entropy", "ratio_", "adv", "grad_norm", "logp_gap", "objective_frac",
               "nonfinite"),
    "timing": ("time/", "tokens_per_s", "generated_tokens"),
}


def console_group(key: str) -> str:
  """The console group of a metric name (reward, eval, policy, timing, other)."""
  for group, prefixes in _GROUP_PREFIXES.items():
    if key.startswith(prefixes):
      return group
  return "other"


class MetricWriter:
  """Writes per-step metrics to the console, `<workdir>/metrics.jsonl` and TensorBoard.

  Scalars (size-1 values) go everywhere. Arrays become TensorBoard histograms and, when they have
  at most `jsonl_max_list` elements, JSON lists. Non-finite scalars are written as null in JSONL
  and skipped (counted in `num_nonfinite_skipped`) for TensorBoard; non-finite array elements are
  dropped from histograms.

  Args:
    workdir: run directory; created if missing.
    resume_step: the step restored from a checkpoint; JSONL rows and TensorBoard events after it
      are dropped/hidden so a resumed run has no duplicated steps. None on a fresh run.
    console: print a one-line summary per write (through `tqdm.write`, so bars stay intact).
    console_keys: keys shown on the console, in order; None shows every scalar.
    console_precision: significant digits on the console.
    console_every: print only steps that are multiples of this.
    jsonl: write `metrics.jsonl`.
    tensorboard: write event files under `<workdir>/tb`.
    jsonl_max_list: arrays with more elements are left out of JSONL (TensorBoard only).
    count_histograms: keys whose arrays are bin counts over equal bins on (lo, hi).
    enabled: only this process writes; default is process 0 of a multi-host run.
  """

  def __init__(
      self,
      workdir: str | os.PathLike,
      *,
      resume_step: int | None = None,
      console: bool = True,
      console_keys: Sequence[str] | None = None,
      console_precision: int = 4,
      console_every: int = 1,
      jsonl: bool = True,
      tensorboard: bool = True,
      jsonl_max_list: int = 32,
      count_histograms: Mapping[str, tuple[float, float]] = DEFAULT_COUNT_HISTOGRAMS,
      enabled: bool | None = None,
  ):
    if console_every < 1:
      raise ValueError(f"MetricWriter.console_every must be >= 1, got {console_every}.")
    if console_precision < 1:
      raise ValueError(f"MetricWriter.console_precision must be >= 1, got {console_precision}.")
    self.workdir = os.path.abspath(os.fspath(workdir))
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._console = console
    self._console_keys = tuple(console_keys) if console_keys is not None else None
    self._precision = console_precision
    self._console_every = console_every
    self._jsonl_on = jsonl
    self._tb_on = tensorboard
    self._jsonl_max_list = jsonl_max_list
    self._count_hists = dict(count_histograms)
    self.num_nonfinite_skipped = 0
    self._jsonl_file = None
    self._tb = None
    self._purge_step: int | None = None
    if not self.enabled:
      return
    os.makedirs(self.workdir, exist_ok=True)
    if resume_step is not None:
      self.truncate_after(resume_step)

  @property
  def jsonl_path(self) -> str:
    return os.path.join(self.workdir, JSONL_NAME)

  @property
  def tb_dir(self) -> str:
    return os.path.join(self.workdir, TB_SUBDIR)

  def truncate_after(self, step: int) -> None:
    """Drops JSONL rows with `step` > step and hides later TensorBoard events (resume)."""
    if not self.enabled:
      return
    step = int(step)
    if self._jsonl_on and os.path.exists(self.jsonl_path):
      if self._jsonl_file is not None:
        self._jsonl_file.close()
        self._jsonl_file = None
      kept = [r for r in _parse_jsonl(self.jsonl_path) if r["step"] <= step]
      tmp = self.jsonl_path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, allow_nan=False) + "\n" for r in kept)
      os.replace(tmp, self.jsonl_path)  # atomic: a crash here leaves the old or the new file
    if self._tb_on:
      # tensorboardX's purge_step writes a START event; TensorBoard then hides events >= it.
      if self._tb is not None:
        self._tb.close()
        self._tb = None
      self._purge_step = step + 1

  def _tb_writer(self):
    if self._tb is None:
      import tensorboardX  # Lazy: it imports torch when torch is installed (seconds).

      # A unique suffix: event file names only carry whole seconds, and a writer reopened within
      # the same second would otherwise overwrite the earlier file.
      self._tb = tensorboardX.SummaryWriter(
          logdir=self.tb_dir, purge_step=self._purge_step, flush_secs=30,
          filename_suffix=f".{os.getpid()}.{time.time_ns()}")
      self._purge_step = None
    return self._tb

  def write(self, step: int, metrics: Mapping[str, Any], console: bool | None = None) -> None:
    """Writes one step's metrics (floats, NumPy or device arrays) to every enabled sink.

    `console=True` prints them whatever `console_every` says (e.g. an evaluation); False never."""
    if not self.enabled:
      return
    step = int(step)
    host = jax.device_get(dict(metrics))  # One transfer for the whole dict.
    scalars: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {}
    for key, value in host.items():
      if not isinstance(key, str) or key == "step":
        raise ValueError(f"MetricWriter.write: metric keys must be str other than 'step', got {key!r}.")
      arr = np.asarray(value)
      if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"MetricWriter.write: metric {key!r} must be numeric, got dtype {arr.dtype}.")
      if arr.size == 1:
        scalars[key] = float(arr.reshape(()))
      elif arr.size > 1:
        arrays[key] = arr.astype(np.float64).reshape(-1)
    if self._jsonl_on:
      self._write_jsonl(step, scalars, arrays)
    if self._tb_on:
      self._write_tb(step, scalars, arrays)
    if self._console and (console if console is not None else step % self._console_every == 0):
      self._write_console(step, scalars)

  def _write_jsonl(self, step: int, scalars: dict[str, float], arrays: dict[str, np.ndarray]) -> None:
    row: dict[str, Any] = {"step": step}
    row.update({k: _finite_or_none(v) for k, v in scalars.items()})
    for k, arr in arrays.items():
      if arr.size <= self._jsonl_max_list:
        row[k] = [_finite_or_none(float(x)) for x in arr]
    if self._jsonl_file is None:
      # Append so a resumed run continues the file; line-buffered so readers see whole rows.
      self._jsonl_file = open(self.jsonl_path, "a", encoding="utf-8", buffering=1)
    self._jsonl_file.write(json.dumps(row, allow_nan=False) + "\n")

  def _write_tb(self, step: int, scalars: dict[str, float], arrays: dict[str, np.ndarray]) -> None:
    tb = self._tb_writer()
    for k, v in scalars.items():
      if math.isfinite(v):
        tb.add_scalar(k, v, step)
      else:
        self.num_nonfinite_skipped += 1
    for k, arr in arrays.items():
      if k in self._count_hists:
        lo, hi = self._count_hists[k]
        if not np.all(np.isfinite(arr)) or arr.sum() <= 0:
          self.num_nonfinite_skipped += 1
          continue
        edges = np.linspace(lo, hi, arr.size + 1)
        centers = 0.5 * (edges[:-1] + edges[1:])
        # Bin centres stand in for the (unknown) values inside each bin for sum / sum_squares.
        tb.add_histogram_raw(k, min=lo, max=hi, num=int(arr.sum()), sum=float((arr * centers).sum()),
                             sum_squares=float((arr * centers**2).sum()), bucket_limits=edges[1:],
                             bucket_counts=arr, global_step=step)
        continue
      finite = arr[np.isfinite(arr)]
      self.num_nonfinite_skipped += int(arr.size - finite.size)
      if finite.size:
        tb.add_histogram(k, finite, step)

  def _write_console(self, step: int, scalars: dict[str, float]) -> None:
    keys = [k for k in (self._console_keys if self._console_keys is not None else scalars) if k in scalars]
    groups: dict[str, list[str]] = {}
    for k in keys:
      groups.setdefault(console_group(k), []).append(f"{k} {scalars[k]:.{self._precision}g}")
    head = f"step {step}"
    lines = [f"{head if i == 0 else ' ' * len(head)} | {name:<7} {'  '.join(items)}"
             for i, (name, items) in enumerate(sorted(groups.items(), key=lambda g: _GROUP_ORDER.index(g[0])))]
    tqdm.write("\n".join(lines or [head]))  # Prints above any active progress bar instead of through it.

  def flush(self) -> None:
    if self._jsonl_file is not None:
      self._jsonl_file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl_file is not None:
      self._jsonl_file.close()
      self._jsonl_file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
