"""Text games as text records, for agents that play them (`envs/host_games.py`): tasks `twx`
(TextWorldExpress) and `scienceworld`.

    task = make_task("twx", game="coin", game_params="numLocations=4,numDistractorItems=0,includeDoors=0",
                     splits={"train": 64, "valid": 16, "test": 16})
    task.record("train", 3)
    # {"prompt": "You are an agent playing TextWorldExpress (coin). Goal: ... Current observation: ...
    #             Admissible actions: ...", "answer": "train 3", "meta": '{"gold_actions": [...], ...}'}

Record i of a split is the i-th game of the matching simulator fold (train -> train, valid -> dev,
test -> test; the simulators keep their folds apart, so the splits are disjoint by construction):
TextWorldExpress's i-th seed, ScienceWorld's i-th variation. The prompt is the spec's system part
(self_guide.md §3: the goal, the admissible actions, the first observation); the answer
"<fold> <seed>" is what the environment resets from. Rendering records starts one Java process per
game (per ScienceWorld task) in this Python process, closed at exit.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools

import numpy as np

from selfrl_jax.data.records import make_record
from selfrl_jax.data.tasks import Task, TaskConfig, register_task

SPLIT_FOLDS = {"train": "train", "valid": "dev", "test": "test"}


def _close_at_exit(env):
  from selfrl_jax.envs.host_games import close_py4j_game  # pylint: disable=import-outside-toplevel
  atexit.register(close_py4j_game, env)
  return env


@functools.lru_cache(maxsize=None)
def _twx(game: str, game_params: str):
  from selfrl_jax.envs.textworld_express import launch_game  # pylint: disable=import-outside-toplevel
  env = _close_at_exit(launch_game(game, game_params, step_limit=1000))
  return env, {"train": list(env.getValidSeedsTrain()), "dev": list(env.getValidSeedsDev()),
               "test": list(env.getValidSeedsTest())}


@functools.lru_cache(maxsize=None)
def _scienceworld(task_name: str):
  from selfrl_jax.envs.scienceworld import launch_simulator  # pylint: disable=import-outside-toplevel
  env = _close_at_exit(launch_simulator(step_limit=1000))
  if task_name not in env.get_task_names():
    raise ValueError(f"scienceworld: unknown task_name {task_name!r}; valid: {env.get_task_names()}.")
  env.load(task_name, 0, "")
  return env, {"train": list(env.get_variations_train()), "dev": list(env.get_variations_dev()),
               "test": list(env.get_variations_test())}


def render_prompt(simulator: str, goal: str, observation: str, actions_line: str) -> str:
  """The task prompt: environment, goal, first observation and what actions look like (self_guide.md §3)."""
  return (f"You are an agent playing {simulator}. Goal: {' '.join(goal.split())}\n"
          f"Current observation: {observation.strip()}\n{actions_line}")


class GameTask(Task):
  """Records are the fold's games in order (`game_record`), not draws."""

  def validate(self) -> None:
    unknown = sorted(set(self.config.splits) - set(SPLIT_FOLDS))
    if unknown:
      raise ValueError(f"{self.name}: splits must be among {sorted(SPLIT_FOLDS)} (the simulator's folds), got {unknown}.")

  def generate(self, rng: np.random.Generator, index: int) -> dict[str, str]:
    raise NotImplementedError(f"{self.name} records are the fold's games in order (`record`), not draws.")

  def games(self) -> dict[str, list[int]]:
    """Fold -> the simulator's seeds (variations) of that fold."""
    raise NotImplementedError

  def game_record(self, fold: str, seed: int) -> dict[str, str]:
    raise NotImplementedError

  def record(self, split: str, index: int) -> dict[str, str]:
    if split not in self.config.splits:
      raise ValueError(f"{self.name}: unknown split {split!r}; valid splits: {sorted(self.config.splits)}.")
    fold = SPLIT_FOLDS[split]
    seeds = self.games()[fold]
    if index >= len(seeds):
      raise ValueError(f"{self.name}: split {split} (fold {fold}) has {len(seeds)} games, asked for record {index}; "
                       f"lower task.{split}_size.")
    return self.game_record(fold, int(seeds[index]))


@dataclasses.dataclass(frozen=True)
class TwxConfig(TaskConfig):
  """Attributes: game / game_params: the TextWorldExpress game and its generation properties."""

  game: str = "coin"
  game_params: str = "numLocations=4,numDistractorItems=0,includeDoors=0"


@register_task
class Twx(GameTask):
  name = "twx"
  version = "1.0.0"
  config_cls = TwxConfig

  def games(self) -> dict[str, list[int]]:
    return _twx(self.config.game, self.config.game_params)[1]

  def game_record(self, fold: str, seed: int) -> dict[str, str]:
    from selfrl_jax.envs.host_games import observation_text  # pylint: disable=import-outside-toplevel
    env, _ = _twx(self.config.game, self.config.game_params)
    observation, infos = env.reset(seed=seed, gameFold=fold, generateGoldPath=True)
    prompt = render_prompt(f"TextWorldExpress ({self.config.game})", infos["taskDescription"],
                           observation_text(observation, infos["validActions"]), "")
    meta = {"game": self.config.game, "fold": fold, "seed": seed, "gold_actions": list(env.getGoldActionSequence())}
    return make_record(prompt=prompt.rstrip(), answer=f"{fold} {seed}", meta=meta)


@dataclasses.dataclass(frozen=True)
class ScienceWorldConfig(TaskConfig):
  """Attributes: task_name: a ScienceWorld task (e.g. find-living-thing, boil); simplification:
  its simplification string ("easy" = all of them; "" = none)."""

  task_name: str = "find-living-thing"
  simplification: str = "easy"


@register_task
class ScienceWorld(GameTask):
  name = "scienceworld"
  version = "1.0.0"
  config_cls = ScienceWorldConfig

  def games(self) -> dict[str, list[int]]:
    return _scienceworld(self.config.task_name)[1]

  def game_record(self, fold: str, seed: int) -> dict[str, str]:
    from selfrl_jax.envs.host_games import observation_text  # pylint: disable=import-outside-toplevel
    env, _ = _scienceworld(self.config.task_name)
    env.load(self.config.task_name, seed, self.config.simplification, generateGoldPath=True)
    gold = list(env.get_gold_action_sequence())
    env.load(self.config.task_name, seed, self.config.simplification)
    templates = ", ".join(a for a in env.get_possible_actions() if a not in ("reset task", "wait1"))
    prompt = render_prompt(f"ScienceWorld ({self.config.task_name})", env.get_task_description(),
                           observation_text(env.look(), None),
                           f"Actions (OBJ and LOC are things and places you see): {templates}")
    meta = {"task_name": self.config.task_name, "fold": fold, "variation": seed, "gold_actions": gold}
    return make_record(prompt=prompt, answer=f"{fold} {seed}", meta=meta)
