"""Each seam of the extension point, exercised by the stand-in algorithms of tests/toy_algorithms.py.

- several host pauses per iteration (a toy environment): fused equals split, nothing recompiles;
- per-token surrogate choice and per-token sampling temperature reach the trainer;
- a rollout whose rows append different-length ids equals the re-tokenised concatenation;
- algorithm state: updated after the update, checkpointed, bit-identical after a crash and resume;
- registry and validation: unknown algorithms, foreign sections, ignored knobs name the field.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sampling_fixtures import left_padded_prompts, peaked_model
from toy_algorithms import OBS_WIDTH, EMABaselineGRPO, ToyEnvAgent, observation

from selfrl_jax.algos.base import PhaseContext, StepRecord
from selfrl_jax.algos.registry import AlgorithmSpec, register_algorithm
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.models.config import tiny_config
from selfrl_jax.models.decoder import init_model
from selfrl_jax.models.tokenizers import CharTokenizer
from selfrl_jax.rollouts.segments import context, generated, pack_segments
from selfrl_jax.sampling.sampler import SamplingParams, continue_generation, generate
from selfrl_jax.train.state import create_train_state
from selfrl_jax.train.step import UpdateSettings, make_train_step, sequence_logprobs

P, G, T, N = 2, 4, 6, 4
TOK = CharTokenizer()


def _batch():
  tokens, valid = left_padded_prompts([6, 4], T, 40)
  return PromptBatch(prompt_tokens_PxT=tokens, prompt_valid_PxT=valid, prompt_len_P=valid.sum(1),
                     target_tokens_PxA=jnp.zeros((P, 3), jnp.int32), target_len_P=jnp.ones((P,), jnp.int32),
                     example_id_P=jnp.arange(P))


def _toy_env_step(mode: str):
  model = init_model(tiny_config(vocab_size=TOK.vocab_size, d_model=32, d_ff=64, n_heads=2, n_kv_heads=1, head_dim=16))
  algo = ToyEnvAgent(sampling=SamplingParams(max_new_tokens=N, temperature=1.0), group_size=G,
                     digit_ids=tuple(TOK.encode("0123456789")))
  tx = optax.adam(1e-2)
  graphdef, state = create_train_state(model, tx, seed=0, keep_reference=False, algorithm=algo)
  settings = UpdateSettings(rollouts=P * G, group_size=G, temperature=1.0, clip_low=0.2, clip_high=0.28,
                            use_reference=False, kl_estimator="k3", loss_agg="token_mean",
                            norm_len=algo.response_slots, num_epochs=2, num_minibatches=2, micro_batch_size=4,
                            logprob_chunk=None, mode=mode, objectives=algo.objectives,
                            surrogate_kwargs=algo.surrogate_kwargs)
  return make_train_step(settings, algo, graphdef, tx), state, algo


@pytest.fixture(scope="module")
def toy_env_runs():
  runs = {}
  for mode in ("fused", "split"):
    step, state, algo = _toy_env_step(mode)
    history = []
    for _ in range(3):
      state, metrics = step(state, _batch())
      history.append((jax.device_get(metrics), step.compilations()))
    runs[mode] = (state, history, algo)
  return runs


def test_three_host_pauses_fused_equals_split(toy_env_runs):
  (fused, fused_hist, _), (split, split_hist, split_algo) = toy_env_runs["fused"], toy_env_runs["split"]
  for a, b in zip(jax.tree.leaves(fused.params), jax.tree.leaves(split.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for (fm, _), (sm, _) in zip(fused_hist, split_hist):
    assert fm.keys() == sm.keys()
    for k in fm:
      np.testing.assert_array_equal(fm[k], sm[k], err_msg=k)
  # Split mode ran every host phase on the host, once per iteration: 2 observations + 1 reward.
  assert split_algo.calls == {"observe": 6, "reward": 3}
  assert float(fused_hist[-1][0]["grad_norm"]) > 0 and int(fused.step) == 3


def test_toy_env_compiles_once_per_program(toy_env_runs):
  assert [c for _, c in toy_env_runs["fused"][1]] == [1, 1, 1]
  # Device runs [act1], [act2], [act3], [update] between the three host pauses.
  assert [c for _, c in toy_env_runs["split"][1]] == [4, 4, 4]


def test_per_token_temperature_and_objective_reach_the_trainer(toy_env_runs):
  metrics = toy_env_runs["fused"][1][0][0]
  # Turn 2 is sampled at T = 0.5: the trainer's log-probs match the sampler's only if it rescores
  # those tokens at 0.5 (at 1.0 the gap is ~0.5 nats for this model).
  assert float(metrics["logp_gap"]) < 1e-4
  # Turn-2 tokens use is_weight, the others ppo_clip: the fractions the algorithm assigned.
  frac = float(metrics["reward/turn2_len"]) * P * G / float(metrics["generated_tokens"])
  np.testing.assert_allclose(float(metrics["objective_frac/is_weight"]), frac, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["objective_frac/ppo_clip"]), 1 - frac, rtol=1e-5)


def test_wrong_temperature_would_show_in_the_gap():
  """Precondition of the test above: rescoring turn 2 at 1.0 gives a large gap."""
  step, state, algo = _toy_env_step("fused")
  model = nnx.merge(step.graphdef, state.params)
  record = algo.act1(_ctx(model), StepRecord(batch=_batch()))
  for phase in (algo.observe, algo.act, algo.observe, algo.act):
    record = phase(_ctx(model), record)
  r = record.rollout
  logp_right = sequence_logprobs(model, r.tokens_BxS, r.valid_BxS, temperature=r.temperature_BxS, chunk_size=None)
  logp_wrong = sequence_logprobs(model, r.tokens_BxS, r.valid_BxS, temperature=1.0, chunk_size=None)
  turn2 = np.asarray(r.turn_id_BxS == 2)
  gap = lambda lp: float(np.abs(np.asarray(lp) - np.asarray(r.sampler_logp_BxS))[turn2].mean())  # noqa: E731
  assert gap(logp_right) < 1e-4 and gap(logp_wrong) > 0.05


def _ctx(model):
  return PhaseContext(model=model, key=jax.random.key(3), step=jnp.int32(0))


def test_rows_appending_different_length_ids_equal_the_retokenised_concatenation():
  """[prompt | y1 | obs | y2] with per-row observation lengths 1..3 (holes on the left), greedy."""
  v = 64
  model = peaked_model("llama", v)
  prompts, valid = left_padded_prompts([6, 3, 5], T, v)
  params = SamplingParams(max_new_tokens=4, temperature=0.0, stop_ids=(2,))
  out1 = generate(model, prompts, valid, jax.random.key(0), params, extra_capacity=OBS_WIDTH + 4)
  obs, obs_valid = observation(np.asarray(out1.tokens_BxN), np.asarray(out1.valid_BxN))
  assert len(set(obs_valid.sum(1).tolist())) > 1  # the rows really append different lengths
  out2 = continue_generation(model, out1.cache, jnp.asarray(obs), jnp.asarray(obs_valid), jax.random.key(1), params)
  rollout = pack_segments([context(prompts, valid), generated(out1, 1, params), context(jnp.asarray(obs), jnp.asarray(obs_valid)),
                           generated(out2, 2, params)])
  tokens, slot_valid = np.asarray(rollout.tokens_BxS), np.asarray(rollout.valid_BxS)
  for row in range(3):
    # Reference: the row's real tokens, concatenated without holes, sampled from scratch.
    ctx_ids = np.concatenate([np.asarray(prompts[row])[np.asarray(valid[row])],
                              np.asarray(out1.tokens_BxN[row])[np.asarray(out1.valid_BxN[row])],
                              obs[row][obs_valid[row]]])
    ref = generate(model, jnp.asarray(ctx_ids)[None], jnp.ones((1, len(ctx_ids)), bool), jax.random.key(2), params)
    np.testing.assert_array_equal(np.asarray(out2.tokens_BxN[row]), np.asarray(ref.tokens_BxN[0]))
    # The packed layout with holes removed is exactly that concatenation followed by y2.
    y2 = np.asarray(ref.tokens_BxN[0])[np.asarray(ref.valid_BxN[0])]
    np.testing.assert_array_equal(tokens[row][slot_valid[row]], np.concatenate([ctx_ids, y2]))
  # The trainer's forward pass over the packed buffer reproduces the sampler's log-probs.
  logp = sequence_logprobs(model, rollout.tokens_BxS, rollout.valid_BxS, temperature=rollout.temperature_BxS,
                           chunk_size=None)
  mask = np.asarray(rollout.loss_mask_BxS)
  assert np.abs(np.asarray(logp) - np.asarray(rollout.sampler_logp_BxS))[mask].max() < 1e-4
  turn_id = np.asarray(rollout.turn_id_BxS)
  np.testing.assert_array_equal(turn_id[:, T:T + 4], np.asarray(out1.valid_BxN).astype(int))
  np.testing.assert_array_equal(turn_id[:, -4:], 2 * np.asarray(out2.valid_BxN).astype(int))


def test_pack_segments_rejects_layouts_without_a_generated_turn():
  tokens, valid = left_padded_prompts([2], 3, 10)
  with pytest.raises(ValueError, match="no generated segment"):
    pack_segments([context(tokens, valid)])


# ---------------------------------------------------------------------------------------------
# Algorithm state: in TrainState, updated after the update, checkpointed, resumed bit-exactly.

CRASH = {"at_step": -1}


def _ema_spec():
  def build(cfg, tok, reward_fn, sampling, records=None):
    return EMABaselineGRPO(sampling=sampling, group_size=cfg.rl.group_size, advantage="grpo", kl_coef=0.0,
                           reward_fn=reward_fn, crash_at_step=CRASH["at_step"])
  return register_algorithm(AlgorithmSpec(name="ema_grpo", build=build))


def _ema_config():
  from configs.tiny.grpo_arithmetic import get_config
  _ema_spec()
  cfg = get_config()
  cfg.rl.algorithm = "ema_grpo"
  cfg.rl.mode = "split"
  cfg.sft.steps = 0
  cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size = 8, 4, 32
  cfg.train.num_steps, cfg.train.checkpoint_every, cfg.train.eval_every = 6, 2, 0
  cfg.train.eval_size, cfg.train.progress = 128, False
  return cfg


def _checkpoint_leaves(workdir, step):
  import orbax.checkpoint as ocp
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow
def test_algorithm_state_resumes_bit_exactly_after_a_crash(tmp_path):
  from selfrl_jax.train.loop import train

  CRASH["at_step"] = -1
  straight = train(_ema_config(), str(tmp_path / "straight"))
  CRASH["at_step"] = 3  # the host reward phase raises once 3 steps are done (checkpoint at 2)
  with pytest.raises(RuntimeError, match="simulated crash"):
    train(_ema_config(), str(tmp_path / "crashed"))
  CRASH["at_step"] = -1
  resumed = train(_ema_config(), str(tmp_path / "crashed"))
  assert resumed["resumed_from"] == 2 and straight["compilations"] == resumed["compilations"] == 2
  a, b = _checkpoint_leaves(tmp_path / "straight", 6), _checkpoint_leaves(tmp_path / "crashed", 6)
  assert a.keys() == b.keys()
  algo_keys = [k for k in a if "algo_state" in k]
  assert len(algo_keys) == 3, a.keys()  # baseline, probe_D, updates are checkpointed
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  updates = next(v for k, v in a.items() if "updates" in k)
  probe_D = next(v for k, v in a.items() if "probe_D" in k)
  assert int(updates) == 6  # advanced once after each update
  # The untrained model earns no exact-match reward, so probe_D = 0.9^6 * its initial value.
  from selfrl_jax.train.state import create_train_state as make
  init = make(init_model(tiny_config(vocab_size=8)), optax.sgd(1.0), seed=0, keep_reference=False,
              algorithm=EMABaselineGRPO(sampling=None, group_size=1, advantage="grpo", kl_coef=0.0,
                                        reward_fn=None))[1].algo_state["probe_D"]
  np.testing.assert_allclose(probe_D, 0.9 ** 6 * np.asarray(init), rtol=1e-5)


def test_algorithm_state_is_an_argument_not_a_constant():
  """Changing the state's values changes the step's result without recompiling."""
  from selfrl_jax.rewards.registry import exact_match

  model = init_model(tiny_config(vocab_size=TOK.vocab_size, d_model=32, d_ff=64, n_heads=2, n_kv_heads=1, head_dim=16))
  reward = lambda rollout, batch: rollout.response_valid_BxN.sum(1) / N  # noqa: E731
  algo = EMABaselineGRPO(sampling=SamplingParams(max_new_tokens=N, temperature=1.0, stop_ids=TOK.eos_ids),
                         group_size=G, advantage="grpo", kl_coef=0.0, reward_fn=reward)
  del exact_match
  tx = optax.sgd(1.0)
  graphdef, state = create_train_state(model, tx, seed=0, keep_reference=False, algorithm=algo)
  settings = UpdateSettings(rollouts=P * G, group_size=G, temperature=1.0, clip_low=0.2, clip_high=0.28,
                            use_reference=False, kl_estimator="k3", loss_agg="token_mean", norm_len=N,
                            num_epochs=1, num_minibatches=1, micro_batch_size=P * G, logprob_chunk=None)
  step = make_train_step(settings, algo, graphdef, tx)
  shifted = state.replace(algo_state={**state.algo_state, "baseline": jnp.float32(0.5)})
  a, ma = step(jax.tree.map(jnp.copy, state), _batch())
  b, mb = step(shifted, _batch())
  assert step.compilations() == 1
  assert float(ma["ema_baseline"]) == 0.0 and float(mb["ema_baseline"]) == 0.5
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
  assert int(a.algo_state["updates"]) == 1 and int(ma["algo_state_updates"]) == 1


# ---------------------------------------------------------------------------------------------
# Registry and validation.


def test_unknown_algorithm_names_the_field_and_the_choices():
  from configs.tiny.grpo_arithmetic import get_config
  from selfrl_jax.train.builders import ConfigError, validate_config
  cfg = get_config()
  cfg.rl.algorithm = "scor"
  with pytest.raises(ConfigError, match=r"config.rl.algorithm: unknown algorithm 'scor'; available: .*'grpo'.*'score'"):
    validate_config(cfg, num_devices=1)


def test_algorithm_without_its_section_or_with_a_foreign_one_fails():
  from configs.common import get_base_config
  from configs.tiny.grpo_arithmetic import get_config
  from selfrl_jax.train.builders import ConfigError, validate_config
  cfg = get_config()
  cfg.rl.algorithm = "score"  # a GRPO config has no config.score
  with pytest.raises(ConfigError, match=r"config.score: rl.algorithm='score' reads its knobs from config.score"):
    validate_config(cfg, num_devices=1)
  cfg = get_base_config("score")
  cfg.rl.algorithm = "grpo"  # config.score would be silently ignored
  with pytest.raises(ConfigError, match=r"config.score: is not a shared section"):
    validate_config(cfg, num_devices=1)


@pytest.mark.parametrize("knob, value, instead", [("kl_coef", 0.05, "score.beta1"), ("advantage", "rloo", "score.baseline")])
def test_knobs_an_algorithm_ignores_fail_and_name_the_replacement(knob, value, instead):
  from configs.score.tiny_arithmetic import get_config
  from selfrl_jax.train.builders import ConfigError, validate_config
  cfg = get_config()
  validate_config(cfg, num_devices=1)
  cfg.rl[knob] = value
  with pytest.raises(ConfigError, match=rf"config.rl.{knob}: is ignored by rl.algorithm='score': set {instead}"):
    validate_config(cfg, num_devices=1)


def test_phases_must_end_with_the_update():
  algo = dataclasses.replace(ToyEnvAgent(sampling=SamplingParams(max_new_tokens=2), group_size=2, digit_ids=(1,)))
  broken = type("Broken", (ToyEnvAgent,), {"phases": lambda self: ToyEnvAgent.phases(self)[:-1]})
  with pytest.raises(ValueError, match="must end with UPDATE"):
    make_train_step(UpdateSettings(rollouts=4, group_size=2, temperature=1.0, clip_low=0.2, clip_high=0.2,
                                   use_reference=False, kl_estimator="k3", loss_agg="token_mean", norm_len=2,
                                   num_epochs=1, num_minibatches=1, micro_batch_size=4, logprob_chunk=None),
                    broken(**{f.name: getattr(algo, f.name) for f in dataclasses.fields(algo)}), None, optax.sgd(1.0))


def test_shared_code_names_no_paper():
  """train/, configs/common.py and experiments/train.py reach papers only through the registry."""
  import pathlib
  import re
  root = pathlib.Path(__file__).resolve().parents[1]
  files = sorted((root / "selfrl_jax" / "train").glob("*.py")) + [root / "configs" / "common.py",
                                                                   root / "experiments" / "train.py"]
  pattern = re.compile(r"scor\b|\bscore\b|self[_ -]?guide|ssrl|\bherl|rlavr|\bcare\b", re.IGNORECASE)
  hits = [f"{f.relative_to(root)}:{i + 1}: {line.strip()}" for f in files
          for i, line in enumerate(f.read_text().splitlines()) if pattern.search(line)]
  assert len(files) > 8 and not hits, hits
