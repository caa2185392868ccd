"""RLAVR / CARE pure pieces against the spec's tests (rlavr.md §9.2) and brute-force references."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selfrl_jax.algos import rlavr_labels as L

# rlavr.md §2 table for n = 8 (rows x = 1..8, columns y = 0..4; None = impossible pair).
SPEC_TABLE_N8 = {
    1: (2.828, 4.276), 2: (2.828, 4.415, 4.619), 3: (2.828, 4.548, 4.812, 5.060),
    4: (2.828, 4.695, 5.024, 5.329, 5.657), 5: (2.828, 4.879, 5.284, 5.657), 6: (2.828, 5.145, 5.657),
    7: (2.828, 5.657), 8: (0.0,)}


def _np_grpo_pop(r):
  std = r.std()
  return np.zeros_like(r) if std < 1e-8 else (r - r.mean()) / std


def test_cag_table_n8_matches_the_spec_to_three_decimals():
  table = L.cag_table(8)
  for x, row in SPEC_TABLE_N8.items():
    for y, want in enumerate(row):
      assert round(float(table[x, y]), 3) == want, (x, y, float(table[x, y]))
    assert not table[x, len(row):].any()  # impossible pairs are 0


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_closed_form_equals_the_vector_form_for_every_valid_pair(n):
  table = L.cag_table(n)
  rs = np.random.RandomState(n)
  for x in range(1, n + 1):
    for y in range(0, min(x, n - x) + 1):
      # Majority (x responses) wrong, y responses right, disjoint; the rest other wrong answers.
      r_pseudo = np.zeros(n, np.float32)
      r_true = np.zeros(n, np.float32)
      r_pseudo[:x] = 1
      r_true[x:x + y] = 1
      perm = rs.permutation(n)  # permutation-invariant over responses
      got = float(L.cag(jnp.asarray(r_pseudo[perm])[None], jnp.asarray(r_true[perm])[None])[0])
      brute = float(np.linalg.norm(_np_grpo_pop(r_true) - _np_grpo_pop(r_pseudo)))
      np.testing.assert_allclose(got, brute, rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(table[x, y], brute, rtol=1e-5, atol=1e-5)
      if 0 < x < n and y == 0:
        np.testing.assert_allclose(got, math.sqrt(n), rtol=1e-5)
      if x + y == n and y > 0:
        np.testing.assert_allclose(got, 2 * math.sqrt(n), rtol=1e-5)
    if x < n:  # increasing in y for fixed x
      ys = table[x, :min(x, n - x) + 1]
      assert np.all(np.diff(ys) > 0)
  # Labels agree -> CAG 0.
  r = jnp.asarray([[1, 1, 0, 0, 1, 0, 0, 0][:n] if n >= 8 else [1] + [0] * (n - 1)], jnp.float32)
  assert float(L.cag(r, r)[0]) == 0.0


def test_grpo_adv_population_std_and_constant_groups():
  np.testing.assert_allclose(np.asarray(L.grpo_adv(jnp.asarray([[1.0, 1.0, 0.0, 0.0]]))), [[1, 1, -1, -1]])
  assert not np.asarray(L.grpo_adv(jnp.ones((2, 5)))).any()
  # Equal non-dyadic rewards: the float32 std is rounding noise above 1e-8 (issue 14.1).
  for v in (10.1, 2 / 3, 3.3):
    assert not np.asarray(L.grpo_adv(jnp.full((1, 8), v))).any()
    assert not np.asarray(L.grpo_adv(jnp.full((1, 8), v), "unbiased")).any()
  unbiased = np.asarray(L.grpo_adv(jnp.asarray([[1.0, 1.0, 0.0, 0.0]]), "unbiased"))
  np.testing.assert_allclose(unbiased, [[1, 1, -1, -1]] / np.std([1, 1, 0, 0], ddof=1) * 0.5, rtol=1e-6)
  with pytest.raises(ValueError, match="std_kind"):
    L.grpo_adv(jnp.ones((1, 2)), "sample")


def test_majority_vote_breaks_ties_to_the_earliest_answer():
  ans = jnp.asarray([[3, 5, 5, 3, 7, 0, 0, 0], [9, 9, 9, 1, 1, 2, 9, 1], [0] * 8])
  valid = jnp.asarray([[1, 1, 1, 1, 1, 0, 0, 0], [1] * 8, [0] * 8], bool)
  label, x, has = L.majority_vote(ans, valid)
  assert label.tolist() == [3, 9, L.NO_LABEL] and x.tolist() == [2, 4, 0] and has.tolist() == [True, True, False]
  np.testing.assert_allclose(np.asarray(L.cluster_size_fractions(ans, valid))[0], [2, 2, 1, 0, 0, 0, 0, 0] / np.float32(8))
  assert not np.asarray(L.binary_rewards(ans, valid, label))[2].any()  # no valid answer: every reward 0
  feasible = np.asarray(L.feasible_count_classes(ans, valid, label))
  assert np.flatnonzero(feasible[0]).tolist() == [0, 1, 2]  # clusters {5,5} and {7} outside the majority
  assert np.flatnonzero(feasible[1]).tolist() == [0, 1, 3]
  assert np.flatnonzero(feasible[2]).tolist() == [0]


def test_majority_vote_matches_a_python_reference_on_random_groups():
  rs = np.random.RandomState(0)
  ans = rs.randint(0, 4, (200, 8))
  valid = rs.rand(200, 8) > 0.3
  label, x, has = map(np.asarray, L.majority_vote(jnp.asarray(ans), jnp.asarray(valid)))
  for b in range(200):
    seen = {}
    for j in range(8):
      if valid[b, j]:
        seen.setdefault(ans[b, j], []).append(j)
    if not seen:
      assert not has[b] and label[b] == L.NO_LABEL
      continue
    best = sorted(seen.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))[0]
    assert (label[b], x[b]) == (best[0], len(best[1]))


def test_acquire_sizes_disjointness_warmup_and_no_ground_truth():
  rs = np.random.RandomState(1)
  p1, s = jnp.asarray(rs.rand(64)), jnp.asarray(rs.rand(64) * 5)
  q_warm, r_warm = L.acquire(p1, s, p=0.2, p2=0.25, step=jnp.int32(5), warmup=20)
  q, r = L.acquire(p1, s, p=0.2, p2=0.25, step=jnp.int32(21), warmup=20)
  assert int(q_warm.sum()) == int(q.sum()) == 13 and not r_warm.any() and int(r.sum()) == 16
  assert not (q & r).any()
  assert set(np.flatnonzero(np.asarray(r))) == set(np.argsort(-np.asarray(p1))[:16])
  rest = np.where(np.asarray(r), -np.inf, np.asarray(s))
  assert set(np.flatnonzero(np.asarray(q))) == set(np.argsort(-rest)[:13])
  # Leakage: the rule's signature has no ground-truth argument at all.
  import inspect
  assert not any("gt" in name or "label" in name for name in inspect.signature(L.acquire).parameters)
  with pytest.raises(ValueError, match="ceil"):
    L.acquire(p1, s, p=0.9, p2=0.25, step=0, warmup=0)
  # Budget accounting: S steps spend S * ceil(p B) labels; p = 0 spends none, p = 1 all.
  spent = sum(int(L.acquire(p1, s, p=0.2, p2=0.25, step=jnp.int32(t), warmup=20)[0].sum()) for t in range(30))
  assert spent == 30 * 13
  assert not L.acquire(p1, s, p=0.0, p2=0.0, step=0, warmup=0)[0].any()
  assert L.acquire(p1, s, p=1.0, p2=0.0, step=0, warmup=0)[0].all()


def test_mix_labels_interpolates_between_ttrl_and_full_gt():
  rs = np.random.RandomState(2)
  ans, valid = jnp.asarray(rs.randint(0, 3, (16, 8))), jnp.asarray(rs.rand(16, 8) > 0.2)
  gt = jnp.asarray(rs.randint(0, 3, 16))
  pseudo, _, _ = L.majority_vote(ans, valid)
  everything, nothing = jnp.ones(16, bool), jnp.zeros(16, bool)
  np.testing.assert_array_equal(L.binary_rewards(ans, valid, L.mix_labels(pseudo, gt, everything)),
                                L.binary_rewards(ans, valid, gt))
  np.testing.assert_array_equal(L.binary_rewards(ans, valid, L.mix_labels(pseudo, gt, nothing)),
                                L.binary_rewards(ans, valid, pseudo))


def test_adv_coeff_gated_and_use_pseudo():
  query = jnp.asarray([True, False, False, False])
  reliable = jnp.asarray([False, True, True, False])
  s = jnp.asarray([0.5, 2.83, 0.5, 4.0])
  np.testing.assert_allclose(np.asarray(L.adv_coeff(query, reliable, s, kappa=1.0)), [1, 1, 0.5, 0])
  np.testing.assert_array_equal(np.asarray(L.adv_coeff(query, reliable, s, 1.0, "use_pseudo")), [1, 1, 1, 1])
  np.testing.assert_array_equal(np.asarray(L.adv_coeff(query, reliable, s, 1.0, "drop")), [1, 0, 0, 0])
  with pytest.raises(ValueError, match="mode"):
    L.adv_coeff(query, reliable, s, 1.0, "soft")


def test_mean_token_prob_matches_numpy_per_prompt():
  """The avg_prob baseline's score: mean exp(logp) over every generated token of a prompt's group."""
  rs = np.random.RandomState(5)
  logp = -rs.rand(6, 5).astype(np.float32) * 3
  mask = rs.rand(6, 5) > 0.4
  mask[4:] = False  # prompt 2 (rows 4, 5) generated nothing
  got = np.asarray(L.mean_token_prob(jnp.asarray(logp), jnp.asarray(mask), group_size=2))
  want = [np.exp(logp[2 * i:2 * i + 2][mask[2 * i:2 * i + 2]]).mean() for i in range(2)] + [1.0]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_masked_cross_entropy_and_expected_cag():
  logits = jnp.asarray([[2.0, 1.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  feasible = jnp.asarray([[True, True, False, False], [True, False, True, True]])
  probs = np.exp(np.asarray(L.masked_log_softmax(logits, feasible)))
  assert (probs[~np.asarray(feasible)] == 0).all()
  np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-6)
  w = jnp.asarray([1.0, 2.0, 1.0, 1.0])
  loss = float(L.masked_ce(logits, jnp.asarray([1, 3]), feasible, w))
  want = -(2 * np.log(np.exp(1) / (np.exp(2) + np.exp(1))) + 1 * np.log(1 / 3)) / 3
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  with pytest.raises(ValueError, match="outside their feasible"):
    L.masked_ce(logits, jnp.asarray([2, 0]), feasible, w)
  table = jnp.asarray(L.cag_table(3))  # rows x, columns y
  s = L.expected_cag(logits, feasible, jnp.asarray([2, 1]), table)
  np.testing.assert_allclose(float(s[0]), probs[0, 0] * table[2, 0] + probs[0, 1] * table[2, 1], rtol=1e-6)
  g = jax.grad(lambda z: L.masked_ce(z, jnp.asarray([1, 3]), feasible, w))(logits)
  assert np.isfinite(np.asarray(g)).all() and (np.asarray(g)[~np.asarray(feasible)] == 0).all()


def test_class_balance_weights_spec_example_and_probe_targets():
  labels = jnp.asarray([0] * 10 + [1] * 40)
  np.testing.assert_allclose(np.asarray(L.class_balance_weights(labels, 3)), [4 / 3, 2 / 3, 0], rtol=1e-5)
  ans = jnp.asarray([[3, 3, 3, 5, 5, 7], [3, 3, 5, 5, 5, 1]])
  valid = jnp.ones((2, 6), bool)
  label, _, _ = L.majority_vote(ans, valid)
  z1, z2, resp = L.probe_targets(ans, valid, jnp.asarray([3, 3]), label)
  assert z1.tolist() == [1, 0] and z2.tolist() == [0, 2] and resp.sum(1).tolist() == [3, 2]


def test_released_gate_coefficient_is_zero_or_one_in_practice():
  """§9.2: with kappa = 1 and n = 8, every feasible class has CAG >= sqrt(8) unless the whole group
  agrees (x = n, CAG 0), so c_i on a reliable pseudo-labelled prompt is exactly 0 or 1."""
  rs = np.random.RandomState(11)
  n, b = 8, 512
  ans = jnp.asarray(rs.randint(0, 4, (b, n)))
  ans = ans.at[:64].set(2)  # some unanimous groups (x = n)
  valid = jnp.ones((b, n), bool)
  pseudo, x, _ = L.majority_vote(ans, valid)
  feasible = L.feasible_count_classes(ans, valid, pseudo)
  s = L.expected_cag(jnp.asarray(rs.randn(b, n + 1) * 3), feasible, x, L.cag_table(n))
  everyone = jnp.ones((b,), bool)
  c = np.asarray(L.adv_coeff(jnp.zeros((b,), bool), everyone, s, kappa=1.0))
  assert set(np.unique(c)) <= {0.0, 1.0}
  np.testing.assert_array_equal(c == 0.0, np.asarray(x) == n)
