"""KV-cache sampler: cached == uncached, stop tokens, group sampling, turn continuation, truncation."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from selfrl_jax.models.decoder import forward_full
from sampling_fixtures import left_padded_prompts, peaked_model
from selfrl_jax.sampling.sampler import Sampler, SamplingParams, sample_token

VOCAB, T, N = 64, 8, 10
LENGTHS = (8, 5, 2)


@pytest.fixture(scope="module")
def model():
  return peaked_model("qwen3", VOCAB)


@pytest.fixture(scope="module")
def prompts():
  return left_padded_prompts(LENGTHS, T, VOCAB)


def _full_logits(model, tokens, valid):
  return np.asarray(model.logits(forward_full(model, jnp.asarray(tokens), jnp.asarray(valid))))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_decoding_equals_full_forward(model, prompts, temperature):
  graphdef, state = nnx.split(model)
  out = Sampler(graphdef, SamplingParams(max_new_tokens=N, temperature=temperature)).generate(
      state, *prompts, jax.random.key(1))
  tokens = np.concatenate([np.asarray(prompts[0]), np.asarray(out.tokens_BxN)], axis=1)
  valid = np.concatenate([np.asarray(prompts[1]), np.asarray(out.valid_BxN)], axis=1)
  logits = _full_logits(model, tokens, valid)[:, T - 1:-1] / (temperature or 1.0)
  logp = jax.nn.log_softmax(logits, axis=-1)
  sampled = np.asarray(out.tokens_BxN)
  expected_logp = np.take_along_axis(np.asarray(logp), sampled[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(np.asarray(out.logp_BxN), expected_logp, atol=2e-5)
  if temperature == 0.0:
    np.testing.assert_array_equal(sampled, logits.argmax(-1))


def test_stop_tokens_end_rows_and_pad_after(model, prompts):
  graphdef, state = nnx.split(model)
  free = Sampler(graphdef, SamplingParams(max_new_tokens=N, temperature=0.0)).generate(
      state, *prompts, jax.random.key(0))
  free_tokens = np.asarray(free.tokens_BxN)
  stop = int(free_tokens[0, 3])
  params = SamplingParams(max_new_tokens=N, temperature=0.0, stop_ids=(stop,), pad_id=0)
  out = Sampler(graphdef, params).generate(state, *prompts, jax.random.key(0))
  tokens, valid, lengths = (np.asarray(x) for x in (out.tokens_BxN, out.valid_BxN, out.length_B))
  for row in range(len(LENGTHS)):
    hits = np.flatnonzero(free_tokens[row] == stop)
    expected_len = hits[0] + 1 if hits.size else N
    assert lengths[row] == expected_len
    assert bool(out.stopped_B[row]) == bool(hits.size)
    np.testing.assert_array_equal(tokens[row, :expected_len], free_tokens[row, :expected_len])
    assert (tokens[row, expected_len:] == 0).all() and not valid[row, expected_len:].any()
    assert valid[row, :expected_len].all()
    assert (np.asarray(out.logp_BxN)[row, expected_len:] == 0).all()


def test_group_sampling(model, prompts):
  graphdef, state = nnx.split(model)
  g = 4
  sampled = Sampler(graphdef, SamplingParams(max_new_tokens=N, temperature=1.0), group_size=g).generate(
      state, *prompts, jax.random.key(2))
  greedy = Sampler(graphdef, SamplingParams(max_new_tokens=N, temperature=0.0), group_size=g).generate(
      state, *prompts, jax.random.key(2))
  s = np.asarray(sampled.tokens_BxN).reshape(len(LENGTHS), g, N)
  d = np.asarray(greedy.tokens_BxN).reshape(len(LENGTHS), g, N)
  for p in range(len(LENGTHS)):
    assert len({tuple(row) for row in s[p]}) == g, "temperature-1 samples of one prompt must differ"
    assert (d[p] == d[p, :1]).all(), "greedy samples of one prompt must be identical"


def test_continuing_cache_equals_sampling_from_concatenation(model, prompts):
  """Turn 2 through the cache == turn 2 from the re-built concatenated prompt, even with holes."""
  graphdef, state = nnx.split(model)
  instr = np.array([5, 6, 7], np.int32)
  n1 = 6
  free = Sampler(graphdef, SamplingParams(max_new_tokens=n1, temperature=0.0)).generate(
      state, *prompts, jax.random.key(0))
  stop = int(np.asarray(free.tokens_BxN)[1, 2])  # makes at least row 1 stop early: a hole in the cache
  p1 = SamplingParams(max_new_tokens=n1, temperature=0.0, stop_ids=(stop,))
  p2 = SamplingParams(max_new_tokens=N, temperature=0.0)
  turn1 = Sampler(graphdef, p1, extra_capacity=len(instr) + N).generate(state, *prompts, jax.random.key(0))
  assert np.asarray(turn1.length_B).min() < n1
  instr_BxI = jnp.tile(jnp.asarray(instr)[None], (len(LENGTHS), 1))
  turn2 = Sampler(graphdef, p2).continue_generation(
      state, turn1.cache, instr_BxI, jnp.ones(instr_BxI.shape, bool), jax.random.key(0))
  # Reference: re-tokenised concatenation, left-padded, sampled from scratch.
  rows = []
  for b in range(len(LENGTHS)):
    y1 = np.asarray(turn1.tokens_BxN[b])[np.asarray(turn1.valid_BxN[b])]
    rows.append(np.concatenate([np.asarray(prompts[0][b])[np.asarray(prompts[1][b])], y1, instr]))
  width = max(map(len, rows))
  tokens = np.zeros((len(rows), width), np.int32)
  valid = np.zeros((len(rows), width), bool)
  for b, row in enumerate(rows):
    tokens[b, width - len(row):] = row
    valid[b, width - len(row):] = True
  ref = Sampler(graphdef, p2).generate(state, jnp.asarray(tokens), jnp.asarray(valid), jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(turn2.tokens_BxN), np.asarray(ref.tokens_BxN))
  np.testing.assert_allclose(np.asarray(turn2.logp_BxN), np.asarray(ref.logp_BxN), atol=2e-5)


def test_top_k_and_top_p_restrict_support():
  probs = np.array([0.5, 0.3, 0.15, 0.05], np.float32)
  logits = jnp.tile(jnp.log(jnp.asarray(probs))[None], (20000, 1))
  key = jax.random.key(3)

  def freq(**kw):
    tok, _ = jax.jit(lambda l, k: sample_token(l, k, SamplingParams(max_new_tokens=1, **kw)))(logits, key)
    return np.bincount(np.asarray(tok), minlength=4) / len(tok)

  np.testing.assert_allclose(freq(temperature=1.0), probs, atol=0.015)
  f = freq(temperature=1.0, top_k=2)
  assert f[2:].sum() == 0
  np.testing.assert_allclose(f[:2], probs[:2] / probs[:2].sum(), atol=0.015)
  assert freq(temperature=1.0, top_k=1)[0] == 1.0
  f = freq(temperature=1.0, top_p=0.7)  # mass before token 1 is 0.5 < 0.7, before token 2 is 0.8
  assert f[2:].sum() == 0
  f = freq(temperature=1.0, top_p=0.85)
  assert f[3] == 0 and f[2] > 0.1
  f = freq(temperature=0.5)
  sharpened = probs ** 2 / (probs ** 2).sum()
  np.testing.assert_allclose(f, sharpened, atol=0.015)


def test_sampled_frequencies_match_probabilities_across_cdf_blocks():
  # 700 ids = 3 inverse-CDF blocks (the last one padded): every id's frequency must match softmax.
  rng = np.random.default_rng(0)
  logits_V = rng.normal(size=700).astype(np.float32) * 3
  probs_V = np.exp(logits_V - logits_V.max()) / np.exp(logits_V - logits_V.max()).sum()
  n = 40000
  tok, logp = jax.jit(lambda l, k: sample_token(l, k, SamplingParams(max_new_tokens=1, temperature=1.0)))(
      jnp.tile(jnp.asarray(logits_V)[None], (n, 1)), jax.random.key(7))
  freq_V = np.bincount(np.asarray(tok), minlength=700) / n
  assert 0.5 * np.abs(freq_V - probs_V).sum() < 0.03  # total variation distance
  sigma_V = np.sqrt(probs_V * (1 - probs_V) / n)
  assert np.all(np.abs(freq_V - probs_V) < 5 * sigma_V + 2e-4)
  np.testing.assert_allclose(np.asarray(logp), np.log(probs_V)[np.asarray(tok)], atol=1e-4)


def test_no_recompilation_across_calls(model, prompts):
  graphdef, state = nnx.split(model)
  sampler = Sampler(graphdef, SamplingParams(max_new_tokens=N, temperature=1.0))
  for seed in range(3):
    jax.block_until_ready(sampler.generate(state, *prompts, jax.random.key(seed)))
  assert sampler.generate._cache_size() == 1


def test_bad_sampling_params_fail_clearly():
  with pytest.raises(ValueError, match="top_p"):
    SamplingParams(max_new_tokens=4, top_p=0.0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    SamplingParams(max_new_tokens=0)
