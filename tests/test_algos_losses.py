"""KL estimators, loss aggregation and the clipped policy-gradient loss vs NumPy / hand values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfrl_jax.algos.losses import (AGGREGATIONS, KL_ESTIMATORS, aggregate, kl_estimate, pg_loss,
                                     policy_loss)

# ----------------------------------------------------------------------------------------------
# KL estimators


def test_kl_closed_forms_vs_numpy():
  rng = np.random.default_rng(0)
  logp = rng.normal(-2.0, 1.0, size=(3, 7)).astype(np.float32)
  ref = rng.normal(-2.0, 1.0, size=(3, 7)).astype(np.float32)
  d = logp.astype(np.float64) - ref
  expected = {"k1": d, "k2": 0.5 * d**2, "k3": np.exp(-d) + d - 1.0}
  assert sorted(KL_ESTIMATORS) == sorted(expected)
  for name, want in expected.items():
    got = np.asarray(kl_estimate(logp, ref, name))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(np.asarray(kl_estimate(logp, logp, name)), 0.0)
  assert (np.asarray(kl_estimate(logp, ref, "k3")) >= 0).all()
  with pytest.raises(ValueError, match="k3"):
    kl_estimate(logp, ref, "k4")


def test_kl_monte_carlo_matches_exact_categorical_kl():
  pi = np.array([0.6, 0.2, 0.1, 0.06, 0.04])
  ref = np.array([0.1, 0.15, 0.25, 0.25, 0.25])
  exact = float((pi * np.log(pi / ref)).sum())  # 0.882
  x = np.random.default_rng(0).choice(5, size=100_000, p=pi)
  logp = np.log(pi)[x].astype(np.float32)[None]
  ref_logp = np.log(ref)[x].astype(np.float32)[None]
  for name in ("k1", "k3"):
    mc = float(np.asarray(kl_estimate(logp, ref_logp, name), np.float64).mean())
    assert mc == pytest.approx(exact, rel=0.01), name


# ----------------------------------------------------------------------------------------------
# Aggregation

VALUES_3x4 = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
MASK_3x4 = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)


def test_aggregation_hand_computed():
  assert sorted(AGGREGATIONS) == ["seq_mean_token_mean", "seq_mean_token_sum_norm", "token_mean"]
  # valid tokens: row0 {1, 2}, row1 {5, 6, 7, 8}, row2 none (a padding row, left out).
  assert float(aggregate(VALUES_3x4, MASK_3x4, "token_mean")) == pytest.approx(29 / 6)
  assert float(aggregate(VALUES_3x4, MASK_3x4, "seq_mean_token_mean")) == pytest.approx(
      (1.5 + 6.5) / 2)
  assert float(aggregate(VALUES_3x4, MASK_3x4, "seq_mean_token_sum_norm")) == pytest.approx(
      (3 / 4 + 26 / 4) / 2)  # norm_len defaults to T = 4
  assert float(aggregate(VALUES_3x4, MASK_3x4, "seq_mean_token_sum_norm", norm_len=8)) == (
      pytest.approx((3 / 8 + 26 / 8) / 2))


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_aggregation_masked_values_never_leak(mode):
  # NaN/inf in masked slots must change neither the value nor the gradient.
  dirty = VALUES_3x4.copy()
  dirty[~MASK_3x4] = np.nan
  dirty[0, 3] = np.inf
  clean = float(aggregate(VALUES_3x4, MASK_3x4, mode))
  assert float(aggregate(dirty, MASK_3x4, mode)) == clean
  g = np.asarray(jax.grad(lambda v: aggregate(v, MASK_3x4, mode))(jnp.asarray(dirty)))
  assert np.isfinite(g).all()
  np.testing.assert_array_equal(g[~MASK_3x4], 0.0)
  # All-masked batch: 0, not NaN.
  none = np.zeros_like(MASK_3x4)
  assert float(aggregate(dirty, none, mode)) == 0.0
  assert np.isfinite(np.asarray(jax.grad(lambda v: aggregate(v, none, mode))(jnp.asarray(dirty)))).all()


def test_aggregation_errors():
  with pytest.raises(ValueError, match="token_mean"):
    aggregate(VALUES_3x4, MASK_3x4, "mean")
  with pytest.raises(ValueError, match="equal 2-D shape"):
    aggregate(VALUES_3x4, MASK_3x4[:, :2], "token_mean")
  with pytest.raises(ValueError, match="norm_len"):
    aggregate(VALUES_3x4, MASK_3x4, "seq_mean_token_sum_norm", norm_len=0)


# ----------------------------------------------------------------------------------------------
# Clipped policy gradient

# Six valid tokens (one row) plus a masked slot with garbage; clip_low=0.2, clip_high=0.28.
#            A>0 above hi | A<0 below lo | in band | in band | A<0 above hi | A>0 below lo | masked
RATIO_6 = np.array([1.5, 0.7, 1.1, 1.25, 1.5, 0.5])
ADV_6 = np.array([1.0, -1.0, 2.0, -1.0, -1.0, 1.0])


def _clip_case():
  old = np.full((1, 7), -1.0, np.float32)
  logp = old.copy()
  logp[0, :6] += np.log(RATIO_6).astype(np.float32)
  logp[0, 6] = 1e4  # exp overflows if it ever reached the ratio
  adv = np.append(ADV_6, np.nan).astype(np.float32)[None]
  mask = np.array([[1, 1, 1, 1, 1, 1, 0]], bool)
  return jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask)


def test_pg_clip_at_both_bounds():
  logp, old, adv, mask = _clip_case()
  fn = lambda lp: pg_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.28, agg_mode="token_mean")
  (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(logp)
  # loss_t = -min(rA, clip(r)A): 1.28 | 0.8 | 2.2 | 1.25 | 1.5 | 0.5, mean over 6 tokens.
  assert float(loss) == pytest.approx(-(1.28 - 0.8 + 2.2 - 1.25 - 1.5 + 0.5) / 6, rel=1e-5)
  # Clipped tokens get zero gradient; unclipped ones -A * ratio / N (token_mean, N = 6).
  want = np.array([0.0, 0.0, -2.0 * 1.1, 1.25, 1.5, -0.5, 0.0]) / 6
  np.testing.assert_allclose(np.asarray(grad)[0], want, rtol=1e-5, atol=1e-7)
  assert float(metrics["pg_clip_frac"]) == pytest.approx(2 / 6)
  assert float(metrics["pg_clip_frac_low"]) == pytest.approx(1 / 6)
  assert float(metrics["pg_clip_frac_high"]) == pytest.approx(1 / 6)
  assert float(metrics["ratio_mean"]) == pytest.approx(RATIO_6.mean(), rel=1e-5)


def test_pg_asymmetric_clip_is_respected():
  # A>0 with ratio 1.25 and A<0 with ratio 0.75.
  old = jnp.zeros((1, 2), jnp.float32)
  logp = jnp.log(jnp.array([[1.25, 0.75]], jnp.float32))
  adv = jnp.array([1.0, -1.0])[None]
  mask = jnp.ones((1, 2), bool)
  grad_fn = jax.grad(lambda lp, lo, hi: pg_loss(lp, old, adv, mask, clip_low=lo, clip_high=hi,
                                                agg_mode="token_mean")[0])
  _, m = pg_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, agg_mode="token_mean")
  assert (float(m["pg_clip_frac_low"]), float(m["pg_clip_frac_high"])) == (0.5, 0.0)
  np.testing.assert_allclose(grad_fn(logp, 0.2, 0.28)[0], [-1.25 / 2, 0.0], rtol=1e-6)
  _, m = pg_loss(logp, old, adv, mask, clip_low=0.28, clip_high=0.2, agg_mode="token_mean")
  assert (float(m["pg_clip_frac_low"]), float(m["pg_clip_frac_high"])) == (0.0, 0.5)
  np.testing.assert_allclose(grad_fn(logp, 0.28, 0.2)[0], [0.0, 0.75 / 2], rtol=1e-6)


def numpy_pg(logp, old, adv_bt, mask, lo, hi, mode, norm_len=None):
  """Loss and d loss / d logp by hand: unclipped branch active -> -A r, else 0; times agg weight."""
  r = np.exp(logp.astype(np.float64) - old)
  un, cl = r * adv_bt, np.clip(r, 1 - lo, 1 + hi) * adv_bt
  loss_t, dloss_t = -np.minimum(un, cl), np.where(un <= cl, -adv_bt * r, 0.0)
  lens = mask.sum(axis=1, keepdims=True)
  n_seq = (lens > 0).sum()
  if mode == "token_mean":
    w = mask / mask.sum()
  elif mode == "seq_mean_token_mean":
    w = mask / np.maximum(lens, 1) / n_seq
  else:
    w = mask / (norm_len or mask.shape[1]) / n_seq
  return (w * loss_t).sum(), w * dloss_t


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_pg_loss_and_grad_vs_numpy(mode):
  rng = np.random.default_rng(3)
  b, t = 4, 6
  old = rng.normal(-1.5, 0.5, size=(b, t)).astype(np.float32)
  logp = (old + rng.normal(0, 0.3, size=(b, t))).astype(np.float32)
  adv_b = rng.normal(size=b).astype(np.float32)
  mask = np.arange(t)[None] < np.array([6, 3, 0, 1])[:, None]
  fn = jax.jit(jax.value_and_grad(
      lambda lp, a: pg_loss(lp, old, a, mask, clip_low=0.2, clip_high=0.28, agg_mode=mode,
                            norm_len=8)[0]))
  loss, grad = fn(logp, adv_b)
  want_loss, want_grad = numpy_pg(logp, old, np.broadcast_to(adv_b[:, None], (b, t)), mask, 0.2,
                                  0.28, mode, norm_len=8)
  assert float(loss) == pytest.approx(want_loss, rel=1e-5)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-7)
  # Per-token advantages equal to the broadcast per-sequence ones give the same result.
  loss_bt, grad_bt = fn(logp, np.broadcast_to(adv_b[:, None], (b, t)).copy())
  assert float(loss_bt) == float(loss)
  np.testing.assert_array_equal(np.asarray(grad_bt), np.asarray(grad))


def test_pg_errors():
  logp, old, adv, mask = _clip_case()
  with pytest.raises(ValueError, match="advantages"):
    pg_loss(logp, old, adv[:, :3], mask, clip_low=0.2, clip_high=0.2, agg_mode="token_mean")
  with pytest.raises(ValueError, match="old_logp_BxT"):
    pg_loss(logp, old[:, :3], adv, mask, clip_low=0.2, clip_high=0.2, agg_mode="token_mean")


# ----------------------------------------------------------------------------------------------
# Full policy loss


def test_policy_loss_without_reference():
  logp, old, adv, mask = _clip_case()
  kw = dict(clip_low=0.2, clip_high=0.28, agg_mode="token_mean")
  loss, metrics = policy_loss(logp, old, None, adv, mask, kl_coef=0.0, kl_estimator="k3", **kw)
  pg, _ = pg_loss(logp, old, adv, mask, **kw)
  assert float(loss) == float(pg) == float(metrics["pg_loss"])
  assert float(metrics["kl_loss"]) == 0.0 and "kl" not in metrics
  with pytest.raises(ValueError, match="kl_coef"):
    policy_loss(logp, old, None, adv, mask, kl_coef=0.1, kl_estimator="k3", **kw)


@pytest.mark.parametrize("estimator", sorted(KL_ESTIMATORS))
def test_policy_loss_with_kl(estimator):
  rng = np.random.default_rng(5)
  b, t = 3, 5
  old = rng.normal(-1.5, 0.5, size=(b, t)).astype(np.float32)
  logp = (old + rng.normal(0, 0.1, size=(b, t))).astype(np.float32)
  ref = (old + rng.normal(0, 0.3, size=(b, t))).astype(np.float32)
  mask = np.arange(t)[None] < np.array([5, 2, 4])[:, None]
  ref[~mask] = np.nan  # garbage where masked
  adv_b = rng.normal(size=b).astype(np.float32)
  kw = dict(clip_low=0.2, clip_high=0.28, kl_estimator=estimator, agg_mode="seq_mean_token_mean")

  fn = jax.jit(jax.value_and_grad(
      lambda lp, coef: policy_loss(lp, old, ref, adv_b, mask, kl_coef=coef, **kw), has_aux=True))
  (loss, metrics), grad = fn(logp, jnp.float32(0.05))
  (loss0, _), grad0 = fn(logp, jnp.float32(0.0))

  d = logp.astype(np.float64) - ref
  kl_np = {"k1": d, "k2": 0.5 * d**2, "k3": np.exp(-d) + d - 1}[estimator]
  dkl_np = {"k1": np.ones_like(d), "k2": d, "k3": 1 - np.exp(-d)}[estimator]
  w = mask / mask.sum(axis=1, keepdims=True) / b  # seq_mean_token_mean weights, all rows non-empty
  kl_np, dkl_np = np.where(mask, kl_np, 0), np.where(mask, dkl_np, 0)
  assert float(metrics["kl"]) == pytest.approx(kl_np.sum() / mask.sum(), rel=1e-4)
  assert float(metrics["kl_loss"]) == pytest.approx(0.05 * (w * kl_np).sum(), rel=1e-4, abs=1e-8)
  assert float(loss) == pytest.approx(float(loss0) + 0.05 * (w * kl_np).sum(), rel=1e-5, abs=1e-7)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(grad0) + 0.05 * w * dkl_np,
                             rtol=1e-4, atol=1e-7)
  assert np.isfinite(np.asarray(grad)).all()
  np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)


def test_policy_loss_per_token_kl_coef():
  # A [B, T] coefficient (e.g. a per-turn KL weight) weights each token's KL before aggregation.
  b, t = 2, 3
  logp = np.log(np.full((b, t), 0.5, np.float32))
  ref = np.log(np.full((b, t), 0.25, np.float32))
  mask = np.ones((b, t), bool)
  coef = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
  _, m = policy_loss(logp, logp, ref, np.zeros(b, np.float32), mask, clip_low=0.2, clip_high=0.2,
                     kl_coef=coef, kl_estimator="k1", agg_mode="token_mean")
  assert float(m["kl_loss"]) == pytest.approx(2 * np.log(2) / 6, rel=1e-6)
  assert float(m["kl"]) == pytest.approx(np.log(2), rel=1e-6)
