"""Decoder-only transformer in Flax NNX (Llama / SmolLM2, Qwen2, Qwen3 families).

Attribute names mirror the Hugging Face module tree (``model.layers[i].self_attn.q_proj`` ...) so
that checkpoint import/export is a mechanical rename plus a transpose of linear kernels.

The model never owns a KV cache. It takes the cache buffers as arguments and returns the updated
buffers, so the same pure function serves training (no cache), prefill, decode and appending a
second turn (see `selfrl_jax.sampling`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfrl_jax.models.config import ModelConfig

# Finite "minus infinity": a query row whose keys are all masked (a left-pad position) then gets a
# uniform, finite attention instead of NaN; such rows are never used.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_INIT = nnx.initializers.normal(stddev=0.02)


class KVBuffers(NamedTuple):
  """Key/value cache storage, one buffer per layer, written at a shared slot index.

  Per-layer buffers (not one stacked [L, ...] array) let XLA update each layer in place inside the
  decode loop; a stacked array would be copied whole on every step. Keys are stored [B, K, H, S]
  and values [B, K, S, H]: the two attention matmuls (q.k over H, probs.v over S) then read the
  buffers in the layout a batched GEMM takes. In [B, S, K, H] XLA:CPU transposed both whole
  buffers of every layer on every decode step, a cost growing with batch x capacity that
  dominated decoding (experiments/benchmarks/README.md, "KV-cache layout").
  """

  k_BxKxHxS: tuple[jax.Array, ...]
  v_BxKxSxH: tuple[jax.Array, ...]


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """RoPE inverse frequencies [head_dim/2], with Llama-3 scaling when configured."""
  dim = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
  s = cfg.rope_scaling
  if s is None:
    return inv_freq.astype(np.float32)
  # Llama 3.1 "llama3" rope: long wavelengths are divided by `factor`, short ones kept, and the
  # band in between interpolated smoothly.
  low_freq_wavelen = s.original_max_position / s.low_freq_factor
  high_freq_wavelen = s.original_max_position / s.high_freq_factor
  wavelen = 2 * np.pi / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
  smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotary embedding in the rotate-half layout used by Hugging Face checkpoints."""
  freqs_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  cos = jnp.cos(freqs_BxTxF)[:, :, None, :]
  sin = jnp.sin(freqs_BxTxF)[:, :, None, :]
  x = x_BxTxNxH.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


class RMSNorm(nnx.Module):
  """Root-mean-square norm; statistics in float32 whatever the compute dtype."""

  def __init__(self, dim: int, eps: float, *, dtype, param_dtype):
    self.eps = eps
    self.dtype = dtype
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed.astype(self.dtype) * self.weight[...].astype(self.dtype))


