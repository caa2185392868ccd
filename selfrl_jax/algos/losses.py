"""Token-level RL losses: policy-gradient surrogates, KL to a frozen reference, loss aggregation.

    loss, metrics = policy_loss(logp_BxT, old_logp_BxT, ref_logp_BxT, adv_B, mask_BxT,
                                clip_low=0.2, clip_high=0.28, kl_coef=0.0, kl_estimator="k3",
                                agg_mode="token_mean")
    # Per-token mix of surrogates (e.g. HeRL: dual clip on own tokens, is_weight on hindsight ones):
    loss, metrics = policy_loss(..., objective_BxT=is_he_BxT.astype(int),
                                objectives=("dual_clip", "is_weight"), dual_clip_c=3.0, is_gamma=1.0)

All inputs are log-probs of the sampled tokens. `mask_BxT` marks the tokens that are trained on
(response tokens); masked positions contribute exactly 0 to the loss and get exactly 0 gradient,
whatever values (even inf/NaN) they hold. Pure, jittable, float32 math.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

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


def _low_var_kl(logr):
  # verl / EasyR1 `low_var_kl`: k3 clamped to [-10, 10] (only the upper bound can bind, k3 >= 0).
  # The log-ratio is clamped to [-20, 20] first (as newer EasyR1 does): past ~88 expm1 overflows and
  # the clamped branch's gradient would be 0 * inf = NaN; within the clamp nothing changes.
  return jnp.clip(_k3(jnp.clip(logr, -20.0, 20.0)), -10.0, 10.0)


KL_ESTIMATORS: dict[str, Callable[[jax.Array], jax.Array]] = {"k1": _k1, "k2": _k2, "k3": _k3,
                                                              "low_var_kl": _low_var_kl}


# The exact KL over the vocabulary at each position (`logprobs.token_kl`): computed from both models'
# hidden states, not from sampled log-probs, so it has no entry in KL_ESTIMATORS.
FULL_KL = "full"
KL_MODES = ("loss", "reward")


def kl_problem(estimator: str, mode: str = "loss") -> str | None:
  """Why `estimator` in `mode` optimises no KL (None when it does), for config validation.

  Expected gradients, exact by enumeration (tests/test_algos_losses.py, one- and two-token policies;
  the table in docs/algorithms.md). `loss`: the weighted estimate is added to the loss on samples of
  the current policy, the samples carrying no gradient. Each position's KL is then differentiated
  with its context held fixed (the per-position KL): k2 and full follow grad KL(pi || ref), k3 (and
  low_var_kl where its clamp does not bind) grad KL(ref || pi), and k1 has expected gradient 0.
  `reward`: the penalty enters the return (`kl_reward_to_go`): k1 follows the gradient of the whole
  sequence's KL(pi || ref), and full too (its own position differentiated exactly, later positions
  through the return). k2, k3 and low_var_kl as rewards follow no divergence's gradient.
  """
  if mode not in KL_MODES:
    return f"unknown kl_mode {mode!r}; valid: {KL_MODES}"
  if estimator != FULL_KL and estimator not in KL_ESTIMATORS:
    return f"unknown kl_estimator {estimator!r}; valid: {sorted(KL_ESTIMATORS) + [FULL_KL]}"
  if mode == "loss" and estimator == "k1":
    return ("k1 = log pi - log ref as a loss term has zero expected gradient (E_pi[grad log pi] = 0), so "
            "the KL weight would only add noise: use 'k3' (GRPO), 'k2' or 'full', or rl.kl_mode='reward'")
  if mode == "reward" and estimator not in ("k1", FULL_KL):
    return (f"{estimator} as a reward penalty follows no divergence's gradient (E_pi[k(x) grad log pi] is "
            "not a KL gradient for k2 / k3): with rl.kl_mode='reward' use 'k1' or 'full'")
  return None


def kl_estimate(logp_BxT, ref_logp_BxT, estimator: str) -> jax.Array:
  """Per-token KL(pi || ref) estimate for sampled tokens.

  k1 = logp - ref (unbiased, can be negative); k2 = 0.5 (logp - ref)^2 (biased, low variance);
  k3 = exp(ref - logp) - (ref - logp) - 1 (unbiased and >= 0; used by GRPO, eq. 4); low_var_kl =
  k3 clamped to [-10, 10] (verl / EasyR1: a token far from the reference adds at most 10).
  "Unbiased" is about the value; as a loss term each follows a different gradient (`kl_problem`).
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
# Per-token policy-gradient surrogates. Each maps (logp, old_logp, A, params), all [B, T] and
# already sanitised, to the per-token loss [B, T] before aggregation; `_CLIPPED` says per token
# whether clipping zeroes that surrogate's gradient (for the pg_clip_frac metrics).


