"""Shared builders for sampler and rollout tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfrl_jax.models.config import tiny_config
from selfrl_jax.models.decoder import Decoder, init_model


def peaked_model(family: str, vocab_size: int, **overrides) -> Decoder:
  """A tiny random model whose logits have clear margins, so greedy choices are not float ties.

  normal(0.02) weights give near-uniform logits; matrices are scaled up 10x.
  """
  m = init_model(tiny_config(family, vocab_size=vocab_size, **overrides))
  state = nnx.state(m, nnx.Param)
  nnx.update(m, jax.tree.map(lambda x: x * 10.0 if x.ndim == 2 else x, state))
  return m


def left_padded_prompts(lengths, width: int, vocab_size: int, low: int = 3, seed: int = 0):
  """Random prompts of the given lengths, left-padded with 0 to `width`: (tokens, valid)."""
  rs = np.random.RandomState(seed)
  tokens = np.zeros((len(lengths), width), np.int32)
  valid = np.zeros((len(lengths), width), bool)
  for i, n in enumerate(lengths):
    tokens[i, width - n:] = rs.randint(low, vocab_size, n)
    valid[i, width - n:] = True
  return jnp.asarray(tokens), jnp.asarray(valid)
