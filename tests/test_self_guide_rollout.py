"""Agent episodes (rollouts/agent.py) and environments (envs/): the KV-cache episode equals the same
episode re-read from scratch, the JAX grid equals its host twin (also fused vs split training),
crashing environments and invalid actions are counted, not fatal."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sampling_fixtures import left_padded_prompts, peaked_model
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.envs.base import CallbackEnv, EnvStep
from selfrl_jax.envs.grid import GridEnv, GridHostEnv, GridSpec
from selfrl_jax.models.decoder import forward_full
from selfrl_jax.models.tokenizers import CharTokenizer
from selfrl_jax.rollouts.agent import agent_episode
from selfrl_jax.sampling.sampler import SamplingParams

VOCAB, EOS, CLOSE = 64, 2, 5
STOP = (EOS, 30)             # 30: an id this peaked model often writes, so some steps stop early
LENGTHS = (6, 3, 5)          # prompt lengths (left-padded to T)
T, N, H, G = 6, 4, 4, 2


class EchoEnv:
  """A host environment with per-row observation lengths and early ends: row r's episode ends after
  1 + r % 3 steps (rows of one task end together); each observation has 1 + (t + r) % 3 ids derived
  from the action ids (right-aligned); step `crash_at` raises (None: never)."""

  obs_len = 3

  def __init__(self, crash_at: int | None = None):
    self.crash_at = crash_at

  def reset(self, example_id_P, target_PxA, group_size, seed):
    del target_PxA, seed
    self.rows = np.repeat(np.arange(len(example_id_P)), group_size)
    self.t = 0
    self.done = np.zeros(len(self.rows), bool)

  def step(self, action_BxN, action_valid_BxN, uniform_B):
    del uniform_B
    self.t += 1
    if self.crash_at == self.t:
      raise RuntimeError("the environment process died")
    b = len(self.rows)
    active = ~self.done
    obs, valid = np.zeros((b, 3), np.int32), np.zeros((b, 3), bool)
    for r in range(b):
      n = 1 + (self.t + r) % 3
      ids = action_BxN[r][action_valid_BxN[r]]
      obs[r, 3 - n:] = 10 + (int(ids.sum()) + np.arange(n)) % 40
      valid[r, 3 - n:] = True
    self.done = self.done | (self.t >= 1 + self.rows % 3)
    valid &= (active & ~self.done)[:, None]
    zeros = np.zeros(b)
    return EnvStep(obs_BxO=np.where(valid, obs, 0), obs_valid_BxO=valid, reward_B=zeros, done_B=self.done.copy(),
                   success_B=self.done.copy(), score_B=zeros, invalid_B=zeros.astype(bool),
                   progress_B=zeros.astype(np.int8), failed_B=zeros.astype(bool))


@pytest.fixture(scope="module")
def model():
  return peaked_model("llama", VOCAB)


def _batch(p: int = len(LENGTHS)) -> PromptBatch:
  tokens, valid = left_padded_prompts(LENGTHS[:p], T, VOCAB, low=6)
  return PromptBatch(prompt_tokens_PxT=tokens, prompt_valid_PxT=valid, prompt_len_P=valid.sum(1),
                     target_tokens_PxA=jnp.zeros((p, 5), jnp.int32), target_len_P=jnp.zeros(p, jnp.int32),
                     example_id_P=jnp.arange(p))


@pytest.fixture(scope="module")
def episode(model):
  """`episode(crash_at=None)`: greedy episodes of EchoEnv through one compiled program (the crash
  step is read by the host callback at run time, so both tests share the compilation)."""
  graphdef, state = nnx.split(model)
  host = EchoEnv()
  env = CallbackEnv(host)
  batch = _batch()
  params = SamplingParams(max_new_tokens=N, temperature=0.0, stop_ids=STOP)

  @jax.jit
  def run(state, batch, key):
    return agent_episode(nnx.merge(graphdef, state), batch.prompt_tokens_PxT, batch.prompt_valid_PxT, env, key,
                         params, G, H, end_ids=(EOS,), guide_close_ids=(CLOSE,), batch=batch)

  def play(crash_at=None):
    host.crash_at = crash_at
    return jax.device_get(run(state, batch, jax.random.key(0))), env

  return play


def test_cached_episode_equals_the_episode_read_from_scratch(model, episode):
  """Greedy: every generated id is the argmax of a full forward pass over the episode's real ids
  (holes removed, nothing cached), with the sampler's log-prob; observations are the environment's
  own for the actions taken; episodes of different lengths stop where the environment said."""
  roll, _ = episode()
  ex = roll.extras
  b = roll.tokens_BxS.shape[0]
  rows = np.repeat(np.arange(len(LENGTHS)), G)
  np.testing.assert_array_equal(ex.num_steps_B, 1 + rows % 3)
  assert (ex.step_valid_BxHxN.sum(-1) > 0).tolist() == ex.step_taken_BxH.tolist()
  stopped_any = truncated_any = False
  compact = [(roll.tokens_BxS[r][roll.valid_BxS[r]], roll.loss_mask_BxS[r][roll.valid_BxS[r]],
              roll.sampler_logp_BxS[r][roll.valid_BxS[r]]) for r in range(b)]
  width = max(len(c[0]) for c in compact)
  tokens = np.zeros((b, width), np.int32)
  valid = np.zeros((b, width), bool)
  for r, (ids, _, _) in enumerate(compact):
    tokens[r, :len(ids)], valid[r, :len(ids)] = ids, True
  logp = np.asarray(jax.nn.log_softmax(model.logits(forward_full(model, jnp.asarray(tokens), jnp.asarray(valid)))))
  for r, (ids, gen, sampler_logp) in enumerate(compact):
    pos = np.flatnonzero(gen)
    np.testing.assert_array_equal(ids[pos], logp[r, pos - 1].argmax(-1))
    np.testing.assert_allclose(sampler_logp[pos], logp[r, pos - 1, ids[pos]], atol=2e-5)
    stopped_any |= bool(np.isin(ids[pos], STOP).any())
    truncated_any |= bool(((ex.step_valid_BxHxN[r].sum(-1) == N) & ~np.isin(ex.step_tokens_BxHxN[r, :, -1], STOP)).any())
  assert stopped_any and truncated_any, "the episode should mix stopped and truncated steps"
  # The update projects only `loss_slots` (the steps' slots): every loss slot is among them, and they
  # are exactly the H step segments of N slots each.
  slots = np.asarray(roll.loss_slots)
  assert len(slots) == H * N and not roll.loss_mask_BxS[:, np.setdiff1d(np.arange(roll.tokens_BxS.shape[1]), slots)].any()
  # Replaying the environment on the recorded actions gives the observations in the layout, whose
  # blocks after step 1 are [end id | observation | step].
  replay = EchoEnv()
  replay.reset(np.arange(len(LENGTHS)), None, G, 0)
  for t in range(H - 1):
    out = replay.step(ex.step_tokens_BxHxN[:, t], ex.step_valid_BxHxN[:, t] & ~ex.guide_BxHxN[:, t], None)
    block = roll.tokens_BxS[:, T + N + t * (1 + 3 + N): T + N + t * (1 + 3 + N) + 4]
    block_valid = roll.valid_BxS[:, T + N + t * (1 + 3 + N): T + N + t * (1 + 3 + N) + 4]
    np.testing.assert_array_equal(block_valid[:, 1:], out.obs_valid_BxO)
    np.testing.assert_array_equal(np.where(out.obs_valid_BxO, block[:, 1:], 0), out.obs_BxO)


def _windowed(model, k: int):
  graphdef, state = nnx.split(model)
  env, batch = CallbackEnv(EchoEnv()), _batch()
  params = SamplingParams(max_new_tokens=N, temperature=0.0, stop_ids=STOP)
  run = jax.jit(lambda state, key: agent_episode(nnx.merge(graphdef, state), batch.prompt_tokens_PxT,
                                                 batch.prompt_valid_PxT, env, key, params, G, H, end_ids=(EOS,),
                                                 guide_close_ids=(CLOSE,), batch=batch, history_window=k))
  return jax.device_get(run(state, jax.random.key(0)))


def test_a_window_holding_the_whole_history_replays_the_one_cache_episode(model, episode):
  """history_window = H - 1 rebuilds the cache every step from a window that still holds every
  earlier step: the same greedy episode, id for id, with the same log-probs, in H rows per episode."""
  one, _ = episode()
  win = _windowed(model, H - 1)
  assert win.extras.rows_per_episode == H and win.tokens_BxS.shape[0] == one.tokens_BxS.shape[0] * H
  for name in ("step_tokens_BxHxN", "step_valid_BxHxN", "guide_BxHxN", "step_taken_BxH", "num_steps_B", "success_B"):
    a, b = getattr(one.extras, name), getattr(win.extras, name)
    np.testing.assert_array_equal(np.where(one.extras.step_valid_BxHxN, a, 0) if a.ndim == 3 else a,
                                  np.where(win.extras.step_valid_BxHxN, b, 0) if b.ndim == 3 else b, err_msg=name)
  np.testing.assert_allclose(win.sampler_logp_BxS[win.loss_mask_BxS].sum(), one.sampler_logp_BxS[one.loss_mask_BxS].sum(),
                             rtol=1e-5)
  # A larger window is capped at H - 1: it would only add holes to every row.
  graphdef, state = nnx.split(model)
  batch = _batch()
  wide = jax.eval_shape(lambda: agent_episode(
      nnx.merge(graphdef, state), batch.prompt_tokens_PxT, batch.prompt_valid_PxT, CallbackEnv(EchoEnv()),
      jax.random.key(0), SamplingParams(max_new_tokens=N, temperature=0.0, stop_ids=STOP), G, H, end_ids=(EOS,),
      guide_close_ids=(CLOSE,), batch=batch, history_window=50))
  assert wide.tokens_BxS.shape == win.tokens_BxS.shape == (len(LENGTHS) * G * H, T + (H - 1) * (N + 1 + 3) + N)


def test_windowed_rows_are_each_steps_own_context_read_from_scratch(model):
  """history_window = 1: the row of step t is [prompt | y_{t-1} end o_{t-1} | y_t]; greedy y_t is the
  argmax of a full forward pass over that row's real ids and the trainer's log-probs over the row
  (holes and all) are the sampler's; the window's step and observation are the environment's replay."""
  from selfrl_jax.train.step import sequence_logprobs  # pylint: disable=import-outside-toplevel
  roll = _windowed(model, 1)
  ex = roll.extras
  b, s = len(LENGTHS) * G, roll.tokens_BxS.shape[1]
  assert s == T + (N + 1 + EchoEnv.obs_len) + N and roll.loss_slots == tuple(range(s - N, s))
  tokens, valid = roll.tokens_BxS.reshape(b, H, s), roll.valid_BxS.reshape(b, H, s)
  np.testing.assert_array_equal(valid[:, :, -N:].any(-1), ex.step_taken_BxH)     # unplayed steps: empty rows
  replay = EchoEnv()
  replay.reset(np.arange(len(LENGTHS)), None, G, 0)
  prompts = np.repeat(np.asarray(_batch().prompt_tokens_PxT), G, axis=0)
  prompt_valid = np.repeat(np.asarray(_batch().prompt_valid_PxT), G, axis=0)
  prev_obs = None
  for t in range(H):
    for r in np.flatnonzero(ex.step_taken_BxH[:, t]):
      expect = list(prompts[r][prompt_valid[r]])
      if t:
        prev = ex.step_tokens_BxHxN[r, t - 1][ex.step_valid_BxHxN[r, t - 1]]
        stopped = bool(np.isin(prev[-1], STOP))
        expect += list(prev) + ([] if stopped else [EOS]) + list(prev_obs.obs_BxO[r][prev_obs.obs_valid_BxO[r]])
      got = tokens[r, t][valid[r, t]][:-int(ex.step_valid_BxHxN[r, t].sum())]
      assert list(got) == expect, (r, t)
    prev_obs = replay.step(ex.step_tokens_BxHxN[:, t], ex.step_valid_BxHxN[:, t] & ~ex.guide_BxHxN[:, t], None)
  rows = roll.tokens_BxS.shape[0]
  compact = np.zeros((rows, s), np.int32)
  compact_valid = np.zeros((rows, s), bool)
  for r in range(rows):
    ids = roll.tokens_BxS[r][roll.valid_BxS[r]]
    compact[r, :len(ids)], compact_valid[r, :len(ids)] = ids, True
  logp = np.asarray(jax.nn.log_softmax(model.logits(forward_full(model, jnp.asarray(compact), jnp.asarray(compact_valid)))))
  for r in range(rows):
    gen = roll.loss_mask_BxS[r][roll.valid_BxS[r]]
    pos = np.flatnonzero(gen)
    np.testing.assert_array_equal(compact[r, pos], logp[r, pos - 1].argmax(-1))
  trainer = sequence_logprobs(model, jnp.asarray(roll.tokens_BxS), jnp.asarray(roll.valid_BxS), temperature=1.0,
                              chunk_size=None, slots=roll.loss_slots)
  np.testing.assert_allclose(np.asarray(trainer)[roll.loss_mask_BxS], roll.sampler_logp_BxS[roll.loss_mask_BxS], atol=2e-5)
  assert roll.loss_mask_BxS.sum() == ex.step_valid_BxHxN.sum()


