"""Answer clustering for majority-vote pseudo-labels (TTRL / RLAVR, rlavr.md §2 (1)), host side.

    clusterer = AnswerClusterer("math_verify")              # or "string", or a canonical-form function
    codes_BxN, valid_BxN = clusterer.codes(answers)         # answers[b][j]: extracted answer or None
    gt_code_B = clusterer.match(answers, codes_BxN, golds)  # the cluster each gold answer falls in

Within a group, answers are clustered greedily in order: answer j joins the first earlier cluster
whose representative it is equivalent to, else opens a new one; its code is the cluster's index.
Equal codes mean equivalent answers, so `algos.rlavr_labels.majority_vote` can run on device.
Equivalence: `string` (stripped text), a canonical form (`canonical=fn`, e.g. Knights-and-Knaves
`name=knight|...`), or `math_verify` in either direction, in the `MathVerifier` process pool with
per-pair time limits (a time-out or error counts as "not equivalent" and is counted).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from selfrl_jax.rewards.math_answers import MathVerifier, math_equal

NO_MATCH = -2  # gold code when no sampled answer is equivalent to the gold answer


def equivalent_either_way(a: str, b: str) -> float:
  """1.0 iff math-verify finds `a` ≡ `b` in either direction (verify is not symmetric)."""
  return float(math_equal(a, b) or math_equal(b, a))


class AnswerClusterer:
  """Clusters each group's answers into integer codes by an equivalence.

  Attributes:
    counters: {"pairs": math-verify comparisons made, plus the verifier's 'timeouts' and 'errors'}.
  """

  def __init__(self, equivalence: str = "string", canonical: Callable[[str], str] | None = None,
               timeout_s: float = 5.0, num_workers: int | None = None,
               pair_fn: Callable[[str, str], float] = equivalent_either_way):
    """`pair_fn(a, b) -> 1.0 | 0.0`: the math_verify comparison run in the pool (module-level, picklable)."""
    if equivalence not in ("string", "canonical", "math_verify"):
      raise ValueError(f"AnswerClusterer: equivalence must be string | canonical | math_verify, got {equivalence!r}.")
    if (equivalence == "canonical") != (canonical is not None):
      raise ValueError("AnswerClusterer: pass `canonical` exactly when equivalence='canonical'.")
    self.equivalence, self.canonical = equivalence, canonical
    self._verifier = None
    if equivalence == "math_verify":
      self._verifier = MathVerifier(timeout_s=timeout_s, num_workers=num_workers, item_fn=pair_fn)
    self.counters = {"pairs": 0}

  def _key(self, answer: str) -> str:
    return self.canonical(answer) if self.equivalence == "canonical" else answer.strip()

  def _equivalent(self, pairs: list[tuple[str, str]]) -> np.ndarray:
    """Equivalence of each pair: equal keys short-circuit; math-verify decides the rest in one batch."""
    same = np.asarray([self._key(a) == self._key(b) for a, b in pairs], bool)
    if self._verifier is None or same.all():
      return same
    todo = np.flatnonzero(~same)
    self.counters["pairs"] += len(todo)
    verdicts = self._verifier.score([pairs[i][0] for i in todo], [pairs[i][1] for i in todo]) > 0.5
    same[todo] = verdicts
    return same

  @property
  def all_counters(self) -> dict[str, int]:
    out = dict(self.counters)
    if self._verifier is not None:
      out.update({k: v for k, v in self._verifier.counters.items() if k in ("timeouts", "errors")})
    return out

  def codes(self, answers: Sequence[Sequence[str | None]]) -> tuple[np.ndarray, np.ndarray]:
    """(codes_BxN int32, valid_BxN bool) for B groups of n answers (None: no extractable answer)."""
    b, n = len(answers), len(answers[0])
    valid = np.asarray([[a is not None and bool(a.strip()) for a in group] for group in answers], bool)
    # Every pair (j, i < j) of valid answers, decided in one batch (math-verify is the slow part).
    pairs, where = [], []
    for g, group in enumerate(answers):
      for j in range(n):
        for i in range(j):
          if valid[g, i] and valid[g, j]:
            pairs.append((group[j], group[i]))
            where.append((g, j, i))
    eq = np.zeros((b, n, n), bool)
    if pairs:
      for (g, j, i), e in zip(where, self._equivalent(pairs)):
        eq[g, j, i] = e
    codes = np.full((b, n), -1, np.int32)
    for g in range(b):
      reps: list[int] = []  # first answer of each cluster, in creation order
      for j in range(n):
        if not valid[g, j]:
          continue
        match = next((k for k, r in enumerate(reps) if eq[g, j, r]), None)
        if match is None:
          reps.append(j)
          match = len(reps) - 1
        codes[g, j] = match
    return codes, valid

  def match(self, answers: Sequence[Sequence[str | None]], codes_BxN: np.ndarray, golds: Sequence[str]) -> np.ndarray:
    """The code of the cluster each group's gold answer is equivalent to, or NO_MATCH (int32 [B])."""
    out = np.full(len(golds), NO_MATCH, np.int32)
    pairs, where = [], []
    for g, (group, gold) in enumerate(zip(answers, golds)):
      seen = set()
      for j, code in enumerate(codes_BxN[g]):
        if code >= 0 and code not in seen:
          seen.add(code)
          pairs.append((group[j], gold))
          where.append((g, code))
    if pairs:
      for (g, code), e in zip(where, self._equivalent(pairs)):
        if e and out[g] == NO_MATCH:
          out[g] = code
    return out

  def close(self) -> None:
    if self._verifier is not None:
      self._verifier.close()
