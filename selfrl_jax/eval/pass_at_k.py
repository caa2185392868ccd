"""Unbiased pass@k (Chen et al. 2021, Eq. 1) and majority voting.

    pass_at_k(num_samples_P=20, num_correct_P=correct_counts_P, k=5)   # float64[P]
    majority_vote([["4", "5", "4"], ["7", None, "8"]])                  # ["4", "7"]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np


def pass_at_k(num_samples_P: Any, num_correct_P: Any, k: int) -> np.ndarray:
  """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) per problem (Chen et al. 2021, Eq. 1).

  The ratio is the product prod_{i=n-c+1..n} (1 - k/i); its log is a difference of two prefix sums
  of log1p(-k/i), so the whole batch costs one cumulative sum, and -expm1 keeps small pass
  probabilities accurate. Terms with i <= k are never inside a used range (n - c >= k there).

  Args:
    num_samples_P: samples n per problem (scalar or int[P]); must be >= k.
    num_correct_P: correct samples c per problem, 0 <= c <= n.
    k: the k of pass@k, >= 1.

  Returns:
    float64[P] (shape of the broadcast inputs).
  """
  if int(k) != k or k < 1:
    raise ValueError(f"pass_at_k: k must be a positive integer, got {k!r}.")
  k = int(k)
  n, c = np.broadcast_arrays(np.asarray(num_samples_P), np.asarray(num_correct_P))
  if not (np.issubdtype(n.dtype, np.integer) and np.issubdtype(c.dtype, np.integer)):
    if not (np.all(n == np.round(n)) and np.all(c == np.round(c))):
      raise ValueError("pass_at_k: num_samples_P and num_correct_P must be whole numbers.")
  n = n.astype(np.int64)
  c = c.astype(np.int64)
  for name, bad in (("num_samples_P < k", n < k), ("num_correct_P < 0", c < 0),
                    ("num_correct_P > num_samples_P", c > n)):
    if bad.any():
      idx = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(f"pass_at_k: {name} at problem {idx} (n={int(n[idx])}, c={int(c[idx])}, k={k}).")
  if n.size == 0:
    return np.zeros(n.shape, np.float64)
  i = np.arange(1, int(n.max()) + 1, dtype=np.float64)
  terms = np.where(i > k, np.log1p(-k / np.maximum(i, k + 1)), 0.0)
  prefix = np.concatenate([[0.0], np.cumsum(terms)])  # prefix[m] = sum_{i<=m} terms
  log_ratio = prefix[n] - prefix[n - c]
  return np.where(n - c < k, 1.0, -np.expm1(log_ratio))


def pass_at_k_from_correct(correct_PxN: Any, ks: Sequence[int]) -> dict[str, float]:
  """Mean pass@k over problems from a 0/1 matrix of per-sample correctness: {"pass@k": value}."""
  arr = np.asarray(correct_PxN)
  if arr.ndim != 2:
    raise ValueError(f"correct_PxN must have shape (problems, samples), got {arr.shape}.")
  if not np.isin(arr, (0, 1)).all():
    raise ValueError("correct_PxN must hold 0/1 (or bool) values.")
  c = arr.astype(np.int64).sum(axis=1)
  return {f"pass@{k}": float(pass_at_k(arr.shape[1], c, k).mean()) for k in ks}


def majority_vote_counts(answers_NxK: Sequence[Sequence[str | None]]) -> tuple[list[str | None], np.ndarray]:
  """Most frequent answer per row and its share of the row's K answers.

  Ties go to the answer seen first. None (no answer extracted) never wins; a row with only None
  gives None with share 0.

  Returns:
    (answers, share float64[N]).
  """
  winners: list[str | None] = []
  share = np.zeros((len(answers_NxK),), np.float64)
  for row_idx, row in enumerate(answers_NxK):
    if isinstance(row, str):
      raise ValueError(f"majority_vote: row {row_idx} is a str; expected a list of K answers.")
    counts = Counter(a for a in row if a is not None)  # Counter keeps first-insertion order.
    if not counts:
      winners.append(None)
      continue
    best = max(counts.values())
    winner = next(a for a, cnt in counts.items() if cnt == best)
    winners.append(winner)
    share[row_idx] = best / len(row)
  return winners, share


def majority_vote(answers_NxK: Sequence[Sequence[str | None]]) -> list[str | None]:
  """Most frequent answer per row, ties broken by first occurrence (None answers do not vote)."""
  return majority_vote_counts(answers_NxK)[0]
