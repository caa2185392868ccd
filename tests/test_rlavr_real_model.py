"""The paper-scale RLAVR config runs one real CARE step on SmolLM2-135M-Instruct (CPU, GSM8K prompts,
math-verify clustering on the host)."""

from __future__ import annotations

import math
import os

import pytest

from selfrl_jax.train.loop import train
from selfrl_jax.train.metrics import read_jsonl
from test_configs import CONFIG_DIR, load_config, one_real_gsm8k_step

# 3-4 min on 2 CPU cores (30-layer sampling and update programs), like every paper's real step:
# `python -m pytest -m heavy`.
pytestmark = [pytest.mark.real_model, pytest.mark.heavy]


def test_rlavr_math_config_one_real_step_on_smollm2_gsm8k(tmp_path, shared_data):
  del shared_data  # skips when ../shared/data is missing
  cfg = load_config(CONFIG_DIR / "rlavr" / "math.py", "care")
  with cfg.unlocked():
    one_real_gsm8k_step(cfg)               # same chat prompt, \boxed{} extraction and math-verify clustering
    cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size = 2, 2, 4
    cfg.rl.max_prompt_len, cfg.rl.max_new_tokens = 256, 16
    cfg.rl.num_epochs = 1                  # the config's 2 epochs double a CPU step; tested on tiny models
  summary = train(cfg, str(tmp_path))
  assert summary["compilations"] == 1
  row = next(r for r in read_jsonl(os.path.join(tmp_path, "metrics.jsonl")) if "loss" in r)
  for key in ("loss", "grad_norm", "entropy", "rlavr/answer_entropy", "probe/stage1_ce", "probe/stage2_ce"):
    assert math.isfinite(row[key]), (key, row[key])
  assert row["rlavr/labels_used"] == 1.0         # ceil(p * P) = ceil(0.2 * 2): the budget, counted
  assert row["rlavr/labels_spent"] == 1.0
  assert row["logp_gap"] < 1e-3                  # sampler and trainer agree on SmolLM2's log-probs
  assert row["generated_tokens"] > 0
  # 16 tokens reach no \boxed{} answer, so no pair needs math-verify here (pairs 0, no time-outs);
  # real comparisons, equivalences and time-outs in the pool are tested in test_answer_clusters.py.
  assert row["host/cluster/pairs"] == 0 and row["host/cluster/timeouts"] == 0
  assert 0.0 <= summary["final"]["eval/accuracy"] <= 1.0
