"""The host training loop: warm start, data, compiled step, evaluation, metrics, checkpoints.

    summary = train(config, workdir)      # what experiments/train.py and reproduce.py call

Everything inside an iteration runs in the compiled `train_step`; the host only feeds batches,
writes metrics, evaluates, checkpoints and handles preemption.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time

import jax
import ml_collections
import tqdm
from flax import nnx

from selfrl_jax.algos.registry import get_algorithm_spec
from selfrl_jax.parallel import sharding
from selfrl_jax.parallel.distributed import maybe_initialize_distributed, process_info
from selfrl_jax.parallel.mesh import make_mesh
from selfrl_jax.train import builders
from selfrl_jax.train.evaluation import Evaluator, fixed_eval_batches
from selfrl_jax.train.checkpoint import CheckpointManager
from selfrl_jax.train.metrics import MetricWriter
from selfrl_jax.train.preemption import PreemptionHandler
from selfrl_jax.train.prepare import run_prepare
from selfrl_jax.train.sft import WarmStartPreempted, cached_warm_start, noisy_demonstrations, train_sft
from selfrl_jax.train.state import create_train_state, make_optimizer
from selfrl_jax.train.step import make_train_step

log = logging.getLogger(__name__)


class NonFiniteAbort(RuntimeError):
  """Too many consecutive non-finite updates in a row (none of them was applied)."""


def eval_batches(cfg, tok, source, size: int):
  """The first `size` usable prompts of `source` as fixed batches; too few is a ConfigError naming the
  buffers that skip records (checked before the warm start, so a wrong size fails at once)."""
  try:
    return fixed_eval_batches(source, tok, eval_size=size, batch_size=cfg.train.eval_batch_size,
                              max_prompt_len=cfg.rl.max_prompt_len, max_answer_len=cfg.rl.max_answer_len,
                              chat=cfg.task.chat, system_prompt=cfg.task.system_prompt or None)
  except ValueError as e:
    raise builders.ConfigError(f"config.train.eval_size: {e} A record is skipped when its prompt is longer than "
                               f"rl.max_prompt_len={cfg.rl.max_prompt_len} tokens or its answer does not fit "
                               f"rl.max_answer_len={cfg.rl.max_answer_len}.") from None


def make_evaluator(cfg, graphdef, tok, source, size: int, batches=None) -> Evaluator:
  """Evaluation of the configured algorithm (its evaluation decoding) on the first `size` prompts of
  `source` (`batches`: those prompts already built by `eval_batches`)."""
  batches = eval_batches(cfg, tok, source, size) if batches is None else batches
  return Evaluator(graphdef, builders.build_algorithm(cfg, tok, source), builders.eval_sampling(cfg, tok), batches)


def _sft_demos(cfg, tok, train_source):
  """The warm-start data stream and the settings that key its cache: noisy task demonstrations, or
  a stream the algorithm offers (`AlgorithmSpec.sft_demos`)."""
  seed = _sft_seed(cfg)
  batches = builders.prompt_batches(cfg, builders.build_sft_source(cfg, train_source), tok, batch_size=cfg.sft.batch_size, seed=seed + 1)
  if cfg.sft.demos != "task":
    demos = get_algorithm_spec(cfg.rl.algorithm).sft_demos[cfg.sft.demos]
    return demos(cfg, builders.build_algorithm(cfg, tok, train_source), batches, tok, seed)
  stream = noisy_demonstrations(batches, error_rate=cfg.sft.error_rate, corrupt_ids=builders.corrupt_ids(tok),
                                seed=seed)
  return stream, {}


def _sft_task_key(cfg) -> dict:
  """The task the warm start learns from: `task` with `sft.task_params` applied, so RL arms that differ
  only in params SFT overrides (e.g. the ladder levels) share one warm start. With early stopping
  (`sft.target_accuracy`) the RL validation split decides when SFT stops, so the RL task counts too."""
  rl_task = builders.config_json(cfg.task)
  overrides = cfg.sft.task_params.to_dict()
  sft_task = {**rl_task, "params": {**rl_task.get("params", {}), **overrides}} if overrides else rl_task
  return {"sft_task": sft_task, "valid_task": rl_task if cfg.sft.target_accuracy > 0 else None}


def _sft_seed(cfg) -> int:
  return cfg.seed if cfg.sft.seed < 0 else cfg.sft.seed


def warm_start(cfg: ml_collections.ConfigDict, model, tok, train_source, valid_source, cache_dir: str,
               should_stop=None):
  """Returns the SFT warm-started model (cached by settings) or `model` when `sft.steps == 0`.

  With `sft.target_accuracy > 0`, SFT stops as soon as `sft.target_metric` of greedy evaluation on
  the validation split reaches it (checked every `sft.check_every` steps), so every seed starts RL
  from a base of the same, deliberately imperfect quality. Progress is checkpointed every
  `train.checkpoint_every` steps and when `should_stop()` turns true (`sft.WarmStartPreempted`).
  """
  if cfg.sft.steps == 0:
    return model
  demos, demo_settings = _sft_demos(cfg, tok, train_source)
  settings = {"model": model.cfg.__dict__, "base": builders.base_weights_fingerprint(cfg),
              "task": _sft_task_key(cfg), "sft": cfg.sft.to_dict(),
              "max_prompt_len": cfg.rl.max_prompt_len, "max_answer_len": cfg.rl.max_answer_len, "seed": _sft_seed(cfg),
              **demo_settings}

  def build(m, checkpoint_dir):
    stop_when = None
    if cfg.sft.target_accuracy > 0:
      check = make_evaluator(cfg, nnx.graphdef(m), tok, valid_source, cfg.task.valid_size)
      stop_when = lambda params: check(params)[cfg.sft.target_metric] >= cfg.sft.target_accuracy  # noqa: E731
    return train_sft(m, demos, steps=cfg.sft.steps,
                     learning_rate=cfg.sft.learning_rate, progress=cfg.train.progress, stop_when=stop_when,
                     check_every=cfg.sft.check_every, checkpoint_dir=checkpoint_dir,
                     checkpoint_every=cfg.train.checkpoint_every, should_stop=should_stop)
  return cached_warm_start(model, cache_dir, settings, build)


def _out_of_memory_named(train_step, state, batch, ckpt):
  """`train_step(state, batch)`; XLA's bare "Out of memory allocating N bytes" becomes an error that
  says which config fields trade memory (the step's state was donated: the run stops here)."""
  try:
    return train_step(state, batch)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    raise MemoryError(
        f"The RL iteration needs more memory than the device has ({str(e).splitlines()[0]}). Lower "
        "rl.micro_batch_size (the update's rows at a time), set model.remat=True (recompute each block in "
        "the backward pass: long sequences; model.remat_policy='nothing_saveable' keeps the least), set "
        "rl.logprob_chunk (e.g. 512: log-probs a slice of positions at a time), or shorten the rollout "
        "(rl.max_new_tokens, rl.max_prompt_len, the number of turns or steps). "
        f"Checkpoints are intact ({_newest(ckpt)}).") from e


def _newest(ckpt) -> str:
  step = ckpt.latest_step()
  return "no checkpoint yet" if step is None else f"newest: step {step}"


def _bar_numbers(metrics: dict, history: dict) -> dict[str, str]:
  """What a researcher watches, on the progress bar: reward, the newest held-out metric, KL, step time."""
  out = {"reward": f"{float(metrics['reward_mean']):.3f}"}
  held_out = next((k for k in ("eval/accuracy", *history) if k.startswith("eval/") and k in history), None)
  if held_out is not None and history[held_out]:
    out[held_out.removeprefix("eval/")] = f"{history[held_out][-1]:.3f}"
  if "kl" in metrics:
    out["kl"] = f"{float(metrics['kl']):.2g}"
  out["s/step"] = f"{metrics['time/step_s']:.2f}"
  return out


def _record(history: dict, step: int, result: dict) -> None:
  """Appends one evaluation to the curve kept in checkpoints (every scalar metric, by name)."""
  history["step"].append(step)
  for name, value in result.items():
    history.setdefault(name, []).append(value)


def train(cfg: ml_collections.ConfigDict, workdir: str, sft_cache_dir: str | None = None) -> dict:
  """Runs an RL experiment, resuming from the newest good checkpoint in `workdir` if there is one.

  SIGTERM / SIGINT at any stage (data preparation, warm start, RL, evaluation) request a stop: the
  warm start or the RL loop saves its progress at the next step boundary and the run returns with
  "preempted" set (entry points then exit with `preemption.EXIT_PREEMPTED`).

  Returns:
    {"initial": eval before RL, "final": eval after, "history": eval curve, "compilations": number of
    train-step programs compiled, "preempted": stopped early by SIGTERM/SIGINT, "stopped_in":
    "warm_start" or "rl" when preempted, "resumed_from": step, "already_complete": the workdir's
    run had reached train.num_steps, nothing was trained or written}.

  Raises:
    ConfigError: the workdir holds a run trained with a different config (see
      `builders.check_resume_config`), before anything is built or compiled.
  """
  with PreemptionHandler() as preemption, _workdir_lock(workdir):
    try:
      return _train(cfg, workdir, sft_cache_dir, preemption)
    except WarmStartPreempted as e:
      log.warning("%s: rerun the same command to resume.", e)
      return {"initial": None, "final": None, "history": {"step": []}, "preempted": True,
              "stopped_in": "warm_start", "resumed_from": None, "compilations": 0, "already_complete": False}


@contextlib.contextmanager
def _workdir_lock(workdir: str):
  """One run per workdir: a second `train()` on it fails at once (ConfigError) instead of both
  writing checkpoints and metrics into it."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, ".run.lock"), "a+") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock.seek(0)
      holder = lock.read().strip() or "unknown"
      raise builders.ConfigError(f"workdir {workdir} is in use by another run ({holder}): wait for it to finish or "
                                 "choose another --workdir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}")
    lock.flush()
    yield


def _train(cfg, workdir: str, sft_cache_dir: str | None, preemption: PreemptionHandler) -> dict:
  maybe_initialize_distributed()
  builders.validate_config(cfg)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  directory = os.path.join(workdir, "checkpoints")
  saved_config, newest = None, None
  if os.path.isdir(directory):  # read-only: a config refused below leaves no checkpoints/ behind
    with CheckpointManager(directory, read_only=True) as peek:
      saved_config, newest = peek.saved_config(), peek.latest_step()
  if saved_config is not None:  # before any warm start or compile: a changed run fails at once
    builders.check_resume_config(saved_config, cfg)
    log.info("Resuming the run in %s (newest checkpoint: step %d)", workdir, newest)
  else:
    log.info("Starting fresh in %s (no RL checkpoint yet)", workdir)
  model, tok = builders.build_model(cfg)
  train_source, valid_source, test_source = builders.build_sources(cfg)
  if get_algorithm_spec(cfg.rl.algorithm).answer_is_response:
    builders.check_answers_fit(cfg, tok, train_source)
  test_batches = eval_batches(cfg, tok, test_source, cfg.train.eval_size)  # before the warm start: a size that cannot work fails now
  ckpt = CheckpointManager(directory, max_to_keep=cfg.train.keep_checkpoints,
                           save_every=cfg.train.checkpoint_every or cfg.train.num_steps)
  cache_root = sft_cache_dir or cfg.train.warm_start_cache or os.path.join(workdir, "warm_start")
  model = warm_start(cfg, model, tok, train_source, valid_source, cache_root, should_stop=preemption.should_stop)

  tx = make_optimizer(cfg.optim)
  algorithm = builders.build_algorithm(cfg, tok, train_source)
  graphdef, state = create_train_state(model, tx, cfg.seed, keep_reference=algorithm.needs_reference,
                                       algorithm=algorithm)
  mesh = make_mesh(data=cfg.mesh.data, fsdp=cfg.mesh.fsdp)
  state_sharding = sharding.param_shardings(state, mesh)
  state = sharding.shard_params(state, mesh)
  train_step = make_train_step(builders.build_update_settings(cfg, algorithm), algorithm, graphdef, tx,
                             state_sharding=state_sharding, batch_sharding=sharding.batch_sharding(mesh),
                             replicated_sharding=sharding.replicated(mesh))
  evaluator = make_evaluator(cfg, graphdef, tok, test_source, cfg.train.eval_size, test_batches)
  # Each host reads its own slice of the data; shard_batch assembles the global batch.
  process_index, process_count, _ = process_info()
  batches = builders.prompt_batches(cfg, train_source, tok, batch_size=cfg.rl.prompts_per_step // process_count,
                                    seed=cfg.seed, shard_index=process_index, shard_count=process_count)

  # The reference policy is the (deterministic) warm start: rebuilt, never checkpointed.
  ref_params = state.ref_params
  abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          state.replace(ref_params=None), state_sharding.replace(ref_params=None))
  restored = ckpt.restore_or_none(abstract)
  if restored is None:
    start, history = 0, {"step": []}
    writer = MetricWriter(workdir, console=cfg.train.progress, console_every=cfg.train.log_every)
    algo_state, prepared = run_prepare(get_algorithm_spec(cfg.rl.algorithm), cfg, algorithm, state.algo_state,
                                       state.params, model, tok, train_source, cache_root)
    state = state.replace(algo_state=jax.device_put(algo_state, state_sharding.algo_state))
    initial = evaluator(state.params)
    _record(history, 0, initial)  # the eval curve; the preparation report is logged once, with step 0
    initial.update(prepared)
    writer.write(0, initial, console=True)
  else:
    start = restored.step
    state = restored.state.replace(ref_params=ref_params)
    batches.set_state(restored.data_state)
    initial, history = restored.meta["initial"], restored.meta["history"]
    if start >= cfg.train.num_steps:
      log.warning("The run in %s is already complete (step %d, train.num_steps=%d): nothing to train; raise "
                  "train.num_steps to continue it.", workdir, start, cfg.train.num_steps)
      final = {k: v[-1] for k, v in history.items() if k != "step"} if history["step"][-1:] == [start] else None
      return {"initial": initial, "final": final, "history": history, "preempted": False, "stopped_in": None,
              "resumed_from": start, "compilations": 0, "already_complete": True}
    writer = MetricWriter(workdir, resume_step=start, console=cfg.train.progress, console_every=cfg.train.log_every)
    log.info("RL resumes at step %d of %d", start, cfg.train.num_steps)

  def save(step: int, force: bool = False) -> None:
    ckpt.save(step, state.replace(ref_params=None), batches.get_state(), cfg,
              meta={"initial": initial, "history": history}, force=force)

  preempted = False
  bar = tqdm.trange(start, cfg.train.num_steps, initial=start, total=cfg.train.num_steps, desc="RL",
                    disable=not cfg.train.progress)
  try:
    for i in bar:
      t0 = time.perf_counter()
      batch = sharding.shard_batch(next(batches), mesh)
      state, metrics = _out_of_memory_named(train_step, state, batch, ckpt)
      metrics = jax.device_get(metrics)
      metrics.update({f"host/{k}": v for k, v in algorithm.host_counters().items()})
      metrics["time/step_s"] = time.perf_counter() - t0
      metrics["tokens_per_s"] = float(metrics["generated_tokens"]) / metrics["time/step_s"]
      step = i + 1
      if int(state.nonfinite_streak) >= cfg.train.max_nonfinite_in_row:
        ckpt.wait_until_finished()
        raise NonFiniteAbort(
            f"{int(state.nonfinite_streak)} consecutive steps had a non-finite loss, gradient or update "
            f"(limit train.max_nonfinite_in_row={cfg.train.max_nonfinite_in_row}); none was applied, so "
            f"every checkpoint holds finite weights ({_newest(ckpt)}). Resuming repeats "
            "the same data and updates: change the config first (e.g. a lower optim.learning_rate).")
      writer.write(step, metrics)
      if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.num_steps:
        result = evaluator(state.params)
        writer.write(step, result, console=True)
        _record(history, step, result)
      bar.set_postfix(_bar_numbers(metrics, history), refresh=False)
      if preemption.should_stop(step):
        log.warning("Stop requested (%s) at step %d: saving and exiting.", preemption.received, step)
        save(step, force=True)
        preempted = True
        break
      if ckpt.should_save(step) and step < cfg.train.num_steps:
        save(step)
  except BaseException:
    # A crash (a raising environment, out of memory) leaves the checkpoints it started complete.
    ckpt.wait_until_finished()
    writer.close()
    raise
  final = None
  if not preempted:
    final = evaluator(state.params)
    writer.write(cfg.train.num_steps, final, console=True)
    _record(history, cfg.train.num_steps, final)
    save(cfg.train.num_steps, force=True)
  ckpt.wait_until_finished()
  writer.close()
  return {"initial": initial, "final": final, "history": history, "preempted": preempted,
          "stopped_in": "rl" if preempted else None, "resumed_from": None if restored is None else restored.step,
          "compilations": train_step.compilations(), "already_complete": False}
