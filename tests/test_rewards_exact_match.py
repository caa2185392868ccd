"""Exact-match rewards: jitted token version vs hand-computed cases and a plain NumPy loop."""

from __future__ import annotations

import jax
import numpy as np

from selfrl_jax.rewards.exact_match import exact_match_reward, exact_match_text

STOPS = (2, 7)
_reward = jax.jit(exact_match_reward, static_argnames="stop_ids")


def _numpy_reference(resp, valid, target, tlen, stops):
  out = []
  for b in range(resp.shape[0]):
    answer = []
    for tok, ok in zip(resp[b], valid[b]):
      if not ok:
        continue
      if tok in stops:
        break
      answer.append(int(tok))
    out.append(float(answer == [int(t) for t in target[b, :tlen[b]]]))
  return np.array(out, np.float32)


def test_hand_cases():
  pad = 0
  resp = np.array([
      [5, 6, 2, 9, 9, 9],        # match, then stop; tokens after the stop ignored
      [5, 6, 9, 2, pad, pad],    # extra token before the stop
      [5, 6, pad, pad, pad, pad],  # match, no stop, padding masked
      [5, 2, pad, pad, pad, pad],  # too short
      [3, 5, 6, 7, pad, pad],    # first token masked out (e.g. left padding): answer is 5 6
      [2, 5, 6, pad, pad, pad],  # stop first: empty answer vs empty target
      [5, 7, 6, pad, pad, pad],  # stop id 7 mid-answer
      [4, 4, 4, 4, 4, 4],        # longer than the target buffer
  ], np.int32)
  valid = np.array([
      [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0],
      [0, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  target = np.array([[5, 6, 1], [5, 6, 1], [5, 6, 8], [5, 6, 1], [5, 6, 1], [9, 9, 9],
                     [5, 6, 1], [4, 4, 4]], np.int32)
  tlen = np.array([2, 2, 2, 2, 2, 0, 2, 3], np.int32)
  expected = np.array([1, 0, 1, 0, 1, 1, 0, 0], np.float32)
  got = np.asarray(_reward(resp, valid, target, tlen, stop_ids=STOPS))
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(_numpy_reference(resp, valid, target, tlen, STOPS), expected)


def test_random_against_numpy():
  rng = np.random.default_rng(0)
  b, n, a = 256, 6, 3
  target = rng.integers(3, 6, size=(b, a)).astype(np.int32)
  tlen = rng.integers(0, a + 1, size=b).astype(np.int32)
  resp = rng.integers(0, 8, size=(b, n)).astype(np.int32)
  # Plant the target (plus a stop) in half the rows so both outcomes are common.
  for i in range(0, b, 2):
    resp[i, :tlen[i]] = target[i, :tlen[i]]
    resp[i, tlen[i]] = STOPS[i % 2]
  valid = rng.random((b, n)) < 0.9
  valid[::4] = True
  got = np.asarray(_reward(resp, valid, target, tlen, stop_ids=STOPS))
  want = _numpy_reference(resp, valid, target, tlen, STOPS)
  np.testing.assert_array_equal(got, want)
  assert 0.1 < want.mean() < 0.9


def test_text():
  assert exact_match_text("  42\n", "42") == 1.0
  assert exact_match_text("42.0", "42") == 0.0
  assert exact_match_text(None, "42") == 0.0
