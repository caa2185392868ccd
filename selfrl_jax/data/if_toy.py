"""SSRL-IF's synthetic constraint world (ssrl_if.md §9.6): multi-constraint instructions, their ladders,
a hidden oracle for the soft constraints, and a noisy teacher for the warm start.

    task = make_task("if_toy", levels="12345", splits={"train": 5000, "valid": 200, "test": 200})
    rec = task.record("train", 0)   # {"prompt": "k:+a <6 C ^d !=", "answer": "dabqf", "meta": ...}

A response is a string of at most 10 "words", one letter each from `WORDS` (a-t). An instruction is a
topic and 5 mutually compatible constraints, written after the topic:

| text | constraint | kind |
|---|---|---|
| `+w` / `-w` | word w appears / does not appear | hard |
| `<n` / `>n` | at most / at least n words | hard |
| `^w` / `$w` | starts / ends with w | hard |
| `!` | no word twice in a row | hard |
| `C` | calm: >= 60% of the words from a hidden set S1 | soft |
| `L` | lively: >= 60% from a hidden set S2 (disjoint from S1) | soft |
| `F` | formal: no word from a hidden "slang" set S3 | soft |

Hard constraints are checked by rules the reward may use; soft ones only by the hidden oracle (the
sets are never shown to the reward model, which must learn them from ladder pseudo-labels).
Compatibility is guaranteed by construction: a witness response is drawn first (with a soft style),
and every constraint is one the witness satisfies.

The ladder of an instruction is x_0 (topic only), x_1 (first constraint), ..., x_5 (all five); record
`level` k holds x_k. Training records draw k from `levels` ("12345": the curriculum, the released
mixture of every level; "5": full instructions only); valid and test records are always full
instructions (x_5). All levels of one instruction land in the same split.

The record's `answer` is the noisy teacher of the warm start (§9.6): for x_0 a random response; for
x_1 a response satisfying c_1 with probability `teacher_p` (else random); for x_k, k >= 2, the witness
with probability `teacher_p` (else random).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from selfrl_jax.data.records import make_record, record_meta
from selfrl_jax.data.ladders import LadderConfig, LadderTask
from selfrl_jax.data.tasks import register_task

WORDS = "abcdefghijklmnopqrst"
MAX_WORDS = 10
_HIDDEN = [str(w) for w in np.random.default_rng(2025).permutation(list(WORDS))]
CALM_WORDS, LIVELY_WORDS, SLANG_WORDS = frozenset(_HIDDEN[:6]), frozenset(_HIDDEN[6:12]), frozenset(_HIDDEN[12:16])
SOFT = ("C", "L", "F")
HARD_TYPES = ("+", "-", "<", ">", "^", "$", "!")


def is_soft(constraint: str) -> bool:
  return constraint in SOFT


def holds(constraint: str, response: str) -> bool:
  """The oracle: whether `response` (letters) satisfies `constraint` (hard rule or hidden soft rule).

  A response with a character outside `WORDS` or more than MAX_WORDS words satisfies nothing.
  """
  if not response or len(response) > MAX_WORDS or any(w not in WORDS for w in response):
    return False
  kind, arg = constraint[0], constraint[1:]
  if kind == "+":
    return arg in response
  if kind == "-":
    return arg not in response
  if kind == "<":
    return len(response) <= int(arg)
  if kind == ">":
    return len(response) >= int(arg)
  if kind == "^":
    return response[0] == arg
  if kind == "$":
    return response[-1] == arg
  if kind == "!":
    return all(a != b for a, b in zip(response, response[1:]))
  if kind == "C":
    return sum(w in CALM_WORDS for w in response) >= 0.6 * len(response)
  if kind == "L":
    return sum(w in LIVELY_WORDS for w in response) >= 0.6 * len(response)
  if kind == "F":
    return not any(w in SLANG_WORDS for w in response)
  raise ValueError(f"unknown constraint {constraint!r}")


def render_prompt(topic: str, constraints: Sequence[str]) -> str:
  return f"{topic}:{' '.join(constraints)}="


def _random_response(rng: np.random.Generator) -> str:
  return "".join(rng.choice(list(WORDS), size=int(rng.integers(1, MAX_WORDS + 1))))


def _styled_witness(rng: np.random.Generator, style: str | None, formal: bool) -> str:
  """A response of 3-8 words in a soft style (C, L or none), avoiding slang when `formal`."""
  n = int(rng.integers(3, 9))
  pool = [w for w in WORDS if not (formal and w in SLANG_WORDS)]
  styled = {"C": sorted(CALM_WORDS), "L": sorted(LIVELY_WORDS)}.get(style, pool)
  k = int(np.ceil(0.6 * n)) if style else 0
  words = list(rng.choice(styled, size=k)) + list(rng.choice(pool, size=n - k))
  return "".join(rng.permutation(words))


def _hard_candidates(witness: str) -> list[str]:
  """Every hard constraint the witness satisfies (one per type and argument)."""
  out = [f"+{w}" for w in sorted(set(witness))] + [f"-{w}" for w in WORDS if w not in witness]
  out += [f"<{n}" for n in range(max(len(witness), 3), 9)] + [f">{n}" for n in range(2, min(len(witness), 6) + 1)]
  out += [f"^{witness[0]}", f"${witness[-1]}"]
  return out + (["!"] if holds("!", witness) else [])


def sample_instruction(rng: np.random.Generator, num_constraints: int = 5) -> tuple[str, list[str], str]:
  """(topic, constraints, witness): constraints of distinct types, 1-2 soft, all true of the witness."""
  style = str(rng.choice(["C", "L", ""]))
  formal = bool(rng.random() < 0.5) or not style
  witness = _styled_witness(rng, style or None, formal)
  soft = [c for c in ((style,) if style else ()) + (("F",) if formal else ()) if holds(c, witness)]
  soft = list(rng.permutation(soft))[:int(rng.integers(1, 3))]
  by_type: dict[str, list[str]] = {}
  for c in _hard_candidates(witness):
    by_type.setdefault(c[0], []).append(c)
  types = list(rng.permutation(sorted(by_type)))[:num_constraints - len(soft)]
  hard = [str(rng.choice(by_type[t])) for t in types]
  constraints = [str(c) for c in rng.permutation(hard + soft)]
  return str(rng.choice(list(WORDS))), constraints, witness


def sample_satisfying(constraint: str, rng: np.random.Generator, tries: int = 10_000) -> str:
  """A random response satisfying one constraint (rejection from styled proposals)."""
  for _ in range(tries):
    style = constraint if constraint in ("C", "L") else None
    proposal = _styled_witness(rng, style, constraint == "F") if rng.random() < 0.5 else _random_response(rng)
    if holds(constraint, proposal):
      return proposal
  raise RuntimeError(f"no response satisfying {constraint!r} found in {tries} draws")


@dataclasses.dataclass(frozen=True)
class IFToyConfig(LadderConfig):
  """Attributes: num_constraints (per full instruction), levels (training ladder levels, digits
  0..num_constraints), teacher_p (the warm-start teacher's success probability)."""
  teacher_p: float = 0.7


@register_task
class IFToyTask(LadderTask):
  name = "if_toy"
  version = "1.1.0"
  config_cls = IFToyConfig
  min_level = 0

  def render(self, meta: Mapping[str, Any], k: int) -> str:
    return render_prompt(meta["topic"], meta["instruction"][:k])

  def held_out_answer(self, meta: Mapping[str, Any]) -> str:
    return meta["witness"]

  def validate(self) -> None:
    super().validate()
    if not 0.0 <= self.config.teacher_p <= 1.0:
      raise ValueError(f"if_toy: teacher_p={self.config.teacher_p} must be in [0, 1]")

  def generate(self, rng: np.random.Generator, index: int) -> dict[str, str]:
    del index
    topic, constraints, witness = sample_instruction(rng, self.config.num_constraints)
    level, own = self.draw_level(rng)  # the level and the teacher: config-dependent, their own stream
    teacher = _random_response(own)
    if level >= 1 and own.random() < self.config.teacher_p:
      teacher = sample_satisfying(constraints[0], own) if level == 1 else witness
    meta = {"topic": topic, "instruction": constraints, "level": level, "witness": witness}
    return make_record(self.render(meta, level), teacher, meta)


def constraints_of(record: Mapping[str, Any]) -> list[str]:
  """The constraints the record's prompt carries (its ladder level's prefix of the instruction)."""
  meta = record_meta(record)
  return list(meta["instruction"][:meta["level"]])


def ladder_prompts(record: Mapping[str, Any]) -> list[str]:
  """x_0 ... x_n of the record's instruction (§2.2)."""
  meta = record_meta(record)
  return [render_prompt(meta["topic"], meta["instruction"][:k]) for k in range(len(meta["instruction"]) + 1)]
