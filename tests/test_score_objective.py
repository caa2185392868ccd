"""SCoRe objective (score.md §10.2): shaping, stages, RLOO, credit, KL weights, metrics, STaR filter."""

import itertools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from selfrl_jax.algos import score
from selfrl_jax.algos.base import Rewards, TokenTerms
from selfrl_jax.algos.losses import policy_loss
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.eval.self_correction import self_correction_metrics
from selfrl_jax.rollouts.two_turn import TwoTurnExtras, TwoTurnRollout
from selfrl_jax.sampling.sampler import SamplingParams

# The four (r1, r2) outcomes: wrong->fixed, right->kept, right->broken, wrong->wrong.
R1 = np.array([0.0, 1.0, 1.0, 0.0], np.float32)
R2 = np.array([1.0, 1.0, 0.0, 0.0], np.float32)


def _algo(**kw):
  defaults = dict(sampling=SamplingParams(max_new_tokens=2), group_size=4, instr_ids=(3,), end_ids=(2,),
                  reward_fn=lambda r, b: None, stage1_steps=0)
  defaults.update(kw)
  return score.SCoRe(**defaults)


def _fake_rollout(turn_id_BxS, y1_BxN=None, y2_BxN=None):
  """A TwoTurnRollout with the given turn ids (loss on turn 1/2 tokens); token contents are filler."""
  turn = jnp.asarray(turn_id_BxS, jnp.int32)
  b = turn.shape[0]
  y1 = jnp.zeros((b, 2), jnp.int32) if y1_BxN is None else jnp.asarray(y1_BxN)
  y2 = jnp.zeros((b, 2), jnp.int32) if y2_BxN is None else jnp.asarray(y2_BxN)
  return TwoTurnRollout(tokens_BxS=jnp.zeros(turn.shape, jnp.int32), valid_BxS=jnp.ones(turn.shape, bool),
                        loss_mask_BxS=turn > 0, sampler_logp_BxS=jnp.zeros(turn.shape), turn_id_BxS=turn,
                        response_tokens_BxN=y2, response_valid_BxN=jnp.ones(y2.shape, bool),
                        stopped_B=jnp.ones((b,), bool),
                        extras=TwoTurnExtras(y1, jnp.ones(y1.shape, bool), jnp.ones((b,), bool)))


def _rewards(r1_B, r2_B):
  """SCoRe's Rewards: reward_B is the last trained turn's (r2), parts carry both turns."""
  r1_B, r2_B = jnp.asarray(r1_B, jnp.float32), jnp.asarray(r2_B, jnp.float32)
  return Rewards(reward_B=r2_B, parts={"r1_B": r1_B, "r2_B": r2_B})


def _terms(algo, rollout, rewards, step):
  """(adv_BxS, kl_weight_BxS, metrics) of `algo.advantages`, checking its TokenTerms contract."""
  terms = algo.advantages(rollout, rewards, step)
  assert isinstance(terms, TokenTerms) and terms.objective_BxS is None
  assert terms.adv_BxS.shape == terms.kl_weight_BxS.shape == rollout.tokens_BxS.shape
  return terms.adv_BxS, terms.kl_weight_BxS, terms.metrics


def test_shaping_table():
  R1_s2, R2_s2 = score.score_turn_rewards(R1, R2, 10.0, 2)
  np.testing.assert_array_equal(np.asarray(R2_s2), [11.0, 1.0, -10.0, 0.0])
  np.testing.assert_array_equal(np.asarray(R1_s2), R1)
  R1_s1, R2_s1 = score.score_turn_rewards(R1, R2, 10.0, 1)
  np.testing.assert_array_equal(np.asarray(R1_s1), np.zeros(4))
  np.testing.assert_array_equal(np.asarray(R2_s1), R2)
  # alpha = 0 is the plain sum of turn rewards (naive multi-turn RL, §11 (c)).
  np.testing.assert_array_equal(np.asarray(score.score_turn_rewards(R1, R2, 0.0, 2)[1]), R2)


