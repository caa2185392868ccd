"""Exact-match rewards for synthetic tasks: a jittable token-level version and a string version.

The binary verifier r(y, y*) of SCoRe (score.md §2) reduced to its simplest form: 1 iff the answer
equals the reference.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def exact_match_reward(
    response_BxN: jax.Array,
    response_valid_BxN: jax.Array,
    target_BxA: jax.Array,
    target_len_B: jax.Array,
    stop_ids: Sequence[int] = (),
) -> jax.Array:
  """Token-level exact match, jittable.

  The answer is the sequence of *valid* response tokens (in order, so the mask need not be a prefix)
  up to but excluding the first valid stop token. It scores 1.0 iff it has exactly `target_len_B[b]`
  tokens and they equal `target_BxA[b, :target_len_B[b]]`. Tokens under a False mask, target tokens
  past `target_len`, and the padding id are all irrelevant.

  Args:
    response_BxN: int token ids of the sampled responses.
    response_valid_BxN: bool (or 0/1) mask of generated tokens.
    target_BxA: int reference token ids, padded to A.
    target_len_B: int number of meaningful tokens in each target (0 <= len <= A).
    stop_ids: static tuple of token ids that end the answer (e.g. EOS, end-of-turn).

  Returns:
    rewards_B: float32 in {0, 1}.
  """
  valid_BxN = response_valid_BxN.astype(bool)
  n = response_BxN.shape[1]
  a = target_BxA.shape[1]
  # Rank of each valid token among the valid tokens of its row (its index in the answer).
  rank_BxN = jnp.cumsum(valid_BxN.astype(jnp.int32), axis=1) - 1
  num_valid_B = jnp.sum(valid_BxN.astype(jnp.int32), axis=1)
  if stop_ids:
    stops_S = jnp.asarray(tuple(stop_ids), dtype=response_BxN.dtype)
    is_stop_BxN = jnp.any(response_BxN[..., None] == stops_S, axis=-1) & valid_BxN
  else:
    is_stop_BxN = jnp.zeros_like(valid_BxN)
  first_stop_B = jnp.min(jnp.where(is_stop_BxN, rank_BxN, n), axis=1)
  answer_len_B = jnp.minimum(first_stop_B, num_valid_B)
  in_answer_BxN = valid_BxN & (rank_BxN < answer_len_B[:, None])
  target_at_rank_BxN = jnp.take_along_axis(target_BxA, jnp.clip(rank_BxN, 0, a - 1), axis=1)
  tokens_ok_B = jnp.all(~in_answer_BxN | (response_BxN == target_at_rank_BxN), axis=1)
  # Length equality also rules out answers longer than A (target_len <= A).
  match_B = tokens_ok_B & (answer_len_B == target_len_B.astype(answer_len_B.dtype))
  return match_B.astype(jnp.float32)


def exact_match_text(pred: str | None, ref: str) -> float:
  """1.0 iff `pred` equals `ref` after stripping surrounding whitespace (None never matches)."""
  if pred is None:
    return 0.0
  return float(pred.strip() == ref.strip())