def test_crashing_environment_ends_episodes_as_failed(episode):
  roll, env = episode(crash_at=2)
  ex = roll.extras
  rows = np.repeat(np.arange(len(LENGTHS)), G)
  # Row group 0 ends after step 1 (before the crash); the others were running at step 2 and failed.
  np.testing.assert_array_equal(ex.failed_B, rows != 0)
  np.testing.assert_array_equal(ex.num_steps_B, np.where(rows == 0, 1, 2))
  assert not ex.success_B[rows != 0].any()
  assert env.counters["env_step_errors"] == 1


@pytest.mark.parametrize("show_distance,show_progress", [(False, False), (True, True)])
def test_grid_jax_equals_host_twin_and_counts_invalid_actions(show_distance, show_progress):
  tok = CharTokenizer()
  spec = GridSpec.for_tokenizer(tok, horizon=5, slip_prob=0.3, show_distance=show_distance, show_progress=show_progress)
  rng = np.random.default_rng(0)
  p, g, n = 6, 3, 3
  target = np.asarray([tok.encode(f"{a}{b}{c}{d}") + [EOS] for a, b, c, d in [(0, 0, 6, 6), (2, 2, 0, 3), (6, 0, 0, 6),
                                                                             (3, 0, 4, 0), (0, 6, 6, 4), (4, 2, 4, 4)]],
                      np.int32)
  batch = dataclasses.replace(_batch(1), target_tokens_PxA=jnp.asarray(target), example_id_P=jnp.arange(p))
  jax_env, host = GridEnv(spec), GridHostEnv(spec)
  state = jax_env.reset(batch, g, jax.random.key(0))
  host.reset(np.arange(p), target, g, 0)
  vocab = [tok.encode(ch)[0] for ch in "udlrx+"]
  for t in range(5):
    action = rng.choice(vocab, (p * g, n)).astype(np.int32)
    valid = rng.random((p * g, n)) < 0.8
    key = jax.random.key(t)
    running = ~np.asarray(state.done_B)
    state, out = jax_env.step(state, jnp.asarray(action), jnp.asarray(valid), key)
    ref = host.step(action, valid, np.asarray(jax.random.uniform(key, (p * g,))))
    for name in EnvStep.__dataclass_fields__:
      np.testing.assert_array_equal(np.asarray(getattr(out, name)), np.asarray(getattr(ref, name)), err_msg=name)
    first = np.where(valid.any(1), action[np.arange(p * g), valid.argmax(1)], -1)
    np.testing.assert_array_equal(np.asarray(out.invalid_B), running & ~np.isin(first, vocab[:4]))
  # An action that is not a move (or no action) is invalid, and only while the episode runs.
  state = jax_env.reset(batch, g, jax.random.key(0))
  bad = jnp.full((p * g, n), vocab[4], jnp.int32)
  _, out = jax_env.step(state, bad, jnp.ones((p * g, n), bool), jax.random.key(9))
  assert np.asarray(out.invalid_B).all() and (np.asarray(out.progress_B) == 0).all()
  _, out = jax_env.step(state, bad, jnp.zeros((p * g, n), bool), jax.random.key(9))
  assert np.asarray(out.invalid_B).all()


