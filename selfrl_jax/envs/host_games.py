"""Text games in their own processes (Java simulators) as one batched host environment.

    env = CallbackEnv(PooledGameEnv(tokenizer, TextWorldExpressGame("coin", params, step_limit=8),
                                    obs_len=160, chat=True))

A `GameAdapter` knows one simulator (`textworld_express.py`, `scienceworld.py`): how to launch a
game process, reset it to a task ("<fold> <seed>", the task's answer), step it with an action text,
and close it. `PooledGameEnv` turns an adapter into a `HostEnv`: each episode row owns one game
process, launched on the first reset and reused for every later one; rows are reset and stepped in
parallel threads (the simulator does the work, so the GIL is not the limit). The G rollouts of a
task play the same game.

Step: the action is the text of the ids after the guidance segment (`parse_action`: inside an
<action>...</action> tag where there is one, whitespace and case normalised). Where the game lists
its admissible actions, an action outside them never reaches the game: the row is marked invalid
(penalised by the config) and its observation says so and lists them again; a game that cannot list
them cheaply reports invalid actions itself. Reward is the change in the normalised score (in
[0, 1]); progress is 0 (these games have no per-step ground truth).

Failures never stop training: a row whose reset or step raises or takes longer than
`step_timeout_s` ends as failed (counted in `counters`), and its process is killed and relaunched
at the next reset. Processes end with `close()`, at interpreter exit (`atexit`) and, for the py4j
simulators (launched with `die_on_exit`), when this process is killed outright.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import logging
import re
import threading
from typing import Any, Protocol

import numpy as np

from selfrl_jax.envs.base import EnvStep

log = logging.getLogger(__name__)
# py4j logs two INFO lines per simulator process it starts (its callback server); a run starts dozens.
logging.getLogger("py4j").setLevel(logging.WARNING)

FOLDS = ("train", "dev", "test")
_ACTION = re.compile(r"<action>(.*?)(?:</action|$)", re.IGNORECASE | re.DOTALL)


@dataclasses.dataclass(frozen=True)
class GameStep:
  """What a game shows after a reset or a step.

  Attributes:
    observation: the game's text.
    score: normalised to [0, 1] (negative raw scores, a failed task, count as 0).
    done, success: the episode has ended / ended with the task solved.
    admissible: the actions the game accepts now (None: it cannot list them cheaply).
    invalid: the game itself rejected the action (games without an admissible list).
  """

  observation: str
  score: float
  done: bool
  success: bool
  admissible: tuple[str, ...] | None
  invalid: bool = False


class GameAdapter(Protocol):
  """One simulator; every method but `launch` receives the handle `launch` returned."""

  name: str

  def launch(self) -> Any: ...

  def reset(self, game: Any, fold: str, seed: int) -> GameStep: ...

  def step(self, game: Any, action: str) -> GameStep: ...

  def close(self, game: Any) -> None: ...

  def pid(self, game: Any) -> int: ...


def parse_action(text: str) -> str:
  """The action a step's text names, whitespace and case normalised: what is inside <action>...</action>
  when the text has the tag, else the text without the ">" a BPE guide-close may leave at its start
  (self_guide.guide_close = "</guide": "</guide>" and "</guide><action>" tokenise differently)."""
  found = _ACTION.search(text)
  inner = found.group(1) if found else text.strip().lstrip(">")
  return " ".join(inner.split()).lower()


def observation_text(observation: str, admissible: tuple[str, ...] | list[str] | None) -> str:
  """What the agent reads after a step: the game's text (tabs as two spaces: ScienceWorld indents
  with them, and not every vocabulary has one), then the admissible actions (spec §3)."""
  text = observation.strip().replace("\t", "  ")
  return text if admissible is None else f"{text}\nAdmissible actions: {', '.join(sorted(admissible))}"


def game_spec(answer: str) -> tuple[str, int]:
  """(fold, seed) from a game task's answer "<fold> <seed>". Raises ValueError naming the bad answer."""
  parts = answer.split()
  if len(parts) != 2 or parts[0] not in FOLDS or not parts[1].isdigit():
    raise ValueError(f"a game task's answer must be '<fold> <seed>' with fold in {FOLDS}, got {answer!r}.")
  return parts[0], int(parts[1])


