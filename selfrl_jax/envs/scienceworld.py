"""ScienceWorld (PyPI `scienceworld`, Java) as a game adapter for `host_games.PooledGameEnv`.

    env = CallbackEnv(PooledGameEnv(tokenizer, ScienceWorldGame("find-living-thing", "easy", step_limit=20),
                                    obs_len=256, chat=True))

Games are the `scienceworld` task's (`data/scienceworld_tasks.py`): its answer "<fold> <variation>"
names one variation of one ScienceWorld task. `ScienceWorldEnv.step` lists every valid
action-object combination after each move (100-250 ms, ../shared/env_notes.md), so the hot path
calls the simulator's own step (10-40 ms) and reads score and completion directly; the prompt lists
the action templates ("open OBJ", "go to LOC", ...) instead of every combination, and an action
the parser cannot match ("No known action matches that input.") is the invalid action.

Score is ScienceWorld's 0-100 score over 100, clipped to [0, 1] (a failed task's negative score is
0 and ends the episode); success is a full score.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from selfrl_jax.envs.host_games import GameStep, Py4jGame

UNKNOWN_ACTION = "No known action matches that input."


def launch_simulator(step_limit: int):
  """A ScienceWorld Java process. Raises ImportError without the package, RuntimeError without java."""
  try:
    from scienceworld import ScienceWorldEnv  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("ScienceWorld environments need `pip install scienceworld==1.2.3` (requirements.txt) "
                      "and java (apt-get install default-jre-headless).") from e
  try:
    return ScienceWorldEnv("", envStepLimit=step_limit)
  except Exception as e:  # py4j raises a bare Exception when the JVM does not start
    raise RuntimeError(f"ScienceWorld: could not start its Java process ({e}); is java installed? "
                       "(apt-get install default-jre-headless)") from e


def _state(game: Any, observation: str, step_limit: int) -> GameStep:
  raw = float(game.server.getScore())
  done = bool(game.server.getCompleted()) or raw < 0 or int(game.server.getNumMoves()) >= step_limit
  return GameStep(observation=observation, score=min(max(raw, 0.0), 1.0), done=done, success=raw >= 1.0,
                  admissible=None, invalid=observation.strip() == UNKNOWN_ACTION)


@dataclasses.dataclass(frozen=True)
class ScienceWorldGame(Py4jGame):
  """`GameAdapter` for the variations of one ScienceWorld task."""

  task_name: str
  simplification: str
  step_limit: int
  name: str = "scienceworld"

  def launch(self) -> Any:
    return launch_simulator(self.step_limit)

  def reset(self, game: Any, fold: str, seed: int) -> GameStep:
    del fold   # a variation index names its fold
    game.load(self.task_name, seed, self.simplification)
    return _state(game, game.look(), self.step_limit)

  def step(self, game: Any, action: str) -> GameStep:
    return _state(game, game.server.step(action), self.step_limit)