@dataclasses.dataclass(frozen=True)
class SurrogateParams:
  """Hyper-parameters of the surrogates; each reads the fields it needs (Python floats).

  clip_low, clip_high: ratio band [1 - clip_low, 1 + clip_high] of ppo_clip and dual_clip.
  dual_clip_c: dual_clip's bound for A < 0 (> 1): the token loss is at most -A c.
  is_gamma: is_weight's shaping constant: w = rho / (rho + gamma) if gamma > 0, else w = rho.
  """
  clip_low: float
  clip_high: float
  dual_clip_c: float = 3.0
  is_gamma: float = 1.0


def ppo_clip(logp_BxT, old_logp_BxT, adv_BxT, p: SurrogateParams) -> jax.Array:
  """PPO clip with decoupled bounds (DAPO, Yu et al. 2025, eq. 10), r = exp(logp - old_logp):
  loss = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)."""
  ratio = jnp.exp(logp_BxT - old_logp_BxT)
  return -jnp.minimum(ratio * adv_BxT, jnp.clip(ratio, 1.0 - p.clip_low, 1.0 + p.clip_high) * adv_BxT)


def _dual_ratio(logp_BxT, old_logp_BxT):
  # verl's compute_policy_loss clamps the log-ratio to [-20, 20] (finite ratio and gradient).
  return jnp.exp(jnp.clip(logp_BxT - old_logp_BxT, -20.0, 20.0))


def dual_clip(logp_BxT, old_logp_BxT, adv_BxT, p: SurrogateParams) -> jax.Array:
  """Dual-clip PPO (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL";
  verl's compute_policy_loss), r = exp(clip(logp - old_logp, -20, 20)):
  l1 = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high));  loss = min(l1, -A c) if A < 0 else l1.
  For A < 0 and r > c the loss is the constant -A c: a bounded loss and zero gradient."""
  ratio = _dual_ratio(logp_BxT, old_logp_BxT)
  l1 = jnp.maximum(-adv_BxT * ratio, -adv_BxT * jnp.clip(ratio, 1.0 - p.clip_low, 1.0 + p.clip_high))
  return jnp.where(adv_BxT < 0, jnp.minimum(l1, -adv_BxT * p.dual_clip_c), l1)


def is_weight(logp_BxT, old_logp_BxT, adv_BxT, p: SurrogateParams) -> jax.Array:
  """HeRL's loss on hindsight tokens (shared/papers/herl.md §(8), "mixpolicy_vanilla"): no clipping,
  rho = exp(clip(logp - old_logp, -20, 20)), w = rho / (rho + gamma) (gamma <= 0: w = rho),
  loss = -A w. d loss / d logp = -A gamma rho / (rho + gamma)^2: -A / 4 at rho = 1, gamma = 1."""
  rho = jnp.exp(jnp.clip(logp_BxT - old_logp_BxT, -20.0, 20.0))
  w = rho / (rho + p.is_gamma) if p.is_gamma > 0 else rho
  return -adv_BxT * w


def policy_shaping(logp_BxT, old_logp_BxT, adv_BxT, p: SurrogateParams) -> jax.Array:
  """LUFFY's policy shaping (Yan et al. 2025), HeRL's `he.is_ratio = raw` option (herl.md §2 (8)):
  the raw probability instead of a ratio, pi = exp(logp), loss = -A pi / (pi + gamma) (gamma <= 0:
  -A pi); old log-probs are not used. d loss / d logp = -A gamma pi / (pi + gamma)^2."""
  del old_logp_BxT
  pi = jnp.exp(jnp.minimum(logp_BxT, 0.0))
  w = pi / (pi + p.is_gamma) if p.is_gamma > 0 else pi
  return -adv_BxT * w


SURROGATES: dict[str, Callable[..., jax.Array]] = {
    "ppo_clip": ppo_clip, "dual_clip": dual_clip, "is_weight": is_weight, "policy_shaping": policy_shaping}


def _ppo_clipped(logp, old, adv, p):
  ratio = jnp.exp(logp - old)
  return jnp.clip(ratio, 1.0 - p.clip_low, 1.0 + p.clip_high) * adv < ratio * adv


