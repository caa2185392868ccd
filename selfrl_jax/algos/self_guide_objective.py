"""Self-Guide's objective as pure functions (self_guide.md §2, §7, §10.1).

    lam = trust_lambda(step, schedule)                                   # λ(u), the trust schedule
    polarity_BxH, ok_BxH = parse_polarity(step_tokens_BxHxN, guide_BxHxN, label_ids)
    r_sg_BxH = internal_rewards(polarity_BxH, step_mask_BxH, scale=0.1, skip_first=True)
    R_B = combined_return(R_env_B, r_sg_BxH, counted_BxH, lam, agg="sum")  # R = R_env + λ Σ_t r_sg
    A_PxG = grpo_sample_std(R_B.reshape(P, G))                            # trajectory-level GRPO

Names follow the spec: u is the training step, r_sg the per-step internal reward, R_env the
environment's reward, λ(u) the trust in the self-guidance.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from selfrl_jax.algos.advantages import compute_advantages

SCHEDULES = ("trapezoid", "immediate", "no_anneal", "early_entry", "zero")
AGGREGATIONS = ("sum", "mean", "sum_clipped")


@dataclasses.dataclass(frozen=True)
class TrustSchedule:
  """λ(u) over training steps u (§2 table, §7 item 7).

  Attributes:
    kind: "trapezoid" (0 until warm_end, linear to 1 at ramp_end, 1 until full_end, linear to 0 at
      anneal_end, 0 after), "immediate" (λ ≡ 1 from step 0), "no_anneal" (the trapezoid that stays 1
      after full_end), "early_entry" (the trapezoid with its ramp moved to start at `entry`, same
      length), "zero" (λ ≡ 0: "GRPO w/ SG").
    warm_end, ramp_end, full_end, anneal_end: the breakpoints (paper: 40 / 50 / 70 / 80).
    entry: the ramp's start for "early_entry" (paper ablation: 15 or 25).
  """

  kind: str = "trapezoid"
  warm_end: float = 40
  ramp_end: float = 50
  full_end: float = 70
  anneal_end: float = 80
  entry: float = 15

  def __post_init__(self):
    if self.kind not in SCHEDULES:
      raise ValueError(f"TrustSchedule.kind must be one of {SCHEDULES}, got {self.kind!r}.")
    points = self.breakpoints()
    if any(b < a for a, b in zip(points, points[1:])) or points[0] < 0:
      raise ValueError(f"TrustSchedule: breakpoints must be >= 0 and non-decreasing, got {points} "
                       f"(kind={self.kind!r}).")

  def breakpoints(self) -> tuple[float, float, float, float]:
    if self.kind == "early_entry":
      return (self.entry, self.entry + self.ramp_end - self.warm_end, self.full_end, self.anneal_end)
    return (self.warm_end, self.ramp_end, self.full_end, self.anneal_end)


def trust_lambda(u: jax.Array, schedule: TrustSchedule) -> jax.Array:
  """λ(u) as float32 (jittable in u). A zero-length ramp or anneal is a step (λ jumps at it)."""
  u = jnp.asarray(u, jnp.float32)
  if schedule.kind == "immediate":
    return jnp.ones_like(u)
  if schedule.kind == "zero":
    return jnp.zeros_like(u)
  w, r, f, a = schedule.breakpoints()
  up = jnp.where(u >= r, 1.0, jnp.clip((u - w) / max(r - w, 1e-9), 0.0, 1.0))
  if schedule.kind == "no_anneal":
    return up
  down = jnp.where(u >= a, 0.0, jnp.clip((a - u) / max(a - f, 1e-9), 0.0, 1.0))
  return jnp.minimum(up, down)


def _label_starts(tokens_BxHxN: jax.Array, label: Sequence[int]) -> jax.Array:
  """Whether `label` (a run of ids) starts at each position (it must fit inside the segment)."""
  n = tokens_BxHxN.shape[-1]
  hit = jnp.ones(tokens_BxHxN.shape, bool)
  for k, lid in enumerate(label):
    shifted = jnp.pad(tokens_BxHxN[..., k:], [(0, 0)] * (tokens_BxHxN.ndim - 1) + [(0, k)], constant_values=-1)
    hit = hit & (shifted == lid)
  return hit & (jnp.arange(n) <= n - len(label))


def parse_polarity(step_tokens_BxHxN: jax.Array, guide_BxHxN: jax.Array,
                   label_ids: tuple[Sequence[int], Sequence[int], Sequence[int]]) -> tuple[jax.Array, jax.Array]:
  """Polarity of each step's guidance: the first label that starts inside the guidance segment (§3).

  Args:
    step_tokens_BxHxN: ids generated at each step.
    guide_BxHxN: ids of the guidance segment (`rollouts.agent.guide_mask`).
    label_ids: ids of the positive, neutral and negative labels (e.g. "[POSITIVE]" encoded), each a
      run of one or more ids, matched token for token.

  Returns:
    (polarity_BxH int8 in {+1, 0, -1}, parsed_BxH: a label was found; a malformed guide (no label)
    gets polarity 0 and parsed False, which the metrics count).
  """
  n = step_tokens_BxHxN.shape[-1]
  first_B = []
  for label in label_ids:
    starts = _label_starts(step_tokens_BxHxN, label) & guide_BxHxN
    first_B.append(jnp.where(starts.any(-1), jnp.argmax(starts, axis=-1), n))
  first_LxBxH = jnp.stack(first_B)
  parsed_BxH = first_LxBxH.min(0) < n
  sign_L = jnp.asarray([1, 0, -1], jnp.int8)
  polarity_BxH = jnp.where(parsed_BxH, sign_L[jnp.argmin(first_LxBxH, axis=0)], 0).astype(jnp.int8)
  return polarity_BxH, parsed_BxH


def counted_steps(step_mask_BxH: jax.Array, skip_first: bool) -> jax.Array:
  """Steps whose guidance counts as reward: played steps, minus t = 1 with `skip_first` (§7 item 9:
  the first guidance has no previous action to judge)."""
  mask = step_mask_BxH.astype(bool)
  return mask.at[:, 0].set(False) if skip_first else mask


def internal_rewards(polarity_BxH: jax.Array, step_mask_BxH: jax.Array, scale: float = 0.1,
                     skip_first: bool = True) -> jax.Array:
  """r_sg_t = scale · polarity_t on counted steps, 0 elsewhere (float32 [B, H]; §2 polarity mapping)."""
  counted = counted_steps(step_mask_BxH, skip_first)
  return jnp.where(counted, scale * polarity_BxH.astype(jnp.float32), 0.0)


def aggregate(r_sg_BxH: jax.Array, counted_BxH: jax.Array, agg: str) -> jax.Array:
  """R_sg(τ) [B]: "sum" over steps (paper), "mean" over counted steps (0 with none), or
  "sum_clipped" (the sum clipped to [-1, 1], at most the size of a success reward; §7 item 2)."""
  if agg not in AGGREGATIONS:
    raise ValueError(f"aggregate: agg must be one of {AGGREGATIONS}, got {agg!r}.")
  total_B = jnp.where(counted_BxH, r_sg_BxH, 0.0).sum(axis=1)
  if agg == "mean":
    return total_B / jnp.maximum(counted_BxH.sum(axis=1), 1)
  if agg == "sum_clipped":
    return jnp.clip(total_B, -1.0, 1.0)
  return total_B


def combined_return(env_reward_B: jax.Array, r_sg_BxH: jax.Array, counted_BxH: jax.Array, lam: jax.Array,
                    agg: str = "sum") -> jax.Array:
  """R(τ; u) = R_env(τ) + λ(u) · R_sg(τ) (float32 [B]; §2). λ = 0 returns R_env exactly."""
  return env_reward_B + lam * aggregate(r_sg_BxH, counted_BxH, agg)


def reward_to_go(env_reward_B: jax.Array, r_sg_BxH: jax.Array, counted_BxH: jax.Array, lam: jax.Array
                 ) -> jax.Array:
  """G_t = R_env + λ Σ_{t' >= t} r_sg_t' (float32 [B, H]; §7 item 4, `step_credit="reward_to_go"`)."""
  r = jnp.where(counted_BxH, r_sg_BxH, 0.0)
  to_go_BxH = jnp.flip(jnp.cumsum(jnp.flip(r, axis=1), axis=1), axis=1)
  return env_reward_B[:, None] + lam * to_go_BxH


def step_group_advantages(returns_BxH: jax.Array, step_mask_BxH: jax.Array, group_size: int,
                          advantage: str = "grpo_sample_std") -> jax.Array:
  """GiGPO-style per-step credit: the `advantage` estimator over the returns G_t of the played step t
  of the G episodes of one task (float32 [B, H]; 0 on steps not played)."""
  b, h = returns_BxH.shape
  to_groups = lambda x: jnp.moveaxis(x.reshape(b // group_size, group_size, h), 2, 1).reshape(-1, group_size)  # noqa: E731
  adv = compute_advantages(advantage, to_groups(returns_BxH), valid_PxG=to_groups(step_mask_BxH.astype(bool)))
  return jnp.moveaxis(adv.reshape(b // group_size, h, group_size), 1, 2).reshape(b, h)
