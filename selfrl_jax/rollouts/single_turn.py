"""Single-turn rollouts: G completions per prompt, returned in the trainer's slot layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from selfrl_jax.models.decoder import Decoder
from selfrl_jax.rollouts.segments import context, generated, pack_segments
from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.sampling.sampler import generate, SamplingParams


def single_turn_rollout(model: Decoder, prompt_tokens_PxT: jax.Array, prompt_valid_PxT: jax.Array,
                        key: jax.Array, params: SamplingParams, group_size: int) -> Rollout:
  """Samples `group_size` completions per prompt (prompts prefilled once); rows are prompt-major.

  Layout `[prompt T | response N]`; loss on the response tokens.
  """
  out = generate(model, prompt_tokens_PxT, prompt_valid_PxT, key, params, group_size=group_size)
  prompts_BxT = jnp.repeat(prompt_tokens_PxT, group_size, axis=0)
  valid_BxT = jnp.repeat(prompt_valid_PxT, group_size, axis=0)
  return pack_segments([context(prompts_BxT, valid_BxT), generated(out, turn=1, params=params)])
