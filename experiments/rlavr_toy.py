"""RLAVR's tiny reproduction (rlavr.md §10): six arms at one label budget x seeds, table, claims, plots.

Called by `experiments/reproduce.py --method=rlavr`; each arm is `configs/rlavr/tiny_arithmetic.py:<arm>`
run through the same `train()` as any experiment (`experiments/arms.py`), all from one warm start.

The claims (§10 "Expected signature", a hypothesis of the spec) are checked on the numbers, never
assumed: `claims()` returns each with the values it was decided on, and the precondition (a warm
start that is right on 30-50% of the RL problems and whose majority vote is often wrong) comes first.
"""

from __future__ import annotations


import numpy as np

from experiments import arms as arms_lib

CONFIG = "rlavr/tiny_arithmetic.py"
LABELS = {"ttrl": "TTRL (majority vote, 0 labels)", "gt_only_random": "GT-only-random (rest dropped)",
          "rlavr_random": "RLAVR-random (GT + pseudo)", "care": "CARE", "oracle_cag": "Oracle-CAG",
          "full_gt": "Full GT (every label)"}
# Training-log metrics summarised over the first and last WINDOW steps of each run (half the run when
# it is shorter than 2 * WINDOW, so the two windows never overlap).
TRAIN_METRICS = ("rlavr/agreement", "rlavr/true_acc", "rlavr/answer_entropy", "rlavr/label_acc_used",
                 "rlavr/confident_wrong_frac")
CARE_METRICS = ("rlavr/stage1_auroc", "rlavr/recall_at_p")
WINDOW = 10
TIE = 0.01  # "A >= B" holds when mean(A) >= mean(B) - TIE (held-out accuracy on 512 problems)


def run(arms: list[str], seeds: list[int], workdir: str, num_steps: int | None = None, jobs: int = 1) -> dict:
  return arms_lib.run_arms(CONFIG, arms, seeds, workdir, edit=arms_lib.shortened(num_steps, num_evals=5), jobs=jobs)


train_rows = arms_lib.train_rows


