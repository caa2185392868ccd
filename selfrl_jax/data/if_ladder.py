"""SSRL-IF's training data (ssrl_if.md §2): multi-constraint instructions and their constraint ladders.

    task = make_task("if_ladder", levels="12345", splits={"train": 5000, "valid": 100, "test": 200})
    rec = task.record("train", 0)
    # prompt: "Write a short story about a lighthouse keeper. Your response should contain at least 3 ..."
    # meta: seed, instruction_id_list, kwargs, constraints (texts), kinds, level

An instruction is a seed (templates x topics written offline, or a GSM8K / MBPP question from
../shared/data — never an IFEval prompt, the evaluation set) plus `num_constraints` mutually
compatible constraints, in order:

- hard: an IFEval instruction id with arguments drawn from the ranges of the authors' taxonomy
  (§2.1: sentences 3-5, keyword frequency 2-4, letter frequency 3-8, bullets 2-4, highlights 1-3,
  ...), written with the checker's own `build_description` text, validated (`validate_constraint`:
  no argument the checker would replace or randomise), and never two that IFEval's
  `INSTRUCTION_CONFLICTS` marks as conflicting;
- soft: a tone / audience / style / role constraint from `SOFT_CONSTRAINTS` (4 of the 25 categories
  of the CFBench-style taxonomy of v1 Table 10, five phrasings each), free text checked by the reward
  model only; one per category.

Record `level` k holds x_k = seed + the first k constraints (§2.2); training records draw k from
`levels` ("12345": the released mixture of every level; "5": full instructions only); held-out
splits always hold full instructions. All levels of one instruction land in the same split. The
row carries the released schema's columns (`instruction_id_list`, `kwargs` with every argument
named, `constraint` texts) in its meta; soft constraints have instruction ids `soft:<category>`.

General-reasoning rows (§2.1: the released mix holds 4,501 math and 1,929 science rows in 20,000):
a `math_frac` share of the *training* records are GSM8K word problems (train lines 2000 on, disjoint
from the question seeds) that ask for a `\boxed{}` answer. Their meta has one constraint of kind
`math` (instruction id `math`, the released `light`) whose text is the reference answer; the reward
is math-verify equivalence of the last boxed answer. Held-out splits stay instruction-following
only. The science rows (SciKnowEval multiple choice) have no offline copy and are left out.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Mapping

import numpy as np

from selfrl_jax.data.records import make_record, record_meta
from selfrl_jax.data.ladders import LadderConfig, LadderTask
from selfrl_jax.data.tasks import register_task

FORMS = ("short story", "poem", "email to a colleague", "product description", "blog post", "letter to a friend",
         "short speech", "summary", "news report", "diary entry", "review", "set of instructions")
TOPICS = ("a lighthouse keeper", "the first day of spring", "a lost umbrella", "learning to cook", "a city at night",
          "an old bicycle", "a rainy weekend", "moving to a new town", "a robot that paints", "the ocean",
          "a school science fair", "a mountain village", "coffee", "a library", "a long train journey",
          "a garden in winter", "saving money", "a family recipe", "a football match", "the history of maps")
WORDS = ("river", "light", "window", "market", "silver", "garden", "journey", "stone", "music", "cloud", "bridge",
         "paper", "forest", "engine", "harbor", "candle", "winter", "voice", "mirror", "orange")
END_PHRASES = ("Any other questions?", "Is there anything else I can help with?", "Let me know if you have additional questions.",
               "Thank you for reading.", "That is all for now.")

SOFT_CONSTRAINTS = {
    "tone": ("Use a warm and encouraging tone.", "Keep the tone calm and reassuring.", "Write with a playful, humorous tone.",
             "Adopt a formal and respectful tone.", "Sound enthusiastic and energetic."),
    "audience": ("Write it for a ten-year-old reader.", "Address it to busy professionals.", "Aim it at complete beginners.",
                 "Write for an audience of experts in the field.", "Make it suitable for elderly readers."),
    "style": ("Use vivid sensory details.", "Keep the sentences short and simple.", "Write in the style of a fairy tale.",
              "Use at least one metaphor.", "Write in a journalistic, factual style."),
    "role": ("Answer as if you were a ship's captain.", "Write from the point of view of a cat.",
             "Respond as a friendly librarian.", "Take the role of a sports commentator.", "Speak as a wise old teacher."),
}


def _hard_kwargs(instruction_id: str, rng: np.random.Generator, seed_text: str) -> dict[str, Any]:
  """Arguments for one IFEval checker, from the ranges of the authors' taxonomy (§2.1)."""
  from if_verifiable.ifeval.instructions_util import LANGUAGE_CODES  # pylint: disable=import-outside-toplevel
  rel = lambda: str(rng.choice(["less than", "at least"]))  # noqa: E731
  word = lambda: str(rng.choice(WORDS))  # noqa: E731
  table = {
      "keywords:existence": lambda: {"keywords": [str(w) for w in rng.choice(WORDS, size=2, replace=False)]},
      "keywords:frequency": lambda: {"keyword": word(), "frequency": int(rng.integers(2, 5)), "relation": rel()},
      "keywords:forbidden_words": lambda: {"forbidden_words": [str(w) for w in rng.choice(WORDS, size=2, replace=False)]},
      "keywords:letter_frequency": lambda: {"letter": str(rng.choice(list("abcdefghilmnoprstuw"))),
                                            "let_frequency": int(rng.integers(3, 9)), "let_relation": rel()},
      "language:response_language": lambda: {"language": str(rng.choice(sorted(LANGUAGE_CODES)))},
      "length_constraints:number_sentences": lambda: {"num_sentences": int(rng.integers(3, 6)), "relation": rel()},
      "length_constraints:number_paragraphs": lambda: {"num_paragraphs": int(rng.integers(2, 5))},
      "length_constraints:number_words": lambda: (
          {"num_words": int(rng.choice([10, 15, 20, 30, 40])), "relation": "at least"} if rng.random() < 0.5
          else {"num_words": int(rng.choice([50, 100])), "relation": "less than"}),
      "length_constraints:nth_paragraph_first_word": lambda: (lambda n: {
          "num_paragraphs": n, "nth_paragraph": int(rng.integers(1, n + 1)), "first_word": word()})(int(rng.integers(2, 4))),
      "detectable_content:number_placeholders": lambda: {"num_placeholders": int(rng.integers(1, 4))},
      "detectable_content:postscript": lambda: {"postscript_marker": str(rng.choice(["P.S.", "P.P.S"]))},
      "detectable_format:number_bullet_lists": lambda: {"num_bullets": int(rng.integers(2, 5))},
      "detectable_format:constrained_response": dict,
      "detectable_format:number_highlighted_sections": lambda: {"num_highlights": int(rng.integers(1, 4))},
      "detectable_format:multiple_sections": lambda: {"section_spliter": str(rng.choice(["Section", "SECTION"])),
                                                      "num_sections": int(rng.integers(2, 4))},
      "detectable_format:json_format": dict,
      "detectable_format:title": dict,
      "combination:two_responses": dict,
      "combination:repeat_prompt": lambda: {"prompt_to_repeat": seed_text},
      "startend:end_checker": lambda: {"end_phrase": str(rng.choice(END_PHRASES))},
      "startend:quotation": dict,
      "change_case:capital_word_frequency": lambda: {"capital_frequency": int(rng.integers(2, 6)),
                                                     "capital_relation": rel()},
      "change_case:english_capital": dict,
      "change_case:english_lowercase": dict,
      "punctuation:no_comma": dict,
  }
  return table[instruction_id]()


