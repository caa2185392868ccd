"""Answer clustering into majority-vote codes: string, canonical form and math-verify equivalence."""

import jax.numpy as jnp
import numpy as np
import pytest

from selfrl_jax.algos.rlavr_labels import majority_vote
from selfrl_jax.rewards import answer_clusters as ac


def test_string_clusters_in_order_and_gold_matching():
  c = ac.AnswerClusterer("string")
  answers = [["3", "5", " 5", "3", "7", None, "", None], ["1", "1", "2", "2", "2", "9", "1", "1"]]
  codes, valid = c.codes(answers)
  assert codes.tolist() == [[0, 1, 1, 0, 2, -1, -1, -1], [0, 0, 1, 1, 1, 2, 0, 0]]
  assert valid[0].tolist() == [True] * 5 + [False] * 3
  label, x, has = majority_vote(jnp.asarray(codes), jnp.asarray(valid))
  assert label.tolist() == [0, 0] and x.tolist() == [2, 4]  # "3" wins the 2-2 tie by first occurrence
  assert c.match(answers, codes, ["7", "4"]).tolist() == [2, ac.NO_MATCH]


def test_canonical_form_equivalence():
  canon = lambda s: "|".join(sorted(p.strip() for p in s.split(",")))  # noqa: E731  order-free KK answers
  c = ac.AnswerClusterer("canonical", canonical=canon)
  codes, _ = c.codes([["a=knight,b=knave", "b=knave, a=knight", "a=knave,b=knave"]])
  assert codes.tolist() == [[0, 0, 1]]
  with pytest.raises(ValueError, match="canonical"):
    ac.AnswerClusterer("canonical")


def test_bad_equivalence_name():
  with pytest.raises(ValueError, match="string | canonical | math_verify"):
    ac.AnswerClusterer("sympy")


@pytest.mark.slow
def test_math_verify_clusters_equivalent_forms_and_counts_timeouts():
  c = ac.AnswerClusterer("math_verify", timeout_s=5.0, num_workers=1)
  try:
    answers = [["\\frac{1}{2}", "0.5", "1/2", "2", None, "\\dfrac12"]]
    codes, valid = c.codes(answers)
    assert codes.tolist() == [[0, 0, 0, 1, -1, 0]], codes
    assert c.match(answers, codes, ["\\frac12"]).tolist() == [0]
    assert c.match(answers, codes, ["3"]).tolist() == [ac.NO_MATCH]
    assert c.all_counters["pairs"] > 0 and c.all_counters["timeouts"] == 0
  finally:
    c.close()


def slow_unless_equal(a: str, b: str) -> float:
  """A pair function that hangs on one pathological answer (stands in for a math-verify blow-up)."""
  if "hang" in (a, b):
    import time
    time.sleep(60)
  return float(a == b)


@pytest.mark.slow
def test_a_timed_out_comparison_counts_as_different_and_is_counted():
  c = ac.AnswerClusterer("math_verify", timeout_s=1.0, num_workers=1, pair_fn=slow_unless_equal)
  try:
    codes, _ = c.codes([["x", "hang", "x ", "y"]])
    # "hang" cannot be compared: it opens its own cluster; the rest cluster normally.
    assert codes.tolist() == [[0, 1, 0, 2]]
    assert c.all_counters["timeouts"] >= 1
  finally:
    c.close()