def _train_two_steps(env: str, mode: str, **self_guide):
  from configs.self_guide import tiny_grid  # pylint: disable=import-outside-toplevel
  from selfrl_jax.train import builders  # pylint: disable=import-outside-toplevel
  from selfrl_jax.train.state import create_train_state, make_optimizer  # pylint: disable=import-outside-toplevel
  from selfrl_jax.train.step import make_train_step  # pylint: disable=import-outside-toplevel
  cfg = tiny_grid.get_config()
  with cfg.unlocked():
    cfg.self_guide.env, cfg.rl.mode, cfg.self_guide.max_steps = env, mode, 4
    cfg.self_guide.schedule, cfg.rl.prompts_per_step, cfg.rl.micro_batch_size = "immediate", 2, 8
    cfg.model.d_model, cfg.model.d_ff = 32, 64
    cfg.task.train_size = 64
    cfg.self_guide.update(self_guide)
  model, tok = builders.build_model(cfg)
  source = builders.build_sources(cfg)[0]
  algo = builders.build_algorithm(cfg, tok, source)
  tx = make_optimizer(cfg.optim)
  graphdef, state = create_train_state(model, tx, cfg.seed, keep_reference=True, algorithm=algo)
  step = make_train_step(builders.build_update_settings(cfg, algo), algo, graphdef, tx)
  batches = iter(builders.prompt_batches(cfg, source, tok, batch_size=2, seed=0))
  metrics = []
  for _ in range(2):
    state, m = step(state, next(batches))
    metrics.append(jax.device_get(m))
  return jax.device_get(state.params), metrics, step.compilations()