def summarize(runs: dict, workdir: str) -> dict[str, dict[str, tuple[float, float]]]:
  """{arm: {metric: (mean, std over seeds)}}: held-out accuracy before/after RL, each training
  metric over the first and the last WINDOW steps, labels spent, and CARE's probe diagnostics
  (mean over the steps after the gate's warm-up)."""
  out = {}
  for arm, by_seed in runs.items():
    per_seed: dict[str, list[float]] = {}
    for seed, summary in by_seed.items():
      rows = train_rows(workdir, arm, seed)
      w = min(WINDOW, max(1, len(rows) // 2))
      vals = {"base_acc": summary["initial"]["eval/accuracy"], "final_acc": summary["final"]["eval/accuracy"],
              "best_acc": max(summary["history"]["eval/accuracy"]),
              "labels_spent": rows[-1]["rlavr/labels_spent"]}
      for m in TRAIN_METRICS:
        series = [r[m] for r in rows]
        vals[f"{m}@first"], vals[f"{m}@last"] = np.mean(series[:w]), np.mean(series[-w:])
      for m in CARE_METRICS:
        late = [r[m] for r in rows[len(rows) // 5:] if m in r]
        if late:
          vals[m] = float(np.mean(late))
      for k, v in vals.items():
        per_seed.setdefault(k, []).append(float(v))
    out[arm] = {k: arms_lib.mean_std(v) for k, v in per_seed.items()}
  return out


def claims(rows: dict, runs: dict | None = None) -> list[tuple[str, bool | None, str]]:
  """[(claim, holds (None: arm not run), the numbers)] for the precondition and §10's signature.

  `runs` (per-seed summaries) is not needed here; it is part of the signature every toy report's
  `claims` shares (`reproduce.py`)."""
  del runs
  def acc(arm):
    return rows[arm]["final_acc"][0]

  def has(*arms):
    return all(a in rows for a in arms)

  out = []
  any_arm = next(iter(rows.values()))
  base = any_arm["base_acc"][0]
  # TTRL trains on the majority everywhere, so its label accuracy is the majority's.
  wrong_majority = 1.0 - rows["ttrl"]["rlavr/label_acc_used@first"][0] if "ttrl" in rows else None
  out.append(("precondition: warm start right on 30-50% of held-out RL problems", 0.3 <= base <= 0.5,
              f"base held-out accuracy {base:.3f}"))
  if wrong_majority is not None:
    out.append(("precondition: the majority vote is often wrong (>= 30% of prompts, first steps)",
                wrong_majority >= 0.3, f"TTRL majority wrong on {wrong_majority:.3f} of prompts"))
  if has("ttrl"):
    t = rows["ttrl"]
    rise = t["rlavr/agreement@last"][0] - t["rlavr/agreement@first"][0]
    true = acc("ttrl") - base
    ent = t["rlavr/answer_entropy@last"][0] - t["rlavr/answer_entropy@first"][0]
    out.append(("TTRL: pseudo-label agreement rises", rise > 0, f"agreement {t['rlavr/agreement@first'][0]:.3f} -> "
                f"{t['rlavr/agreement@last'][0]:.3f}"))
    out.append(("TTRL: held-out accuracy plateaus or falls (gain <= 0.02)", true <= 0.02,
                f"held-out {base:.3f} -> {acc('ttrl'):.3f}"))
    out.append(("TTRL: within-group answer entropy collapses", ent < 0, f"entropy {t['rlavr/answer_entropy@first'][0]:.3f}"
                f" -> {t['rlavr/answer_entropy@last'][0]:.3f}"))
  for hi, lo in (("care", "rlavr_random"), ("rlavr_random", "gt_only_random"), ("oracle_cag", "care")):
    if has(hi, lo):
      out.append((f"{LABELS[hi]} >= {LABELS[lo]} (held-out, tie {TIE})", acc(hi) >= acc(lo) - TIE,
                  f"{acc(hi):.3f} ± {rows[hi]['final_acc'][1]:.3f} vs {acc(lo):.3f} ± {rows[lo]['final_acc'][1]:.3f}"))
  if "full_gt" in rows and len(rows) > 1:
    best_other = max((a for a in rows if a != "full_gt"), key=acc)
    out.append(("Full GT on top", acc("full_gt") >= acc(best_other) - TIE,
                f"full GT {acc('full_gt'):.3f} vs best other ({best_other}) {acc(best_other):.3f}"))
  return out


def format_table(rows: dict, num_seeds: int) -> str:
  """Markdown: held-out accuracy and the training diagnostics, mean ± std over seeds."""
  cols = [("base acc", "base_acc"), ("final acc", "final_acc"), ("best acc", "best_acc"),
          ("labels spent", "labels_spent"), ("agreement first→last", "rlavr/agreement"),
          ("true acc (rollouts) first→last", "rlavr/true_acc"), ("entropy first→last", "rlavr/answer_entropy"),
          ("label acc used (last)", "rlavr/label_acc_used@last"), ("confident-wrong (last)", "rlavr/confident_wrong_frac@last"),
          ("stage-1 AUROC", "rlavr/stage1_auroc"), ("recall@p", "rlavr/recall_at_p")]
  return arms_lib.markdown_table(rows, cols, LABELS, (
      f"Mean ± std over {num_seeds} seed(s); held-out accuracy: greedy, 512 problems; training metrics: "
      f"mean of the first / last {WINDOW} steps (half the run if shorter)."))


format_claims = arms_lib.format_claims


def plot_curves(runs: dict, workdir: str, path: str) -> None:
  """Held-out accuracy per arm; TTRL's agreement vs true accuracy; answer entropy per arm."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (ax_acc, ax_ttrl, ax_ent) = plt.subplots(1, 3, figsize=(16, 4))
  for arm, by_seed in runs.items():
    hists = [r["history"] for r in by_seed.values()]
    acc = np.array([h["eval/accuracy"] for h in hists])
    ax_acc.plot(hists[0]["step"], acc.mean(0), "-o", label=LABELS.get(arm, arm))
    ent = np.array([[r["rlavr/answer_entropy"] for r in train_rows(workdir, arm, s)] for s in by_seed])
    ax_ent.plot(*arms_lib.trailing_means(ent.mean(0), WINDOW), label=LABELS.get(arm, arm))
  if "ttrl" in runs:
    for key, name in (("rlavr/agreement", "agreement with the majority"), ("rlavr/true_acc", "true accuracy")):
      v = np.array([[r[key] for r in train_rows(workdir, "ttrl", s)] for s in runs["ttrl"]])
      ax_ttrl.plot(*arms_lib.trailing_means(v.mean(0), WINDOW), label=name)
  ax_acc.set(xlabel="RL step", ylabel="held-out accuracy (greedy)", title="Evaluation (mean over seeds)")
  ax_ttrl.set(xlabel="RL step", ylabel="fraction of rollouts", title="TTRL rollouts (10-step mean)")
  ax_ent.set(xlabel="RL step", ylabel="nats", title="Within-group answer entropy")
  for ax in (ax_acc, ax_ttrl, ax_ent):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
