"""Supervised warm start: teacher forcing on task demonstrations, some deliberately wrong.

RL needs a base policy that is imperfect but not hopeless (the role a pretrained LLM plays). A
short SFT run on demonstrations, a fraction `error_rate` of which have one answer token replaced by
a random one, gives exactly that. The result is saved as a Hugging Face directory under the
workdir and reused by later runs with the same settings.

An interrupted warm start is not lost: `train_sft` checkpoints (parameters, Adam state, step) under
`<cache>/sft_<key>.partial/` every `checkpoint_every` steps and when `should_stop()` turns true
(SIGTERM / Ctrl-C), then raises `WarmStartPreempted`; the next run with the same settings resumes
from there. The demonstration stream is a deterministic function of the seed, so resuming replays
(without training) the batches already used and the result is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from selfrl_jax.models.decoder import Decoder
from selfrl_jax.models.hf_io import load_hf, save_hf
from selfrl_jax.train.cache import cached_build
from selfrl_jax.train.checkpoint import CheckpointManager
from selfrl_jax.train.step import sequence_logprobs

log = logging.getLogger(__name__)


class WarmStartPreempted(Exception):
  """The warm start stopped on request after saving its progress; rerun to resume it."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"SFT warm start stopped at step {step}; progress saved in {directory}")
    self.step = step
    self.directory = directory


def demonstrations(batch: dict[str, np.ndarray], rng: np.random.Generator, error_rate: float,
                   corrupt_ids: np.ndarray) -> dict[str, np.ndarray]:
  """[prompt | answer EOS] sequences with a loss mask on the answer; some answers corrupted.

  A corrupted row has one answer token (never the EOS) replaced by a different id from
  `corrupt_ids`, so the model learns a noisy mapping rather than a different task.
  """
  prompt_PxT, target_PxA = batch.prompt_tokens_PxT, batch.target_tokens_PxA.copy()
  p, a = target_PxA.shape
  target_valid_PxA = np.arange(a)[None, :] < batch.target_len_P[:, None]
  answer_len_P = batch.target_len_P - 1
  for row in np.flatnonzero(rng.random(p) < error_rate):
    if answer_len_P[row] > 0:
      pos = rng.integers(answer_len_P[row])
      choices = corrupt_ids[corrupt_ids != target_PxA[row, pos]]
      target_PxA[row, pos] = rng.choice(choices)
  return {"tokens_BxS": np.concatenate([prompt_PxT, target_PxA], axis=1),
          "valid_BxS": np.concatenate([batch.prompt_valid_PxT, target_valid_PxA], axis=1),
          "loss_mask_BxS": np.concatenate([np.zeros(prompt_PxT.shape, bool), target_valid_PxA], axis=1)}


def make_sft_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, chunk_size: int | None = None):
  """Jitted teacher-forcing step: mean negative log-likelihood of loss-masked tokens."""
  def loss_fn(params, demo):
    model = nnx.merge(graphdef, params)
    logp_BxS = sequence_logprobs(model, demo["tokens_BxS"], demo["valid_BxS"], temperature=1.0,
                                 chunk_size=chunk_size)
    mask = demo["loss_mask_BxS"]
    return -jnp.where(mask, logp_BxS, 0.0).sum() / jnp.maximum(mask.sum(), 1)

  @jax.jit
  def step(params, opt_state, demo):
    loss, grads = jax.value_and_grad(loss_fn)(params, demo)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def noisy_demonstrations(batches: Iterator[dict[str, np.ndarray]], *, error_rate: float, corrupt_ids: np.ndarray,
                         seed: int) -> Iterator[dict[str, np.ndarray]]:
  """Endless `demonstrations` of successive prompt batches (the default warm-start data)."""
  rng = np.random.default_rng(seed)
  for batch in batches:
    yield demonstrations(batch, rng, error_rate, corrupt_ids)


