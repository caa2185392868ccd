"""Self-correction metrics (SCoRe §2.4, §10.2 test 2) and batched Levenshtein vs a plain Python DP."""

from __future__ import annotations

import math
import time
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfrl_jax.eval import self_correction as sc


def _py_levenshtein(a: list[int], b: list[int]) -> int:
  prev = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    cur = [i]
    for j, y in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
    prev = cur
  return prev[-1]


def _random_batch(rng, n, width_a, width_b, vocab=4):
  a = rng.integers(0, vocab, (n, width_a))
  b = rng.integers(0, vocab, (n, width_b))
  a_len = rng.integers(0, width_a + 1, n)
  b_len = rng.integers(0, width_b + 1, n)
  a_len[:3] = 0  # both-empty, empty-vs-nonempty cases always present
  b_len[0] = 0
  b_len[1] = width_b
  # Rows that copy a into b exercise distance 0 and small edits.
  for r in range(3, n, 5):
    m = min(a_len[r], width_b)
    b[r, :m] = a[r, :m]
    b_len[r] = m
  return a, a_len, b, b_len


def test_spec_identity_example():
  m = sc.self_correction_metrics([1, 0, 1, 0], [1, 1, 0, 0])
  assert m["acc_t1"] == 0.5 and m["acc_t2"] == 0.5
  assert m["delta_i2c"] == 0.25 and m["delta_c2i"] == 0.25
  assert m["delta"] == 0.0
  assert "frac_changed" not in m


def test_delta_identity_on_random_inputs():
  rng = np.random.default_rng(0)
  for trial in range(100):
    n = int(rng.integers(1, 50))
    r1 = rng.integers(0, 2, n)
    r2 = rng.integers(0, 2, n).astype(bool)
    m = sc.self_correction_metrics(r1, r2)
    assert m["delta"] == pytest.approx(m["delta_i2c"] - m["delta_c2i"], abs=1e-12), trial
    # Independent counts in plain Python.
    i2c = sum(1 for x, y in zip(r1, r2) if not x and y) / n
    c2i = sum(1 for x, y in zip(r1, r2) if x and not y) / n
    assert m["delta_i2c"] == pytest.approx(i2c) and m["delta_c2i"] == pytest.approx(c2i)
    assert m["acc_t2"] - m["acc_t1"] == pytest.approx(m["delta"])


def test_levenshtein_matches_python_dp():
  rng = np.random.default_rng(1)
  for width_a, width_b in [(7, 7), (5, 9), (9, 3), (1, 4)]:
    a, a_len, b, b_len = _random_batch(rng, 40, width_a, width_b)
    got = sc.levenshtein_batch(a, a_len, b, b_len)
    want = [_py_levenshtein(list(a[r, :a_len[r]]), list(b[r, :b_len[r]])) for r in range(40)]
    np.testing.assert_array_equal(got, want)
  # Hand-checked classic.
  kitten, sitting = [ord(c) for c in "kitten"], [ord(c) for c in "sitting"]
  assert sc.levenshtein_batch(np.array([kitten + [0]]), [6], np.array([sitting]), [7])[0] == 3


def test_levenshtein_jax_matches_numpy():
  rng = np.random.default_rng(2)
  a, a_len, b, b_len = _random_batch(rng, 64, 12, 10)
  got = jax.jit(sc.levenshtein_batch_jax)(jnp.asarray(a), jnp.asarray(a_len), jnp.asarray(b), jnp.asarray(b_len))
  np.testing.assert_array_equal(np.asarray(got), sc.levenshtein_batch(a, a_len, b, b_len))


