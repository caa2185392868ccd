"""TextWorldExpress (PyPI `textworld-express`, Java) as a game adapter for `host_games.PooledGameEnv`.

    env = CallbackEnv(PooledGameEnv(tokenizer, TextWorldExpressGame("coin", "numLocations=4", step_limit=8),
                                    obs_len=160, chat=True))

Games are the `twx` task's (`data/game_tasks.py`): its answer "<fold> <seed>" names one. The game
lists its admissible actions (`validActions`) with every response at no extra cost, so inadmissible
actions are caught before they reach it. Score is TextWorldExpress's `score` (already in [0, 1]),
success its `tasksuccess`; a step ends the episode where the game says so (solved, failed, or its
`envStepLimit` moves used).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from selfrl_jax.envs.host_games import GameStep, Py4jGame, close_py4j_game


def launch_game(game: str, game_params: str, step_limit: int):
  """A TextWorldExpress Java process with `game` loaded. Raises ImportError without the package and
  RuntimeError when java is missing or the game's parameters are rejected."""
  try:
    from textworld_express import TextWorldExpressEnv  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("TextWorldExpress environments need `pip install textworld-express==1.1.0` "
                      "(requirements.txt) and java (apt-get install default-jre-headless).") from e
  try:
    env = TextWorldExpressEnv(envStepLimit=step_limit)
  except Exception as e:  # py4j raises a bare Exception when the JVM does not start
    raise RuntimeError(f"TextWorldExpress: could not start its Java process ({e}); is java installed? "
                       "(apt-get install default-jre-headless)") from e
  try:
    env.load(game, game_params)
  except Exception as e:
    close_py4j_game(env)
    raise RuntimeError(f"TextWorldExpress: game {game!r} with parameters {game_params!r} was rejected: {e}") from e
  return env


def _game_step(observation: str, infos: dict, done: bool) -> GameStep:
  return GameStep(observation=observation, score=float(min(max(infos["score"], 0.0), 1.0)), done=bool(done),
                  success=bool(infos["tasksuccess"]), admissible=tuple(infos["validActions"]))


@dataclasses.dataclass(frozen=True)
class TextWorldExpressGame(Py4jGame):
  """`GameAdapter` for one TextWorldExpress game and its generation properties."""

  game: str
  game_params: str
  step_limit: int
  name: str = "textworld_express"

  def launch(self) -> Any:
    return launch_game(self.game, self.game_params, self.step_limit)

  def reset(self, game: Any, fold: str, seed: int) -> GameStep:
    observation, infos = game.reset(seed=seed, gameFold=fold)
    return _game_step(observation, infos, done=False)

  def step(self, game: Any, action: str) -> GameStep:
    observation, _, done, infos = game.step(action)
    return _game_step(observation, infos, done)

