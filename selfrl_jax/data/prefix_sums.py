"""Backward prefix sums: a toy where a second attempt can know more than the first.

Prompt `d1…dn=`; the answer is written y_n … y_1 with y_i = (d1 + … + di) mod 10. The first written
digit needs the whole digit sum mod 10; every later one is local (y_{i-1} = y_i - d_i mod 10). A model
that gets the first digit wrong but the local steps right writes the answer shifted by one constant
offset c (every digit + c mod 10), and the attempt's last digit must equal d1: an exact check that a
second turn, reading the first attempt, can use to find c and write the right answer. Short items
(n = 3, 4) are learnable in one pass; long ones (n = 9, 10) are meant not to be (the SCoRe second-pass
toy, configs/score/README.md, checks this as precondition P1 before any claim).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from selfrl_jax.data.records import make_record, normalize_record, record_meta
from selfrl_jax.data.tasks import Task, TaskConfig, register_task


def backward_prefix_sums(digits: list[int]) -> str:
  """y_n … y_1 with y_i = (d1 + … + di) mod 10, as a digit string."""
  sums = np.cumsum(np.asarray(digits, np.int64)) % 10
  return "".join(str(int(s)) for s in sums[::-1])


def offset_attempt(answer: str, offset: int) -> str:
  """Every digit of `answer` shifted by `offset` mod 10: the wrong attempt of a right local rule."""
  return "".join(str((int(ch) + offset) % 10) for ch in answer)


@dataclasses.dataclass(frozen=True)
class PrefixSumsConfig(TaskConfig):
  """Attributes (beyond seed/splits):
    lengths: the item lengths n, drawn uniformly per record (the reported length buckets).
    reverse_prompt: write the digits d_n … d_1, in the order the answer's local steps read them
      (y_{i-1} = y_i - d_i): answer digit j then reads prompt digit j, a fixed distance back.
    prompt_template: format string with {digits}.
  """
  lengths: tuple[int, ...] = (3, 4, 9, 10)
  reverse_prompt: bool = False
  prompt_template: str = "{digits}="

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))


@register_task
class PrefixSumsTask(Task):
  """Records: prompt `d1…dn=`, answer y_n … y_1; meta holds the digits and n."""

  name = "prefix_sums_backward"
  version = "1.0.0"
  config_cls = PrefixSumsConfig

  def validate(self) -> None:
    if not self.config.lengths or min(self.config.lengths) < 1:
      raise ValueError(f"prefix_sums_backward: lengths must be a non-empty tuple of ints >= 1, "
                       f"got {self.config.lengths!r}.")

  def generate(self, rng: np.random.Generator, index: int) -> dict[str, str]:
    c = self.config
    n = c.lengths[int(rng.integers(len(c.lengths)))]
    digits = [int(d) for d in rng.integers(0, 10, size=n)]
    meta = {"digits": digits, "n": n, "index": index}
    shown = digits[::-1] if c.reverse_prompt else digits
    return make_record(c.prompt_template.format(digits="".join(map(str, shown))),
                       backward_prefix_sums(digits), meta)


def first_attempts(records, rng: np.random.Generator, right_prob: float) -> tuple[list[str], np.ndarray]:
  """The base model's turn-1 demonstrations: the answer with probability `right_prob`, else the answer
  shifted by an offset drawn uniformly from 1..9. Returns (texts, offset_P) with offset 0 when right."""
  if not 0.0 <= right_prob <= 1.0:
    raise ValueError(f"first_attempts: right_prob must be in [0, 1], got {right_prob}.")
  right = rng.random(len(records)) < right_prob
  offsets = np.where(right, 0, rng.integers(1, 10, size=len(records)))
  texts = []
  for row, raw in enumerate(records):
    rec = normalize_record(raw)
    if "digits" not in record_meta(rec):
      raise KeyError(f"first_attempts: record {row} is not a prefix_sums_backward record (meta has no "
                     "'digits'); use task.name='prefix_sums_backward'.")
    texts.append(offset_attempt(rec["answer"], int(offsets[row])))
  return texts, offsets
