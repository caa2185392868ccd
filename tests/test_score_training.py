"""SCoRe inside the shared trainer: STaR stage 2 as a loss identity, the evaluator, config validation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sampling_fixtures import left_padded_prompts, peaked_model
from test_configs import CONFIG_DIR, load_config
from test_score_objective import R1, R2, _algo, _fake_rollout, _rewards, _terms

from configs.score.tiny_arithmetic import ARMS
from configs.score.tiny_prefix_sums import ARMS as PREFIX_ARMS
from selfrl_jax.algos.losses import policy_loss
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.eval.self_correction import self_correction_metrics
from selfrl_jax.rewards.registry import exact_match
from selfrl_jax.rollouts.two_turn import two_turn_rollout
from selfrl_jax.sampling.sampler import SamplingParams
from selfrl_jax.train import builders
from selfrl_jax.train.evaluation import Evaluator
from selfrl_jax.train.state import create_train_state
from selfrl_jax.train.step import make_train_step

# Rows: wrong->fixed, right->kept, right->broken, wrong->wrong; 2 turn-1 and 2 turn-2 slots each.
TURNS = np.array([[0, 1, 1, 0, 2, 2]] * 4)


def test_star_advantages_turn_the_shared_loss_into_sft_on_kept_corrections():
  algo = _algo(stage2_algo="star", group_size=4)
  rollout = _fake_rollout(TURNS)
  adv_BxS, keep_B = algo.star_advantages(rollout, jnp.asarray(R1), jnp.asarray(R2))
  np.testing.assert_array_equal(np.asarray(keep_B), [True, False, False, False])  # only wrong -> fixed
  logp_BxS = jnp.asarray(np.random.default_rng(0).normal(size=TURNS.shape), jnp.float32)
  mask_BxS = rollout.loss_mask_BxS

  def shared(logp):  # one epoch: old = logp, so the clipped PG loss is -sum(A logp) / n_loss in gradient
    return policy_loss(logp, jax.lax.stop_gradient(logp), None, adv_BxS, mask_BxS, clip_low=0.2, clip_high=0.28,
                       kl_coef=0.0, kl_estimator="k3", agg_mode="token_mean")[0]

  kept = (TURNS == 2) & np.array([True, False, False, False])[:, None]
  sft = lambda logp: -jnp.where(kept, logp, 0.0).sum() / kept.sum()  # noqa: E731  mean NLL of kept y2 tokens
  np.testing.assert_allclose(np.asarray(jax.grad(shared)(logp_BxS)), np.asarray(jax.grad(sft)(logp_BxS)),
                             rtol=1e-6, atol=1e-7)


def test_star_replaces_only_stage_two():
  algo = _algo(stage2_algo="star", group_size=4, stage1_steps=3, beta1=0.01, beta2=0.1)
  rollout = _fake_rollout(TURNS)
  rewards = _rewards(R1, R2)
  _, kl1, m1 = _terms(algo, rollout, rewards, jnp.int32(0))   # Stage I: REINFORCE on r2 + KL
  adv2, kl2, m2 = _terms(algo, rollout, rewards, jnp.int32(5))  # Stage II: STaR, no KL
  assert int(m1["stage"]) == 1 and int(m2["stage"]) == 2
  np.testing.assert_allclose(np.asarray(kl1)[TURNS == 1], 0.1)
  assert float(jnp.abs(kl2).max()) == 0.0
  np.testing.assert_allclose(np.asarray(adv2)[0, 4:], 16 / 2)  # n_loss / n_kept = 16 / 2 on the kept y2
  assert float(jnp.abs(adv2[1:]).max()) == 0.0 and float(m2["star_kept_frac"]) == 0.25


def test_evaluator_reports_self_correction_metrics_of_greedy_attempts():
  vocab, n = 24, 3
  model = peaked_model("llama", vocab)
  graphdef, params = nnx.split(model)
  prompts_PxT, valid_PxT = left_padded_prompts([4, 2, 3, 4, 1, 3], 5, vocab, seed=3)
  greedy = SamplingParams(max_new_tokens=n, temperature=0.0, stop_ids=(2,))
  rollout, extras = jax.jit(lambda p, x, v: two_turn_rollout(nnx.merge(graphdef, p), x, v, (5,), (2,), jax.random.key(0),
                                                             greedy, greedy, 1))(params, prompts_PxT, valid_PxT)
  y1, y1_valid = np.asarray(extras.y1_tokens_BxN), np.asarray(extras.y1_valid_BxN)
  y2, y2_valid = np.asarray(rollout.response_tokens_BxN), np.asarray(rollout.response_valid_BxN)

  def answer(tokens, valid):  # valid tokens before the first stop token (what exact match compares)
    out = [t for t, ok in zip(tokens, valid) if ok]
    return out[:out.index(2)] if 2 in out else out

  # Targets: y1's answer for rows 0-2, y2's for rows 3-5, so right/wrong transitions depend on the model.
  answers = [answer(y1[i], y1_valid[i]) if i < 3 else answer(y2[i], y2_valid[i]) for i in range(6)]
  target = np.zeros((6, n + 1), np.int32)
  for i, a in enumerate(answers):
    target[i, :len(a)] = a
  batch = PromptBatch(prompt_tokens_PxT=np.asarray(prompts_PxT), prompt_valid_PxT=np.asarray(valid_PxT),
                      prompt_len_P=np.asarray(valid_PxT).sum(1).astype(np.int32), target_tokens_PxA=target,
                      target_len_P=np.array([len(a) + 1 for a in answers], np.int32),
                      example_id_P=np.arange(6, dtype=np.int32))
  algo = _algo(sampling=dataclasses.replace(greedy, temperature=1.0), instr_ids=(5,), group_size=2,
               reward_fn=exact_match(stop_ids=(2,)))
  metrics = Evaluator(graphdef, algo, greedy, [batch])(params)

  r1 = np.array([answer(y1[i], y1_valid[i]) == answers[i] for i in range(6)])
  r2 = np.array([answer(y2[i], y2_valid[i]) == answers[i] for i in range(6)])
  ref = self_correction_metrics(r1, r2, y1, y1_valid.sum(1), y2, y2_valid.sum(1))
  for key in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "frac_changed", "edit_ratio_mean"):
    assert metrics[f"eval/{key}"] == pytest.approx(ref[key]), key
  assert metrics["eval/accuracy"] == metrics["eval/acc_t2"]
  assert sum(metrics[f"eval/edit_ratio_hist/{i}"] for i in range(10)) == 6


@pytest.mark.parametrize("edit, field", [
    (lambda c: setattr(c.score, "turn_credit", "both"), "score.turn_credit"),
    (lambda c: setattr(c.score, "stage1_steps", 10**6), "score.stage1_steps"),
    (lambda c: setattr(c.score, "n_attempts_eval", 1), "score.n_attempts_eval"),
    (lambda c: (setattr(c.score, "stage2_algo", "star"), setattr(c.rl, "num_epochs", 2)), "score.stage2_algo"),
    # micro_batch_size keeps the 32 rollouts divisible, so the SCoRe rloo check is what fails.
    (lambda c: (setattr(c.rl, "group_size", 1), setattr(c.rl, "micro_batch_size", 32)), "rl.group_size"),
    (lambda c: setattr(c.task, "name", "arithmetic"), "sft.demos"),
    (lambda c: setattr(c.rl, "reward", "math"), "rl.reward"),
    (lambda c: setattr(c.rl, "kl_coef", 0.05), "rl.kl_coef"),
    (lambda c: setattr(c.rl, "advantage", "rloo"), "rl.advantage"),
    # Stage I switched on but zero steps long would silently be the "w/o Stage I" ablation.
    (lambda c: setattr(c.score, "stage1_steps", 0), "score.stage1_steps"),
    (lambda c: setattr(c.score, "turn2_adv_scale", 0.0), "score.turn2_adv_scale"),
    (lambda c: setattr(c.rl, "kl_estimator", "k1"), "rl.kl_estimator"),   # k1 in the loss anchors nothing
    (lambda c: setattr(c.rl, "kl_mode", "reward"), "rl.kl_estimator"),    # k3 as a reward follows no KL
    (lambda c: setattr(c.rl, "kl_mode", "return"), "rl.kl_mode"),
    # A knob the section does not define (here one renamed since) is named, not silently ignored.
    (lambda c: setattr(c.score, "first_turn_kl_only", True), "score.first_turn_kl_only"),
])
def test_bad_score_configs_name_the_field(edit, field):
  cfg = load_config(CONFIG_DIR / "score" / "tiny_arithmetic.py")
  with cfg.unlocked():
    edit(cfg)
  with pytest.raises(builders.ConfigError, match=f"config.{field}"):
    builders.validate_config(cfg, num_devices=1)


def test_full_kl_builds_for_score_in_both_modes():
  for mode in ("loss", "reward"):
    cfg = load_config(CONFIG_DIR / "score" / "tiny_arithmetic.py")
    with cfg.unlocked():
      cfg.rl.kl_estimator, cfg.rl.kl_mode = "full", mode
    builders.validate_config(cfg, num_devices=1)
    assert builders.build_algorithm(cfg, builders.build_model(cfg)[1]).kl_estimator == "full"


@pytest.mark.parametrize("knob, value, instead", [("kl_coef", 0.05, "score.beta1 / score.beta2"),
                                                  ("advantage", "rloo", "score.baseline")])
def test_shared_knobs_score_ignores_name_the_score_knob(knob, value, instead):
  """SCoRe has its own KL weights and baseline: setting the shared ones fails, pointing at SCoRe's."""
  cfg = load_config(CONFIG_DIR / "score" / "tiny_arithmetic.py")
  with cfg.unlocked():
    cfg.rl[knob] = value
  with pytest.raises(builders.ConfigError, match=f"config.rl.{knob}:.*set {instead}"):
    builders.validate_config(cfg, num_devices=1)


