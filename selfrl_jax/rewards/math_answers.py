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


# ---------------------------------------------------------------------------------------------
# Batched scoring in a process pool


class _ItemTimeout(BaseException):
  """Raised by the per-item timer; a BaseException so math-verify's `except Exception` can't eat it."""


_SLOTS = None  # Per worker: [item sequence number or -1, start time (monotonic)]; see _init_worker.
_SLOT = -1


def _init_worker(slots, counter) -> None:
  global _SLOTS, _SLOT
  logging.getLogger("math_verify").setLevel(logging.ERROR)
  with counter.get_lock():
    _SLOT = counter.value
    counter.value += 1
  _SLOTS = slots


def _on_alarm(signum, frame):
  raise _ItemTimeout()


def _run_item(seq: int, fn: Callable[[str, str], float], completion: str, gold: str,
              timeout_s: float) -> tuple[str, float, str]:
  """Runs one item in a worker under an interval timer; returns (status, score, detail)."""
  _SLOTS[2 * _SLOT] = seq
  _SLOTS[2 * _SLOT + 1] = time.monotonic()
  start = time.monotonic()
  signal.signal(signal.SIGALRM, _on_alarm)
  signal.setitimer(signal.ITIMER_REAL, timeout_s)
  try:
    score = float(fn(completion, gold))
    # A too-broad `except:` in the scored code could swallow the timer; judge by the clock.
    if time.monotonic() - start > timeout_s:
      return "timeout", 0.0, ""
    return "ok", score, ""
  except _ItemTimeout:
    return "timeout", 0.0, ""
  except Exception as e:  # noqa: BLE001 - any failure of one item scores 0.
    return "error", 0.0, f"{type(e).__name__}: {e}"[:500]
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    _SLOTS[2 * _SLOT] = -1


