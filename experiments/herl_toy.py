"""HeRL's tiny reproduction (herl.md §10): arms (1)-(5) x seeds at a matched sampling budget, table,
preconditions and claims checked on the numbers, curves.

Called by `experiments/reproduce.py --method=herl`; each arm is `configs/herl/tiny_addition.py:<arm>`
run through the same `train()` as any experiment (`experiments/arms.py`), all from one warm start.

The budget is matched on the x-axis: held-out exact match (greedy, 512 4-digit problems) against the
sequences generated so far (rollouts + revisions: `herl/generated_sequences` per step; P * G for
GRPO). "Reaches a level with fewer sequences" is read at the level halfway from the base to GRPO's
final accuracy (interpolated between evaluations; never reached = inf), decided by the rule "means
differ by more than the sum of the stds"; the area under the accuracy-vs-sequences curve over the
budget every arm reached is reported beside it.
"""

from __future__ import annotations

import numpy as np

from experiments import arms as arms_lib

CONFIG = "herl/tiny_addition.py"
LABELS = {"grpo": "(1) GRPO", "herl": "(2) HeRL (HE + bonus)", "no_bonus": "(3) HeRL w/o bonus",
          "naive": "(4) NaiveHE", "x_context": "(5) HeRL, trained with x"}
WINDOW = 10
BASE_RANGE = (0.02, 0.10)        # §10: initial success on the RL problems about 2-10%
MIN_REWRITE_SUCCESS = 0.05       # §6 tiny-model risk: revisions must sometimes beat the group best


def run(arms: list[str], seeds: list[int], workdir: str, num_steps: int | None = None, jobs: int = 1) -> dict:
  return arms_lib.run_arms(CONFIG, arms, seeds, workdir, edit=arms_lib.shortened(num_steps, num_evals=5), jobs=jobs)


def _sequences_at_evals(workdir: str, arm: str, seed: int, history: dict, per_step: int) -> np.ndarray:
  rows = arms_lib.train_rows(workdir, arm, seed)
  cum = np.concatenate([[0.0], np.cumsum([r.get("herl/generated_sequences", per_step) for r in rows])])
  return np.array([cum[min(int(s), len(cum) - 1)] for s in history["step"]])


def _sequences_to(level: float, seqs: np.ndarray, acc: np.ndarray) -> float:
  """Sequences at which `acc` first reaches `level`, linearly interpolated between evaluations."""
  for i in range(len(acc)):
    if acc[i] >= level:
      if i == 0:
        return float(seqs[0])
      f = (level - acc[i - 1]) / max(acc[i] - acc[i - 1], 1e-12)
      return float(seqs[i - 1] + f * (seqs[i] - seqs[i - 1]))
  return float("inf")


def curves(runs: dict, workdir: str, per_step: int) -> dict:
  """{arm: {seed: (sequences, accuracy, accuracy after 2 rounds)}} at every evaluation."""
  out = {}
  for arm, by_seed in runs.items():
    out[arm] = {}
    for seed, summary in by_seed.items():
      h = summary["history"]
      out[arm][seed] = (_sequences_at_evals(workdir, arm, seed, h, per_step), np.asarray(h["eval/accuracy"]),
                        np.asarray(h.get("eval/accuracy_round2", h["eval/accuracy"])))
  return out


