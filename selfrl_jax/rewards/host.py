"""Host-side rewards over decoded text, usable in split mode and (via `pure_callback`) in fused mode.

A host reward is a callable `(response_tokens_BxN, response_valid_BxN, example_id_B) -> rewards_B`
on numpy arrays: it decodes the responses, looks the records up by example id, and scores them.
`GuardedReward` makes any per-sample Python scorer safe: an exception or a non-finite score gives
reward 0 for that sample, is counted in `counters`, and is logged (the first few of each kind).
"""

from __future__ import annotations

import collections
import logging
import math
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from selfrl_jax.models.tokenizers import Tokenizer
from selfrl_jax.data.records import record_meta
from selfrl_jax.rewards.code_tests import CodeVerifier
from selfrl_jax.rewards.math_answers import MathVerifier

log = logging.getLogger(__name__)
_LOGGED_PER_KIND = 5


def decode_responses(tokenizer: Tokenizer, response_tokens_BxN, response_valid_BxN) -> list[str]:
  """Text of each response's valid tokens (stop tokens dropped)."""
  tokens, valid = np.asarray(response_tokens_BxN), np.asarray(response_valid_BxN, bool)
  return [tokenizer.decode(row[mask]) for row, mask in zip(tokens, valid)]


class GuardedReward:
  """Wraps `score(completion, record) -> float`; failures score 0 and are counted, never raised.

  Attributes:
    counters: {"calls", "errors", "nonfinite"} — read them into metrics after each step.
  """

  def __init__(self, score: Callable[[str, Mapping[str, Any]], float], tokenizer: Tokenizer,
               records: Sequence[Mapping[str, Any]], name: str = "host_reward"):
    self.score, self.tokenizer, self.records, self.name = score, tokenizer, records, name
    self.counters: collections.Counter = collections.Counter()

  def _safe(self, index: int, completion: str, record: Mapping[str, Any]) -> float:
    self.counters["calls"] += 1
    try:
      value = float(self.score(completion, record))
    except Exception as e:  # a buggy verifier must not kill a long run: score 0, count, log
      self.counters["errors"] += 1
      if self.counters["errors"] <= _LOGGED_PER_KIND:
        log.warning("%s raised on sample %d (%s: %s); scored 0.", self.name, index, type(e).__name__, e)
      return 0.0
    if not math.isfinite(value):
      self.counters["nonfinite"] += 1
      if self.counters["nonfinite"] <= _LOGGED_PER_KIND:
        log.warning("%s returned %r on sample %d; scored 0.", self.name, value, index)
      return 0.0
    return value

  def __call__(self, response_tokens_BxN, response_valid_BxN, example_id_B) -> np.ndarray:
    texts = decode_responses(self.tokenizer, response_tokens_BxN, response_valid_BxN)
    ids = np.asarray(example_id_B).reshape(-1)
    return np.asarray([self._safe(i, t, self.records[int(e)]) for i, (t, e) in enumerate(zip(texts, ids))],
                      np.float32)


class VerifierReward:
  """Decodes the responses, looks each example's reference up in `records`, and scores the batch
  with a verifier's `score(completions, references) -> rewards_B` (failures scored 0 and counted
  by the verifier). Subclasses say what the reference of a record is.
  """

  def __init__(self, tokenizer: Tokenizer, records: Sequence[Mapping[str, Any]], verifier):
    self.tokenizer, self.records, self.verifier = tokenizer, records, verifier

  @property
  def counters(self):
    return self.verifier.counters

  def reference(self, record: Mapping[str, Any]) -> Any:
    raise NotImplementedError

  def __call__(self, response_tokens_BxN, response_valid_BxN, example_id_B) -> np.ndarray:
    texts = decode_responses(self.tokenizer, response_tokens_BxN, response_valid_BxN)
    refs = [self.reference(self.records[int(e)]) for e in np.asarray(example_id_B).reshape(-1)]
    return self.verifier.score(texts, refs)


class MathAnswerReward(VerifierReward):
  """Binary math-answer correctness with math-verify in a process pool (timeouts scored 0, counted)."""

  def __init__(self, tokenizer: Tokenizer, records: Sequence[Mapping[str, Any]], timeout_s: float = 5.0,
               num_workers: int | None = None):
    super().__init__(tokenizer, records, MathVerifier(timeout_s=timeout_s, num_workers=num_workers))

  def reference(self, record: Mapping[str, Any]) -> str:
    return str(record["answer"])

  def close(self):
    self.verifier.close()


def code_tests_of(record: Mapping[str, Any]) -> dict[str, Any]:
  """The unit tests of an MBPP or HumanEval record, in the form `code_tests.check_program` takes."""
  meta = record_meta(record)
  if "test_list" in meta:
    return {"test_list": meta["test_list"], "test_setup_code": meta.get("test_setup", "")}
  return {k: meta[k] for k in ("prompt", "test", "entry_point")}


class CodeTestReward(VerifierReward):
  """1 iff the completion passes the record's unit tests, run in the sandbox (failures scored 0, counted)."""

  def __init__(self, tokenizer: Tokenizer, records: Sequence[Mapping[str, Any]], timeout_s: float = 5.0,
               memory_mb: int = 512):
    super().__init__(tokenizer, records, CodeVerifier(timeout_s=timeout_s, memory_mb=memory_mb))

  def reference(self, record: Mapping[str, Any]) -> dict[str, Any]:
    return code_tests_of(record)


def answer_pattern_problem(pattern: str) -> str | None:
  """Why `pattern` cannot be an answer pattern (not a regex, or no group 1), None when it can ("" can)."""
  if not pattern:
    return None
  try:
    groups = re.compile(pattern).groups
  except re.error as e:
    return f"not a regular expression: {e}"
  return None if groups >= 1 else "needs a group: group 1 is the answer"


def answer_span(text: str, pattern: str) -> str | None:
  """The part of a response constraints are checked on: group 1 of the first match of `pattern`
  (DOTALL; e.g. the released think gate `</think>\\n\\n(.*)`), None when it does not match, or the
  whole text when `pattern` is ""."""
  if not pattern:
    return text
  m = re.search(pattern, text, re.DOTALL)
  return m.group(1) if m else None
