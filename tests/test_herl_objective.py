"""HeRL's pure pieces against hand-computed values (herl.md §9.2 tests 1-6) and its mixed-policy
loss by autodiff: dual clip on ordinary tokens, rho/(rho + gamma) on hindsight tokens, token mean."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfrl_jax.algos.advantages import compute_advantages
from selfrl_jax.algos.herl_objective import (apply_improvement_bonus, candidate_mask, choose_injection,
                                             replace_slot, rubric_score, select_revision_candidates)
from selfrl_jax.algos.losses import SURROGATES, SurrogateParams, pg_loss


def test_rubric_score_hand_values():
  one = jnp.ones((1, 4), bool)
  assert float(rubric_score(jnp.array([[1, 0, 1, 1.0]]), jnp.ones((1, 4)), one)[0]) == 0.75
  # Weights [2, 1, 1, -3], flags [1, 0, 0, 1]: the negative weight is clipped to 0 -> 2 / 4.
  assert float(rubric_score(jnp.array([[1, 0, 0, 1.0]]), jnp.array([[2, 1, 1, -3.0]]), one)[0]) == 0.5
  # Invalid items do not count; a row without a valid item scores 0.
  valid = jnp.array([[True, True, False, False], [False] * 4])
  np.testing.assert_array_equal(rubric_score(jnp.array([[1, 0, 0, 0], [1, 1, 1, 1.0]]), jnp.ones((2, 4)), valid),
                                [0.5, 0.0])


def test_select_revision_candidates():
  n_met = jnp.array([[2, 3, 1, 0]])
  idx, ok = select_revision_candidates(jnp.array([[0.5, 0.5, 0.25, 1.0]]), n_met, 1.0, 16)
  assert not bool(ok.any())  # the group already has a perfect response
  idx, ok = select_revision_candidates(jnp.array([[0.5, 0.5, 0.25, 0.0]]), n_met, 1.0, 16)
  assert idx.shape == (1, 4)
  assert candidate_mask(idx, ok, 4).tolist() == [[True, True, False, False]]
  assert idx[0, :2].tolist() == [1, 0]  # most items met first
  idx, ok = select_revision_candidates(jnp.array([[0.5, 0.5, 0.25, 0.0]]), n_met, 1.0, 1)
  assert idx.tolist() == [[1]] and ok.tolist() == [[True]]  # limit 1 keeps the larger n_met


def test_improvement_bonus_can_be_negative():
  score = jnp.array([[0.5, 0.5, 0.2]])
  cand = jnp.array([[True, True, False]])
  out = apply_improvement_bonus(score, jnp.array([[0.9, 0.3, 1.0]]), cand, 0.05)
  np.testing.assert_allclose(out, [[0.52, 0.49, 0.2]], rtol=1e-6)
  clamped = apply_improvement_bonus(score, jnp.array([[0.9, 0.3, 1.0]]), cand, 0.05, clamp_min=True)
  np.testing.assert_allclose(clamped, [[0.52, 0.5, 0.2]], rtol=1e-6)


def test_grpo_unbiased_advantages():
  adv = compute_advantages("grpo_sample_std", jnp.array([[0, 0, 0, 1.0], [0.3] * 4]))
  np.testing.assert_allclose(adv[0], [-0.5, -0.5, -0.5, 1.5], atol=1e-5)  # mean 0.25, unbiased std 0.5
  np.testing.assert_array_equal(adv[1], np.zeros(4))
  np.testing.assert_allclose(adv.sum(axis=1), 0.0, atol=1e-6)


def test_choose_injection_prefers_better_then_equal():
  valid = jnp.array([[True, True], [True, True], [True, False], [False, False]])
  src, ok = choose_injection(jnp.array([[0.4, 0.7], [0.5, 0.5], [0.3, 0.9], [1.0, 1.0]]), valid,
                             jnp.array([0.5, 0.5, 0.5, 0.0]))
  assert src[:2].tolist() == [1, 0] and ok.tolist() == [True, True, False, False]


def test_replace_slot_changes_exactly_one_row_per_group():
  base = jnp.arange(12).reshape(6, 2)                      # P = 2 groups of G = 3
  donor = jnp.array([[100, 101], [200, 201]])
  out = replace_slot(base, donor, jnp.array([2, 0]), jnp.array([True, False]), 3)
  changed = np.any(np.asarray(out) != np.asarray(base), axis=1)
  assert changed.tolist() == [False, False, True, False, False, False]
  assert out[2].tolist() == [100, 101]


# --- the mixed-policy loss (eq. 8) ----------------------------------------------------------------

B, T = 3, 4
MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool)
ADV = np.array([0.7, -1.3, 0.4], np.float32)
KW = dict(clip_low=0.2, clip_high=0.2, agg_mode="token_mean", objectives=("dual_clip", "is_weight"), dual_clip_c=3.0)


def _logps(seed=0):
  rng = np.random.default_rng(seed)
  old = rng.normal(-1.5, 0.3, (B, T)).astype(np.float32)
  return old + rng.normal(0, 0.4, (B, T)).astype(np.float32), old


def test_no_hindsight_rows_equal_the_dual_clip_loss_bit_for_bit():
  logp, old = _logps()
  mixed, _ = pg_loss(logp, old, ADV, MASK, objective_BxT=np.zeros((B, T), int), **KW)
  plain, _ = pg_loss(logp, old, ADV, MASK, clip_low=0.2, clip_high=0.2, agg_mode="token_mean",
                     objectives=("dual_clip",), dual_clip_c=3.0)
  assert float(mixed) == float(plain)


@pytest.mark.parametrize("gamma, coef", [(1.0, 0.25), (0.1, 0.1 / 1.21)])
def test_hindsight_tokens_at_rho_one(gamma, coef):
  """loss = -A / (1 + gamma) per HE token; d loss / d logp = -A gamma / (1 + gamma)^2 / N_tok; the
  ordinary row's tokens keep the dual-clip gradient; HE tokens never count as clipped."""
  logp, old = _logps()
  logp[1] = old[1] = -2.0                     # row 1 is the hindsight row: rho = 1
  logp[0, 0] = old[0, 0] + 1.0                # an ordinary token far outside the clip range (A > 0)
  obj = np.zeros((B, T), int)
  obj[1] = 1
  n_tok = MASK.sum()

  def f(lp):
    return pg_loss(lp, old, ADV, MASK, objective_BxT=obj, is_gamma=gamma, **KW)

  (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logp))
  grad = np.asarray(grad)
  np.testing.assert_allclose(grad[1, :2], -ADV[1] * coef / n_tok, rtol=1e-5)
  np.testing.assert_array_equal(grad[~MASK], 0.0)       # masked tokens: no gradient
  assert grad[0, 0] == 0.0                               # clipped ordinary token (ratio e > 1.2, A > 0)
  ratio = np.exp(logp[0, 1:3] - old[0, 1:3])
  inside = (ratio > 0.8) & (ratio < 1.2)
  np.testing.assert_allclose(grad[0, 1:3][inside], -(ADV[0] * ratio / n_tok)[inside], rtol=1e-5)
  he_loss = SURROGATES["is_weight"](jnp.full((1,), -2.0), jnp.full((1,), -2.0), jnp.full((1,), ADV[1]),
                                    SurrogateParams(0.2, 0.2, 3.0, gamma))
  np.testing.assert_allclose(he_loss, -ADV[1] / (1 + gamma), rtol=1e-6)
  # Clip fraction: the one clipped ordinary token over all loss tokens; HE tokens never counted.
  assert float(metrics["pg_clip_frac"]) * n_tok == pytest.approx(1.0 + np.sum(~inside & (ADV[0] > 0)))


def test_policy_shaping_gradient():
  """LUFFY (he.is_ratio = raw): loss = -A pi/(pi + gamma), d/dlogp = -A gamma pi / (pi + gamma)^2."""
  p = SurrogateParams(0.2, 0.2, 3.0, 0.5)
  logp = jnp.log(jnp.array([0.1, 0.5, 0.9]))
  adv = jnp.array([1.0, -2.0, 0.5])
  grad = jax.grad(lambda lp: SURROGATES["policy_shaping"](lp, jnp.zeros(3), adv, p).sum())(logp)
  pi = np.array([0.1, 0.5, 0.9])
  np.testing.assert_allclose(grad, -np.asarray(adv) * 0.5 * pi / (pi + 0.5) ** 2, rtol=1e-5)
