"""Builds every run component from an ml_collections config (the one place configs are read).

The CLI (`experiments/train.py`), `experiments/reproduce.py`, the notebooks and the tests all go
through these functions, so a config means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from selfrl_jax.algos.losses import AGGREGATIONS, FULL_KL, KL_ESTIMATORS, KL_MODES
from selfrl_jax.algos.registry import get_algorithm_spec
from selfrl_jax.data import benchmarks
from selfrl_jax.data.builders import load_task_split
from selfrl_jax.data.pipeline import make_prompt_iterator
from selfrl_jax.data.records import normalize_record
from selfrl_jax.data.tasks import TASKS, make_task
from selfrl_jax.models.config import ModelConfig
from selfrl_jax.models.decoder import REMAT_POLICIES, Decoder, init_model
from selfrl_jax.models.loading import load_model, load_tokenizer, resolve_checkpoint
from selfrl_jax.models.tokenizers import CharTokenizer, Tokenizer
from selfrl_jax.rewards.host import CodeTestReward, MathAnswerReward
from selfrl_jax.rewards.registry import REWARDS, RewardFn, get_reward_fn, host_reward_callback
from selfrl_jax.sampling.sampler import SamplingParams
from selfrl_jax.train.step import MODES, UpdateSettings

HOST_REWARDS = {"math": MathAnswerReward, "code": CodeTestReward}
SHARED_SECTIONS = ("seed", "model", "task", "rl", "optim", "sft", "train", "mesh")
# Real-data tasks: name -> (train loader, test loader); the valid split is the test split (it only
# serves SFT early stopping, which real models do not use).
BENCHMARK_TASKS = {
    "gsm8k": (lambda c: benchmarks.load_gsm8k("train"), lambda c: benchmarks.load_gsm8k("test")),
    "math": (lambda c: benchmarks.load_math_dir(c.task.math_train_dir), lambda c: benchmarks.load_math500()),
    "math500": (lambda c: benchmarks.load_math500(), lambda c: benchmarks.load_math500()),  # smoke runs only
    "mbpp": (lambda c: benchmarks.load_mbpp("train"), lambda c: benchmarks.load_mbpp("test")),
    "mbpp_humaneval": (lambda c: benchmarks.load_mbpp("train"), lambda c: benchmarks.load_humaneval()),
}


log = logging.getLogger(__name__)
TRUNCATED_REWARDS = ("keep", "zero")


class ConfigError(ValueError):
  """A config value is invalid or inconsistent; raised before anything compiles."""


def _check(condition: bool, field: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"config.{field}: {message}")


def validate_config(cfg: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Checks values and cross-field consistency, naming the offending field."""
  rl = cfg.rl
  num_devices = num_devices or jax.device_count()
  spec = _algorithm_spec(cfg)
  _validate_algorithm_sections(cfg, spec)
  _check(rl.kl_mode in KL_MODES, "rl.kl_mode", f"{rl.kl_mode!r} is not one of {KL_MODES}")
  if spec.validate is not None:  # first: the algorithm names the root cause (e.g. rloo needs group_size >= 2)
    spec.validate(cfg, _check)
  _check(rl.loss_agg in AGGREGATIONS, "rl.loss_agg", f"{rl.loss_agg!r} is not one of {sorted(AGGREGATIONS)}")
  _check(rl.kl_estimator in KL_ESTIMATORS or rl.kl_estimator == FULL_KL, "rl.kl_estimator",
         f"{rl.kl_estimator!r} is not one of {sorted(KL_ESTIMATORS) + [FULL_KL]}")
  _check(rl.mode in MODES, "rl.mode", f"{rl.mode!r} must be one of {MODES}")
  for field in ("prompts_per_step", "group_size", "max_prompt_len", "max_new_tokens", "num_epochs",
                "num_minibatches", "micro_batch_size"):
    _check(rl[field] >= 1, f"rl.{field}", f"must be >= 1, got {rl[field]}")
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
  _check(rl.temperature > 0, "rl.temperature", "training rollouts need temperature > 0 (log-probs use logits/T)")
  _check(rl.max_answer_len >= 2, "rl.max_answer_len", "needs room for at least one answer token and EOS")
  _check(cfg.train.num_steps >= 1, "train.num_steps", f"must be >= 1, got {cfg.train.num_steps}")
  _check(cfg.optim.learning_rate > 0, "optim.learning_rate", "must be > 0")
  # Weights stored in bfloat16 (8 significant bits) round an Adam step of about lr away unless
  # lr > |w| * 2^-8: at lr 1e-6 nothing above |w| = 0.0003 ever moves. There is no float32 master copy.
  _check(cfg.model.param_dtype != "bfloat16" or cfg.optim.learning_rate >= 1e-3, "model.param_dtype",
         f"'bfloat16' weights cannot take updates of optim.learning_rate={cfg.optim.learning_rate:g}: each one is below "
         "half a bfloat16 step for any weight larger than lr * 2^8, so it rounds to nothing. Keep param_dtype='float32' "
         "and set compute_dtype='bfloat16' for bfloat16 matmuls")
  remat_policy = cfg.model.get("remat_policy", Decoder.remat_policy)
  _check(remat_policy in REMAT_POLICIES, "model.remat_policy", f"{remat_policy!r} is not one of {sorted(REMAT_POLICIES)}")
  if remat_policy != Decoder.remat_policy and not cfg.model.get("remat", False):
    log.warning("config.model.remat_policy: %r has no effect while model.remat is False.", remat_policy)
  _check(cfg.task.valid_size % cfg.train.eval_batch_size == 0, "task.valid_size",
         f"{cfg.task.valid_size} is not a multiple of train.eval_batch_size={cfg.train.eval_batch_size}")
  _check(cfg.train.eval_size % cfg.train.eval_batch_size == 0, "train.eval_size",
         f"{cfg.train.eval_size} is not a multiple of eval_batch_size={cfg.train.eval_batch_size}")
  _check(cfg.task.name in TASKS or cfg.task.name in BENCHMARK_TASKS, "task.name",
         f"{cfg.task.name!r} is neither a synthetic task {sorted(TASKS)} nor a benchmark {sorted(BENCHMARK_TASKS)}")
  _check(rl.reward in REWARDS or rl.reward in HOST_REWARDS, "rl.reward",
         f"{rl.reward!r} is not one of {sorted(REWARDS) + sorted(HOST_REWARDS)}")
  _check(rl.truncated_reward in TRUNCATED_REWARDS, "rl.truncated_reward",
         f"{rl.truncated_reward!r} is not one of {TRUNCATED_REWARDS}")
  _check(rl.reward not in HOST_REWARDS or cfg.task.name in BENCHMARK_TASKS, "rl.reward",
         f"host reward {rl.reward!r} needs a benchmark task ({sorted(BENCHMARK_TASKS)})")
  sft_overrides = cfg.sft.task_params.to_dict()
  if sft_overrides:
    _check(cfg.task.name in TASKS, "sft.task_params", f"overrides synthetic task params; {cfg.task.name!r} is a benchmark")
    _check(not {"seed", "splits"} & set(sft_overrides), "sft.task_params",
           "may not override seed or splits: the split a problem belongs to must stay the RL task's")
    try:
      build_task(cfg, sft_overrides)
    except ValueError as e:
      raise ConfigError(f"config.sft.task_params: {e}") from None
  demos = ("task", *spec.sft_demos)
  _check(cfg.sft.demos in demos, "sft.demos", f"{cfg.sft.demos!r} is not one of {demos} (rl.algorithm={rl.algorithm!r})")


