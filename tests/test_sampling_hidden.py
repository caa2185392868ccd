"""Hidden states from the sampler (`SamplingParams.return_hidden`) == the training forward pass.

One tiny model, 2 prompts x group 2; turn 1 greedy with a stop token (rows stop at different
lengths), turn 2 sampled at temperature 1 after per-row appended ids of different lengths (one row
appends nothing). Compiled programs: 3 `generate` + 2 `continue_generation`.
"""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from selfrl_jax.models.decoder import forward_full
from sampling_fixtures import left_padded_prompts, peaked_model
from selfrl_jax.sampling.hidden import gather_positions, last_valid_index
from selfrl_jax.sampling.kv_cache import init_cache
from selfrl_jax.sampling.sampler import Sampler, SamplingParams, decode

VOCAB, T, N1, N2, G = 64, 6, 5, 4, 2
LENGTHS = (6, 3)
# Per-row appended ids for turn 2, left-padded to I = 3; row 2 appends nothing.
APPEND_LENGTHS = (3, 1, 0, 2)
I = 3
ATOL = 1e-5


def _np(x):
  return np.asarray(x)


def _forward_full(model, tokens_BxS, valid_BxS):
  return _np(jax.jit(lambda t, v: forward_full(model, t, v))(jnp.asarray(tokens_BxS), jnp.asarray(valid_BxS)))


@pytest.fixture(scope="module")
def run():
  """Both turns with and without hidden states, plus the rollout buffers they describe."""
  model = peaked_model("qwen3", VOCAB)
  graphdef, state = nnx.split(model)
  prompts_PxT, prompt_valid_PxT = left_padded_prompts(LENGTHS, T, VOCAB)
  free = Sampler(graphdef, SamplingParams(max_new_tokens=N1, temperature=0.0), group_size=G).generate(
      state, prompts_PxT, prompt_valid_PxT, jax.random.key(0))
  stop = int(_np(free.tokens_BxN)[0, 1])  # the first group stops by slot 1; the other (likely) later

  rs = np.random.RandomState(1)
  b = len(LENGTHS) * G
  instr_BxI = np.zeros((b, I), np.int32)
  instr_valid_BxI = np.zeros((b, I), bool)
  for row, n in enumerate(APPEND_LENGTHS):
    instr_BxI[row, I - n:] = rs.randint(3, VOCAB, n)
    instr_valid_BxI[row, I - n:] = True

  outs = {}
  for hidden in (False, True):
    p1 = SamplingParams(max_new_tokens=N1, temperature=0.0, stop_ids=(stop,), return_hidden=hidden)
    p2 = SamplingParams(max_new_tokens=N2, temperature=1.0, top_k=20, return_hidden=hidden)
    out1 = Sampler(graphdef, p1, group_size=G, extra_capacity=I + N2).generate(
        state, prompts_PxT, prompt_valid_PxT, jax.random.key(1))
    # Copied out before continue_generation donates (deletes) the cache.
    turn1 = jax.tree.map(np.asarray, out1._replace(cache=None))
    turn2 = Sampler(graphdef, p2).continue_generation(
        state, out1.cache, jnp.asarray(instr_BxI), jnp.asarray(instr_valid_BxI), jax.random.key(2))
    outs[hidden] = (turn1, jax.tree.map(np.asarray, turn2._replace(cache=None)))

  turn1, turn2 = outs[True]
  prompt_BxT = np.repeat(_np(prompts_PxT), G, axis=0)
  prompt_valid_BxT = np.repeat(_np(prompt_valid_PxT), G, axis=0)
  tokens_BxS = np.concatenate([prompt_BxT, turn1.tokens_BxN, instr_BxI, turn2.tokens_BxN], axis=1)
  valid_BxS = np.concatenate([prompt_valid_BxT, turn1.valid_BxN, instr_valid_BxI, turn2.valid_BxN], axis=1)
  return dict(model=model, outs=outs, tokens_BxS=tokens_BxS, valid_BxS=valid_BxS,
              full_BxSxD=_forward_full(model, tokens_BxS, valid_BxS), prompt_valid_BxT=prompt_valid_BxT)


