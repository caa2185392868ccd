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
  assert "| naive multi-turn RL |" in table and "| base model (no RL) |" in table
  assert score_toy.mid_training_step(RUNS) == 50  # the last evaluation inside Stage I (70 steps)
