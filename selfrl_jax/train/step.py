"""One RL iteration as a pure function: sample -> reward -> advantage -> K update epochs.

    train_step = make_train_step(settings, algorithm, graphdef, tx)
    state, metrics = train_step.fused(state, batch)          # everything in one compiled program
    rollout = train_step.sample(state, batch)                 # split mode: jitted sampling,
    rewards = host_reward(rollout, batch)                     #   host reward,
    state, metrics = train_step.update(state, batch, rollout, rewards)   # jitted update

Both modes run the same functions with the same PRNG keys, so they give identical results.
An `Algorithm` supplies the method-specific parts (rollout, jittable rewards, advantages and KL
weights per token); everything else — log-probs, losses, minibatches, gradient accumulation,
non-finite guards, metrics — is shared by every paper module.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from selfrl_jax.algos.advantages import zero_std_group_fraction
from selfrl_jax.algos.logprobs import token_logprobs
from selfrl_jax.algos.losses import policy_loss
from selfrl_jax.models.decoder import Decoder, forward_full
from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Rewards = dict[str, jax.Array]  # "reward" (the scalar used for advantages) plus per-function parts


@dataclasses.dataclass(frozen=True)
class UpdateSettings:
  """Static knobs of the shared update (from `config.rl`; see configs/common.py for meanings).

  `use_reference`: compute frozen-reference log-probs for the KL term. The per-token KL weights
  come from the Algorithm (GRPO: rl.kl_coef everywhere; SCoRe: beta1 / beta2 per turn).
  """

  rollouts: int
  group_size: int
  temperature: float
  clip_low: float
  clip_high: float
  use_reference: bool
  kl_estimator: str
  loss_agg: str
  norm_len: int
  num_epochs: int
  num_minibatches: int
  micro_batch_size: int
  logprob_chunk: int | None
  first_loss_slot: int = 1  # set per call from the prompt width: slots before it never carry a loss

  @property
  def accum_steps(self) -> int:
    return self.rollouts // self.num_minibatches // self.micro_batch_size

  @property
  def needs_old_logprobs(self) -> bool:
    """With one epoch over one minibatch the ratio is 1 by construction: no extra forward pass."""
    return self.num_epochs * self.num_minibatches > 1


class Algorithm(Protocol):
  """The method-specific parts of an RL iteration (GRPO: algos/grpo.py; SCoRe: algos/score.py).

  Besides the three traced methods below, an Algorithm is a frozen dataclass with `sampling` and
  `group_size` fields (the evaluator swaps in greedy decoding and one sample), `needs_reference`
  (whether any KL weight can be non-zero) and `eval_outputs` / `eval_metrics` for
  `train.evaluation.Evaluator`.
  """

  def rollout(self, model: Decoder, batch: Batch, key: jax.Array) -> Rollout: ...

  def rewards(self, rollout: Rollout, batch: Batch) -> Rewards: ...

  def advantages(self, rollout: Rollout, rewards: Rewards, step: jax.Array
                 ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Returns (adv_BxS, kl_weight_BxS, metrics): per-token advantage and KL coefficient."""


@struct.dataclass
class UpdateBatch:
  tokens_BxS: jax.Array
  valid_BxS: jax.Array
  loss_mask_BxS: jax.Array
  adv_BxS: jax.Array
  kl_weight_BxS: jax.Array
  sampler_logp_BxS: jax.Array
  old_logp_BxS: jax.Array | None
  ref_logp_BxS: jax.Array | None


def sequence_logprobs(model: Decoder, tokens_BxS, valid_BxS, *, temperature: float,
                      chunk_size: int | None, return_entropy: bool = False, start: int = 1):
  """Log-prob of every slot's token given the slots before it, trainer side.

  Slots before `start` get 0 (slot 0 has no context). The update passes the prompt width as
  `start`: prompt tokens are never in the loss, and skipping them skips their share of the
  vocabulary projection, the largest matmul at large vocab.
  """
  hidden_BxSxD = forward_full(model, tokens_BxS, valid_BxS)
  out = token_logprobs(hidden_BxSxD[:, start - 1:-1], model.output_embedding(), tokens_BxS[:, start:],
                       chunk_size=chunk_size, temperature=temperature, return_entropy=return_entropy)
  pad = lambda x: jnp.pad(x, ((0, 0), (start, 0)))  # noqa: E731
  return (pad(out[0]), pad(out[1])) if return_entropy else pad(out)


def _masked_mean(x_BxS, mask_BxS):
  return jnp.where(mask_BxS, x_BxS, 0.0).sum() / jnp.maximum(mask_BxS.sum(), 1)


