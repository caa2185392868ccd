"""The sparse grid with slips (self_guide.md §11): a JAX-native text environment and its host twin.

    env = GridEnv(GridSpec.for_tokenizer(tokenizer, horizon=14, slip_prob=0.2))
    state = env.reset(batch, group_size, key)          # from each task's answer "<goal><start>"
    state, out = env.step(state, action_BxN, action_valid_BxN, key)

Dynamics (one row):
  - the action is the first id of the step's action part; it must be one of "u", "d", "l", "r"
    (anything else, or no action, is invalid: the agent stays and `invalid_B` is set);
  - a valid move slips with probability `slip_prob` to a uniformly random one of the four moves
    (possibly the intended one); both draws come from one U(0, 1) per row, u < p slips to move
    floor(4 u / p), so the host twin reproduces them from the same number;
  - a move into a wall or off the grid leaves the agent in place;
  - reward 1 on the step that reaches the goal; the episode ends there or after `horizon` steps;
  - the observation is the new cell as "<row><col>:" (3 ids), followed before the ":" by its BFS
    distance when the task shows distances (`grid_nav`'s `show_distance`) and by the move's progress
    (`PROGRESS_CHARS`) when it shows progress (`show_progress`); none once the episode has ended
    (`grid_nav.observation_text` renders the same as text);
  - progress (ground truth for guidance calibration): sign of the decrease of the BFS distance
    to the goal (+1 closer, 0 same, -1 farther).

`GridHostEnv` is the same environment in numpy behind the `HostEnv` interface: `CallbackEnv(
GridHostEnv(...))` runs it through host callbacks and gives the same episodes as `GridEnv` for the
same keys (tests/test_self_guide_rollout.py); the warm start's scripted episodes (numpy, in
`algos/self_guide_config.py`) are checked against it step by step in the same test file.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from selfrl_jax.data.grid_nav import DIST_CHARS, MAZE, MOVES, PROGRESS_CHARS, maze_tables
from selfrl_jax.envs.base import EnvStep


@struct.dataclass
class GridState:
  """Attributes: cell_B, goal_B: cell indices; t_B: steps taken; done_B, success_B."""

  cell_B: jax.Array
  goal_B: jax.Array
  t_B: jax.Array
  done_B: jax.Array
  success_B: jax.Array


@dataclasses.dataclass(frozen=True)
class GridSpec:
  """Static settings and token ids shared by both implementations.

  Attributes:
    horizon: steps before the episode ends without success (H).
    slip_prob: probability that a valid move slips.
    digit0_id: id of "0" (digits are consecutive ids, as in the character tokenizer).
    move_ids: ids of "u", "d", "l", "r".
    sep_id: id of ":" (ends an observation).
    pad_id: the tokenizer's pad id.
    dist_ids: ids of `DIST_CHARS` when observations show the BFS distance to the goal, else ().
    progress_ids: ids of `PROGRESS_CHARS` when observations show the last move's progress, else ().
  """

  horizon: int
  slip_prob: float
  digit0_id: int
  move_ids: tuple[int, ...]
  sep_id: int
  pad_id: int
  dist_ids: tuple[int, ...] = ()
  progress_ids: tuple[int, ...] = ()

  @property
  def obs_len(self) -> int:
    return 3 + bool(self.dist_ids) + bool(self.progress_ids)

  @classmethod
  def for_tokenizer(cls, tokenizer, horizon: int, slip_prob: float, show_distance: bool = False,
                    show_progress: bool = False) -> GridSpec:
    """Ids from `tokenizer`. Raises ValueError when the digits are not consecutive single ids."""
    digits = [tokenizer.encode(str(d)) for d in range(10)]
    if any(len(d) != 1 for d in digits) or [d[0] for d in digits] != list(range(digits[0][0], digits[0][0] + 10)):
      raise ValueError("GridSpec: the grid environment needs a tokenizer whose digits are 10 consecutive "
                       "single ids (the character tokenizer).")
    single = lambda ch: tokenizer.encode(ch)[0]  # noqa: E731
    return cls(horizon=horizon, slip_prob=slip_prob, digit0_id=digits[0][0], move_ids=tuple(single(m) for m in MOVES),
               sep_id=single(":"), pad_id=tokenizer.pad_id,
               dist_ids=tuple(single(ch) for ch in DIST_CHARS) if show_distance else (),
               progress_ids=tuple(single(ch) for ch in PROGRESS_CHARS) if show_progress else ())


def _first_action(action_BxN, valid_BxN, move_ids, xp):
  """Index into MOVES of each row's first action id, or -1 (no valid id, or not a move)."""
  has_B = valid_BxN.any(axis=1)
  first_B = xp.take_along_axis(action_BxN, xp.argmax(valid_BxN, axis=1)[:, None], axis=1)[:, 0]
  move_B = xp.full(first_B.shape, -1, xp.int32)
  for k, mid in enumerate(move_ids):
    move_B = xp.where(first_B == mid, k, move_B)
  return xp.where(has_B, move_B, -1)