def test_jax_grid_fused_equals_host_grid_split():
  """Same keys -> same episodes -> same parameters, whether the grid is traced into one program or
  runs on the host behind callbacks with the update compiled separately."""
  params_fused, m_fused, compiled_fused = _train_two_steps("grid", "fused")
  params_split, m_split, compiled_split = _train_two_steps("grid_host", "split")
  for name in ("agent/success", "agent/episode_len", "sg/frac_positive", "reward_mean", "sg/lambda"):
    assert [float(m[name]) for m in m_fused] == pytest.approx([float(m[name]) for m in m_split], abs=1e-6), name
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params_fused, params_split)
  assert (compiled_fused, compiled_split) == (1, 1)   # nothing recompiles in the second iteration


def test_training_with_a_window_holding_the_whole_history_equals_training_on_one_cache():
  """history_window = H - 1 (every step still sees every earlier one): the same sampled episodes, and
  one row per step with each token's advantage mapped from its episode (here per-step reward-to-go,
  guidance tokens on the environment-only advantage), give the same update as one row per episode."""
  knobs = dict(step_credit="reward_to_go", sg_reward_on_guide_tokens=False)
  params_one, m_one, _ = _train_two_steps("grid", "fused", **knobs)
  params_win, m_win, compiled = _train_two_steps("grid", "fused", history_window=3, **knobs)
  for name in ("agent/success", "agent/episode_len", "sg/frac_positive", "reward_mean", "generated_tokens"):
    assert [float(m[name]) for m in m_win] == pytest.approx([float(m[name]) for m in m_one], abs=1e-6), name
  for name in ("adv_abs_mean", "grad_norm"):   # ("loss" is a mean over micro-batches, which differ)
    assert [float(m[name]) for m in m_win] == pytest.approx([float(m[name]) for m in m_one], rel=1e-4), name
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), params_win, params_one)
  assert compiled == 1


