"""The rollout batch every algorithm consumes: one slot layout shared by sampler and trainer."""

from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class Rollout:
  """Sampled trajectories in the sampler's cache slot layout ([prompt | turn 1 | (instr | turn 2) ...]).

  Per-slot arrays are aligned to the token they describe: `sampler_logp_BxS[b, s]` is the sampler's
  log-prob of `tokens_BxS[b, s]` given the valid slots before it. Slots may contain holes (padding
  or unused response slots), marked by `valid_BxS`; positions skip them (see
  `decoder.positions_and_mask`), so the trainer's forward pass over this buffer reproduces exactly
  what the sampler computed.

  Attributes:
    tokens_BxS: token ids of the whole interaction.
    valid_BxS: slot holds a real token.
    loss_mask_BxS: generated tokens that receive the policy gradient.
    sampler_logp_BxS: sampler log-probs of generated tokens (0 elsewhere).
    turn_id_BxS: 0 for context tokens, k for tokens generated in turn k (1-based).
    response_tokens_BxN: the last turn's response (what a single-turn reward scores).
    response_valid_BxN: valid tokens of that response.
    stopped_B: the last turn ended with a stop token (False: truncated).
    temperature_BxS: sampling temperature of each generated token (1 for greedy turns and context
      slots); the trainer rescores every token at the temperature it was sampled with.
    loss_slots: static, optional: the only slots `loss_mask_BxS` can mark (sorted, all >= 1). The
      update then projects just these slots' hidden states onto the vocabulary; None: every slot
      after the prompt. Layouts with long untrained stretches set it (agent episodes: observations).
  """

  tokens_BxS: jax.Array
  valid_BxS: jax.Array
  loss_mask_BxS: jax.Array
  sampler_logp_BxS: jax.Array
  turn_id_BxS: jax.Array
  response_tokens_BxN: jax.Array
  response_valid_BxN: jax.Array
  stopped_B: jax.Array
  temperature_BxS: jax.Array | None = None
  loss_slots: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

  @property
  def batch_size(self) -> int:
    return self.tokens_BxS.shape[0]
