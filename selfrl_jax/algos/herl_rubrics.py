"""HeRL's rubrics (herl.md §2 eq. 1): per-item binary judgements m_k(x, y) with weights w_k.

A rubric looks the record behind a row up by `example_id` and judges decoded responses on the host:

    rubric.num_items                                   # K, static
    rubric.judge(texts, example_ids) -> (met_BxK, valid_BxK, weights_BxK)    numpy float / bool / float
    rubric.descriptions(example_id) -> [str] * (#valid items)               what the HE prompt lists
    rubric.counters                                    # checker errors / time-outs (host metrics)

- `digits` (the CPU toy, §10): one item per answer digit position (the response's i-th character
  equals the reference's, a missing character on both sides counting as equal) plus "correct length";
  K = answer width + 1, unit weights, so R is the fraction of items met and R = 1 iff exact match.
- `ifeval` (instruction following): one item per constraint of the ladder prompt, judged by the
  IFEval checkers in a worker pool under a time limit (a checker that raises or hangs scores 0 and is
  counted, as the released reward scores a time-out 0); unit weights (the released dense score).
  Soft constraints have no checker: they are invalid items, counted in `soft_items`.
  Medical rubrics need an LLM judge (gpt-4o-mini in the released run): out of scope offline.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from selfrl_jax.data.records import normalize_record


def character_items(got: str, ref: str, width: int) -> list[bool]:
  """The digits rubric's verdicts: character i of `got` equals that of `ref` (missing on both sides
  counts as equal) for i < width, then "the length is right"."""
  at = lambda text, i: text[i] if i < len(text) else None  # noqa: E731
  return [at(got, i) == at(ref, i) for i in range(width)] + [len(got) == len(ref)]


@dataclasses.dataclass
class DigitRubric:
  """Per-digit rubric of an arithmetic answer (reference = the record's answer string)."""

  records: Sequence[Any]
  width: int  # answer characters judged; K = width + 1

  def __post_init__(self):
    self.counters: dict[str, int] = {}

  @property
  def num_items(self) -> int:
    return self.width + 1

  def reference(self, example_id: int) -> str:
    return normalize_record(self.records[int(example_id)])["answer"]

  def descriptions(self, example_id: int) -> list[str]:
    return [f"character {i + 1} is right" for i in range(self.width)] + ["the length is right"]

  def judge(self, texts: Sequence[str], example_ids: Sequence[int]):
    b, k = len(texts), self.num_items
    met = np.zeros((b, k), np.float32)
    for row, (text, e) in enumerate(zip(texts, example_ids)):
      met[row] = character_items(text.strip(), self.reference(e), self.width)
    return met, np.ones((b, k), bool), np.ones((b, k), np.float32)


@dataclasses.dataclass
class IFEvalRubric:
  """One item per hard constraint of an instruction-ladder prompt (the SSRL-IF ladder records)."""

  records: Sequence[Any]
  num_constraints: int = 5
  timeout_s: float = 5.0

  def __post_init__(self):
    from selfrl_jax.algos.ssrl_if_worlds import IFEvalWorld  # pylint: disable=import-outside-toplevel
    self.world = IFEvalWorld(self.records, self.num_constraints, self.timeout_s)
    self.soft_items = 0

  @property
  def num_items(self) -> int:
    return self.num_constraints

  @property
  def counters(self) -> dict[str, int]:
    return {**self.world.counters(), "soft_items": self.soft_items}

  def _constraints(self, example_id: int):
    return [c for c in self.world.constraints(example_id)[:self.num_constraints] if not c.answer]

  def descriptions(self, example_id: int) -> list[str]:
    return [c.text for c in self._constraints(example_id) if not c.soft]

  def judge(self, texts: Sequence[str], example_ids: Sequence[int]):
    b, k = len(texts), self.num_items
    per_row = [self._constraints(e) for e in example_ids]
    rule, _ = self.world.verdicts(list(texts), per_row)
    met, valid = np.zeros((b, k), np.float32), np.zeros((b, k), bool)
    for row, (cs, verdicts) in enumerate(zip(per_row, rule)):
      hard = [j for j, c in enumerate(cs) if not c.soft]
      self.soft_items += len(cs) - len(hard)
      met[row, :len(hard)] = [verdicts[j] for j in hard]
      valid[row, :len(hard)] = True
    return met, valid, np.ones((b, k), np.float32)


RUBRICS = ("digits", "ifeval")


def build_rubric(name: str, cfg, records):
  """The rubric `herl.rubric` names for the split `records`.

  Raises:
    ValueError: unknown name.
  """
  if name == "digits":
    return DigitRubric(records, width=cfg.rl.max_answer_len - 1)
  if name == "ifeval":
    return IFEvalRubric(records, cfg.task.params.get("num_constraints", 5))
  raise ValueError(f"herl.rubric must be one of {RUBRICS}, got {name!r}.")