def train_sft(model: Decoder, demos: Iterator[dict[str, np.ndarray]], *, steps: int, learning_rate: float,
              progress: bool = True, stop_when: Callable[[nnx.State], bool] | None = None,
              check_every: int = 50, checkpoint_dir: str | None = None, checkpoint_every: int = 0,
              should_stop: Callable[[], bool] | None = None) -> Decoder:
  """Runs up to `steps` SFT updates with Adam and returns the trained model.

  Args:
    demos: batches of {tokens_BxS, valid_BxS, loss_mask_BxS} (`noisy_demonstrations`, or a stream
      an algorithm offers through `AlgorithmSpec.sft_demos`); must be a deterministic stream for
      a resumed run to equal an uninterrupted one.
    stop_when: optional early stop, called with the parameters every `check_every` steps (e.g.
      "held-out accuracy reached the target"), so the warm start has a chosen quality whatever
      the seed.
    checkpoint_dir: where progress is saved and resumed from (None: no checkpoints).
    checkpoint_every: steps between periodic saves (0: only when stopped).
    should_stop: polled after every step; when it returns True the progress is saved and
      `WarmStartPreempted` raised.

  Raises:
    WarmStartPreempted: `should_stop()` returned True (needs `checkpoint_dir`).
  """
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adam(learning_rate)
  opt_state = tx.init(params)
  start = 0
  ckpt = None
  if checkpoint_dir is not None:
    ckpt = CheckpointManager(checkpoint_dir, max_to_keep=1, save_every=checkpoint_every)
    restored = ckpt.restore_or_none({"params": params, "opt_state": opt_state})
    if restored is not None:
      start, params, opt_state = restored.step, restored.state["params"], restored.state["opt_state"]
      for _ in range(start):  # replay the stream to where the interrupted run stopped
        next(demos)
      log.warning("SFT warm start: resuming from step %d of %d (%s)", start, steps, checkpoint_dir)
  step = make_sft_step(graphdef, tx)
  bar = tqdm.trange(start, steps, initial=start, total=steps, desc="SFT warm start", disable=not progress,
                    leave=False)
  try:
    for i in bar:
      params, opt_state, loss = step(params, opt_state, next(demos))
      bar.set_postfix(nll=f"{float(loss):.3f}", refresh=False)
      if stop_when is not None and (i + 1) % check_every == 0 and stop_when(params):
        log.warning("SFT warm start: stopped at step %d of %d, the validation target is reached", i + 1, steps)
        break
      if should_stop is not None and should_stop():
        if ckpt is None:
          raise ValueError("train_sft: should_stop needs a checkpoint_dir to save the progress in.")
        ckpt.save(i + 1, {"params": params, "opt_state": opt_state}, force=True)
        ckpt.wait_until_finished()
        raise WarmStartPreempted(i + 1, checkpoint_dir)
      if ckpt is not None and ckpt.should_save(i + 1) and i + 1 < steps:
        ckpt.save(i + 1, {"params": params, "opt_state": opt_state})
    else:
      log.warning("SFT warm start: ran all %d steps%s", steps, "" if stop_when is None else
                  " without reaching the validation target")
  finally:
    if ckpt is not None:
      ckpt.close()
  return nnx.merge(graphdef, params)


def cached_warm_start(model: Decoder, cache_root: str, settings: dict,
                      build: Callable[[Decoder, str], Decoder]) -> Decoder:
  """Returns the SFT model for `settings`, training it with `build` only if not cached yet.

  Safe when several runs share `cache_root` (the arms of an ablation): an exclusive lock per
  settings key makes one run build the warm start while the others wait for it and reuse it, and
  the result appears atomically.

  Args:
    model: the freshly initialised model (its config names the architecture).
    cache_root: directory holding one sub-directory per distinct settings hash.
    settings: JSON-able description of everything that determines the result (model, base weights,
      task, SFT, seed).
    build: `build(model, checkpoint_dir)` trains the warm start from `model`, saving and resuming
      its progress in `checkpoint_dir` (removed once the result is saved).
  """
  trained = []

  def build_into(tmp: str, partial: str) -> None:
    trained.append(build(model, partial))
    save_hf(trained[0], tmp)

  directory, built = cached_build(cache_root, "sft", settings, build_into, "model.safetensors",
                                  what="SFT warm start")
  if built:
    return trained[0]
  loaded = load_hf(directory, param_dtype=model.cfg.param_dtype, compute_dtype=model.cfg.compute_dtype)[0]
  # The file holds weights only: the run's static choices (model.remat) come from the model it was asked
  # for. A reused SmolLM2 warm start without them asked 34 GB for a text-game update that fits in 3.
  loaded.remat_blocks, loaded.remat_policy = model.remat_blocks, model.remat_policy
  return loaded
