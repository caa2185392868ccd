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

import logging
import re
from typing import Callable

from selfrl_jax.rewards.verifier_pool import VerifierPool


EXTRACTION_STYLES = ("auto", "final_answer", "boxed", "gsm8k", "last_number")

_FINAL_ANSWER_RE = re.compile(
    r"final answer is\s*(.*?)\s*(?:\.\s*)?I hope it is correct", re.IGNORECASE | re.DOTALL)
_FINAL_ANSWER_OPEN_RE = re.compile(r"final answer is", re.IGNORECASE)
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_DELIMITED_RE = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox")


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


def _boxed_matches(text: str) -> list[tuple[int, str]]:
  """(start, content) of every non-empty \\boxed{...} / \\fbox{...} / '\\boxed 5', in text order."""
  found = []
  for m in _BOX_RE.finditer(text):
    i = m.end()
    while i < len(text) and text[i] == " ":
      i += 1
    content = None
    if i < len(text) and text[i] == "{":
      content = _braced(text, i)
    elif i > m.end():  # '\boxed 5': one bare token.
      token = re.match(r"[^\s$]+", text[i:])
      content = token.group(0).rstrip(".") if token else None
    if content is not None and content.strip():  # '\boxed{}' is a placeholder, not an answer.
      found.append((m.start(), content.strip()))
  return found


def extract_boxed(text: str) -> str | None:
  """Content of the last non-empty \\boxed{...} or \\fbox{...} (nested braces allowed; also '\\boxed 5')."""
  found = _boxed_matches(text)
  return found[-1][1] if found else None


def _strip_math(answer: str) -> str:
  """Removes $...$ / \\(...\\) wrappers, a trailing period and a \\boxed{} around the answer."""
  s = answer.strip().rstrip(".").strip()
  for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
    if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
      s = s[len(left):len(s) - len(right)].strip()
      break
  boxed = extract_boxed(s) if _BOX_RE.match(s) else None
  return (boxed if boxed is not None else s).rstrip(".").strip()


def _is_prose(answer: str) -> bool:
  """Words, not an answer: 'tricky here', 'as follows' (no digit, no math, two or more words)."""
  return (not re.search(r"[\d\\$^_{}=()<>+*/]", answer)) and len(re.findall(r"[A-Za-z]+", answer)) >= 2


def _answer_clause(raw: str) -> str:
  """The answer at the start of `raw`: a leading $...$ / \\(...\\) / \\[...\\] / \\boxed{} span, else the text
  up to the first sentence end or a ', ' / '; ' before a word ('8, not 12' -> '8'; '1, 2, 3' stays)."""
  raw = raw.strip()
  for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
    if raw.startswith(left):
      end = raw.find(right, len(left))
      return raw[:end + len(right)] if end >= 0 else raw
  if _BOX_RE.match(raw):
    return raw
  return re.split(r"\.\s|[,;]\s+(?=[A-Za-z]{2,})", raw, maxsplit=1)[0]


def _final_answer_matches(text: str) -> list[tuple[int, str]]:
  """(start, answer) of every 'final answer is X', in text order.

  X is the full Minerva sentence ('... is $X$. I hope it is correct.') when present, else the rest
  of the line; when that is empty or only ':' (the answer set on the next lines, e.g. a display-math
  \\boxed{12}), the text up to the next blank line. Prose after 'is' ('the final answer is tricky
  here') is not an answer and is skipped.
  """
  sentences = {m.start(): m.group(1) for m in _FINAL_ANSWER_RE.finditer(text)}
  found = []
  for m in _FINAL_ANSWER_OPEN_RE.finditer(text):
    if m.start() in sentences:
      raw = sentences[m.start()]
    else:
      rest = text[m.end():]
      line, _, after = rest.partition("\n")
      raw = line.strip().lstrip(":").strip()
      if not raw:
        raw = " ".join(after.strip().split("\n\n", 1)[0].split())
      raw = _answer_clause(raw)
    answer = _strip_math(raw)
    if answer and not _is_prose(answer):
      found.append((m.start(), answer))
  return found


def extract_final_answer(text: str) -> str | None:
  """X from the last 'Final Answer: The final answer is $X$. I hope it is correct.' sentence (or a
  truncated / reworded 'final answer is X'; see `_final_answer_matches`)."""
  found = _final_answer_matches(text)
  return found[-1][1] if found else None


def extract_gsm8k(text: str) -> str | None:
  """The GSM8K reference answer after the last '####', without thousands commas or '$'."""
  found = _gsm8k_matches(text)
  return found[-1][1] if found else None


def extract_last_number(text: str) -> str | None:
  """The last number in the text (commas as thousands separators removed)."""
  matches = _NUMBER_RE.findall(text)
  if not matches:
    return None
  return matches[-1].replace(",", "").rstrip(".")


def _gsm8k_matches(text: str) -> list[tuple[int, str]]:
  found = []
  for m in _GSM8K_RE.finditer(text):
    answer = m.group(1).strip().replace(",", "").replace("$", "").strip()
    if answer:
      found.append((m.start(), answer))
  return found


def extract_answer(text: str, style: str = "auto") -> str | None:
  """Extracts the final answer string from a completion or a reference solution.

  Styles: 'final_answer' (SCoRe/Minerva sentence), 'boxed' (last \\boxed/\\fbox), 'gsm8k' ('#### X'),
  'last_number', or 'auto': of every answer marker in the text (final-answer sentence, \\boxed,
  '####'), the one that starts last wins — the model's last word, so a marker that holds no answer
  ('final answer is:' before a display-math \\boxed{}) never hides a real one later — and the last
  number only when there is no marker. Returns None if nothing is found.
  """
  markers: dict[str, Callable[[str], list[tuple[int, str]]]] = {
      "final_answer": _final_answer_matches, "boxed": _boxed_matches, "gsm8k": _gsm8k_matches}
  if style == "auto":
    found = [hit for fn in markers.values() for hit in fn(text)]
    if found:
      return max(found, key=lambda hit: hit[0])[1]
    return extract_last_number(text)
  if style == "last_number":
    return extract_last_number(text)
  if style not in markers:
    raise ValueError(f"unknown extraction style {style!r}; valid: {list(EXTRACTION_STYLES)}")
  found = markers[style](text)
  return found[-1][1] if found else None


# ---------------------------------------------------------------------------------------------
# Verification


def _for_math_verify(answer: str) -> str:
  """Wraps a bare answer in $...$ so math-verify reads it as LaTeX ('\\dfrac12', '(0,1]', '{1,2}')."""
  s = answer.strip()
  if _DELIMITED_RE.search(s):
    return s
  # A bare '%' would start a LaTeX comment once the answer is wrapped in $...$.
  s = re.sub(r"(?<!\\)%", r"\\%", s)
  return f"${s}$"


def _drop_timeout_notice(record: logging.LogRecord) -> bool:
  """math-verify warns once per process that its own timeout is off: we bound time in MathVerifier."""
  return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
  logging.getLogger(_name).addFilter(_drop_timeout_notice)


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


class MathVerifier(VerifierPool):
  """Binary math-answer correctness (`score_completion`, or `item_fn`) in a `VerifierPool`."""

  def __init__(self, *, num_workers: int | None = None, timeout_s: float = 5.0, grace_s: float = 2.0,
               item_fn: Callable[[str, str], float] = score_completion, mp_context: str = "spawn"):
    super().__init__(num_workers=num_workers, timeout_s=timeout_s, grace_s=grace_s, item_fn=item_fn,
                     mp_context=mp_context, name="math verifier")
