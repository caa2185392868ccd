"""Self-Guide's tiny reproduction (self_guide.md §11): arms (a)-(g) x seeds on the sparse grid with
slips; table, preconditions and claims checked on the numbers, curves.

Called by `experiments/reproduce.py --method=self_guide`; each arm is
`configs/self_guide/tiny_grid.py:<arm>` run through the same `train()` as any experiment
(`experiments/arms.py`), all from one warm start. A shortened run (`--num_steps`) scales the trust
schedule's breakpoints with it (§7 item 7: "scale proportionally if the total differs").

Success is the held-out success rate (128 tasks at the config's `eval_temperature`, T = 1 for the
toy; the environment's slips and the sampling draw from a fixed key); its area under the curve is
the mean over the evaluations, base included. Calibration is reported as accuracy and as balanced
accuracy (mean recall over the three true-progress classes): accuracy alone rises when a policy that
mostly moves closer says "closer" every time.
"""

from __future__ import annotations

import numpy as np

from experiments import arms as arms_lib

CONFIG = "self_guide/tiny_grid.py"
LABELS = {"grpo": "(a) GRPO", "sg": "(b) GRPO w/ SG (λ ≡ 0)", "sg_gr": "(c) SG & GR (trapezoid)",
          "immediate": "(d) λ ≡ 1 from step 0", "no_anneal": "(e) no anneal", "early_entry": "(f) early entry",
          "mitigation": "(g) guide tokens: env-only advantage"}
WINDOW = 10
BASE_RANGE = (0.10, 0.20)       # §11: a weak action prior, base success about 10-20%
BASE_SE = 2.0                   # "about": within this many standard errors of the range
CHANCE = 1 / 3                  # three labels
EVAL_TASKS = 128                # tiny_grid's train.eval_size


def _edit(num_steps: int | None):
  shorten = arms_lib.shortened(num_steps, num_evals=10)

  def edit(cfg):
    total = cfg.train.num_steps
    shorten(cfg)
    if num_steps:
      f = num_steps / total
      s = cfg.self_guide
      s.schedule_steps = tuple(round(x * f) for x in s.schedule_steps)
      s.early_entry_step = round(s.early_entry_step * f)
  return edit


def run(arms: list[str], seeds: list[int], workdir: str, num_steps: int | None = None, jobs: int = 1) -> dict:
  return arms_lib.run_arms(CONFIG, arms, seeds, workdir, edit=_edit(num_steps), jobs=jobs)