def test_evaluation_plays_its_two_modes_one_after_the_other_on_a_host_environment():
  """The guided and unguided evaluation episodes share one host environment inside one program: each
  must equal the same mode's episode compiled alone (interleaved callbacks would mix their games)."""
  from configs.self_guide import tiny_grid  # pylint: disable=import-outside-toplevel
  from selfrl_jax.train import builders  # pylint: disable=import-outside-toplevel
  cfg = tiny_grid.get_config()
  with cfg.unlocked():
    cfg.self_guide.env, cfg.self_guide.max_steps = "grid_host", 6
    cfg.model.d_model, cfg.model.d_ff = 32, 64
    cfg.task.train_size = 64
  model, tok = builders.build_model(cfg)
  source = builders.build_sources(cfg)[0]
  algo = builders.build_algorithm(cfg, tok, source).for_eval(builders.build_algorithm(cfg, tok, source).sampling)
  batch = next(iter(builders.prompt_batches(cfg, source, tok, batch_size=8, seed=0)))
  graphdef, params = nnx.split(model)
  both = jax.jit(lambda p, k: algo.eval_outputs(nnx.merge(graphdef, p), batch, k))(params, jax.random.key(3))
  for prefix, guided in (("", True), ("unguided_", False)):
    alone = jax.jit(lambda p, k, g=guided: algo.episode(nnx.merge(graphdef, p), batch, k, g).extras)(params, jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(both[f"{prefix}len_B"]), np.asarray(alone.num_steps_B), err_msg=prefix)
    np.testing.assert_array_equal(np.asarray(both[f"{prefix}success_B"]), np.asarray(alone.success_B), err_msg=prefix)
  # Without `after_all` both resets ran first and the guided episodes ended after 2 steps, not 6 (measured).


