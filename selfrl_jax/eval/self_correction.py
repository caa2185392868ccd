"""Self-correction metrics for two (or more) attempts, SCoRe §2.4 and §7 item 8.

    m = self_correction_metrics(correct_t1_N, correct_t2_N, y1_BxL, y1_len_N, y2_BxL, y2_len_N)
    m["acc_t1"], m["acc_t2"], m["delta"], m["delta_i2c"], m["delta_c2i"]
    m["frac_changed"], m["edit_ratio_mean"], m["edit_ratio_hist"]     # when tokens are given

Identity: delta = acc_t2 - acc_t1 = delta_i2c - delta_c2i. The edit ratio is
Levenshtein(y1, y2) / max(|y1|, |y2|) on token ids (0 when both are empty), as recommended for
the paper's Figure 4 diagnostic.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

EDIT_RATIO_BINS = 10


def _check_binary(name: str, x: Any) -> np.ndarray:
  arr = np.asarray(x)
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}.")
  if not np.isin(arr, (0, 1)).all():
    bad = int(np.flatnonzero(~np.isin(arr, (0, 1)))[0])
    raise ValueError(f"{name} must hold 0/1 (or bool) values; row {bad} is {arr[bad]!r}.")
  return arr.astype(bool)


def _check_tokens(name: str, tokens: Any, lens: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
  tok = np.asarray(tokens)
  if tok.ndim != 2 or tok.shape[0] != n:
    raise ValueError(f"{name}_tokens must have shape (N={n}, L), got {tok.shape}.")
  if lens is None:
    length = np.full((n,), tok.shape[1], np.int64)
  else:
    length = np.asarray(lens).astype(np.int64)
    if length.shape != (n,):
      raise ValueError(f"{name}_len must have shape ({n},), got {length.shape}.")
    bad = np.flatnonzero((length < 0) | (length > tok.shape[1]))
    if bad.size:
      raise ValueError(f"{name}_len row {int(bad[0])} is {int(length[bad[0]])}; expected 0..{tok.shape[1]}.")
  return tok, length


def levenshtein_batch(a_NxL: Any, a_len_N: Any, b_NxM: Any, b_len_N: Any) -> np.ndarray:
  """Levenshtein distance between row n of `a` (first a_len[n] ids) and row n of `b`.

  Row-by-row DP, vectorised over the batch and over the columns: within a row, the insertion
  chain D[i, j] = min_k<=j (t[k] + j - k) is a cumulative minimum of t[k] - k, so no loop over
  columns is needed. Padding past a row's length never affects the prefix cell that is read out.

  Returns:
    int64[N] distances.
  """
  a = np.asarray(a_NxL)
  b = np.asarray(b_NxM)
  a_len = np.asarray(a_len_N, np.int64)
  b_len = np.asarray(b_len_N, np.int64)
  n, width_a = a.shape
  width_b = b.shape[1]
  rows = np.arange(n)
  cols_M1 = np.arange(width_b + 1, dtype=np.int64)
  prev_NxM1 = np.broadcast_to(cols_M1, (n, width_b + 1)).copy()  # D[0, j] = j
  out = prev_NxM1[rows, b_len].copy()  # rows with a_len == 0
  for i in range(1, width_a + 1):
    sub_NxM = (a[:, i - 1:i] != b).astype(np.int64)
    t_NxM1 = np.empty_like(prev_NxM1)
    t_NxM1[:, 0] = i  # D[i, 0]: delete all i ids
    t_NxM1[:, 1:] = np.minimum(prev_NxM1[:, 1:] + 1, prev_NxM1[:, :-1] + sub_NxM)
    prev_NxM1 = np.minimum.accumulate(t_NxM1 - cols_M1, axis=1) + cols_M1
    done = a_len == i
    out[done] = prev_NxM1[rows[done], b_len[done]]
  return out


def levenshtein_batch_jax(a_NxL: jax.Array, a_len_N: jax.Array, b_NxM: jax.Array,
                          b_len_N: jax.Array) -> jax.Array:
  """Jittable twin of `levenshtein_batch` (lax.scan over the rows of `a`); returns int32[N]."""
  n, width_a = a_NxL.shape
  width_b = b_NxM.shape[1]
  cols_M1 = jnp.arange(width_b + 1, dtype=jnp.int32)
  rows = jnp.arange(n)
  prev0_NxM1 = jnp.broadcast_to(cols_M1, (n, width_b + 1))
  out0_N = prev0_NxM1[rows, b_len_N]

  def row(carry, xs):
    prev_NxM1, out_N = carry
    i, a_i_N = xs
    sub_NxM = (a_i_N[:, None] != b_NxM).astype(jnp.int32)
    inner_NxM = jnp.minimum(prev_NxM1[:, 1:] + 1, prev_NxM1[:, :-1] + sub_NxM)
    t_NxM1 = jnp.concatenate([jnp.full((n, 1), i, jnp.int32), inner_NxM], axis=1)
    cur_NxM1 = jax.lax.cummin(t_NxM1 - cols_M1, axis=1) + cols_M1
    out_N = jnp.where(a_len_N == i, cur_NxM1[rows, b_len_N], out_N)
    return (cur_NxM1, out_N), None

  xs = (jnp.arange(1, width_a + 1, dtype=jnp.int32), a_NxL.T)
  (_, out_N), _ = jax.lax.scan(row, (prev0_NxM1, out0_N), xs)
  return out_N


def edit_ratio(a_NxL: Any, a_len_N: Any, b_NxM: Any, b_len_N: Any) -> np.ndarray:
  """Levenshtein(a, b) / max(|a|, |b|) per row; 0 where both are empty. float64[N] in [0, 1]."""
  dist = levenshtein_batch(a_NxL, a_len_N, b_NxM, b_len_N)
  return dist / np.maximum(np.maximum(a_len_N, b_len_N), 1)


def edit_ratio_histogram(dist_N: Any, denom_N: Any, bins: int = EDIT_RATIO_BINS) -> np.ndarray:
  """Counts of dist/denom over `bins` equal bins on [0, 1] (the last bin includes 1); int64[bins].

  Bins come from exact integer arithmetic, floor(bins * dist / denom): float bin edges would put a
  ratio such as 3/10 on either side of the 0.3 edge.
  """
  dist = np.asarray(dist_N, np.int64)
  denom = np.maximum(np.asarray(denom_N, np.int64), 1)
  return np.bincount(np.minimum(bins * dist // denom, bins - 1), minlength=bins).astype(np.int64)


def self_correction_metrics(correct_t1_N: Any, correct_t2_N: Any, y1_tokens_NxL: Any = None,
                            y1_len_N: Any = None, y2_tokens_NxL: Any = None,
                            y2_len_N: Any = None) -> dict[str, Any]:
  """Accuracy at both attempts and the transition fractions of SCoRe §2.4.

  Args:
    correct_t1_N, correct_t2_N: 0/1 (or bool) correctness of attempt 1 and attempt 2.
    y1_tokens_NxL, y2_tokens_NxL: optional response token ids (padded; widths may differ).
    y1_len_N, y2_len_N: valid lengths; None means the full width is valid.

  Returns:
    floats acc_t1, acc_t2, delta, delta_i2c, delta_c2i; with tokens also frac_changed (y2 != y1),
    edit_ratio (float64[N]), edit_ratio_mean and edit_ratio_hist (int64[10], equal bins on [0, 1]).
  """
  r1 = _check_binary("correct_t1_N", correct_t1_N)
  r2 = _check_binary("correct_t2_N", correct_t2_N)
  if r1.shape != r2.shape:
    raise ValueError(f"correct_t1_N and correct_t2_N must have the same shape, got {r1.shape} and {r2.shape}.")
  out: dict[str, Any] = {
      "acc_t1": float(r1.mean()),
      "acc_t2": float(r2.mean()),
      "delta_i2c": float((~r1 & r2).mean()),
      "delta_c2i": float((r1 & ~r2).mean()),
  }
  out["delta"] = out["acc_t2"] - out["acc_t1"]
  if (y1_tokens_NxL is None) != (y2_tokens_NxL is None):
    raise ValueError("y1_tokens_NxL and y2_tokens_NxL must be given together (or both left out).")
  if y1_tokens_NxL is None:
    return out
  n = r1.shape[0]
  y1, len1 = _check_tokens("y1", y1_tokens_NxL, y1_len_N, n)
  y2, len2 = _check_tokens("y2", y2_tokens_NxL, y2_len_N, n)
  dist = levenshtein_batch(y1, len1, y2, len2)
  denom = np.maximum(len1, len2)
  ratio = dist / np.maximum(denom, 1)  # both empty: 0 / 1
  out["frac_changed"] = float((dist > 0).mean())  # distance 0 <=> identical sequences
  out["edit_ratio"] = ratio
  out["edit_ratio_mean"] = float(ratio.mean())
  out["edit_ratio_hist"] = edit_ratio_histogram(dist, denom)
  return out


def multi_attempt_accuracy(correct_KxN: Any) -> np.ndarray:
  """Accuracy after each of K sequential attempts (SCoRe App. A.1, Fig. 8); float64[K]."""
  arr = np.asarray(correct_KxN)
  if arr.ndim != 2 or arr.shape[1] == 0:
    raise ValueError(f"correct_KxN must have shape (K attempts, N problems) with N > 0, got {arr.shape}.")
  for k in range(arr.shape[0]):
    _check_binary(f"correct_KxN[{k}]", arr[k])
  return arr.astype(np.float64).mean(axis=1)
