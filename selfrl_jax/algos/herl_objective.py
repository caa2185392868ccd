"""HeRL's pure pieces (shared/papers/herl.md §2, §9.1): rubric score, diagnosis, bonus, injection.

P prompts, G rollouts per prompt (a group), K rubric items, L = min(candidate_limit, G) revision
slots per group. Everything is jittable float32 / int32 / bool math; the algorithm (`algos/herl.py`)
wires these into its phases. Equations follow the released code ([C] in the spec).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rubric_score(met_BxK: jax.Array, weights_BxK: jax.Array, item_valid_BxK: jax.Array) -> jax.Array:
  """Eq. (1): R = Σ_k w_k m_k / Σ_k w_k over the valid items, float32 [B].

  Negative weights are clipped to 0 (the released medical reward); a row whose clipped weights sum
  to 0 (no valid item) scores 0.
  """
  w_BxK = jnp.where(item_valid_BxK, jnp.maximum(weights_BxK.astype(jnp.float32), 0.0), 0.0)
  total_B = w_BxK.sum(axis=-1)
  got_B = (w_BxK * met_BxK.astype(jnp.float32)).sum(axis=-1)
  return jnp.where(total_B > 0, got_B / jnp.where(total_B > 0, total_B, 1.0), 0.0)


def select_revision_candidates(score_PxG: jax.Array, n_met_PxG: jax.Array, tau: float, limit: int
                               ) -> tuple[jax.Array, jax.Array]:
  """Eq. (2), `_collect_rewrite_jobs`: in every group whose best score b is below `tau`, the rollouts
  tied at b, most items met first (ties by index), at most `limit` of them.

  Returns:
    index_PxL: rollout index (within its group) of each candidate slot, L = min(limit, G).
    valid_PxL: the slot holds a candidate (False: padding; all False in a skipped group).
  """
  g = score_PxG.shape[1]
  best_P = score_PxG.max(axis=1)
  tied_PxG = (score_PxG == best_P[:, None]) & (best_P < tau)[:, None]
  # Stable sort: candidates first, by items met (descending), then by index.
  key_PxG = jnp.where(tied_PxG, -n_met_PxG.astype(jnp.int32), jnp.iinfo(jnp.int32).max)
  order_PxG = jnp.argsort(key_PxG, axis=1, stable=True)
  index_PxL = order_PxG[:, :min(limit, g)].astype(jnp.int32)
  return index_PxL, jnp.take_along_axis(tied_PxG, index_PxL, axis=1)


def candidate_mask(index_PxL: jax.Array, valid_PxL: jax.Array, group_size: int) -> jax.Array:
  """bool [P, G]: the rollouts that are candidates (the spec's `select_revision_candidates` output)."""
  onehot_PxLxG = jax.nn.one_hot(index_PxL, group_size, dtype=bool) & valid_PxL[..., None]
  return onehot_PxLxG.any(axis=1)


def apply_improvement_bonus(score_PxG: jax.Array, revised_PxG: jax.Array, cand_PxG: jax.Array, alpha: float,
                            clamp_min: bool = False) -> jax.Array:
  """Eq. (5): r_j ← r_j + α (r̃_j − r_j) for candidates j; others unchanged.

  The released code does not clamp: a worse revision lowers r_j. `clamp_min` (the spec's option)
  uses max(r̃_j − r_j, 0) instead.
  """
  delta_PxG = revised_PxG - score_PxG
  if clamp_min:
    delta_PxG = jnp.maximum(delta_PxG, 0.0)
  return jnp.where(cand_PxG, score_PxG + alpha * delta_PxG, score_PxG)


def choose_injection(revised_PxL: jax.Array, valid_PxL: jax.Array, group_best_P: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
  """Eq. (6): the revision to inject per group: the highest r̃ (the first such slot), accepted when it
  is strictly better than the group best b or, failing that, at least b.

  Returns:
    src_P: candidate slot (in [0, L)) of the chosen revision.
    ok_P: a revision reaches b (False: nothing to inject; the caller applies the fallback).
  """
  masked_PxL = jnp.where(valid_PxL, revised_PxL, -jnp.inf)
  src_P = jnp.argmax(masked_PxL, axis=1).astype(jnp.int32)
  best_P = jnp.take_along_axis(masked_PxL, src_P[:, None], axis=1)[:, 0]
  return src_P, valid_PxL.any(axis=1) & (best_P >= group_best_P)


def replace_slot(base_BxF: jax.Array, donor_PxF: jax.Array, slot_P: jax.Array, on_P: jax.Array,
                 group_size: int) -> jax.Array:
  """Row `slot_P[p]` of group p takes `donor_PxF[p]` where `on_P[p]` (the `inject_he` write).

  Args:
    base_BxF: per-rollout array, B = P * G rows (prompt-major), any trailing shape F.
    donor_PxF: one replacement row per group (same trailing shape and dtype).
    slot_P: int32 slot within the group, in [0, G).
    on_P: bool: the group takes its donor.
  """
  p = donor_PxF.shape[0]
  base_PxGxF = base_BxF.reshape(p, group_size, *base_BxF.shape[1:])
  hit_PxG = (jnp.arange(group_size)[None, :] == slot_P[:, None]) & on_P[:, None]
  hit = hit_PxG.reshape(hit_PxG.shape + (1,) * (base_BxF.ndim - 1))
  out = jnp.where(hit, donor_PxF[:, None].astype(base_BxF.dtype), base_PxGxF)
  return out.reshape(base_BxF.shape)
