"""Chunked sampled-token log-probs: values, entropy and gradients vs unchunked and NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfrl_jax.algos.logprobs import entropy_from_logits, token_logprobs

B, T, D, V = 3, 5, 8, 37
TEMP = 0.7


def _inputs():
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(B, T, D)).astype(np.float32)
  w_out = rng.normal(0, 0.5, size=(D, V)).astype(np.float32)
  targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
  return hidden, w_out, targets


def numpy_logp_entropy(hidden, w_out, targets, temperature):
  z = (hidden.astype(np.float64) @ w_out) / temperature
  z = z - z.max(axis=-1, keepdims=True)
  logsm = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
  logp = np.take_along_axis(logsm, targets[..., None], axis=-1)[..., 0]
  return logp, -(np.exp(logsm) * logsm).sum(axis=-1)


def _loss_and_grads(chunk_size):
  """Value, entropy and grads of a weighted sum of log-probs and entropies (one jit per chunk)."""
  hidden, w_out, targets = _inputs()
  rng = np.random.default_rng(1)
  c_logp, c_ent = rng.normal(size=(2, B, T)).astype(np.float32)

  def f(h, w):
    logp, ent = token_logprobs(h, w, targets, chunk_size=chunk_size, temperature=TEMP,
                               return_entropy=True)
    return (c_logp * logp).sum() + (c_ent * ent).sum(), (logp, ent)

  (_, (logp, ent)), (g_h, g_w) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
      hidden, w_out)
  return [np.asarray(x) for x in (logp, ent, g_h, g_w)]


def test_unchunked_matches_numpy():
  hidden, w_out, targets = _inputs()
  logp, ent = token_logprobs(hidden, w_out, targets, temperature=TEMP, return_entropy=True)
  want_logp, want_ent = numpy_logp_entropy(hidden, w_out, targets, TEMP)
  assert logp.dtype == jnp.float32 and logp.shape == (B, T)
  np.testing.assert_allclose(np.asarray(logp), want_logp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ent), want_ent, rtol=1e-5, atol=1e-5)
  # Without return_entropy only log-probs come back; temperature 1 is a different distribution.
  logp1 = token_logprobs(hidden, w_out, targets)
  np.testing.assert_allclose(np.asarray(logp1), numpy_logp_entropy(hidden, w_out, targets, 1.0)[0],
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [4, 16])  # 4 doesn't divide B*T=15; 16 > B*T
def test_chunked_matches_unchunked_values_and_grads(chunk_size):
  ref = _loss_and_grads(None)
  got = _loss_and_grads(chunk_size)
  for name, r, g in zip(("logp", "entropy", "grad_hidden", "grad_w_out"), ref, got):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5, err_msg=name)
  assert np.abs(ref[3]).max() > 1e-3  # the gradients compared are not trivially zero


def test_entropy_from_logits():
  z = np.random.default_rng(2).normal(size=(4, 11)).astype(np.float32) * 3
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(entropy_from_logits(z)), -(p * np.log(p)).sum(-1),
                             rtol=1e-5, atol=1e-6)
  uniform = np.zeros((1, 11), np.float32)
  assert float(entropy_from_logits(uniform)[0]) == pytest.approx(np.log(11), rel=1e-6)


def test_bfloat16_inputs_give_float32():
  hidden, w_out, targets = _inputs()
  logp = token_logprobs(jnp.asarray(hidden, jnp.bfloat16), jnp.asarray(w_out, jnp.bfloat16), targets,
                        chunk_size=4)
  assert logp.dtype == jnp.float32
  want = numpy_logp_entropy(np.asarray(jnp.asarray(hidden, jnp.bfloat16), np.float32),
                            np.asarray(jnp.asarray(w_out, jnp.bfloat16), np.float32), targets, 1.0)[0]
  np.testing.assert_allclose(np.asarray(logp), want, rtol=1e-4, atol=1e-4)


def test_errors():
  hidden, w_out, targets = _inputs()
  with pytest.raises(ValueError, match="w_out_DxV"):
    token_logprobs(hidden, w_out.T, targets)
  with pytest.raises(ValueError, match="targets_BxT"):
    token_logprobs(hidden, w_out, targets[:, :2])
  with pytest.raises(ValueError, match="temperature"):
    token_logprobs(hidden, w_out, targets, temperature=0.0)
  with pytest.raises(ValueError, match="chunk_size"):
    token_logprobs(hidden, w_out, targets, chunk_size=0)


def test_chunked_grad_compiles_to_less_memory():
  b, t, d, v = 8, 256, 64, 49152  # B*T = 2048 positions, SmolLM2 vocabulary
  args = (jax.ShapeDtypeStruct((b, t, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
          jax.ShapeDtypeStruct((b, t), jnp.int32))

  def temp_bytes(chunk_size):
    loss = lambda h, w, tg: token_logprobs(h, w, tg, chunk_size=chunk_size).sum()
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
    analysis = compiled.memory_analysis()
    if analysis is None or getattr(analysis, "temp_size_in_bytes", None) is None:
      pytest.skip("compiled.memory_analysis() is unavailable on this backend")
    return analysis.temp_size_in_bytes

  full, chunked = temp_bytes(None), temp_bytes(256)
  # The unchunked backward holds at least one [2048, V] float32 logits block (~400 MB).
  assert full >= b * t * v * 4
  assert chunked < full / 4, (chunked, full)
