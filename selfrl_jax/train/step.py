"""One RL iteration as a pure function over an algorithm's phases, compiled once.

    train_step = make_train_step(settings, algorithm, graphdef, tx)
    state, metrics = train_step(state, batch)     # settings.mode: "fused" or "split"

The algorithm declares the iteration as phases (algos/base.py): by default rollout (device) ->
reward (host) -> UPDATE. Fused mode traces every phase into one program (host phases through
`jax.pure_callback`); split mode compiles each run of consecutive device phases as one program and
runs host phases on the host between them. Both modes run the same functions with the same PRNG
keys, so they give identical results. UPDATE is shared by every paper module: per-token terms from
`Algorithm.advantages`, old / reference log-probs, num_epochs x num_minibatches optimizer updates
accumulated over micro-batches, non-finite guards, metrics, then `Algorithm.after_update` on the
algorithm state.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from selfrl_jax.algos.advantages import zero_std_group_fraction
from selfrl_jax.algos.base import UPDATE, Algorithm, PhaseContext, Rewards, StepRecord
from selfrl_jax.algos.logprobs import token_kl, token_logprobs
from selfrl_jax.algos.losses import FULL_KL, policy_loss
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.models.decoder import Decoder, forward_full
from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.train.state import TrainState

MODES = ("fused", "split")


@dataclasses.dataclass(frozen=True)
class UpdateSettings:
  """Static knobs of the shared update (from `config.rl`; see configs/common.py for meanings).

  `use_reference`: compute frozen-reference log-probs for the KL term; the per-token KL weights
  come from the Algorithm. `temperature` rescores rollouts that carry no per-token temperatures.
  `surrogate_kwargs`: constants of the algorithm's surrogate losses (e.g. dual_clip_c, is_gamma).
  `kl_estimator` / `kl_mode`: the KL term and where it enters, the loss or the return (`policy_loss`;
  which divergence each pair follows: `losses.kl_problem`, docs/algorithms.md).
  """

  rollouts: int               # rows of the update batch (set per call from the rollout: P G, or more rows per sample)
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
  loss_slots: tuple[int, ...] | None = None  # set per call from `Rollout.loss_slots`: the only slots projected
  mode: str = "fused"
  objectives: tuple[str, ...] = ("ppo_clip",)
  surrogate_kwargs: tuple[tuple[str, float], ...] = ()
  kl_mode: str = "loss"

  @property
  def full_kl(self) -> bool:
    """The exact KL over the vocabulary: the reference pass keeps hidden states, not log-probs."""
    return self.kl_estimator == FULL_KL

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"UpdateSettings.mode must be one of {MODES}, got {self.mode!r}.")

  @property
  def accum_steps(self) -> int:
    return self.rollouts // self.num_minibatches // self.micro_batch_size

  @property
  def needs_old_logprobs(self) -> bool:
    """With one epoch over one minibatch the ratio is 1 by construction: no extra forward pass."""
    return self.num_epochs * self.num_minibatches > 1


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
  temperature_BxS: jax.Array | None = None
  objective_BxS: jax.Array | None = None
  ref_hidden_BxSxD: jax.Array | None = None  # kl_estimator="full": the reference's final hidden states


def sequence_logprobs(model: Decoder, tokens_BxS, valid_BxS, *, temperature,
                      chunk_size: int | None, return_entropy: bool = False, start: int = 1,
                      kl_reference: tuple[jax.Array, jax.Array] | None = None,
                      slots: tuple[int, ...] | None = None):
  """Log-prob of every slot's token given the slots before it, trainer side.

  `temperature` is a float or per-slot `temperature_BxS` (each token rescored at the temperature it
  was sampled with). Slots before `start` get 0 (slot 0 has no context). The update passes the
  prompt width as `start`: prompt tokens are never in the loss, and skipping them skips their
  share of the vocabulary projection, the largest matmul at large vocab. With `kl_reference` =
  (the reference's `reference_hidden`, its output embedding), the exact per-slot KL(pi || ref) over
  the vocabulary (`token_kl`) comes last in the returned tuple. With static `slots` (sorted, all >= 1:
  `Rollout.loss_slots`), only those slots are projected and every other slot gets 0 (`start` is then
  unused): an agent episode's observations never reach the [.., V] logits.
  """
  hidden_BxSxD = forward_full(model, tokens_BxS, valid_BxS)
  if slots is None:
    take = lambda x: x[:, start:]                                            # noqa: E731
    predict = lambda x: x[:, start - 1:-1]                                   # noqa: E731
    back = lambda x: jnp.pad(x, ((0, 0), (start, 0)))                        # noqa: E731
  else:
    index_K = np.asarray(slots, np.int32)
    take = lambda x: x[:, index_K]                                           # noqa: E731
    predict = lambda x: x[:, index_K - 1]                                    # noqa: E731
    back = lambda x: jnp.zeros(tokens_BxS.shape, x.dtype).at[:, index_K].set(x)  # noqa: E731
  if not isinstance(temperature, (int, float)):
    temperature = take(temperature)
  out = token_logprobs(predict(hidden_BxSxD), model.output_embedding(), take(tokens_BxS),
                       chunk_size=chunk_size, temperature=temperature, return_entropy=return_entropy)
  out = out if return_entropy else (out,)
  if kl_reference is not None:
    ref_hidden_BxSxD, ref_w_out = kl_reference
    out = (*out, token_kl(predict(hidden_BxSxD), model.output_embedding(), take(ref_hidden_BxSxD),
                          ref_w_out, chunk_size=chunk_size, temperature=temperature))
  out = tuple(back(x) for x in out)
  return out if len(out) > 1 else out[0]


def reference_hidden(model: Decoder, tokens_BxS, valid_BxS, start: int) -> jax.Array:
  """The reference's final hidden states that predict each slot (slot s holds the state after slot
  s - 1; slots before `start` are 0), the input `sequence_logprobs(kl_reference=...)` takes."""
  hidden_BxSxD = forward_full(model, tokens_BxS, valid_BxS)
  return jnp.pad(hidden_BxSxD[:, start - 1:-1], ((0, 0), (start, 0), (0, 0)))


def _masked_mean(x_BxS, mask_BxS):
  return jnp.where(mask_BxS, x_BxS, 0.0).sum() / jnp.maximum(mask_BxS.sum(), 1)


def _microbatched_logprobs(graphdef, params, ub: UpdateBatch, s: UpdateSettings, hidden: bool = False):
  """Frozen-parameter log-probs (old policy or reference), one micro-batch at a time; with `hidden`,
  the `reference_hidden` states instead (the exact KL's reference side)."""
  model = nnx.merge(graphdef, params)
  m = s.micro_batch_size
  split = lambda x: x.reshape(-1, m, *x.shape[1:])  # noqa: E731
  if hidden:
    out = jax.lax.map(lambda xs: reference_hidden(model, xs[0], xs[1], s.first_loss_slot),
                      (split(ub.tokens_BxS), split(ub.valid_BxS)))
    return jax.lax.stop_gradient(out.reshape(*ub.tokens_BxS.shape, -1))
  temperature = s.temperature if ub.temperature_BxS is None else split(ub.temperature_BxS)
  logp = jax.lax.map(lambda xs: sequence_logprobs(model, xs[0], xs[1], temperature=xs[2],
                                                  chunk_size=s.logprob_chunk, start=s.first_loss_slot,
                                                  slots=s.loss_slots),
                     (split(ub.tokens_BxS), split(ub.valid_BxS), temperature))
  return jax.lax.stop_gradient(logp.reshape(ub.tokens_BxS.shape))


def _loss_fn(params, graphdef, mb: UpdateBatch, s: UpdateSettings, ref_w_out=None):
  model = nnx.merge(graphdef, params)
  temperature = s.temperature if mb.temperature_BxS is None else mb.temperature_BxS
  full_kl_BxS = None
  kl_reference = None if mb.ref_hidden_BxSxD is None else (mb.ref_hidden_BxSxD, ref_w_out)
  out = sequence_logprobs(model, mb.tokens_BxS, mb.valid_BxS, temperature=temperature,
                          chunk_size=s.logprob_chunk, return_entropy=True, start=s.first_loss_slot,
                          kl_reference=kl_reference, slots=s.loss_slots)
  logp_BxS, entropy_BxS = out[:2]
  if kl_reference is not None:
    full_kl_BxS = out[2]
  has_reference = mb.ref_logp_BxS is not None or full_kl_BxS is not None
  old_BxS = mb.old_logp_BxS if mb.old_logp_BxS is not None else jax.lax.stop_gradient(logp_BxS)
  surrogate = {}
  if mb.objective_BxS is not None or s.objectives != ("ppo_clip",):
    surrogate = dict(objective_BxT=mb.objective_BxS, objectives=s.objectives, **dict(s.surrogate_kwargs))
  loss, metrics = policy_loss(
      logp_BxS, old_BxS, mb.ref_logp_BxS, mb.adv_BxS, mb.loss_mask_BxS, clip_low=s.clip_low,
      clip_high=s.clip_high, kl_coef=mb.kl_weight_BxS if has_reference else 0.0,
      kl_estimator=s.kl_estimator, agg_mode=s.loss_agg, norm_len=s.norm_len, kl_mode=s.kl_mode,
      full_kl_BxT=full_kl_BxS, **surrogate)
  metrics["entropy"] = jax.lax.stop_gradient(_masked_mean(entropy_BxS, mb.loss_mask_BxS))
  # Sampler vs trainer log-prob of the same tokens (exact for the first minibatch; `update`
  # replaces it with the pre-update value when old log-probs are computed separately).
  metrics["logp_gap"] = jax.lax.stop_gradient(
      _masked_mean(jnp.abs(logp_BxS - mb.sampler_logp_BxS), mb.loss_mask_BxS))
  metrics["loss"] = jax.lax.stop_gradient(loss)
  return loss, metrics


def _optimize(state: TrainState, graphdef, tx: optax.GradientTransformation, ub: UpdateBatch,
              key: jax.Array, s: UpdateSettings) -> tuple[TrainState, dict[str, jax.Array]]:
  """num_epochs passes over num_minibatches shuffled minibatches, each accumulated over micro-batches."""
  b, m, a = s.rollouts, s.micro_batch_size, s.accum_steps
  perms = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e), b) for e in range(s.num_epochs)])
  index_UxAxM = perms.reshape(s.num_epochs * s.num_minibatches, a, m)
  grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)
  ref_w_out = None
  if ub.ref_hidden_BxSxD is not None:  # the exact KL projects the reference's hidden states itself
    ref_w_out = jax.lax.stop_gradient(nnx.merge(graphdef, state.ref_params).output_embedding())

  def minibatch_step(state: TrainState, index_AxM):
    tokens_in_minibatch = jnp.maximum(ub.loss_mask_BxS[index_AxM.reshape(-1)].sum(), 1)

    def micro_step(grads, index_M):
      mb = jax.tree.map(lambda x: x[index_M], ub)
      (loss, metrics), g = grad_fn(state.params, graphdef, mb, s, ref_w_out)
      # Re-weight so the accumulated gradient equals the minibatch-level aggregation exactly.
      weight = (mb.loss_mask_BxS.sum() / tokens_in_minibatch if s.loss_agg == "token_mean" else 1.0 / a)
      return jax.tree.map(lambda acc, x: acc + weight * x, grads, g), metrics

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads, metrics = jax.lax.scan(micro_step, zeros, index_AxM)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    # The update is checked too, not only the loss and gradients: finite gradients on a damaged
    # optimizer state (a NaN Adam moment restored from a bad checkpoint) give NaN weights. One norm
    # per tree: per-leaf isfinite checks of the new parameters and optimizer state made XLA compile
    # a 30-layer step ~7x longer. A norm is non-finite iff some element is (or it overflows).
    finite = (jnp.all(jnp.isfinite(metrics["loss"])) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.tree.norm(updates)))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    state = state.replace(params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state))
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics["grad_norm"] = grad_norm
    metrics["nonfinite"] = (~finite).astype(jnp.int32)
    return state, metrics

  state, metrics = jax.lax.scan(minibatch_step, state, index_UxAxM)
  skipped = metrics.pop("nonfinite").sum()
  metrics = jax.tree.map(jnp.mean, metrics)
  metrics["nonfinite_skipped"] = skipped
  state = state.replace(nonfinite_total=state.nonfinite_total + skipped,
                        nonfinite_streak=jnp.where(skipped > 0, state.nonfinite_streak + 1, 0))
  return state, metrics


