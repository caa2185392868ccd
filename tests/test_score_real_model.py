"""The paper-scale SCoRe config runs one real RL step on SmolLM2-135M-Instruct (CPU, GSM8K)."""

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


def test_score_math_config_one_real_step_on_smollm2_gsm8k(tmp_path, shared_data):
  del shared_data  # skips when ../shared/data is missing
  cfg = load_config(CONFIG_DIR / "score" / "math.py")
  with cfg.unlocked():
    cfg.model.source = "smollm2"
    one_real_gsm8k_step(cfg)                # same prompts, chat template, instruction and math reward path
    cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size = 1, 2, 2
    cfg.rl.max_prompt_len, cfg.rl.max_new_tokens = 384, 12
    cfg.score.stage1_steps = 1              # the step runs Stage I: beta2 KL on turn 1, reward on turn 2
  summary = train(cfg, str(tmp_path))
  assert summary["compilations"] == 1
  row = next(r for r in read_jsonl(os.path.join(tmp_path, "metrics.jsonl")) if "loss" in r)
  assert row["stage"] == 1 and math.isclose(row["kl_w1"], cfg.score.beta2, rel_tol=1e-6)
  for key in ("loss", "kl", "grad_norm", "entropy", "reward/r1", "reward/r2"):
    assert math.isfinite(row[key]), (key, row[key])
  # 12 tokens rarely finish a GSM8K answer, so r1 = r2 = 0 and, with the policy equal to the reference
  # at step 0, the gradient may be exactly 0; non-zero SCoRe gradients are tested on tiny models.
  assert 0.0 <= row["reward/r1"] <= 1.0 and 0.0 <= row["reward/r2"] <= 1.0
  assert row["logp_gap"] < 1e-3  # sampler and trainer agree on SmolLM2's log-probs
  assert row["generated_tokens"] > 0
  for key in ("eval/acc_t1", "eval/acc_t2", "eval/frac_changed"):
    assert 0.0 <= summary["final"][key] <= 1.0
