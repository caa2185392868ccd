"""The text-environment interface agent episodes step through, token in and token out.

An environment is a frozen dataclass with static sizes and two pure functions over a state pytree
whose leaves have a leading batch dimension B = P * G (rows prompt-major, like every rollout):

    state = env.reset(batch, group_size, key)                      # the G rollouts of a task share it
    state, out = env.step(state, action_BxN, action_valid_BxN, key)  # out: EnvStep

`action_BxN` holds the ids the policy generated for this step and `action_valid_BxN` marks the action
part of them (after the guidance segment); the environment parses the action from those ids and
returns the next observation as ids (`obs_BxO`, at most `obs_len`, holes where shorter). Rows that
are done stay done: later steps return no observation, reward 0, and the same state.

A JAX environment (`envs/grid.py`) is traced into the episode's `lax.scan`, so the whole episode is
one compiled loop. A host environment (Python, Java processes) implements `HostEnv` on numpy arrays
and enters the same loop through `CallbackEnv`, an `io_callback` per step, in fused and split mode
alike (the callback returns to the same loop, so a host environment never multiplies compiled
programs by the number of steps).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import io_callback

log = logging.getLogger(__name__)


@struct.dataclass
class EnvStep:
  """What one environment step returns for every row.

  Attributes:
    obs_BxO: observation ids appended after the action (pad where `obs_valid_BxO` is False).
    obs_valid_BxO: real observation ids: at least one on every row that goes on (the next step is
      sampled after the last appended id), none on rows that are done.
    reward_B: this step's environment reward (the terminal reward on the step that ends the episode).
    done_B: the episode has ended (goal reached, failed, out of steps, or the environment failed).
    success_B: the episode ended successfully (False until it does).
    score_B: the environment's score so far, normalised to [0, 1] (= success where it has none).
    invalid_B: the action could not be parsed or is not admissible (counted, penalised by the config).
    progress_B: ground-truth progress of this step's action, +1 closer / 0 no change / -1 farther
      (int8; 0 where the environment has no notion of progress).
    failed_B: the environment raised or timed out on this row (its episode ends; counted).
  """

  obs_BxO: jax.Array
  obs_valid_BxO: jax.Array
  reward_B: jax.Array
  done_B: jax.Array
  success_B: jax.Array
  score_B: jax.Array
  invalid_B: jax.Array
  progress_B: jax.Array
  failed_B: jax.Array


def env_step_shapes(batch_size: int, obs_len: int) -> EnvStep:
  """`jax.ShapeDtypeStruct`s of an EnvStep (what a host callback must return)."""
  s = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
  b = (batch_size,)
  return EnvStep(obs_BxO=s((batch_size, obs_len), jnp.int32), obs_valid_BxO=s((batch_size, obs_len), jnp.bool_),
                 reward_B=s(b, jnp.float32), done_B=s(b, jnp.bool_), success_B=s(b, jnp.bool_),
                 score_B=s(b, jnp.float32), invalid_B=s(b, jnp.bool_), progress_B=s(b, jnp.int8),
                 failed_B=s(b, jnp.bool_))


def failed_step(batch_size: int, obs_len: int) -> EnvStep:
  """An EnvStep (numpy) that ends every row as failed: no observation, reward 0."""
  zeros = lambda dtype: np.zeros(batch_size, dtype)  # noqa: E731
  return EnvStep(obs_BxO=np.zeros((batch_size, obs_len), np.int32), obs_valid_BxO=np.zeros((batch_size, obs_len), bool),
                 reward_B=zeros(np.float32), done_B=np.ones(batch_size, bool), success_B=zeros(bool),
                 score_B=zeros(np.float32), invalid_B=zeros(bool), progress_B=zeros(np.int8),
                 failed_B=np.ones(batch_size, bool))


class Env(Protocol):
  """A batched text environment (see module docstring). `has_progress`: its steps report a
  ground-truth `progress_B` (guidance calibration is measured only then)."""

  obs_len: int
  has_progress: bool

  def reset(self, batch: Any, group_size: int, key: jax.Array) -> Any: ...

  def step(self, state: Any, action_BxN: jax.Array, action_valid_BxN: jax.Array, key: jax.Array
           ) -> tuple[Any, EnvStep]: ...


class HostEnv(Protocol):
  """A batched environment on the host (numpy in, numpy out); `CallbackEnv` runs it inside the episode.

  `reset(example_id_P, target_PxA, group_size, seed)` starts P * G episodes (the G rollouts of a
  task share its seed) and `step(action_BxN, action_valid_BxN, uniform_B)` returns an `EnvStep` of
  numpy arrays with `obs_len` observation slots. `uniform_B` is one U(0, 1) draw per row from the
  episode's key, for environments whose randomness should follow the JAX keys (others ignore it).
  Neither may raise: a row whose environment fails ends its episode with `failed_B` set.
  """

  obs_len: int
  has_progress: bool

  def reset(self, example_id_P: np.ndarray, target_PxA: np.ndarray, group_size: int, seed: int) -> None: ...

  def step(self, action_BxN: np.ndarray, action_valid_BxN: np.ndarray, uniform_B: np.ndarray) -> EnvStep: ...


@dataclasses.dataclass(frozen=True, eq=False)
class CallbackEnv:
  """A `HostEnv` as an `Env`: reset and each step are `io_callback`s ordered by data dependence.

  The device-side state is a step counter that threads the callbacks in order (each step consumes
  the previous step's output), so XLA can neither reorder nor drop them. A `step` that raises
  anyway ends every episode still running with `failed_B` set (logged, counted in
  `counters["env_step_errors"]`), and a row that goes on without an observation id is ended the
  same way (`counters["empty_observations"]`); the iteration goes on. `counters["host_seconds"]`
  adds up the wall time spent in the host environment's reset and step (where an episode's time goes).
  """

  host: Any
  counters: dict = dataclasses.field(default_factory=lambda: {"env_step_errors": 0, "empty_observations": 0,
                                                              "host_seconds": 0.0})

  @property
  def obs_len(self) -> int:
    return self.host.obs_len

  @property
  def has_progress(self) -> bool:
    return self.host.has_progress

  def reset(self, batch: Any, group_size: int, key: jax.Array) -> jax.Array:
    seed = jax.random.randint(key, (), 0, 2**31 - 1, jnp.int32)

    def host_reset(example_id_P, target_PxA, seed_):
      start = time.perf_counter()
      self.host.reset(example_id_P, target_PxA, group_size, int(seed_))
      self.counters["host_seconds"] += time.perf_counter() - start
      return np.zeros((), np.int32)

    return io_callback(host_reset, jax.ShapeDtypeStruct((), jnp.int32), batch.example_id_P,
                       batch.target_tokens_PxA, seed)

  def step(self, state: jax.Array, action_BxN: jax.Array, action_valid_BxN: jax.Array, key: jax.Array
           ) -> tuple[jax.Array, EnvStep]:
    b = action_BxN.shape[0]
    shapes = env_step_shapes(b, self.obs_len)

    def host_step(counter, action, valid, uniform):
      start = time.perf_counter()
      try:
        out = self.host.step(np.asarray(action), np.asarray(valid, bool), np.asarray(uniform))
      except Exception:  # pylint: disable=broad-except  (an environment must never stop training)
        self.counters["env_step_errors"] += 1
        log.exception("CallbackEnv: %s.step raised at step %d; ending the running episodes as failed.",
                      type(self.host).__name__, int(counter))
        out = failed_step(b, self.obs_len)
      out = jax.tree.map(lambda x, s: np.asarray(x, s.dtype).reshape(s.shape), out, shapes)
      empty = ~out.done_B & ~out.obs_valid_BxO.any(axis=1)
      if empty.any():
        self.counters["empty_observations"] += int(empty.sum())
        log.warning("CallbackEnv: %d rows of %s went on without an observation; ended as failed.",
                    int(empty.sum()), type(self.host).__name__)
        out = out.replace(done_B=out.done_B | empty, failed_B=out.failed_B | empty)
      self.counters["host_seconds"] += time.perf_counter() - start
      return out

    out = io_callback(host_step, shapes, state, action_BxN, action_valid_BxN, jax.random.uniform(key, (b,)))
    return state + 1, out