class MathVerifier:
  """Scores batches of completions against reference answers in a pool of worker processes.

  Each item gets `timeout_s` of wall clock (an interval timer in the worker). A worker that stays
  on one item past `timeout_s + grace_s` (stuck where the timer can't interrupt it) is killed and
  the pool recreated; the other unfinished items are resubmitted. Timed-out and failing items score
  0 and are counted in `self.counters` ('timeouts', 'errors'; also 'items', 'pool_restarts').

  Workers start with the 'spawn' (or 'forkserver') method, never 'fork': forking a process that
  runs JAX threads can deadlock. `item_fn(completion, gold) -> float` must be picklable (a
  module-level function); the default extracts the answer and checks it with `math_equal`.
  """

  def __init__(self, *, num_workers: int | None = None, timeout_s: float = 5.0, grace_s: float = 2.0,
               item_fn: Callable[[str, str], float] = score_completion, mp_context: str = "spawn"):
    if mp_context not in ("spawn", "forkserver"):
      raise ValueError(f"mp_context must be 'spawn' or 'forkserver' (not fork), got {mp_context!r}")
    if timeout_s <= 0:
      raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    self.num_workers = num_workers or min(4, os.cpu_count() or 1)
    self.timeout_s = float(timeout_s)
    self.grace_s = float(grace_s)
    self.item_fn = item_fn
    self._ctx = mp.get_context(mp_context)
    self._pool: cf.ProcessPoolExecutor | None = None
    self._slots = None
    self._seq = 0
    self._suspects: set[int] = set()
    self.counters = {"items": 0, "timeouts": 0, "errors": 0, "pool_restarts": 0}

  def _ensure_pool(self) -> cf.ProcessPoolExecutor:
    if self._pool is None:
      self._slots = self._ctx.Array("d", [-1.0, 0.0] * self.num_workers, lock=False)
      counter = self._ctx.Value("i", 0)
      self._pool = cf.ProcessPoolExecutor(
          self.num_workers, mp_context=self._ctx, initializer=_init_worker,
          initargs=(self._slots, counter))
    return self._pool

  def _kill_pool(self, restart: bool = True) -> None:
    """Kills every worker (they may be stuck) and drops the pool."""
    if self._pool is None:
      return
    # Process.kill() does nothing for an already reaped worker, so a recycled pid is never hit.
    workers = getattr(self._pool, "_processes", None) or {}
    for proc in list(workers.values()):
      proc.kill()
    self._pool.shutdown(wait=True, cancel_futures=True)
    self._pool = None
    self.counters["pool_restarts"] += int(restart)

  def _stuck_item(self) -> int | None:
    """Sequence number of an item some worker has run past timeout + grace, if any."""
    now = time.monotonic()
    for k in range(self.num_workers):
      seq = self._slots[2 * k]
      if seq >= 0 and now - self._slots[2 * k + 1] > self.timeout_s + self.grace_s:
        return int(seq)
    return None

  def score(self, completions: Sequence[str], golds: Sequence[str]) -> np.ndarray:
    """Returns rewards_B (float32 in {0, 1}) for completions[i] against golds[i]."""
    if len(completions) != len(golds):
      raise ValueError(f"completions ({len(completions)}) and golds ({len(golds)}) differ in length")
    rewards_B = np.zeros(len(completions), dtype=np.float32)
    todo = list(range(len(completions)))
    self._suspects = set()
    stalls = 0
    while todo:
      retry = self._run_round(todo, completions, golds, rewards_B)
      stalls = stalls + 1 if len(retry) == len(todo) else 0
      if stalls >= 3:  # The pool breaks without finishing anything (e.g. workers fail to start).
        for idx in retry:
          self._finish(idx, "error", 0.0, "worker pool keeps breaking", rewards_B)
        retry = []
      todo = retry
    self.counters["items"] += len(completions)
    return rewards_B

  def _finish(self, idx: int, status: str, score: float, detail: str, rewards_B: np.ndarray) -> None:
    if status == "ok":
      rewards_B[idx] = score
      return
    key = "timeouts" if status == "timeout" else "errors"
    self.counters[key] += 1
    log.warning("math verifier: item %d %s%s; scored 0", idx, status, f" ({detail})" if detail else "")

  def _run_round(self, todo: list[int], completions, golds, rewards_B: np.ndarray) -> list[int]:
    """Submits `todo`; returns the items to run again after the pool had to be killed."""
    pool = self._ensure_pool()
    pending: dict[cf.Future, tuple[int, int]] = {}
    for idx in todo:
      self._seq += 1
      fut = pool.submit(_run_item, self._seq, self.item_fn, completions[idx], golds[idx], self.timeout_s)
      pending[fut] = (self._seq, idx)
    while pending:
      done, _ = cf.wait(pending, timeout=min(0.25, self.timeout_s), return_when=cf.FIRST_COMPLETED)
      broken = False
      for fut in done:
        exc = fut.exception()
        if isinstance(exc, cf.process.BrokenProcessPool):
          broken = True
          continue
        _, idx = pending.pop(fut)
        if exc is not None:  # E.g. item_fn or its arguments could not be pickled.
          self._finish(idx, "error", 0.0, f"{type(exc).__name__}: {exc}"[:500], rewards_B)
        else:
          self._finish(idx, *fut.result(), rewards_B)
      stuck = self._stuck_item()
      if not broken and stuck is None:
        continue
      in_flight = {int(self._slots[2 * k]) for k in range(self.num_workers) if self._slots[2 * k] >= 0}
      self._kill_pool()
      retry = []
      for seq, idx in pending.values():
        if seq == stuck:
          self._finish(idx, "timeout", 0.0, f"worker killed after {self.timeout_s + self.grace_s:.1f}s",
                       rewards_B)
        elif stuck is None and seq in in_flight and idx in self._suspects:
          # In flight at two pool breaks: most likely the item that kills its worker.
          self._finish(idx, "error", 0.0, "worker process died", rewards_B)
        else:
          if stuck is None and seq in in_flight:
            self._suspects.add(idx)
          retry.append(idx)
      return retry
    return []

  def close(self) -> None:
    """Shuts the worker pool down (killing workers that are still busy)."""
    self._kill_pool(restart=False)

  def __enter__(self) -> MathVerifier:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
