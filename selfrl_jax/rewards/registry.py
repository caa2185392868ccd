"""Jittable reward functions keyed by config string: `reward_fn(rollout, batch) -> rewards_B`.

Host-side verifiers (math-verify, sandboxed code) run in split mode, or inside the fused step
through `host_reward_callback`, which wraps a numpy function with `jax.pure_callback`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from selfrl_jax.rewards.exact_match import exact_match_reward
from selfrl_jax.rollouts.types import Rollout

RewardFn = Callable[[Rollout, dict], jax.Array]


def _group_size(rollout: Rollout, batch: dict) -> int:
  """Rollouts per prompt, from static shapes (rows are prompt-major)."""
  return rollout.batch_size // batch.prompt_tokens_PxT.shape[0]


def exact_match(stop_ids: Sequence[int]) -> RewardFn:
  """1 iff the last turn's answer tokens equal the target tokens (synthetic tasks)."""
  def fn(rollout: Rollout, batch: dict) -> jax.Array:
    group_size = _group_size(rollout, batch)
    target_BxA = jnp.repeat(batch.target_tokens_PxA, group_size, axis=0)
    # target_len counts the EOS the targets end with; the answer excludes the stop token.
    target_len_B = jnp.repeat(batch.target_len_P, group_size, axis=0) - 1
    return exact_match_reward(rollout.response_tokens_BxN, rollout.response_valid_BxN, target_BxA,
                              target_len_B, stop_ids=tuple(stop_ids))
  return fn


def host_reward_callback(host_fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> RewardFn:
  """Runs `host_fn(response_tokens_BxN, response_valid_BxN, example_id_B) -> rewards_B` on the host.

  The callback lets a Python verifier sit inside the fused compiled step. It must be
  deterministic and must not raise: wrap it with a guard that scores failures 0 and counts them.
  """
  def fn(rollout: Rollout, batch: dict) -> jax.Array:
    example_id_B = jnp.repeat(batch.example_id_P, _group_size(rollout, batch), axis=0)
    shape = jax.ShapeDtypeStruct((rollout.batch_size,), jnp.float32)
    return jax.pure_callback(lambda *a: np.asarray(host_fn(*a), np.float32), shape,
                             rollout.response_tokens_BxN, rollout.response_valid_BxN, example_id_B)
  fn.counters = getattr(host_fn, "counters", {})  # live view: the loop logs them as host/<name>
  return fn


REWARDS = {"exact_match": exact_match}


def get_reward_fn(name: str, **kwargs) -> RewardFn:
  if name not in REWARDS:
    raise ValueError(f"Unknown reward {name!r}; valid: {sorted(REWARDS)}.")
  return REWARDS[name](**kwargs)