def _algorithm_spec(cfg: ml_collections.ConfigDict):
  try:
    return get_algorithm_spec(cfg.rl.algorithm)
  except KeyError as e:
    raise ConfigError(f"config.rl.algorithm: {e.args[0]}") from None


def _validate_algorithm_sections(cfg: ml_collections.ConfigDict, spec) -> None:
  """The algorithm's own section is there, no other algorithm's is, and no knob it ignores is set."""
  name = spec.name
  if spec.default_config is not None:
    _check(name in cfg, name, f"rl.algorithm={name!r} reads its knobs from config.{name}, which is missing: start "
           f"the config from configs.common.get_base_config({name!r})")
  for section in cfg.keys():
    _check(section in SHARED_SECTIONS or (section == name and spec.default_config is not None), section,
           f"is not a shared section {SHARED_SECTIONS} nor the section of rl.algorithm={name!r}; it would be ignored")
  if spec.default_config is not None and name in cfg:
    # A knob the algorithm does not define (a typo, or one renamed since the file was written)
    # would be silently ignored when set in a config file before lock().
    known = set(spec.default_config().keys())
    for field in cfg[name].keys():
      _check(field in known, f"{name}.{field}",
             f"is not a knob of rl.algorithm={name!r}; known: {sorted(known)}"
             + (f". Renamed: {spec.renamed_knobs[field]}" if field in spec.renamed_knobs else ""))
  for knob, (neutral, instead) in spec.replaces.items():
    section, field = knob.split(".")
    _check(cfg[section][field] == neutral, knob,
           f"is ignored by rl.algorithm={name!r}: set {instead} instead, and leave {knob} at {neutral!r}")


