"""reasoning-gym adapter: records mirror the library's entries; rewards are its own score_answer."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from selfrl_jax.data import reasoning_gym_tasks as rgt
from selfrl_jax.data.records import record_meta


def test_missing_package_gives_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # makes `import reasoning_gym` fail
  with pytest.raises(ImportError, match=r"pip install reasoning-gym==0\.1\.25"):
    rgt.reasoning_gym_source("chain_sum", size=2, seed=0, min_terms=2)


@pytest.fixture(name="rg")
def _rg():
  return pytest.importorskip("reasoning_gym", reason="optional package reasoning-gym==0.1.25 not installed")


def test_records_mirror_library_entries(rg):
  src = rgt.reasoning_gym_source("chain_sum", size=6, seed=11)
  ref = rg.create_dataset("chain_sum", size=6, seed=11)
  assert [(r["prompt"], r["answer"]) for r in src] == [(e["question"], e["answer"]) for e in ref]
  assert rgt.reasoning_gym_source("chain_sum", size=6, seed=11)[3] == src[3]
  assert record_meta(src[2])["metadata"]["source_dataset"] == "chain_sum"
  with pytest.raises(ValueError, match="could not create dataset 'no_such_task'"):
    rgt.reasoning_gym_source("no_such_task", size=2)


def test_reward_is_the_datasets_score_answer(rg):
  src = rgt.reasoning_gym_source("basic_arithmetic", size=8, seed=3)
  ref = rg.create_dataset("basic_arithmetic", size=8, seed=3)
  answers = [r["answer"] for r in src]
  completions = [f"  {a}\n" if i % 2 == 0 else f"{int(a) + 1}" for i, a in enumerate(answers)]
  rewards_B = rgt.reasoning_gym_reward(completions, list(src))
  want = [ref.score_answer(c.strip(), e) for c, e in zip(completions, ref)]
  assert rewards_B.dtype == np.float32
  np.testing.assert_allclose(rewards_B, want)
  np.testing.assert_allclose(rewards_B, [1.0, 0.0] * 4)
  # Raw library entries work too, as does a custom answer extractor.
  tagged = [f"<answer>{a}</answer>" for a in answers]
  extract = lambda t: t.split("<answer>")[-1].split("</answer>")[0]
  np.testing.assert_allclose(rgt.reasoning_gym_reward(tagged, list(ref), extract_answer=extract), 1.0)
  with pytest.raises(ValueError, match="2 completions but 8 entries"):
    rgt.reasoning_gym_reward(["1", "2"], list(src))


def test_reward_survives_a_fresh_process_state(rg):
  del rg
  # arc_agi compares parsed boards with tuples in metadata, which JSON turns into lists: the reward
  # must regenerate the original entry, not score against the JSON copy (which would give 0.05).
  src = rgt.reasoning_gym_source("arc_agi", size=2, seed=0)
  rgt._ENTRIES.clear()  # pylint: disable=protected-access  # as if loaded in another process
  rgt._dataset.cache_clear()  # pylint: disable=protected-access
  np.testing.assert_allclose(rgt.reasoning_gym_reward([r["answer"] for r in src], list(src)), 1.0)