def test_token_metrics_against_reference():
  rng = np.random.default_rng(3)
  n = 60
  y1, len1, y2, len2 = _random_batch(rng, n, 8, 8, vocab=3)
  r1, r2 = rng.integers(0, 2, n), rng.integers(0, 2, n)
  m = sc.self_correction_metrics(r1, r2, y1, len1, y2, len2)
  seqs1 = [list(y1[r, :len1[r]]) for r in range(n)]
  seqs2 = [list(y2[r, :len2[r]]) for r in range(n)]
  ratios = np.array([_py_levenshtein(s1, s2) / max(len(s1), len(s2)) if (s1 or s2) else 0.0
                     for s1, s2 in zip(seqs1, seqs2)])
  np.testing.assert_allclose(m["edit_ratio"], ratios, rtol=0, atol=1e-12)
  assert m["edit_ratio_mean"] == pytest.approx(ratios.mean())
  assert m["frac_changed"] == pytest.approx(np.mean([s1 != s2 for s1, s2 in zip(seqs1, seqs2)]))
  assert 0 < m["frac_changed"] < 1  # the fixture has both copied and changed rows
  hist = m["edit_ratio_hist"]
  assert hist.shape == (10,) and hist.sum() == n
  # Bin b holds ratios in [b/10, (b+1)/10), the last bin also holds 1.0; exact rationals.
  fracs = [Fraction(_py_levenshtein(s1, s2), max(len(s1), len(s2), 1)) for s1, s2 in zip(seqs1, seqs2)]
  want = [sum(1 for f in fracs if min(math.floor(10 * f), 9) == b) for b in range(10)]
  np.testing.assert_array_equal(hist, want)
  assert any(f in (Fraction(3, 10), Fraction(1, 2), Fraction(1)) for f in fracs)  # edge values occur


def test_full_width_when_lengths_omitted():
  y1 = np.array([[1, 2, 3], [4, 4, 4]])
  y2 = np.array([[1, 2, 3], [4, 5, 4]])
  m = sc.self_correction_metrics([0, 1], [1, 1], y1, None, y2, None)
  np.testing.assert_allclose(m["edit_ratio"], [0.0, 1 / 3])
  assert m["frac_changed"] == 0.5


def test_levenshtein_speed_n1000_l64():
  rng = np.random.default_rng(4)
  a, a_len, b, b_len = _random_batch(rng, 1000, 64, 64, vocab=50)
  sc.levenshtein_batch(a[:10], a_len[:10], b[:10], b_len[:10])
  start = time.perf_counter()
  got = sc.levenshtein_batch(a, a_len, b, b_len)
  elapsed = time.perf_counter() - start
  assert elapsed < 1.0, f"levenshtein_batch took {elapsed:.3f}s for N=1000, L=64"
  idx = [0, 1, 2, 3, 8, 500, 999]
  want = [_py_levenshtein(list(a[r, :a_len[r]]), list(b[r, :b_len[r]])) for r in idx]
  np.testing.assert_array_equal(got[idx], want)


def test_multi_attempt_accuracy():
  correct = np.array([[1, 0, 0, 1], [1, 1, 0, 1], [1, 1, 1, 1]])
  np.testing.assert_allclose(sc.multi_attempt_accuracy(correct), [0.5, 0.75, 1.0])
  m = sc.self_correction_metrics(correct[0], correct[1])
  acc = sc.multi_attempt_accuracy(correct[:2])
  assert (acc[0], acc[1]) == (m["acc_t1"], m["acc_t2"])


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="correct_t1_N"):
    sc.self_correction_metrics([0.5, 1], [1, 1])
  with pytest.raises(ValueError, match="same shape"):
    sc.self_correction_metrics([0, 1], [1, 1, 0])
  with pytest.raises(ValueError, match="together"):
    sc.self_correction_metrics([0, 1], [1, 1], np.zeros((2, 3)))
  with pytest.raises(ValueError, match="y2_len row 1"):
    sc.self_correction_metrics([0, 1], [1, 1], np.zeros((2, 3)), [1, 2], np.zeros((2, 3)), [0, 4])
  with pytest.raises(ValueError, match="y1_tokens"):
    sc.self_correction_metrics([0, 1], [1, 1], np.zeros((3, 3)), None, np.zeros((2, 3)), None)
  with pytest.raises(ValueError, match="correct_KxN"):
    sc.multi_attempt_accuracy([1, 0])


def test_edit_ratio_histogram_edges():
  # Ratios 3/10, 0 (both empty), 1/2, 1, 1/3: 3/10 must land in bin 3 and 1 in the last bin.
  hist = sc.edit_ratio_histogram([3, 0, 5, 10, 1], [10, 0, 10, 10, 3])
  np.testing.assert_array_equal(hist, [1, 0, 0, 2, 0, 1, 0, 0, 0, 1])
  np.testing.assert_allclose(sc.edit_ratio(np.array([[1, 2], [0, 0]]), [2, 0], np.array([[1, 3], [0, 0]]), [2, 0]),
                             [0.5, 0.0])