def build_model(cfg: ml_collections.ConfigDict) -> tuple[Decoder, Tokenizer]:
  """A fresh tiny model (character tokenizer, or `model.tokenizer`'s vocabulary), or a checkpoint."""
  m = cfg.model
  if m.source != "tiny":
    model, tok = load_model(m.source, param_dtype=m.param_dtype, compute_dtype=m.compute_dtype)
  else:
    tok = CharTokenizer() if m.tokenizer == "char" else load_tokenizer(m.tokenizer)
    model_cfg = ModelConfig(family=m.family, vocab_size=tok.vocab_size, d_model=m.d_model, n_layers=m.n_layers,
                            n_heads=m.n_heads, n_kv_heads=m.n_kv_heads, head_dim=m.d_model // m.n_heads,
                            d_ff=m.d_ff, param_dtype=m.param_dtype, compute_dtype=m.compute_dtype,
                            tie_embeddings=m.tie_embeddings)
    model = init_model(model_cfg, seed=cfg.seed if cfg.sft.seed < 0 else cfg.sft.seed)
  apply_remat(model, m)
  return model, tok


def apply_remat(model: Decoder, m: ml_collections.ConfigDict) -> None:
  """Sets `model.remat` / `model.remat_policy` (static attributes of the Decoder) on a built model."""
  model.remat_blocks = bool(m.get("remat", False))
  model.remat_policy = m.get("remat_policy", Decoder.remat_policy)


