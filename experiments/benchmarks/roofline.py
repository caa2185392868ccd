"""Measured matmul peak of this machine and FLOP counts of our decoder, for roofline figures."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from selfrl_jax.models.config import ModelConfig


def measured_matmul_peak(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """Best achieved FLOP/s of an n x n x n matmul under jax.jit (the practical peak here)."""
  a = jnp.ones((n, n), dtype)
  b = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def matmul_flops_per_token(cfg: ModelConfig, context: int) -> float:
  """Forward FLOPs for one token attending to `context` keys (weights + attention + LM head)."""
  h, k = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
  per_layer = 2 * cfg.d_model * (2 * h + 2 * k) + 2 * 3 * cfg.d_model * cfg.d_ff
  per_layer += 2 * 2 * cfg.n_heads * cfg.head_dim * context  # scores and weighted values
  return cfg.n_layers * per_layer + 2 * cfg.d_model * cfg.vocab_size


def generate_flops(cfg: ModelConfig, batch: int, prompt_len: int, new_tokens: int, cache_len: int) -> float:
  """FLOPs of prefill + decode as our sampler runs it (attention spans the whole cache buffer)."""
  prefill = batch * prompt_len * matmul_flops_per_token(cfg, cache_len)
  decode = batch * new_tokens * matmul_flops_per_token(cfg, cache_len)
  return prefill + decode


def train_flops(cfg: ModelConfig, batch: int, seq_len: int, head_positions: int | None = None) -> float:
  """FLOPs of one teacher-forced forward + backward pass over [batch, seq_len] tokens.

  Backward costs twice the forward, so this is 3x the forward count: per token
  6 * (matmul params) + 12 * layers * heads * head_dim * seq_len (the PaLM MFU convention, which
  counts the full S x S attention our implementation computes, not the causal half).
  `head_positions`: positions that go through the LM head (the RL update skips the prompt's).
  """
  full = 3 * batch * seq_len * matmul_flops_per_token(cfg, seq_len)
  skipped = seq_len - (seq_len if head_positions is None else head_positions)
  return full - 3 * batch * skipped * 2 * cfg.d_model * cfg.vocab_size
