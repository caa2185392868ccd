"""Every experiment config under configs/ builds and runs one train step on a tiny stand-in model."""

from __future__ import annotations

import pathlib

import pytest

from experiments.arms import load_config_module
from selfrl_jax.train import builders
from selfrl_jax.train.loop import train

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(p for p in CONFIG_DIR.rglob("*.py") if p.name not in ("__init__.py", "common.py"))


def load_config(path: pathlib.Path, arg: str | None = None):
  return load_config_module(str(path)).get_config(arg)


def one_real_gsm8k_step(cfg):
  """A paper-scale config reduced to one real-model RL step on GSM8K prompts on CPU: float32, no
  evaluation during training, one held-out prompt at the end, a row of metrics every step. The
  caller sets the batch and buffer sizes its algorithm needs (inside `cfg.unlocked()`)."""
  cfg.model.param_dtype = cfg.model.compute_dtype = "float32"
  cfg.task.name = "gsm8k"
  cfg.train.num_steps, cfg.train.eval_every, cfg.train.log_every = 1, 0, 1
  cfg.train.eval_size, cfg.train.eval_batch_size = 1, 1
  cfg.train.progress = False
  return cfg


def shrink(cfg):
  """Same experiment, tiny sizes: a fresh tiny model and a few prompts, so one step compiles fast.

  A real-model config keeps its tokenizer (and so its prompts, chat template and host reward) under
  a tiny random decoder. MATH train is not shipped, so the MATH config trains on MATH-500 here.
  """
  with cfg.unlocked():
    if cfg.model.source != "tiny":
      cfg.model.tokenizer = cfg.model.source
      cfg.model.param_dtype = cfg.model.compute_dtype = "float32"
      cfg.rl.max_new_tokens = min(cfg.rl.max_new_tokens, 16)
      cfg.rl.max_prompt_len = min(cfg.rl.max_prompt_len, 512)   # the buffers, not the programs, grow with it
    if cfg.task.name == "math" and not cfg.task.math_train_dir:
      cfg.task.name = "math500"
    cfg.model.source = "tiny"
    cfg.model.d_model, cfg.model.n_layers, cfg.model.d_ff = 32, 1, 64
    cfg.rl.prompts_per_step, cfg.rl.group_size = 2, 2
    cfg.rl.micro_batch_size = 2
    cfg.rl.num_minibatches = 2 if cfg.rl.num_minibatches > 1 else 1
    cfg.sft.steps = min(cfg.sft.steps, 2)
    cfg.train.num_steps, cfg.train.eval_size, cfg.train.eval_batch_size, cfg.train.eval_every = 1, 8, 8, 0
    cfg.train.progress = False
    if "score" in cfg:  # the section exists only for rl.algorithm = "score" (get_base_config("score"))
      cfg.score.stage1_steps = min(cfg.score.stage1_steps, 1)
    if "ssrl_if" in cfg:  # a few ladders and classifier steps in the preparation stage
      cfg.ssrl_if.rm_ladders, cfg.ssrl_if.rm_steps, cfg.ssrl_if.rm_batch_size = 10, 2, 4
      cfg.ssrl_if.rm_width = min(cfg.ssrl_if.rm_width, 64)
      cfg.task.train_size, cfg.task.valid_size, cfg.task.test_size = 64, 8, 8   # if_ladder rows take ~9 ms each
    if "self_guide" in cfg:  # short episodes
      cfg.self_guide.max_steps = 3
      if cfg.task.name in ("twx", "scienceworld"):   # rendering a game's prompt runs it in Java: a few games only
        cfg.task.train_size, cfg.task.valid_size, cfg.task.test_size = 16, 8, 8
        cfg.train.eval_size = cfg.train.eval_batch_size = 2   # each evaluated row is a game process
  return cfg


def test_configs_exist():
  assert CONFIG_FILES, CONFIG_DIR


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_builds_and_runs_one_step(path, tmp_path):
  module = load_config_module(str(path))
  cfg = module.get_config(None)
  builders.validate_config(cfg)  # the full-size config is consistent as written
  # A config that only resizes another (SIZE_VARIANT_OF) shrinks to that config's step.
  variant_of = getattr(module, "SIZE_VARIANT_OF", None)
  if variant_of is not None:
    assert (path.parent / variant_of).exists(), variant_of
    return  # its one shrunk step is the other config's
  summary = train(shrink(cfg), str(tmp_path))
  # Fused: one program; split: one per run of device phases (rollout, then update), none recompiled.
  assert summary["compilations"] == (1 if cfg.rl.mode == "fused" else 2)
  headline = "eval/success" if cfg.rl.algorithm == "self_guide" else "eval/accuracy"   # agents: task success
  assert 0.0 <= summary["final"][headline] <= 1.0
  if cfg.rl.algorithm == "self_guide":   # calibration needs a ground truth of progress: the grid's, not a game's
    assert ("eval/calibration" in summary["final"]) == cfg.self_guide.env.startswith("grid"), summary["final"]