def summarize(runs: dict, workdir: str) -> dict[str, dict[str, tuple[float, float]]]:
  cfg = arms_lib.load_config_module(CONFIG).get_config("grpo")
  per_step = cfg.rl.prompts_per_step * cfg.rl.group_size
  cur = curves(runs, workdir, per_step)
  base = np.mean([s["initial"]["eval/accuracy"] for by in runs.values() for s in by.values()])
  grpo_final = (np.mean([s["final"]["eval/accuracy"] for s in runs["grpo"].values()]) if "grpo" in runs else None)
  level = None if grpo_final is None else base + 0.5 * (grpo_final - base)
  budget = min(c[0][-1] for by in cur.values() for c in by.values())
  out = {}
  for arm, by_seed in runs.items():
    per: dict[str, list[float]] = {}
    for seed, summary in by_seed.items():
      seqs, acc, _ = cur[arm][seed]
      rows = arms_lib.train_rows(workdir, arm, seed)
      w = min(WINDOW, max(1, len(rows) // 2))
      fin, ini = summary["final"], summary["initial"]
      keep = seqs <= budget
      vals = {"base_acc": ini["eval/accuracy"], "final_acc": fin["eval/accuracy"],
              "final_rubric": fin["eval/rubric"], "base_round2": ini.get("eval/accuracy_round2", np.nan),
              "final_round1": fin.get("eval/accuracy_round1", np.nan),
              "final_round2": fin.get("eval/accuracy_round2", np.nan),
              "tt_gain": fin.get("eval/accuracy_round2", np.nan) - fin["eval/accuracy"],
              "sequences": seqs[-1], "auc": float(np.trapezoid(acc[keep], seqs[keep]) / max(budget, 1.0)),
              "zero_std@first": np.mean([r["zero_std_group_frac"] for r in rows[:w]]),
              "zero_std@last": np.mean([r["zero_std_group_frac"] for r in rows[-w:]])}
      if level is not None:
        vals["seq_to_level"] = _sequences_to(level, seqs, acc)
      for m in ("herl/rewrite_success_rate", "herl/groups_rewritten_frac", "herl/bonus_mean", "herl/he_token_share"):
        if m in rows[0]:
          vals[f"{m}@first"], vals[f"{m}@last"] = np.mean([r[m] for r in rows[:w]]), np.mean([r[m] for r in rows[-w:]])
      for k, v in vals.items():
        per.setdefault(k, []).append(float(v))
    out[arm] = {k: arms_lib.mean_std(v) for k, v in per.items()}
    out[arm]["level"] = (float("nan") if level is None else float(level), 0.0)
    out[arm]["budget"] = (float(budget), 0.0)
  return out


def _fewer(rows, a, b, key="seq_to_level"):
  (ma, sa), (mb, sb) = rows[a][key], rows[b][key]
  if np.isinf(ma) and np.isinf(mb):
    return False, f"neither reaches the level ({rows[a]['level'][0]:.3f})"
  return bool(ma < mb and (np.isinf(mb) or mb - ma > sa + sb)), \
      f"{ma:.0f} ± {sa:.0f} vs {mb:.0f} ± {sb:.0f} sequences to {rows[a]['level'][0]:.3f}"


def claims(rows: dict, runs: dict | None = None) -> list[tuple[str, bool | None, str]]:
  """[(claim, holds (None: arm not run), the numbers)]: preconditions first, then §10's signature."""
  del runs
  out = []
  base = next(iter(rows.values()))["base_acc"][0]
  out.append((f"precondition: base exact match on the RL problems (4-digit) in [{BASE_RANGE[0]}, {BASE_RANGE[1]}]",
              BASE_RANGE[0] <= base <= BASE_RANGE[1], f"base {base:.3f}"))
  if "herl" in rows:
    s = rows["herl"]["herl/rewrite_success_rate@first"][0]
    out.append((f"precondition: revisions beat the group best in >= {MIN_REWRITE_SUCCESS} of rewritten groups "
                f"(HeRL, first {WINDOW} steps)", s >= MIN_REWRITE_SUCCESS, f"rewrite success {s:.3f}"))
  if not all(ok for _, ok, _ in out):
    return out + [("claims", None, "not evaluated: a precondition failed")]
  grpo = rows.get("grpo")
  if grpo is not None and grpo["final_acc"][0] <= base + 0.01:
    return out + [("claims", None, f"not evaluated: GRPO does not improve ({base:.3f} -> {grpo['final_acc'][0]:.3f}), "
                   "so no exact-match level separates the arms")]
  if "herl" in rows and "grpo" in rows:
    out.append(("HeRL reaches the level with fewer generated sequences than GRPO", *_fewer(rows, "herl", "grpo")))
  if "naive" in rows and "herl" in rows and "grpo" in rows:
    h, n, g = (rows[a]["seq_to_level"][0] for a in ("herl", "naive", "grpo"))
    out.append(("NaiveHE in between (HeRL <= NaiveHE <= GRPO sequences to the level)", h <= n <= g,
                f"HeRL {h:.0f}, NaiveHE {n:.0f}, GRPO {g:.0f}"))
  if "herl" in rows and "grpo" in rows:
    (gh, sh), (gg, sg) = rows["herl"]["tt_gain"], rows["grpo"]["tt_gain"]
    out.append(("test-time rounds help the HeRL-trained model more than the GRPO-trained one",
                bool(gh > gg and gh - gg > sh + sg), f"pass@1 gain after 2 rounds {gh:.3f} ± {sh:.3f} vs {gg:.3f} ± {sg:.3f}"))
  return out


def format_table(rows: dict, num_seeds: int) -> str:
  cols = [("base", "base_acc"), ("final", "final_acc"), ("final rubric", "final_rubric"),
          ("final +1 round", "final_round1"), ("final +2 rounds", "final_round2"), ("AUC (budget)", "auc"),
          ("sequences to level", "seq_to_level"), ("sequences", "sequences"),
          ("rewrite success first→last", "herl/rewrite_success_rate"), ("bonus first→last", "herl/bonus_mean"),
          ("HE token share first→last", "herl/he_token_share"), ("zero-std groups first→last", "zero_std")]
  any_arm = next(iter(rows.values()))
  return arms_lib.markdown_table(rows, cols, LABELS, (
      f"Mean ± std over {num_seeds} seed(s); held-out exact match (greedy, 4-digit problems); level "
      f"{any_arm['level'][0]:.3f} (halfway from base to GRPO's final); AUC over the first "
      f"{any_arm['budget'][0]:.0f} generated sequences; training metrics: mean of the first / last {WINDOW} steps."))


format_claims = arms_lib.format_claims


def plot_curves(runs: dict, workdir: str, path: str) -> None:
  """Exact match vs generated sequences per arm; after 2 test-time rounds; rewrite success per step."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  cfg = arms_lib.load_config_module(CONFIG).get_config("grpo")
  cur = curves(runs, workdir, cfg.rl.prompts_per_step * cfg.rl.group_size)
  fig, (ax_acc, ax_tt, ax_rw) = plt.subplots(1, 3, figsize=(16, 4))
  for i, (arm, by_seed) in enumerate(cur.items()):
    style = dict(label=LABELS.get(arm, arm), color=f"C{i}")  # one colour per arm in every panel
    seqs = np.mean([c[0] for c in by_seed.values()], axis=0)
    ax_acc.plot(seqs, np.mean([c[1] for c in by_seed.values()], axis=0), "-o", **style)
    ax_tt.plot(seqs, np.mean([c[2] for c in by_seed.values()], axis=0), "-o", **style)
    if arm != "grpo":
      v = np.array([[r["herl/rewrite_success_rate"] for r in arms_lib.train_rows(workdir, arm, s)] for s in by_seed])
      ax_rw.plot(*arms_lib.trailing_means(v.mean(0), WINDOW), **style)
  ax_acc.set(xlabel="generated sequences", ylabel="exact match (greedy)", title="Held-out, matched budget")
  ax_tt.set(xlabel="generated sequences", ylabel="exact match", title="After 2 test-time HE rounds")
  ax_rw.set(xlabel="RL step", ylabel="fraction of rewritten groups", title="Rewrite success (10-step mean)")
  for ax in (ax_acc, ax_tt, ax_rw):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
