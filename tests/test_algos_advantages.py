"""Advantage estimators vs hand-computed values and a NumPy re-implementation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from selfrl_jax.algos.advantages import ADVANTAGES, compute_advantages, zero_std_group_fraction

REWARDS_2x3 = np.array([[1.0, 0.0, 0.0], [3.0, 1.0, 2.0]], np.float32)
# Worked by hand: group means 1/3 and 2, population stds sqrt(2/9) and sqrt(2/3), batch mean 7/6.
EXPECTED_2x3 = {
    "grpo": [[2 / 3 / np.sqrt(2 / 9), -1 / 3 / np.sqrt(2 / 9), -1 / 3 / np.sqrt(2 / 9)],
             [1 / np.sqrt(2 / 3), -1 / np.sqrt(2 / 3), 0.0]],
    # Sample stds (ddof=1, verl/EasyR1's torch.std): sqrt(1/3) and 1.
    "grpo_sample_std": [[2 / 3 / np.sqrt(1 / 3), -1 / 3 / np.sqrt(1 / 3), -1 / 3 / np.sqrt(1 / 3)], [1.0, -1.0, 0.0]],
    "dr_grpo": [[2 / 3, -1 / 3, -1 / 3], [1.0, -1.0, 0.0]],
    "rloo": [[1.0, -0.5, -0.5], [1.5, -1.5, 0.0]],
    "reinforce": [[-1 / 6, -7 / 6, -7 / 6], [11 / 6, -1 / 6, 5 / 6]],
}


def numpy_advantages(name, r, eps=1e-6):
  r = np.asarray(r, np.float64)
  g = r.shape[1]
  mean = r.mean(axis=1, keepdims=True)
  if name == "grpo":
    return (r - mean) / (r.std(axis=1, ddof=0, keepdims=True) + eps)
  if name == "grpo_sample_std":
    return (r - mean) / (r.std(axis=1, ddof=1, keepdims=True) + eps)
  if name == "dr_grpo":
    return r - mean
  if name == "rloo":
    loo = (r.sum(axis=1, keepdims=True) - r) / (g - 1)
    return r - loo
  if name == "reinforce":
    return r - r.mean()
  raise KeyError(name)


def test_registry_keys():
  assert sorted(ADVANTAGES) == ["dr_grpo", "grpo", "grpo_sample_std", "reinforce", "rloo"]


@pytest.mark.parametrize("name", sorted(EXPECTED_2x3))
def test_hand_computed_2x3(name):
  adv = compute_advantages(name, REWARDS_2x3)
  # grpo's eps shifts the hand values by ~1e-6 relative.
  np.testing.assert_allclose(np.asarray(adv), EXPECTED_2x3[name], rtol=1e-5, atol=1e-6)
  assert adv.dtype == np.float32


@pytest.mark.parametrize("name", sorted(EXPECTED_2x3))
def test_random_vs_numpy(name):
  rng = np.random.default_rng(0)
  r = rng.normal(size=(4, 5)).astype(np.float32)
  r[1] = rng.integers(0, 2, size=5)  # a binary-reward group as in verifier rewards
  fn = jax.jit(compute_advantages, static_argnums=0)
  np.testing.assert_allclose(np.asarray(fn(name, r)), numpy_advantages(name, r), rtol=1e-5, atol=1e-5)


def test_rloo_sums_to_zero_and_vanishes_on_equal_rewards():
  r = np.random.default_rng(1).uniform(size=(6, 4)).astype(np.float32)
  r[2] = 0.7
  adv = np.asarray(compute_advantages("rloo", r))
  np.testing.assert_allclose(adv.sum(axis=1), 0.0, atol=1e-6)
  np.testing.assert_array_equal(adv[2], 0.0)
  # RLOO = G/(G-1) * (r - mean)
  np.testing.assert_allclose(adv, 4 / 3 * numpy_advantages("dr_grpo", r), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(EXPECTED_2x3))
def test_equal_rewards_give_exactly_zero(name):
  # Issue 14.1: the float32 mean of 8 x 10.1 is off by an ulp and the std is ~1 ulp, so grpo gave
  # +0.488 for every member (2/3 x 8: +0.056; 3.3 x 8: +0.19) while the group counted as flat.
  values = [10.1, 2 / 3, 3.3, 0.1, 1e-3, 1.0, 0.0, -7.7, 1e4, 123456.79]
  for g in (2, 3, 5, 8, 16, 64):
    r = np.repeat(np.asarray(values, np.float32)[:, None], g, axis=1)
    adv = np.asarray(jax.jit(compute_advantages, static_argnums=0)(name, r))
    assert not np.isnan(adv).any()
    if name == "reinforce":  # one baseline over the batch: flat only when the batch is
      np.testing.assert_array_equal(np.asarray(compute_advantages(name, r[:1])), 0.0)
    else:
      np.testing.assert_array_equal(adv, 0.0, err_msg=f"G={g}")
    assert float(zero_std_group_fraction(r)) == 1.0
  # Flat among the valid members, with garbage in the padding.
  r = np.array([[10.1, 10.1, np.nan, 10.1], [0.3, 0.3, 0.3, 5.0]], np.float32)
  valid = np.array([[1, 1, 0, 1], [1, 1, 1, 0]], bool)
  np.testing.assert_array_equal(np.asarray(compute_advantages(name, r[:1], valid_PxG=valid[:1])), 0.0)
  if name != "reinforce":
    np.testing.assert_array_equal(np.asarray(compute_advantages(name, r, valid_PxG=valid)), 0.0)


@pytest.mark.parametrize("name", sorted(EXPECTED_2x3))
def test_valid_mask_matches_unpadded(name):
  # Pad each group with one invalid rollout holding NaN: results on the valid part must equal the
  # unpadded 2x3 computation, and the padding gets exactly 0.
  r = np.concatenate([REWARDS_2x3, np.full((2, 1), np.nan, np.float32)], axis=1)
  valid = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], bool)
  adv = np.asarray(compute_advantages(name, r, valid_PxG=valid))
  np.testing.assert_allclose(adv[:, :3], EXPECTED_2x3[name], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(adv[:, 3], 0.0)


def test_rloo_group_with_one_valid_rollout_gets_zero():
  r = np.array([[1.0, 5.0, 0.0], [1.0, 0.0, 2.0]], np.float32)
  valid = np.array([[1, 0, 0], [1, 1, 0]], bool)
  adv = np.asarray(compute_advantages("rloo", r, valid_PxG=valid))
  np.testing.assert_allclose(adv, [[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]])


def test_zero_std_group_fraction():
  r = np.array([[1, 1, 1], [0, 1, 0], [2, 2, 2], [5, 5, 5]], np.float32)
  assert float(zero_std_group_fraction(r)) == pytest.approx(0.75)
  assert float(zero_std_group_fraction(REWARDS_2x3)) == 0.0
  # Masking out the differing rollout makes group 1 flat; a group with < 2 valid counts as flat.
  valid = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 0, 0]], bool)
  r2 = r.copy()
  r2[3] = [5, 6, 7]
  assert float(zero_std_group_fraction(r2, valid)) == pytest.approx(1.0)


def test_errors():
  with pytest.raises(ValueError, match="grpo"):
    compute_advantages("gpro", REWARDS_2x3)
  with pytest.raises(ValueError, match="group_size >= 2"):
    compute_advantages("rloo", np.ones((3, 1), np.float32))
  with pytest.raises(ValueError, match="2-D"):
    compute_advantages("grpo", np.ones(6, np.float32))
  with pytest.raises(ValueError, match="valid_PxG"):
    compute_advantages("grpo", REWARDS_2x3, valid_PxG=np.ones((2, 2), bool))