class Linear(nnx.Linear):
  """`nnx.Linear` that multiplies a 2-D [B*T, D] view of its input.

  Same parameters and numbers; only the layout XLA sees changes. On XLA:CPU the weight gradient of
  a [B, T, D] x [D, F] dot (contracting over B and T) is lowered with a transposed copy fused into
  elementwise ops, far below GEMM speed; on 2-D inputs it is a plain GEMM. Measured by
  experiments/benchmarks/bench_train_step.py: 16M-param update 39% -> 57% MFU.
  """

  def __call__(self, x: jax.Array) -> jax.Array:
    y = super().__call__(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _linear(d_in: int, d_out: int, cfg: ModelConfig, rngs: nnx.Rngs, bias: bool = False) -> Linear:
  return Linear(d_in, d_out, use_bias=bias, kernel_init=_INIT, dtype=jnp.dtype(cfg.compute_dtype),
                    param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


class Attention(nnx.Module):
  """Grouped-query attention with RoPE, optional q/k/v bias (Qwen2) and q/k RMSNorm (Qwen3)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    h, dm = cfg.head_dim, cfg.d_model
    self.q_proj = _linear(dm, cfg.n_heads * h, cfg, rngs, bias=cfg.qkv_bias)
    self.k_proj = _linear(dm, cfg.n_kv_heads * h, cfg, rngs, bias=cfg.qkv_bias)
    self.v_proj = _linear(dm, cfg.n_kv_heads * h, cfg, rngs, bias=cfg.qkv_bias)
    self.o_proj = _linear(cfg.n_heads * h, dm, cfg, rngs)
    if cfg.qk_norm:
      kw = dict(dtype=jnp.dtype(cfg.compute_dtype), param_dtype=jnp.dtype(cfg.param_dtype))
      self.q_norm = RMSNorm(h, cfg.rms_eps, **kw)
      self.k_norm = RMSNorm(h, cfg.rms_eps, **kw)

  def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, kv=None, write_index=None):
    """Attention over the chunk, or over the cache after writing the chunk into it.

    `kv` is (k_BxKxHxS, v_BxKxSxH) of this layer (see `KVBuffers`); without it S == T.
    Returns (output_BxTxD, updated (k, v) or None).
    """
    cfg = self.cfg
    b, t, _ = x_BxTxD.shape
    q = self.q_proj(x_BxTxD).reshape(b, t, cfg.n_heads, cfg.head_dim)
    k = self.k_proj(x_BxTxD).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    v = self.v_proj(x_BxTxD).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    inv_freq = rope_inv_freq(cfg)  # host constant, folded into the compiled program
    q = apply_rope(q, positions_BxT, inv_freq)
    k = apply_rope(k, positions_BxT, inv_freq)
    # Chunk-sized transposes into the cache layout; the cache itself is never transposed.
    k_BxKxHxT = k.transpose(0, 2, 3, 1)
    v_BxKxTxH = v.transpose(0, 2, 1, 3)
    if kv is not None:
      # Write this chunk into the cache at the shared slot, then attend over the whole buffer.
      k_cache, v_cache = kv
      k_BxKxHxT = jax.lax.dynamic_update_slice(k_cache, k_BxKxHxT.astype(k_cache.dtype), (0, 0, 0, write_index))
      v_BxKxTxH = jax.lax.dynamic_update_slice(v_cache, v_BxKxTxH.astype(v_cache.dtype), (0, 0, write_index, 0))
      new_kv = (k_BxKxHxT, v_BxKxTxH)
    else:
      new_kv = None
    groups = cfg.n_heads // cfg.n_kv_heads
    q_BxKxGxTxH = q.reshape(b, t, cfg.n_kv_heads, groups, cfg.head_dim).transpose(0, 2, 3, 1, 4)
    scores = jnp.einsum("bkgth,bkhs->bkgts", q_BxKxGxTxH, k_BxKxHxT.astype(q.dtype)).astype(jnp.float32)
    scores = scores * (cfg.head_dim ** -0.5)
    scores = jnp.where(mask_BxTxS[:, None, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out_BxKxGxTxH = jnp.einsum("bkgts,bksh->bkgth", probs, v_BxKxTxH.astype(q.dtype))
    out_BxTxD = out_BxKxGxTxH.transpose(0, 3, 1, 2, 4).reshape(b, t, cfg.n_heads * cfg.head_dim)
    return self.o_proj(out_BxTxD), new_kv


class MLP(nnx.Module):
  """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.gate_proj = _linear(cfg.d_model, cfg.d_ff, cfg, rngs)
    self.up_proj = _linear(cfg.d_model, cfg.d_ff, cfg, rngs)
    self.down_proj = _linear(cfg.d_ff, cfg.d_model, cfg, rngs)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
  """Pre-norm decoder block."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    kw = dict(dtype=jnp.dtype(cfg.compute_dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_eps, **kw)
    self.self_attn = Attention(cfg, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_eps, **kw)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, positions_BxT, mask_BxTxS, kv=None, write_index=None):
    attn_out, new_kv = self.self_attn(self.input_layernorm(x), positions_BxT, mask_BxTxS, kv, write_index)
    x = x + attn_out
    return x + self.mlp(self.post_attention_layernorm(x)), new_kv


class Backbone(nnx.Module):
  """Embedding, blocks and final norm (Hugging Face `model.*`)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=_INIT,
                                  dtype=jnp.dtype(cfg.compute_dtype),
                                  param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
    self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.norm = RMSNorm(cfg.d_model, cfg.rms_eps, dtype=jnp.dtype(cfg.compute_dtype),
                        param_dtype=jnp.dtype(cfg.param_dtype))


# What the backward pass of a checkpointed block keeps (`model.remat_policy`), by the names of
# `jax.checkpoint_policies`. At SmolLM2-135M's shape (GRPO update, micro-batch 16 x 173 slots,
# log-probs in chunks of 512) the fused step's XLA temporaries are 6.3 GiB without checkpointing,
# 3.3 GiB keeping the Linear outputs, 2.0 GiB keeping nothing (experiments/benchmarks/README.md).
REMAT_POLICIES = {
    # Recompute the whole block: least memory, one more forward pass of the blocks.
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    # Keep the outputs of the 2-D matmuls (the Linear layers: q/k/v/o, gate/up/down), recompute
    # attention scores and probabilities, norms, RoPE and the SwiGLU product: the [B, heads, S, S]
    # tensors are what grows with the sequence, and recomputing them costs a few % of a block.
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _checkpointed_blocks(layers, x_BxTxD: jax.Array, positions_BxT: jax.Array, mask_BxTxS: jax.Array,
                         policy: str) -> jax.Array:
  """The blocks of an uncached forward as one `lax.scan` over their stacked weights, each step a
  `jax.checkpoint` with `REMAT_POLICIES[policy]`: the backward pass keeps each block's input (and
  what the policy saves) and recomputes the rest, one block at a time. (A checkpoint around each
  block of the unrolled Python loop saved nothing on XLA:CPU: 4 rows x 1300 slots, 576 wide, took
  1 GB of temporaries per block with or without it; the scan takes 40 MB per block more than one
  block, measured with `compiled.memory_analysis()`.)"""
  graphdef, _ = nnx.split(layers[0])
  stacked = jax.tree.map(lambda *w: jnp.stack(w), *[nnx.split(layer)[1] for layer in layers])

  @functools.partial(jax.checkpoint, policy=REMAT_POLICIES[policy])
  def block(x_BxTxD, weights):
    return nnx.merge(graphdef, weights)(x_BxTxD, positions_BxT, mask_BxTxS)[0], None
  return jax.lax.scan(block, x_BxTxD, stacked)[0]


class Decoder(nnx.Module):
  """Causal LM. `__call__` returns final hidden states; `logits` projects them to the vocabulary.

  Keeping the two apart lets losses compute log-probs in vocabulary chunks without ever holding a
  [B, T, V] logits tensor (see `selfrl_jax.algos.logprobs`).

  `remat_blocks` (static; `model.remat` in a config) recomputes each block in the backward pass of
  an uncached forward (gradient checkpointing): the gradient then keeps one block's attention
  scores [B, heads, S, S] at a time instead of every layer's. `remat_policy` (static;
  `model.remat_policy`) names what each block keeps (`REMAT_POLICIES`): nothing costs about one more
  forward pass; the Linear outputs cost 2.5% of a SmolLM2 GRPO iteration.
  """

  remat_blocks: bool = False
  remat_policy: str = "nothing_saveable"

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.model = Backbone(cfg, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = _linear(cfg.d_model, cfg.vocab_size, cfg, rngs)

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, mask_BxTxS: jax.Array,
               kv: KVBuffers | None = None, write_index: jax.Array | int | None = None,
               ) -> tuple[jax.Array, KVBuffers | None]:
    """Runs the blocks.

    Args:
      tokens_BxT: input ids.
      positions_BxT: RoPE position of each token (padding excluded from the count).
      mask_BxTxS: True where query t may attend key slot s. Without a cache S == T.
      kv: per-layer cache buffers (layouts in `KVBuffers`); the chunk's keys/values are written at `write_index`.
      write_index: first cache slot of this chunk (shared by the batch).

    Returns:
      (hidden_BxTxD, updated KVBuffers or None).
    """
    x = self.model.embed_tokens(tokens_BxT)
    new_k, new_v = [], []
    if kv is None and self.remat_blocks:
      hidden = _checkpointed_blocks(self.model.layers, x, positions_BxT, mask_BxTxS, self.remat_policy)
      return self.model.norm(hidden), None
    for i, layer in enumerate(self.model.layers):
      layer_kv = None if kv is None else (kv.k_BxKxHxS[i], kv.v_BxKxSxH[i])
      x, layer_new_kv = layer(x, positions_BxT, mask_BxTxS, layer_kv, write_index)
      if kv is not None:
        new_k.append(layer_new_kv[0])
        new_v.append(layer_new_kv[1])
    hidden = self.model.norm(x)
    new_cache = None if kv is None else KVBuffers(tuple(new_k), tuple(new_v))
    return hidden, new_cache

  def logits(self, hidden_BxTxD: jax.Array) -> jax.Array:
    """Projects hidden states to float32 vocabulary logits."""
    if self.cfg.tie_embeddings:
      out = self.model.embed_tokens.attend(hidden_BxTxD)
    else:
      out = self.lm_head(hidden_BxTxD)
    return out.astype(jnp.float32)

  def output_embedding(self) -> jax.Array:
    """The [D, V] matrix `logits` multiplies by (for chunked log-prob computation)."""
    if self.cfg.tie_embeddings:
      return self.model.embed_tokens.embedding[...].T
    return self.lm_head.kernel[...]


def positions_and_mask(valid_BxS: jax.Array) -> tuple[jax.Array, jax.Array]:
  """RoPE positions and causal mask for a full (uncached) sequence with padding holes.

  Padding (valid == False) may sit anywhere — left padding of prompts, or unused response slots
  between turns. Positions count only valid tokens, so a sequence with holes gets exactly the
  positions it would have if the holes were removed; this matches what the KV-cache sampler sees.
  """
  positions_BxS = jnp.maximum(jnp.cumsum(valid_BxS.astype(jnp.int32), axis=-1) - 1, 0)
  s = valid_BxS.shape[-1]
  causal_SxS = jnp.tril(jnp.ones((s, s), dtype=bool))
  mask_BxSxS = causal_SxS[None] & valid_BxS[:, None, :]
  return positions_BxS, mask_BxSxS


def forward_full(model: Decoder, tokens_BxS: jax.Array, valid_BxS: jax.Array) -> jax.Array:
  """Hidden states of a whole padded sequence without a cache (the training forward pass)."""
  positions_BxS, mask_BxSxS = positions_and_mask(valid_BxS)
  hidden, _ = model(tokens_BxS, positions_BxS, mask_BxSxS)
  return hidden


def init_model(cfg: ModelConfig, seed: int = 0) -> Decoder:
  """A randomly initialised model (normal(0.02) weights, unit norms)."""
  return Decoder(cfg, rngs=nnx.Rngs(seed))
