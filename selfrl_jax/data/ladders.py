"""Tasks whose records are rungs of instruction ladders: x_k = an instruction's seed plus its first k
constraints (x_0 the seed alone, x_n the full instruction).

    class MyLadder(LadderTask):
      min_level = 1
      def render(self, meta, k): ...            # the prompt text of x_k
      def generate(self, rng, index):
        meta = draw_instruction(rng)              # from `rng` only
        level, own = self.draw_level(rng)         # then the level from its own generator
        return make_record(self.render(meta, level), answer, {**meta, "level": level})

Training records hold the rung the config's `levels` draws; valid and test records always hold
the full instruction (`record` rewrites them), and all rungs of one instruction share a split
(`problem_key` is the full instruction). The level, and anything else that depends on the config's
training choices, is drawn from a generator of its own seeded by one draw of the main stream, so
the instructions of every split are the same whatever `levels` is: every arm of an ablation is
evaluated on the same held-out instructions.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Mapping

import numpy as np

from selfrl_jax.data.records import make_record, record_meta
from selfrl_jax.data.tasks import Task, TaskConfig


@dataclasses.dataclass(frozen=True)
class LadderConfig(TaskConfig):
  """num_constraints: constraints of a full instruction; levels: the training rungs, digits."""
  num_constraints: int = 5
  levels: str = "12345"


class LadderTask(Task):
  min_level: ClassVar[int] = 1  # the lowest rung `levels` may name

  def render(self, meta: Mapping[str, Any], k: int) -> str:
    """The prompt text of rung k of the instruction in `meta`."""
    raise NotImplementedError

  def held_out_answer(self, meta: Mapping[str, Any]) -> str:
    """The answer field of a held-out (full-instruction) record."""
    del meta
    return ""

  def validate(self) -> None:
    c = self.config
    if not c.levels or any(not ch.isdigit() or not self.min_level <= int(ch) <= c.num_constraints for ch in c.levels):
      raise ValueError(f"{self.name}: levels={c.levels!r} must be digits in {self.min_level}..{c.num_constraints}")

  def draw_level(self, rng: np.random.Generator) -> tuple[int, np.random.Generator]:
    """(training rung, the generator for the rest of the config-dependent draws), from one draw of `rng`."""
    own = np.random.default_rng(rng.integers(2**63))
    return int(own.choice([int(ch) for ch in self.config.levels])), own

  def record(self, split: str, index: int) -> dict[str, str]:
    rec = super().record(split, index)
    if split == "train":
      return rec
    meta = record_meta(rec)
    meta["level"] = self.config.num_constraints
    return make_record(self.render(meta, meta["level"]), self.held_out_answer(meta), meta)

  def problem_key(self, record: Mapping[str, str]) -> str:
    meta = json.loads(record["meta"])
    return self.render(meta, self.config.num_constraints)
