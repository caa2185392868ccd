"""Pulling final-layer hidden states at named positions out of a full forward pass.

    hidden_BxSxD = forward_full(model, rollout.tokens_BxS, rollout.valid_BxS)
    last_B = last_valid_index(rollout.valid_BxS)                      # e.g. each row's last token
    h_BxD = gather_positions(hidden_BxSxD, last_B[:, None])[:, 0]

The sampler returns the same states without a second pass (`SamplingParams(return_hidden=True)`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def last_valid_index(valid_BxS: jax.Array) -> jax.Array:
  """Index of each row's last valid slot [B] (holes anywhere allowed); S - 1 for an all-invalid row."""
  s = valid_BxS.shape[1]
  return s - 1 - jnp.argmax(valid_BxS.astype(bool)[:, ::-1], axis=1)


def gather_positions(x_BxSxD: jax.Array, index_BxK: jax.Array) -> jax.Array:
  """x_BxKxD[b, k] = x_BxSxD[b, index_BxK[b, k]]."""
  return jnp.take_along_axis(x_BxSxD, index_BxK[:, :, None], axis=1)
