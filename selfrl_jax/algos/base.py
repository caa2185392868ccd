"""The extension point every paper plugs into: phases over a typed step record, algorithm state.

An algorithm describes one RL iteration as an ordered tuple of phases over a `StepRecord`:

    phases = (Phase("rollout", self.rollout_phase),             # device: sample with the KV cache
              Phase("reward", self.reward_phase, host=True),     # host: verifiers, environments
              UPDATE)                                            # the shared policy update

Device phases are traced; host phases run on concrete arrays between compiled segments in split
mode (`rl.mode = "split"`) and are traced into the one compiled program in fused mode, where any
Python work they do must enter through `host_call` (a `jax.pure_callback`). Phases pass arrays to
each other only through the record, so both modes compute the same thing. `UPDATE` is the shared
update of `train/step.py` (advantages, old/reference log-probs, minibatched optimisation, metrics),
followed by `Algorithm.after_update`, which advances the algorithm's own state (`TrainState.algo_state`:
probes and their optimiser, a replay buffer, label budgets), checkpointed with everything else.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.rollouts.types import Rollout


@struct.dataclass
class Rewards:
  """Rewards of one batch of rollouts as named parts.

  Attributes:
    reward_B: the scalar reward advantages are computed from (float32 [B]).
    parts: further named parts, each with a shape suffix: per-turn rewards (`r1_B`), per-constraint
      verdicts (`met_BxK`), per-step polarity (`polarity_BxK`), answer clusters (`cluster_id_B`).
      Float parts are summarised into metrics as `reward/<name>` (and `reward/<name>/<k>` per column
      of a `_BxK` part); integer parts are carried, not summarised.
  """

  reward_B: jax.Array
  parts: dict[str, jax.Array] = struct.field(default_factory=dict)


@struct.dataclass
class TokenTerms:
  """What the algorithm hands the shared loss, per token of the rollout buffer [B, S].

  Attributes:
    adv_BxS: advantage of each token (0 off the loss mask).
    kl_weight_BxS: KL coefficient of each token (ignored without a reference model).
    objective_BxS: index into `Algorithm.objectives` choosing each token's surrogate loss
      (None: every token uses `objectives[0]`).
    metrics: scalar metrics of the advantage computation.
  """

  adv_BxS: jax.Array
  kl_weight_BxS: jax.Array
  objective_BxS: jax.Array | None = None
  metrics: dict[str, jax.Array] = struct.field(default_factory=dict)


@struct.dataclass
class StepRecord:
  """Everything the phases of one iteration produce, passed from phase to phase.

  Attributes:
    batch: the prompts.
    rollout: the rollout buffer the update trains on (set by a rollout phase).
    rewards: set by a reward phase.
    aux: algorithm-owned intermediate pytree (a KV cache to continue, host outputs such as
      observation ids, hindsight prompts, cluster ids); leaves with a leading dim are batch rows.
    metrics: scalar metrics added by any phase (merged into the step's metrics).
  """

  batch: PromptBatch
  rollout: Any = None
  rewards: Rewards | None = None
  aux: Any = None
  metrics: dict[str, jax.Array] = struct.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PhaseContext:
  """What a phase may read besides the record.

  Attributes:
    model: the policy (NNX module merged from the current parameters); None in host phases.
    key: this iteration's rollout PRNG key; phases needing more keys fold in their own constants.
    step: completed train steps (int32 scalar).
    algo_state: the algorithm's state pytree (None when it has none).
  """

  model: Any
  key: jax.Array
  step: jax.Array
  algo_state: Any = None


PhaseFn = Callable[[PhaseContext, StepRecord], StepRecord]


@dataclasses.dataclass(frozen=True)
class Phase:
  """One part of an iteration: `fn(ctx, record) -> record`.

  Attributes:
    name: for errors and timing.
    fn: the phase (None only for `UPDATE`, which the train step supplies).
    host: run on the host between compiled segments in split mode (see module docstring).
  """

  name: str
  fn: PhaseFn | None
  host: bool = False


UPDATE = Phase("update", None)


def host_call(fn: Callable[..., Any], result_shape: Any, *args: Any) -> Any:
  """Calls a numpy function from a phase in either mode.

  Traced (fused mode): `jax.pure_callback(fn, result_shape, *args)` inside the compiled program.
  Concrete (split mode host phases): `fn` on numpy copies of `args`, its result cast to the declared
  shapes and dtypes. `fn` must be deterministic given its inputs (the callback may be re-run or
  cached by XLA) and must not raise: guard it and count failures.

  Args:
    fn: `fn(*numpy_arrays) -> pytree of numpy arrays` matching `result_shape`.
    result_shape: pytree of `jax.ShapeDtypeStruct`.
    args: arrays (or pytrees of arrays).
  """
  if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args)):
    # Callbacks may receive jax Arrays: hand `fn` numpy, as in split mode.
    return jax.pure_callback(lambda *a: fn(*jax.tree.map(np.asarray, a)), result_shape, *args)
  out = fn(*jax.tree.map(np.asarray, args))
  return jax.tree.map(lambda o, s: jnp.asarray(np.asarray(o, s.dtype).reshape(s.shape)), out, result_shape)


class Algorithm:
  """Base of every paper's algorithm (a frozen dataclass that also defines `sampling` and `group_size`).

  Required: `rollout(model, batch, key) -> Rollout`, `rewards(rollout, batch) -> Rewards`,
  `advantages(rollout, rewards, step, algo_state) -> TokenTerms`, `response_slots`,
  `needs_reference`, `eval_outputs`, `eval_metrics`. Everything else has a default a paper
  overrides only when it needs the seam.
  """

  #: Surrogate losses (`algos.losses.SURROGATES` keys) that `TokenTerms.objective_BxS` indexes.
  objectives: tuple[str, ...] = ("ppo_clip",)
  #: Constants of those surrogates, e.g. (("dual_clip_c", 3.0), ("is_gamma", 1.0)).
  surrogate_kwargs: tuple[tuple[str, float], ...] = ()

  def phases(self) -> tuple[Phase, ...]:
    """The iteration: sample, score on the host, update."""
    return (Phase("rollout", self.rollout_phase), Phase("reward", self.reward_phase, host=True), UPDATE)

  def rollout_phase(self, ctx: PhaseContext, record: StepRecord) -> StepRecord:
    return record.replace(rollout=self.rollout(ctx.model, record.batch, ctx.key))

  def reward_phase(self, ctx: PhaseContext, record: StepRecord) -> StepRecord:
    del ctx
    return record.replace(rewards=self.rewards(record.rollout, record.batch))

  def init_state(self, key: jax.Array, model: Any) -> Any:
    """The algorithm's state pytree at step 0 (None: stateless); `model` is the policy (its
    `cfg` gives sizes such as d_model for probes on its hidden states)."""
    del key, model
    return None

  def after_update(self, algo_state: Any, record: StepRecord, step: jax.Array
                   ) -> tuple[Any, dict[str, jax.Array]]:
    """Advances the algorithm state after the policy update (traced; `step` is the pre-update count)."""
    del record, step
    return algo_state, {}

  def for_eval(self, sampling) -> Algorithm:
    """This algorithm with evaluation decoding and one sample per prompt."""
    return dataclasses.replace(self, sampling=sampling, group_size=1)

  def host_counters(self) -> dict[str, int]:
    """Counters of host work (reward failures, time-outs, parse failures), logged as `host/<name>`;
    by default those of the algorithm's `reward_fn` (a host reward exposes `counters`)."""
    return dict(getattr(getattr(self, "reward_fn", None), "counters", {}))
