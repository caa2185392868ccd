"""RLAVR / CARE pure pieces (../shared/papers/rlavr.md §2, checklist §9.1): majority-vote
pseudo-labels, the Corrective Advantage Gap, pre-query acquisition, label mixing, probe targets.

Answers enter as integer codes per group (`ans_BxN`, with `valid_BxN` False where no answer could be
extracted): the host clusters answer strings by equivalence (string, canonical form or math-verify)
and gives equivalent answers the same code, so everything here is jittable.

    label_B, x_B, has_B = majority_vote(ans_BxN, valid_BxN)            # TTRL pseudo-label (§2 (1))
    r_BxN = binary_rewards(ans_BxN, valid_BxN, label_B)                 # §2 (2)
    cag_B = cag(r_pseudo_BxN, r_true_BxN)                               # oracle CAG, §2 (4)
    table_XxY = cag_table(n)                                            # closed form, §2 (5)
    query_B, reliable_B = acquire(p1_B, s_B, p=0.2, p2=0.25, step=step, warmup=20)   # §2 (7), no GT
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from selfrl_jax.algos.advantages import flat_groups

NO_LABEL = -1  # label code of a group without any valid answer (every reward is then 0)


def _clusters(ans_BxN: jax.Array, valid_BxN: jax.Array):
  """(size_BxN, is_rep_BxN): each response's cluster size, and whether it opens its cluster."""
  n = ans_BxN.shape[1]
  valid = valid_BxN.astype(bool)
  same_BxNxN = (ans_BxN[:, :, None] == ans_BxN[:, None, :]) & valid[:, :, None] & valid[:, None, :]
  size_BxN = same_BxNxN.sum(-1).astype(jnp.int32)
  first_BxN = jnp.argmax(same_BxNxN, axis=-1)
  is_rep_BxN = valid & (first_BxN == jnp.arange(n)[None, :])
  return size_BxN, is_rep_BxN


