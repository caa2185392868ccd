"""Host rewards: a scorer that raises gives 0 for that sample and is counted, in both step modes."""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp

from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.models.tokenizers import CharTokenizer
from selfrl_jax.rewards.host import GuardedReward, decode_responses
from selfrl_jax.rewards.registry import host_reward_callback
from selfrl_jax.rollouts.types import Rollout

TOK = CharTokenizer()
RECORDS = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}]


def _rollout(texts):
  n = 6
  tokens = np.zeros((len(texts), n), np.int32)
  valid = np.zeros((len(texts), n), bool)
  for i, t in enumerate(texts):
    ids = TOK.encode(t) + list(TOK.eos_ids)
    tokens[i, :len(ids)] = ids
    valid[i, :len(ids)] = True
  b = len(texts)
  return Rollout(tokens_BxS=jnp.asarray(tokens), valid_BxS=jnp.asarray(valid), loss_mask_BxS=jnp.asarray(valid),
                 sampler_logp_BxS=jnp.zeros((b, n)), turn_id_BxS=jnp.zeros((b, n), jnp.int32),
                 response_tokens_BxN=jnp.asarray(tokens), response_valid_BxN=jnp.asarray(valid),
                 stopped_B=jnp.ones((b,), bool))


def _scorer(completion, record):
  if completion == "boom":
    raise RuntimeError("verifier crashed")
  if completion == "nan":
    return float("nan")
  return float(completion == record["answer"])


def test_decode_drops_stop_and_padding():
  rollout = _rollout(["12", "x"])
  assert decode_responses(TOK, rollout.response_tokens_BxN, rollout.response_valid_BxN) == ["12", "x"]


def test_raising_and_nonfinite_samples_score_zero_and_are_counted():
  guard = GuardedReward(_scorer, TOK, RECORDS, name="toy")
  # prompt 0 with G=2 completions, prompt 1 with G=2 completions (prompt-major rows)
  rollout = _rollout(["2", "boom", "4", "nan"])
  batch = PromptBatch(prompt_tokens_PxT=jnp.zeros((2, 3), jnp.int32), prompt_valid_PxT=jnp.ones((2, 3), bool),
                      prompt_len_P=jnp.full((2,), 3, jnp.int32), target_tokens_PxA=jnp.zeros((2, 2), jnp.int32),
                      target_len_P=jnp.ones((2,), jnp.int32), example_id_P=jnp.asarray([0, 1]))
  split = np.asarray(host_reward_callback(guard)(rollout, batch))  # split mode: called eagerly
  np.testing.assert_array_equal(split, [1.0, 0.0, 1.0, 0.0])
  assert guard.counters["errors"] == 1 and guard.counters["nonfinite"] == 1 and guard.counters["calls"] == 4
  fused = jax.jit(host_reward_callback(guard))(rollout, batch)  # fused mode: inside a compiled program
  np.testing.assert_array_equal(np.asarray(fused), split)
  assert guard.counters["errors"] == 2 and guard.counters["calls"] == 8
  # The callback exposes the live counters (the loop logs them as host/<name>).
  assert host_reward_callback(guard).counters is guard.counters
