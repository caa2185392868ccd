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


def _loss_and_grads(chunk_size, temperature=TEMP):
  """Value, entropy and grads of a weighted sum of log-probs and entropies (one jit per chunk)."""
  hidden, w_out, targets = _inputs()
  rng = np.random.default_rng(1)
  c_logp, c_ent = rng.normal(size=(2, B, T)).astype(np.float32)

  def f(h, w):
    logp, ent = token_logprobs(h, w, targets, chunk_size=chunk_size, temperature=temperature,
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


# ----------------------------------------------------------------------------------------------
# Per-token temperature [B, T]

TEMPS_BxT = np.random.default_rng(4).uniform(0.3, 1.7, size=(B, T)).astype(np.float32)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_per_token_temperature_constant_equals_scalar(chunk_size):
  hidden, w_out, targets = _inputs()
  want = token_logprobs(hidden, w_out, targets, chunk_size=chunk_size, temperature=TEMP,
                        return_entropy=True)
  got = token_logprobs(hidden, w_out, targets, chunk_size=chunk_size,
                       temperature=np.full((B, T), TEMP, np.float32), return_entropy=True)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [None, 4, 16])
def test_per_token_temperature_matches_numpy_and_per_row(chunk_size):
  hidden, w_out, targets = _inputs()
  logp, ent = token_logprobs(hidden, w_out, targets, chunk_size=chunk_size, temperature=TEMPS_BxT,
                             return_entropy=True)
  want_logp, want_ent = numpy_logp_entropy(hidden, w_out, targets, TEMPS_BxT[..., None])
  np.testing.assert_allclose(np.asarray(logp), want_logp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ent), want_ent, rtol=1e-5, atol=1e-5)
  # Rows at different temperatures equal a scalar-temperature call per row.
  row_temps = np.array([0.3, 1.0, 1.7], np.float32)
  got = token_logprobs(hidden, w_out, targets, chunk_size=chunk_size,
                       temperature=np.repeat(row_temps[:, None], T, axis=1))
  for i, tmp in enumerate(row_temps):
    row = token_logprobs(hidden[i:i + 1], w_out, targets[i:i + 1], chunk_size=chunk_size,
                         temperature=float(tmp))
    np.testing.assert_allclose(np.asarray(got[i]), np.asarray(row[0]), rtol=1e-6, atol=1e-6)
  assert np.abs(np.diff(np.asarray(got).mean(axis=1))).min() > 1e-2  # rows really differ


@pytest.mark.parametrize("chunk_size", [4, 16])
def test_per_token_temperature_chunked_matches_unchunked_grads(chunk_size):
  ref = _loss_and_grads(None, TEMPS_BxT)
  got = _loss_and_grads(chunk_size, TEMPS_BxT)
  for name, r, g in zip(("logp", "entropy", "grad_hidden", "grad_w_out"), ref, got):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5, err_msg=name)
  scalar = _loss_and_grads(None)
  assert np.abs(ref[3] - scalar[3]).max() > 1e-3  # per-token temperatures change the gradient


def test_per_token_temperature_errors():
  hidden, w_out, targets = _inputs()
  with pytest.raises(ValueError, match="shape"):
    token_logprobs(hidden, w_out, targets, temperature=np.ones((B,), np.float32))
  bad = TEMPS_BxT.copy()
  bad[1, 2] = 0.0
  with pytest.raises(ValueError, match="every position"):
    token_logprobs(hidden, w_out, targets, temperature=bad)
  # Under jit the per-token path compiles (no concrete check) and matches the eager result.
  f = jax.jit(lambda tmp: token_logprobs(hidden, w_out, targets, chunk_size=4, temperature=tmp))
  np.testing.assert_allclose(np.asarray(f(TEMPS_BxT)),
                             np.asarray(token_logprobs(hidden, w_out, targets, temperature=TEMPS_BxT)),
                             rtol=1e-5, atol=1e-6)