def test_score_config_without_its_section_names_it():
  """rl.algorithm='score' on a base config without config.score fails naming the missing section."""
  from configs.common import get_base_config
  cfg = get_base_config()
  assert "score" not in cfg
  with cfg.unlocked():
    cfg.rl.algorithm = "score"
  with pytest.raises(builders.ConfigError, match=r"config.score: .*get_base_config\('score'\)"):
    builders.validate_config(cfg, num_devices=1)
  cfg = get_base_config("score")
  assert cfg.rl.algorithm == "score" and cfg.score.baseline == "rloo"


TOY_ARMS = [("tiny_arithmetic.py", arm) for arm in ARMS] + [("tiny_prefix_sums.py", arm) for arm in PREFIX_ARMS]


@pytest.mark.parametrize("config,arm", TOY_ARMS)
def test_every_toy_arm_is_the_row_it_is_named_after(config, arm):
  cfg = load_config(CONFIG_DIR / "score" / config, arm)
  builders.validate_config(cfg, num_devices=1)
  algo = builders.build_algorithm(cfg, builders.build_model(cfg)[1])
  assert algo.multi_turn == (arm != "single_turn")
  # Table 4's "STaR instead of REINFORCE in Stage II" keeps Stage I; only these arms drop it.
  assert algo.use_stage1 == (arm not in ("naive_multi_turn", "naive_per_turn", "no_stage1", "star_no_stage1"))
  assert (algo.stage1_steps > 0) == algo.use_stage1
  assert algo.alpha == (0.0 if arm in ("naive_multi_turn", "naive_per_turn", "no_shaping", "shaping_control") else 10.0)
  assert algo.turn2_adv_scale == (11.0 if arm == "shaping_control" else 1.0)
  # The paper's naive baseline maximises the summed return: every token sees r1 + r2.
  assert algo.turn_credit == ("episode" if arm in ("naive_multi_turn", "episode") else "per_turn")
  assert algo.stage2_algo == ("star" if arm.startswith("star") else "reinforce")


