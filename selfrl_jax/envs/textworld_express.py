"""TextWorldExpress (PyPI `textworld-express`) as a batched host environment, token in / token out.

    env = CallbackEnv(TextWorldExpressHostEnv(tokenizer, game="coin", game_params="numLocations=4",
                                              obs_len=160, chat=True, step_limit=8))

Each episode row owns one TextWorldExpress Java process (`TextWorldExpressEnv`, a py4j gateway),
launched on the first `reset` and reused for every later one; rows are reset and stepped in parallel
threads (the Java side does the work, so the GIL is not the limit). An episode is a game of the
`twx` task (`data/twx_tasks.py`): the task's answer "<fold> <seed>" names it, so the host needs no
lookup table and the G rollouts of a task play the same game.

Step: the action is the text of the ids after the guidance segment (`parse_action`: inside an
<action>...</action> tag where there is one, whitespace normalised), compared case-insensitively with
the game's admissible actions (`validActions`). An inadmissible action does not reach the game: the
row is marked invalid (penalised by the config) and its observation says so and lists the
admissible actions again. Reward is the change in the game's score, `score` the score (in [0, 1]),
`success` the game's `tasksuccess`; progress is 0 (TextWorldExpress has no per-step ground truth).

Failures never stop training: a row whose step raises or takes longer than `step_timeout_s` ends as
failed (counted in `counters`), and its Java process is killed and relaunched at the next reset.
Java processes end with `close()`, at interpreter exit (`atexit`), and, because py4j launches them
with `die_on_exit`, also when this process is killed outright (the child exits when its stdin closes).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import re
import threading
from typing import Any

import numpy as np

from selfrl_jax.envs.base import EnvStep

log = logging.getLogger(__name__)

FOLDS = ("train", "dev", "test")
_ACTION = re.compile(r"<action>(.*?)(?:</action|$)", re.IGNORECASE | re.DOTALL)


def parse_action(text: str) -> str:
  """The action a step's text names, whitespace and case normalised: what is inside <action>...</action>
  when the text has the tag, else the text without the ">" a BPE guide-close may leave at its start
  (self_guide.guide_close = "</guide": "</guide>" and "</guide><action>" tokenise differently)."""
  found = _ACTION.search(text)
  inner = found.group(1) if found else text.strip().lstrip(">")
  return " ".join(inner.split()).lower()


def observation_text(observation: str, valid_actions: list[str]) -> str:
  """What the agent reads after a step: the game's text, then the admissible actions (spec §3)."""
  return f"{observation.strip()}\nAdmissible actions: {', '.join(sorted(valid_actions))}"


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
    close_game(env)
    raise RuntimeError(f"TextWorldExpress: game {game!r} with parameters {game_params!r} was rejected: {e}") from e
  return env


def close_game(env) -> None:
  """Ends a game's Java process (quietly: it may already be gone)."""
  try:
    env.close()
  except Exception:  # pylint: disable=broad-except
    pass
  proc = getattr(getattr(env, "_gateway", None), "java_process", None)
  if proc is not None and proc.poll() is None:
    proc.kill()
    proc.wait(timeout=10)
  env.close = lambda: None   # its __del__ calls close() again


