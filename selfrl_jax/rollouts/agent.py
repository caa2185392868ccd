"""Multi-step agent episodes in one KV cache, token in / token out (Self-Guide, self_guide.md §2).

    rollout = agent_episode(model, prompts_PxT, valid_PxT, env, key, params, group_size=G,
                            max_steps=H, end_ids=end_ids, guide_close_ids=tok.encode("</guide>"))
    rollout.tokens_BxS         # [prompt | y_1 | end o_1 | y_2 | end o_2 | ... | y_H], holes where unused
    rollout.turn_id_BxS        # t on the tokens generated at step t (1-based), 0 on context
    rollout.extras.step_tokens_BxHxN, .success_B, .progress_BxH, ...

At each step the policy writes one segment y_t of at most N = `params.max_new_tokens` ids (with
guidance: "<guide>[LABEL] ...</guide><action>...</action>", ending with a stop id); the environment
parses the action from the ids after the guidance segment and returns an observation o_t as ids,
which are appended to the same cache (after the end-of-turn ids where y_t was truncated,
`segments.after_turn`) before y_{t+1} is sampled. Rows whose episode has ended generate nothing more
(`continue_generation(active_B=...)`), so their remaining slots are holes. The whole episode is one
`lax.scan` over steps: the environment is traced into it (JAX) or called back (`envs.base.CallbackEnv`).

The cache holds the whole episode: capacity T + H N + (H - 1)(E + O) slots, static from the config.
The trainer's forward pass over `tokens_BxS` sees exactly what the sampler saw (holes are skipped
by positions and attention), so the sampler's log-probs are the trainer's at the same parameters.
There is no history window: a layout longer than the model's `max_position` is refused when the
episode is traced (a window would rebuild the cache from the prompt and the last k steps, and the
update would then need one row per step with its own context; not implemented).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from selfrl_jax.models.decoder import Decoder
from selfrl_jax.rollouts.segments import Segment, after_turn, context, pack_segments, trained_slots
from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.sampling.sampler import SampleOutput, SamplingParams, continue_generation, generate


@struct.dataclass
class AgentExtras:
  """Per-step record of an episode (H = max_steps, N = ids per step).

  Attributes:
    step_tokens_BxHxN: ids generated at each step (pad where not generated).
    step_valid_BxHxN: ids actually generated.
    guide_BxHxN: generated ids of the guidance segment (up to and including the guide-close id;
      all False without guidance).
    guide_BxS: the same ids in the rollout's slot layout.
    step_taken_BxH: the step was played (the episode had not ended before it).
    progress_BxH: the environment's ground-truth progress of each step's action (+1 / 0 / -1).
    invalid_BxH: the step's action was invalid.
    env_reward_B: sum of the environment's step rewards.
    success_B, score_B: at the end of the episode (score normalised to [0, 1]).
    failed_B: the environment failed on the row (the episode was ended there).
    num_steps_B: steps played.
  """

  step_tokens_BxHxN: jax.Array
  step_valid_BxHxN: jax.Array
  guide_BxHxN: jax.Array
  guide_BxS: jax.Array
  step_taken_BxH: jax.Array
  progress_BxH: jax.Array
  invalid_BxH: jax.Array
  env_reward_B: jax.Array
  success_B: jax.Array
  score_B: jax.Array
  failed_B: jax.Array
  num_steps_B: jax.Array


@struct.dataclass
class AgentRollout(Rollout):
  """A Rollout over a whole episode that also carries `AgentExtras`. Its `response_*` fields hold the
  last step's slots (empty for episodes that ended earlier), which is what the shared
  `completion_len_mean` metric measures for agents; `agent/episode_len` counts the steps."""

  extras: AgentExtras = None  # a default only because Rollout ends with one; always set


def guide_mask(tokens_BxN: jax.Array, valid_BxN: jax.Array, guide_close_ids: Sequence[int] | None) -> jax.Array:
  """Ids of each row up to and including the first complete `guide_close_ids` sequence (one id for a
  character tokenizer, e.g. three for "</guide>" in a BPE vocabulary). All False when None or empty;
  all of a row's ids when the sequence never appears: a step that never closes its guidance has no
  action part, so all of it counts as guidance. Generated ids are contiguous from slot 0."""
  if not guide_close_ids:
    return jnp.zeros(tokens_BxN.shape, bool)
  n = tokens_BxN.shape[1]
  closes_at_BxN = valid_BxN
  for back, close_id in enumerate(reversed(tuple(guide_close_ids))):   # the id `back` slots before the end
    earlier_BxN = jnp.pad(tokens_BxN, ((0, 0), (back, 0)), constant_values=-1)[:, :n]
    closes_at_BxN = closes_at_BxN & (earlier_BxN == close_id)
  closed_before_BxN = jnp.cumsum(closes_at_BxN, axis=1) - closes_at_BxN
  return valid_BxN & (closed_before_BxN == 0)


def _env_view(out: SampleOutput, guide_close_ids: Sequence[int] | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  guide_BxN = guide_mask(out.tokens_BxN, out.valid_BxN, guide_close_ids)
  return out.tokens_BxN, out.valid_BxN & ~guide_BxN, guide_BxN


def agent_episode(model: Decoder, prompt_tokens_PxT: jax.Array, prompt_valid_PxT: jax.Array, env: Any,
                  key: jax.Array, params: SamplingParams, group_size: int, max_steps: int,
                  end_ids: Sequence[int], guide_close_ids: Sequence[int] | None, batch: Any = None) -> AgentRollout:
  """Plays P * G episodes of at most `max_steps` steps (module docstring).

  Args:
    model: the policy.
    prompt_tokens_PxT, prompt_valid_PxT: left-padded task prompts (task + first observation).
    env: an `envs.base.Env` (reset from `batch`, the prompts' PromptBatch).
    key: PRNG key (split into reset, sampling and environment keys).
    params: decoding settings of one step (N = max_new_tokens ids, stop ids end the step).
    group_size: episodes per task (G), rows prompt-major.
    max_steps: H, the most steps an episode plays.
    end_ids: ids closing a truncated step before the observation (`segments.turn_end_ids`).
    guide_close_ids: the ids ending the guidance segment (the environment sees only what follows
      them); None: the policy writes actions only.
    batch: the PromptBatch the environment resets from.

  Returns:
    AgentRollout with loss on every generated id (guidance and action), none on prompt or observations.
  """
  key_reset, key_sample, key_env = jax.random.split(key, 3)
  between_len = len(end_ids) + env.obs_len
  extra_capacity = (max_steps - 1) * (between_len + params.max_new_tokens)   # slots after step 1
  positions = prompt_tokens_PxT.shape[1] + params.max_new_tokens + extra_capacity
  if positions > model.cfg.max_position:
    raise ValueError(
        f"agent_episode: an episode takes {positions} positions (prompt {prompt_tokens_PxT.shape[1]} + {max_steps} steps "
        f"x {params.max_new_tokens} ids + {max_steps - 1} x ({len(end_ids)} end + {env.obs_len} observation ids)), "
        f"more than the model's max_position {model.cfg.max_position}. There is no history window: lower the "
        "steps (max_steps), the ids per step (max_new_tokens) or per observation (obs_len).")
  out1 = generate(model, prompt_tokens_PxT, prompt_valid_PxT, jax.random.fold_in(key_sample, 0), params,
                  group_size=group_size, extra_capacity=extra_capacity)
  state = env.reset(batch, group_size, key_reset)
  tokens1, action_valid1, guide1 = _env_view(out1, guide_close_ids)
  state, step1 = env.step(state, tokens1, action_valid1, jax.random.fold_in(key_env, 0))

  def play(carry, t):
    cache, state, prev_stopped_B, prev = carry
    active_B = ~prev.done_B
    between = after_turn(prev_stopped_B, end_ids, prev.obs_BxO, prev.obs_valid_BxO)
    between_valid = between.valid_BxN & active_B[:, None]
    out = continue_generation(model, cache, between.tokens_BxN, between_valid, jax.random.fold_in(key_sample, t),
                              params, active_B=active_B)
    tokens, action_valid, guide = _env_view(out, guide_close_ids)
    state, step = env.step(state, tokens, action_valid, jax.random.fold_in(key_env, t))
    # A row that ended keeps its final flags; its later "steps" report nothing.
    step = step.replace(success_B=jnp.where(active_B, step.success_B, prev.success_B),
                        score_B=jnp.where(active_B, step.score_B, prev.score_B),
                        failed_B=step.failed_B & active_B, done_B=step.done_B | ~active_B)
    ys = (between.tokens_BxN, between_valid, out.tokens_BxN, out.valid_BxN, out.logp_BxN, out.stopped_B, guide,
          active_B, step)
    return (out.cache, state, out.stopped_B, step), ys

  init = (out1.cache, state, out1.stopped_B, step1)
  (_, _, _, last), ys = jax.lax.scan(play, init, jnp.arange(1, max_steps))
  between_tokens, between_valid, tokens, valid, logp, stopped, guide, active, steps = ys

  prompt_BxT = jnp.repeat(prompt_tokens_PxT, group_size, axis=0)
  prompt_valid_BxT = jnp.repeat(prompt_valid_PxT.astype(bool), group_size, axis=0)
  temperature = params.temperature or 1.0
  segments = [context(prompt_BxT, prompt_valid_BxT),
              Segment(out1.tokens_BxN, out1.valid_BxN, out1.logp_BxN, out1.stopped_B, turn=1,
                      temperature=temperature, trained=True)]
  for t in range(max_steps - 1):   # layout assembly at trace time: H static slices
    segments += [context(between_tokens[t], between_valid[t]),
                 Segment(tokens[t], valid[t], logp[t], stopped[t], turn=t + 2, temperature=temperature, trained=True)]
  # Observations and the prompt are most of an episode's slots: the update projects only the steps'.
  rollout = pack_segments(segments).replace(loss_slots=trained_slots(segments))
  guide_BxS = jnp.concatenate(
      [jnp.zeros(prompt_BxT.shape, bool), guide1]
      + [x for t in range(max_steps - 1) for x in (jnp.zeros(between_tokens[t].shape, bool), guide[t])], axis=1)

  stack = lambda first, rest: jnp.concatenate([first[:, None], jnp.moveaxis(rest, 0, 1)], axis=1)  # noqa: E731
  all_steps = jax.tree.map(stack, step1, steps)
  b = out1.tokens_BxN.shape[0]
  taken_BxH = stack(jnp.ones((b,), bool), active)
  extras = AgentExtras(
      step_tokens_BxHxN=stack(out1.tokens_BxN, tokens), step_valid_BxHxN=stack(out1.valid_BxN, valid),
      guide_BxHxN=stack(guide1, guide), guide_BxS=guide_BxS, step_taken_BxH=taken_BxH,
      progress_BxH=jnp.where(taken_BxH, all_steps.progress_B, 0).astype(jnp.int8),
      invalid_BxH=all_steps.invalid_B & taken_BxH,
      env_reward_B=jnp.where(taken_BxH, all_steps.reward_B, 0.0).sum(axis=1),
      success_B=last.success_B, score_B=last.score_B, failed_B=all_steps.failed_B.any(axis=1),
      num_steps_B=taken_BxH.sum(axis=1, dtype=jnp.int32))
  fields = {name: getattr(rollout, name) for name in Rollout.__dataclass_fields__}
  return AgentRollout(**fields, extras=extras)

