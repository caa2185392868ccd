"""Builds every run component from an ml_collections config (the one place configs are read).

The CLI (`experiments/train.py`), `experiments/reproduce.py`, the notebooks and the tests all go
through these functions, so a config means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import ml_collections
import numpy as np

from selfrl_jax.algos.advantages import ADVANTAGES
from selfrl_jax.algos.grpo import GRPO
from selfrl_jax.algos.losses import AGGREGATIONS, KL_ESTIMATORS
from selfrl_jax.data.builders import load_task_split
from selfrl_jax.data.tasks import make_task
from selfrl_jax.models.config import ModelConfig
from selfrl_jax.models.decoder import Decoder, init_model
from selfrl_jax.models.loading import load_model
from selfrl_jax.models.tokenizers import CharTokenizer, Tokenizer
from selfrl_jax.rewards.registry import get_reward_fn
from selfrl_jax.sampling.sampler import SamplingParams
from selfrl_jax.train.step import UpdateSettings

ALGORITHMS = ("grpo",)


class ConfigError(ValueError):
  """A config value is invalid or inconsistent; raised before anything compiles."""


def _check(condition: bool, field: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"config.{field}: {message}")


def validate_config(cfg: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Checks values and cross-field consistency, naming the offending field."""
  rl = cfg.rl
  num_devices = num_devices or jax.device_count()
  _check(rl.algorithm in ALGORITHMS, "rl.algorithm", f"{rl.algorithm!r} is not one of {ALGORITHMS}")
  _check(rl.advantage in ADVANTAGES, "rl.advantage", f"{rl.advantage!r} is not one of {sorted(ADVANTAGES)}")
  _check(rl.loss_agg in AGGREGATIONS, "rl.loss_agg", f"{rl.loss_agg!r} is not one of {sorted(AGGREGATIONS)}")
  _check(rl.kl_estimator in KL_ESTIMATORS, "rl.kl_estimator",
         f"{rl.kl_estimator!r} is not one of {sorted(KL_ESTIMATORS)}")
  _check(rl.mode in ("fused", "split"), "rl.mode", f"{rl.mode!r} must be 'fused' or 'split'")
  for field in ("prompts_per_step", "group_size", "max_prompt_len", "max_new_tokens", "num_epochs",
                "num_minibatches", "micro_batch_size"):
    _check(rl[field] >= 1, f"rl.{field}", f"must be >= 1, got {rl[field]}")
  _check(rl.advantage != "rloo" or rl.group_size >= 2, "rl.group_size", "rloo needs group_size >= 2")
  rollouts = rl.prompts_per_step * rl.group_size
  _check(rollouts % rl.num_minibatches == 0, "rl.num_minibatches",
         f"rollouts = prompts_per_step * group_size = {rollouts} is not divisible by num_minibatches={rl.num_minibatches}")
  minibatch = rollouts // rl.num_minibatches
  _check(minibatch % rl.micro_batch_size == 0, "rl.micro_batch_size",
         f"minibatch size {minibatch} (rollouts / num_minibatches) is not divisible by micro_batch_size={rl.micro_batch_size}")
  _check(rl.prompts_per_step % num_devices == 0, "rl.prompts_per_step",
         f"{rl.prompts_per_step} prompts per step cannot be split evenly over {num_devices} devices")
  _check(cfg.train.eval_batch_size % num_devices == 0, "train.eval_batch_size",
         f"{cfg.train.eval_batch_size} cannot be split evenly over {num_devices} devices")
  _check(0 <= rl.clip_low < 1 and rl.clip_high >= 0, "rl.clip_low", "need 0 <= clip_low < 1 and clip_high >= 0")
  _check(rl.kl_coef >= 0, "rl.kl_coef", f"must be >= 0, got {rl.kl_coef}")
  _check(rl.temperature > 0, "rl.temperature", "training rollouts need temperature > 0 (log-probs use logits/T)")
  _check(rl.max_answer_len >= 2, "rl.max_answer_len", "needs room for at least one answer token and EOS")
  _check(cfg.train.num_steps >= 1, "train.num_steps", f"must be >= 1, got {cfg.train.num_steps}")
  _check(cfg.optim.learning_rate > 0, "optim.learning_rate", "must be > 0")
  _check(cfg.task.valid_size % cfg.train.eval_batch_size == 0, "task.valid_size",
         f"{cfg.task.valid_size} is not a multiple of train.eval_batch_size={cfg.train.eval_batch_size}")
  _check(cfg.train.eval_size % cfg.train.eval_batch_size == 0, "train.eval_size",
         f"{cfg.train.eval_size} is not a multiple of eval_batch_size={cfg.train.eval_batch_size}")


