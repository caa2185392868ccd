"""The SCoRe toy report: tables from run summaries (mean ± std over seeds, at the end or mid-training)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import score_toy


def _run(acc_t1, acc_t2, steps=(0, 50, 200)):
  """A train() summary whose evaluations at `steps` have the given Acc@t1 / Acc@t2 lists."""
  def result(a1, a2):
    return {"eval/acc_t1": a1, "eval/acc_t2": a2, "eval/delta": a2 - a1, "eval/delta_i2c": max(a2 - a1, 0.0),
            "eval/delta_c2i": max(a1 - a2, 0.0), "eval/frac_changed": abs(a2 - a1)}
  evals = [result(a, b) for a, b in zip(acc_t1, acc_t2)]
  history = {"step": list(steps), **{k: [e[k] for e in evals] for k in evals[0]}}
  return {"initial": evals[0], "final": evals[-1], "history": history}


RUNS = {"score": {0: _run([0.6, 0.6, 0.9], [0.6, 0.8, 0.95]), 1: _run([0.6, 0.6, 0.7], [0.6, 0.6, 0.85])},
        "naive_multi_turn": {0: _run([0.6, 0.9, 1.0], [0.6, 0.9, 1.0]), 1: _run([0.6, 0.8, 0.9], [0.6, 0.8, 0.9])}}


def test_summary_is_mean_and_population_std_over_seeds():
  rows = score_toy.summarize(RUNS)
  assert list(rows) == ["base", "score", "naive_multi_turn"]
  assert rows["base"]["acc_t1"] == pytest.approx((0.6, 0.0))
  assert rows["score"]["acc_t1"] == pytest.approx((0.8, 0.1))
  assert rows["score"]["delta"] == pytest.approx((np.mean([0.05, 0.15]), np.std([0.05, 0.15])))
  mid = score_toy.summarize(RUNS, step=50)
  assert mid["score"]["acc_t2"] == pytest.approx((0.7, 0.1))
  assert mid["naive_multi_turn"]["delta"] == pytest.approx((0.0, 0.0))
  with pytest.raises(ValueError, match="no evaluation at step 70"):
    score_toy.summarize(RUNS, step=70)


def test_table_lists_every_arm_and_metric():
  table = score_toy.format_table(score_toy.summarize(RUNS), num_seeds=2)
  assert "over 2 seed(s)" in table
  assert "| SCoRe | 0.800 ± 0.100 | 0.900 ± 0.050 |" in table
  assert "| naive multi-turn RL (episode credit: r1 + r2) |" in table and "| base model (no RL) |" in table
  assert score_toy.mid_training_step(RUNS) == 50  # the last evaluation inside Stage I (70 steps)


def _bucketed(per_len: dict[int, tuple[float, float, int]]) -> dict:
  """An evaluation with per-prompt-length metrics {length: (acc_t1, acc_t2, count)}."""
  out = {}
  for n, (a1, a2, count) in per_len.items():
    p = f"eval/by_prompt_len/{n}/"
    out.update({p + "acc_t1": a1, p + "acc_t2": a2, p + "delta": a2 - a1, p + "delta_i2c": max(a2 - a1, 0.0),
                p + "delta_c2i": max(a1 - a2, 0.0), p + "frac_changed": abs(a2 - a1), p + "count": count})
  return out


def test_length_buckets_are_count_weighted_and_name_missing_lengths():
  ev = _bucketed({4: (0.5, 0.5, 100), 5: (1.0, 1.0, 300), 10: (0.0, 0.2, 50), 11: (0.0, 0.4, 150)})
  runs = {"score": {0: {"initial": ev, "final": ev, "history": {"step": [0]}}}}
  short = score_toy.summarize(runs, prompt_lens=(4, 5))
  assert short["score"]["acc_t1"] == pytest.approx((0.875, 0.0))
  long_ = score_toy.summarize(runs, prompt_lens=(10, 11))
  assert long_["score"]["delta"] == pytest.approx((0.35, 0.0))
  with pytest.raises(KeyError, match="eval_by_prompt_len"):
    score_toy.summarize(runs, prompt_lens=(7,))


def test_claims_hold_only_when_means_differ_by_more_than_the_stds():
  from experiments import score_prefix_checks
  rows = {"score": {"delta": (0.20, 0.02), "acc_t2": (0.5, 0.01)},
          "naive_multi_turn": {"delta": (0.0, 0.01), "acc_t2": (0.5, 0.01)},
          "no_shaping": {"delta": (0.17, 0.02), "acc_t2": (0.5, 0.01)}}
  checked = {c: (ok, numbers) for c, ok, numbers in score_prefix_checks.claims(rows)}
  assert checked["SCoRe self-corrects: Δ(t1, t2) > 0 on long items"][0] is True
  assert checked["SCoRe's Δ beats naive multi-turn RL's (naive collapses)"][0] is True
  assert checked["Shaping matters: SCoRe's Δ beats w/o shaping"][0] is False      # 0.03 apart, stds sum to 0.04
  assert checked["SCoRe's Acc@t2 beats naive multi-turn RL's"][0] is False
  assert checked["Stage I matters: SCoRe's Δ beats w/o Stage I"][0] is None        # arm not run