class PooledGameEnv:
  """A `HostEnv` of one game process per row (module docstring). Games have no per-step ground
  truth of progress (`has_progress` False: no calibration metric).

  Args:
    tokenizer: decodes actions and encodes observations (`models.tokenizers.Tokenizer`).
    adapter: the simulator (`GameAdapter`).
    obs_len: ids per observation turn; a longer observation's text is cut (counted).
    chat: wrap each observation in a user turn of the tokenizer's chat template
      (`two_turn.correction_instruction_ids`), else append its ids as they are.
    step_timeout_s: seconds a row's reset or step may take before the row ends as failed.
  """

  has_progress = False

  def __init__(self, tokenizer, adapter: GameAdapter, obs_len: int, chat: bool, step_timeout_s: float = 10.0):
    self.tokenizer, self.adapter = tokenizer, adapter
    self.obs_len, self.chat, self.step_timeout_s = obs_len, chat, step_timeout_s
    self.counters = {"env_timeouts": 0, "env_row_errors": 0, "truncated_observations": 0, "process_restarts": 0}
    self._games: list[Any] = []          # one game process per row (None: to relaunch)
    self._last: list[GameStep | None] = []
    self._done = np.zeros(0, bool)
    self._failed_at_reset = np.zeros(0, bool)
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None
    self._lock = threading.Lock()
    atexit.register(self.close)

  # --- processes ------------------------------------------------------------------------------------

  def _executor(self, workers: int) -> concurrent.futures.ThreadPoolExecutor:
    if self._pool is None or self._pool._max_workers < workers:  # pylint: disable=protected-access
      if self._pool is not None:
        self._pool.shutdown(wait=False)
      self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=self.adapter.name)
    return self._pool

  def _ensure_games(self, batch_size: int) -> None:
    self._games += [None] * (batch_size - len(self._games))
    missing = [b for b in range(batch_size) if self._games[b] is None]
    for b, game in zip(missing, self._executor(batch_size).map(lambda _: self.adapter.launch(), missing)):
      self._games[b] = game

  def pids(self) -> list[int]:
    """Process ids of the running game processes (for shutdown checks)."""
    return [self.adapter.pid(g) for g in self._games if g is not None]

  def close(self) -> None:
    """Ends every game process; the environment relaunches them on the next reset."""
    with self._lock:
      games, self._games = self._games, []
    for game in games:
      if game is not None:
        self.adapter.close(game)
    if self._pool is not None:
      self._pool.shutdown(wait=False)
      self._pool = None

  def _drop(self, b: int, why: str) -> None:
    """Kills row b's process after a failure (relaunched at the next reset)."""
    game, self._games[b] = self._games[b], None
    self.counters["process_restarts"] += 1
    log.warning("%s: row %d %s; its process is restarted at the next reset.", self.adapter.name, b, why)
    if game is not None:
      threading.Thread(target=self.adapter.close, args=(game,), daemon=True).start()

  def _run_rows(self, fn, rows: list[int]) -> dict[int, GameStep]:
    """fn(b) on every row in parallel; rows that raise or time out are dropped (absent from the result)."""
    futures = {b: self._executor(len(self._games)).submit(fn, b) for b in rows}
    done, _ = concurrent.futures.wait(futures.values(), timeout=self.step_timeout_s)
    results = {}
    for b, fut in futures.items():
      if fut not in done:
        self.counters["env_timeouts"] += 1
        self._drop(b, f"took longer than {self.step_timeout_s} s")
      elif fut.exception() is not None:
        self.counters["env_row_errors"] += 1
        self._drop(b, f"raised {fut.exception()!r}")
      else:
        results[b] = fut.result()
    return results

  # --- HostEnv --------------------------------------------------------------------------------------

  def reset(self, example_id_P: np.ndarray, target_PxA: np.ndarray, group_size: int, seed: int) -> None:
    """Starts each task's game (fold and seed from its answer "<fold> <seed>") on its G rows."""
    del example_id_P, seed   # the game seed is the task's: the G rollouts of a task play the same game
    specs = [game_spec(self.tokenizer.decode([int(i) for i in row if i >= 0])) for row in np.asarray(target_PxA)]
    rows = [spec for spec in specs for _ in range(group_size)]
    self._ensure_games(len(rows))
    results = self._run_rows(lambda b: self.adapter.reset(self._games[b], *rows[b]), list(range(len(rows))))
    self._last = [results.get(b) for b in range(len(rows))]
    self._done = np.array([b not in results for b in range(len(rows))])
    self._failed_at_reset = self._done.copy()

  def step(self, action_BxN: np.ndarray, action_valid_BxN: np.ndarray, uniform_B: np.ndarray) -> EnvStep:
    del uniform_B   # the games' randomness is their seed
    b_size = action_BxN.shape[0]
    obs_BxO = np.zeros((b_size, self.obs_len), np.int32)
    obs_valid_BxO = np.zeros((b_size, self.obs_len), bool)
    reward_B = np.zeros(b_size, np.float32)
    score_B = np.array([s.score if s else 0.0 for s in self._last], np.float32)
    success_B, invalid_B = np.zeros(b_size, bool), np.zeros(b_size, bool)
    failed_B, self._failed_at_reset = self._failed_at_reset, np.zeros(b_size, bool)
    actions = {b: parse_action(self.tokenizer.decode([int(i) for i, ok in zip(action_BxN[b], action_valid_BxN[b]) if ok]))
               for b in range(b_size) if not self._done[b]}
    listed = lambda b: self._last[b].admissible  # noqa: E731
    to_game = [b for b, a in actions.items() if listed(b) is None or a in {v.lower() for v in listed(b)}]
    results = self._run_rows(lambda b: self.adapter.step(self._games[b], actions[b]), to_game)
    for b, action in actions.items():
      if b in to_game and b not in results:       # the game failed on this row
        failed_B[b], self._done[b] = True, True
        continue
      if b not in to_game:
        invalid_B[b] = True
        text = observation_text(f"Invalid action: {action!r} is not admissible here.", listed(b))
      else:
        new = results[b]
        invalid_B[b] = new.invalid
        reward_B[b], score_B[b] = new.score - self._last[b].score, new.score
        success_B[b], self._done[b], self._last[b] = new.success, new.done, new
        text = observation_text(new.observation, new.admissible)
      if not self._done[b]:
        ids = self._observation_ids(text)
        obs_BxO[b, :len(ids)], obs_valid_BxO[b, :len(ids)] = ids, True
    return EnvStep(obs_BxO=obs_BxO, obs_valid_BxO=obs_valid_BxO, reward_B=reward_B, done_B=self._done.copy(),
                   success_B=success_B, score_B=score_B, invalid_B=invalid_B,
                   progress_B=np.zeros(b_size, np.int8), failed_B=failed_B)

  def _observation_ids(self, text: str) -> list[int]:
    """The observation turn's ids, at most `obs_len`: the text is cut from the end (counted) so the
    chat turn's markers around it stay whole."""
    from selfrl_jax.rollouts.two_turn import correction_instruction_ids  # pylint: disable=import-outside-toplevel
    wrap = lambda t: list(correction_instruction_ids(self.tokenizer, t, self.chat))  # noqa: E731
    ids = wrap(text)
    if len(ids) <= self.obs_len:
      return ids
    self.counters["truncated_observations"] += 1
    text_ids = self.tokenizer.encode(text)
    keep = max(len(text_ids) - (len(ids) - self.obs_len), 1)
    while True:
      ids = wrap(self.tokenizer.decode(text_ids[:keep]))
      if len(ids) <= self.obs_len or keep == 1:
        return ids[:self.obs_len]
      keep -= len(ids) - self.obs_len


class Py4jGame:
  """`close` and `pid` of the simulators that run as a py4j-launched Java process (TextWorldExpress,
  ScienceWorld); an adapter subclasses it and adds `launch`, `reset` and `step`."""

  def close(self, game: Any) -> None:
    close_py4j_game(game)

  def pid(self, game: Any) -> int:
    return game._gateway.java_process.pid  # pylint: disable=protected-access


def close_py4j_game(env) -> None:
  """Ends a py4j simulator's Java process (quietly: it may already be gone)."""
  try:
    env.close()
  except Exception:  # pylint: disable=broad-except
    pass
  proc = getattr(getattr(env, "_gateway", None), "java_process", None)
  if proc is not None and proc.poll() is None:
    proc.kill()
    proc.wait(timeout=10)
  env.close = lambda: None   # its __del__ calls close() again
