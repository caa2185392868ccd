"""The compiled train step: fused == split, gradient accumulation, non-finite guard, no recompiles."""

import dataclasses

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from selfrl_jax.algos.grpo import GRPO
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.models.config import tiny_config
from selfrl_jax.models.decoder import init_model
from selfrl_jax.models.tokenizers import CharTokenizer
from selfrl_jax.rewards.registry import exact_match
from selfrl_jax.sampling.sampler import SamplingParams
from selfrl_jax.train.state import create_train_state
from selfrl_jax.train.step import UpdateSettings, make_train_step

P, G, T, N, A = 4, 4, 6, 5, 4
TOK = CharTokenizer()


def _fraction_of_digit_reward(rollout, batch):
  """A smooth jittable reward (fraction of digit tokens) so advantages are rarely all zero."""
  del batch
  digits = jnp.asarray(TOK.encode("0123456789"))
  is_digit = jnp.isin(rollout.response_tokens_BxN, digits) & rollout.response_valid_BxN
  return is_digit.sum(1) / jnp.maximum(rollout.response_valid_BxN.sum(1), 1)


def _setup(reward_fn=_fraction_of_digit_reward, kl_coef=0.0, tx=None, **overrides):
  model = init_model(tiny_config(vocab_size=TOK.vocab_size, d_model=32, d_ff=64, n_heads=2, n_kv_heads=1, head_dim=16))
  tx = tx or optax.adam(1e-2)
  graphdef, state = create_train_state(model, tx, seed=0, keep_reference=kl_coef > 0)
  sampling = SamplingParams(max_new_tokens=N, temperature=1.0, stop_ids=TOK.eos_ids)
  algo = GRPO(sampling=sampling, group_size=G, advantage="grpo", kl_coef=kl_coef, reward_fn=reward_fn)
  settings = UpdateSettings(rollouts=P * G, group_size=G, temperature=1.0, clip_low=0.2, clip_high=0.28,
                            use_reference=kl_coef > 0, kl_estimator="k3", loss_agg="token_mean", norm_len=N, num_epochs=1,
                            num_minibatches=1, micro_batch_size=P * G, logprob_chunk=None)
  settings = dataclasses.replace(settings, **overrides)
  return make_train_step(settings, algo, graphdef, tx), state, algo


@pytest.fixture(scope="module")
def batch():
  rs = np.random.RandomState(0)
  valid_PxT = np.arange(T)[None] >= rs.randint(0, 3, (P, 1))
  return PromptBatch(prompt_tokens_PxT=jnp.asarray(rs.randint(3, 40, (P, T)), jnp.int32),
                     prompt_valid_PxT=jnp.asarray(valid_PxT), prompt_len_P=jnp.asarray(valid_PxT.sum(1), jnp.int32),
                     target_tokens_PxA=jnp.asarray(rs.randint(3, 40, (P, A)), jnp.int32),
                     target_len_P=jnp.full((P,), 2, jnp.int32), example_id_P=jnp.arange(P))


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def test_fused_equals_split_and_compiles_once(batch):
  fns, state, _ = _setup(num_epochs=2, num_minibatches=2, micro_batch_size=4, mode="fused")
  split_fns, _, _ = _setup(num_epochs=2, num_minibatches=2, micro_batch_size=4, mode="split")
  assert fns.mode == "fused" and split_fns.mode == "split"
  fused_state, split_state = state, jax.tree.map(jnp.copy, state)
  for i in range(3):
    fused_state, fused_metrics = fns(fused_state, batch)
    seconds = {} if i == 2 else None  # timing the segments changes nothing
    split_state, split_metrics = split_fns.split(split_state, batch, seconds)
    for a, b in zip(_leaves(fused_state), _leaves(split_state)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(fused_metrics["loss"]), float(split_metrics["loss"]), rtol=1e-5, atol=1e-7)
  # Fused: one program; split: one per run of device phases (rollout, then update).
  assert fns.fused._cache_size() == 1 and fns.compilations() == 1
  assert split_fns.compilations() == 2
  assert split_fns.segment_names == ("rollout", "reward", "update")
  assert sorted(seconds) == sorted(split_fns.segment_names) and all(v > 0 for v in seconds.values())
  assert int(split_state.step) == 3
  assert int(fused_state.step) == 3
  assert float(fused_metrics["logp_gap"]) < 1e-4  # sampler and trainer agree on the same tokens
  assert float(fused_metrics["grad_norm"]) > 0


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_gradient_accumulation_matches_one_big_batch(batch, agg):
  # SGD with lr 1: the parameter change is the gradient itself (Adam would amplify float32
  # summation-order noise in near-zero gradient entries into lr-sized differences).
  whole, state, _ = _setup(micro_batch_size=P * G, loss_agg=agg, tx=optax.sgd(1.0))
  accumulated, _, _ = _setup(micro_batch_size=4, loss_agg=agg, tx=optax.sgd(1.0))
  a, _ = whole(jax.tree.map(jnp.copy, state), batch)
  b, _ = accumulated(state, batch)
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_nonfinite_loss_skips_update_and_counts(batch):
  nan_reward = lambda rollout, b: jnp.full((rollout.batch_size,), jnp.nan)  # noqa: E731
  fns, state, _ = _setup(reward_fn=nan_reward, num_minibatches=2, micro_batch_size=8)
  before = _leaves(state)
  state, metrics = fns(state, batch)
  for x, y in zip(before, _leaves(state)):
    np.testing.assert_array_equal(x, y)
  assert int(metrics["nonfinite_skipped"]) == 2 and int(state.nonfinite_total) == 2
  assert int(state.nonfinite_streak) == 1
  state, _ = fns(state, batch)
  assert int(state.nonfinite_streak) == 2


