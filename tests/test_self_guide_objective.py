"""Self-Guide's objective (self_guide.md §10.2): schedule, reward mapping, reductions, the hand case,
GRPO invariants, the clip loss, the parser, and the incentive probe on the algorithm's own advantages."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfrl_jax.algos.advantages import compute_advantages
from selfrl_jax.algos.base import Rewards
from selfrl_jax.algos.losses import pg_loss
from selfrl_jax.algos.self_guide import SelfGuide, balanced_accuracy, calibration_counts
from selfrl_jax.algos.self_guide_objective import (TrustSchedule, aggregate, combined_return, counted_steps,
                                                   internal_rewards, parse_polarity, reward_to_go,
                                                   step_group_advantages, trust_lambda)
from selfrl_jax.rollouts.agent import AgentExtras, AgentRollout, guide_mask
from selfrl_jax.sampling.sampler import SamplingParams


def _lam(u, **kw):
  return float(trust_lambda(jnp.asarray(u), TrustSchedule(**kw)))


def test_trust_schedule_values():
  expected = {0: 0, 39: 0, 40: 0, 45: 0.5, 50: 1, 60: 1, 70: 1, 75: 0.5, 80: 0, 150: 0}
  assert {u: _lam(u) for u in expected} == pytest.approx(expected)
  assert _lam(0, kind="immediate") == 1.0 and _lam(150, kind="immediate") == 1.0
  assert [_lam(u, kind="no_anneal") for u in (45, 75, 150)] == pytest.approx([0.5, 1, 1])
  assert [_lam(u, kind="early_entry", entry=15) for u in (14, 20, 25, 60, 75, 80)] == pytest.approx([0, 0.5, 1, 1, 0.5, 0])
  assert _lam(60, kind="zero") == 0.0
  # Jittable in u, the train step's traced counter.
  assert float(jax.jit(lambda u: trust_lambda(u, TrustSchedule()))(jnp.int32(45))) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="non-decreasing"):
    TrustSchedule(warm_end=50, ramp_end=40)
  with pytest.raises(ValueError, match="kind"):
    TrustSchedule(kind="cosine")


def test_reward_mapping_masks_and_first_step():
  polarity = jnp.asarray([[1, 0, -1, 1]], jnp.int8)
  played = jnp.asarray([[True, True, True, False]])
  np.testing.assert_allclose(internal_rewards(polarity, played, 0.1, skip_first=False), [[0.1, 0, -0.1, 0]], atol=1e-7)
  np.testing.assert_allclose(internal_rewards(polarity, played, 0.1, skip_first=True), [[0, 0, -0.1, 0]], atol=1e-7)


def _hand_case(skip_first: bool, agg: str, lam: float) -> float:
  polarity = jnp.asarray([[1, 1, -1, 0]], jnp.int8)
  played = jnp.ones((1, 4), bool)
  r_sg = internal_rewards(polarity, played, 0.1, skip_first)
  return float(combined_return(jnp.ones(1), r_sg, counted_steps(played, skip_first), jnp.float32(lam), agg)[0])


def test_hand_computed_case_and_lambda_zero_reduction():
  assert _hand_case(False, "sum", 1.0) == pytest.approx(1.1)
  assert _hand_case(False, "mean", 1.0) == pytest.approx(1.025)
  assert _hand_case(True, "sum", 1.0) == pytest.approx(1.0)
  assert _hand_case(True, "mean", 1.0) == pytest.approx(1.0)
  assert _hand_case(False, "sum", 0.5) == pytest.approx(1.05)
  # λ = 0 is R_env exactly (not approximately), whatever the guidance said.
  r_env = jnp.asarray([0.0, 1.0, 0.3])
  r_sg = jnp.asarray([[0.1, 0.1], [-0.1, 0.0], [0.1, -0.1]])
  assert np.array_equal(np.asarray(combined_return(r_env, r_sg, jnp.ones((3, 2), bool), jnp.float32(0.0))), np.asarray(r_env))
  # sum_clipped bounds the internal term to [-1, 1]: 14 positive steps of 0.1 add 1, not 1.4.
  many = jnp.full((1, 14), 0.1)
  assert float(aggregate(many, jnp.ones((1, 14), bool), "sum")[0]) == pytest.approx(1.4)
  assert float(aggregate(many, jnp.ones((1, 14), bool), "sum_clipped")[0]) == pytest.approx(1.0)


def test_grpo_invariants():
  adv = lambda r: np.asarray(compute_advantages("grpo_sample_std", jnp.asarray(r, jnp.float32)))  # noqa: E731
  flat = adv([[0.3, 0.3, 0.3, 0.3]])
  assert np.isfinite(flat).all() and (flat == 0).all()
  a = adv([[1.0, 0.0, 0.5, 0.2], [0.1, 0.9, 0.4, 0.4]])
  np.testing.assert_allclose(a.mean(axis=1), 0, atol=1e-6)
  np.testing.assert_allclose(a.std(axis=1, ddof=1), 1, atol=1e-4)
  shifted = adv([[11.0, 10.0, 10.5, 10.2], [0.1, 0.9, 0.4, 0.4]])
  np.testing.assert_allclose(shifted[0], a[0], atol=1e-4)
  other = adv([[1.0, 0.0, 0.5, 0.2], [5.0, -3.0, 0.0, 1.0]])
  np.testing.assert_array_equal(other[0], a[0])
  np.testing.assert_allclose(adv([[1.0, 0.0]]), [[0.70710678, -0.70710678]], atol=1e-5)


def test_clip_loss_gradient():
  """ρ = 1: the plain policy gradient -A/N per token; A > 0 and ρ > 1 + ε: no gradient."""
  mask = jnp.ones((1, 3), bool)
  adv = jnp.asarray([[1.0, -2.0, 0.5]])
  old = jnp.log(jnp.asarray([[0.2, 0.5, 0.3]]))
  loss = lambda logp: pg_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, agg_mode="token_mean")[0]  # noqa: E731
  np.testing.assert_allclose(jax.grad(loss)(old), -adv / 3, atol=1e-6)
  high = old.at[0, 0].add(jnp.log(1.5))           # ρ = 1.5 > 1.2 with A > 0
  assert float(jax.grad(loss)(high)[0, 0]) == 0.0


def test_parser_first_label_inside_the_guide_only():
  pos, neu, neg, close, act = (7,), (8,), (9,), 5, 4
  rows = jnp.asarray([[[pos[0], neg[0], close, act]],     # first label wins: +1
                      [[3, neg[0], close, pos[0]]],        # label after text: -1; + after the close is ignored
                      [[3, 3, close, pos[0]]],             # no label inside the guide: malformed -> 0
                      [[21, 22, close, act]],              # two-token label "[N" "EG]" -> -1
                      [[21, close, 22, act]]])             # a label cut by the close does not count
  valid = jnp.ones(rows.shape, bool)
  guide = guide_mask(rows[:, 0], valid[:, 0], (close,))[:, None]
  polarity, parsed = parse_polarity(rows, guide, ((7,), (8,), (21, 22)))
  assert np.asarray(polarity)[:, 0].tolist() == [1, 0, 0, -1, 0]
  polarity, parsed = parse_polarity(rows, guide, (pos, neu, neg))
  assert np.asarray(polarity)[:, 0].tolist() == [1, -1, 0, 0, 0]
  assert np.asarray(parsed)[:, 0].tolist() == [True, True, False, False, False]


def test_guide_mask_closes_at_the_first_complete_multi_id_sequence():
  """A BPE close such as "</guide" is several ids: the guidance runs up to the first complete run of
  them; a partial run is guidance text, and a row without the run is all guidance."""
  close = (30, 31)
  rows = [[3, 30, 31, 4, 4, 0], [3, 30, 4, 30, 31, 4], [30, 30, 31, 31, 4, 0], [3, 30, 4, 4, 31, 0], [30, 31, 30, 31, 4, 4]]
  lengths = [5, 6, 5, 5, 6]

  def reference(row, n):
    for i in range(1, n):
      if tuple(row[i - 1:i + 1]) == close:
        return [j <= i for j in range(len(row))]
    return [j < n for j in range(len(row))]

  valid = np.arange(6)[None, :] < np.asarray(lengths)[:, None]
  got = np.asarray(guide_mask(jnp.asarray(rows), jnp.asarray(valid), close))
  assert got.tolist() == [reference(r, n) for r, n in zip(rows, lengths)]
  assert not np.asarray(guide_mask(jnp.asarray(rows), jnp.asarray(valid), None)).any()


def test_reward_to_go_and_per_step_groups():
  r_sg = jnp.asarray([[0.1, 0.1, -0.1], [0.0, -0.1, 0.1]])
  counted = jnp.ones((2, 3), bool)
  g = reward_to_go(jnp.asarray([1.0, 0.0]), r_sg, counted, jnp.float32(1.0))
  np.testing.assert_allclose(g, [[1.1, 1.0, 0.9], [0.0, 0.0, 0.1]], atol=1e-6)
  played = jnp.asarray([[True, True, True], [True, True, False]])
  adv = np.asarray(step_group_advantages(g, played, group_size=2))
  # Step 1 and 2: two played steps -> ±0.7071; step 3: one played step -> 0 for both.
  np.testing.assert_allclose(adv, [[0.7071068, 0.7071068, 0], [-0.7071068, -0.7071068, 0]], atol=1e-5)


# --- the incentive probe on SelfGuide.advantages ---------------------------------------------------

def _toy_rollout(rng: np.random.Generator, b: int = 8, h: int = 3, n: int = 3) -> tuple[AgentRollout, Rewards]:
  """A hand-built episode batch: each step is [label | close | move]; layout [prompt 1 | steps]."""
  labels = rng.integers(7, 10, (b, h))
  step = np.stack([labels, np.full((b, h), 5), np.full((b, h), 4)], axis=-1)
  valid = np.ones((b, h, n), bool)
  tokens = np.concatenate([np.ones((b, 1), np.int32), step.reshape(b, -1)], axis=1)
  guide = np.zeros((b, h, n), bool)
  guide[..., :2] = True
  loss = np.concatenate([np.zeros((b, 1), bool), valid.reshape(b, -1)], axis=1)
  turn = np.concatenate([np.zeros((b, 1), np.int32), np.repeat(np.arange(1, h + 1), n)[None].repeat(b, 0)], axis=1)
  success = rng.random(b) < 0.5
  extras = AgentExtras(step_tokens_BxHxN=jnp.asarray(step), step_valid_BxHxN=jnp.asarray(valid),
                       guide_BxHxN=jnp.asarray(guide),
                       guide_BxS=jnp.asarray(np.concatenate([np.zeros((b, 1), bool), guide.reshape(b, -1)], 1)),
                       step_taken_BxH=jnp.ones((b, h), bool), progress_BxH=jnp.zeros((b, h), jnp.int8),
                       invalid_BxH=jnp.zeros((b, h), bool), env_reward_B=jnp.asarray(success, jnp.float32),
                       success_B=jnp.asarray(success), score_B=jnp.asarray(success, jnp.float32),
                       failed_B=jnp.zeros(b, bool), num_steps_B=jnp.full(b, h, jnp.int32))
  s = tokens.shape
  rollout = AgentRollout(tokens_BxS=jnp.asarray(tokens), valid_BxS=jnp.ones(s, bool), loss_mask_BxS=jnp.asarray(loss),
                         sampler_logp_BxS=jnp.zeros(s), turn_id_BxS=jnp.asarray(turn),
                         response_tokens_BxN=jnp.asarray(step[:, -1]), response_valid_BxN=jnp.asarray(valid[:, -1]),
                         stopped_B=jnp.ones(b, bool), extras=extras)
  return rollout, None


def _algo(**kw) -> SelfGuide:
  defaults = dict(sampling=SamplingParams(max_new_tokens=3), group_size=4, advantage="grpo_sample_std", kl_coef=0.0,
                  env=None, max_steps=3, end_ids=(2,), guide_close_ids=(5,), label_ids=((7,), (8,), (9,)),
                  instruction_ids=(10,), plain_instruction_ids=(11,))
  return SelfGuide(**{**defaults, **kw})


@pytest.mark.parametrize("step_credit", ["trajectory", "reward_to_go"])
def test_incentive_probe(step_credit):
  """With sg_reward_on_guide_tokens=False the loss gradient on guidance-token log-probs equals the
  gradient under λ = 0 (no self-report incentive); on action tokens the internal reward still acts."""
  rollout, _ = _toy_rollout(np.random.default_rng(0))
  full = _algo(step_credit=step_credit, sg_reward_on_guide_tokens=False)
  rewards = full.rewards(rollout, None)

  def guide_grad(algo, u):
    terms = algo.advantages(rollout, rewards, jnp.int32(u))
    logp = jnp.zeros(rollout.tokens_BxS.shape)
    grad = jax.grad(lambda lp: pg_loss(lp, lp, terms.adv_BxS, rollout.loss_mask_BxS, clip_low=0.2, clip_high=0.2, agg_mode="token_mean")[0])(logp)
    return np.asarray(grad), np.asarray(rollout.extras.guide_BxS)

  g_mitigated, guide = guide_grad(full, 60)                     # λ(60) = 1
  g_zero, _ = guide_grad(_algo(step_credit=step_credit, schedule=TrustSchedule(kind="zero")), 60)
  g_paper, _ = guide_grad(_algo(step_credit=step_credit), 60)
  np.testing.assert_allclose(g_mitigated[guide], g_zero[guide], atol=1e-7)
  action = np.asarray(rollout.loss_mask_BxS) & ~guide
  np.testing.assert_allclose(g_mitigated[action], g_paper[action], atol=1e-7)
  assert np.abs(g_paper[guide] - g_zero[guide]).max() > 1e-3   # the paper's objective does pay the labels


def test_balanced_calibration_is_chance_for_a_constant_label():
  judged = jnp.asarray([[0, 1, 1, 1, 1, 1, 1, -1, 0, 1]], jnp.int8)      # mostly "closer"
  counted = jnp.ones(judged.shape, bool).at[0, 0].set(False)
  always_positive = jnp.ones(judged.shape, jnp.int8)
  hits, totals = calibration_counts(always_positive, judged, counted)
  assert np.asarray(totals).tolist() == [7, 1, 1] and np.asarray(hits).tolist() == [7, 0, 0]
  assert float(hits.sum() / totals.sum()) == pytest.approx(7 / 9)          # accuracy rewards the constant label
  assert float(balanced_accuracy(hits, totals)) == pytest.approx(1 / 3)
  hits, totals = calibration_counts(judged, judged, counted)
  assert float(balanced_accuracy(hits, totals)) == pytest.approx(1.0)
  # A class with no step is left out of the mean, not counted as 0.
  assert float(balanced_accuracy(jnp.asarray([2, 0, 0]), jnp.asarray([2, 0, 0]))) == pytest.approx(1.0)


@pytest.mark.parametrize("edit,message", [
    ({"self_guide.schedule": "linear"}, "config.self_guide.schedule: must be one of"),
    ({"self_guide.schedule_steps": (40, 30, 70, 80)}, "config.self_guide.schedule_steps"),
    ({"self_guide.env": "twx"}, "config.task.name: self_guide.env='twx' resets from twx tasks"),
    ({"sft.demos": "task"}, "config.sft.demos: self_guide.env='grid' warm-starts from 'self_guide_grid', got 'task'"),
    ({"rl.group_size": 1}, "config.rl.group_size"),
    ({"self_guide.schedule": "early_entry", "self_guide.early_entry_step": 60}, "config.self_guide.early_entry_step"),
    ({"task.params": {"min_dist": 4, "max_dist": 8, "show_distance": True}},
     "config.rl.max_prompt_len: a grid_nav prompt takes 7 ids (task.params.show_distance=True), got 6"),
])
def test_a_bad_config_names_the_field(edit, message):
  from configs.self_guide.tiny_grid import get_config  # pylint: disable=import-outside-toplevel
  from selfrl_jax.train.builders import ConfigError, validate_config  # pylint: disable=import-outside-toplevel
  cfg = get_config()
  with cfg.unlocked():
    for path, value in edit.items():
      section, field = path.split(".")
      cfg[section][field] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    validate_config(cfg)


@pytest.mark.parametrize("section,field,value,absent,messages", [
    # A review shortened train.num_steps for a smoke run: the trapezoid's ramp (27) lay past it, so SG & GR
    # silently trained as GRPO w/ SG.
    ("train", "num_steps", 5, "λ stays 0", ["train.num_steps=5: λ stays 0 for the whole run"]),
    # A review ran k = 100 on the toy (H = 14) for minutes: a window is capped at max_steps - 1, and a
    # window with a warm start (which demonstrates whole episodes) means RL sees shorter contexts.
    ("self_guide", "history_window", 100, "history_window",
     ["history_window=100 >= max_steps=14: capped at 13", "the warm start demonstrates whole episodes"]),
])
def test_validation_warns_about_settings_that_silently_change_the_run(caplog, section, field, value, absent, messages):
  from configs.self_guide.tiny_grid import get_config  # pylint: disable=import-outside-toplevel
  from selfrl_jax.train.builders import validate_config  # pylint: disable=import-outside-toplevel
  cfg = get_config("sg_gr")
  validate_config(cfg)
  assert absent not in caplog.text
  with cfg.unlocked():
    cfg[section][field] = value
  validate_config(cfg)
  for message in messages:
    assert message in caplog.text


def test_toy_base_success_precondition_reads_about_10_to_20_percent_within_two_standard_errors():
  """§11 asks a base success of *about* 10-20%: a rate measured on 128 tasks passes within two standard
  errors of the range (0.227: SE 0.037, 0.027 above; 0.039: SE 0.017, 0.061 below), and the claims
  are evaluated only when every precondition holds."""
  from configs.self_guide.tiny_grid import get_config  # pylint: disable=import-outside-toplevel
  from experiments import self_guide_toy  # pylint: disable=import-outside-toplevel
  assert self_guide_toy.EVAL_TASKS == get_config().train.eval_size

  def rows(guided_base, balanced=0.69):
    return {"grpo": {"base_success": (0.133, 0.0)},
            "sg": {"base_success": (guided_base, 0.0), "base_balanced": (balanced, 0.0), "base_calibration": (0.7, 0.0),
                   "final_balanced": (0.7, 0.0)}}
  ok = self_guide_toy.claims(rows(0.227))
  assert [holds for _, holds, _ in ok[:2]] == [True, True] and "0.227 ± 0.037" in ok[0][2]
  assert ok[-1][1] is not None   # claims evaluated (here: the calibration claim for (b))
  for bad in (rows(0.039), rows(0.30), rows(0.18, balanced=0.36)):
    out = self_guide_toy.claims(bad)
    assert not all(h for _, h, _ in out[:2]) and out[-1] == ("claims", None, "not evaluated: a precondition failed")
