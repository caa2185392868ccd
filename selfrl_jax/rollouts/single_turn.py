"""Single-turn rollouts: G completions per prompt, returned in the trainer's slot layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from selfrl_jax.models.decoder import Decoder
from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.sampling.sampler import SampleOutput, SamplingParams, generate


def turn_rollout(prompt_tokens_BxT: jax.Array, prompt_valid_BxT: jax.Array, out: SampleOutput,
                 turn: int = 1) -> Rollout:
  """Packs a prompt and one sampled turn into a Rollout ([prompt | N response slots])."""
  zeros_f = jnp.zeros(prompt_tokens_BxT.shape, jnp.float32)
  no_loss = jnp.zeros(prompt_tokens_BxT.shape, bool)
  return Rollout(
      tokens_BxS=jnp.concatenate([prompt_tokens_BxT, out.tokens_BxN], axis=1),
      valid_BxS=jnp.concatenate([prompt_valid_BxT.astype(bool), out.valid_BxN], axis=1),
      loss_mask_BxS=jnp.concatenate([no_loss, out.valid_BxN], axis=1),
      sampler_logp_BxS=jnp.concatenate([zeros_f, out.logp_BxN], axis=1),
      turn_id_BxS=jnp.concatenate([jnp.zeros(prompt_tokens_BxT.shape, jnp.int32),
                                   turn * out.valid_BxN.astype(jnp.int32)], axis=1),
      response_tokens_BxN=out.tokens_BxN, response_valid_BxN=out.valid_BxN, stopped_B=out.stopped_B)


def single_turn_rollout(model: Decoder, prompt_tokens_PxT: jax.Array, prompt_valid_PxT: jax.Array,
                        key: jax.Array, params: SamplingParams, group_size: int) -> Rollout:
  """Samples `group_size` completions per prompt (prompts prefilled once); rows are prompt-major."""
  out = generate(model, prompt_tokens_PxT, prompt_valid_PxT, key, params, group_size=group_size)
  prompts_BxT = jnp.repeat(prompt_tokens_PxT, group_size, axis=0)
  valid_BxT = jnp.repeat(prompt_valid_PxT, group_size, axis=0)
  return turn_rollout(prompts_BxT, valid_BxT, out)