@pytest.mark.parametrize("show_distance,show_progress,guide_close", [(False, False, "|"), (True, False, ";"),
                                                                    (False, True, "|")])
def test_grid_warm_start_demos_replay_through_the_host_env(show_distance, show_progress, guide_close):
  """The scripted demonstrations are episodes of the environment the RL step plays: every observation
  is what `GridHostEnv` renders after one of the four moves (a slip may change the written one), and
  the labels from step 2 on are the env's true progress of the previous move ~70% of the time; steps
  are written with the configured guide close (a review found ";" demonstrated as "|")."""
  from selfrl_jax.algos.self_guide_config import scripted_episode  # pylint: disable=import-outside-toplevel
  from selfrl_jax.data.grid_nav import DIST_CHARS, PROGRESS_CHARS, maze_tables  # pylint: disable=import-outside-toplevel
  tok = CharTokenizer()
  spec = GridSpec.for_tokenizer(tok, horizon=14, slip_prob=0.2, show_distance=show_distance, show_progress=show_progress)
  host, t = GridHostEnv(spec), maze_tables()
  assert host.obs_len == 3 + show_distance + show_progress
  rng = np.random.default_rng(0)
  free = np.flatnonzero(t.free_C)
  hits = total = 0
  for _ in range(200):
    goal, start = (int(c) for c in rng.choice(free, 2, replace=False))
    texts, _ = scripted_episode(goal, start, 14, 0.2, 0.3, 0.7, True, ("+", "=", "-"), rng, show_distance, guide_close,
                                show_progress)
    target = np.asarray([tok.encode(f"{goal // 7}{goal % 7}{start // 7}{start % 7}")], np.int32)
    host.reset(np.arange(1), target, 1, 0)
    progress = None
    for k in range(0, len(texts), 2):
      label, move = texts[k].split(guide_close)
      assert label in "+=-" and move in "udlr"
      if progress is not None:
        hits += label == "+=-"[{1: 0, 0: 1, -1: 2}[progress]]
        total += 1
      state = host.state
      outcomes = []
      for m in "udlr":   # the move actually taken (u >= slip_prob: no slip)
        host.state = tuple(np.copy(x) for x in state)
        out = host.step(np.asarray([[tok.encode(m)[0]]]), np.ones((1, 1), bool), np.asarray([0.99]))
        outcomes.append((tok.decode(out.obs_BxO[0][out.obs_valid_BxO[0]].tolist()), int(out.progress_B[0]),
                         bool(out.done_B[0]), host.state))
      if k + 1 < len(texts):
        match = [o for o in outcomes if o[0] == texts[k + 1] and not o[2]]
        assert match, (texts[k + 1], outcomes)
        _, progress, _, host.state = match[0]
        if show_distance:
          cell = int(host.state[0][0])
          assert texts[k + 1][2] == DIST_CHARS[t.dist_CxC[goal, cell]]
        if show_progress:   # the cue is the true progress of the move just taken
          assert texts[k + 1][-2] == PROGRESS_CHARS[1 - progress]
  assert total > 1000 and abs(hits / total - 0.7) < 0.04, (hits, total)


def test_an_episode_longer_than_the_model_context_is_refused_when_traced(model):
  """No history window: an episode layout past `max_position` raises, naming the sizes, before anything runs."""
  graphdef, state = nnx.split(model)
  short = nnx.merge(graphdef, state)
  short.cfg = dataclasses.replace(short.cfg, max_position=T + H * N + (H - 1) * 4 - 1)   # one position short
  batch = _batch()
  params = SamplingParams(max_new_tokens=N, temperature=0.0, stop_ids=STOP)
  with pytest.raises(ValueError, match=r"takes 34 positions .* more than the model's max_position 33"):
    jax.eval_shape(lambda: agent_episode(short, batch.prompt_tokens_PxT, batch.prompt_valid_PxT, CallbackEnv(EchoEnv()),
                                         jax.random.key(0), params, G, H, end_ids=(EOS,), guide_close_ids=(CLOSE,),
                                         batch=batch))
