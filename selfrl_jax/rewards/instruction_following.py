"""Hard-constraint verifiers for instruction following: the IFEval checkers, as if-verifiable ships them.

The 25 IFEval instruction ids (`keywords:existence`, `length_constraints:number_sentences`, ...) are
checked by Google's IFEval checker classes from the pinned `if-verifiable` package, not rewritten
here. This module only binds arguments the way evaluation needs them and makes failures loud:

- Arguments whose value is None are dropped before `build_description` (ssrl_if.md §3.1): the
  released SSRL-IF code passes them through, and most IFEval builders then draw a *random*
  threshold — a nondeterministic check. Every remaining parameter of `build_description` must be
  given; a missing or unknown argument is a `ConstraintError` naming the id and the argument
  (`validate_constraint`; all 541 IFEval rows give every parameter).
- `strict`: the checker on the response; `loose`: any of IFEval's eight loose variants (first
  and/or last line removed, `*` removed), the package's `get_loose_transformations`. An empty
  response fails both, as in IFEval.
- langdetect (`language:response_language`, `change_case:english_*`) is seeded (0) so a verdict
  never changes between calls. Checkers are built under a fixed `random` seed too: IFEval's
  builders replace an out-of-range argument with a random one (two IFEval rows ask for the
  "letter" '#' and '!', which the checker swaps for a random letter on every call). Evaluation
  keeps those rows (with the same letter every run); `validate_constraint`, for training data,
  refuses any argument the checker would replace.

Batched scoring with a time limit and failure counting goes through `VerifierPool` with
`check_item` (see `InstructionVerifier`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import random
from typing import Any, Mapping, Sequence

import langdetect
from if_verifiable.common import get_loose_transformations
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

from selfrl_jax.rewards.nltk_data import require_punkt
from selfrl_jax.rewards.verifier_pool import VerifierPool

langdetect.DetectorFactory.seed = 0  # langdetect samples n-grams at random; a fixed seed fixes its verdicts

INSTRUCTION_IDS = tuple(sorted(INSTRUCTION_DICT))
# Checkers that load NLTK's Punkt model (sentence splitting, word_tokenize).
NEEDS_PUNKT = frozenset({"length_constraints:number_sentences", "change_case:capital_word_frequency"})


class ConstraintError(ValueError):
  """An instruction id the registry lacks, or arguments its checker cannot be built from."""


@functools.lru_cache(maxsize=None)
def _parameters(instruction_id: str) -> tuple[str, ...]:
  signature = inspect.signature(INSTRUCTION_DICT[instruction_id](instruction_id).build_description)  # bound
  return tuple(name for name, p in signature.parameters.items()
               if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL))


def constraint_arguments(instruction_id: str, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
  """The arguments `build_description` gets: None values dropped, every parameter present.

  Raises:
    ConstraintError: unknown id, a parameter missing (or None), or an argument the checker lacks.
  """
  if instruction_id not in INSTRUCTION_DICT:
    raise ConstraintError(f"unknown instruction id {instruction_id!r}; known: {', '.join(INSTRUCTION_IDS)}")
  given = {k: v for k, v in dict(kwargs or {}).items() if v is not None}
  params = _parameters(instruction_id)
  unknown = sorted(set(given) - set(params))
  if unknown:
    raise ConstraintError(f"{instruction_id}: no argument {', '.join(unknown)} "
                          f"(it takes {', '.join(params) or 'none'})")
  missing = [p for p in params if p not in given]
  if missing:  # IFEval's builders would replace it with a random value
    raise ConstraintError(f"{instruction_id}: argument {', '.join(missing)} is missing or None")
  return given


def build_checker(instruction_id: str, kwargs: Mapping[str, Any] | None, prompt: str = ""):
  """The IFEval checker object for one constraint, built deterministically.

  Raises:
    ConstraintError: see `constraint_arguments`; also an argument value the builder rejects
      (e.g. `relation="about"`).
  """
  args = constraint_arguments(instruction_id, kwargs)
  if instruction_id in NEEDS_PUNKT:
    require_punkt()
  checker = INSTRUCTION_DICT[instruction_id](instruction_id)
  saved = random.getstate()
  random.seed(0)  # a builder that replaces an argument draws the same value every time
  try:
    checker.build_description(**args)
    # IFEval: a checker that declares a `prompt` argument is rebuilt with the instruction's prompt.
    declared = checker.get_instruction_args()
    if declared and "prompt" in declared:
      checker.build_description(prompt=prompt)
  except (ValueError, TypeError, KeyError) as e:
    raise ConstraintError(f"{instruction_id} with {args}: {e}") from e
  finally:
    random.setstate(saved)
  return checker


def _same(a: Any, b: Any) -> bool:
  # Keyword builders return their lists sorted: order does not change a check.
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    return sorted(map(str, a)) == sorted(map(str, b))
  return a == b


def validate_constraint(instruction_id: str, kwargs: Mapping[str, Any] | None) -> None:
  """Raises ConstraintError when the constraint cannot be checked as written (use when building data):
  a bad id or argument set, a value the builder rejects, or one it would replace (e.g. letter='#')."""
  args = constraint_arguments(instruction_id, kwargs)
  used = build_checker(instruction_id, kwargs).get_instruction_args() or {}
  replaced = {k: v for k, v in args.items() if k in used and not _same(v, used[k])}
  if replaced:
    raise ConstraintError(f"{instruction_id}: the checker does not accept {replaced} as given "
                          f"(it would check {({k: used[k] for k in replaced})} instead)")


def _as_text(response: str | bytes) -> str:
  # A response that is not valid UTF-8 is checked with U+FFFD for the bad bytes, never raised.
  return response.decode("utf-8", errors="replace") if isinstance(response, bytes) else str(response)


def follows(checker, response: str | bytes, loose: bool = False) -> bool:
  """Whether `response` satisfies the built checker, strictly or under IFEval's loose variants."""
  text = _as_text(response)
  variants = get_loose_transformations(text) if loose else [text]
  return any(v.strip() and checker.check_following(v) for v in variants)