def _microbatched_logprobs(graphdef, params, tokens_BxS, valid_BxS, s: UpdateSettings):
  """Frozen-parameter log-probs (old policy or reference), one micro-batch at a time."""
  model = nnx.merge(graphdef, params)
  m = s.micro_batch_size
  split = lambda x: x.reshape(-1, m, *x.shape[1:])  # noqa: E731
  logp = jax.lax.map(lambda xs: sequence_logprobs(model, *xs, temperature=s.temperature,
                                                  chunk_size=s.logprob_chunk, start=s.first_loss_slot),
                     (split(tokens_BxS), split(valid_BxS)))
  return jax.lax.stop_gradient(logp.reshape(tokens_BxS.shape))


def _loss_fn(params, graphdef, mb: UpdateBatch, s: UpdateSettings):
  model = nnx.merge(graphdef, params)
  logp_BxS, entropy_BxS = sequence_logprobs(model, mb.tokens_BxS, mb.valid_BxS, temperature=s.temperature,
                                            chunk_size=s.logprob_chunk, return_entropy=True,
                                            start=s.first_loss_slot)
  old_BxS = mb.old_logp_BxS if mb.old_logp_BxS is not None else jax.lax.stop_gradient(logp_BxS)
  loss, metrics = policy_loss(
      logp_BxS, old_BxS, mb.ref_logp_BxS, mb.adv_BxS, mb.loss_mask_BxS, clip_low=s.clip_low,
      clip_high=s.clip_high, kl_coef=mb.kl_weight_BxS if mb.ref_logp_BxS is not None else 0.0,
      kl_estimator=s.kl_estimator, agg_mode=s.loss_agg, norm_len=s.norm_len)
  metrics["entropy"] = jax.lax.stop_gradient(_masked_mean(entropy_BxS, mb.loss_mask_BxS))
  # Sampler vs trainer log-prob of the same tokens (exact for the first minibatch; `update`
  # replaces it with the pre-update value when old log-probs are computed separately).
  metrics["logp_gap"] = jax.lax.stop_gradient(
      _masked_mean(jnp.abs(logp_BxS - mb.sampler_logp_BxS), mb.loss_mask_BxS))
  metrics["loss"] = jax.lax.stop_gradient(loss)
  return loss, metrics


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _optimize(state: TrainState, graphdef, tx: optax.GradientTransformation, ub: UpdateBatch,
              key: jax.Array, s: UpdateSettings) -> tuple[TrainState, dict[str, jax.Array]]:
  """num_epochs passes over num_minibatches shuffled minibatches, each accumulated over micro-batches."""
  b, m, a = s.rollouts, s.micro_batch_size, s.accum_steps
  perms = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e), b) for e in range(s.num_epochs)])
  index_UxAxM = perms.reshape(s.num_epochs * s.num_minibatches, a, m)
  grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)

  def minibatch_step(state: TrainState, index_AxM):
    tokens_in_minibatch = jnp.maximum(ub.loss_mask_BxS[index_AxM.reshape(-1)].sum(), 1)

    def micro_step(grads, index_M):
      mb = jax.tree.map(lambda x: x[index_M], ub)
      (loss, metrics), g = grad_fn(state.params, graphdef, mb, s)
      # Re-weight so the accumulated gradient equals the minibatch-level aggregation exactly.
      weight = (mb.loss_mask_BxS.sum() / tokens_in_minibatch if s.loss_agg == "token_mean" else 1.0 / a)
      return jax.tree.map(lambda acc, x: acc + weight * x, grads, g), metrics

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads, metrics = jax.lax.scan(micro_step, zeros, index_AxM)
    finite = _all_finite(grads) & jnp.all(jnp.isfinite(metrics["loss"]))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    state = state.replace(params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state))
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["nonfinite"] = (~finite).astype(jnp.int32)
    return state, metrics

  state, metrics = jax.lax.scan(minibatch_step, state, index_UxAxM)
  skipped = metrics.pop("nonfinite").sum()
  metrics = jax.tree.map(jnp.mean, metrics)
  metrics["nonfinite_skipped"] = skipped
  state = state.replace(nonfinite_total=state.nonfinite_total + skipped,
                        nonfinite_streak=jnp.where(skipped > 0, state.nonfinite_streak + 1, 0))
  return state, metrics


