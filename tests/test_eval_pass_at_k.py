"""Unbiased pass@k vs brute-force subset enumeration and the exact closed form; majority voting."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from selfrl_jax.eval.pass_at_k import majority_vote, majority_vote_counts, pass_at_k, pass_at_k_from_correct


def test_matches_enumeration_of_all_k_subsets():
  for n in range(1, 8):
    for c in range(n + 1):
      samples = [1] * c + [0] * (n - c)
      for k in range(1, n + 1):
        subsets = list(itertools.combinations(samples, k))
        want = sum(1 for s in subsets if any(s)) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)


def test_matches_exact_closed_form_vectorised():
  n = np.array([200, 200, 200, 200, 50, 1000, 1000, 16])
  c = np.array([0, 1, 37, 200, 25, 1, 999, 3])
  for k in (1, 5, 10, 16):
    got = pass_at_k(n, c, k)
    assert got.shape == (len(n),)
    want = [float(1 - Fraction(math.comb(int(ni - ci), k), math.comb(int(ni), k))) for ni, ci in zip(n, c)]
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=0)
  # pass@1 is the plain fraction correct.
  np.testing.assert_allclose(pass_at_k(n, c, 1), c / n, rtol=1e-12)


def test_small_probabilities_stay_accurate():
  # 1 - C(n-1, 1)/C(n, 1) = 1/n exactly; naive 1 - prod loses digits for huge n.
  n = 10**6
  assert pass_at_k(n, 1, 1) == pytest.approx(1e-6, rel=1e-9)


def test_pass_at_k_from_correct():
  correct = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1]])
  got = pass_at_k_from_correct(correct, ks=(1, 2, 4))
  assert got["pass@1"] == pytest.approx((0.25 + 0 + 0.75) / 3)
  assert got["pass@2"] == pytest.approx((0.5 + 0 + 1.0) / 3)  # row 0: 1 - C(3,2)/C(4,2) = 0.5
  assert got["pass@4"] == pytest.approx(2 / 3)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="num_samples_P < k"):
    pass_at_k([5, 2], [1, 1], 3)
  with pytest.raises(ValueError, match=r"num_correct_P > num_samples_P at problem \(1,\)"):
    pass_at_k([5, 5], [1, 6], 1)
  with pytest.raises(ValueError, match="positive integer"):
    pass_at_k(5, 1, 0)


def test_majority_vote_ties_and_missing_answers():
  answers = [
      ["4", "5", "4", "5"],  # tie: "4" came first
      ["7", None, "8", "8"],
      [None, None],
      ["x"],
      ["b", "a", "a", "b", "c"],  # tie: "b" came first
  ]
  assert majority_vote(answers) == ["4", "8", None, "x", "b"]
  winners, share = majority_vote_counts(answers)
  assert winners == ["4", "8", None, "x", "b"]
  np.testing.assert_allclose(share, [0.5, 0.5, 0.0, 1.0, 0.4])
  with pytest.raises(ValueError, match="row 0 is a str"):
    majority_vote(["abc"])