def _part_metrics(name: str, value: jax.Array) -> dict[str, jax.Array]:
  """`reward/<name>` summaries of a float reward part: its mean, and per column of a `_BxK` part."""
  if not jnp.issubdtype(value.dtype, jnp.floating) and value.dtype != jnp.bool_:
    return {}
  base, _, dims = name.rpartition("_")
  base = base if dims and dims[0] == "B" else name
  value = value.astype(jnp.float32)
  out = {f"reward/{base}": value.mean()}
  if value.ndim == 2:
    out.update({f"reward/{base}/{k}": value[:, k].mean() for k in range(value.shape[1])})
  return out


def rollout_metrics(rollout: Rollout, rewards: Rewards, group_size: int) -> dict[str, jax.Array]:
  """Reward and length statistics of one batch of rollouts (metric names in docs/metrics.md)."""
  reward_B = rewards.reward_B
  lengths_B = rollout.response_valid_BxN.sum(axis=1)
  out = {"reward_mean": reward_B.mean(), "reward_std": reward_B.std(),
         "zero_std_group_frac": zero_std_group_fraction(reward_B.reshape(-1, group_size)),
         "completion_len_mean": lengths_B.mean(),
         "completion_clipped_frac": 1.0 - rollout.stopped_B.astype(jnp.float32).mean(),
         "generated_tokens": rollout.loss_mask_BxS.sum()}
  for name, value in rewards.parts.items():
    out.update(_part_metrics(name, value))
  return out