def check_constraint(instruction_id: str, kwargs: Mapping[str, Any] | None, response: str | bytes,
                     prompt: str = "", loose: bool = False) -> bool:
  """One hard constraint on one response (IFEval strict by default)."""
  return follows(build_checker(instruction_id, kwargs, prompt), response, loose)


@dataclasses.dataclass(frozen=True)
class Constraint:
  """One hard constraint of one prompt: what `check_item` needs (picklable for the worker pool)."""
  instruction_id: str
  kwargs: Mapping[str, Any]
  prompt: str = ""
  loose: bool = False


def check_item(response: str, constraint: Constraint) -> float:
  """1.0 / 0.0 for one (response, constraint): the `VerifierPool` item function."""
  return float(check_constraint(constraint.instruction_id, constraint.kwargs, response, constraint.prompt,
                                constraint.loose))


class InstructionVerifier(VerifierPool):
  """Checks (response, Constraint) pairs in worker processes, each under `timeout_s`.

  A checker that raises (including a ConstraintError that slipped past data validation) or hangs
  scores 0 and is counted in `counters` ('errors', 'timeouts'); the batch always completes.
  """

  def __init__(self, *, num_workers: int | None = None, timeout_s: float = 5.0, grace_s: float = 2.0):
    super().__init__(num_workers=num_workers, timeout_s=timeout_s, grace_s=grace_s, item_fn=check_item,
                     name="instruction verifier")

  def check(self, responses: Sequence[str], constraints: Sequence[Constraint]) -> list[bool]:
    """Verdict per pair (responses[i] against constraints[i])."""
    return [bool(v) for v in self.score([_as_text(r) for r in responses], list(constraints))]