def majority_vote(ans_BxN: jax.Array, valid_BxN: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """TTRL majority vote: clusters sorted by (−size, first index); the top one is the pseudo-label.

  Returns:
    (label_B: the top cluster's code, NO_LABEL without valid answers; x_B: its size (int32);
     has_B: the group has a valid answer).
  """
  n = ans_BxN.shape[1]
  size_BxN, is_rep_BxN = _clusters(ans_BxN, valid_BxN)
  # Larger clusters first; among equal sizes the earlier first occurrence.
  key_BxN = jnp.where(is_rep_BxN, size_BxN * (n + 1) + (n - jnp.arange(n))[None, :], -1)
  rep_B = jnp.argmax(key_BxN, axis=1)
  has_B = jnp.any(valid_BxN.astype(bool), axis=1)
  label_B = jnp.where(has_B, jnp.take_along_axis(ans_BxN, rep_B[:, None], axis=1)[:, 0], NO_LABEL)
  x_B = jnp.where(has_B, jnp.take_along_axis(size_BxN, rep_B[:, None], axis=1)[:, 0], 0)
  return label_B.astype(ans_BxN.dtype), x_B.astype(jnp.int32), has_B


def cluster_size_fractions(ans_BxN: jax.Array, valid_BxN: jax.Array) -> jax.Array:
  """Cluster sizes / n, sorted descending, zero-padded to n (a CARE scalar feature, §2 (6))."""
  n = ans_BxN.shape[1]
  size_BxN, is_rep_BxN = _clusters(ans_BxN, valid_BxN)
  sizes_BxN = jnp.where(is_rep_BxN, size_BxN, 0)
  return -jnp.sort(-sizes_BxN, axis=1).astype(jnp.float32) / n


def feasible_count_classes(ans_BxN: jax.Array, valid_BxN: jax.Array, label_B: jax.Array) -> jax.Array:
  """bool [B, n+1]: class 0 plus the size of every non-majority cluster (stage-2 targets, §2 (6))."""
  n = ans_BxN.shape[1]
  size_BxN, is_rep_BxN = _clusters(ans_BxN, valid_BxN)
  other_BxN = is_rep_BxN & (ans_BxN != label_B[:, None])
  hits_BxC = jax.nn.one_hot(jnp.where(other_BxN, size_BxN, 0), n + 1, dtype=jnp.int32).sum(1) > 0
  return hits_BxC.at[:, 0].set(True)


def binary_rewards(ans_BxN: jax.Array, valid_BxN: jax.Array, label_B: jax.Array) -> jax.Array:
  """r_ij(ℓ) = 1[a_ij ≡ ℓ_i] (float32 [B, n]); missing answers score 0 (§2 (2))."""
  return (valid_BxN.astype(bool) & (ans_BxN == label_B[:, None])).astype(jnp.float32)


def grpo_adv(r_BxN: jax.Array, std_kind: str = "pop") -> jax.Array:
  """(r − mean) / std per group as the released CAG code computes it (§2 (3)): population std
  (`pop`) or unbiased (`unbiased`), and exactly 0 for a group whose std is below 1e-8 (no eps;
  `algos.advantages` adds eps instead, which would move CAG off its closed form)."""
  if std_kind not in ("pop", "unbiased"):
    raise ValueError(f"grpo_adv: std_kind must be 'pop' or 'unbiased', got {std_kind!r}.")
  r = jnp.asarray(r_BxN, jnp.float32)
  std_B1 = jnp.std(r, axis=1, keepdims=True, ddof=0 if std_kind == "pop" else 1)
  centred = r - r.mean(axis=1, keepdims=True)
  # Equal rewards are 0 exactly: their float32 std is rounding noise that can exceed 1e-8.
  zero_B1 = (std_B1 < 1e-8) | flat_groups(r)
  return jnp.where(zero_B1, 0.0, centred / jnp.where(zero_B1, 1.0, std_B1))


def cag(r_pseudo_BxN: jax.Array, r_true_BxN: jax.Array) -> jax.Array:
  """Corrective Advantage Gap ‖A(r(g)) − A(r(ŷ))‖₂ per group (oracle: needs the GT), §2 (4)."""
  diff = grpo_adv(r_true_BxN) - grpo_adv(r_pseudo_BxN)
  return jnp.sqrt(jnp.sum(diff * diff, axis=1))


def cag_table(n: int) -> np.ndarray:
  """CAG(n, x, y) in closed form (§2 (5)), float32 [n+1, n+1], rows x = majority size, columns
  y = GT-correct responses when the majority is wrong. Impossible pairs (x = 0, y > x, x + y > n)
  are 0 and must never be selected."""
  table = np.zeros((n + 1, n + 1), np.float64)
  for x in range(1, n + 1):
    for y in range(0, min(x, n - x) + 1):
      if x == n:
        table[x, y] = 0.0  # unanimous: the pseudo-label's advantage is already 0
      elif y == 0:
        table[x, y] = math.sqrt(n)
      else:
        table[x, y] = math.sqrt(2 * n * (1 + math.sqrt(x * y / ((n - x) * (n - y)))))
  return table.astype(np.float32)


def answer_entropy(ans_BxN: jax.Array, valid_BxN: jax.Array) -> jax.Array:
  """Entropy of each group's answer-cluster fractions (sizes / n; collapse indicator, §10)."""
  f = cluster_size_fractions(ans_BxN, valid_BxN)
  return -jnp.sum(jnp.where(f > 0, f * jnp.log(jnp.where(f > 0, f, 1.0)), 0.0), axis=1)


def top_k_mask(score_B: jax.Array, k: int) -> jax.Array:
  """bool [B]: True on the `k` (static) highest scores (ties to the lower index, as lax.top_k)."""
  mask = jnp.zeros(score_B.shape, bool)
  return mask.at[jax.lax.top_k(score_B.astype(jnp.float32), k)[1]].set(True) if k else mask


def masked_log_softmax(logits_BxC: jax.Array, feasible_BxC: jax.Array) -> jax.Array:
  """log softmax over the feasible classes only; infeasible classes get exactly 0 probability."""
  masked = jnp.where(feasible_BxC, logits_BxC.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  return jnp.where(feasible_BxC, jax.nn.log_softmax(masked, axis=-1), -jnp.inf)


def expected_cag(q_logits_BxC: jax.Array, feasible_BxC: jax.Array, x_B: jax.Array, table: jax.Array) -> jax.Array:
  """s_i = Σ_{y ∈ V_i} q_i(y) · CAG(n, x_i, y) with q the stage-2 probe's masked softmax (§2 (6))."""
  q_BxC = jnp.exp(masked_log_softmax(q_logits_BxC, feasible_BxC))
  return jnp.sum(q_BxC * jnp.asarray(table)[x_B], axis=-1)


def acquire(p1_B: jax.Array, s_B: jax.Array, *, p: float, p2: float, step: jax.Array, warmup: int
            ) -> tuple[jax.Array, jax.Array]:
  """CARE's pre-query rule (§2 (7)); it takes no ground truth by construction.

  reliable: the top ⌈p2·B⌉ prompts by p1 once `step > warmup` (never queried); query: the top ⌈p·B⌉
  by expected CAG s among the rest. Returns (query_B, reliable_B) as bool masks.
  """
  b = p1_B.shape[0]
  k, k2 = math.ceil(p * b), math.ceil(p2 * b)
  if not (0 <= p <= 1 and 0 <= p2 <= 1 and k + k2 <= b):
    raise ValueError(f"acquire: need 0 <= p, p2 <= 1 and ceil(p*B) + ceil(p2*B) <= B, got p={p}, p2={p2}, B={b}.")
  reliable_B = top_k_mask(p1_B, k2) & (jnp.asarray(step) > warmup)
  query_B = top_k_mask(jnp.where(reliable_B, -jnp.inf, s_B.astype(jnp.float32)), k)
  return query_B, reliable_B


def mean_token_prob(logp_BxS: jax.Array, mask_BxS: jax.Array, group_size: int) -> jax.Array:
  """Mean probability of the generated tokens of each prompt's n responses (f32 [B/n]): the
  `avg_prob_gt_zero_adv` baseline queries the lowest (spec §2 "Variants"). A prompt with no
  generated token scores 1 (nothing uncertain to label)."""
  mask = mask_BxS.astype(jnp.float32)
  p = (jnp.exp(logp_BxS) * mask).reshape(-1, group_size * logp_BxS.shape[1]).sum(1)
  n = mask.reshape(-1, group_size * mask_BxS.shape[1]).sum(1)
  return jnp.where(n > 0, p / jnp.maximum(n, 1.0), 1.0)


def mix_labels(pseudo_B: jax.Array, gt_B: jax.Array, query_B: jax.Array) -> jax.Array:
  """ℓ_i = g_i on queried prompts, ŷ_i elsewhere (§2 (7))."""
  return jnp.where(query_B, gt_B, pseudo_B)


ADV_COEFF_MODES = ("gated", "use_pseudo", "drop")


def adv_coeff(query_B: jax.Array, reliable_B: jax.Array, s_B: jax.Array, kappa: float, mode: str = "gated"
              ) -> jax.Array:
  """Per-prompt advantage coefficient c_i (§2 (8)).

  gated (released): 1 on queried prompts, clip(κ·s_i·1[i ∈ R], 0, 1) elsewhere — in practice 1 on
  reliable prompts and 0 on the rest. use_pseudo (paper-text reading): every prompt keeps its advantage.
  drop: only queried prompts keep theirs (the baselines' `*_mask_non_gt`, spec §6 `unlabeled_policy`).
  """
  if mode not in ADV_COEFF_MODES:
    raise ValueError(f"adv_coeff: mode must be one of {ADV_COEFF_MODES}, got {mode!r}.")
  if mode == "use_pseudo":
    return jnp.ones(query_B.shape, jnp.float32)
  if mode == "drop":
    return query_B.astype(jnp.float32)
  soft = jnp.clip(kappa * s_B * reliable_B.astype(jnp.float32), 0.0, 1.0)
  return jnp.where(query_B, 1.0, soft).astype(jnp.float32)


def probe_targets(ans_BxN: jax.Array, valid_BxN: jax.Array, gt_B: jax.Array, label_B: jax.Array
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(z1_B = 1[majority correct], z2_B = #correct responses outside the majority (0 if it is
  correct), resp_correct_BxN) for queried prompts (§2 (9))."""
  resp_correct = valid_BxN.astype(bool) & (ans_BxN == gt_B[:, None])
  z1 = (label_B == gt_B) & jnp.any(valid_BxN.astype(bool), axis=1)
  z2 = jnp.where(z1, 0, resp_correct.sum(1))
  return z1.astype(jnp.int32), z2.astype(jnp.int32), resp_correct.astype(jnp.int32)


def class_balance_weights(labels_M: jax.Array, num_classes: int, power: float = 0.5, wmin: float = 0.25,
                          wmax: float = 4.0) -> jax.Array:
  """w_c ∝ count_c^−power over present classes, renormalised to mean 1, clipped to [wmin, wmax];
  absent classes get 0 (§2 (9))."""
  counts_C = jnp.bincount(labels_M, length=num_classes).astype(jnp.float32)
  present_C = counts_C > 0
  raw_C = jnp.where(present_C, jnp.maximum(counts_C, 1.0) ** -power, 0.0)
  mean = raw_C.sum() / jnp.maximum(present_C.sum(), 1)
  return jnp.where(present_C, jnp.clip(raw_C / mean, wmin, wmax), 0.0)


def masked_ce(logits_MxC: jax.Array, target_M: jax.Array, feasible_MxC: jax.Array, weight_C: jax.Array,
              row_weight_M: jax.Array | None = None) -> jax.Array:
  """Class-weighted cross-entropy over masked logits (weighted mean, as torch's CrossEntropyLoss);
  `row_weight_M` (optional) scales rows, 0 leaving padding rows out.

  Raises (on concrete inputs):
    ValueError: a target outside its row's feasible set (the released code checks this too).
  """
  if not isinstance(target_M, jax.core.Tracer) and not isinstance(feasible_MxC, jax.core.Tracer):
    ok = np.asarray(feasible_MxC)[np.arange(len(np.asarray(target_M))), np.asarray(target_M)]
    if not ok.all():
      raise ValueError(f"masked_ce: targets {np.asarray(target_M)[~ok].tolist()} lie outside their feasible classes.")
  logp_MxC = jnp.where(feasible_MxC, masked_log_softmax(logits_MxC, feasible_MxC), 0.0)
  picked_M = jnp.take_along_axis(logp_MxC, target_M[:, None], axis=1)[:, 0]
  w_M = weight_C[target_M] if row_weight_M is None else weight_C[target_M] * row_weight_M
  return -jnp.sum(w_M * picked_M) / jnp.maximum(w_M.sum(), 1e-12)