def _transition(spec: GridSpec, cell_B, goal_B, t_B, done_B, success_B, action_BxN, valid_BxN, uniform_B, xp):
  """One step in numpy or jax.numpy (`xp`); returns the new state fields and the EnvStep fields."""
  tables = maze_tables(MAZE)
  next_cell = xp.asarray(tables.next_cell_Cx4)
  dist = xp.asarray(tables.dist_CxC)
  active_B = ~done_B
  move_B = _first_action(action_BxN, valid_BxN, spec.move_ids, xp)
  invalid_B = active_B & (move_B < 0)
  slip_B = uniform_B < spec.slip_prob
  slip_move_B = xp.minimum((uniform_B / spec.slip_prob * 4).astype(xp.int32), 3)
  move_B = xp.where(slip_B & (move_B >= 0), slip_move_B, move_B)
  moved_B = next_cell[cell_B, xp.maximum(move_B, 0)]
  new_cell_B = xp.where(active_B & (move_B >= 0), moved_B, cell_B)
  before_B, after_B = dist[goal_B, cell_B], dist[goal_B, new_cell_B]
  progress_B = xp.where(active_B, xp.sign(before_B - after_B), 0).astype(xp.int8)
  new_t_B = t_B + active_B.astype(xp.int32)
  reached_B = active_B & (new_cell_B == goal_B)
  new_done_B = done_B | reached_B | (new_t_B >= spec.horizon)
  row_B, col_B = new_cell_B // tables.size, new_cell_B % tables.size
  shown = [spec.digit0_id + row_B, spec.digit0_id + col_B]
  if spec.dist_ids:
    shown.append(xp.asarray(spec.dist_ids)[after_B])
  if spec.progress_ids:
    shown.append(xp.asarray(spec.progress_ids)[1 - progress_B.astype(xp.int32)])
  obs_BxO = xp.stack([*shown, xp.full(row_B.shape, spec.sep_id)], axis=1).astype(xp.int32)
  obs_valid_BxO = xp.broadcast_to((active_B & ~new_done_B)[:, None], obs_BxO.shape)
  obs_BxO = xp.where(obs_valid_BxO, obs_BxO, spec.pad_id)
  new_success_B = success_B | reached_B
  out = dict(obs_BxO=obs_BxO, obs_valid_BxO=obs_valid_BxO, reward_B=reached_B.astype(xp.float32),
             done_B=new_done_B, success_B=new_success_B, score_B=new_success_B.astype(xp.float32),
             invalid_B=invalid_B, progress_B=progress_B, failed_B=xp.zeros(done_B.shape, bool))
  return (new_cell_B, new_t_B, new_done_B, new_success_B), out


def _spec_cells(target_PxA, digit0_id: int, size: int, xp):
  """(goal_P, start_P) cell indices from the answer "<goal row><goal col><start row><start col>"."""
  d = target_PxA[:, :4].astype(xp.int32) - digit0_id
  return d[:, 0] * size + d[:, 1], d[:, 2] * size + d[:, 3]


@dataclasses.dataclass(frozen=True)
class GridEnv:
  """The grid as a JAX environment (`envs/base.Env`)."""

  spec: GridSpec
  has_progress = True   # BFS distance to the goal: the ground truth guidance calibration is measured against

  @property
  def obs_len(self) -> int:
    return self.spec.obs_len

  def reset(self, batch, group_size: int, key: jax.Array) -> GridState:
    del key  # the start is the task's; only the slips are random
    goal_P, start_P = _spec_cells(jnp.asarray(batch.target_tokens_PxA), self.spec.digit0_id, maze_tables().size, jnp)
    rep = lambda x: jnp.repeat(x, group_size, axis=0)  # noqa: E731
    b = goal_P.shape[0] * group_size
    return GridState(cell_B=rep(start_P), goal_B=rep(goal_P), t_B=jnp.zeros((b,), jnp.int32),
                     done_B=jnp.zeros((b,), bool), success_B=jnp.zeros((b,), bool))

  def step(self, state: GridState, action_BxN, action_valid_BxN, key) -> tuple[GridState, EnvStep]:
    uniform_B = jax.random.uniform(key, state.cell_B.shape)
    (cell, t, done, success), out = _transition(self.spec, state.cell_B, state.goal_B, state.t_B, state.done_B,
                                                state.success_B, action_BxN, action_valid_BxN.astype(bool),
                                                uniform_B, jnp)
    return state.replace(cell_B=cell, t_B=t, done_B=done, success_B=success), EnvStep(**out)


class GridHostEnv:
  """The grid on the host (numpy), behind `envs/base.HostEnv`; the same dynamics as `GridEnv`."""

  has_progress = True

  def __init__(self, spec: GridSpec):
    self.spec = spec
    self.obs_len = spec.obs_len
    self.state = None

  def reset(self, example_id_P, target_PxA, group_size: int, seed: int) -> None:
    del example_id_P, seed
    goal_P, start_P = _spec_cells(np.asarray(target_PxA), self.spec.digit0_id, maze_tables().size, np)
    b = goal_P.shape[0] * group_size
    self.state = (np.repeat(start_P, group_size), np.repeat(goal_P, group_size), np.zeros(b, np.int32),
                  np.zeros(b, bool), np.zeros(b, bool))

  def step(self, action_BxN, action_valid_BxN, uniform_B) -> EnvStep:
    cell, goal, t, done, success = self.state
    (cell, t, done, success), out = _transition(self.spec, cell, goal, t, done, success, np.asarray(action_BxN),
                                                np.asarray(action_valid_BxN, bool), np.asarray(uniform_B), np)
    self.state = (cell, goal, t, done, success)
    return EnvStep(**out)
