"""TextWorldExpress games as text records (task `twx`), for agents that play them (`envs/textworld_express.py`).

    task = make_task("twx", game="coin", game_params="numLocations=4,numDistractorItems=0,includeDoors=0",
                     splits={"train": 64, "valid": 16, "test": 16})
    task.record("train", 3)
    # {"prompt": "You are an agent playing TextWorldExpress (coin). Goal: ... Admissible actions: ...
    #             Current observation: You are in the kitchen. ...", "answer": "train 3", "meta": ...}

Record i of a split is the game with the i-th seed of the matching TextWorldExpress fold (train ->
train, valid -> dev, test -> test; TextWorldExpress keeps the folds' seeds apart, so the splits are
disjoint by construction). The prompt is the spec's system part (self_guide.md §3: the goal, the
admissible actions, the first observation); the answer "<fold> <seed>" is what the environment
resets from. Rendering records starts one Java process per game for this Python process.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools

import numpy as np

from selfrl_jax.data.records import make_record
from selfrl_jax.data.tasks import Task, TaskConfig, register_task

SPLIT_FOLDS = {"train": "train", "valid": "dev", "test": "test"}


@dataclasses.dataclass(frozen=True)
class TwxConfig(TaskConfig):
  """Attributes: game / game_params: the TextWorldExpress game and its generation properties."""

  game: str = "coin"
  game_params: str = "numLocations=4,numDistractorItems=0,includeDoors=0"


@functools.lru_cache(maxsize=None)
def _renderer(game: str, game_params: str):
  from selfrl_jax.envs.textworld_express import close_game, launch_game  # pylint: disable=import-outside-toplevel
  env = launch_game(game, game_params, step_limit=1000)
  atexit.register(close_game, env)
  seeds = {"train": list(env.getValidSeedsTrain()), "dev": list(env.getValidSeedsDev()),
           "test": list(env.getValidSeedsTest())}
  return env, seeds


def render_prompt(game: str, task_description: str, observation: str, valid_actions: list[str]) -> str:
  """The task prompt: environment, goal, admissible actions, first observation (self_guide.md §3)."""
  from selfrl_jax.envs.textworld_express import observation_text  # pylint: disable=import-outside-toplevel
  return (f"You are an agent playing TextWorldExpress ({game}). Goal: {task_description.strip()}\n"
          f"Current observation: {observation_text(observation, valid_actions)}")


@register_task
class Twx(Task):
  name = "twx"
  version = "1.0.0"
  config_cls = TwxConfig

  def validate(self) -> None:
    unknown = sorted(set(self.config.splits) - set(SPLIT_FOLDS))
    if unknown:
      raise ValueError(f"twx: splits must be among {sorted(SPLIT_FOLDS)} (TextWorldExpress folds), got {unknown}.")

  def generate(self, rng: np.random.Generator, index: int) -> dict[str, str]:
    raise NotImplementedError("twx records come from `record` (the fold's index-th seed), not from draws.")

  def record(self, split: str, index: int) -> dict[str, str]:
    if split not in self.config.splits:
      raise ValueError(f"twx: unknown split {split!r}; valid splits: {sorted(self.config.splits)}.")
    env, seeds = _renderer(self.config.game, self.config.game_params)
    fold = SPLIT_FOLDS[split]
    if index >= len(seeds[fold]):
      raise ValueError(f"twx: {split} has {len(seeds[fold])} games of {self.config.game}, asked for record {index}.")
    seed = int(seeds[fold][index])
    observation, infos = env.reset(seed=seed, gameFold=fold, generateGoldPath=True)
    meta = {"game": self.config.game, "fold": fold, "seed": seed, "gold_actions": list(env.getGoldActionSequence())}
    return make_record(prompt=render_prompt(self.config.game, infos["taskDescription"], observation,
                                            list(infos["validActions"])),
                       answer=f"{fold} {seed}", meta=meta)