@functools.lru_cache(maxsize=1)
def _conflicts() -> dict[str, frozenset[str]]:
  """IFEval's INSTRUCTION_CONFLICTS made symmetric (its own `conflict_make`), as frozensets."""
  from if_verifiable.ifeval import instructions_registry as registry  # pylint: disable=import-outside-toplevel
  table = registry.conflict_make(copy.deepcopy({k: set(v) for k, v in registry.INSTRUCTION_CONFLICTS.items()}))
  return {k: frozenset(v) for k, v in table.items()}


def _describe(instruction_id: str, kwargs: Mapping[str, Any]) -> str:
  from selfrl_jax.rewards.instruction_following import build_checker  # pylint: disable=import-outside-toplevel
  return build_checker(instruction_id, kwargs).build_description(**kwargs)


@functools.lru_cache(maxsize=1)
def _question_seeds(root: str | None) -> tuple[str, ...]:
  from selfrl_jax.data.benchmarks import load_gsm8k, load_mbpp  # pylint: disable=import-outside-toplevel
  gsm8k = [r["prompt"] for r in list(load_gsm8k("train", root))[:2000]]
  mbpp = [r["prompt"] for r in list(load_mbpp("train", root, tests_in_prompt=False))]
  return tuple(gsm8k + mbpp)


MATH_INSTRUCTION = "Put your final answer within \\boxed{}."
_MATH_STREAM = 7919  # the math-row draws' own seed stream (split ids are 0, 1, 2)


@functools.lru_cache(maxsize=1)
def _math_problems(root: str | None) -> tuple[tuple[str, str], ...]:
  from selfrl_jax.data.benchmarks import load_gsm8k  # pylint: disable=import-outside-toplevel
  return tuple((r["prompt"], r["answer"]) for r in list(load_gsm8k("train", root))[2000:])


