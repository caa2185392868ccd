"""KV cache with a slot layout shared by the whole batch.

Slots are written left to right at `end_index`, the same for every row. A row that has nothing to
write in a chunk (left padding, or a sequence that already stopped) marks those slots invalid in
`valid_BxS`; attention ignores invalid slots and RoPE positions count only valid tokens
(`next_pos_B`). So a cache with holes behaves exactly like the same sequence without them, which
is what lets a second turn be appended to a batch whose first turns ended at different lengths.
The slot layout equals the token layout the trainer sees (`decoder.positions_and_mask`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from selfrl_jax.models.config import ModelConfig
from selfrl_jax.models.decoder import Decoder, KVBuffers
from selfrl_jax.sampling.hidden import last_valid_index


@struct.dataclass
class KVCache:
  """Cache buffers plus the bookkeeping needed to append more tokens.

  Attributes:
    kv: per-layer key/value buffers (keys [B, K, H, S], values [B, K, S, H]).
    valid_BxS: slot holds a real token.
    end_index: next slot to write (scalar, shared by the batch).
    next_pos_B: RoPE position of each row's next valid token.
    last_hidden_BxD: final-layer hidden state (after the final norm) of each row's last valid
      token, tracked only by `append(..., return_hidden=True)`; None otherwise (an empty pytree
      node, so a cache without it compiles exactly as before the field existed).
  """

  kv: KVBuffers
  valid_BxS: jax.Array
  end_index: jax.Array
  next_pos_B: jax.Array
  last_hidden_BxD: jax.Array | None = None

  @property
  def capacity(self) -> int:
    return self.valid_BxS.shape[1]

  @property
  def batch_size(self) -> int:
    return self.valid_BxS.shape[0]


def init_cache(cfg: ModelConfig, batch_size: int, capacity: int) -> KVCache:
  """An empty cache with room for `capacity` slots per row."""
  k_shape = (batch_size, cfg.n_kv_heads, cfg.head_dim, capacity)
  v_shape = (batch_size, cfg.n_kv_heads, capacity, cfg.head_dim)
  dtype = jnp.dtype(cfg.compute_dtype)
  return KVCache(kv=KVBuffers(tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.n_layers)),
                              tuple(jnp.zeros(v_shape, dtype) for _ in range(cfg.n_layers))),
                 valid_BxS=jnp.zeros((batch_size, capacity), bool),
                 end_index=jnp.zeros((), jnp.int32),
                 next_pos_B=jnp.zeros((batch_size,), jnp.int32))


def append(model: Decoder, cache: KVCache, tokens_BxN: jax.Array, valid_BxN: jax.Array,
           return_hidden: bool = False,
           ) -> tuple[jax.Array, KVCache] | tuple[jax.Array, KVCache, jax.Array]:
  """Writes a chunk of tokens into the cache (prefill, one decode step, or a new turn).

  Args:
    model: the decoder.
    cache: cache to extend; needs `capacity - end_index >= N` free slots (callers check statically).
    tokens_BxN: token ids to append.
    valid_BxN: False for padding inside the chunk (prompts are left-padded).
    return_hidden: (static) also return the final-layer hidden state the logits were computed
      from, and track it in the cache's `last_hidden_BxD`.

  Returns:
    (logits_BxV at each row's last valid token of the chunk, updated cache), plus `hidden_BxD`
    when `return_hidden`: the final-layer hidden state (after the final norm) of each row's last
    valid token. Rows whose chunk is all padding get meaningless logits (callers mask them); their
    `hidden_BxD` is the cache's previous `last_hidden_BxD` (the last valid token before the chunk)
    when the cache tracks it, else meaningless too. Without `return_hidden` the updated cache
    drops `last_hidden_BxD` (it would be stale).
  """
  n = tokens_BxN.shape[1]
  valid_BxN = valid_BxN.astype(bool)
  positions_BxN = cache.next_pos_B[:, None] + jnp.cumsum(valid_BxN, axis=1, dtype=jnp.int32) - 1
  positions_BxN = jnp.maximum(positions_BxN, 0)
  valid_BxS = jax.lax.dynamic_update_slice(cache.valid_BxS, valid_BxN, (0, cache.end_index))
  slot_S = jnp.arange(cache.capacity, dtype=jnp.int32)
  query_slot_N = cache.end_index + jnp.arange(n, dtype=jnp.int32)
  mask_BxNxS = valid_BxS[:, None, :] & (slot_S[None, None, :] <= query_slot_N[None, :, None])
  hidden_BxNxD, kv = model(tokens_BxN, positions_BxN, mask_BxNxS, cache.kv, cache.end_index)
  # Left padding puts the last valid token at the end; search anyway so right padding also works.
  last_B = last_valid_index(valid_BxN)
  hidden_last_BxD = jnp.take_along_axis(hidden_BxNxD, last_B[:, None, None], axis=1)[:, 0]
  logits_BxV = model.logits(hidden_last_BxD)
  new_cache = KVCache(kv=kv, valid_BxS=valid_BxS, end_index=cache.end_index + n,
                      next_pos_B=cache.next_pos_B + valid_BxN.sum(axis=1, dtype=jnp.int32))
  if not return_hidden:
    return logits_BxV, new_cache
  if cache.last_hidden_BxD is not None:
    any_valid_Bx1 = valid_BxN.any(axis=1)[:, None]
    hidden_last_BxD = jnp.where(any_valid_Bx1, hidden_last_BxD,
                                cache.last_hidden_BxD.astype(hidden_last_BxD.dtype))
  return logits_BxV, new_cache.replace(last_hidden_BxD=hidden_last_BxD), hidden_last_BxD


def repeat_rows(tree, repeats: int):
  """Repeats every batch row `repeats` times (row b -> rows b*G .. b*G+G-1): group sampling."""
  if repeats == 1:
    return tree

  def rep(x):
    return x if x.ndim == 0 else jnp.repeat(x, repeats, axis=0)
  return jax.tree.map(rep, tree)