def build_model(cfg: ml_collections.ConfigDict) -> tuple[Decoder, Tokenizer]:
  """A fresh tiny model with the character tokenizer, or a checkpoint named by `model.source`."""
  m = cfg.model
  if m.source != "tiny":
    return load_model(m.source, param_dtype=m.param_dtype, compute_dtype=m.compute_dtype)
  tok = CharTokenizer()
  model_cfg = ModelConfig(family=m.family, vocab_size=tok.vocab_size, d_model=m.d_model, n_layers=m.n_layers,
                          n_heads=m.n_heads, n_kv_heads=m.n_kv_heads, head_dim=m.d_model // m.n_heads,
                          d_ff=m.d_ff, param_dtype=m.param_dtype, compute_dtype=m.compute_dtype,
                          tie_embeddings=m.tie_embeddings)
  return init_model(model_cfg, seed=cfg.seed), tok


def build_task(cfg: ml_collections.ConfigDict):
  t = cfg.task
  params = dict(t.params.to_dict()) if "params" in t else {}
  params["splits"] = {"train": t.train_size, "valid": t.valid_size, "test": t.test_size}
  return make_task(t.name, **params)


def build_sources(cfg: ml_collections.ConfigDict):
  """(train, valid, test) records of the configured task, prepared as tfds array_record files.

  The three splits hold disjoint problems: train feeds SFT and RL, valid decides when the SFT warm
  start is good enough, test is only ever evaluated.
  """
  task = build_task(cfg)
  data_dir = cfg.task.data_dir or None
  return tuple(load_task_split(task, split, data_dir) for split in ("train", "valid", "test"))


def train_sampling(cfg, tok: Tokenizer) -> SamplingParams:
  rl = cfg.rl
  return SamplingParams(max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, top_k=rl.top_k,
                        top_p=rl.top_p, stop_ids=tuple(tok.eos_ids), pad_id=tok.pad_id)


def eval_sampling(cfg, tok: Tokenizer) -> SamplingParams:
  """Greedy decoding for evaluation (the papers' default)."""
  return dataclasses.replace(train_sampling(cfg, tok), temperature=0.0, top_k=0, top_p=1.0)


def build_algorithm(cfg: ml_collections.ConfigDict, tok: Tokenizer):
  rl = cfg.rl
  reward_fn = get_reward_fn(rl.reward, stop_ids=tuple(tok.eos_ids))
  return GRPO(sampling=train_sampling(cfg, tok), group_size=rl.group_size, advantage=rl.advantage,
              kl_coef=rl.kl_coef, reward_fn=reward_fn)


def build_update_settings(cfg: ml_collections.ConfigDict) -> UpdateSettings:
  rl = cfg.rl
  return UpdateSettings(
      rollouts=rl.prompts_per_step * rl.group_size, group_size=rl.group_size, temperature=rl.temperature,
      clip_low=rl.clip_low, clip_high=rl.clip_high, use_reference=rl.kl_coef > 0, kl_estimator=rl.kl_estimator,
      loss_agg=rl.loss_agg, norm_len=rl.max_new_tokens, num_epochs=rl.num_epochs,
      num_minibatches=rl.num_minibatches, micro_batch_size=rl.micro_batch_size,
      logprob_chunk=rl.logprob_chunk or None)


def corrupt_ids(tok: Tokenizer) -> np.ndarray:
  """Token ids SFT noise draws from: the digits (the answers of the arithmetic tasks)."""
  return np.asarray(sorted({i for d in "0123456789" for i in tok.encode(d)}), np.int32)


def config_json(cfg: ml_collections.ConfigDict) -> dict:
  return json.loads(cfg.to_json_best_effort())