def math_record(rng: np.random.Generator, data_root: str | None = None) -> dict[str, str]:
  """A general-reasoning row: a GSM8K training question (never a seed question) asking for a boxed answer."""
  problems = _math_problems(data_root)
  question, answer = problems[int(rng.integers(len(problems)))]
  meta = {"seed": question, "instruction_id_list": ["math"], "kwargs": [{}], "constraints": [answer],
          "kinds": ["math"], "level": 1}
  return make_record(f"{question} {MATH_INSTRUCTION}", answer, meta)


def is_math(record: Mapping[str, Any]) -> bool:
  return record_meta(record)["kinds"] == ["math"]


def sample_instruction(rng: np.random.Generator, num_constraints: int, soft_prob: float, question_prob: float,
                       data_root: str | None = None) -> dict[str, Any]:
  """One seed with `num_constraints` compatible, validated constraints (see the module docstring)."""
  from selfrl_jax.rewards.instruction_following import INSTRUCTION_IDS, validate_constraint  # pylint: disable=import-outside-toplevel
  if rng.random() < question_prob:
    questions = _question_seeds(data_root)
    seed = questions[int(rng.integers(len(questions)))]
  else:
    seed = f"Write a {rng.choice(FORMS)} about {rng.choice(TOPICS)}."
  ids, kwargs, texts, kinds, used_soft = [], [], [], [], set()
  conflicts = _conflicts()
  while len(ids) < num_constraints:
    if rng.random() < soft_prob and len(used_soft) < len(SOFT_CONSTRAINTS):
      category = str(rng.choice(sorted(set(SOFT_CONSTRAINTS) - used_soft)))
      used_soft.add(category)
      ids.append(f"soft:{category}")
      kwargs.append({})
      texts.append(str(rng.choice(SOFT_CONSTRAINTS[category])))
      kinds.append("soft")
      continue
    hard = [i for i in ids if not i.startswith("soft:")]
    allowed = [i for i in INSTRUCTION_IDS if not any(i in conflicts.get(h, ()) or h in conflicts.get(i, ()) for h in hard)]
    if not allowed:
      soft_prob = 1.0  # no hard constraint fits with those already drawn
      continue
    instruction_id = str(rng.choice(allowed))
    args = _hard_kwargs(instruction_id, rng, seed)
    validate_constraint(instruction_id, args)
    ids.append(instruction_id)
    kwargs.append(args)
    texts.append(_describe(instruction_id, args))
    kinds.append("hard")
  return {"seed": seed, "instruction_id_list": ids, "kwargs": kwargs, "constraints": texts, "kinds": kinds}


def render_prompt(seed: str, constraints) -> str:
  return " ".join([seed, *constraints])


@dataclasses.dataclass(frozen=True)
class IFLadderConfig(LadderConfig):
  """Attributes: num_constraints (per full instruction), levels (training ladder levels, digits
  1..num_constraints), soft_prob (chance a constraint slot is soft), question_prob (chance the seed
  is a GSM8K / MBPP question), math_frac (share of training records that are math rows),
  data_root (../shared/data by default)."""
  soft_prob: float = 0.5
  question_prob: float = 0.3
  math_frac: float = 0.0
  data_root: str = ""


@register_task
class IFLadderTask(LadderTask):
  name = "if_ladder"
  version = "1.0.0"
  config_cls = IFLadderConfig

  def render(self, meta: Mapping[str, Any], k: int) -> str:
    return render_prompt(meta["seed"], meta["constraints"][:k])

  def validate(self) -> None:
    super().validate()
    for name in ("soft_prob", "question_prob", "math_frac"):
      if not 0.0 <= getattr(self.config, name) <= 1.0:
        raise ValueError(f"if_ladder: {name}={getattr(self.config, name)} must be in [0, 1]")

  def record(self, split: str, index: int) -> dict[str, str]:
    # The math draw has its own stream, so the instruction rows (and every held-out split) are the
    # same whatever math_frac is.
    if split == "train" and self.config.math_frac > 0:
      rng = np.random.default_rng([self.config.seed, _MATH_STREAM, index])
      if rng.random() < self.config.math_frac:
        return math_record(rng, self.config.data_root or None)
    return super().record(split, index)

  def generate(self, rng: np.random.Generator, index: int) -> dict[str, str]:
    del index
    c = self.config
    instruction = sample_instruction(rng, c.num_constraints, c.soft_prob, c.question_prob, c.data_root or None)
    level, _ = self.draw_level(rng)
    return make_record(self.render(instruction, level), "", {**instruction, "level": level})


def ladder_prompts(record: Mapping[str, Any]) -> list[str]:
  """x_0 ... x_n of the record's instruction (§2.2); not for math rows."""
  meta = record_meta(record)
  return [render_prompt(meta["seed"], meta["constraints"][:k]) for k in range(len(meta["constraints"]) + 1)]