def _context(graphdef, state: TrainState, model: bool = True) -> PhaseContext:
  # The iteration's keys: (next rng, rollout key, shuffle key), the split every version used.
  _, rollout_key, _ = jax.random.split(state.rng, 3)
  return PhaseContext(model=nnx.merge(graphdef, state.params) if model else None, key=rollout_key,
                      step=state.step, algo_state=state.algo_state)


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """The compiled iteration. `step(state, batch)` runs it in `mode`.

  Attributes:
    mode: "fused" or "split".
    fused: the whole iteration as one compiled program (state donated).
    segments: split mode: ("device", compiled fn), ("host", phase) and last ("update", compiled fn)
      in order; the "update" segment holds UPDATE, returns (state, record) and donates the state,
      the others return the record.
    segment_names: the phase names each segment runs, joined by "+" (e.g. "rollout", "reward").
  """

  mode: str
  fused: Callable[[TrainState, PromptBatch], tuple[TrainState, dict]]
  segments: tuple[tuple[str, Any], ...]
  graphdef: Any
  segment_names: tuple[str, ...]

  def __call__(self, state: TrainState, batch) -> tuple[TrainState, dict]:
    if self.mode == "fused":
      return self.fused(state, PromptBatch.of(batch))
    return self.split(state, batch)

  def split(self, state: TrainState, batch, seconds: dict[str, float] | None = None,
            ) -> tuple[TrainState, dict]:
    """The iteration in split mode. With `seconds` (a dict to fill), each segment's wall time goes
    under its `segment_names` entry, waiting for its results before the next starts (benchmarks)."""
    record = StepRecord(batch=PromptBatch.of(batch))
    for (kind, fn), name in zip(self.segments, self.segment_names):
      start = time.perf_counter()
      if kind == "host":
        record = fn.fn(_context(self.graphdef, state, model=False), record)
      elif kind == "update":
        state, record = fn(state, record)
      else:
        record = fn(state, record)
      if seconds is not None:
        jax.block_until_ready((state, record))
        seconds[name] = time.perf_counter() - start
    return state, record.metrics

  def compilations(self) -> int:
    """Programs compiled so far (1 per compiled piece after the first iteration: nothing recompiles)."""
    if self.mode == "fused":
      return self.fused._cache_size()
    return sum(fn._cache_size() for kind, fn in self.segments if kind != "host")


