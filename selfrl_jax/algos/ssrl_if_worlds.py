"""Where SSRL-IF's constraints come from and how they are checked (`ssrl_if.world`).

A world turns a record into its constraints and checks responses against them on the host:

    world.constraints(example_id) -> [WorldConstraint(text, soft, check)]   # the prompt's constraints
    world.ladder(record) -> ([x_0, ..., x_n], [c_1, ..., c_n]) | None        # for the pseudo-labels
    world.verdicts(answers, constraints_per_row) -> (rule_BxK, oracle_BxK)  # lists of floats
    world.holds(constraint, answer) -> bool                                 # the oracle (has_oracle)

- `toy` (`data.if_toy`): rules for hard constraints, a hidden oracle for every constraint; the
  classifier reads `{constraint}|{response}` in the character vocabulary.
- `ifeval` (`data.if_ladder`): IFEval checkers for hard constraints (`rewards.instruction_following`,
  in a worker pool with a time limit: a checker that raises or hangs scores 0 and is counted); soft
  constraints have no oracle (their only judge is the classifier). The classifier reads the released
  template: an instruction to judge, then the response, then the constraint (§3.3). Math rows (the
  general-reasoning mix, `if_ladder` `math_frac`) have one `answer` constraint: math-verify on the
  last `\\boxed{}` against the reference, always by rule (the released `light` route), no ladder.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

from selfrl_jax.data import if_ladder, if_toy
from selfrl_jax.data.records import normalize_record, record_meta

TOY_TEMPLATE = "{constraint}|{response}"
# §3.3: the released server's input, one string; only the response and the constraint text.
IFEVAL_TEMPLATE = ("Judge whether the response follows the constraint. Output 1 if it does and 0 if it does not.\n"
                   "Response: {response}. Constraint: {constraint}")


@dataclasses.dataclass(frozen=True)
class WorldConstraint:
  """text: what the prompt says and the classifier reads; soft: judged by the classifier (no rule);
  check: what the world's rule checker needs (the toy: the text; IFEval: a `Constraint`);
  answer: a task answer (math rows), scored by its rule whatever `use_rule_reward` says and never
  shown to the classifier (`check` is the reference answer)."""
  text: str
  soft: bool
  check: Any = None
  answer: bool = False


@dataclasses.dataclass(frozen=True)
class ToyWorld:
  records: Sequence[Any]
  num_constraints: int = 5
  has_oracle = True
  rm_template = TOY_TEMPLATE

  @staticmethod
  def _wrap(texts) -> list[WorldConstraint]:
    return [WorldConstraint(c, if_toy.is_soft(c), c) for c in texts]

  def constraints(self, example_id: int) -> list[WorldConstraint]:
    return self._wrap(if_toy.constraints_of(self.records[int(example_id)]))

  def ladder(self, record) -> tuple[list[str], list[WorldConstraint]]:
    return if_toy.ladder_prompts(record), self._wrap(record_meta(record)["instruction"])

  def holds(self, constraint: WorldConstraint, answer: str) -> bool:
    return if_toy.holds(constraint.check, answer)

  def verdicts(self, answers: Sequence[str | None], constraints: Sequence[Sequence[WorldConstraint]]):
    """(rule, oracle) per row and constraint: rule is 0 for soft constraints."""
    oracle = [[float(a is not None and self.holds(c, a)) for c in cs] for a, cs in zip(answers, constraints)]
    rule = [[0.0 if c.soft else v for c, v in zip(cs, row)] for cs, row in zip(constraints, oracle)]
    return rule, oracle


@dataclasses.dataclass(frozen=True)
class IFEvalWorld:
  records: Sequence[Any]
  num_constraints: int = 5
  timeout_s: float = 5.0
  has_oracle = False
  rm_template = IFEVAL_TEMPLATE

  @staticmethod
  def _wrap(meta) -> list[WorldConstraint]:
    from selfrl_jax.rewards.instruction_following import Constraint  # pylint: disable=import-outside-toplevel

    def wrap(instruction_id, kwargs, text, kind):
      if kind == "math":
        return WorldConstraint("", False, text, answer=True)
      return WorldConstraint(text, kind == "soft", None if kind == "soft" else Constraint(instruction_id, kwargs, meta["seed"]))
    return [wrap(*row) for row in zip(meta["instruction_id_list"], meta["kwargs"], meta["constraints"], meta["kinds"])]

  def constraints(self, example_id: int) -> list[WorldConstraint]:
    meta = record_meta(normalize_record(self.records[int(example_id)]))
    return self._wrap(meta)[:meta["level"]]

  def ladder(self, record) -> tuple[list[str], list[WorldConstraint]] | None:
    """None for a math row: it has no constraints to pseudo-label."""
    if if_ladder.is_math(record):
      return None
    return if_ladder.ladder_prompts(record), self._wrap(record_meta(record))

  def holds(self, constraint: WorldConstraint, answer: str) -> bool:
    raise NotImplementedError("the IFEval world has no oracle for soft constraints")

  def verifier(self):
    return _shared_verifier(self.timeout_s)

  def math_verifier(self):
    return _shared_verifier(self.timeout_s, "math")

  def counters(self) -> dict[str, int]:
    out = {}
    for kind, prefix in (("instruction", ""), ("math", "math_")):
      if (self.timeout_s, kind) in _VERIFIERS:
        out.update({prefix + k: v for k, v in _VERIFIERS[self.timeout_s, kind].counters.items()})
    return out

  def verdicts(self, answers: Sequence[str | None], constraints: Sequence[Sequence[WorldConstraint]]):
    """(rule, oracle): IFEval verdicts for hard constraints and math-verify for math answers (0 for
    soft ones and missing answers); the oracle is the rule where one exists."""
    rule = [[0.0] * len(cs) for cs in constraints]
    for is_answer, pool in ((False, self.verifier), (True, self.math_verifier)):
      pairs = [(i, j) for i, cs in enumerate(constraints) for j, c in enumerate(cs)
               if not c.soft and c.answer == is_answer and answers[i] is not None]
      if not pairs:
        continue
      checks = [constraints[i][j].check for i, j in pairs]
      responses = [answers[i] for i, _ in pairs]
      ok = pool().score(responses, checks) if is_answer else pool().check(responses, checks)
      for (i, j), v in zip(pairs, ok):
        rule[i][j] = float(v)
    return rule, [list(r) for r in rule]


_VERIFIERS: dict[tuple[float, str], Any] = {}


def _shared_verifier(timeout_s: float, kind: str = "instruction"):
  """One worker pool per process and kind (the training and evaluation algorithms share it)."""
  # pylint: disable=import-outside-toplevel
  from selfrl_jax.rewards.instruction_following import InstructionVerifier
  from selfrl_jax.rewards.math_answers import MathVerifier, score_completion
  if (timeout_s, kind) not in _VERIFIERS:
    _VERIFIERS[timeout_s, kind] = (InstructionVerifier(timeout_s=timeout_s) if kind == "instruction" else
                                   MathVerifier(timeout_s=timeout_s, item_fn=functools.partial(score_completion, style="boxed")))
  return _VERIFIERS[timeout_s, kind]


RM_TEMPLATES = {"toy": TOY_TEMPLATE, "ifeval": IFEVAL_TEMPLATE}
WORLDS = {
    "toy": lambda cfg, records: ToyWorld(records, cfg.task.params.get("num_constraints", 5)),
    "ifeval": lambda cfg, records: IFEvalWorld(records, cfg.task.params.get("num_constraints", 5)),
}