def test_damaged_optimizer_state_is_never_applied(batch):
  """Issue 15.1: finite loss and gradients, but a NaN in one Adam first moment (what a damaged
  checkpoint restored): the update would write NaN weights, so it is skipped and counted."""
  fns, state, _ = _setup(num_minibatches=1, micro_batch_size=P * G)
  mu = state.opt_state[0].mu
  first = jax.tree.leaves(mu)[0]
  damaged = jax.tree.unflatten(jax.tree.structure(mu), [first.at[(0,) * first.ndim].set(jnp.nan)]
                               + jax.tree.leaves(mu)[1:])
  state = state.replace(opt_state=(state.opt_state[0]._replace(mu=damaged),) + tuple(state.opt_state[1:]))
  before = _leaves(state)
  state, metrics = fns(state, batch)
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
  assert int(metrics["nonfinite_skipped"]) == 1 and int(state.nonfinite_streak) == 1
  for x, y in zip(before, _leaves(state)):
    np.testing.assert_array_equal(x, y)


def test_kl_term_uses_frozen_reference(batch):
  fns, state, _ = _setup(kl_coef=0.1)
  state, metrics = fns(state, batch)
  assert abs(float(metrics["kl"])) < 1e-6  # policy == reference on the first step
  state, metrics = fns(state, batch)
  assert float(metrics["kl"]) > 0  # k3 > 0 once the policy moved away from the frozen reference
  ref = _leaves(state.replace(params=state.ref_params))
  init = _leaves(_setup(kl_coef=0.1)[1])
  for x, y in zip(ref, init):
    np.testing.assert_array_equal(x, y)


def test_exact_match_reward_in_step(batch):
  reward = exact_match(TOK.eos_ids)
  fns, state, algo = _setup(reward_fn=reward)
  _, rollout_key, _ = jax.random.split(state.rng, 3)  # the key the step samples with
  rollout = jax.jit(algo.rollout)(nnx.merge(fns.graphdef, state.params), batch, rollout_key)
  rewards = algo.rewards(rollout, batch)
  assert rewards.parts == {}
  got = np.asarray(rewards.reward_B)
  tokens, valid = np.asarray(rollout.response_tokens_BxN), np.asarray(rollout.response_valid_BxN)
  targets = np.repeat(np.asarray(batch.target_tokens_PxA), G, axis=0)
  for b in range(P * G):
    answer = [t for t, v in zip(tokens[b], valid[b]) if v]
    answer = answer[:answer.index(TOK.eos_ids[0])] if TOK.eos_ids[0] in answer else answer
    assert got[b] == float(answer == list(targets[b, :1]))


