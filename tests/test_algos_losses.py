"""KL estimators, loss aggregation and the clipped policy-gradient loss vs NumPy / hand values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfrl_jax.algos.logprobs import token_kl
from selfrl_jax.algos.losses import (AGGREGATIONS, FULL_KL, KL_ESTIMATORS, KL_MODES, SURROGATES, SurrogateParams,
                                     aggregate, kl_estimate, kl_problem, kl_reward_to_go, pg_loss, policy_loss)

# ----------------------------------------------------------------------------------------------
# KL estimators


def test_kl_closed_forms_vs_numpy():
  rng = np.random.default_rng(0)
  logp = rng.normal(-2.0, 1.0, size=(3, 7)).astype(np.float32)
  ref = rng.normal(-2.0, 1.0, size=(3, 7)).astype(np.float32)
  d = logp.astype(np.float64) - ref
  expected = {"k1": d, "k2": 0.5 * d**2, "k3": np.exp(-d) + d - 1.0,
              "low_var_kl": np.clip(np.exp(-d) + d - 1.0, -10, 10)}
  assert sorted(KL_ESTIMATORS) == sorted(expected)
  for name, want in expected.items():
    got = np.asarray(kl_estimate(logp, ref, name))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(np.asarray(kl_estimate(logp, logp, name)), 0.0)
  assert (np.asarray(kl_estimate(logp, ref, "k3")) >= 0).all()
  with pytest.raises(ValueError, match="k3"):
    kl_estimate(logp, ref, "k4")
  # verl's low_var_kl: a token far below the reference (k3 = e^4 - 5 = 49.6) contributes 10.
  far = np.asarray(kl_estimate(np.float32([[-6.0]]), np.float32([[-2.0]]), "low_var_kl"))
  assert far[0, 0] == pytest.approx(10.0)
  # A token 100 nats below the reference: still 10, and a finite (zero) gradient, not 0 * inf = NaN.
  grad = jax.grad(lambda lp: kl_estimate(lp, jnp.float32([[-1.0]]), "low_var_kl").sum())(jnp.float32([[-101.0]]))
  assert np.isfinite(np.asarray(grad)).all()


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


def _expected_loss_gradient(estimator: str, theta, ref_logp):
  """E_{x~pi}[grad_theta k(x)] by enumeration: the gradient a KL *loss* term follows on samples of
  pi = softmax(theta), the sampling distribution held fixed (the samples carry no gradient)."""
  pi = jax.nn.softmax(theta)

  def loss(t):
    logp = jax.nn.log_softmax(t)
    return (jax.lax.stop_gradient(pi) * kl_estimate(logp[None], ref_logp[None], estimator)[0]).sum()
  return jax.grad(loss)(theta)


def test_kl_loss_gradients_follow_the_divergence_their_docs_name():
  """Exact expected gradients on a 5-way categorical (the docs' table in docs/algorithms.md):
  k1 as a loss anchors nothing, k2 follows grad KL(pi || ref) exactly, k3 grad KL(ref || pi)."""
  theta = jnp.array([1.2, -0.3, 0.5, -1.0, 0.1], jnp.float64 if jax.config.x64_enabled else jnp.float32)
  ref_logp = jax.nn.log_softmax(jnp.array([-0.5, 0.4, 0.0, 0.8, -0.2], theta.dtype))

  def kl_pi_ref(t):
    logp = jax.nn.log_softmax(t)
    return (jnp.exp(logp) * (logp - ref_logp)).sum()

  def kl_ref_pi(t):
    return (jnp.exp(ref_logp) * (ref_logp - jax.nn.log_softmax(t))).sum()

  forward, reverse = jax.grad(kl_pi_ref)(theta), jax.grad(kl_ref_pi)(theta)
  assert float(jnp.abs(forward - reverse).max()) > 0.05  # the two divergences are distinguishable here
  np.testing.assert_allclose(_expected_loss_gradient("k1", theta, ref_logp), 0.0, atol=1e-6)
  np.testing.assert_allclose(_expected_loss_gradient("k2", theta, ref_logp), forward, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(_expected_loss_gradient("k3", theta, ref_logp), reverse, rtol=1e-5, atol=1e-6)
  # low_var_kl is k3 wherever its clamp does not bind (|k3| <= 10 for every token here).
  np.testing.assert_allclose(_expected_loss_gradient("low_var_kl", theta, ref_logp), reverse, rtol=1e-5, atol=1e-6)


# Two-token policies: y1 ~ pi1 = softmax(theta1), y2 ~ pi2(. | y1) = softmax(theta2[y1]). Every
# (estimator, mode) pair that validation allows is run through `policy_loss` on all V^2 sequences
# (batch = the sequences, kl_coef = their probability, zero task advantage), so B * grad(loss) is the
# exact expected gradient. Loss mode is compared with the per-position KL (each position's context
# distribution held fixed), reward mode with the KL of the whole sequence: the two differ here.
V = 3


def _two_step_setup():
  dtype = jnp.float64 if jax.config.x64_enabled else jnp.float32
  rng = np.random.default_rng(28)  # the three target gradients differ by >= 0.3; every k3 <= 1.9 (no clamp)
  theta = {"t1": jnp.asarray(rng.normal(size=V), dtype), "t2": jnp.asarray(1.5 * rng.normal(size=(V, V)), dtype)}
  ref1 = jax.nn.log_softmax(jnp.asarray(rng.normal(size=V), dtype))
  ref2 = jax.nn.log_softmax(jnp.asarray(1.5 * rng.normal(size=(V, V)), dtype), axis=-1)
  y1, y2 = np.divmod(np.arange(V * V), V)
  return theta, ref1, ref2, y1, y2


def _kl(logp, ref, forward=True):
  """KL(p || ref) (forward) or KL(ref || p) over the last axis, from log-probs."""
  return (jnp.exp(logp) * (logp - ref)).sum(-1) if forward else (jnp.exp(ref) * (ref - logp)).sum(-1)


def _expected_gradient(estimator, mode, theta, ref1, ref2, y1, y2):
  def loss(th):
    lp1, lp2 = jax.nn.log_softmax(th["t1"]), jax.nn.log_softmax(th["t2"], axis=-1)
    logp_BxT = jnp.stack([lp1[y1], lp2[y1, y2]], axis=1)
    ref_BxT = jnp.stack([ref1[y1], ref2[y1, y2]], axis=1)
    prob_B = jax.lax.stop_gradient(jnp.exp(logp_BxT.sum(1)))
    full_BxT = jnp.stack([jnp.broadcast_to(_kl(lp1, ref1), y1.shape), _kl(lp2, ref2)[y1]], axis=1)
    value, _ = policy_loss(logp_BxT, jax.lax.stop_gradient(logp_BxT), ref_BxT, jnp.zeros(len(y1)),
                           jnp.ones(logp_BxT.shape, bool), clip_low=0.2, clip_high=0.2,
                           kl_coef=prob_B[:, None], kl_estimator=estimator, kl_mode=mode,
                           agg_mode="seq_mean_token_sum_norm", norm_len=1.0,
                           full_kl_BxT=full_BxT if estimator == FULL_KL else None)
    return len(y1) * value
  return jax.grad(loss)(theta)


def _target_gradients(theta, ref1, ref2):
  def per_position(th, forward):
    lp1, lp2 = jax.nn.log_softmax(th["t1"]), jax.nn.log_softmax(th["t2"], axis=-1)
    return _kl(lp1, ref1, forward) + (jax.lax.stop_gradient(jnp.exp(lp1)) * _kl(lp2, ref2, forward)).sum()

  def sequence_kl(th):
    lp1, lp2 = jax.nn.log_softmax(th["t1"]), jax.nn.log_softmax(th["t2"], axis=-1)
    return _kl(lp1, ref1) + (jnp.exp(lp1) * _kl(lp2, ref2)).sum()
  return {"per_position_forward": jax.grad(per_position)(theta, True),
          "per_position_reverse": jax.grad(per_position)(theta, False),
          "sequence_forward": jax.grad(sequence_kl)(theta), "zero": jax.tree.map(jnp.zeros_like, theta)}


# What each allowed (estimator, mode) follows; kl_problem rejects every pair not listed.
FOLLOWS = {("k2", "loss"): "per_position_forward", ("full", "loss"): "per_position_forward",
           ("k3", "loss"): "per_position_reverse", ("low_var_kl", "loss"): "per_position_reverse",
           ("k1", "reward"): "sequence_forward", ("full", "reward"): "sequence_forward"}


def test_kl_validation_allows_exactly_the_pairs_with_a_known_gradient():
  allowed = {(e, m) for e in [*KL_ESTIMATORS, FULL_KL] for m in KL_MODES if kl_problem(e, m) is None}
  assert allowed == set(FOLLOWS)
  assert "zero expected gradient" in kl_problem("k1", "loss")
  assert "no divergence" in kl_problem("k3", "reward")
  with pytest.raises(ValueError, match="no divergence"):
    policy_loss(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32),
                np.zeros(1, np.float32), np.ones((1, 2), bool), clip_low=0.2, clip_high=0.2, kl_coef=0.1,
                kl_estimator="k3", kl_mode="reward")


@pytest.mark.parametrize("estimator,mode", sorted(FOLLOWS))
def test_kl_exact_expected_gradient_on_a_two_token_policy(estimator, mode):
  theta, ref1, ref2, y1, y2 = _two_step_setup()
  targets = _target_gradients(theta, ref1, ref2)
  flat = lambda t: np.concatenate([np.ravel(t["t1"]), np.ravel(t["t2"])])  # noqa: E731
  # The three targets are far apart here, so matching one is not matching all.
  names = ("per_position_forward", "per_position_reverse", "sequence_forward")
  for a in names:
    for b in names:
      if a < b:
        assert np.abs(flat(targets[a]) - flat(targets[b])).max() > 0.3, (a, b)
  got = flat(_expected_gradient(estimator, mode, theta, ref1, ref2, y1, y2))
  np.testing.assert_allclose(got, flat(targets[FOLLOWS[estimator, mode]]), rtol=1e-4, atol=1e-5)


def test_kl_reward_to_go_hand_values():
  pen = np.array([[1.0, 2.0, 4.0, 8.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
  mask = np.array([[1, 1, 0, 1], [0, 1, 1, 0]], bool)
  np.testing.assert_array_equal(np.asarray(kl_reward_to_go(pen, mask)), [[11, 10, 8, 8], [2, 2, 1, 0]])
  np.testing.assert_array_equal(np.asarray(kl_reward_to_go(pen, mask, inclusive=False)), [[10, 8, 8, 0], [2, 1, 0, 0]])


def test_token_kl_matches_numpy_chunked_and_per_position_temperature():
  rng = np.random.default_rng(0)
  h, rh = rng.normal(size=(2, 5, 4)).astype(np.float32), rng.normal(size=(2, 5, 4)).astype(np.float32)
  w, rw = rng.normal(size=(4, 7)).astype(np.float32), rng.normal(size=(4, 7)).astype(np.float32)
  temp = rng.uniform(0.5, 1.5, size=(2, 5)).astype(np.float32)

  def ref_kl(t):
    z, rz = (h @ w) / t[..., None], (rh @ rw) / t[..., None]
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    lr = rz - np.log(np.exp(rz).sum(-1, keepdims=True))
    return (np.exp(lp) * (lp - lr)).sum(-1)
  for chunk in (None, 3):
    np.testing.assert_allclose(np.asarray(token_kl(h, w, rh, rw, chunk_size=chunk, temperature=temp)),
                               ref_kl(temp), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(token_kl(h, w, rh, rw, chunk_size=chunk)), ref_kl(np.ones_like(temp)),
                               rtol=1e-4, atol=1e-6)
  assert float(np.abs(np.asarray(token_kl(h, w, h, w))).max()) < 1e-5


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
  kl_np = {"k1": d, "k2": 0.5 * d**2, "k3": np.exp(-d) + d - 1, "low_var_kl": np.exp(-d) + d - 1}[estimator]
  dkl_np = {"k1": np.ones_like(d), "k2": d, "k3": 1 - np.exp(-d), "low_var_kl": 1 - np.exp(-d)}[estimator]
  assert (kl_np[mask] < 10).all()  # low_var_kl's clamp does not bind here: it equals k3
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


# ----------------------------------------------------------------------------------------------
# Surrogate registry: ppo_clip, dual_clip, is_weight, policy_shaping. clip_low=0.2, clip_high=0.28, c=3, gamma=1.

#                     A>0 r>hi | A>0 r<lo | A<0 r>c | A<0 hi<r<c | A<0 r<lo | r=1
SUR_RATIO_6 = np.array([1.5, 0.5, 4.0, 2.0, 0.5, 1.0])
SUR_ADV_6 = np.array([1.0, 1.0, -1.0, -1.0, -2.0, 0.5])
PARAMS = SurrogateParams(clip_low=0.2, clip_high=0.28, dual_clip_c=3.0, is_gamma=1.0)
# Per-token loss and d loss / d logp, by hand.
HAND = {
    "ppo_clip": ([-1.28, -0.5, 4.0, 2.0, 1.6, -0.5], [0.0, -0.5, 4.0, 2.0, 0.0, -0.5]),
    "dual_clip": ([-1.28, -0.5, 3.0, 2.0, 1.6, -0.5], [0.0, -0.5, 0.0, 2.0, 0.0, -0.5]),
    # -A r/(r+1) and -A r/(r+1)^2.
    "is_weight": ([-0.6, -1 / 3, 0.8, 2 / 3, 2 / 3, -0.25], [-0.24, -2 / 9, 0.16, 2 / 9, 4 / 9, -0.125]),
}
# policy_shaping (LUFFY): pi = exp(min(logp, 0)) with logp = -1.3 + log r; -A pi/(pi+1), -A pi/(pi+1)^2
# (0 where logp > 0: r = 4 gives logp = 0.086, so pi is capped at 1 there).
_PI = np.exp(np.minimum(-1.3 + np.log(SUR_RATIO_6), 0.0))
HAND["policy_shaping"] = (list(-SUR_ADV_6 * _PI / (_PI + 1)),
                          list(np.where(-1.3 + np.log(SUR_RATIO_6) < 0, -SUR_ADV_6 * _PI / (_PI + 1) ** 2, 0.0)))
HAND_CLIPPED = {"ppo_clip": [1, 0, 0, 0, 1, 0], "dual_clip": [1, 0, 1, 0, 1, 0], "is_weight": [0] * 6,
                "policy_shaping": [0] * 6}


def _sur_inputs(ratio=SUR_RATIO_6, adv=SUR_ADV_6):
  old = np.full((1, len(ratio)), -1.3, np.float32)
  return (jnp.asarray(old + np.log(ratio).astype(np.float32)), jnp.asarray(old),
          jnp.asarray(np.asarray(adv, np.float32)[None]))


@pytest.mark.parametrize("name", sorted(HAND))
def test_surrogate_hand_values_and_grads(name):
  assert sorted(SURROGATES) == sorted(HAND)
  logp, old, adv = _sur_inputs()
  loss, grad = jax.vmap(jax.value_and_grad(
      lambda lp, o, a: SURROGATES[name](lp, o, a, PARAMS)))(logp.ravel(), old.ravel(), adv.ravel())
  want_loss, want_grad = HAND[name]
  np.testing.assert_allclose(np.asarray(loss), want_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-6)
  # Through pg_loss (one objective, token_mean over 6 tokens): same values, clip fractions.
  fn = lambda lp: pg_loss(lp, old, adv, jnp.ones((1, 6), bool), clip_low=0.2, clip_high=0.28,
                          agg_mode="token_mean", objectives=(name,))
  (total, metrics), g = jax.value_and_grad(fn, has_aux=True)(logp)
  assert float(total) == pytest.approx(np.mean(want_loss), rel=1e-5)
  np.testing.assert_allclose(np.asarray(g)[0], np.asarray(want_grad) / 6, rtol=1e-5, atol=1e-7)
  clipped = np.array(HAND_CLIPPED[name], bool)
  assert float(metrics["pg_clip_frac"]) == pytest.approx(clipped.mean())
  assert float(metrics["pg_clip_frac_low"]) == pytest.approx((clipped & (SUR_RATIO_6 < 1)).mean())
  assert float(metrics["pg_clip_frac_high"]) == pytest.approx((clipped & (SUR_RATIO_6 > 1)).mean())
  assert ("pg_clip_frac_dual" in metrics) == (name == "dual_clip")
  if name == "dual_clip":
    assert float(metrics["pg_clip_frac_dual"]) == pytest.approx(1 / 6)
  assert not any(k.startswith("objective_frac") for k in metrics)


@pytest.mark.parametrize("gamma, want_grad_at_1", [(1.0, 0.25), (0.1, 0.1 / 1.21), (0.0, 1.0),
                                                   (-1.0, 1.0)])
def test_is_weight_gamma(gamma, want_grad_at_1):
  """HeRL: w = rho/(rho+gamma) for gamma > 0 (dw/dlogp = gamma/(1+gamma)^2 at rho=1), w = rho else."""
  p = SurrogateParams(0.2, 0.2, is_gamma=gamma)
  logp, old, adv = _sur_inputs(np.array([1.0, 1.5, 4.0]), np.array([2.0, 1.0, -1.0]))
  loss, grad = jax.vmap(jax.value_and_grad(lambda lp, o, a: SURROGATES["is_weight"](lp, o, a, p)))(
      logp.ravel(), old.ravel(), adv.ravel())
  r, a = np.array([1.0, 1.5, 4.0]), np.array([2.0, 1.0, -1.0])
  w, dw = (r / (r + gamma), gamma * r / (r + gamma) ** 2) if gamma > 0 else (r, r)
  np.testing.assert_allclose(np.asarray(loss), -a * w, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), -a * dw, rtol=1e-5)
  assert float(grad[0]) == pytest.approx(-2.0 * want_grad_at_1, rel=1e-5)  # no clipping anywhere


def test_surrogates_clamp_log_ratio_like_verl():
  # |logp - old| > 20: dual_clip and is_weight clamp the log-ratio, so loss and gradient stay finite.
  lp, old, a = jnp.array([30.0, 30.0, -30.0]), jnp.zeros(3), jnp.array([-1.0, 1.0, 1.0])
  for name, want in (("dual_clip", [3.0, -1.28, -np.exp(-20.0)]),
                     ("is_weight", [1.0, -1.0, -np.exp(-20.0) / (1 + np.exp(-20.0))])):
    loss, g = jax.value_and_grad(lambda x: SURROGATES[name](x, old, a, PARAMS).sum())(lp)
    loss_t = np.asarray(SURROGATES[name](lp, old, a, PARAMS))
    np.testing.assert_allclose(loss_t, want, rtol=1e-5, err_msg=name)
    np.testing.assert_array_equal(np.asarray(g), 0.0)  # clamped: zero gradient, not NaN


def _direct_surrogate(name, r, a):
  """Same surrogates written independently, as functions of the probability ratio r."""
  lo, hi, c, g = PARAMS.clip_low, PARAMS.clip_high, PARAMS.dual_clip_c, PARAMS.is_gamma
  cr = jnp.clip(r, 1 - lo, 1 + hi)
  if name == "ppo_clip":
    return jnp.where(a >= 0, -a * jnp.minimum(r, cr), -a * jnp.maximum(r, cr))
  if name == "dual_clip":
    return jnp.where(a >= 0, -a * jnp.minimum(r, cr), -a * jnp.minimum(jnp.maximum(r, cr), c))
  return -a * r / (r + g)


@pytest.mark.parametrize("name", ["dual_clip", "is_weight", "ppo_clip"])  # ratio surrogates; policy_shaping below
def test_surrogate_exact_enumeration_on_categorical(name):
  # J(z) = sum_y pi_old(y) loss(log softmax(z)_y, log pi_old(y), A_y), over all 4 tokens y.
  z_old = np.array([0.0, 0.0, 0.0, -1.0], np.float32)
  z = np.array([0.8, -0.6, 0.1, 1.6], np.float32)
  a = np.array([1.0, -1.0, 1.0, -1.0], np.float32)
  pi_old = np.exp(z_old - np.log(np.exp(z_old.astype(np.float64)).sum()))
  lp_old = jax.nn.log_softmax(z_old)

  def j_registry(zz):
    return (pi_old * SURROGATES[name](jax.nn.log_softmax(zz), lp_old, a, PARAMS)).sum()

  def j_direct(zz):
    return (pi_old * _direct_surrogate(name, jax.nn.softmax(zz) / pi_old, a)).sum()

  def j_pg_loss(zz):  # token_mean over the 4 tokens; A_y scaled by 4 pi_old(y) > 0 (homogeneous)
    return pg_loss(jax.nn.log_softmax(zz)[None], lp_old[None], (4 * pi_old * a)[None],
                   jnp.ones((1, 4), bool), clip_low=0.2, clip_high=0.28, agg_mode="token_mean",
                   objectives=(name,))[0]

  pi = np.exp(z - np.log(np.exp(z.astype(np.float64)).sum()))
  r = pi / pi_old
  assert r[3] > 3 and r[1] < 0.8 and r[2] < 0.8  # beyond dual clip, clipped low, unclipped low
  g_direct = np.asarray(jax.grad(j_direct)(z))
  for fn in (j_registry, j_pg_loss):
    assert float(fn(z)) == pytest.approx(float(j_direct(z)), rel=1e-5)
    np.testing.assert_allclose(np.asarray(jax.grad(fn)(z)), g_direct, rtol=1e-4, atol=1e-6)
  # Hand chain rule: dJ/dz_k = sum_y pi_old(y) dloss_y/dlogp_y (1[y = k] - pi_k).
  lo, hi = 0.8, 1.28
  ppo_active = np.where(a >= 0, r <= hi, r >= lo)  # unclipped branch active
  dlogp = {"ppo_clip": np.where(ppo_active, -a * r, 0.0),
           "dual_clip": np.where(ppo_active & ~((a < 0) & (r > 3)), -a * r, 0.0),
           "is_weight": -a * r / (r + 1) ** 2}[name]
  want = (pi_old * dlogp) @ (np.eye(4) - pi[None, :])
  np.testing.assert_allclose(g_direct, want, rtol=1e-4, atol=1e-6)
  assert np.abs(want).max() > 1e-2


def test_policy_shaping_exact_enumeration_on_categorical():
  """J(z) = sum_y pi_old(y) (-A_y pi_y / (pi_y + gamma)), pi = softmax(z): the registry's gradient equals
  the hand chain rule dJ/dz_k = sum_y pi_old(y) (-A_y gamma pi_y / (pi_y + gamma)^2) (1[y = k] - pi_k)."""
  z_old = np.array([0.0, 0.0, 0.0, -1.0], np.float32)
  z = np.array([0.8, -0.6, 0.1, 1.6], np.float32)
  a = np.array([1.0, -1.0, 1.0, -1.0], np.float32)
  pi_old = np.exp(z_old - np.log(np.exp(z_old.astype(np.float64)).sum()))
  p = SurrogateParams(0.2, 0.28, 3.0, 0.5)
  j = lambda zz: (pi_old * SURROGATES["policy_shaping"](jax.nn.log_softmax(zz), jnp.zeros(4), a, p)).sum()  # noqa: E731
  pi = np.exp(z - np.log(np.exp(z.astype(np.float64)).sum()))
  want = (pi_old * (-a * 0.5 * pi / (pi + 0.5) ** 2)) @ (np.eye(4) - pi[None, :])
  np.testing.assert_allclose(np.asarray(jax.grad(j)(z)), want, rtol=1e-4, atol=1e-6)
  assert float(j(z)) == pytest.approx(float((pi_old * (-a * pi / (pi + 0.5))).sum()), rel=1e-5)


def _mix_case():
  """Two rows of the six hand tokens plus a masked slot with garbage in every input."""
  logp, old, adv = _sur_inputs()
  pad = lambda x, v: jnp.concatenate([x, jnp.full((1, 1), v, x.dtype)], axis=1)  # noqa: E731
  logp2 = jnp.concatenate([pad(logp, 1e4), pad(logp, np.inf)])
  old2 = jnp.concatenate([pad(old, np.nan), pad(old, -np.inf)])
  adv2 = jnp.concatenate([pad(adv, np.nan), pad(adv, np.inf)])
  obj = jnp.array([[0, 1, 2, 0, 1, 2, 9], [2, 0, 1, 2, 0, 1, -1]], jnp.int32)
  mask = jnp.arange(7)[None].repeat(2, 0) < 6
  return logp2, old2, adv2, obj, mask


def test_mixed_surrogates_per_token():
  logp, old, adv, obj, mask = _mix_case()
  names = ("ppo_clip", "dual_clip", "is_weight")
  kw = dict(clip_low=0.2, clip_high=0.28, agg_mode="token_mean", objectives=names)
  fn = jax.jit(jax.value_and_grad(lambda lp, o: pg_loss(lp, old, adv, mask, objective_BxT=o, **kw),
                                  has_aux=True))
  (loss, metrics), grad = fn(logp, obj)
  o = np.asarray(obj)[:, :6]
  hand_loss = np.array([[HAND[names[k]][0][t] for t, k in enumerate(row)] for row in o])
  hand_grad = np.array([[HAND[names[k]][1][t] for t, k in enumerate(row)] for row in o])
  assert float(loss) == pytest.approx(hand_loss.mean(), rel=1e-5)
  np.testing.assert_allclose(np.asarray(grad)[:, :6], hand_grad / 12, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(grad)[:, 6], 0.0)  # masked garbage: 0 gradient
  clipped = np.array([[HAND_CLIPPED[names[k]][t] for t, k in enumerate(row)] for row in o])
  assert float(metrics["pg_clip_frac"]) == pytest.approx(clipped.mean())
  assert float(metrics["pg_clip_frac_dual"]) == pytest.approx(1 / 12)  # row 1 token 2
  for name in names:
    assert float(metrics[f"objective_frac/{name}"]) == pytest.approx(1 / 3)
  # Sum of masked single-objective parts: loss * N = sum_k loss_k * N_k, same for gradients.
  parts_loss, parts_grad = 0.0, 0.0
  for k, name in enumerate(names):
    m_k = mask & (obj == k)
    (l_k, _), g_k = jax.value_and_grad(lambda lp: pg_loss(
        lp, old, adv, m_k, clip_low=0.2, clip_high=0.28, agg_mode="token_mean", objectives=(name,)),
        has_aux=True)(logp)
    parts_loss, parts_grad = parts_loss + 4 * float(l_k), parts_grad + 4 * np.asarray(g_k)
  assert 12 * float(loss) == pytest.approx(parts_loss, rel=1e-5)
  np.testing.assert_allclose(12 * np.asarray(grad), parts_grad, rtol=1e-5, atol=1e-7)
  # Traced mask with a concrete objective_BxT (no eager range check possible) gives the same.
  loss_j = jax.jit(lambda m: pg_loss(logp, old, adv, m, objective_BxT=np.asarray(obj), **kw)[0])(mask)
  assert float(loss_j) == pytest.approx(float(loss), rel=1e-6)


@pytest.mark.parametrize("name", sorted(HAND))
def test_surrogates_masked_garbage_is_harmless(name):
  logp, old, adv, obj, mask = _mix_case()
  clean = [jnp.where(mask, x, 0.0) for x in (logp, old, adv)]
  other = "is_weight" if name == "ppo_clip" else "ppo_clip"
  for objective_BxT, objectives in ((None, (name,)), (jnp.zeros_like(obj), (name, other))):
    f = lambda lp, o, a: pg_loss(lp, o, a, mask, clip_low=0.2, clip_high=0.28,  # noqa: E731
                                 agg_mode="seq_mean_token_mean", objective_BxT=objective_BxT,
                                 objectives=objectives)[0]
    loss, grad = jax.value_and_grad(f)(logp, old, adv)
    loss_c, grad_c = jax.value_and_grad(f)(*clean)
    assert float(loss) == float(loss_c) and np.isfinite(float(loss))
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(grad_c))
    np.testing.assert_array_equal(np.asarray(grad)[~np.asarray(mask)], 0.0)


def _old_pg_formula(logp, old, adv_b, mask, lo, hi, mode, norm_len):
  """The PPO-clip pg_loss as it was before the surrogate registry (same ops, same order)."""
  m = jnp.asarray(mask).astype(bool)
  a = jax.lax.stop_gradient(jnp.where(m, jnp.broadcast_to(jnp.asarray(adv_b)[:, None], m.shape), 0.0))
  lp = jnp.where(m, jnp.asarray(logp, jnp.float32), 0.0)
  o = jax.lax.stop_gradient(jnp.where(m, jnp.asarray(old, jnp.float32), 0.0))
  ratio = jnp.exp(lp - o)
  un, cl = ratio * a, jnp.clip(ratio, 1.0 - lo, 1.0 + hi) * a
  return aggregate(-jnp.minimum(un, cl), m, mode, norm_len), m & (cl < un)


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_default_objective_is_bit_identical_to_old_ppo(mode):
  rng = np.random.default_rng(7)
  b, t = 4, 9
  old = rng.normal(-1.5, 0.5, size=(b, t)).astype(np.float32)
  logp = (old + rng.normal(0, 0.4, size=(b, t))).astype(np.float32)
  adv_b = rng.normal(size=b).astype(np.float32)
  mask = np.arange(t)[None] < np.array([9, 4, 0, 2])[:, None]
  new = jax.jit(jax.value_and_grad(lambda lp: pg_loss(
      lp, old, adv_b, mask, clip_low=0.2, clip_high=0.28, agg_mode=mode, norm_len=12), has_aux=True))
  ref = jax.jit(jax.value_and_grad(lambda lp: _old_pg_formula(lp, old, adv_b, mask, 0.2, 0.28, mode,
                                                              12), has_aux=True))
  (loss, metrics), grad = new(logp)
  (loss_old, clipped_old), grad_old = ref(logp)
  np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss_old))
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(grad_old))
  assert float(metrics["pg_clip_frac"]) == pytest.approx(np.asarray(clipped_old).sum() / mask.sum())
  assert sorted(metrics) == ["pg_clip_frac", "pg_clip_frac_high", "pg_clip_frac_low", "ratio_mean"]
  # An explicit all-zero objective_BxT goes through the generic path and agrees to rounding.
  loss_g, grad_g = jax.value_and_grad(lambda lp: pg_loss(
      lp, old, adv_b, mask, clip_low=0.2, clip_high=0.28, agg_mode=mode, norm_len=12,
      objective_BxT=np.zeros((b, t), np.int32))[0])(logp)
  assert float(loss_g) == pytest.approx(float(loss), rel=1e-6)
  np.testing.assert_allclose(np.asarray(grad_g), np.asarray(grad), rtol=1e-6, atol=1e-9)


def test_policy_loss_passes_objectives_through():
  logp, old, adv, obj, mask = _mix_case()
  ref = jnp.where(mask, old + 0.1, np.nan)
  kw = dict(clip_low=0.2, clip_high=0.28, agg_mode="token_mean", dual_clip_c=2.5, is_gamma=0.5)
  is_he = obj == 1  # a bool [B, T] selector: True -> objectives[1]
  loss, m = policy_loss(logp, old, ref, adv, mask, kl_coef=0.1, objective_BxT=is_he,
                        objectives=("dual_clip", "is_weight"), **kw)
  pg, m_pg = pg_loss(logp, old, adv, mask, objective_BxT=is_he.astype(jnp.int32),
                     objectives=("dual_clip", "is_weight"), **kw)
  assert float(m["pg_loss"]) == float(pg)
  assert float(loss) == pytest.approx(float(pg) + float(m["kl_loss"]), rel=1e-6)
  assert float(m["objective_frac/is_weight"]) == pytest.approx(4 / 12)
  assert float(m["pg_clip_frac_dual"]) == float(m_pg["pg_clip_frac_dual"])
  # objective_BxT=None with several objectives: every token uses objectives[0].
  _, m0 = pg_loss(logp, old, adv, mask, objectives=("is_weight", "ppo_clip"), **kw)
  assert (float(m0["objective_frac/is_weight"]), float(m0["pg_clip_frac"])) == (1.0, 0.0)


def test_objective_errors():
  logp, old, adv, obj, mask = _mix_case()
  kw = dict(clip_low=0.2, clip_high=0.28, agg_mode="token_mean")
  with pytest.raises(ValueError, match="dual_clip.*is_weight.*ppo_clip"):
    pg_loss(logp, old, adv, mask, objectives=("ppo",), **kw)
  with pytest.raises(ValueError, match="distinct"):
    pg_loss(logp, old, adv, mask, objectives=("ppo_clip", "ppo_clip"), **kw)
  with pytest.raises(ValueError, match="objective_BxT shape"):
    pg_loss(logp, old, adv, mask, objective_BxT=obj[:, :3], **kw)
  with pytest.raises(ValueError, match="integer"):
    pg_loss(logp, old, adv, mask, objective_BxT=obj.astype(jnp.float32), **kw)
  with pytest.raises(ValueError, match="outside"):  # index 2 with two objectives, at valid tokens
    pg_loss(logp, old, adv, mask, objective_BxT=obj, objectives=("ppo_clip", "is_weight"), **kw)
  with pytest.raises(ValueError, match="dual_clip_c"):
    pg_loss(logp, old, adv, mask, objectives=("dual_clip",), dual_clip_c=1.0, **kw)


def test_mixed_batch_extreme_ratio_on_clamped_surrogate():
  # A valid is_weight token with log-ratio 100: exp overflows for ppo_clip, which must not see it.
  logp, old = jnp.array([[100.0, 0.1, -0.2]]), jnp.zeros((1, 3))
  adv, mask = jnp.array([[1.0, 1.0, -1.0]]), jnp.ones((1, 3), bool)
  obj = jnp.array([[1, 0, 0]])
  loss, grad = jax.value_and_grad(lambda lp: pg_loss(
      lp, old, adv, mask, clip_low=0.2, clip_high=0.28, agg_mode="token_mean", objective_BxT=obj,
      objectives=("ppo_clip", "is_weight"))[0])(logp)
  r1, r2 = np.exp(0.1), np.exp(-0.2)
  assert float(loss) == pytest.approx((-1.0 - r1 + r2) / 3, rel=1e-5)
  np.testing.assert_allclose(np.asarray(grad)[0], [0.0, -r1 / 3, r2 / 3], rtol=1e-5)
