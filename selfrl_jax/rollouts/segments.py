"""One helper that builds every rollout's token layout from segments (single-turn, two-turn, agents).

    rollout = pack_segments([context(prompt_BxT, prompt_valid_BxT),
                             generated(turn1_out, turn=1, params=params1),
                             context(appended_BxI, appended_valid_BxI),      # per-row ids, any holes
                             generated(turn2_out, turn=2, params=params2)])

The layout is the KV cache's slot layout: `[prompt | y1 | appended | y2 | ...]`, each segment a
static slice, with holes (invalid slots) where a row's prompt was padded, a turn stopped early or a
row appended fewer ids. Generated segments carry the loss mask, sampler log-probs, turn id and
sampling temperature of their tokens; context segments carry none. The last generated segment is
the rollout's `response_*` (what a single-turn reward scores).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.sampling.sampler import SampleOutput, SamplingParams


@dataclasses.dataclass(frozen=True)
class Segment:
  """A [B, N] slice of the layout. Build with `context` or `generated`.

  Attributes:
    tokens_BxN, valid_BxN: ids and real-token mask.
    logp_BxN: sampler log-probs (generated segments; None for context).
    stopped_B: the turn ended with a stop token (generated segments).
    turn: turn id of generated tokens (0 for context).
    temperature: sampling temperature of the tokens (1.0 for context and greedy turns).
    trained: generated tokens enter the loss mask.
  """

  tokens_BxN: jax.Array
  valid_BxN: jax.Array
  logp_BxN: jax.Array | None = None
  stopped_B: jax.Array | None = None
  turn: int = 0
  temperature: float = 1.0
  trained: bool = False


def context(tokens_BxN: jax.Array, valid_BxN: jax.Array) -> Segment:
  """Tokens the policy conditions on but did not generate (prompt, instruction, observation)."""
  return Segment(tokens_BxN=tokens_BxN, valid_BxN=valid_BxN.astype(bool))


def generated(out: SampleOutput, turn: int, params: SamplingParams, trained: bool = True) -> Segment:
  """A sampled turn; `trained=False` keeps it out of the loss (e.g. a turn sampled for metrics only)."""
  return Segment(tokens_BxN=out.tokens_BxN, valid_BxN=out.valid_BxN, logp_BxN=out.logp_BxN,
                 stopped_B=out.stopped_B, turn=turn, temperature=params.temperature or 1.0, trained=trained)


def pack_segments(segments: Sequence[Segment]) -> Rollout:
  """Concatenates segments into a Rollout; the last generated segment is the response.

  Raises:
    ValueError: no generated segment, or segments with different row counts.
  """
  responses = [seg for seg in segments if seg.logp_BxN is not None]
  if not responses:
    raise ValueError("pack_segments: the layout has no generated segment (nothing to train or score).")
  rows = {seg.tokens_BxN.shape[0] for seg in segments}
  if len(rows) != 1:
    raise ValueError(f"pack_segments: segments have different row counts {sorted(rows)}.")

  def column(fn):
    return jnp.concatenate([fn(seg) for seg in segments], axis=1)

  zeros = lambda seg, dtype: jnp.zeros(seg.tokens_BxN.shape, dtype)  # noqa: E731
  last = responses[-1]
  return Rollout(
      tokens_BxS=column(lambda seg: seg.tokens_BxN),
      valid_BxS=column(lambda seg: seg.valid_BxN),
      loss_mask_BxS=column(lambda seg: seg.valid_BxN if seg.trained else zeros(seg, bool)),
      sampler_logp_BxS=column(lambda seg: zeros(seg, jnp.float32) if seg.logp_BxN is None else seg.logp_BxN),
      turn_id_BxS=column(lambda seg: seg.turn * seg.valid_BxN.astype(jnp.int32)),
      response_tokens_BxN=last.tokens_BxN, response_valid_BxN=last.valid_BxN, stopped_B=last.stopped_B,
      temperature_BxS=column(lambda seg: jnp.full(seg.tokens_BxN.shape, seg.temperature, jnp.float32)))
