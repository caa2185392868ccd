"""Group-relative advantage estimators over a [P, G] reward grid (P prompts, G rollouts each).

    adv_PxG = compute_advantages("grpo", rewards_PxG)          # registry key from the config
    adv_PxG = compute_advantages("rloo", rewards_PxG, valid_PxG=valid_PxG)   # padded groups

Every estimator takes an optional `valid_PxG` mask for groups padded to a static size G (e.g. a
group that gains or loses rollouts): invalid rollouts get advantage 0 and are left out of every
mean, std and count. All functions are pure and jittable; math is float32.

A group whose valid rewards are all equal gets advantage exactly 0 for every member, whatever the
estimator, group size or reward magnitude. Without that, the float32 mean of equal non-dyadic
rewards (10.1, 2/3) differs from them by an ulp, the std is ~1 ulp, and GRPO's
(r - mean) / (std + eps) turns rounding noise into advantages near ±1 (a bias of up to 0.5 per
token). `zero_std_group_fraction` uses the same flatness test, so the metric and the advantages
agree on which groups carry no signal.
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


def flat_groups(rewards_PxG, valid_PxG=None) -> jax.Array:
  """bool [P, 1]: the group's valid rewards are all exactly equal (or it has < 2 valid rollouts)."""
  r_PxG, valid_PxG = _prepare(rewards_PxG, valid_PxG)
  hi_Px1 = jnp.where(valid_PxG, r_PxG, -jnp.inf).max(axis=1, keepdims=True)
  lo_Px1 = jnp.where(valid_PxG, r_PxG, jnp.inf).min(axis=1, keepdims=True)
  return (valid_PxG.sum(axis=1, keepdims=True) < 2) | (hi_Px1 == lo_Px1)


def _group_stats(r_PxG: jax.Array, valid_PxG: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-group count, centred rewards r - mean and population std (ddof=0), over valid rollouts.

  Returns n_Px1, centred_PxG, std_Px1. A flat group (see `flat_groups`) has centred rewards and
  std exactly 0, not the ulp-sized rounding of its float32 mean.
  """
  n_Px1 = valid_PxG.sum(axis=1, keepdims=True).astype(jnp.float32)
  mean_Px1 = r_PxG.sum(axis=1, keepdims=True) / jnp.maximum(n_Px1, 1.0)
  flat_Px1 = flat_groups(r_PxG, valid_PxG)
  centred_PxG = jnp.where(valid_PxG & ~flat_Px1, r_PxG - mean_Px1, 0.0)
  std_Px1 = jnp.sqrt((centred_PxG ** 2).sum(axis=1, keepdims=True) / jnp.maximum(n_Px1, 1.0))
  return n_Px1, centred_PxG, std_Px1


def grpo(rewards_PxG, *, eps: float = 1e-6, valid_PxG=None) -> jax.Array:
  """GRPO (Shao et al. 2024, eq. 3): A_j = (r_j - mean(r)) / (std(r) + eps) within each group.

  `std` is the population std (ddof=0); with G=2 and rewards {0, 1} this gives A = +-1.
  """
  r_PxG, valid_PxG = _prepare(rewards_PxG, valid_PxG)
  _, centred_PxG, std_Px1 = _group_stats(r_PxG, valid_PxG)
  return centred_PxG / (std_Px1 + eps)


def grpo_sample_std(rewards_PxG, *, eps: float = 1e-6, valid_PxG=None) -> jax.Array:
  """GRPO as verl / EasyR1 compute it: A_j = (r_j - mean(r)) / (std(r) + eps) with the sample std
  (ddof=1, torch.std's default); a group with one valid rollout gets std 1 (mean 0 and A = 0 here,
  since a one-rollout group is flat)."""
  r_PxG, valid_PxG = _prepare(rewards_PxG, valid_PxG)
  n_Px1, centred_PxG, std_Px1 = _group_stats(r_PxG, valid_PxG)
  sample_std_Px1 = jnp.where(n_Px1 >= 2, std_Px1 * jnp.sqrt(n_Px1 / jnp.maximum(n_Px1 - 1.0, 1.0)), 1.0)
  return centred_PxG / (sample_std_Px1 + eps)


def dr_grpo(rewards_PxG, *, eps: float = 1e-6, valid_PxG=None) -> jax.Array:
  """Dr. GRPO (Liu et al. 2025): A_j = r_j - mean(r); no std division (removes difficulty bias)."""
  del eps
  r_PxG, valid_PxG = _prepare(rewards_PxG, valid_PxG)
  return _group_stats(r_PxG, valid_PxG)[1]


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
  n_Px1, centred_PxG, _ = _group_stats(r_PxG, valid_PxG)
  scale_Px1 = jnp.where(n_Px1 >= 2, n_Px1 / jnp.maximum(n_Px1 - 1.0, 1.0), 0.0)
  return scale_Px1 * centred_PxG


def reinforce(rewards_PxG, *, eps: float = 1e-6, valid_PxG=None) -> jax.Array:
  """REINFORCE with a batch-mean baseline: A_j = r_j - mean over all valid P*G rollouts.

  The whole batch is one group here: equal rewards everywhere give exactly 0."""
  del eps
  r_PxG, valid_PxG = _prepare(rewards_PxG, valid_PxG)
  r_1xB, valid_1xB = r_PxG.reshape(1, -1), valid_PxG.reshape(1, -1)
  return _group_stats(r_1xB, valid_1xB)[1].reshape(r_PxG.shape)


ADVANTAGES: dict[str, AdvantageFn] = {
    "grpo": grpo,
    "grpo_sample_std": grpo_sample_std,
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
  float rewards that differ by rounding noise count as different; these are exactly the groups the
  estimators give advantage 0.
  """
  return flat_groups(rewards_PxG, valid_PxG).astype(jnp.float32).mean()