def test_score_fused_and_split_steps_are_identical():
  """Two SCoRe iterations (Stage I then Stage II) in one program vs sample -> host rewards -> update."""
  cfg = load_config(CONFIG_DIR / "score" / "tiny_arithmetic.py")
  with cfg.unlocked():
    cfg.model.d_model, cfg.model.n_layers, cfg.model.d_ff = 32, 1, 64
    cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size = 4, 2, 4
    cfg.score.stage1_steps = 1
  model, tok = builders.build_model(cfg)
  algo = builders.build_algorithm(cfg, tok)
  tx = optax.adam(1e-2)
  graphdef, state = create_train_state(model, tx, seed=0, keep_reference=algo.needs_reference, algorithm=algo)
  assert state.algo_state is None  # SCoRe is stateless
  settings = builders.build_update_settings(cfg, algo)
  fns = make_train_step(dataclasses.replace(settings, mode="fused"), algo, graphdef, tx)
  split_fns = make_train_step(dataclasses.replace(settings, mode="split"), algo, graphdef, tx)
  rs = np.random.RandomState(0)
  prompts, valid = left_padded_prompts([8, 8, 7, 8], cfg.rl.max_prompt_len, 14, low=3, seed=1)
  batch = PromptBatch(prompt_tokens_PxT=prompts, prompt_valid_PxT=valid,
                      prompt_len_P=jnp.asarray(valid).sum(1).astype(jnp.int32),
                      target_tokens_PxA=jnp.asarray(rs.randint(3, 14, (4, cfg.rl.max_answer_len)), jnp.int32),
                      target_len_P=jnp.asarray([3, 4, 2, 5], jnp.int32), example_id_P=jnp.arange(4, dtype=jnp.int32))
  fused, split = state, jax.tree.map(jnp.copy, state)
  for stage in (1, 2):
    fused, fused_metrics = fns(fused, batch)
    split, split_metrics = split_fns(split, batch)
    assert int(fused_metrics["stage"]) == int(split_metrics["stage"]) == stage
    assert float(fused_metrics["reward/r1"]) == float(split_metrics["reward/r1"])
    assert float(fused_metrics["reward/r2"]) == float(split_metrics["reward/r2"])
    for a, b in zip(jax.tree.leaves(fused.params), jax.tree.leaves(split.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  # Fused: one program; split: one per run of device phases (rollout, then update).
  assert fns.fused._cache_size() == 1 and fns.compilations() == 1 and split_fns.compilations() == 2