def test_generate_hidden_equals_full_forward(run):
  turn1, _ = run["outs"][True]
  s1 = T + N1
  # The turn-1 buffer alone [prompt | y1] (causal: the same states as the prefix of the longer buffer).
  full_BxSxD = _forward_full(run["model"], run["tokens_BxS"][:, :s1], run["valid_BxS"][:, :s1])
  v = run["valid_BxS"][:, :s1]  # (fully masked padding queries attend uniformly over S: not comparable)
  np.testing.assert_allclose(full_BxSxD[v], run["full_BxSxD"][:, :s1][v], atol=ATOL)
  lengths = turn1.length_B
  assert lengths.min() < N1 and len(set(lengths.tolist())) > 1, "rows must stop at different lengths"
  assert turn1.hidden_BxNxD.shape == (len(LENGTHS) * G, N1, full_BxSxD.shape[-1])
  valid = turn1.valid_BxN
  np.testing.assert_allclose(turn1.hidden_BxNxD[valid], full_BxSxD[:, T:][valid], atol=ATOL)
  assert (turn1.hidden_BxNxD[~valid] == 0).all()
  # Context: the last prompt token (left padding puts it at T - 1), repeated over the group.
  np.testing.assert_allclose(turn1.context_hidden_BxD, full_BxSxD[:, T - 1], atol=ATOL)
  ctx = turn1.context_hidden_BxD.reshape(len(LENGTHS), G, -1)
  assert (ctx == ctx[:, :1]).all()


def test_continued_turn_hidden_equals_full_forward(run):
  turn1, turn2 = run["outs"][True]
  full_BxSxD = run["full_BxSxD"]
  start = T + N1 + I
  valid = turn2.valid_BxN
  np.testing.assert_allclose(turn2.hidden_BxNxD[valid], full_BxSxD[:, start:][valid], atol=ATOL)
  assert (turn2.hidden_BxNxD[~valid] == 0).all()
  # Context: the last appended token, or (row 2 appended nothing) the last turn-1 token.
  ctx_index_B = last_valid_index(run["valid_BxS"][:, :start])
  for row, n in enumerate(APPEND_LENGTHS):
    assert ctx_index_B[row] == (start - 1 if n else T + turn1.length_B[row] - 1)
  expected = _np(gather_positions(jnp.asarray(full_BxSxD), ctx_index_B[:, None]))[:, 0]
  np.testing.assert_allclose(turn2.context_hidden_BxD, expected, atol=ATOL)
  row = APPEND_LENGTHS.index(0)
  np.testing.assert_allclose(turn2.context_hidden_BxD[row], turn1.hidden_BxNxD[row, turn1.length_B[row] - 1],
                             atol=ATOL)


def test_return_hidden_does_not_change_sampling(run):
  for plain, with_hidden in zip(run["outs"][False], run["outs"][True]):
    assert plain.hidden_BxNxD is None and plain.context_hidden_BxD is None
    for name in ("tokens_BxN", "logp_BxN", "valid_BxN", "length_B", "stopped_B"):
      np.testing.assert_array_equal(getattr(plain, name), getattr(with_hidden, name), err_msg=name)


def test_last_response_token_hidden_from_full_forward(run):
  turn1, turn2 = run["outs"][True]
  s1 = T + N1
  for turn, s in ((turn1, s1), (turn2, run["valid_BxS"].shape[1])):
    index_B = _np(last_valid_index(jnp.asarray(run["valid_BxS"][:, :s])))
    np.testing.assert_array_equal(index_B, s - turn.valid_BxN.shape[1] + turn.length_B - 1)
    from_full = _np(gather_positions(jnp.asarray(run["full_BxSxD"]), jnp.asarray(index_B)[:, None]))[:, 0]
    from_decode = turn.hidden_BxNxD[np.arange(len(index_B)), turn.length_B - 1]
    np.testing.assert_allclose(from_full, from_decode, atol=ATOL)


def test_hidden_helpers():
  valid = np.array([[0, 1, 1, 0, 1, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(_np(last_valid_index(jnp.asarray(valid))), [4, 0, 5])
  x = np.arange(3 * 6 * 2, dtype=np.float32).reshape(3, 6, 2)
  index = np.array([[4, 0], [0, 5], [2, 2]])
  np.testing.assert_array_equal(_np(gather_positions(jnp.asarray(x), jnp.asarray(index))),
                                x[np.arange(3)[:, None], index])


def test_decode_with_hidden_needs_a_tracking_cache(run):
  cache = init_cache(run["model"].cfg, 1, 4)
  with pytest.raises(ValueError, match="return_hidden"):
    decode(run["model"], cache, jnp.zeros((1, VOCAB)), jax.random.key(0),
           SamplingParams(max_new_tokens=2, return_hidden=True))
