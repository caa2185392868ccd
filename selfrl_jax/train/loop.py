"""The host training loop: warm start, data, compiled step, evaluation, metrics, checkpoints.

    summary = train(config, workdir)      # what experiments/train.py and reproduce.py call

Everything inside an iteration runs in the compiled `train_step`; the host only feeds batches,
writes metrics, evaluates, checkpoints and handles preemption.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import ml_collections
import tqdm
from flax import nnx

from selfrl_jax.data.pipeline import make_prompt_iterator
from selfrl_jax.parallel import sharding
from selfrl_jax.parallel.distributed import maybe_initialize_distributed, process_info
from selfrl_jax.parallel.mesh import make_mesh
from selfrl_jax.train import builders
from selfrl_jax.train.evaluation import Evaluator, fixed_eval_batches
from selfrl_jax.train.checkpoint import CheckpointManager
from selfrl_jax.train.metrics import MetricWriter
from selfrl_jax.train.preemption import PreemptionHandler
from selfrl_jax.train.sft import cached_warm_start, train_sft
from selfrl_jax.train.state import create_train_state, make_optimizer
from selfrl_jax.train.step import make_train_step

log = logging.getLogger(__name__)


class NonFiniteAbort(RuntimeError):
  """Too many consecutive non-finite updates; the last good checkpoint is intact."""


def warm_start(cfg: ml_collections.ConfigDict, model, tok, train_source, valid_source, cache_dir: str):
  """Returns the SFT warm-started model (cached by settings) or `model` when `sft.steps == 0`.

  With `sft.target_accuracy > 0`, SFT stops as soon as greedy accuracy on the validation split
  reaches it (checked every `sft.check_every` steps), so every seed starts RL from a base of the
  same, deliberately imperfect quality.
  """
  if cfg.sft.steps == 0:
    return model
  settings = {"model": model.cfg.__dict__, "task": builders.config_json(cfg.task), "sft": cfg.sft.to_dict(),
              "max_prompt_len": cfg.rl.max_prompt_len, "max_answer_len": cfg.rl.max_answer_len, "seed": cfg.seed}

  def build(m):
    batches = make_prompt_iterator(train_source, tok, batch_size=cfg.sft.batch_size,
                                   max_prompt_len=cfg.rl.max_prompt_len, max_answer_len=cfg.rl.max_answer_len,
                                   seed=cfg.seed + 1)
    stop_when = None
    if cfg.sft.target_accuracy > 0:
      graphdef = nnx.graphdef(m)
      check = Evaluator(graphdef, builders.build_algorithm(cfg, tok), builders.eval_sampling(cfg, tok),
                        fixed_eval_batches(valid_source, tok, eval_size=cfg.task.valid_size,
                                           batch_size=cfg.train.eval_batch_size, max_prompt_len=cfg.rl.max_prompt_len,
                                           max_answer_len=cfg.rl.max_answer_len))
      stop_when = lambda params: check(params)["eval/accuracy"] >= cfg.sft.target_accuracy  # noqa: E731
    return train_sft(m, batches, steps=cfg.sft.steps, learning_rate=cfg.sft.learning_rate,
                     error_rate=cfg.sft.error_rate, corrupt_ids=builders.corrupt_ids(tok), seed=cfg.seed,
                     progress=cfg.train.progress, stop_when=stop_when, check_every=cfg.sft.check_every)
  return cached_warm_start(model, cache_dir, settings, build)


def train(cfg: ml_collections.ConfigDict, workdir: str, sft_cache_dir: str | None = None) -> dict:
  """Runs an RL experiment, resuming from the newest good checkpoint in `workdir` if there is one.

  Returns:
    {"initial": eval before RL, "final": eval after, "history": eval curve, "compilations": number of
    train-step programs compiled, "preempted": stopped early by SIGTERM/SIGINT, "resumed_from": step}.
  """
  maybe_initialize_distributed()
  builders.validate_config(cfg)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  model, tok = builders.build_model(cfg)
  train_source, valid_source, test_source = builders.build_sources(cfg)
  model = warm_start(cfg, model, tok, train_source, valid_source,
                     sft_cache_dir or os.path.join(workdir, "warm_start"))

  tx = make_optimizer(cfg.optim)
  graphdef, state = create_train_state(model, tx, cfg.seed, keep_reference=cfg.rl.kl_coef > 0)
  mesh = make_mesh(data=cfg.mesh.data, fsdp=cfg.mesh.fsdp)
  state_sharding = sharding.param_shardings(state, mesh)
  state = sharding.shard_params(state, mesh)
  algorithm = builders.build_algorithm(cfg, tok)
  step_fns = make_train_step(builders.build_update_settings(cfg), algorithm, graphdef, tx,
                             state_sharding=state_sharding, batch_sharding=sharding.batch_sharding(mesh),
                             replicated_sharding=sharding.replicated(mesh))
  evaluator = Evaluator(graphdef, algorithm, builders.eval_sampling(cfg, tok), fixed_eval_batches(
      test_source, tok, eval_size=cfg.train.eval_size, batch_size=cfg.train.eval_batch_size,
      max_prompt_len=cfg.rl.max_prompt_len, max_answer_len=cfg.rl.max_answer_len))
  # Each host reads its own slice of the data; shard_batch assembles the global batch.
  process_index, process_count, _ = process_info()
  batches = make_prompt_iterator(train_source, tok, batch_size=cfg.rl.prompts_per_step // process_count,
                                 max_prompt_len=cfg.rl.max_prompt_len, max_answer_len=cfg.rl.max_answer_len,
                                 seed=cfg.seed, shard_index=process_index, shard_count=process_count)

  ckpt = CheckpointManager(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.train.keep_checkpoints,
                           save_every=cfg.train.checkpoint_every or cfg.train.num_steps)
  # The reference policy is the (deterministic) warm start: rebuilt, never checkpointed.
  ref_params = state.ref_params
  abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          state.replace(ref_params=None), state_sharding.replace(ref_params=None))
  restored = ckpt.restore_or_none(abstract)
  if restored is None:
    start, history = 0, {"step": [], "eval/accuracy": []}
    writer = MetricWriter(workdir, console=cfg.train.progress)
    initial = evaluator(state.params)
    writer.write(0, initial)
    history["step"].append(0)
    history["eval/accuracy"].append(initial["eval/accuracy"])
  else:
    start = restored.step
    state = restored.state.replace(ref_params=ref_params)
    batches.set_state(restored.data_state)
    initial, history = restored.meta["initial"], restored.meta["history"]
    writer = MetricWriter(workdir, resume_step=start, console=cfg.train.progress)
    log.info("Resumed from step %d", start)

  def save(step: int, force: bool = False) -> None:
    ckpt.save(step, state.replace(ref_params=None), batches.get_state(), cfg,
              meta={"initial": initial, "history": history}, force=force)

  preempted = False
  bar = tqdm.trange(start, cfg.train.num_steps, initial=start, total=cfg.train.num_steps, desc="RL",
                    disable=not cfg.train.progress)
  with PreemptionHandler() as preemption:
    for i in bar:
      t0 = time.perf_counter()
      batch = sharding.shard_batch(next(batches), mesh)
      if cfg.rl.mode == "fused":
        state, metrics = step_fns.fused(state, batch)
      else:
        rollout = step_fns.sample(state, batch)
        state, metrics = step_fns.update(state, batch, rollout, algorithm.rewards(rollout, batch))
      metrics = jax.device_get(metrics)
      metrics["time/step_s"] = time.perf_counter() - t0
      metrics["tokens_per_s"] = float(metrics["generated_tokens"]) / metrics["time/step_s"]
      step = i + 1
      if int(state.nonfinite_streak) >= cfg.train.max_nonfinite_in_row:
        ckpt.wait_until_finished()
        raise NonFiniteAbort(
            f"{int(state.nonfinite_streak)} consecutive steps had a non-finite loss or gradient (limit "
            f"train.max_nonfinite_in_row={cfg.train.max_nonfinite_in_row}); the last checkpoint "
            f"(step {ckpt.latest_step()}) is intact.")
      if step % cfg.train.log_every == 0:
        writer.write(step, metrics)
      bar.set_postfix(reward=f"{float(metrics['reward_mean']):.3f}", refresh=False)
      if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.num_steps:
        result = evaluator(state.params)
        writer.write(step, result)
        history["step"].append(step)
        history["eval/accuracy"].append(result["eval/accuracy"])
      if preemption.should_stop(step):
        log.warning("Stop requested (%s) at step %d: saving and exiting.", preemption.received, step)
        save(step, force=True)
        preempted = True
        break
      if ckpt.should_save(step) and step < cfg.train.num_steps:
        save(step)
  final = None
  if not preempted:
    final = evaluator(state.params)
    writer.write(cfg.train.num_steps, final)
    history["step"].append(cfg.train.num_steps)
    history["eval/accuracy"].append(final["eval/accuracy"])
    save(cfg.train.num_steps, force=True)
  ckpt.wait_until_finished()
  writer.close()
  return {"initial": initial, "final": final, "history": history, "preempted": preempted,
          "resumed_from": None if restored is None else restored.step,
          "compilations": step_fns.fused._cache_size() if cfg.rl.mode == "fused" else step_fns.update._cache_size()}
