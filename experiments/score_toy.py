"""SCoRe's tiny reproductions: every arm x seeds, the Table-4-style summary and plots.

Called by `experiments/reproduce.py --method=score`. Two toys (`TOYS`): `prefix_sums`
(configs/score/tiny_prefix_sums.py, where the first attempt carries information turn 1 lacks; its
preconditions are in `experiments/score_prefix_checks.py`) and `addition` (configs/score/
tiny_arithmetic.py, the spec's §11 toy). Each arm is `<config>:<arm>` run through the same `train()`
as any experiment. All arms and seeds share one warm-started base model (`sft.seed = 0`), so the
"base" row is the step-0 evaluation every run starts from.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from experiments import arms as arms_lib

TOYS = {"prefix_sums": "score/tiny_prefix_sums.py", "addition": "score/tiny_arithmetic.py"}
CONFIG = TOYS["addition"]
METRICS = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "frac_changed")
LABELS = {"base": "base model (no RL)", "single_turn": "single-turn RL",
          "naive_multi_turn": "naive multi-turn RL (episode credit: r1 + r2)",
          "naive_per_turn": "naive multi-turn RL, per-turn credit", "score": "SCoRe",
          "no_stage1": "SCoRe w/o Stage I", "no_shaping": "SCoRe w/o shaping (alpha=0)",
          "shaping_control": "control: alpha=0, turn-2 advantage x (1+alpha)",
          "episode": "SCoRe, episode credit", "star": "STaR in Stage II (Stage I kept)",
          "star_no_stage1": "STaR without Stage I (on-policy, filtered SFT)"}
# The arms `--method=score` runs by default, per toy (every arm of the config file can be named).
DEFAULT_ARMS = {"prefix_sums": ("single_turn", "naive_multi_turn", "score", "no_stage1", "no_shaping",
                                "shaping_control", "episode", "star"),
                "addition": ("single_turn", "naive_multi_turn", "naive_per_turn", "score", "no_stage1",
                             "no_shaping", "star", "star_no_stage1")}


def run_arms(arms: list[str], seeds: list[int], workdir: str, num_steps: int | None = None,
             edit: Callable | None = None, config: str = CONFIG) -> dict:
  """Trains every (arm, seed) (`arms.run_arms`); `num_steps` shortens each run and Stage I with it
  (to a third, at least one step: a Stage I of 0 steps would silently be the "w/o Stage I" arm)."""
  def shorten(cfg):
    if num_steps:
      cfg.train.num_steps = num_steps
      cfg.train.eval_every = min(cfg.train.eval_every, num_steps)
      if cfg.score.use_stage1:
        cfg.score.stage1_steps = max(1, min(cfg.score.stage1_steps, num_steps // 3))
    if edit is not None:
      edit(cfg)
  return arms_lib.run_arms(config, arms, seeds, workdir, edit=shorten)


def summarize(runs: dict, step: int | None = None, prompt_lens: tuple[int, ...] | None = None
              ) -> dict[str, dict[str, tuple[float, float]]]:
  """{row: {metric: (mean, std over seeds)}} at the end of training, or at evaluation `step`.

  The base row is the step-0 evaluation (every arm starts from the same warm-started model). With
  `prompt_lens`, the metrics are those of the held-out items with these prompt lengths (a length
  bucket), from the per-length evaluation (`score.eval_by_prompt_len`), weighted by item counts.
  """
  rows = {}
  first_arm = next(iter(runs.values()))
  rows["base"] = _mean_std([_bucket(r["initial"], prompt_lens) for r in first_arm.values()])
  for arm, by_seed in runs.items():
    results = [r["final"] if step is None else _at_step(r["history"], step) for r in by_seed.values()]
    rows[arm] = _mean_std([_bucket(r, prompt_lens) for r in results])
  return rows


def _bucket(result: dict, prompt_lens: tuple[int, ...] | None) -> dict:
  """`result`'s eval metrics restricted to items with these prompt lengths (count-weighted)."""
  if prompt_lens is None:
    return result
  keys = [f"eval/by_prompt_len/{n}/" for n in prompt_lens]
  missing = [k for k in keys if k + "count" not in result]
  if missing:
    raise KeyError(f"no per-length evaluation for {missing} (set score.eval_by_prompt_len; lengths "
                   f"evaluated: {sorted({k.split('/')[2] for k in result if k.startswith('eval/by_prompt_len/')})})")
  counts = np.array([result[k + "count"] for k in keys])
  return {f"eval/{m}": float(np.dot(counts, [result[k + m] for k in keys]) / counts.sum()) for m in METRICS}


def _at_step(history: dict, step: int) -> dict:
  if step not in history["step"]:
    raise ValueError(f"no evaluation at step {step}; evaluated at {history['step']}")
  i = history["step"].index(step)
  return {name: values[i] for name, values in history.items() if name != "step"}


def _mean_std(results: list[dict]) -> dict[str, tuple[float, float]]:
  return {m: arms_lib.mean_std([r[f"eval/{m}"] for r in results]) for m in METRICS}


def stage1_steps(config: str = CONFIG) -> int:
  return arms_lib.load_config_module(config).get_config("score").score.stage1_steps


def mid_training_step(runs: dict, config: str = CONFIG) -> int | None:
  """The last evaluation step inside SCoRe's Stage I (where the arms differ most), if any."""
  steps = [s for s in next(iter(next(iter(runs.values())).values()))["history"]["step"]
           if 0 < s <= stage1_steps(config)]
  return steps[-1] if steps else None


def format_table(rows: dict, num_seeds: int) -> str:
  """Markdown table: mean ± std over seeds of each self-correction metric (held-out, greedy)."""
  head = "| arm | " + " | ".join(METRICS) + " |"
  lines = [f"Mean ± std over {num_seeds} seed(s); held-out problems, greedy decoding.", "", head,
           "|---|" + "---:|" * len(METRICS)]
  for arm, stats in rows.items():
    cells = " | ".join(f"{stats[m][0]:.3f} ± {stats[m][1]:.3f}" for m in METRICS)
    lines.append(f"| {LABELS.get(arm, arm)} | {cells} |")
  return "\n".join(lines)


def plot_curves(runs: dict, path: str, arms: tuple[str, ...] = ("score", "naive_multi_turn")) -> None:
  """Acc@t1 and Acc@t2 over training (mean over seeds), one panel per arm."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  arms = tuple(a for a in arms if a in runs) or tuple(runs)
  fig, axes = plt.subplots(1, len(arms), figsize=(5 * len(arms), 4), squeeze=False)
  for ax, arm in zip(axes[0], arms):
    hists = [r["history"] for r in runs[arm].values()]
    steps = hists[0]["step"]
    for metric, style in (("eval/acc_t1", "-o"), ("eval/acc_t2", "-s")):
      values = np.array([h[metric] for h in hists])
      ax.plot(steps, values.mean(0), style, label=metric.split("/")[1])
      ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
    ax.set(title=LABELS.get(arm, arm), xlabel="RL step", ylabel="held-out accuracy (greedy)")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
