"""TrainState (a pure pytree) and the optimizer built from the config."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from selfrl_jax.models.decoder import Decoder

_ALGO_STATE_STREAM = 0x414C47  # fold_in constant of the algorithm-state init key ("ALG")


@struct.dataclass
class TrainState:
  """Everything one RL iteration reads and writes.

  Attributes:
    step: completed train steps (int32 scalar).
    params: policy parameters (nnx.State of Param leaves).
    opt_state: optax state for `params`.
    rng: PRNG key, split once per step.
    nonfinite_streak: consecutive steps whose update was skipped for a non-finite loss/gradient.
    nonfinite_total: all such skipped updates (minibatch count).
    ref_params: frozen reference policy for the KL term (None when no term needs it). Not
      checkpointed: it is rebuilt from the base model on resume.
    algo_state: the algorithm's own state pytree (`Algorithm.init_state`; probes, buffers, budgets),
      an argument of the compiled step, checkpointed and sharded with the rest (None: stateless).
  """

  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array
  nonfinite_streak: jax.Array
  nonfinite_total: jax.Array
  ref_params: nnx.State | None = None
  algo_state: Any = None


def make_optimizer(optim_cfg) -> optax.GradientTransformation:
  """Adam(W) with global-norm clipping and a linear warm-up, from `config.optim`."""
  schedule = optax.linear_schedule(0.0, optim_cfg.learning_rate, max(1, optim_cfg.warmup_steps)) \
      if optim_cfg.warmup_steps > 0 else optim_cfg.learning_rate
  parts = []
  if optim_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                           weight_decay=optim_cfg.weight_decay))
  return optax.chain(*parts)


def create_train_state(model: Decoder, tx: optax.GradientTransformation, seed: int,
                       keep_reference: bool, algorithm=None) -> tuple[nnx.GraphDef, TrainState]:
  """Splits the model once; returns the static graph definition and the initial state.

  `algorithm.init_state` (when given) gets its own key derived from `seed`, so adding algorithm
  state never changes the policy's PRNG stream.
  """
  graphdef, params = nnx.split(model, nnx.Param)
  ref = jax.tree.map(jnp.copy, params) if keep_reference else None
  algo_state = None
  if algorithm is not None:
    algo_state = algorithm.init_state(jax.random.fold_in(jax.random.key(seed), _ALGO_STATE_STREAM), model)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.key(seed), nonfinite_streak=jnp.zeros((), jnp.int32),
                     nonfinite_total=jnp.zeros((), jnp.int32), ref_params=ref, algo_state=algo_state)
  return graphdef, state
