"""Arithmetic task families: exact multi-digit arithmetic, and SCoRe's bugged 3-digit addition.

`arithmetic` is the workhorse RL task (GRPO, SCoRe, HeRL, RLAVR): "157+165=" -> "322", optionally
with the answer written least-significant digit first ("223"), which makes addition learnable left to
right for small models.

`arithmetic_bugged` is the SCoRe CPU toy (papers/score.md §11): 3-digit additions where a
deterministic ~40% subset of inputs gets a "buggy" answer with the carry from the units into the
tens digit dropped (157+165: true 322, buggy 312). The SFT warm start uses `is_bug_subset` and
`buggy_sum` to write turn-1 demonstrations that are wrong exactly on that subset.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from selfrl_jax.data.records import make_record
from selfrl_jax.data.tasks import Task, TaskConfig, register_task

OPERATORS = ("+", "-", "*")


def format_number(value: int, reverse: bool) -> str:
  """Decimal digits of `value`; with `reverse`, least-significant digit first and sign in front."""
  digits = str(abs(value))
  if reverse:
    digits = digits[::-1]
  return ("-" if value < 0 else "") + digits


def parse_number(text: str, reverse: bool) -> int | None:
  """Inverse of `format_number`; None when `text` is not a well-formed number."""
  text = text.strip()
  sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text)
  if not digits.isdigit() or not digits.isascii():
    return None
  return sign * int(digits[::-1] if reverse else digits)


def _sample_operand(rng: np.random.Generator, num_digits: int) -> int:
  # Exactly `num_digits` digits (1 digit includes 0), so the problem size is what the config says.
  low = 0 if num_digits == 1 else 10 ** (num_digits - 1)
  return int(rng.integers(low, 10**num_digits))


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig(TaskConfig):
  """Attributes (beyond seed/splits):
    num_digits: most digits per operand.
    min_digits: fewest digits per operand (None: = num_digits); each operand draws its own count.
    operators: subset of "+", "-", "*", drawn uniformly.
    reverse_answer: write answers least-significant digit first.
    allow_negative: if False, subtraction operands are ordered so that a - b >= 0.
    prompt_template: format string with {a}, {op}, {b}.
  """
  num_digits: int = 3
  min_digits: int | None = None
  operators: tuple[str, ...] = ("+",)
  reverse_answer: bool = False
  allow_negative: bool = False
  prompt_template: str = "{a}{op}{b}="

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "operators", tuple(self.operators))  # lists from configs -> hashable


@register_task
class ArithmeticTask(Task):
  """Exact integer arithmetic; record answer = the result, meta = operands, operator, result."""

  name = "arithmetic"
  version = "1.0.0"
  config_cls = ArithmeticConfig

  def validate(self) -> None:
    c = self.config
    if c.num_digits < 1:
      raise ValueError(f"arithmetic: num_digits must be >= 1, got {c.num_digits}.")
    if c.min_digits is not None and not 1 <= c.min_digits <= c.num_digits:
      raise ValueError(f"arithmetic: min_digits must be in [1, num_digits={c.num_digits}], got {c.min_digits}.")
    bad = [op for op in c.operators if op not in OPERATORS]
    if not c.operators or bad:
      raise ValueError(f"arithmetic: operators must be a non-empty subset of {OPERATORS}, got {c.operators!r}.")

  def generate(self, rng: np.random.Generator, index: int) -> dict[str, str]:
    c = self.config
    lo = c.num_digits if c.min_digits is None else c.min_digits
    a = _sample_operand(rng, int(rng.integers(lo, c.num_digits + 1)))
    b = _sample_operand(rng, int(rng.integers(lo, c.num_digits + 1)))
    op = c.operators[int(rng.integers(len(c.operators)))]
    if op == "-" and not c.allow_negative and a < b:
      a, b = b, a
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    prompt = c.prompt_template.format(a=a, op=op, b=b)
    meta = {"a": a, "b": b, "op": op, "result": result, "reverse_answer": c.reverse_answer, "index": index}
    return make_record(prompt, format_number(result, c.reverse_answer), meta)


# --- SCoRe toy: bugged 3-digit addition ---------------------------------------------------------


def _leading_digit(x: int) -> int:
  return int(str(abs(x))[0])


def units_carry(a: int, b: int) -> bool:
  """Whether a + b carries from the units into the tens digit."""
  return a % 10 + b % 10 >= 10


def is_bug_subset(a: int, b: int) -> bool:
  """Deterministic ~40% subset of additions on which the toy base model answers `buggy_sum`.

  Rule (a digit hash, so a small model can learn it and greedy decoding errs on held-out problems
  too): a + b carries from the units, and (leading digit of a + leading digit of b) % 9 != 0.
  For 3-digit operands P = 45/100 * 8/9 = 0.40 exactly; every member has buggy_sum != a + b.
  """
  return units_carry(a, b) and (_leading_digit(a) + _leading_digit(b)) % 9 != 0


def buggy_sum(a: int, b: int) -> int:
  """a + b with the carry from the units into the tens digit dropped (157+165 -> 312, not 322)."""
  return a + b - 10 * units_carry(a, b)


@dataclasses.dataclass(frozen=True)
class BuggedAdditionConfig(TaskConfig):
  """Attributes (beyond seed/splits):
    num_digits: digits per operand (3 in the SCoRe toy).
    reverse_answer: answers least-significant digit first (the toy's convention).
    prompt_template: format string with {a}, {b}.
  """
  num_digits: int = 3
  reverse_answer: bool = True
  prompt_template: str = "{a}+{b}="


@register_task
class BuggedAdditionTask(Task):
  """Addition records carrying both the true `answer` and the base model's `buggy_answer`."""

  name = "arithmetic_bugged"
  version = "1.0.0"
  config_cls = BuggedAdditionConfig
  extra_fields = ("buggy_answer",)

  def validate(self) -> None:
    if self.config.num_digits < 1:
      raise ValueError(f"arithmetic_bugged: num_digits must be >= 1, got {self.config.num_digits}.")

  def generate(self, rng: np.random.Generator, index: int) -> dict[str, str]:
    c = self.config
    a, b = _sample_operand(rng, c.num_digits), _sample_operand(rng, c.num_digits)
    bug = is_bug_subset(a, b)
    wrong = buggy_sum(a, b) if bug else a + b
    meta = {"a": a, "b": b, "op": "+", "result": a + b, "buggy_result": wrong, "is_bug": bug,
            "reverse_answer": c.reverse_answer, "index": index}
    return make_record(c.prompt_template.format(a=a, b=b), format_number(a + b, c.reverse_answer), meta,
                       buggy_answer=format_number(wrong, c.reverse_answer))
