"""Sampled-token log-probs (and entropies) without materialising [B, T, V] logits.

    hidden_BxTxD = forward_full(model, tokens_BxT, valid_BxT)
    logp_BxT = token_logprobs(hidden_BxTxD[:, :-1], model.output_embedding(), tokens_BxT[:, 1:],
                              chunk_size=1024, temperature=T)

The returned log-probs are those of softmax(logits / temperature): pass the sampler's temperature
so the ratio old/new compares the same distribution the tokens were drawn from. `temperature` may
also be a [B, T] array, one sampling temperature per position (a token drawn at 0.3 is rescored at
0.3). With a chunk size, the B*T positions are processed `chunk_size` at a time under
`jax.checkpoint`, so forward and backward each hold a single [chunk, V] logits block (the backward
recomputes it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def entropy_from_logits(logits_NxV: jax.Array) -> jax.Array:
  """Entropy of softmax(logits) over the last axis, float32: H = lse(z) - sum_v p_v z_v."""
  z = logits_NxV.astype(jnp.float32)
  lse = jax.nn.logsumexp(z, axis=-1)
  p = jnp.exp(z - lse[..., None])
  return lse - (p * z).sum(axis=-1)


def _block(hidden_NxD, w_out_DxV, targets_N, inv_temp, return_entropy):
  """Log-prob of each target (and entropy) for one block of positions, all in float32."""
  if inv_temp.ndim == 1:  # per-position inverse temperature [N]
    inv_temp = inv_temp[:, None]
  logits_NxV = jnp.dot(hidden_NxD, w_out_DxV, preferred_element_type=jnp.float32) * inv_temp
  lse_N = jax.nn.logsumexp(logits_NxV, axis=-1)
  picked_N = jnp.take_along_axis(logits_NxV, targets_N[:, None], axis=-1)[:, 0]
  logp_N = picked_N - lse_N
  if not return_entropy:
    return logp_N, None
  p_NxV = jnp.exp(logits_NxV - lse_N[:, None])
  return logp_N, lse_N - (p_NxV * logits_NxV).sum(axis=-1)


def _over_chunks(block, rows, shared, inv_temp, per_token: bool, chunk_size: int):
  """`block(*row_chunks, *shared, inv_temp)` over `chunk_size` positions at a time, under
  `jax.checkpoint` (forward and backward each hold one [chunk, V] block; the backward recomputes it).

  `rows` are [N, ...] arrays split along N (padded with 0); `shared` (e.g. w_out) and `inv_temp` are
  explicit arguments, not closed over, so the checkpointed function has no hidden residuals. A
  per-position `inv_temp` [N] is split like the rows (padded with 1). Returns `block`'s outputs with
  the N positions back in order (a None output stays None).
  """
  n = rows[0].shape[0]
  n_chunks = -(-n // chunk_size)
  pad = n_chunks * chunk_size - n
  chunk = lambda x: jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape(  # noqa: E731
      n_chunks, chunk_size, *x.shape[1:])
  block = jax.checkpoint(block)
  k = len(rows)
  if per_token:  # padded positions get inverse temperature 1 (their outputs are dropped)
    it_CxK = jnp.pad(inv_temp, (0, pad), constant_values=1.0).reshape(n_chunks, chunk_size)
    out = jax.lax.map(lambda xs: block(*xs[:k], *shared, xs[k]), (*map(chunk, rows), it_CxK))
  else:
    out = jax.lax.map(lambda xs: block(*xs, *shared, inv_temp), tuple(map(chunk, rows)))
  return jax.tree.map(lambda x: x.reshape(-1)[:n], out)


def token_logprobs(hidden_BxTxD: jax.Array, w_out_DxV: jax.Array, targets_BxT: jax.Array, *,
                   chunk_size: int | None = None, temperature: float | jax.Array = 1.0,
                   return_entropy: bool = False):
  """log softmax(hidden @ w_out / temperature)[target] per position, optionally with entropy.

  Args:
    hidden_BxTxD: final hidden states (after the last norm).
    w_out_DxV: output projection (`model.output_embedding()`).
    targets_BxT: token ids in [0, V) whose log-prob is wanted (next tokens).
    chunk_size: positions per block; None computes all logits at once. Need not divide B*T.
    temperature: > 0, a scalar or a [B, T] array (per position: the logits row of (b, t) is
      divided by temperature[b, t]); log-probs and entropy are those of softmax(logits / temperature).
      Every entry, padding included, must be > 0 (checked for concrete arrays; under jit a
      non-positive entry gives inf/NaN at that position, also in the gradient w.r.t. hidden/w_out).
    return_entropy: also return the per-position entropy (of the same tempered distribution).

  Returns:
    logp_BxT (float32), or (logp_BxT, entropy_BxT) when `return_entropy`.
  """
  if hidden_BxTxD.ndim != 3:
    raise ValueError(f"hidden_BxTxD must be 3-D [B, T, D], got shape {tuple(hidden_BxTxD.shape)}.")
  b, t, d = hidden_BxTxD.shape
  if w_out_DxV.ndim != 2 or w_out_DxV.shape[0] != d:
    raise ValueError(f"w_out_DxV must be [D={d}, V], got shape {tuple(w_out_DxV.shape)}.")
  if targets_BxT.shape != (b, t):
    raise ValueError(f"targets_BxT shape {tuple(targets_BxT.shape)} must equal hidden's [B, T]="
                     f"{(b, t)}.")
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  per_token = jnp.ndim(temperature) > 0
  if per_token and jnp.shape(temperature) != (b, t):
    raise ValueError(f"temperature must be a scalar or of shape [B, T]={(b, t)}, got "
                     f"{tuple(jnp.shape(temperature))}.")
  if per_token and not isinstance(temperature, jax.core.Tracer) and not (
      np.asarray(temperature) > 0).all():
    raise ValueError("temperature must be > 0 at every position.")
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}.")

  # float32 math, as documented; casting here (not per chunk) keeps one copy of w_out.
  h_NxD = hidden_BxTxD.reshape(b * t, d).astype(jnp.float32)
  w_DxV = w_out_DxV.astype(jnp.float32)
  tgt_N = targets_BxT.reshape(b * t).astype(jnp.int32)
  inv_temp = 1.0 / jnp.asarray(temperature, jnp.float32)
  if per_token:
    inv_temp = inv_temp.reshape(b * t)  # [N], padded / reshaped below exactly like the targets

  if chunk_size is None:
    logp_N, ent_N = _block(h_NxD, w_DxV, tgt_N, inv_temp, return_entropy)
  else:
    logp_N, ent_N = _over_chunks(lambda h, tg, w, it: _block(h, w, tg, it, return_entropy),
                                 (h_NxD, tgt_N), (w_DxV,), inv_temp, per_token, chunk_size)

  logp_BxT = logp_N.reshape(b, t)
  if not return_entropy:
    return logp_BxT
  return logp_BxT, ent_N.reshape(b, t)


def _kl_block(h_NxD, ref_h_NxD, w_DxV, ref_w_DxV, inv_temp):
  """KL(softmax(h w / T) || softmax(ref_h ref_w / T)) per position, float32."""
  if inv_temp.ndim == 1:
    inv_temp = inv_temp[:, None]
  logp_NxV = jax.nn.log_softmax(jnp.dot(h_NxD, w_DxV, preferred_element_type=jnp.float32) * inv_temp, axis=-1)
  ref_NxV = jax.nn.log_softmax(jnp.dot(ref_h_NxD, ref_w_DxV, preferred_element_type=jnp.float32) * inv_temp,
                               axis=-1)
  return (jnp.exp(logp_NxV) * (logp_NxV - ref_NxV)).sum(axis=-1)


def token_kl(hidden_BxTxD: jax.Array, w_out_DxV: jax.Array, ref_hidden_BxTxD: jax.Array,
             ref_w_out_DxV: jax.Array, *, chunk_size: int | None = None,
             temperature: float | jax.Array = 1.0) -> jax.Array:
  """Exact KL(pi || ref) over the vocabulary at every position (the `full` KL estimator).

  pi = softmax(hidden @ w_out / T), ref = softmax(ref_hidden @ ref_w_out / T), T a scalar or [B, T]
  per position as in `token_logprobs`. Differentiable in the policy's hidden states and w_out; pass
  the reference's as constants. Chunked like `token_logprobs` (one [chunk, V] block of each model's
  logits at a time, recomputed in the backward).

  Returns:
    kl_BxT (float32, >= 0 up to rounding).
  """
  b, t, d = hidden_BxTxD.shape
  if ref_hidden_BxTxD.shape != hidden_BxTxD.shape:
    raise ValueError(f"ref_hidden_BxTxD shape {tuple(ref_hidden_BxTxD.shape)} must equal hidden_BxTxD "
                     f"shape {tuple(hidden_BxTxD.shape)}.")
  if w_out_DxV.shape != ref_w_out_DxV.shape:
    raise ValueError(f"w_out_DxV {tuple(w_out_DxV.shape)} and ref_w_out_DxV {tuple(ref_w_out_DxV.shape)} differ.")
  per_token = jnp.ndim(temperature) > 0
  inv_temp = 1.0 / jnp.asarray(temperature, jnp.float32)
  h, rh = (x.reshape(b * t, d).astype(jnp.float32) for x in (hidden_BxTxD, ref_hidden_BxTxD))
  w, rw = w_out_DxV.astype(jnp.float32), ref_w_out_DxV.astype(jnp.float32)
  if per_token:
    inv_temp = inv_temp.reshape(b * t)
  if chunk_size is None:
    return _kl_block(h, rh, w, rw, inv_temp).reshape(b, t)
  return _over_chunks(_kl_block, (h, rh), (w, rw), inv_temp, per_token, chunk_size).reshape(b, t)