def test_stage_controller_traced_step():
  f = jax.jit(lambda s: score.stage_of(s, True, 3))
  assert [int(f(jnp.int32(s))) for s in range(6)] == [1, 1, 1, 2, 2, 2]
  assert f._cache_size() == 1
  assert int(score.stage_of(jnp.int32(0), False, 3)) == 2
  assert int(score.stage_of(jnp.int32(0), True, 0)) == 2
  assert int(_algo(multi_turn=False, stage1_steps=5).stage(jnp.int32(0))) == 0


def test_rloo_zero_sum_and_zero_when_equal():
  rs = np.random.RandomState(0)
  R = rs.randn(5, 4).astype(np.float32) * 3
  A = np.asarray(score.rloo_advantage(jnp.asarray(R)))
  np.testing.assert_allclose(A.sum(axis=1), 0.0, atol=1e-5)
  loo = np.array([[R[p, j] - np.delete(R[p], j).mean() for j in range(4)] for p in range(5)])
  np.testing.assert_allclose(A, loo, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(score.rloo_advantage(jnp.full((2, 4), 7.0))), 0.0)


def test_baselines_and_std_norm():
  R = jnp.asarray([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 4.0])
  np.testing.assert_allclose(np.asarray(score.baseline_advantage(R, 4, "none")), np.asarray(R))
  np.testing.assert_allclose(np.asarray(score.baseline_advantage(R, 4, "batch_mean")), np.asarray(R) - 2.0)
  a = np.asarray(score.normalize_advantage(score.baseline_advantage(R, 4, "batch_mean"), "std"))
  np.testing.assert_allclose(a, (np.asarray(R) - 2.0) / np.asarray(R).std(), rtol=1e-5)
  # Equal returns with no baseline (every row solved): std is 0 or rounding noise, so the
  # advantages stay as they are instead of being multiplied by up to 1/eps (issue 14.1).
  for v in (1.0, 10.1):
    flat = jnp.full((8,), v)
    np.testing.assert_array_equal(np.asarray(score.normalize_advantage(flat, "std")), np.asarray(flat))
  with pytest.raises(ValueError, match="valid keys"):
    score.baseline_advantage(R, 4, "ema")


def test_metrics_identity_against_eval_module():
  spec = score.train_correction_metrics(jnp.array([1, 0, 1, 0]), jnp.array([1, 1, 0, 0]),
                                        *([jnp.zeros((4, 2))] * 4))
  assert [float(spec[k]) for k in ("acc_t1", "acc_t2", "delta_i2c", "delta_c2i", "delta")] == [0.5, 0.5, 0.25, 0.25, 0.0]
  rs = np.random.RandomState(1)
  n, w1, w2 = 64, 5, 7  # turn buffers of different widths
  r1, r2 = rs.randint(0, 2, n), rs.randint(0, 2, n)
  len1, len2 = rs.randint(0, w1 + 1, n), rs.randint(0, w2 + 1, n)
  y1 = rs.randint(3, 6, (n, w1))
  y2 = y1[:, np.minimum(np.arange(w2), w1 - 1)].copy()
  len2[::3] = len1[::3]  # a third of the rows copy y1 exactly
  y2[1::3] = rs.randint(3, 6, (len(y2[1::3]), w2))
  v1 = np.arange(w1)[None] < len1[:, None]
  v2 = np.arange(w2)[None] < len2[:, None]
  got = jax.jit(score.train_correction_metrics)(r1, r2, y1 * v1, v1, y2 * v2, v2)
  ref = self_correction_metrics(r1, r2, y1, len1, y2, len2)
  for k in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "frac_changed"):
    assert float(got[k]) == pytest.approx(ref[k], abs=1e-6), k
  assert float(got["delta"]) == pytest.approx(float(got["delta_i2c"] - got["delta_c2i"]), abs=1e-6)
  assert 0.2 < ref["frac_changed"] < 0.9
  # Holes in the middle of a response (not just a prefix) are ignored.
  same = score._same_response(jnp.array([[4, 0, 5]]), jnp.array([[True, False, True]]),
                              jnp.array([[4, 5]]), jnp.array([[True, True]]))
  assert bool(same[0])