def base_weights_fingerprint(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """What identifies the weights a run starts from, for cache keys: the tiny init (architecture and
  seed are in the config) or the checkpoint's files by path, size and modification time."""
  if cfg.model.source == "tiny":
    return {"source": "tiny"}
  path = os.path.abspath(resolve_checkpoint(cfg.model.source))
  files = [os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
  return {"source": path, "files": [(os.path.basename(f), os.stat(f).st_size, os.stat(f).st_mtime_ns)
                                    for f in files if os.path.isfile(f)]}


def build_task(cfg: ml_collections.ConfigDict, overrides: dict | None = None):
  """The synthetic task of `cfg.task`, with `overrides` replacing some of `task.params`."""
  t = cfg.task
  params = dict(t.params.to_dict()) if "params" in t else {}
  params.update(overrides or {})
  params["splits"] = {"train": t.train_size, "valid": t.valid_size, "test": t.test_size}
  return make_task(t.name, **params)


def build_sources(cfg: ml_collections.ConfigDict):
  """(train, valid, test) records of the configured task.

  Synthetic tasks are prepared as tfds array_record files with three disjoint splits: train feeds
  SFT and RL, valid decides when the SFT warm start is good enough, test is only ever evaluated.
  Benchmarks read ../shared/data (see BENCHMARK_TASKS).
  """
  if cfg.task.name in BENCHMARK_TASKS:
    train_fn, test_fn = BENCHMARK_TASKS[cfg.task.name]
    test = test_fn(cfg)
    return train_fn(cfg), test, test
  task = build_task(cfg)
  data_dir = cfg.task.data_dir or None
  return tuple(load_task_split(task, split, data_dir) for split in ("train", "valid", "test"))


def build_sft_source(cfg: ml_collections.ConfigDict, train_source):
  """The warm-start demonstrations' records: the RL train split, or, with `sft.task_params`, the train
  split of the same task with those params overridden (spec designs that warm-start on an easier
  distribution than the one RL is run on, e.g. SFT on 1-3-digit sums for a 3-digit RL set). A problem's
  split is a hash of the problem under the shared seed and split sizes, so no demonstration is ever a
  problem of the RL valid or test split."""
  overrides = cfg.sft.task_params.to_dict()
  if not overrides:
    return train_source
  return load_task_split(build_task(cfg, overrides), "train", cfg.task.data_dir or None)


def prompt_batches(cfg, source, tok: Tokenizer, *, batch_size: int, **kwargs):
  """`make_prompt_iterator` with the config's buffer sizes and chat settings."""
  return make_prompt_iterator(source, tok, batch_size=batch_size, max_prompt_len=cfg.rl.max_prompt_len,
                              max_answer_len=cfg.rl.max_answer_len, chat=cfg.task.chat,
                              system_prompt=cfg.task.system_prompt or None, **kwargs)


def train_sampling(cfg, tok: Tokenizer) -> SamplingParams:
  rl = cfg.rl
  return SamplingParams(max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, top_k=rl.top_k,
                        top_p=rl.top_p, stop_ids=tuple(tok.eos_ids), pad_id=tok.pad_id)


def eval_sampling(cfg, tok: Tokenizer) -> SamplingParams:
  """Greedy decoding for evaluation (the papers' default)."""
  return dataclasses.replace(train_sampling(cfg, tok), temperature=0.0, top_k=0, top_p=1.0)


def build_reward(cfg: ml_collections.ConfigDict, tok: Tokenizer, records) -> RewardFn:
  """The configured reward; host verifiers look examples up in `records` (the split being scored).

  With `rl.truncated_reward="zero"` a response without a stop token (`rollout.stopped_B` False:
  it hit max_new_tokens) scores 0 whatever it contains, so truncated answers are never reinforced.
  """
  if cfg.rl.reward in HOST_REWARDS:
    reward_fn = host_reward_callback(HOST_REWARDS[cfg.rl.reward](tok, records))
  else:
    reward_fn = get_reward_fn(cfg.rl.reward, stop_ids=tuple(tok.eos_ids))
  if cfg.rl.truncated_reward == "keep":
    return reward_fn
  return lambda rollout, batch: jnp.where(rollout.stopped_B, reward_fn(rollout, batch), 0.0)


def check_answers_fit(cfg: ml_collections.ConfigDict, tok: Tokenizer, source, sample: int = 512) -> None:
  """Refuses a response buffer no reference answer fits in, before anything compiles.

  Looks at the first `sample` training records: an answer needs len(tokens) + 1 (the stop token)
  slots. With a token-level reward (`exact_match`) every answer must fit; with a verifier that
  reads the answer out of free text (math, code) a shorter reference may exist, so only "none
  fits" is an error and "some do not fit" a warning.

  Raises:
    ConfigError: naming rl.max_new_tokens and the lengths that would fit.
  """
  n = min(sample, len(source))
  lengths = np.array([len(tok.encode(normalize_record(source[i])["answer"])) + 1 for i in range(n)])
  if n == 0:
    return
  fits = float((lengths <= cfg.rl.max_new_tokens).mean())
  exact = cfg.rl.reward not in HOST_REWARDS
  message = (f"rl.max_new_tokens={cfg.rl.max_new_tokens} leaves no room for {1 - fits:.0%} of the reference answers "
             f"(up to {lengths.max()} tokens with the stop token, median {int(np.median(lengths))}, in the first "
             f"{n} training examples): those completions are always clipped")
  _check(fits == 1.0 or (not exact and fits > 0), "rl.max_new_tokens",
         f"{message}, so nothing can be learned from them; set it to >= {lengths.max()}")
  if fits < 1.0:
    log.warning("config.%s: %s.", "rl.max_new_tokens", message)


def build_algorithm(cfg: ml_collections.ConfigDict, tok: Tokenizer, records=None):
  """The `rl.algorithm` Algorithm with training sampling; `records` feed host rewards (train split)."""
  return _algorithm_spec(cfg).build(cfg, tok, build_reward(cfg, tok, records), train_sampling(cfg, tok),
                                    records=records)


def build_update_settings(cfg: ml_collections.ConfigDict, algorithm) -> UpdateSettings:
  """Shared update knobs; the algorithm decides whether a reference forward is needed (any KL
  weight can be non-zero) and how many generated slots a rollout has (the token-sum normaliser)."""
  rl = cfg.rl
  return UpdateSettings(
      rollouts=rl.prompts_per_step * rl.group_size, group_size=rl.group_size, temperature=rl.temperature,
      clip_low=rl.clip_low, clip_high=rl.clip_high, use_reference=algorithm.needs_reference,
      kl_estimator=rl.kl_estimator, kl_mode=rl.kl_mode, loss_agg=rl.loss_agg, norm_len=algorithm.response_slots,
      num_epochs=rl.num_epochs, num_minibatches=rl.num_minibatches, micro_batch_size=rl.micro_batch_size,
      logprob_chunk=rl.logprob_chunk or None, mode=rl.mode, objectives=tuple(algorithm.objectives),
      surrogate_kwargs=tuple(algorithm.surrogate_kwargs))


# Fields a resumed run may change: bookkeeping, evaluation, layout on the machine, and settings that
# only change how the same update is computed (fused vs split mode, micro-batching, log-prob chunks,
# gradient checkpointing: the prefix "model.remat" covers model.remat and model.remat_policy).
RESUMABLE_CHANGES = ("train.", "mesh.", "rl.mode", "rl.micro_batch_size", "rl.logprob_chunk", "model.remat")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_differences(saved: dict, cfg: ml_collections.ConfigDict, ignore: tuple[str, ...] = ()) -> str:
  """'field: saved X, now Y; ...' for every field whose value differs ('' when none), skipping
  fields that start with a prefix in `ignore`."""
  old, new = _flatten(saved), _flatten(config_json(cfg))
  diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and not k.startswith(ignore)]
  return "; ".join(f"{k}: saved {old.get(k, '<absent>')!r}, now {new.get(k, '<absent>')!r}" for k in diff)


# Shared knobs added after runs may have started, with the value that keeps a run's old behaviour.
SHARED_KNOBS_ADDED = {"rl.kl_mode": "loss"}


def _new_knobs_at_default(saved: dict, cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Fields the saved config predates that still hold the value it behaved as: knobs of the
  algorithm's own section at the algorithm's default, and shared ones (SHARED_KNOBS_ADDED)."""
  defaults = dict(SHARED_KNOBS_ADDED)
  section = cfg.rl.algorithm
  if section in cfg:
    defaults.update(_flatten({section: get_algorithm_spec(section).default_config().to_dict()}))
  old, new = _flatten(saved), _flatten(config_json(cfg))
  return tuple(k for k, v in defaults.items() if k not in old and new.get(k) == v)


def check_resume_config(saved: dict, cfg: ml_collections.ConfigDict) -> None:
  """A workdir's run resumes only with the config it was trained with, up to RESUMABLE_CHANGES and
  knobs of the algorithm's section added since the run started that still hold their default.

  Raises:
    ConfigError: naming every field whose value differs, with both values.
  """
  changes = config_differences(saved, cfg, RESUMABLE_CHANGES + _new_knobs_at_default(saved, cfg))
  if changes:
    raise ConfigError(f"config: the workdir holds a run trained with a different config ({changes}). Resume with "
                      f"the saved values, or start the changed run in a new --workdir.")


def corrupt_ids(tok: Tokenizer) -> np.ndarray:
  """Token ids SFT noise draws from: the digits (the answers of the arithmetic tasks)."""
  return np.asarray(sorted({i for d in "0123456789" for i in tok.encode(d)}), np.int32)


def config_json(cfg: ml_collections.ConfigDict) -> dict:
  return json.loads(cfg.to_json_best_effort())