def _window(rows: list[dict], key: str, last: bool) -> float:
  vals = [r[key] for r in rows if key in r]
  if not vals:
    return float("nan")
  w = min(WINDOW, max(1, len(vals) // 2))
  return float(np.mean(vals[-w:] if last else vals[:w]))


def summarize(runs: dict, workdir: str) -> dict[str, dict[str, tuple[float, float]]]:
  out = {}
  for arm, by_seed in runs.items():
    per: dict[str, list[float]] = {}
    for seed, summary in by_seed.items():
      h, ini, fin = summary["history"], summary["initial"], summary["final"]
      rows = arms_lib.train_rows(workdir, arm, seed)
      success = np.asarray(h["eval/success"])
      vals = {"base_success": ini["eval/success"], "final_success": fin["eval/success"],
              "auc": float(success.mean()), "final_unguided": fin.get("eval/success_unguided", np.nan),
              "base_unguided": ini.get("eval/success_unguided", np.nan),
              "base_calibration": ini.get("eval/calibration", np.nan),
              "final_calibration": fin.get("eval/calibration", np.nan),
              "base_balanced": ini.get("eval/calibration_balanced", np.nan),
              "final_balanced": fin.get("eval/calibration_balanced", np.nan),
              "final_frac_positive": fin.get("eval/frac_positive", np.nan),
              "late_success_std": float(success[len(success) // 2:].std())}
      for key in ("sg/frac_positive", "sg/calibration", "sg/calibration_balanced", "sg/parse_fail_frac",
                  "agent/episode_len", "agent/success"):
        vals[f"{key}@first"], vals[f"{key}@last"] = _window(rows, key, False), _window(rows, key, True)
      for k, v in vals.items():
        per.setdefault(k, []).append(float(v))
    out[arm] = {k: arms_lib.mean_std(v) for k, v in per.items()}
  return out


def _se(p: float) -> float:
  """Standard error of a success rate measured on EVAL_TASKS held-out tasks."""
  return float(np.sqrt(p * (1 - p) / EVAL_TASKS))


def _about_in_range(p: float) -> bool:
  lo, hi = BASE_RANGE
  return lo - BASE_SE * _se(p) <= p <= hi + BASE_SE * _se(p)


def _gt(rows, a, b, key="auc"):
  (ma, sa), (mb, sb) = rows[a][key], rows[b][key]
  return bool(ma - mb > sa + sb), f"{key} {ma:.3f} ± {sa:.3f} vs {mb:.3f} ± {sb:.3f}"


def claims(rows: dict, runs: dict | None = None) -> list[tuple[str, bool | None, str]]:
  """[(claim, holds (None: not evaluated), the numbers)]: preconditions first, then §11's signature.
  ">" means the means differ by more than the sum of the stds; ">=" that the first mean is not lower."""
  del runs
  out = []
  bases = {arm: r["base_success"][0] for arm, r in rows.items()}   # the guided arms share one base, (a) acts only
  out.append((f"precondition: base success in [{BASE_RANGE[0]}, {BASE_RANGE[1]}] with and without guidance "
              f"(§11's 'about': up to {BASE_SE:g} standard errors of the {EVAL_TASKS}-task estimate outside)",
              all(_about_in_range(b) for b in bases.values()),
              ", ".join(f"{arm} {b:.3f} ± {_se(b):.3f}" for arm, b in bases.items())))
  guided = [a for a in rows if a != "grpo"]
  if guided:
    # Balanced accuracy (mean recall over closer / same / farther): a constant label scores 1/3.
    cal, acc = rows[guided[0]]["base_balanced"][0], rows[guided[0]]["base_calibration"][0]
    out.append((f"precondition: the warm start's guidance beats chance ({CHANCE:.2f}) at judging the last move "
                "(balanced accuracy, by 0.05)", bool(cal > CHANCE + 0.05),
                f"balanced accuracy {cal:.3f}, accuracy {acc:.3f}"))
  if not all(ok for _, ok, _ in out):
    return out + [("claims", None, "not evaluated: a precondition failed")]
  if {"sg_gr", "sg", "grpo"} <= set(rows):
    (c, _), (b, _) = rows["sg_gr"]["auc"], rows["sg"]["auc"]
    ok_bc = c >= b
    ok_ba, numbers = _gt(rows, "sg", "grpo")
    out.append(("SG & GR >= GRPO w/ SG > GRPO (success AUC)", ok_bc and ok_ba,
                f"(c) {c:.3f} vs (b) {b:.3f}; (b) vs (a): {numbers}"))
  if {"immediate", "sg_gr"} <= set(rows):
    d, c = rows["immediate"], rows["sg_gr"]
    drift = d["sg/frac_positive@last"][0]
    out.append(("λ ≡ 1 from step 0 drifts to fraction-positive -> 1 (>= 0.9 over the last steps)", drift >= 0.9,
                f"fraction positive {d['sg/frac_positive@first'][0]:.3f} -> {drift:.3f} "
                f"((c): -> {c['sg/frac_positive@last'][0]:.3f})"))
    ok, numbers = _gt(rows, "sg_gr", "immediate")
    unstable = d["late_success_std"][0] > c["late_success_std"][0]
    out.append(("λ ≡ 1 from step 0: lower (AUC below SG & GR's by more than the stds) or unstable success",
                ok or unstable, f"{numbers}; std of success over the second half {d['late_success_std'][0]:.3f} vs "
                f"{c['late_success_std'][0]:.3f}"))
  for arm in ("sg", "sg_gr"):
    if arm in rows:
      (b0, _), (b1, s1) = rows[arm]["base_balanced"], rows[arm]["final_balanced"]
      out.append((f"guidance calibration (balanced accuracy) rises during training ({LABELS[arm]})", bool(b1 > b0 + s1),
                  f"{b0:.3f} -> {b1:.3f} ± {s1:.3f}"))
  if {"no_anneal", "sg_gr"} <= set(rows):
    (e, se), (c, sc) = rows["no_anneal"]["final_success"], rows["sg_gr"]["final_success"]
    out.append(("no annealing ends at or below the full schedule (final success)", e <= c,
                f"{e:.3f} ± {se:.3f} vs {c:.3f} ± {sc:.3f}"))
  return out


def format_table(rows: dict, num_seeds: int) -> str:
  cols = [("base", "base_success"), ("final", "final_success"), ("AUC", "auc"),
          ("final, no guidance", "final_unguided"), ("calibration base", "base_calibration"),
          ("calibration final", "final_calibration"), ("balanced base", "base_balanced"),
          ("balanced final", "final_balanced"), ("positive first→last", "sg/frac_positive"),
          ("train calibration first→last", "sg/calibration"), ("parse failures first→last", "sg/parse_fail_frac"),
          ("episode length first→last", "agent/episode_len")]
  return arms_lib.markdown_table(rows, cols, LABELS, (
      f"Mean ± std over {num_seeds} seed(s); held-out success (T = eval_temperature, 128 tasks); AUC = mean "
      f"success over the evaluations; calibration = label equals the true progress of the move it judges "
      f"(accuracy; balanced = mean recall over closer / same / farther, 1/3 for a constant label); training "
      f"metrics: mean of the first / last {WINDOW} steps."))


format_claims = arms_lib.format_claims


def plot_curves(runs: dict, workdir: str, path: str) -> None:
  """Held-out success, fraction of positive labels and guidance calibration per arm."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (ax_s, ax_p, ax_c) = plt.subplots(1, 3, figsize=(16, 4))
  for i, (arm, by_seed) in enumerate(runs.items()):
    style = dict(label=LABELS.get(arm, arm), color=f"C{i}")
    steps = np.asarray(next(iter(by_seed.values()))["history"]["step"])
    ax_s.plot(steps, np.mean([s["history"]["eval/success"] for s in by_seed.values()], axis=0), "-o", **style)
    if arm == "grpo":
      continue
    for ax, key in ((ax_p, "sg/frac_positive"), (ax_c, "sg/calibration_balanced")):
      v = np.array([[r.get(key, np.nan) for r in arms_lib.train_rows(workdir, arm, s)] for s in by_seed])
      ax.plot(*arms_lib.trailing_means(v.mean(0), WINDOW), **style)
  ax_s.set(xlabel="RL step", ylabel="success (eval_temperature)", title="Held-out success")
  ax_p.set(xlabel="RL step", ylabel="fraction [POSITIVE]", title="Positive labels (10-step mean)")
  ax_c.set(xlabel="RL step", ylabel="balanced accuracy", title="Guidance calibration (10-step mean; chance 1/3)")
  for ax in (ax_s, ax_p, ax_c):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