def test_no_turn1_policy_gradient_in_stage1():
  """With beta1 = beta2 = 0, d loss / d log pi(y1 tokens) is exactly 0 in Stage I (per-turn credit)."""
  rs = np.random.RandomState(2)
  b, s = 8, 7
  turn_BxS = np.tile(np.array([0, 1, 1, 0, 2, 2, 2]), (b, 1))
  rollout = _fake_rollout(turn_BxS)
  rewards = _rewards(rs.randint(0, 2, b), [0, 1] * 4)
  algo = _algo(beta1=0.0, beta2=0.0, stage1_steps=10, group_size=4)
  adv, klw, metrics = _terms(algo, rollout, rewards, jnp.int32(0))
  assert int(metrics["stage"]) == 1
  logp = jnp.asarray(rs.randn(b, s) * 0.3 - 1.0, jnp.float32)
  ref = logp + 0.5  # far from the reference: a nonzero KL weight would give a gradient

  def loss(lp):
    return policy_loss(lp, jax.lax.stop_gradient(lp), ref, adv, rollout.loss_mask_BxS, clip_low=0.2,
                       clip_high=0.28, kl_coef=klw, kl_estimator="k3", agg_mode="token_mean")[0]
  g = np.asarray(jax.grad(loss)(logp))
  assert (g[turn_BxS == 1] == 0.0).all()
  assert np.abs(g[turn_BxS == 2]).max() > 0
  # Stage II gives turn 1 a gradient; in Stage I a positive beta2 gives it only the KL pull.
  adv2, klw2, _ = _terms(algo, rollout, rewards, jnp.int32(10))
  assert np.abs(np.asarray(adv2)[turn_BxS == 1]).max() > 0
  _, klw_s1, _ = _terms(_algo(beta1=0.01, beta2=0.1, stage1_steps=10), rollout, rewards, jnp.int32(0))
  klw_s1 = np.asarray(klw_s1)
  assert (klw_s1[turn_BxS == 1] == np.float32(0.1)).all() and (klw_s1[turn_BxS == 2] == np.float32(0.01)).all()
  assert (klw_s1[turn_BxS == 0] == 0).all()
  _, klw_only, _ = _terms(_algo(beta2=0.1, stage1_steps=10, stage1_turn2_kl=False), rollout, rewards, 0)
  assert (np.asarray(klw_only)[turn_BxS == 2] == 0).all()
  _, klw_s2, _ = _terms(_algo(beta1=0.01, beta2=0.1, stage1_steps=10), rollout, rewards, jnp.int32(10))
  assert (np.asarray(klw_s2)[turn_BxS > 0] == np.float32(0.01)).all()


def test_per_token_credit_values():
  """Stage II, per-turn: turn-1 tokens get RLOO(r1), turn-2 tokens RLOO(r2 + alpha (r2 - r1))."""
  turn_BxS = np.tile(np.array([0, 1, 1, 0, 2, 0]), (4, 1))
  turn_BxS[0, 2] = 0  # a hole after an early stop
  rollout = _fake_rollout(turn_BxS)
  adv, _, _ = _terms(_algo(), rollout, _rewards(R1, R2), jnp.int32(0))
  adv = np.asarray(adv)
  loo = lambda x: np.array([x[j] - np.delete(x, j).mean() for j in range(4)])  # noqa: E731
  np.testing.assert_allclose(adv[:, 1], loo(R1), rtol=1e-6)
  np.testing.assert_allclose(adv[:, 4], loo(np.array([11.0, 1.0, -10.0, 0.0])), rtol=1e-6)
  assert adv[0, 2] == 0 and (adv[:, [0, 3, 5]] == 0).all()
  ep, _, _ = _terms(_algo(turn_credit="episode"), rollout, _rewards(R1, R2), 0)
  np.testing.assert_allclose(np.asarray(ep)[:, 1], loo(np.array([11.0, 2.0, -9.0, 0.0])), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ep)[:, 4], np.asarray(ep)[:, 1])


