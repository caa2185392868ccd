r"""The main job: warm-start a tiny model, run RL on the arithmetic task, evaluate, plot.

  python experiments/reproduce.py                                  # GRPO, 3 seeds, ~10 min on 2 CPU cores
  python experiments/reproduce.py --seeds=0 --num_steps=20         # a quick look
  python experiments/reproduce.py --config=configs/tiny/grpo_arithmetic.py --workdir=/tmp/repro
  python experiments/reproduce.py --method=score                   # SCoRe prefix-sums toy: P1-P3, every arm x 3 seeds
  python experiments/reproduce.py --method=score --score_toy=addition   # the spec's §11 toy (bugged addition)
  python experiments/reproduce.py --method=score --arms=score,naive_multi_turn --seeds=0
  python experiments/reproduce.py --method=rlavr                   # RLAVR toy: six arms x 3 seeds, ~15 min
  python experiments/reproduce.py --method=rlavr --arms=ttrl,care,entropy,avg_prob --seeds=0
  python experiments/reproduce.py --method=ssrl_if                 # SSRL-IF toy: arms A-F x 3 seeds
  python experiments/reproduce.py --method=herl                    # HeRL toy: arms (1)-(5) x 3 seeds
  python experiments/reproduce.py --method=self_guide --jobs=2     # Self-Guide grid toy: arms (a)-(g) x 3 seeds

`--method=score` runs the arms of configs/score/tiny_prefix_sums.py (`--score_toy=addition`:
configs/score/tiny_arithmetic.py; see experiments/score_toy.py), the prefix-sums toy's preconditions
(experiments/score_prefix_checks.py) and its claims per length bucket, and writes
<workdir>/score_table.md, score_results.json and score_curves.png; `--method=rlavr` the
arms of configs/rlavr/tiny_arithmetic.py (experiments/rlavr_toy.py): rlavr_table.md (table and the
§10 claims, each checked on the numbers), rlavr_results.json and rlavr_curves.png; `--method=ssrl_if`
the arms of configs/ssrl_if/tiny_constraints.py (experiments/ssrl_if_toy.py): ssrl_if_table.md (table,
the §9.6 preconditions and claims checked on the numbers), ssrl_if_results.json and ssrl_if_curves.png;
`--method=herl` the arms of configs/herl/tiny_addition.py (experiments/herl_toy.py): herl_table.md,
herl_results.json and herl_curves.png (exact match against generated sequences); `--method=self_guide`
the arms of configs/self_guide/tiny_grid.py (experiments/self_guide_toy.py): self_guide_table.md,
self_guide_results.json and self_guide_curves.png. `--jobs=2` trains two runs side by side (each
in its own process, after the shared warm start): a tiny model's sampling loop keeps one core busy.

For every seed: SFT warm start (cached under <workdir>/warm_start), GRPO for `train.num_steps`
iterations, greedy held-out accuracy before and after. Prints a before/after table (mean ± std
over seeds) and writes <workdir>/results.json and <workdir>/learning_curve.png.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Persistent compilation cache: seeds and arms with identical programs compile once per machine.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/selfrl_jax/jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import arms as arms_lib  # noqa: E402
from experiments import (cli, herl_toy, plots, rlavr_toy, score_prefix_checks, score_toy, self_guide_toy,  # noqa: E402
                         ssrl_if_toy)
from selfrl_jax.train.loop import train  # noqa: E402
from selfrl_jax.train.preemption import EXIT_PREEMPTED  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny/grpo_arithmetic.py", "Experiment config.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/reproduce", "Output directory (resumable).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to run.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Override train.num_steps.")
_METHOD = flags.DEFINE_enum("method", "grpo", ["grpo", "score", "rlavr", "ssrl_if", "herl", "self_guide"],
                            "grpo: --config x seeds; score / rlavr / ssrl_if / herl / self_guide: that paper's toy arms x seeds.")
_ARMS = flags.DEFINE_list("arms", [], "--method=score|rlavr|ssrl_if|herl|self_guide: arms to run (default: every arm).")
_JOBS = flags.DEFINE_integer("jobs", 1, "Paper toys except score: runs trained side by side, one process each.")
_SCORE_TOY = flags.DEFINE_enum("score_toy", "prefix_sums", list(score_toy.TOYS), "--method=score: which toy.")


def reproduce_score(workdir: str) -> None:
  """Every SCoRe toy arm x seed; prints and saves the summary tables (per length bucket, after the
  preconditions, for the prefix-sums toy) and the Acc@t1/t2 curves."""
  seeds, toy = [int(s) for s in _SEEDS.value], _SCORE_TOY.value
  config = score_toy.TOYS[toy]
  t0 = time.perf_counter()
  out = score_toy.run_arms(_ARMS.value or list(score_toy.DEFAULT_ARMS[toy]), seeds, workdir,
                           num_steps=_NUM_STEPS.value, config=config)
  sections, extra = [], {}
  if toy == "prefix_sums":
    cfg = arms_lib.load_config_module(config).get_config("score")
    checked = score_prefix_checks.check_preconditions(workdir, out["runs"])
    sections.append("Preconditions (checked before any claim):\n\n" + arms_lib.format_claims(checked))
    for name, lens in score_prefix_checks.buckets(cfg).items():
      rows = score_toy.summarize(out["runs"], prompt_lens=lens)
      extra[name] = rows
      sections.append(f"{name} items (prompt lengths {lens} tokens):\n\n" + score_toy.format_table(rows, len(seeds)))
    claims = []
    if any(ok is False for _, ok, _ in checked):
      sections.append("A precondition failed: the toy cannot test the claims; none is reported.")
    elif any(ok is None for _, ok, _ in checked):
      sections.append("Not every precondition was checked (P1 needs the single_turn arm): no claim is reported.")
    else:
      claims = score_prefix_checks.claims(extra["long"])
      sections.append("Claims on long items:\n\n" + arms_lib.format_claims(claims))
    extra = {"preconditions": checked, "claims": claims, "buckets": extra}
  rows = score_toy.summarize(out["runs"])
  sections.append("all items:\n\n" + score_toy.format_table(rows, len(seeds)))
  mid = score_toy.mid_training_step(out["runs"], config)
  if mid is not None:
    sections.append(f"At step {mid} (SCoRe in Stage I until step {score_toy.stage1_steps(config)}), all items:\n\n"
                    + score_toy.format_table(score_toy.summarize(out["runs"], step=mid), len(seeds)))
  total = time.perf_counter() - t0
  timing = ", ".join(f"{arm} {sec:.0f} s" for arm, sec in out["seconds"].items())
  report = "\n\n".join(sections) + f"\n\nwall time {total:.0f} s ({timing})"
  print(f"\nSCoRe toy ({toy})\n{report}")
  with open(os.path.join(workdir, "score_table.md"), "w") as f:
    f.write(report + "\n")
  score_toy.plot_curves(out["runs"], os.path.join(workdir, "score_curves.png"))
  with open(os.path.join(workdir, "score_results.json"), "w") as f:
    json.dump({"seconds": total, "arm_seconds": out["seconds"], "toy": toy, **extra,
               "runs": {a: {str(s): r for s, r in by.items()} for a, by in out["runs"].items()}}, f, indent=2)
  print(f"wrote {workdir}/score_table.md, score_results.json and score_curves.png")


def reproduce_with_claims(workdir: str, toy, name: str, title: str, claims_heading: str) -> None:
  """Every arm x seed of a toy report module (`rlavr_toy`, `ssrl_if_toy`: run, LABELS, summarize,
  claims, format_table, format_claims, plot_curves); prints and saves the table, the claims checked
  on the numbers and the curves as <name>_table.md, <name>_results.json and <name>_curves.png."""
  seeds = [int(s) for s in _SEEDS.value]
  t0 = time.perf_counter()
  out = toy.run(_ARMS.value or list(toy.LABELS), seeds, workdir, num_steps=_NUM_STEPS.value, jobs=_JOBS.value)
  total = time.perf_counter() - t0
  rows = toy.summarize(out["runs"], workdir)
  checked = toy.claims(rows, out["runs"])
  timing = ", ".join(f"{arm} {sec:.0f} s" for arm, sec in out["seconds"].items())
  report = (f"{toy.format_table(rows, len(seeds))}\n\n{claims_heading}:\n\n"
            f"{toy.format_claims(checked)}\n\nwall time {total:.0f} s ({timing})")
  print(f"\n{title}\n{report}")
  with open(os.path.join(workdir, f"{name}_table.md"), "w") as f:
    f.write(report + "\n")
  toy.plot_curves(out["runs"], workdir, os.path.join(workdir, f"{name}_curves.png"))
  with open(os.path.join(workdir, f"{name}_results.json"), "w") as f:
    json.dump({"seconds": total, "arm_seconds": out["seconds"], "rows": rows,
               "claims": [{"claim": c, "holds": ok, "numbers": n} for c, ok, n in checked],
               "runs": {a: {str(s): r for s, r in by.items()} for a, by in out["runs"].items()}}, f, indent=2)
  print(f"wrote {workdir}/{name}_table.md, {name}_results.json and {name}_curves.png")


def reproduce_rlavr(workdir: str) -> None:
  reproduce_with_claims(workdir, rlavr_toy, "rlavr", "RLAVR toy (3-digit addition, p = 0.2)", "Claims (rlavr.md §10)")


def reproduce_ssrl_if(workdir: str) -> None:
  reproduce_with_claims(workdir, ssrl_if_toy, "ssrl_if", "SSRL-IF toy (synthetic constraint world)",
                        "Preconditions and claims (ssrl_if.md §9.6)")


def reproduce_herl(workdir: str) -> None:
  reproduce_with_claims(workdir, herl_toy, "herl", "HeRL toy (4-digit addition, per-character rubric)",
                        "Preconditions and claims (herl.md §10)")


def reproduce_self_guide(workdir: str) -> None:
  reproduce_with_claims(workdir, self_guide_toy, "self_guide", "Self-Guide toy (7 x 7 grid with slips, H = 14)",
                        "Preconditions and claims (self_guide.md §11)")


def main(argv):
  del argv
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  if _METHOD.value in ("score", "rlavr", "ssrl_if", "herl", "self_guide"):
    {"score": reproduce_score, "rlavr": reproduce_rlavr, "ssrl_if": reproduce_ssrl_if,
     "herl": reproduce_herl, "self_guide": reproduce_self_guide}[_METHOD.value](workdir)
    return
  runs, t_start = {}, time.perf_counter()
  for seed in map(int, _SEEDS.value):
    cfg = _CONFIG.value.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.seed = seed
      if _NUM_STEPS.value:
        cfg.train.num_steps = _NUM_STEPS.value
    t0 = time.perf_counter()
    runs[seed] = train(cfg, os.path.join(workdir, f"seed_{seed}"), sft_cache_dir=os.path.join(workdir, "warm_start"))
    runs[seed]["seconds"] = time.perf_counter() - t0
    if runs[seed]["preempted"]:
      print("Preempted: rerun the same command to resume.", file=sys.stderr)
      sys.exit(EXIT_PREEMPTED)
  before = np.array([r["initial"]["eval/accuracy"] for r in runs.values()])
  after = np.array([r["final"]["eval/accuracy"] for r in runs.values()])
  total = time.perf_counter() - t_start
  print(f"\nGRPO on {_CONFIG.value.task.name} ({_CONFIG.value.train.num_steps} RL steps, greedy held-out accuracy, "
        f"{_CONFIG.value.train.eval_size} problems)")
  print(f"{'seed':>6} | {'before RL':>9} | {'after RL':>8} | {'seconds':>7}")
  for (seed, run), b, a in zip(runs.items(), before, after):
    print(f"{seed:>6} | {b:>9.3f} | {a:>8.3f} | {run['seconds']:>7.0f}")
  print(f"{'mean':>6} | {before.mean():>5.3f}±{before.std():.3f} | {after.mean():>4.3f}±{after.std():.3f} | {total:>7.0f}")
  plots.plot_curves({f"seed {seed}": (run["history"], os.path.join(workdir, f"seed_{seed}", "metrics.jsonl"))
                     for seed, run in runs.items()}, os.path.join(workdir, "learning_curve.png"))
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"before": before.tolist(), "after": after.tolist(), "seconds": total,
               "runs": {str(k): v for k, v in runs.items()}}, f, indent=2)
  print(f"wrote {workdir}/results.json and {workdir}/learning_curve.png")


if __name__ == "__main__":
  cli.run(main)
