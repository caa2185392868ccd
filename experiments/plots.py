"""The learning-curve figure every GRPO-style run writes: held-out metric and training reward per step."""

from __future__ import annotations

import numpy as np

from selfrl_jax.train.metrics import read_jsonl


def eval_metric(history: dict) -> str | None:
  """The held-out metric a curve shows: eval/accuracy when logged, else the first eval/ metric."""
  names = [k for k in history if k.startswith("eval/")]
  return "eval/accuracy" if "eval/accuracy" in names else (names[0] if names else None)


def plot_curves(runs: dict[str, tuple[dict, str]], path: str) -> None:
  """Writes `path` (PNG): the held-out metric at each evaluation and the training reward
  (10-step running mean) against RL step, one line per run.

  Args:
    runs: {label: (history from `train()`'s summary, path of the run's metrics.jsonl)}.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (ax_eval, ax_reward) = plt.subplots(1, 2, figsize=(10, 4))
  metric = None
  for label, (history, metrics_path) in runs.items():
    metric = eval_metric(history) or metric
    if metric in history:
      ax_eval.plot(history["step"], history[metric], marker="o", label=label)
    rows = [r for r in read_jsonl(metrics_path) if "reward_mean" in r]
    if rows:
      steps = np.array([r["step"] for r in rows])
      reward = np.array([r["reward_mean"] for r in rows])
      window = min(10, len(reward))
      ax_reward.plot(steps[window - 1:], np.convolve(reward, np.ones(window) / window, mode="valid"), label=label)
  ax_eval.set(xlabel="RL step", ylabel=f"held-out {metric or 'metric'} (greedy)", title="Evaluation")
  ax_reward.set(xlabel="RL step", ylabel="training reward (10-step mean)", title="Training")
  for ax in (ax_eval, ax_reward):
    ax.grid(alpha=0.3)
    if ax.get_lines():
      ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
