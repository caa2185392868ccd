"""SCoRe's tiny reproduction (score.md §11): every arm x seeds, the Table-4-style summary and plots.

Called by `experiments/reproduce.py --method=score`; each arm is `configs/score/tiny_arithmetic.py:<arm>`
run through the same `train()` as any experiment. All arms and seeds share one warm-started base
model (`sft.seed = 0`), so the "base" row is the step-0 evaluation every run starts from.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from experiments import arms as arms_lib

CONFIG = "score/tiny_arithmetic.py"
METRICS = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "frac_changed")
LABELS = {"base": "base model (no RL)", "single_turn": "single-turn RL", "naive_multi_turn": "naive multi-turn RL",
          "score": "SCoRe", "no_stage1": "SCoRe w/o Stage I", "no_shaping": "SCoRe w/o shaping (alpha=0)",
          "star": "STaR (on-policy, filtered SFT)"}


def run_arms(arms: list[str], seeds: list[int], workdir: str, num_steps: int | None = None,
             edit: Callable | None = None) -> dict:
  """Trains every (arm, seed) (`arms.run_arms`); `num_steps` shortens each run and Stage I with it."""
  def shorten(cfg):
    if num_steps:
      cfg.train.num_steps = num_steps
      cfg.score.stage1_steps = min(cfg.score.stage1_steps, num_steps // 3) if cfg.score.use_stage1 else 0
    if edit is not None:
      edit(cfg)
  return arms_lib.run_arms(CONFIG, arms, seeds, workdir, edit=shorten)


def summarize(runs: dict, step: int | None = None) -> dict[str, dict[str, tuple[float, float]]]:
  """{row: {metric: (mean, std over seeds)}} at the end of training, or at evaluation `step`.

  The base row is the step-0 evaluation (every arm starts from the same warm-started model).
  """
  rows = {}
  first_arm = next(iter(runs.values()))
  rows["base"] = _mean_std([r["initial"] for r in first_arm.values()])
  for arm, by_seed in runs.items():
    results = [r["final"] if step is None else _at_step(r["history"], step) for r in by_seed.values()]
    rows[arm] = _mean_std(results)
  return rows


def _at_step(history: dict, step: int) -> dict:
  if step not in history["step"]:
    raise ValueError(f"no evaluation at step {step}; evaluated at {history['step']}")
  i = history["step"].index(step)
  return {name: values[i] for name, values in history.items() if name != "step"}


def _mean_std(results: list[dict]) -> dict[str, tuple[float, float]]:
  return {m: arms_lib.mean_std([r[f"eval/{m}"] for r in results]) for m in METRICS}


def stage1_steps() -> int:
  return arms_lib.load_config_module(CONFIG).get_config("score").score.stage1_steps


def mid_training_step(runs: dict) -> int | None:
  """The last evaluation step inside SCoRe's Stage I (where the arms differ most), if any."""
  steps = [s for s in next(iter(next(iter(runs.values())).values()))["history"]["step"] if 0 < s <= stage1_steps()]
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
