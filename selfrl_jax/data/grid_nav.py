"""Grid navigation tasks: the sparse grid with slips of self_guide.md §11, as text records.

    task = make_task("grid_nav", min_dist=4, max_dist=8)
    task.record("train", 0)   # {"prompt": "61>34:", "answer": "6134", "meta": '{"goal": [6, 1], ...}'}

A task is a start and a goal cell of one fixed 7 x 7 maze (`MAZE`). The prompt is "<goal row><goal
col>><start row><start col>:", the answer the task's spec "<goal row><goal col><start row><start
col>" (digits): the JAX environment (`envs/grid.py`) resets from it, so the whole episode needs no
host lookup. Start and goal are at BFS distance [min_dist, max_dist] (moves, around walls).

With `show_distance=True` every cell the agent is shown (the prompt's start, and the environment's
observations) carries its BFS distance to the goal as one character of `DIST_CHARS` ("61>445:": the
start 44 is 5 moves away), so "did the last move bring me closer?" is a comparison of two characters
instead of a BFS over the maze the model would have to memorise.

With `show_progress=True` the environment's observation after a move also carries one character of
`PROGRESS_CHARS` saying whether that move brought the agent closer to the goal, kept it at the same
BFS distance, or took it farther ("34^:"): the judgement the guidance label makes can then be read
off the context, as a language model reads it off a text game's observation. The prompt is
unchanged (there is no move to judge yet).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from selfrl_jax.data.records import make_record
from selfrl_jax.data.tasks import Task, TaskConfig, register_task

# '#' is a wall. Every free cell is reachable from every other (checked in `maze_tables`).
MAZE = (
    ".......",
    ".##.#..",
    ".#..#.#",
    "...##..",
    ".#.....",
    ".#.##.#",
    "...#...",
)
DIST_CHARS = "0123456789abc"                         # BFS distance 0..12 as one character
PROGRESS_CHARS = "^~v"                               # the last move: closer, same distance, farther
MOVES = "udlr"                                     # action characters, in this order
_DELTAS = ((-1, 0), (1, 0), (0, -1), (0, 1))        # (row, col) step of each move


@dataclasses.dataclass(frozen=True)
class MazeTables:
  """Static tables of `MAZE` (cells indexed row * width + col).

  Attributes:
    size: rows = cols.
    free_C: the cell is not a wall.
    next_cell_Cx4: the cell a move leads to (the same cell into a wall or off the grid).
    dist_CxC: BFS distance in moves, dist[goal, cell] (size ** 2 for walls).
  """

  size: int
  free_C: np.ndarray
  next_cell_Cx4: np.ndarray
  dist_CxC: np.ndarray


@functools.lru_cache(maxsize=None)
def maze_tables(maze: tuple[str, ...] = MAZE) -> MazeTables:
  """Tables of `maze`. Raises ValueError when it is not square or its free cells are not connected."""
  n = len(maze)
  if any(len(row) != n for row in maze):
    raise ValueError(f"maze_tables: the maze must be square, got row lengths {[len(r) for r in maze]}.")
  free = np.array([[ch != "#" for ch in row] for row in maze]).reshape(-1)
  nxt = np.zeros((n * n, 4), np.int32)
  for cell in range(n * n):
    r, c = divmod(cell, n)
    for k, (dr, dc) in enumerate(_DELTAS):
      rr, cc = r + dr, c + dc
      ok = 0 <= rr < n and 0 <= cc < n and free[rr * n + cc]
      nxt[cell, k] = rr * n + cc if ok else cell
  far = n * n
  dist = np.full((n * n, n * n), far, np.int32)
  for goal in np.flatnonzero(free):
    dist[goal, goal], frontier = 0, [goal]
    while frontier:
      new = []
      for cell in frontier:
        for k in range(4):
          j = nxt[cell, k]
          if dist[goal, j] == far:
            dist[goal, j] = dist[goal, cell] + 1
            new.append(j)
      frontier = new
  if (dist[np.ix_(free, free)] == far).any():
    raise ValueError("maze_tables: some free cells cannot reach each other.")
  return MazeTables(size=n, free_C=free, next_cell_Cx4=nxt, dist_CxC=dist)


def cell_text(cell: int, size: int = len(MAZE), goal: int | None = None) -> str:
  """"<row><col>" of a cell index; with `goal`, followed by the cell's BFS distance to it (`DIST_CHARS`)."""
  r, c = divmod(int(cell), size)
  return f"{r}{c}" if goal is None else f"{r}{c}{DIST_CHARS[maze_tables().dist_CxC[goal, cell]]}"


def observation_text(cell: int, goal: int, progress: int, show_distance: bool, show_progress: bool) -> str:
  """The environment's observation after a move, as text: "<row><col>[<distance>][<progress>]:".

  `progress` is the move's sign of distance decrease (+1 closer, 0 same, -1 farther), shown as
  `PROGRESS_CHARS[1 - progress]` when `show_progress`. `envs/grid.py` renders the same ids.
  """
  cue = PROGRESS_CHARS[1 - progress] if show_progress else ""
  return cell_text(cell, goal=goal if show_distance else None) + cue + ":"


@dataclasses.dataclass(frozen=True)
class GridNavConfig(TaskConfig):
  """Attributes:
    min_dist / max_dist: BFS distance between start and goal (moves).
    show_distance: shown cells carry their BFS distance to the goal (the environment reads this too).
    show_progress: observations after a move say whether it brought the agent closer (the
      environment reads this; prompts are unchanged).
  """

  min_dist: int = 4
  max_dist: int = 8
  show_distance: bool = False
  show_progress: bool = False


@register_task
class GridNav(Task):
  name = "grid_nav"
  version = "1.0.0"
  config_cls = GridNavConfig

  def validate(self) -> None:
    c = self.config
    longest = int(maze_tables().dist_CxC[np.ix_(maze_tables().free_C, maze_tables().free_C)].max())
    if not 1 <= c.min_dist <= c.max_dist <= longest:
      raise ValueError(f"grid_nav: need 1 <= min_dist <= max_dist <= {longest} (the maze's longest "
                       f"distance), got min_dist={c.min_dist}, max_dist={c.max_dist}.")
    if longest >= len(DIST_CHARS):
      raise ValueError(f"grid_nav: the maze's longest distance {longest} has no character in DIST_CHARS.")

  def generate(self, rng: np.random.Generator, index: int) -> dict[str, str]:
    del index
    t = maze_tables()
    free = np.flatnonzero(t.free_C)
    while True:
      goal, start = rng.choice(free, 2, replace=False)
      if self.config.min_dist <= t.dist_CxC[goal, start] <= self.config.max_dist:
        break
    g, s = cell_text(goal), cell_text(start)
    shown = cell_text(start, goal=goal) if self.config.show_distance else s
    meta = {"goal": [int(goal) // t.size, int(goal) % t.size], "start": [int(start) // t.size, int(start) % t.size],
            "dist": int(t.dist_CxC[goal, start])}
    return make_record(prompt=f"{g}>{shown}:", answer=f"{g}{s}", meta=meta)