class TextWorldExpressHostEnv:
  """A `HostEnv` over one TextWorldExpress game (module docstring).

  Args:
    tokenizer: decodes actions and encodes observations (`models.tokenizers.Tokenizer`).
    game, game_params: the TextWorldExpress game and its generation properties.
    obs_len: ids per observation turn; a longer observation's text is cut (counted).
    chat: wrap each observation in a user turn of the tokenizer's chat template
      (`two_turn.correction_instruction_ids`), else append its ids as they are.
    step_limit: the game's own move limit (the episode ends there at the latest).
    step_timeout_s: seconds a row's reset or step may take before the row ends as failed.
  """

  def __init__(self, tokenizer, game: str, game_params: str, obs_len: int, chat: bool, step_limit: int,
               step_timeout_s: float = 10.0):
    self.tokenizer, self.game, self.game_params = tokenizer, game, game_params
    self.obs_len, self.chat, self.step_limit, self.step_timeout_s = obs_len, chat, step_limit, step_timeout_s
    self.counters = {"env_timeouts": 0, "env_row_errors": 0, "truncated_observations": 0, "java_restarts": 0}
    self._games: list[Any] = []          # one Java process per row (None: to relaunch)
    self._valid: list[list[str]] = []    # each row's admissible actions
    self._done = np.zeros(0, bool)
    self._score = np.zeros(0, np.float32)
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None
    self._lock = threading.Lock()
    atexit.register(self.close)

  # --- Java processes -------------------------------------------------------------------------------

  def _ensure_games(self, batch_size: int) -> None:
    if len(self._games) < batch_size:
      self._games += [None] * (batch_size - len(self._games))
    missing = [b for b in range(batch_size) if self._games[b] is None]
    if missing:
      launched = list(self._executor(batch_size).map(
          lambda _: launch_game(self.game, self.game_params, self.step_limit), missing))
      for b, game in zip(missing, launched):
        self._games[b] = game

  def _executor(self, batch_size: int) -> concurrent.futures.ThreadPoolExecutor:
    if self._pool is None or self._pool._max_workers < batch_size:  # pylint: disable=protected-access
      if self._pool is not None:
        self._pool.shutdown(wait=False)
      self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=batch_size, thread_name_prefix="twx")
    return self._pool

  def java_pids(self) -> list[int]:
    """Process ids of the running Java processes (for shutdown checks)."""
    return [g._gateway.java_process.pid for g in self._games if g is not None]  # pylint: disable=protected-access

  def close(self) -> None:
    """Ends every Java process; the environment relaunches them on the next reset."""
    with self._lock:
      games, self._games = self._games, []
    for game in games:
      if game is not None:
        close_game(game)
    if self._pool is not None:
      self._pool.shutdown(wait=False)
      self._pool = None

  def _drop(self, b: int, why: str) -> None:
    """Kills row b's Java process after a failure (relaunched at the next reset)."""
    game, self._games[b] = self._games[b], None
    self.counters["java_restarts"] += 1
    log.warning("TextWorldExpress: row %d %s; its Java process is restarted at the next reset.", b, why)
    if game is not None:
      threading.Thread(target=close_game, args=(game,), daemon=True).start()

  def _run_rows(self, fn, rows: list[int]) -> dict[int, Any]:
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
    b_size = len(rows)
    self._ensure_games(b_size)
    self._valid, self._score = [[] for _ in range(b_size)], np.zeros(b_size, np.float32)

    def reset_row(b):
      fold, game_seed = rows[b]
      _, infos = self._games[b].reset(seed=game_seed, gameFold=fold)
      return list(infos["validActions"])

    results = self._run_rows(reset_row, list(range(b_size)))
    self._done = np.array([b not in results for b in range(b_size)])
    self._failed_at_reset = self._done.copy()
    for b, valid in results.items():
      self._valid[b] = valid

  def step(self, action_BxN: np.ndarray, action_valid_BxN: np.ndarray, uniform_B: np.ndarray) -> EnvStep:
    del uniform_B   # the games' randomness is their seed
    b_size = action_BxN.shape[0]
    obs_BxO = np.zeros((b_size, self.obs_len), np.int32)
    obs_valid_BxO = np.zeros((b_size, self.obs_len), bool)
    reward_B, score_B = np.zeros(b_size, np.float32), self._score.copy()
    success_B, invalid_B = np.zeros(b_size, bool), np.zeros(b_size, bool)
    failed_B = self._failed_at_reset.copy()
    self._failed_at_reset[:] = False
    actions = {b: parse_action(self.tokenizer.decode([int(i) for i, ok in zip(action_BxN[b], action_valid_BxN[b]) if ok]))
               for b in range(b_size) if not self._done[b]}
    admissible = {b: a for b, a in actions.items() if a in {v.lower() for v in self._valid[b]}}

    def step_row(b):
      return self._games[b].step(admissible[b])

    results = self._run_rows(step_row, sorted(admissible))
    for b, action in actions.items():
      if b in admissible and b not in results:       # the game failed on this row
        failed_B[b], self._done[b] = True, True
        continue
      if b not in admissible:
        invalid_B[b] = True
        text = observation_text(f"Invalid action: {action!r} is not admissible here.", self._valid[b])
      else:
        observation, _, done, infos = results[b]
        score = float(np.clip(infos["score"], 0.0, 1.0))
        reward_B[b], score_B[b], self._score[b] = score - self._score[b], score, score
        success_B[b] = bool(infos["tasksuccess"])
        self._valid[b] = list(infos["validActions"])
        self._done[b] = bool(done)
        text = observation_text(observation, self._valid[b])
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


def game_spec(answer: str) -> tuple[str, int]:
  """(fold, seed) from a twx task's answer "<fold> <seed>". Raises ValueError naming the bad answer."""
  parts = answer.split()
  if len(parts) != 2 or parts[0] not in FOLDS or not parts[1].isdigit():
    raise ValueError(f"TextWorldExpress: a twx task's answer must be '<fold> <seed>' with fold in {FOLDS}, got {answer!r}.")
  return parts[0], int(parts[1])