def _dual_branch(logp, old, adv, p):
  """dual_clip tokens on the constant -A c branch."""
  ratio = _dual_ratio(logp, old)
  l1 = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1.0 - p.clip_low, 1.0 + p.clip_high))
  return (adv < 0) & (l1 > -adv * p.dual_clip_c)


def _dual_clipped(logp, old, adv, p):
  ratio = _dual_ratio(logp, old)
  ppo_clipped = -adv * jnp.clip(ratio, 1.0 - p.clip_low, 1.0 + p.clip_high) > -adv * ratio
  return ppo_clipped | _dual_branch(logp, old, adv, p)


_CLIPPED = {"ppo_clip": _ppo_clipped, "dual_clip": _dual_clipped,
            "is_weight": lambda logp, *_: jnp.zeros(jnp.shape(logp), bool),
            "policy_shaping": lambda logp, *_: jnp.zeros(jnp.shape(logp), bool)}


# ----------------------------------------------------------------------------------------------
# Policy-gradient loss.


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


def _check_objectives(objectives, objective_BxT, m_BxT, p: SurrogateParams):
  if not objectives or len(set(objectives)) != len(objectives):
    raise ValueError(f"objectives must be a non-empty tuple of distinct names, got {objectives!r}.")
  for name in objectives:
    if name not in SURROGATES:
      raise ValueError(f"Unknown objective {name!r}; valid keys: {sorted(SURROGATES)}.")
  if "dual_clip" in objectives and not p.dual_clip_c > 1.0:
    raise ValueError(f"dual_clip_c must be > 1, got {p.dual_clip_c}.")
  if objective_BxT is None:
    return None
  if jnp.shape(objective_BxT) != m_BxT.shape:
    raise ValueError(f"objective_BxT shape {tuple(jnp.shape(objective_BxT))} must equal mask_BxT "
                     f"shape {m_BxT.shape}.")
  dtype = jnp.result_type(objective_BxT)
  if not (jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_):
    raise ValueError(f"objective_BxT must hold integer indices into objectives, got dtype {dtype}.")
  obj_BxT = jnp.asarray(objective_BxT).astype(jnp.int32)
  if not any(isinstance(x, jax.core.Tracer) for x in (obj_BxT, m_BxT)):  # eager: check the range
    bad = np.asarray(m_BxT) & ((np.asarray(obj_BxT) < 0) | (np.asarray(obj_BxT) >= len(objectives)))
    if bad.any():
      raise ValueError(f"objective_BxT holds indices outside [0, {len(objectives)}) at valid tokens.")
  return obj_BxT


