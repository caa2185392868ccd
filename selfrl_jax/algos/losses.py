"""Token-level RL losses: clipped policy gradient, KL to a frozen reference, loss aggregation.

    loss, metrics = policy_loss(logp_BxT, old_logp_BxT, ref_logp_BxT, adv_B, mask_BxT,
                                clip_low=0.2, clip_high=0.28, kl_coef=0.0, kl_estimator="k3",
                                agg_mode="token_mean")

All inputs are log-probs of the sampled tokens. `mask_BxT` marks the tokens that are trained on
(response tokens); masked positions contribute exactly 0 to the loss and get exactly 0 gradient,
whatever values (even inf/NaN) they hold. Pure, jittable, float32 math.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# ----------------------------------------------------------------------------------------------
# KL estimators (Schulman 2020, "Approximating KL divergence"): unbiased or low-variance per-sample
# estimates of KL(pi || ref) from x ~ pi, written in terms of logr = log ref(x) - log pi(x).


def _k1(logr):
  return -logr


def _k2(logr):
  return 0.5 * logr**2


def _k3(logr):
  # expm1 keeps precision when logr ~ 0 (the common case near the reference).
  return jnp.expm1(logr) - logr


KL_ESTIMATORS: dict[str, Callable[[jax.Array], jax.Array]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_estimate(logp_BxT, ref_logp_BxT, estimator: str) -> jax.Array:
  """Per-token KL(pi || ref) estimate for sampled tokens.

  k1 = logp - ref (unbiased, can be negative); k2 = 0.5 (logp - ref)^2 (biased, low variance);
  k3 = exp(ref - logp) - (ref - logp) - 1 (unbiased and >= 0; used by GRPO, eq. 4).
  """
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f"Unknown kl_estimator {estimator!r}; valid keys: {sorted(KL_ESTIMATORS)}.")
  logr = jnp.asarray(ref_logp_BxT, jnp.float32) - jnp.asarray(logp_BxT, jnp.float32)
  return KL_ESTIMATORS[estimator](logr)


# ----------------------------------------------------------------------------------------------
# Aggregation of a per-token [B, T] quantity to a scalar. Sequences without any valid token are
# treated as padding rows: they are left out of the mean over sequences (and never give NaN).


def _token_mean(v_BxT, m_BxT, norm_len):
  del norm_len
  return v_BxT.sum() / jnp.maximum(m_BxT.sum(), 1.0)


def _seq_mean(per_seq_B, m_BxT):
  has_tokens_B = m_BxT.sum(axis=1) > 0
  n_seq = jnp.maximum(has_tokens_B.sum(), 1).astype(jnp.float32)
  return jnp.where(has_tokens_B, per_seq_B, 0.0).sum() / n_seq


def _seq_mean_token_mean(v_BxT, m_BxT, norm_len):
  del norm_len
  per_seq_B = v_BxT.sum(axis=1) / jnp.maximum(m_BxT.sum(axis=1), 1.0)
  return _seq_mean(per_seq_B, m_BxT)


def _seq_mean_token_sum_norm(v_BxT, m_BxT, norm_len):
  norm = v_BxT.shape[1] if norm_len is None else norm_len
  return _seq_mean(v_BxT.sum(axis=1) / norm, m_BxT)


AGGREGATIONS: dict[str, Callable[..., jax.Array]] = {
    "token_mean": _token_mean,
    "seq_mean_token_mean": _seq_mean_token_mean,
    "seq_mean_token_sum_norm": _seq_mean_token_sum_norm,
}


def aggregate(values_BxT, mask_BxT, mode: str, norm_len: float | None = None) -> jax.Array:
  """Reduce per-token values to a scalar loss over valid tokens.

  Modes:
    token_mean: sum over all valid tokens / number of valid tokens in the batch (DAPO, eq. 12).
    seq_mean_token_mean: mean over each sequence's valid tokens, then over sequences
      (GRPO, Shao et al. 2024, eq. 3: 1/G sum_i 1/|o_i| sum_t).
    seq_mean_token_sum_norm: sum over each sequence's tokens / `norm_len`, then mean over sequences
      (Dr. GRPO, Liu et al. 2025). `norm_len` defaults to T, the static max response length.

  Rows with no valid token are excluded from the mean over sequences.
  """
  if mode not in AGGREGATIONS:
    raise ValueError(f"Unknown agg_mode {mode!r}; valid keys: {sorted(AGGREGATIONS)}.")
  values_BxT = jnp.asarray(values_BxT)
  mask_BxT = jnp.asarray(mask_BxT)
  if values_BxT.ndim != 2 or values_BxT.shape != mask_BxT.shape:
    raise ValueError(f"aggregate expects values_BxT and mask_BxT of equal 2-D shape, got "
                     f"{tuple(values_BxT.shape)} and {tuple(mask_BxT.shape)}.")
  if norm_len is not None and isinstance(norm_len, (int, float)) and norm_len <= 0:
    raise ValueError(f"norm_len must be > 0, got {norm_len}.")
  m_BxT = mask_BxT.astype(bool)
  v_BxT = jnp.where(m_BxT, values_BxT.astype(jnp.float32), 0.0)
  return AGGREGATIONS[mode](v_BxT, m_BxT.astype(jnp.float32), norm_len)


# ----------------------------------------------------------------------------------------------
# Clipped policy gradient.


def _broadcast_adv(adv, shape_BxT) -> jax.Array:
  adv = jnp.asarray(adv, jnp.float32)
  if adv.shape == shape_BxT:
    return adv
  if adv.shape == shape_BxT[:1]:
    return jnp.broadcast_to(adv[:, None], shape_BxT)
  raise ValueError(f"advantages must have shape [B]={shape_BxT[:1]} (per sequence) or "
                   f"[B, T]={shape_BxT} (per token), got {tuple(adv.shape)}.")


def _masked(x, m_BxT):
  # Sanitise masked positions before any nonlinearity: a `where` after exp() would still send
  # 0 * inf = NaN into the gradient.
  return jnp.where(m_BxT, jnp.asarray(x, jnp.float32), 0.0)


def _token_mean_metric(x_BxT, m_BxT) -> jax.Array:
  x_BxT = jnp.where(m_BxT, x_BxT.astype(jnp.float32), 0.0)
  return jax.lax.stop_gradient(x_BxT.sum() / jnp.maximum(m_BxT.sum(), 1).astype(jnp.float32))


def pg_loss(logp_BxT, old_logp_BxT, adv, mask_BxT, *, clip_low: float, clip_high: float,
            agg_mode: str, norm_len: float | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO clipped surrogate with decoupled bounds (DAPO clip-higher, eq. 10).

  Per token, r = exp(logp - old_logp):  loss_t = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A),
  aggregated with `agg_mode`. `adv` is [B] (broadcast over tokens) or [B, T]; old log-probs and
  advantages are constants (stop_gradient).

  Metrics: pg_clip_frac (valid tokens where the clipped term is strictly smaller, so the gradient
  is zero), pg_clip_frac_low / pg_clip_frac_high (split by bound), ratio_mean.
  """
  m_BxT = jnp.asarray(mask_BxT).astype(bool)
  if m_BxT.ndim != 2:
    raise ValueError(f"mask_BxT must be 2-D [B, T], got shape {tuple(m_BxT.shape)}.")
  for name, x in (("logp_BxT", logp_BxT), ("old_logp_BxT", old_logp_BxT)):
    if jnp.shape(x) != m_BxT.shape:
      raise ValueError(f"{name} shape {tuple(jnp.shape(x))} must equal mask_BxT shape {m_BxT.shape}.")
  if clip_low < 0 or clip_high < 0:
    raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low}, {clip_high}.")
  adv_BxT = jax.lax.stop_gradient(_masked(_broadcast_adv(adv, m_BxT.shape), m_BxT))
  logp_BxT = _masked(logp_BxT, m_BxT)
  old_logp_BxT = jax.lax.stop_gradient(_masked(old_logp_BxT, m_BxT))

  ratio_BxT = jnp.exp(logp_BxT - old_logp_BxT)
  unclipped_BxT = ratio_BxT * adv_BxT
  clipped_BxT = jnp.clip(ratio_BxT, 1.0 - clip_low, 1.0 + clip_high) * adv_BxT
  loss = aggregate(-jnp.minimum(unclipped_BxT, clipped_BxT), m_BxT, agg_mode, norm_len)

  is_clipped_BxT = m_BxT & (clipped_BxT < unclipped_BxT)
  metrics = {
      "pg_clip_frac": _token_mean_metric(is_clipped_BxT, m_BxT),
      "pg_clip_frac_low": _token_mean_metric(is_clipped_BxT & (ratio_BxT < 1.0), m_BxT),
      "pg_clip_frac_high": _token_mean_metric(is_clipped_BxT & (ratio_BxT > 1.0), m_BxT),
      "ratio_mean": _token_mean_metric(ratio_BxT, m_BxT),
  }
  return loss, metrics