def rollout_metrics(rollout: Rollout, rewards: Rewards, group_size: int) -> dict[str, jax.Array]:
  """Reward and length statistics of one batch of rollouts (metric names in docs/metrics.md)."""
  reward_B = rewards["reward"]
  lengths_B = rollout.response_valid_BxN.sum(axis=1)
  out = {"reward_mean": reward_B.mean(), "reward_std": reward_B.std(),
         "zero_std_group_frac": zero_std_group_fraction(reward_B.reshape(-1, group_size)),
         "completion_len_mean": lengths_B.mean(),
         "completion_clipped_frac": 1.0 - rollout.stopped_B.astype(jnp.float32).mean(),
         "generated_tokens": rollout.loss_mask_BxS.sum()}
  out.update({f"reward/{k}": v.mean() for k, v in rewards.items() if k != "reward"})
  return out


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """Compiled entry points; `fused` is the default, `sample` + `update` the split mode."""

  fused: Callable[[TrainState, Batch], tuple[TrainState, dict]]
  sample: Callable[[TrainState, Batch], Rollout]
  update: Callable[[TrainState, Batch, Rollout, Rewards], tuple[TrainState, dict]]


def make_train_step(settings: UpdateSettings, algorithm: Algorithm, graphdef: nnx.GraphDef,
                    tx: optax.GradientTransformation, state_sharding: Any = None,
                    batch_sharding: Any = None, replicated_sharding: Any = None) -> TrainStep:
  """Builds the pure train step and compiles it once (state donated).

  Args:
    settings: static update knobs.
    algorithm: method-specific rollout / rewards / advantages.
    graphdef: static NNX graph of the policy (from `create_train_state`).
    tx: optax optimizer.
    state_sharding: optional sharding pytree for TrainState (None: let jit decide / single device).
    batch_sharding: sharding for batch and rollout arrays (rows over the data axes).
    replicated_sharding: sharding for metrics (scalars).
  """
  s = settings

  def sample(state: TrainState, batch: Batch) -> Rollout:
    _, sample_key, _ = jax.random.split(state.rng, 3)
    return algorithm.rollout(nnx.merge(graphdef, state.params), batch, sample_key)

  def update(state: TrainState, batch: Batch, rollout: Rollout, rewards: Rewards):
    # Rollouts start with the prompt buffer, which never carries a loss (static width).
    s = dataclasses.replace(settings, first_loss_slot=batch["prompt_tokens_PxT"].shape[1])
    next_rng, _, shuffle_key = jax.random.split(state.rng, 3)
    adv_BxS, kl_weight_BxS, metrics = algorithm.advantages(rollout, rewards, state.step)
    old = ref = None
    if s.needs_old_logprobs:
      old = _microbatched_logprobs(graphdef, state.params, rollout.tokens_BxS, rollout.valid_BxS, s)
    if s.use_reference:
      ref = _microbatched_logprobs(graphdef, state.ref_params, rollout.tokens_BxS, rollout.valid_BxS, s)
    ub = UpdateBatch(tokens_BxS=rollout.tokens_BxS, valid_BxS=rollout.valid_BxS,
                     loss_mask_BxS=rollout.loss_mask_BxS, adv_BxS=adv_BxS, kl_weight_BxS=kl_weight_BxS,
                     sampler_logp_BxS=rollout.sampler_logp_BxS, old_logp_BxS=old, ref_logp_BxS=ref)
    state, update_metrics = _optimize(state, graphdef, tx, ub, shuffle_key, s)
    metrics.update(update_metrics)
    metrics.update(rollout_metrics(rollout, rewards, s.group_size))
    if old is not None:
      metrics["logp_gap"] = _masked_mean(jnp.abs(old - rollout.sampler_logp_BxS), rollout.loss_mask_BxS)
    return state.replace(step=state.step + 1, rng=next_rng), metrics

  def fused(state: TrainState, batch: Batch):
    rollout = sample(state, batch)
    return update(state, batch, rollout, algorithm.rewards(rollout, batch))

  def compile_(f, num_args: int, donate: tuple[int, ...], out_shardings):
    if state_sharding is None:
      return jax.jit(f, donate_argnums=donate)
    # Explicit in/out shardings: the state leaves the step laid out exactly as it entered, so the
    # next call reuses the same compiled program.
    return jax.jit(f, donate_argnums=donate, out_shardings=out_shardings,
                   in_shardings=(state_sharding,) + (batch_sharding,) * (num_args - 1))

  state_out = (state_sharding, replicated_sharding)
  return TrainStep(fused=compile_(fused, 2, (0,), state_out), sample=compile_(sample, 2, (), batch_sharding),
                   update=compile_(update, 4, (0,), state_out))