def make_train_step(settings: UpdateSettings, algorithm: Algorithm, graphdef: nnx.GraphDef,
                    tx: optax.GradientTransformation, state_sharding: Any = None,
                    batch_sharding: Any = None, replicated_sharding: Any = None) -> TrainStep:
  """Builds the pure iteration from `algorithm.phases()` and compiles it (state donated).

  Args:
    settings: static update knobs, including `mode`.
    algorithm: the method (algos/base.py): phases, rewards, per-token terms, algorithm state.
    graphdef: static NNX graph of the policy (from `create_train_state`).
    tx: optax optimizer.
    state_sharding: optional sharding pytree for TrainState (None: let jit decide / single device).
    batch_sharding: sharding of batch rows (leaves with a leading dim); scalars are replicated.
    replicated_sharding: sharding for metrics (scalars).

  Raises:
    ValueError: the phases do not end with exactly one UPDATE.
  """
  phases = tuple(algorithm.phases())
  if phases.count(UPDATE) != 1 or phases[-1] != UPDATE:
    raise ValueError(f"{type(algorithm).__name__}.phases() must end with UPDATE (exactly once); got "
                     f"{[p.name for p in phases]}.")

  def update(state: TrainState, record: StepRecord) -> tuple[TrainState, StepRecord]:
    batch, rollout, rewards = record.batch, record.rollout, record.rewards
    # Rollouts start with the prompt buffer, which never carries a loss (static width). A layout may
    # have several rows per prompt x sample (an agent episode with a history window: one per step).
    s = dataclasses.replace(settings, first_loss_slot=batch.prompt_width, loss_slots=rollout.loss_slots,
                            rollouts=rollout.batch_size)
    next_rng, _, shuffle_key = jax.random.split(state.rng, 3)
    terms = algorithm.advantages(rollout, rewards, state.step, state.algo_state)
    ub = UpdateBatch(tokens_BxS=rollout.tokens_BxS, valid_BxS=rollout.valid_BxS,
                     loss_mask_BxS=rollout.loss_mask_BxS, adv_BxS=terms.adv_BxS,
                     kl_weight_BxS=terms.kl_weight_BxS, sampler_logp_BxS=rollout.sampler_logp_BxS,
                     old_logp_BxS=None, ref_logp_BxS=None, temperature_BxS=rollout.temperature_BxS,
                     objective_BxS=terms.objective_BxS)
    old = _microbatched_logprobs(graphdef, state.params, ub, s) if s.needs_old_logprobs else None
    ref = ref_hidden = None
    if s.use_reference:
      ref_hidden = _microbatched_logprobs(graphdef, state.ref_params, ub, s, hidden=True) if s.full_kl else None
      ref = None if s.full_kl else _microbatched_logprobs(graphdef, state.ref_params, ub, s)
    ub = ub.replace(old_logp_BxS=old, ref_logp_BxS=ref, ref_hidden_BxSxD=ref_hidden)
    pre_update_step = state.step
    state, update_metrics = _optimize(state, graphdef, tx, ub, shuffle_key, s)
    metrics = {**record.metrics, **terms.metrics, **update_metrics,
               **rollout_metrics(rollout, rewards, s.group_size)}
    if old is not None:
      metrics["logp_gap"] = _masked_mean(jnp.abs(old - rollout.sampler_logp_BxS), rollout.loss_mask_BxS)
    algo_state, algo_metrics = algorithm.after_update(state.algo_state, record, pre_update_step)
    metrics.update(algo_metrics)
    state = state.replace(step=state.step + 1, rng=next_rng, algo_state=algo_state)
    return state, record.replace(metrics=metrics)

  def run_device(run: tuple, state: TrainState, record: StepRecord):
    ctx = _context(graphdef, state)
    for phase in run:
      if phase == UPDATE:
        return update(state, record)
      record = phase.fn(ctx, record)
    return record

  def fused(state: TrainState, batch: PromptBatch):
    state, record = run_device(phases, state, StepRecord(batch=batch))
    return state, record.metrics

  def record_shardings(record):
    if batch_sharding is None:
      return None
    return jax.tree.map(lambda x: batch_sharding if x.ndim else replicated_sharding, record)

  def compile_(f, donate: bool, returns_state: bool):
    if state_sharding is None:
      return jax.jit(f, donate_argnums=(0,) if donate else ())
    # Explicit shardings: the state leaves a program laid out exactly as it entered, so the next
    # call reuses the same compiled program. Record shardings follow its leaves (rows or scalars).
    return _ShardedJit(f, donate, returns_state, state_sharding, record_shardings)

  if state_sharding is not None:
    fused_fn = jax.jit(fused, donate_argnums=(0,), out_shardings=(state_sharding, replicated_sharding),
                       in_shardings=(state_sharding, batch_sharding))
  else:
    fused_fn = jax.jit(fused, donate_argnums=(0,))

  segments, names, run = [], [], []
  for phase in phases:
    if phase.host:
      if run:
        segments.append(("device", compile_(lambda st, rec, r=tuple(run): run_device(r, st, rec), False, False)))
        names.append("+".join(p.name for p in run))
        run = []
      segments.append(("host", phase))
      names.append(phase.name)
    else:
      run.append(phase)
  segments.append(("update", compile_(lambda st, rec, r=tuple(run): run_device(r, st, rec), True, True)))
  names.append("+".join(p.name for p in run))
  return TrainStep(mode=settings.mode, fused=fused_fn, segments=tuple(segments), graphdef=graphdef,
                   segment_names=tuple(names))


class _ShardedJit:
  """`jax.jit` with shardings derived from the record's structure on first call (one program per
  record structure, which is fixed after the first iteration)."""

  def __init__(self, f, donate: bool, returns_state: bool, state_sharding, record_shardings):
    self._f, self._donate, self._returns_state = f, donate, returns_state
    self._state_sharding, self._record_shardings = state_sharding, record_shardings
    self._jitted = None

  def __call__(self, state, record):
    if self._jitted is None:
      out = jax.eval_shape(self._f, state, record)
      out_shardings = ((self._state_sharding, self._record_shardings(out[1])) if self._returns_state
                       else self._record_shardings(out))
      self._jitted = jax.jit(self._f, donate_argnums=(0,) if self._donate else (),
                             in_shardings=(self._state_sharding, self._record_shardings(record)),
                             out_shardings=out_shardings)
    return self._jitted(state, record)

  def _cache_size(self) -> int:
    return 0 if self._jitted is None else self._jitted._cache_size()