def policy_loss(logp_BxT, old_logp_BxT, ref_logp_BxT, adv, mask_BxT, *, clip_low: float,
                clip_high: float, kl_coef, kl_estimator: str = "k3", agg_mode: str = "token_mean",
                norm_len: float | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """pg_loss + aggregate(kl_coef * KL estimate), the GRPO objective (eq. 3) with DAPO options.

  `kl_coef` is a scalar or an array broadcastable to [B, T] (e.g. a per-turn KL weight); with a
  scalar the KL term equals kl_coef * aggregate(kl). With `ref_logp_BxT=None` the KL term is skipped
  (no reference forward pass needed); this requires a Python `kl_coef == 0`.

  Metrics: those of `pg_loss`, plus pg_loss, kl_loss (the weighted KL term, 0 without a reference)
  and, when a reference is given, kl (mean per-token estimate over valid tokens).
  """
  pg, metrics = pg_loss(logp_BxT, old_logp_BxT, adv, mask_BxT, clip_low=clip_low,
                        clip_high=clip_high, agg_mode=agg_mode, norm_len=norm_len)
  m_BxT = jnp.asarray(mask_BxT).astype(bool)
  if ref_logp_BxT is None:
    if not (isinstance(kl_coef, (int, float)) and kl_coef == 0):
      raise ValueError(f"ref_logp_BxT is None but kl_coef={kl_coef!r}; pass reference log-probs "
                       "or set kl_coef=0.")
    kl_loss = jnp.zeros((), jnp.float32)
  else:
    if jnp.shape(ref_logp_BxT) != m_BxT.shape:
      raise ValueError(f"ref_logp_BxT shape {tuple(jnp.shape(ref_logp_BxT))} must equal mask_BxT "
                       f"shape {m_BxT.shape}.")
    ref_BxT = jax.lax.stop_gradient(_masked(ref_logp_BxT, m_BxT))
    kl_BxT = kl_estimate(_masked(logp_BxT, m_BxT), ref_BxT, kl_estimator)
    coef = jnp.asarray(kl_coef, jnp.float32)
    kl_loss = aggregate(jnp.broadcast_to(coef, m_BxT.shape) * kl_BxT, m_BxT, agg_mode, norm_len)
    metrics["kl"] = _token_mean_metric(kl_BxT, m_BxT)
  metrics["pg_loss"] = jax.lax.stop_gradient(pg)
  metrics["kl_loss"] = jax.lax.stop_gradient(kl_loss)
  return pg + kl_loss, metrics