def test_full_kl_of_the_update_matches_the_two_models_logits():
  """`sequence_logprobs(kl_reference=...)` (the `full` estimator's path) vs KL from both models'
  full [B, S, V] logits; slots before `start` are 0."""
  from selfrl_jax.models.decoder import forward_full
  from selfrl_jax.train.step import reference_hidden, sequence_logprobs
  cfg = tiny_config(vocab_size=TOK.vocab_size, d_model=32, d_ff=64, n_heads=2, n_kv_heads=1, head_dim=16)
  policy, ref = init_model(cfg, seed=0), init_model(cfg, seed=1)
  rs = np.random.RandomState(1)
  tokens = jnp.asarray(rs.randint(3, 40, (3, 9)), jnp.int32)
  valid = jnp.asarray(np.arange(9)[None] >= np.array([[0], [2], [1]]))
  start, temp = 4, 0.7
  ref_h = reference_hidden(ref, tokens, valid, start)
  _, kl = sequence_logprobs(policy, tokens, valid, temperature=temp, chunk_size=5, start=start,
                            kl_reference=(ref_h, ref.output_embedding()))

  def log_softmax(model):
    z = np.asarray(forward_full(model, tokens, valid) @ model.output_embedding(), np.float64) / temp
    return z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
  lp, lr = log_softmax(policy), log_softmax(ref)
  want = (np.exp(lp) * (lp - lr)).sum(-1)[:, start - 1:-1]
  np.testing.assert_array_equal(np.asarray(kl)[:, :start], 0.0)
  np.testing.assert_allclose(np.asarray(kl)[:, start:], want, rtol=1e-4, atol=1e-6)


def test_projecting_only_the_loss_slots_gives_the_same_logprobs_entropy_kl_and_gradient():
  """`slots=` (an agent episode's `Rollout.loss_slots`) projects just those slots: the same log-prob,
  entropy, full KL and gradient there as projecting every slot after the prompt, 0 elsewhere."""
  from selfrl_jax.train.step import reference_hidden, sequence_logprobs
  from flax import nnx
  cfg = tiny_config(vocab_size=TOK.vocab_size, d_model=32, d_ff=64, n_heads=2, n_kv_heads=1, head_dim=16)
  policy, ref = init_model(cfg, seed=0), init_model(cfg, seed=1)
  rs = np.random.RandomState(2)
  tokens = jnp.asarray(rs.randint(3, 40, (3, 12)), jnp.int32)
  valid = jnp.asarray(np.arange(12)[None] >= np.array([[0], [2], [1]]))
  temp_BxS = jnp.asarray(rs.uniform(0.5, 1.5, (3, 12)), jnp.float32)
  start, slots = 3, (3, 4, 7, 8, 11)          # two "steps" with untrained context between them
  ref_h = reference_hidden(ref, tokens, valid, start)
  graphdef, params = nnx.split(policy)

  def run(p, **kw):
    return sequence_logprobs(nnx.merge(graphdef, p), tokens, valid, temperature=temp_BxS, chunk_size=4,
                             return_entropy=True, start=start, kl_reference=(ref_h, ref.output_embedding()), **kw)
  full, gathered = run(params), run(params, slots=slots)
  other = np.setdiff1d(np.arange(12), slots)
  for a, b in zip(full, gathered):
    np.testing.assert_allclose(np.asarray(b)[:, slots], np.asarray(a)[:, slots], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(b)[:, other], 0.0)
  weight = jnp.asarray(rs.normal(size=(3, 12)) * np.isin(np.arange(12), slots), jnp.float32)
  loss = lambda p, **kw: sum((x * weight).sum() for x in run(p, **kw))   # noqa: E731
  g_full, g_gathered = jax.grad(loss)(params), jax.grad(lambda p: loss(p, slots=slots))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6), g_full, g_gathered)


@pytest.mark.parametrize("estimator,mode", [("full", "loss"), ("full", "reward"), ("k1", "reward")])
def test_kl_modes_run_in_the_compiled_step(batch, estimator, mode):
  fns, state, _ = _setup(kl_coef=0.5, kl_estimator=estimator, kl_mode=mode)
  for _ in range(3):
    state, metrics = fns(state, batch)
  assert fns.compilations() == 1
  assert np.isfinite(float(metrics["loss"])) and int(metrics["nonfinite_skipped"]) == 0
  assert float(metrics["kl"]) > 0  # the policy has moved away from the reference
  assert (float(metrics["kl_loss"]) > 0) == (estimator == "full")  # k1 in the reward: no loss term
