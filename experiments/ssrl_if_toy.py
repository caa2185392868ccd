"""SSRL-IF's tiny reproduction (ssrl_if.md §9.6): arms A-F x seeds on the synthetic constraint world,
a table, the spec's expected outcomes checked on the numbers, curves.

Called by `experiments/reproduce.py --method=ssrl_if`; each arm is
`configs/ssrl_if/tiny_constraints.py:<arm>` run through the same `train()` as any experiment
(`experiments/arms.py`), all from one warm start; the classifier is trained once per seed (the
preparation stage is cached) and shared by the arms of that seed.

The preconditions come first (§9.6 "Acceptance"): pseudo-labels clearly better than chance, i.e. a
warm start that follows single constraints (otherwise the paper's signal cannot exist here). Every
claim is reported with the numbers it was decided on, whether it holds or not.
"""

from __future__ import annotations


import numpy as np

from experiments import arms as arms_lib

CONFIG = "ssrl_if/tiny_constraints.py"
LABELS = {"sparse_full": "A sparse, L5 only", "dense_full": "B dense, L5 only", "method": "C method (L1-L5, mean)",
          "binary_rm": "D binary RM", "rm_only": "E RM scores every constraint", "oracle_soft": "F oracle soft"}
EVAL = ("eval/accuracy", "eval/prompt_acc", "eval/hard_acc", "eval/soft_acc")
TRAIN = ("zero_std_group_frac", "reward_mean", "reward/rm_scored", "reward/oracle_constraint_acc")
PREPARE = ("prepare/pseudo_label_acc", "prepare/pseudo_label_acc_soft", "prepare/rm_heldout_auc",
           "prepare/rm_oracle_auc_soft", "prepare/rm_oracle_acc_soft")
WINDOW = 20
TIE = 0.01


def run(arms: list[str], seeds: list[int], workdir: str, num_steps: int | None = None, jobs: int = 1) -> dict:
  return arms_lib.run_arms(CONFIG, arms, seeds, workdir, edit=arms_lib.shortened(num_steps, num_evals=4), jobs=jobs)


train_rows = arms_lib.train_rows


def summarize(runs: dict, workdir: str) -> dict[str, dict[str, tuple[float, float]]]:
  """{arm: {metric: (mean, std over seeds)}}: oracle metrics before / after RL, training metrics over
  the whole run and its last WINDOW steps, the classifier's preparation report."""
  out = {}
  for arm, by_seed in runs.items():
    per_seed: dict[str, list[float]] = {}
    for seed, summary in by_seed.items():
      rows = train_rows(workdir, arm, seed)
      vals = {}
      for m in EVAL:
        vals[f"{m}@base"], vals[f"{m}@final"] = summary["initial"][m], summary["final"][m]
      for m in TRAIN:
        series = [r[m] for r in rows if m in r]
        if series:  # absent when the arm does not compute it (arm F runs no classifier)
          vals[f"{m}@all"], vals[f"{m}@last"] = np.mean(series), np.mean(series[-WINDOW:])
      for m in PREPARE:
        if m in summary["initial"]:
          vals[m] = summary["initial"][m]
      for k, v in vals.items():
        per_seed.setdefault(k, []).append(float(v))
    out[arm] = {k: arms_lib.mean_std(v) for k, v in per_seed.items()}
  return out