def test_single_turn_mode_trains_turn1_only():
  turn_BxS = np.tile(np.array([0, 1, 0, 2]), (4, 1))
  rollout = _fake_rollout(turn_BxS)
  rollout = rollout.replace(loss_mask_BxS=rollout.turn_id_BxS == 1)  # what SCoRe.rollout does
  adv, klw, m = _terms(_algo(multi_turn=False, beta1=0.05, stage1_steps=3), rollout, _rewards(R1, R2),
                       jnp.int32(0))
  np.testing.assert_allclose(np.asarray(adv)[:, 1], np.asarray(score.rloo_advantage(R1[None]))[0], rtol=1e-6)
  assert (np.asarray(adv)[:, 3] == 0).all() and (np.asarray(klw)[:, 3] == 0).all()
  assert (np.asarray(klw)[:, 1] == np.float32(0.05)).all() and int(m["stage"]) == 0


def test_single_turn_rollout_drops_turn2_from_loss(monkeypatch):
  """multi_turn=False still samples y2 (metrics, evaluation) but leaves it out of the loss mask."""
  turn = jnp.asarray(np.tile(np.array([0, 1, 1, 0, 2, 2]), (2, 1)))
  fake = _fake_rollout(turn)
  monkeypatch.setattr(score, "two_turn_rollout", lambda *a, **k: (fake, fake.extras))
  batch = PromptBatch(**{name: None for name in PromptBatch.__dataclass_fields__})
  single = _algo(multi_turn=False).rollout(None, batch, None)
  np.testing.assert_array_equal(np.asarray(single.loss_mask_BxS), np.asarray(turn == 1))
  np.testing.assert_array_equal(np.asarray(single.turn_id_BxS), np.asarray(turn))
  multi = _algo().rollout(None, batch, None)
  np.testing.assert_array_equal(np.asarray(multi.loss_mask_BxS), np.asarray(turn > 0))
  assert isinstance(single, TwoTurnRollout)


def test_reinforce_sign_two_arm_bandit():
  """One REINFORCE step through SCoRe's advantages: the rewarded arm's logit and probability go up."""
  theta = jnp.zeros(2)
  arms = jnp.asarray([0, 1, 1, 0, 1, 1, 1, 0])
  reward = (arms == 0).astype(jnp.float32)
  turn = np.zeros((8, 2), np.int32)
  turn[:, 1] = 1  # one "turn-1 token" per rollout: the arm
  algo = _algo(multi_turn=False, beta1=0.0)
  adv, _, _ = _terms(algo, _fake_rollout(turn), _rewards(reward, reward), jnp.int32(0))

  def loss(th):
    logp_B = jax.nn.log_softmax(th)[arms]
    logp_BxS = jnp.stack([jnp.zeros(8), logp_B], axis=1)
    return policy_loss(logp_BxS, jax.lax.stop_gradient(logp_BxS), None, adv, turn > 0, clip_low=0.2,
                       clip_high=0.28, kl_coef=0.0, agg_mode="token_mean")[0]
  new = theta - 0.5 * jax.grad(loss)(theta)
  assert float(new[0]) > float(theta[0]) and float(new[1]) < float(theta[1])
  assert float(jax.nn.softmax(new)[0]) > 0.5


@pytest.mark.parametrize("credit, sandbags", [("episode", True), ("per_turn", False)])
def test_sandbagging_probe(credit, sandbags):
  """Exact expectation over all 4^4 groups of outcomes: does failing turn 1 on purpose pay at turn 1?"""
  groups = np.array(list(itertools.product(range(4), repeat=4)))  # outcome index per sample
  r1, r2 = jnp.asarray(R1[groups].reshape(-1)), jnp.asarray(R2[groups].reshape(-1))
  a1, _, _, _ = _algo(turn_credit=credit, alpha=10.0).turn_terms(r1, r2, jnp.int32(2))
  a1 = np.asarray(a1).reshape(groups.shape)
  mean_a1 = [a1[groups == o].mean() for o in range(4)]
  wrong_fixed, right_kept = mean_a1[0], mean_a1[1]
  assert (wrong_fixed > right_kept) == sandbags