def pg_loss(logp_BxT, old_logp_BxT, adv, mask_BxT, *, clip_low: float, clip_high: float,
            agg_mode: str, norm_len: float | None = None, objective_BxT=None,
            objectives: tuple[str, ...] = ("ppo_clip",), dual_clip_c: float = 3.0,
            is_gamma: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-token policy-gradient surrogate (SURROGATES), aggregated with `agg_mode`.

  Token (b, t) uses `objectives[objective_BxT[b, t]]` (int or bool [B, T]; values at masked tokens
  are ignored; under jit an out-of-range index at a valid token gives it 0 loss); with
  `objective_BxT=None` every token uses `objectives[0]`. The default is PPO clip with decoupled
  bounds (DAPO eq. 10): r = exp(logp - old_logp), loss_t = -min(r A, clip(r, 1 - clip_low,
  1 + clip_high) A). `adv` is [B] (broadcast over tokens) or [B, T]; old log-probs and advantages
  are constants (stop_gradient). `dual_clip_c` and `is_gamma` parametrise dual_clip / is_weight.

  Metrics: pg_clip_frac (valid tokens whose own surrogate's gradient is zeroed by clipping;
  is_weight tokens never are), pg_clip_frac_low / pg_clip_frac_high (split by r < 1 / r > 1),
  ratio_mean; with dual_clip among the objectives pg_clip_frac_dual (tokens on the -A c branch);
  with several objectives objective_frac/<name> (fraction of valid tokens using each).
  """
  m_BxT = jnp.asarray(mask_BxT).astype(bool)
  if m_BxT.ndim != 2:
    raise ValueError(f"mask_BxT must be 2-D [B, T], got shape {tuple(m_BxT.shape)}.")
  for name, x in (("logp_BxT", logp_BxT), ("old_logp_BxT", old_logp_BxT)):
    if jnp.shape(x) != m_BxT.shape:
      raise ValueError(f"{name} shape {tuple(jnp.shape(x))} must equal mask_BxT shape {m_BxT.shape}.")
  if clip_low < 0 or clip_high < 0:
    raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low}, {clip_high}.")
  objectives = tuple(objectives)
  params = SurrogateParams(clip_low, clip_high, dual_clip_c, is_gamma)
  obj_BxT = _check_objectives(objectives, objective_BxT, m_BxT, params)
  adv_BxT = jax.lax.stop_gradient(_masked(_broadcast_adv(adv, m_BxT.shape), m_BxT))
  logp_BxT = _masked(logp_BxT, m_BxT)
  old_logp_BxT = jax.lax.stop_gradient(_masked(old_logp_BxT, m_BxT))

  ratio_BxT = jnp.exp(logp_BxT - old_logp_BxT)
  if obj_BxT is None and objectives == ("ppo_clip",):  # the original code path, bit for bit
    unclipped_BxT = ratio_BxT * adv_BxT
    clipped_BxT = jnp.clip(ratio_BxT, 1.0 - clip_low, 1.0 + clip_high) * adv_BxT
    loss = aggregate(-jnp.minimum(unclipped_BxT, clipped_BxT), m_BxT, agg_mode, norm_len)
    is_clipped_BxT = m_BxT & (clipped_BxT < unclipped_BxT)
  else:
    loss_BxT = jnp.zeros(m_BxT.shape, jnp.float32)
    is_clipped_BxT = dual_BxT = jnp.zeros(m_BxT.shape, bool)
    for k, name in enumerate(objectives if obj_BxT is not None else objectives[:1]):
      sel_BxT = m_BxT if obj_BxT is None else m_BxT & (obj_BxT == k)
      # Tokens of other objectives enter this surrogate as r = 1, A = 0: finite, zero gradient.
      args = (jnp.where(sel_BxT, logp_BxT, old_logp_BxT), old_logp_BxT,
              jnp.where(sel_BxT, adv_BxT, 0.0), params)
      loss_BxT = jnp.where(sel_BxT, SURROGATES[name](*args), loss_BxT)
      is_clipped_BxT = is_clipped_BxT | (sel_BxT & _CLIPPED[name](*args))
      if name == "dual_clip":
        dual_BxT = sel_BxT & _dual_branch(*args)
    loss = aggregate(loss_BxT, m_BxT, agg_mode, norm_len)

  metrics = {
      "pg_clip_frac": _token_mean_metric(is_clipped_BxT, m_BxT),
      "pg_clip_frac_low": _token_mean_metric(is_clipped_BxT & (ratio_BxT < 1.0), m_BxT),
      "pg_clip_frac_high": _token_mean_metric(is_clipped_BxT & (ratio_BxT > 1.0), m_BxT),
      "ratio_mean": _token_mean_metric(ratio_BxT, m_BxT),
  }
  if "dual_clip" in objectives:
    metrics["pg_clip_frac_dual"] = _token_mean_metric(dual_BxT, m_BxT)
  if len(objectives) > 1:
    obj_BxT = jnp.zeros(m_BxT.shape, jnp.int32) if obj_BxT is None else obj_BxT
    for k, name in enumerate(objectives):
      metrics[f"objective_frac/{name}"] = _token_mean_metric(obj_BxT == k, m_BxT)
  return loss, metrics


def kl_reward_to_go(penalty_BxT, mask_BxT, inclusive: bool = True) -> jax.Array:
  """Sum of each row's penalties at positions >= t (> t when not `inclusive`), masked positions 0.

  The KL penalty in the return (`kl_mode="reward"`): token t's advantage loses the penalties of
  itself and every later token of its sequence, the REINFORCE form of the KL-regularised objective.
  """
  p_BxT = jnp.where(jnp.asarray(mask_BxT, bool), jnp.asarray(penalty_BxT, jnp.float32), 0.0)
  rtg_BxT = jnp.cumsum(p_BxT[:, ::-1], axis=1)[:, ::-1]
  return rtg_BxT if inclusive else rtg_BxT - p_BxT


def policy_loss(logp_BxT, old_logp_BxT, ref_logp_BxT, adv, mask_BxT, *, clip_low: float,
                clip_high: float, kl_coef, kl_estimator: str = "k3", agg_mode: str = "token_mean",
                norm_len: float | None = None, objective_BxT=None,
                objectives: tuple[str, ...] = ("ppo_clip",), dual_clip_c: float = 3.0,
                is_gamma: float = 1.0, kl_mode: str = "loss", full_kl_BxT=None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """pg_loss + the KL term to a frozen reference, the GRPO objective (eq. 3) with DAPO options.

  `objective_BxT`, `objectives`, `dual_clip_c`, `is_gamma` pass through to `pg_loss` (per-token
  surrogate choice). `kl_coef` is a scalar or an array broadcastable to [B, T] (e.g. a per-turn KL
  weight). The KL term (which divergence each combination follows: `kl_problem`):
    kl_mode="loss": + aggregate(kl_coef * k), k the per-token estimate (`kl_estimate` from
      ref_logp_BxT; for kl_estimator="full" the exact per-position KL `full_kl_BxT`, differentiable).
    kl_mode="reward": the advantage of token t becomes A_t - sum_{t' >= t} kl_coef * k1_{t'}
      (`kl_reward_to_go`, k1 from old_logp_BxT, the sampling policy). For "full", later positions
      enter the return (t' > t) and the own position stays in the loss, differentiated exactly.
  With `ref_logp_BxT=None` (and no `full_kl_BxT`) the KL term is skipped (no reference forward
  pass needed); this requires a Python `kl_coef == 0`.

  Metrics: those of `pg_loss`, plus pg_loss, kl_loss (the weighted KL loss term, 0 without a
  reference or for k1 in the reward) and, with a reference, kl (mean per-token estimate over valid
  tokens).
  """
  m_BxT = jnp.asarray(mask_BxT).astype(bool)
  if kl_mode not in KL_MODES:
    raise ValueError(f"Unknown kl_mode {kl_mode!r}; valid: {KL_MODES}.")
  full = kl_estimator == FULL_KL
  has_reference = (full_kl_BxT if full else ref_logp_BxT) is not None
  kl_BxT = None
  if not has_reference:
    if not (isinstance(kl_coef, (int, float)) and kl_coef == 0):
      raise ValueError(f"no reference ({'full_kl_BxT' if full else 'ref_logp_BxT'} is None) but "
                       f"kl_coef={kl_coef!r}; pass the reference's values or set kl_coef=0.")
  else:
    given = full_kl_BxT if full else ref_logp_BxT
    if jnp.shape(given) != m_BxT.shape:
      raise ValueError(f"{'full_kl_BxT' if full else 'ref_logp_BxT'} shape {tuple(jnp.shape(given))} must "
                       f"equal mask_BxT shape {m_BxT.shape}.")
    if full:
      kl_BxT = _masked(full_kl_BxT, m_BxT)
    else:
      ref_BxT = jax.lax.stop_gradient(_masked(ref_logp_BxT, m_BxT))
      kl_BxT = kl_estimate(_masked(logp_BxT, m_BxT), ref_BxT, kl_estimator)
    coef_BxT = jnp.broadcast_to(jnp.asarray(kl_coef, jnp.float32), m_BxT.shape)
    if kl_mode == "reward":
      problem = kl_problem(kl_estimator, kl_mode)
      if problem is not None:
        raise ValueError(problem)
      sampled_BxT = kl_BxT if full else kl_estimate(_masked(old_logp_BxT, m_BxT), ref_BxT, "k1")
      penalty_BxT = jax.lax.stop_gradient(coef_BxT * sampled_BxT)
      adv = _broadcast_adv(adv, m_BxT.shape) - kl_reward_to_go(penalty_BxT, m_BxT, inclusive=not full)
  pg, metrics = pg_loss(logp_BxT, old_logp_BxT, adv, mask_BxT, clip_low=clip_low,
                        clip_high=clip_high, agg_mode=agg_mode, norm_len=norm_len,
                        objective_BxT=objective_BxT, objectives=objectives, dual_clip_c=dual_clip_c,
                        is_gamma=is_gamma)
  kl_loss = jnp.zeros((), jnp.float32)
  if kl_BxT is not None:
    if kl_mode == "loss" or full:
      kl_loss = aggregate(coef_BxT * kl_BxT, m_BxT, agg_mode, norm_len)
    metrics["kl"] = _token_mean_metric(kl_BxT, m_BxT)
  metrics["pg_loss"] = jax.lax.stop_gradient(pg)
  metrics["kl_loss"] = jax.lax.stop_gradient(kl_loss)
  return pg + kl_loss, metrics