def claims(rows: dict, runs: dict) -> list[tuple[str, bool | None, str]]:
  """[(claim, holds, numbers)]: the preconditions, then §9.6's expected outcomes."""
  out = []
  first = next(iter(rows.values()))
  if "prepare/pseudo_label_acc" in first:
    pl, pl_soft = first["prepare/pseudo_label_acc"][0], first["prepare/pseudo_label_acc_soft"][0]
    out.append(("precondition: pseudo-label accuracy clearly above 50% (>= 0.6; soft constraints)", pl_soft >= 0.6,
                f"soft {pl_soft:.3f}, all {pl:.3f}"))
    auc = first["prepare/rm_oracle_auc_soft"][0]
    out.append(("precondition: the classifier ranks soft constraints better than chance (oracle AUC >= 0.6)",
                auc >= 0.6, f"AUC {auc:.3f} on held-out responses"))

  def acc(arm, key="eval/accuracy"):
    return rows[arm][f"{key}@final"]

  def seeds_better(hi, lo, key="eval/accuracy"):
    return sum(runs[hi][s]["final"][key] > runs[lo][s]["final"][key] for s in runs[hi] if s in runs[lo])

  if "method" in rows and "sparse_full" in rows:
    wins = seeds_better("method", "sparse_full")
    c, a = acc("method"), acc("sparse_full")
    out.append(("C > A on held-out constraint-level accuracy (>= 2 of 3 seeds)", wins >= min(2, len(runs["method"])),
                f"C {c[0]:.3f} ± {c[1]:.3f} vs A {a[0]:.3f} ± {a[1]:.3f}; C ahead on {wins} seed(s)"))
  if "method" in rows and "dense_full" in rows:
    c, b = acc("method"), acc("dense_full")
    out.append(("C > B (the curriculum adds to the dense reward)", c[0] > b[0], f"C {c[0]:.3f} vs B {b[0]:.3f}"))
  if "dense_full" in rows and "sparse_full" in rows:
    b, a = acc("dense_full"), acc("sparse_full")
    out.append(("B > A (the mean reward is denser than all-or-nothing)", b[0] > a[0], f"B {b[0]:.3f} vs A {a[0]:.3f}"))
  if "sparse_full" in rows and len(rows) > 1:
    zs = {arm: r["zero_std_group_frac@all"][0] for arm, r in rows.items()}
    top = max(zs, key=zs.get)
    out.append(("A has the most zero-variance groups", top == "sparse_full",
                ", ".join(f"{LABELS[k][:1]} {v:.3f}" for k, v in zs.items())))
  if "oracle_soft" in rows and "method" in rows:
    f, c = acc("oracle_soft"), acc("method")
    out.append((f"F >= C (tie {TIE}); the gap is classifier error", f[0] >= c[0] - TIE, f"F {f[0]:.3f} vs C {c[0]:.3f}"))
  if "rm_only" in rows and "method" in rows:
    e, c = rows["rm_only"], rows["method"]
    rm_up = e["reward/rm_scored@last"][0] > c["reward/rm_scored@last"][0]
    hard_lag = acc("rm_only", "eval/hard_acc")[0] < acc("method", "eval/hard_acc")[0]
    out.append(("E raises the RM-scored reward but lags C on oracle hard-constraint accuracy", rm_up and hard_lag,
                f"RM-scored reward (last {WINDOW} steps) E {e['reward/rm_scored@last'][0]:.3f} vs C "
                f"{c['reward/rm_scored@last'][0]:.3f}; hard acc E {acc('rm_only', 'eval/hard_acc')[0]:.3f} vs C "
                f"{acc('method', 'eval/hard_acc')[0]:.3f}"))
  if "binary_rm" in rows and "method" in rows:
    d, c = acc("binary_rm"), acc("method")
    out.append(("D lands slightly below C", d[0] <= c[0] + TIE, f"D {d[0]:.3f} vs C {c[0]:.3f}"))
  return out


def format_table(rows: dict, num_seeds: int) -> str:
  cols = [("constraint acc base → final", "eval/accuracy"), ("prompt acc base → final", "eval/prompt_acc"),
          ("hard acc (final)", "eval/hard_acc@final"), ("soft acc (final)", "eval/soft_acc@final"),
          ("zero-var groups", "zero_std_group_frac@all"), ("RM-scored reward (last)", "reward/rm_scored@last"),
          ("oracle constraint acc, rollouts (last)", "reward/oracle_constraint_acc@last")]
  table = arms_lib.markdown_table(rows, cols, LABELS, (
      f"Mean ± std over {num_seeds} seed(s); held-out: 200 full (L5) instructions at temperature 0.5, scored "
      f"by the hidden oracle; training metrics: the whole run / its last {WINDOW} steps."))
  first = next(iter(rows.values()))
  prep = [f"{k.removeprefix('prepare/')} {first[k][0]:.3f} ± {first[k][1]:.3f}" for k in PREPARE if k in first]
  if prep:
    table += "\n\nClassifier (preparation stage, per seed, shared by the arms): " + ", ".join(prep)
  return table


format_claims = arms_lib.format_claims


def plot_curves(runs: dict, workdir: str, path: str) -> None:
  """Held-out constraint-level accuracy per arm; zero-variance group fraction per arm."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (ax_acc, ax_zero) = plt.subplots(1, 2, figsize=(12, 4))
  for arm, by_seed in runs.items():
    hists = [r["history"] for r in by_seed.values()]
    ax_acc.plot(hists[0]["step"], np.mean([h["eval/accuracy"] for h in hists], 0), "-o", label=LABELS.get(arm, arm))
    zero = np.array([[r["zero_std_group_frac"] for r in train_rows(workdir, arm, s)] for s in by_seed])
    ax_zero.plot(*arms_lib.trailing_means(zero.mean(0), WINDOW), label=LABELS.get(arm, arm))
  ax_acc.set(xlabel="RL step", ylabel="constraint-level accuracy (oracle)", title="Held-out L5 (mean over seeds)")
  ax_zero.set(xlabel="RL step", ylabel="fraction of groups", title=f"Zero-variance groups ({WINDOW}-step mean)")
  for ax in (ax_acc, ax_zero):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
