"""`PromptBatch`: the typed batch of prompts every step, rollout and reward reads (no magic keys)."""

from __future__ import annotations

from typing import Any, Mapping

import jax
from flax import struct


@struct.dataclass
class PromptBatch:
  """P prompts with their targets, as `make_prompt_iterator` yields them (numpy or jax leaves).

  Attributes:
    prompt_tokens_PxT: prompt ids, LEFT-padded with the tokenizer's pad id (int32).
    prompt_valid_PxT: True on real prompt tokens.
    prompt_len_P: number of real prompt tokens (int32).
    target_tokens_PxA: answer ids, then one EOS, then pad (right-padded, int32).
    target_len_P: answer length including the EOS (int32).
    example_id_P: position of the record in its source (int64; stable across runs and shards), how
      host rewards and environments find the record behind a row.
  """

  prompt_tokens_PxT: jax.Array
  prompt_valid_PxT: jax.Array
  prompt_len_P: jax.Array
  target_tokens_PxA: jax.Array
  target_len_P: jax.Array
  example_id_P: jax.Array

  @property
  def num_prompts(self) -> int:
    return self.prompt_tokens_PxT.shape[0]

  @property
  def prompt_width(self) -> int:
    """T, the static prompt buffer: rollouts start with it and it never carries a loss."""
    return self.prompt_tokens_PxT.shape[1]

  @classmethod
  def of(cls, batch: PromptBatch | Mapping[str, Any]) -> PromptBatch:
    """A PromptBatch from itself or from a mapping with the field names (unknown keys raise)."""
    if isinstance(batch, cls):
      return batch
    unknown = set(batch) - set(cls.__dataclass_fields__)
    missing = set(cls.__dataclass_fields__) - set(batch)
    if unknown or missing:
      raise ValueError(f"PromptBatch: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}.")
    return cls(**batch)
