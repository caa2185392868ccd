"""Group-relative advantage estimators over a [P, G] reward grid (P prompts, G rollouts each).

    adv_PxG = compute_advantages("grpo", rewards_PxG)          # registry key from the config
    adv_PxG = compute_advantages("rloo", rewards_PxG, valid_PxG=valid_PxG)   # padded groups

Every estimator takes an optional `valid_PxG` mask for groups padded to a static size G (e.g. a
group that gains or loses rollouts): invalid rollouts get advantage 0 and are left out of every
mean, std and count. All functions are pure and jittable; math is float32.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

AdvantageFn = Callable[..., jax.Array]


def _prepare(rewards_PxG: jax.Array, valid_PxG: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  rewards_PxG = jnp.asarray(rewards_PxG)
  if rewards_PxG.ndim != 2:
    raise ValueError(
        f"rewards_PxG must be 2-D [prompts, group_size], got shape {tuple(rewards_PxG.shape)}.")
  if valid_PxG is None:
    valid_PxG = jnp.ones(rewards_PxG.shape, bool)
  else:
    valid_PxG = jnp.asarray(valid_PxG)
    if valid_PxG.shape != rewards_PxG.shape:
      raise ValueError(
          f"valid_PxG shape {tuple(valid_PxG.shape)} must equal rewards_PxG shape "
          f"{tuple(rewards_PxG.shape)}.")
    valid_PxG = valid_PxG.astype(bool)
  # Zero invalid entries first so NaN/garbage in padding never reaches a sum.
  return jnp.where(valid_PxG, rewards_PxG.astype(jnp.float32), 0.0), valid_PxG


def _group_stats(r_PxG: jax.Array, valid_PxG: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-group count, mean and population std (ddof=0) over valid rollouts, each [P, 1]."""
  n_Px1 = valid_PxG.sum(axis=1, keepdims=True).astype(jnp.float32)
  mean_Px1 = r_PxG.sum(axis=1, keepdims=True) / jnp.maximum(n_Px1, 1.0)
  sq_PxG = jnp.where(valid_PxG, (r_PxG - mean_Px1) ** 2, 0.0)
  std_Px1 = jnp.sqrt(sq_PxG.sum(axis=1, keepdims=True) / jnp.maximum(n_Px1, 1.0))
  return n_Px1, mean_Px1, std_Px1


def grpo(rewards_PxG, *, eps: float = 1e-6, valid_PxG=None) -> jax.Array:
  """GRPO (Shao et al. 2024, eq. 3): A_j = (r_j - mean(r)) / (std(r) + eps) within each group.

  `std` is the population std (ddof=0); with G=2 and rewards {0, 1} this gives A = +-1.
  """
  r_PxG, valid_PxG = _prepare(rewards_PxG, valid_PxG)
  _, mean_Px1, std_Px1 = _group_stats(r_PxG, valid_PxG)
  return jnp.where(valid_PxG, (r_PxG - mean_Px1) / (std_Px1 + eps), 0.0)


def dr_grpo(rewards_PxG, *, eps: float = 1e-6, valid_PxG=None) -> jax.Array:
  """Dr. GRPO (Liu et al. 2025): A_j = r_j - mean(r); no std division (removes difficulty bias)."""
  del eps
  r_PxG, valid_PxG = _prepare(rewards_PxG, valid_PxG)
  _, mean_Px1, _ = _group_stats(r_PxG, valid_PxG)
  return jnp.where(valid_PxG, r_PxG - mean_Px1, 0.0)


def rloo(rewards_PxG, *, eps: float = 1e-6, valid_PxG=None) -> jax.Array:
  """RLOO (Ahmadian et al. 2024): A_j = r_j - mean_{i != j} r_i = n/(n-1) (r_j - mean(r)).

  n is the group's number of valid rollouts; a group with n < 2 has no leave-one-out baseline and
  gets advantage 0. Needs a static group size G >= 2.
  """
  del eps
  r_PxG, valid_PxG = _prepare(rewards_PxG, valid_PxG)
  if r_PxG.shape[1] < 2:
    raise ValueError(f"rloo needs group_size >= 2 (leave-one-out baseline), got rewards_PxG shape "
                     f"{tuple(r_PxG.shape)}.")
  n_Px1, mean_Px1, _ = _group_stats(r_PxG, valid_PxG)
  scale_Px1 = jnp.where(n_Px1 >= 2, n_Px1 / jnp.maximum(n_Px1 - 1.0, 1.0), 0.0)
  return jnp.where(valid_PxG, scale_Px1 * (r_PxG - mean_Px1), 0.0)


def reinforce(rewards_PxG, *, eps: float = 1e-6, valid_PxG=None) -> jax.Array:
  """REINFORCE with a batch-mean baseline: A_j = r_j - mean over all valid P*G rollouts."""
  del eps
  r_PxG, valid_PxG = _prepare(rewards_PxG, valid_PxG)
  mean = r_PxG.sum() / jnp.maximum(valid_PxG.sum(), 1).astype(jnp.float32)
  return jnp.where(valid_PxG, r_PxG - mean, 0.0)


ADVANTAGES: dict[str, AdvantageFn] = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "reinforce": reinforce,
}


def get_advantage_fn(name: str) -> AdvantageFn:
  """The estimator registered under `name` (config key)."""
  if name not in ADVANTAGES:
    raise ValueError(f"Unknown advantage estimator {name!r}; valid keys: {sorted(ADVANTAGES)}.")
  return ADVANTAGES[name]


def compute_advantages(name: str, rewards_PxG, *, eps: float = 1e-6, valid_PxG=None) -> jax.Array:
  """Advantages [P, G] from rewards [P, G] with the estimator registered under `name`."""
  return get_advantage_fn(name)(rewards_PxG, eps=eps, valid_PxG=valid_PxG)


def zero_std_group_fraction(rewards_PxG, valid_PxG=None) -> jax.Array:
  """Fraction of groups whose valid rewards are all equal (no learning signal for group baselines).

  A group with fewer than two valid rollouts counts as zero-std. Exact equality (max == min), so
  float rewards that differ by rounding noise count as different.
  """
  r_PxG, valid_PxG = _prepare(rewards_PxG, valid_PxG)
  hi_P = jnp.where(valid_PxG, r_PxG, -jnp.inf).max(axis=1)
  lo_P = jnp.where(valid_PxG, r_PxG, jnp.inf).min(axis=1)
  flat_P = (valid_PxG.sum(axis=1) < 2) | (hi_P == lo_P)
  return flat_P.astype(jnp.float32).mean()
