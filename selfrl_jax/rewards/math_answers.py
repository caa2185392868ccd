"""Math answer verifier: answer extraction, math-verify equivalence, and a batched process-pool scorer.

SCoRe's MATH reward is binary answer correctness r(y, y*) (score.md §2, §3): the answer sits in the
sentence "Final Answer: The final answer is $X$. I hope it is correct."; GSM8K references end in
"#### X"; MATH solutions put it in \\boxed{X}.

math-verify (0.9.0) enforces its own time limits with `signal.alarm`, which only works in a main
thread, so every call here passes `parsing_timeout=None` / `timeout_seconds=None` and time limits are
enforced by `MathVerifier`: an interval timer per item inside each worker process, and a host-side
watchdog that kills a worker stuck past the limit (e.g. in C code that never yields to the signal).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import multiprocessing as mp
import os
import re
import signal
import time
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

EXTRACTION_STYLES = ("auto", "final_answer", "boxed", "gsm8k", "last_number")

_FINAL_ANSWER_RE = re.compile(
    r"final answer is\s*(.*?)\s*(?:\.\s*)?I hope it is correct", re.IGNORECASE | re.DOTALL)
_FINAL_ANSWER_LINE_RE = re.compile(r"final answer is\s*([^\n]*)", re.IGNORECASE)
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_DELIMITERS = ("$", "\\(", "\\[", "\\boxed", "\\fbox")


# ---------------------------------------------------------------------------------------------
# Extraction


def _braced(text: str, start: int) -> str | None:
  """Content of the brace group opening at text[start] == '{', honouring nesting and '\\{'."""
  depth = 0
  i = start
  while i < len(text):
    c = text[i]
    if c == "\\":
      i += 2
      continue
    if c == "{":
      depth += 1
    elif c == "}":
      depth -= 1
      if depth == 0:
        return text[start + 1:i]
    i += 1
  return None


def extract_boxed(text: str) -> str | None:
  """Content of the last \\boxed{...} or \\fbox{...} (nested braces allowed; also '\\boxed 5')."""
  for m in reversed(list(_BOX_RE.finditer(text))):
    i = m.end()
    while i < len(text) and text[i] == " ":
      i += 1
    if i < len(text) and text[i] == "{":
      content = _braced(text, i)
      if content is not None:
        return content.strip()
    elif i > m.end():  # '\boxed 5': one bare token.
      token = re.match(r"[^\s$]+", text[i:])
      if token:
        return token.group(0).rstrip(".")
  return None


def _strip_math(answer: str) -> str:
  """Removes $...$ / \\(...\\) wrappers, a trailing period and a \\boxed{} around the answer."""
  s = answer.strip().rstrip(".").strip()
  for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
    if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
      s = s[len(left):len(s) - len(right)].strip()
      break
  boxed = extract_boxed(s) if _BOX_RE.match(s) else None
  return (boxed if boxed is not None else s).rstrip(".").strip()


def extract_final_answer(text: str) -> str | None:
  """X from the last 'Final Answer: The final answer is $X$. I hope it is correct.' sentence."""
  matches = _FINAL_ANSWER_RE.findall(text)
  if not matches:  # Truncated sentence: take the rest of the line.
    matches = _FINAL_ANSWER_LINE_RE.findall(text)
  if not matches:
    return None
  answer = _strip_math(matches[-1])
  return answer or None


def extract_gsm8k(text: str) -> str | None:
  """The GSM8K reference answer after the last '####', without thousands commas or '$'."""
  matches = _GSM8K_RE.findall(text)
  if not matches:
    return None
  answer = matches[-1].strip().replace(",", "").replace("$", "").strip()
  return answer or None


def extract_last_number(text: str) -> str | None:
  """The last number in the text (commas as thousands separators removed)."""
  matches = _NUMBER_RE.findall(text)
  if not matches:
    return None
  return matches[-1].replace(",", "").rstrip(".")


def extract_answer(text: str, style: str = "auto") -> str | None:
  """Extracts the final answer string from a completion or a reference solution.

  Styles: 'final_answer' (SCoRe/Minerva sentence), 'boxed' (last \\boxed/\\fbox), 'gsm8k' ('#### X'),
  'last_number', or 'auto' (those four in that order, first hit wins). Returns None if none is found.
  """
  extractors: dict[str, Callable[[str], str | None]] = {
      "final_answer": extract_final_answer,
      "boxed": extract_boxed,
      "gsm8k": extract_gsm8k,
      "last_number": extract_last_number,
  }
  if style == "auto":
    for fn in extractors.values():
      answer = fn(text)
      if answer is not None:
        return answer
    return None
  if style not in extractors:
    raise ValueError(f"unknown extraction style {style!r}; valid: {list(EXTRACTION_STYLES)}")
  return extractors[style](text)


# ---------------------------------------------------------------------------------------------
# Verification


def _for_math_verify(answer: str) -> str:
  """Wraps a bare answer in $...$ so math-verify reads it as LaTeX ('\\dfrac12', '(0,1]', '{1,2}')."""
  s = answer.strip()
  if any(d in s for d in _DELIMITERS):
    return s
  # A bare '%' would start a LaTeX comment once the answer is wrapped in $...$.
  s = re.sub(r"(?<!\\)%", r"\\%", s)
  return f"${s}$"


def math_equal(pred: str | None, gold: str) -> bool:
  """Whether answer `pred` is mathematically equivalent to `gold`, by math-verify.

  Both are parsed with `math_verify.parse` (bare answers are wrapped in $...$ first) and compared
  with `math_verify.verify(gold, pred)` (gold first: the comparison is not symmetric). Has no time
  limit of its own and is safe in any thread; use `MathVerifier` to bound the time.
  """
  if pred is None or not pred.strip() or not gold.strip():
    return False
  from math_verify import parse, verify  # Deferred: sympy import costs ~0.7 s.
  gold_parsed = parse(_for_math_verify(gold), parsing_timeout=None)
  pred_parsed = parse(_for_math_verify(pred), parsing_timeout=None)
  return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def reference_answer(gold: str) -> str:
  """The answer inside a reference: '#### X' or \\boxed{X} when present, else the text itself."""
  if "####" in gold:
    return extract_gsm8k(gold) or gold
  if _BOX_RE.search(gold):
    return extract_boxed(gold) or gold
  return gold


def score_completion(completion: str, gold: str, style: str = "auto") -> float:
  """Binary reward: 1.0 iff the answer extracted from `completion` is equivalent to `gold`."""
  return float(math_equal(extract_answer(completion, style), reference_answer(gold)))
