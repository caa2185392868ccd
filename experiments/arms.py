"""Runs the arms of a tiny reproduction: one config file, one arm per config argument, several seeds.

Used by `experiments/reproduce.py --method=<paper>`; every (arm, seed) is a plain `train()` run in
`<workdir>/<arm>/seed_<seed>` (resumable), and all of them share one SFT warm start cached in
`<workdir>/warm_start` (configs fix `sft.seed`, so the base model is the same for every seed).
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import multiprocessing
import os
import sys
import time
from typing import Callable

import numpy as np

from selfrl_jax.train import builders
from selfrl_jax.train.builders import ConfigError, validate_config
from selfrl_jax.train.loop import train, warm_start
from selfrl_jax.train.metrics import read_jsonl
from selfrl_jax.train.preemption import EXIT_PREEMPTED

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config_module(path: str):
  """The config file at `path` (relative to configs/ or absolute) as a module."""
  path = path if os.path.isabs(path) else os.path.join(CONFIG_DIR, path)
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_arms(config_path: str, arms: list[str], seeds: list[int], workdir: str,
             edit: Callable | None = None, jobs: int = 1) -> dict:
  """Trains every (arm, seed); returns {"runs": {arm: {seed: train() summary}}, "seconds": {arm: s}}.

  Args:
    edit: optional `edit(cfg)` applied (unlocked) after the arm's config is built, e.g. to shorten it.
    jobs: runs trained side by side, each in its own process (after the warm start is built alone),
      without progress bars. A tiny model's sampling loop keeps one core busy, so on a 2-core
      machine 2 jobs finish a toy sooner; `seconds` then sums each arm's runs, not wall time.

  Raises:
    SystemExit: a run was preempted (SIGTERM / Ctrl-C), with status `EXIT_PREEMPTED`; rerunning
      the same command resumes it.
  """
  module = load_config_module(config_path)
  configs = {}
  for arm in arms:  # every config is built and checked before anything trains: a bad arm fails at once
    for seed in seeds:
      try:
        cfg = module.get_config(arm)
      except ValueError as e:
        raise ConfigError(f"--arms: {e}") from None
      with cfg.unlocked():
        cfg.seed = seed
        if edit is not None:
          edit(cfg)
        if jobs > 1:   # runs side by side would draw their progress bars over each other
          cfg.train.progress = False
      validate_config(cfg)
      configs[arm, seed] = cfg
  order = [(arm, seed) for arm in arms for seed in seeds]
  cache = os.path.join(workdir, "warm_start")
  runs, seconds = {arm: {} for arm in arms}, {arm: 0.0 for arm in arms}

  def record(key, result) -> None:
    (arm, seed), (summary, sec) = key, result
    runs[arm][seed] = summary
    seconds[arm] += sec
    if summary["preempted"]:
      print("Preempted: rerun the same command to resume.", file=sys.stderr)
      raise SystemExit(EXIT_PREEMPTED)

  if jobs <= 1:
    for key in order:
      record(key, _train_one(configs[key], _run_dir(workdir, *key), cache))
    return {"runs": runs, "seconds": seconds}
  # The shared warm start is built once, alone; then `jobs` processes train the runs side by side.
  prepare_warm_start(configs[order[0]], cache)
  with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
    futures = {pool.submit(_train_one, configs[key], _run_dir(workdir, *key), cache): key for key in order}
    for future in concurrent.futures.as_completed(futures):
      record(futures[future], future.result())
  return {"runs": {arm: dict(sorted(by.items())) for arm, by in runs.items()}, "seconds": seconds}


def _run_dir(workdir: str, arm: str, seed: int) -> str:
  return os.path.join(workdir, arm, f"seed_{seed}")


def _train_one(cfg, workdir: str, sft_cache_dir: str) -> tuple[dict, float]:
  start = time.perf_counter()
  summary = train(cfg, workdir, sft_cache_dir=sft_cache_dir)
  return summary, time.perf_counter() - start


def prepare_warm_start(cfg, cache_dir: str) -> None:
  """Builds (or finds) the SFT warm start `cfg` trains from in `cache_dir`, without any RL."""
  if cfg.sft.steps == 0:
    return
  model, tok = builders.build_model(cfg)
  train_source, valid_source, _ = builders.build_sources(cfg)
  warm_start(cfg, model, tok, train_source, valid_source, cache_dir)


def mean_std(values) -> tuple[float, float]:
  """(mean, population std) over seeds."""
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std())


def shortened(num_steps: int | None, num_evals: int) -> Callable:
  """A `run_arms` edit: `num_steps` RL steps (None: the config's) with `num_evals` evaluations."""
  def edit(cfg):
    if num_steps:
      cfg.train.num_steps = num_steps
      cfg.train.eval_every = max(1, num_steps // num_evals)
  return edit


def train_rows(workdir: str, arm: str, seed: int) -> list[dict]:
  """The training-step rows of one (arm, seed) run's metrics.jsonl (evaluation rows left out)."""
  return [r for r in read_jsonl(os.path.join(workdir, arm, f"seed_{seed}", "metrics.jsonl")) if "loss" in r]


def stats_cell(stats: dict, key: str) -> str:
  """One table cell from a toy's summarize() row: "first → last" for a training metric summarised
  at both ends (`key@first`, `key@last`), "base → final ± std" for an evaluation at both ends
  (`key@base`, `key@final`), "mean ± std" for a plain key, "–" where it is absent or NaN."""
  if f"{key}@first" in stats:
    first, last = stats[key + "@first"][0], stats[key + "@last"][0]
    return "–" if np.isnan(first) and np.isnan(last) else f"{first:.3f} → {last:.3f}"
  if f"{key}@base" in stats:
    return f"{stats[key + '@base'][0]:.3f} → {stats[key + '@final'][0]:.3f} ± {stats[key + '@final'][1]:.3f}"
  if key not in stats or np.isnan(stats[key][0]):
    return "–"
  return f"{stats[key][0]:.3f} ± {stats[key][1]:.3f}"


def markdown_table(rows: dict, cols: list[tuple[str, str]], labels: dict[str, str], caption: str) -> str:
  """A toy's Markdown table: `caption`, then one row per arm of `rows` ({arm: summarize() stats})
  with one `stats_cell` per (column title, key) of `cols`; arms named by `labels`."""
  lines = [caption, "", "| arm | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
  for arm, stats in rows.items():
    lines.append(f"| {labels.get(arm, arm)} | " + " | ".join(stats_cell(stats, k) for _, k in cols) + " |")
  return "\n".join(lines)


def format_claims(checked: list) -> str:
  """Markdown bullets of [(claim, holds (None: not run), numbers)], as every toy report prints them."""
  mark = {True: "holds", False: "does NOT hold", None: "not run"}
  return "\n".join(f"- {claim}: **{mark[ok]}** ({numbers})" for claim, ok, numbers in checked)


def trailing_means(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
  """(steps, trailing `window`-step means) of a per-step series starting at step 1."""
  window = min(window, len(x))
  return np.arange(window, len(x) + 1), np.convolve(x, np.ones(window) / window, mode="valid")