def test_star_filter_keeps_successful_corrections():
  turn_BxS = np.tile(np.array([0, 1, 1, 0, 2, 2]), (4, 1))
  rollout = _fake_rollout(turn_BxS)
  demo, keep = score.star_demonstrations(rollout, jnp.asarray(R1), jnp.asarray(R2))
  assert np.asarray(keep).tolist() == [True, False, False, False]
  mask = np.asarray(demo["loss_mask_BxS"])
  assert mask[0].tolist() == [False, False, False, False, True, True] and not mask[1:].any()
  demo, keep = score.star_demonstrations(rollout, jnp.asarray(R1), jnp.asarray(R2), include_c2c=True,
                                         train_turn1=True)
  assert np.asarray(keep).tolist() == [True, True, False, False]
  assert np.asarray(demo["loss_mask_BxS"])[1].tolist() == [False, True, True, False, True, True]


def test_invalid_knobs_raise():
  with pytest.raises(ValueError, match="turn_credit.*valid keys"):
    _algo(turn_credit="gamma")
  with pytest.raises(ValueError, match="kl_estimator"):
    _algo(kl_estimator="k7")
  with pytest.raises(ValueError, match="instr_ids is empty"):
    _algo(instr_ids=())


def test_under_per_turn_credit_alpha_only_scales_turn2_in_expectation():
  """configs/score/README.md's calculation, exactly on all 4^4 groups: with RLOO per turn, Stage II's
  A2 with shaping alpha equals (1 + alpha) times the alpha = 0 advantage minus alpha A1. A1 depends on
  y1 (and the other samples) only, so E[A1 grad log pi(y2 | y1)] = 0: the shaping arm and the control
  arm (alpha = 0, turn2_adv_scale = 1 + alpha) follow the same expected gradient. Stage I is unscaled."""
  groups = np.array(list(itertools.product(range(4), repeat=4)))
  r1, r2 = jnp.asarray(R1[groups].reshape(-1)), jnp.asarray(R2[groups].reshape(-1))
  a1, a2, _, _ = _algo(alpha=10.0).turn_terms(r1, r2, jnp.int32(2))
  c1, c2, _, _ = _algo(alpha=0.0, turn2_adv_scale=11.0).turn_terms(r1, r2, jnp.int32(2))
  np.testing.assert_allclose(np.asarray(a1), np.asarray(c1))
  np.testing.assert_allclose(np.asarray(a2), np.asarray(c2) - 10.0 * np.asarray(a1), atol=1e-5)
  s1, s2, _, _ = _algo(alpha=0.0, turn2_adv_scale=11.0, stage1_steps=5).turn_terms(r1, r2, jnp.int32(1))
  u1, u2, _, _ = _algo(alpha=0.0, stage1_steps=5).turn_terms(r1, r2, jnp.int32(1))
  np.testing.assert_array_equal(np.asarray(s2), np.asarray(u2))
  np.testing.assert_array_equal(np.asarray(s1), np.asarray(u1))


def test_eval_metrics_per_prompt_length_match_the_subsets():
  rng = np.random.default_rng(0)
  b, n = 12, 3
  outputs = {"reward_KxB": rng.integers(0, 2, (2, b)).astype(np.float32),
             "tokens_KxBxN": rng.integers(3, 9, (2, b, n)), "len_KxB": rng.integers(1, n + 1, (2, b)),
             "prompt_len_B": np.array([4, 11] * 6)}
  algo = _algo(eval_by_prompt_len=True)
  metrics = algo.eval_metrics(outputs)
  for length in (4, 11):
    keep = outputs["prompt_len_B"] == length
    sub = _algo().eval_metrics({k: v[..., keep] if k == "prompt_len_B" else v[:, keep] for k, v in outputs.items()})
    assert metrics[f"eval/by_prompt_len/{length}/count"] == keep.sum()
    for key in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "frac_changed"):
      assert metrics[f"eval/by_prompt_len/{length}/{key}"] == pytest.approx(sub[f"eval/{key}"])
  assert not any(k.startswith("eval/by_prompt_len") for k in _algo().eval_metrics(outputs))
