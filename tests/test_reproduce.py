"""The main job, shortened: the warm-started model gets clearly better at held-out arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.heavy   # a reproduction (~4.5 min on 2 cores): outside the default run, `python -m pytest -m heavy`
def test_grpo_improves_heldout_accuracy(tmp_path):
  cmd = [sys.executable, os.path.join(REPO, "experiments", "reproduce.py"), f"--workdir={tmp_path}", "--seeds=0",
         "--num_steps=100", "--config.train.progress=False"]
  subprocess.run(cmd, check=True, capture_output=True, timeout=900, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  results = json.loads((tmp_path / "results.json").read_text())
  before, after = results["before"][0], results["after"][0]
  assert 0.05 < before < 0.9, f"the warm start should be clearly imperfect, got {before}"
  assert after >= before + 0.1, f"held-out accuracy {before:.3f} -> {after:.3f}"
  history = results["runs"]["0"]["history"]["eval/accuracy"]
  assert len(history) == 5  # evaluated every 25 steps
  assert (tmp_path / "learning_curve.png").stat().st_size > 10_000
  rows = [json.loads(line) for line in open(tmp_path / "seed_0" / "metrics.jsonl") if "reward_mean" in line]
  rewards = [r["reward_mean"] for r in rows]
  assert sum(rewards[-20:]) / 20 > sum(rewards[:20]) / 20  # training reward rises too
