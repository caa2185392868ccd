"""Math answers: extraction on real GSM8K / MATH-500 rows, equivalence vs math-verify, pooled scoring."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
from math_verify import parse, verify

from selfrl_jax.rewards.math_answers import (MathVerifier, extract_answer, extract_boxed,
                                             extract_final_answer, extract_gsm8k, math_equal,
                                             score_completion)

# (prediction, gold): strings math-verify can parse as they stand, so its direct verdict is the
# reference for math_equal.
TABLE = [
    ("1/2", "0.5"), ("0.5", "1/2"), ("$\\frac{1}{2}$", "$\\dfrac12$"), ("$\\dfrac12$", "$0.5$"),
    ("\\boxed{\\frac{1}{2}}", "$\\frac12$"), ("\\boxed{3}", "3"), ("5 cm", "5"),
    ("$5\\text{ cm}$", "$5$"), ("$\\{1,2\\}$", "$\\{2,1\\}$"), ("$\\{1,2\\}$", "$\\{1,3\\}$"),
    ("$(0,1]$", "$(0,1]$"), ("$(0,1]$", "$[0,1]$"), ("$(0,1]$", "$(0,1)$"), ("$50\\%$", "$0.5$"),
    ("1,000", "1000"), ("$1{,}000$", "1000"), ("12,345", "12345"), ("-3", "-3"), ("$-3$", "3"),
    ("$-\\frac{3}{4}$", "-0.75"), ("7", "8"), ("$x=5$", "5"), ("$\\sqrt{200}$", "$10\\sqrt{2}$"),
    ("$\\pi$", "3.14159"), ("$\\frac{\\sqrt{3}}{2}$", "$\\sin(\\pi/3)$"), ("$2^{10}$", "1024"),
    ("$\\left( 3, \\frac{\\pi}{2} \\right)$", "$(3, \\pi/2)$"), ("$x^2+2x+1$", "$(x+1)^2$"),
    ("$\\text{(C)}$", "$\\text{(C)}$"), ("$2$", "two"), ("$\\$18$", "18"), ("$18.00$", "$18$"),
]

# Checked by hand; bare LaTeX (no $) included: math_equal wraps it so math-verify reads it as LaTeX.
HAND = [
    ("1/2", "0.5", True), ("\\frac{1}{2}", "\\dfrac12", True), ("\\dfrac12", "0.5", True),
    ("{1,2}", "\\{2,1\\}", True), ("(0,1]", "(0, 1]", True), ("(0, 1]", "1", False),
    ("(0,1]", "[0,1]", False), ("50%", "0.5", True), ("5 cm", "5", True), ("1,000", "1000", True),
    ("-3", "3", False), ("7", "8", False), ("\\$32,\\!348", "32348", True), (None, "1", False),
    ("", "0", False),
]


@pytest.mark.parametrize("pred,gold", TABLE)
def test_math_equal_matches_math_verify(pred, gold):
  # Main thread, default settings (signal-based timeouts on): math-verify's own verdict.
  assert math_equal(pred, gold) == verify(parse(gold), parse(pred))


@pytest.mark.parametrize("pred,gold,expected", HAND)
def test_math_equal_by_hand(pred, gold, expected):
  assert math_equal(pred, gold) is expected


def test_extraction_formats():
  assert extract_boxed("so \\boxed{\\frac{a}{b^{2}}} and then \\boxed{\\{1,2\\}}.") == "\\{1,2\\}"
  assert extract_boxed("\\fbox{42} done") == "42"
  assert extract_boxed("The answer is \\boxed 5.") == "5"
  assert extract_boxed("no box {here}") is None
  text = ("Step 1 ... $x = 3.5$\nFinal Answer: The final answer is $\\frac{7}{2}$. "
          "I hope it is correct.")
  assert extract_final_answer(text) == "\\frac{7}{2}"
  assert extract_answer(text) == "\\frac{7}{2}"
  two = "Final Answer: The final answer is $3$. I hope it is correct.\n" * 2 + (
      "Final Answer: The final answer is $3.25$. I hope it is correct.")
  assert extract_answer(two, "final_answer") == "3.25"
  assert extract_final_answer("Final Answer: The final answer is $\\boxed{12}$.") == "12"  # truncated
  assert extract_answer("It is 1,234 apples, or 5.5 boxes") == "5.5"
  assert extract_answer("total: 1,234") == "1234"
  assert extract_answer("no numbers") is None
  assert extract_gsm8k("... so $1,450,000.\n#### $1,450,000") == "1450000"
  with pytest.raises(ValueError, match="last_number"):
    extract_answer("x", style="bogus")


# (completion, gold, score): a marker with no answer in it must not hide a real one (issue 14.2).
MARKER_CASES = [
    ("Thus, the final answer is:\n\\[\n\\boxed{12}\n\\]", "12", 1.0),
    ("Thus, the final answer is:\n\n\\[\\boxed{12}\\]", "12", 1.0),
    ("The final answer is:\n12", "12", 1.0),
    ("The final answer is tricky here. Adding up, we get \\boxed{7}.", "7", 1.0),
    ("The final answer is tricky here: 3 + 4 = 7", "7", 1.0),
    ("First \\boxed{3}; on reflection the final answer is $5$. I hope it is correct.", "5", 1.0),
    ("The final answer is $5$. I hope it is correct. Wait, recheck: \\boxed{6}", "6", 1.0),
    ("So \\boxed{4}, and the template \\boxed{} is left empty", "4", 1.0),
    ("#### \nthe answer is 9", "9", 1.0),
    ("The final answer is 8, not 12", "8", 1.0),
]


@pytest.mark.parametrize("completion,gold,score", MARKER_CASES)
def test_marker_without_answer_never_hides_a_later_one(completion, gold, score):
  assert score_completion(completion, gold) == score, extract_answer(completion)


def test_gsm8k_real_rows(shared_data):
  rows = [json.loads(line) for line in open(shared_data / "gsm8k" / "test.jsonl")]
  answers = [extract_gsm8k(r["answer"]) for r in rows]
  assert all(a is not None and a.lstrip("-").isdigit() for a in answers)
  # Rows checked by hand: first, second, thousands separator (146), negative (489).
  assert (answers[0], answers[1], answers[146], answers[489]) == ("18", "3", "2125", "-10")
  assert score_completion("Janet makes 9 * 2 = $18.\nFinal Answer: The final answer is $18$. "
                          "I hope it is correct.", rows[0]["answer"]) == 1.0
  assert score_completion("So the total is \\boxed{2,125}.", rows[146]["answer"]) == 1.0
  assert score_completion("So the total is \\boxed{2,126}.", rows[146]["answer"]) == 0.0


def test_math500_boxed_solutions_match_answers(shared_data):
  rows = [json.loads(line) for line in open(shared_data / "math500" / "test.jsonl")]
  assert len(rows) == 500
  hits = sum(math_equal(extract_boxed(r["solution"]), r["answer"]) for r in rows)
  print(f"MATH-500: boxed answer of the solution math_equal to `answer` in {hits}/500 rows")
  assert hits >= 475  # 500/500 when written.


def _choose(completion: str, gold: str) -> float:
  """Item function for the pool: sleeps, hangs past the timer, or scores normally."""
  if completion == "SLOW":
    time.sleep(60)
  if completion == "HANG":  # Ignores the per-item timer: only the host-side watchdog helps.
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(60)
  return score_completion(completion, gold)


def test_math_verifier_batch_and_timeouts(shared_data):
  rows = [json.loads(line) for line in open(shared_data / "math500" / "test.jsonl")][:6]
  completions = [f"Final Answer: The final answer is ${p}$. I hope it is correct." for p, _ in TABLE]
  golds = [g for _, g in TABLE]
  completions += [r["solution"] for r in rows] + [MARKER_CASES[0][0], "I think \\boxed{-1}", "no answer at all"]
  golds += [r["answer"] for r in rows] + ["12", "-1", "3"]
  expected = np.array([score_completion(c, g) for c, g in zip(completions, golds)], np.float32)
  assert expected[:4].tolist() == [1, 1, 1, 1] and expected[-3:].tolist() == [1, 1, 0]
  assert expected[len(TABLE):len(TABLE) + 6].all()

  with MathVerifier(num_workers=2, timeout_s=1.0, grace_s=1.0, item_fn=_choose) as verifier:
    got = verifier.score(completions, golds)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert verifier.counters["timeouts"] == 0 and verifier.counters["errors"] == 0

    start = time.monotonic()
    got = verifier.score(["SLOW", "#### 4", "HANG", "\\boxed{5}", "#### 4"], ["1", "4", "1", "5", "5"])
    elapsed = time.monotonic() - start
    np.testing.assert_array_equal(got, [0, 1, 0, 1, 0])
    assert verifier.counters["timeouts"] == 2
    assert verifier.counters["pool_restarts"] == 1  # Only the hung worker forced a restart.
    assert elapsed < 10, elapsed
    # The recreated pool keeps working.
    np.testing.assert_array_equal(verifier.score(["\\boxed{0.5}"], ["1/2"]), [1.0])
    assert verifier.counters["items"] == len(completions) + 6
