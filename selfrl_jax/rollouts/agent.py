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
A layout longer than the model's `max_position` is refused when the episode is traced.

**History window** (`history_window = k >= 1`, self_guide.md §3 "Recent history (last k steps)"): the
cache is rebuilt at every step. Step t is sampled from a fresh prefill of
[prompt | y_{t-k} end o_{t-k} | ... | y_{t-1} end o_{t-1}] (the window buffer shifts one step
block of N + E + O slots in per step; steps before the first are holes; the context is left-padded
like any prompt, holes first, so a real id precedes y_t), so the context stays
T + k (N + E + O) slots however long the episode. The trainer must see each step's own context, so
the rollout has one row per (episode, step), episode-major (row b H + t - 1 holds step t of
episode b; `AgentExtras.rows_per_episode` = H): [that step's context | y_t], holes for steps not
played. Per-episode records (`extras`) keep B rows; algorithms map them to rows with
`AgentExtras.per_row`. With k >= H - 1 the window holds the whole history and the steps are the
one-cache episode's (tested, greedy, token for token).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from selfrl_jax.envs.base import EnvStep
from selfrl_jax.models.decoder import Decoder
from selfrl_jax.rollouts.segments import after_turn, context, generated, pack_segments, trained_slots
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
    rows_per_episode: (static) rollout rows per episode: 1 (one cache), or H with a history window
      (rows episode-major, one per step).
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
  rows_per_episode: int = struct.field(pytree_node=False, default=1)

  def per_row(self, x_B: jax.Array) -> jax.Array:
    """A per-episode array [B, ...] on the rollout's rows [B * rows_per_episode, ...]."""
    return jnp.repeat(x_B, self.rows_per_episode, axis=0)


@struct.dataclass
class AgentRollout(Rollout):
  """A Rollout over a whole episode that also carries `AgentExtras`. Its `response_*` fields hold the
  last step's slots (empty for episodes that ended earlier), or with a history window each row's
  step (empty for steps not played), which is what the shared `completion_len_mean` metric measures
  for agents; `agent/episode_len` counts the steps."""

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
                  end_ids: Sequence[int], guide_close_ids: Sequence[int] | None, batch: Any = None,
                  history_window: int = 0) -> AgentRollout:
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
    history_window: 0: the whole episode in one KV cache, one row per episode; k >= 1: each step
      sampled from the prompt and the last k steps, one row per (episode, step). k is capped at
      H - 1 (a larger window would only add holes).

  Returns:
    AgentRollout with loss on every generated id (guidance and action), none on prompt or observations.

  Raises:
    ValueError: the layout (the episode, or with a window one step's context and ids) needs more
      positions than the model's `max_position`; `history_window` < 0.
  """
  if history_window < 0:
    raise ValueError(f"agent_episode: history_window must be >= 0 (0: whole history), got {history_window}.")
  history_window = min(history_window, max_steps - 1)   # a window never holds more than the steps before the last
  block_len = params.max_new_tokens + len(end_ids) + env.obs_len    # one step and the observation after it
  t, n = prompt_tokens_PxT.shape[1], params.max_new_tokens
  if history_window:
    positions = t + history_window * block_len + n
    what = f"a step takes {positions} positions (prompt {t} + history_window {history_window} x {block_len} + {n} ids)"
  else:
    positions = t + max_steps * n + (max_steps - 1) * (block_len - n)
    what = (f"an episode takes {positions} positions (prompt {t} + {max_steps} steps x {n} ids + {max_steps - 1} x "
            f"({len(end_ids)} end + {env.obs_len} observation ids))")
  if positions > model.cfg.max_position:
    raise ValueError(
        f"agent_episode: {what}, more than the model's max_position {model.cfg.max_position}. Lower the steps "
        "(max_steps) or set a history window, the ids per step (max_new_tokens) or per observation (obs_len).")
  play = _windowed_steps if history_window else _one_cache_steps
  keys = jax.random.split(key, 3)
  segments_H, steps, guide_HxBxN, active_HxB = play(model, prompt_tokens_PxT, prompt_valid_PxT, env, keys, params,
                                                    group_size, max_steps, end_ids, guide_close_ids, batch,
                                                    history_window)
  if history_window:   # one row per (episode, step), episode-major: [B, H, ...] -> [B H, ...]
    rows = [pack_segments(segs) for segs in segments_H]
    rollout = jax.tree.map(lambda *xs: jnp.stack(xs, axis=1).reshape(-1, *xs[0].shape[1:]), *rows)
    rollout = rollout.replace(loss_slots=trained_slots(segments_H[0]))
    guide_BxS = jnp.concatenate([jnp.zeros((*active_HxB.shape[::-1], rows[0].tokens_BxS.shape[1] - n), bool),
                                 jnp.moveaxis(guide_HxBxN, 0, 1)], axis=2).reshape(-1, rows[0].tokens_BxS.shape[1])
  else:
    segments = [seg for segs in segments_H for seg in segs]
    # Observations and the prompt are most of an episode's slots: the update projects only the steps'.
    rollout = pack_segments(segments).replace(loss_slots=trained_slots(segments))
    guide_BxS = jnp.concatenate(
        [x for h, segs in enumerate(segments_H) for x in
         [jnp.zeros(seg.tokens_BxN.shape, bool) for seg in segs[:-1]] + [guide_HxBxN[h]]], axis=1)

  by_step = lambda x_HxB: jnp.moveaxis(x_HxB, 0, 1)  # noqa: E731
  taken_BxH = by_step(active_HxB)
  all_steps = jax.tree.map(by_step, steps)
  last = jax.tree.map(lambda x: x[-1], steps)
  extras = AgentExtras(
      step_tokens_BxHxN=jnp.stack([segs[-1].tokens_BxN for segs in segments_H], axis=1),
      step_valid_BxHxN=jnp.stack([segs[-1].valid_BxN for segs in segments_H], axis=1),
      guide_BxHxN=by_step(guide_HxBxN), guide_BxS=guide_BxS, step_taken_BxH=taken_BxH,
      progress_BxH=jnp.where(taken_BxH, all_steps.progress_B, 0).astype(jnp.int8),
      invalid_BxH=all_steps.invalid_B & taken_BxH,
      env_reward_B=jnp.where(taken_BxH, all_steps.reward_B, 0.0).sum(axis=1),
      success_B=last.success_B, score_B=last.score_B, failed_B=all_steps.failed_B.any(axis=1),
      num_steps_B=taken_BxH.sum(axis=1, dtype=jnp.int32), rows_per_episode=max_steps if history_window else 1)
  fields = {name: getattr(rollout, name) for name in Rollout.__dataclass_fields__}
  return AgentRollout(**fields, extras=extras)


def _ended_rows_keep(step, prev, active_B):
  """A row that ended keeps its final flags; its later "steps" report nothing."""
  return step.replace(success_B=jnp.where(active_B, step.success_B, prev.success_B),
                      score_B=jnp.where(active_B, step.score_B, prev.score_B),
                      failed_B=step.failed_B & active_B, done_B=step.done_B | ~active_B)


def _without_cache(out: SampleOutput) -> SampleOutput:
  """A step's sample as the scan stacks it over steps: its cache is not kept."""
  return out._replace(cache=None)


def _step(outs: SampleOutput, h: int) -> SampleOutput:
  """Step h (0-based) of samples stacked over steps."""
  return jax.tree.map(lambda x: x[h], outs)


def _one_cache_steps(model, prompt_tokens_PxT, prompt_valid_PxT, env, keys, params, group_size, max_steps, end_ids,
                     guide_close_ids, batch, history_window):
  """The whole episode in one cache: step 1 prefills it, steps 2..H continue it after the observation.
  Returns (per step, the segments it adds to the layout; the EnvSteps [H, B]; guidance [H, B, N]; played [H, B])."""
  del history_window
  key_reset, key_sample, key_env = keys
  extra_capacity = (max_steps - 1) * (len(end_ids) + env.obs_len + params.max_new_tokens)   # slots after step 1
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
    step = _ended_rows_keep(step, prev, active_B)
    ys = (between.tokens_BxN, between_valid, _without_cache(out), guide, active_B, step)
    return (out.cache, state, out.stopped_B, step), ys

  init = (out1.cache, state, out1.stopped_B, step1)
  _, (between_tokens, between_valid, outs, guide, active, steps) = jax.lax.scan(play, init, jnp.arange(1, max_steps))
  prompt_BxT = jnp.repeat(prompt_tokens_PxT, group_size, axis=0)
  prompt_valid_BxT = jnp.repeat(prompt_valid_PxT.astype(bool), group_size, axis=0)
  segments_H = [[context(prompt_BxT, prompt_valid_BxT), generated(out1, 1, params)]]
  for h in range(max_steps - 1):   # layout assembly at trace time: H static slices
    segments_H.append([context(between_tokens[h], between_valid[h]), generated(_step(outs, h), h + 2, params)])
  first = lambda a, rest: jnp.concatenate([a[None], rest])  # noqa: E731
  b = out1.tokens_BxN.shape[0]
  return segments_H, jax.tree.map(first, step1, steps), first(guide1, guide), first(jnp.ones((b,), bool), active)


def _windowed_steps(model, prompt_tokens_PxT, prompt_valid_PxT, env, keys, params, group_size, max_steps, end_ids,
                    guide_close_ids, batch, history_window):
  """Each step from a fresh prefill of [prompt | the last k step blocks] (module docstring). Same
  returns as `_one_cache_steps`; each step's segments are its whole row, [context | y_t]."""
  key_reset, key_sample, key_env = keys
  k, n = history_window, params.max_new_tokens
  prompt_BxT = jnp.repeat(prompt_tokens_PxT.astype(jnp.int32), group_size, axis=0)
  prompt_valid_BxT = jnp.repeat(prompt_valid_PxT.astype(bool), group_size, axis=0)
  b = prompt_BxT.shape[0]
  block_len = n + len(end_ids) + env.obs_len
  state = env.reset(batch, group_size, key_reset)

  def play(carry, t):
    state, window_BxW, window_valid_BxW, prev = carry
    active_B = ~prev.done_B
    ctx_BxC = jnp.concatenate([prompt_BxT, window_BxW], axis=1)
    ctx_valid_BxC = jnp.concatenate([prompt_valid_BxT, window_valid_BxW & active_B[:, None]], axis=1)
    # Left-padded like any prompt (a stable sort puts the holes first, ids in order): the slot before
    # y_t then holds a real id, which the trainer's next-token log-prob reads (an empty window at
    # step 1, a short observation or a step that stopped early would otherwise leave a hole there).
    order_BxC = jnp.argsort(ctx_valid_BxC, axis=1, stable=True)
    ctx_BxC = jnp.take_along_axis(ctx_BxC, order_BxC, axis=1)
    ctx_valid_BxC = jnp.take_along_axis(ctx_valid_BxC, order_BxC, axis=1)
    out = generate(model, ctx_BxC, ctx_valid_BxC, jax.random.fold_in(key_sample, t), params)
    out = out._replace(valid_BxN=out.valid_BxN & active_B[:, None], logp_BxN=jnp.where(active_B[:, None], out.logp_BxN, 0.0),
                      stopped_B=out.stopped_B | ~active_B)
    tokens, action_valid, guide = _env_view(out, guide_close_ids)
    state, step = env.step(state, tokens, action_valid, jax.random.fold_in(key_env, t))
    step = jax.tree.map(lambda new, old: new.astype(old.dtype), _ended_rows_keep(step, prev, active_B), prev)
    between = after_turn(out.stopped_B, end_ids, step.obs_BxO, step.obs_valid_BxO)
    block_BxL = jnp.concatenate([out.tokens_BxN, between.tokens_BxN], axis=1)
    block_valid_BxL = jnp.concatenate([out.valid_BxN, between.valid_BxN & active_B[:, None]], axis=1)
    window_BxW = jnp.concatenate([window_BxW[:, block_len:], block_BxL], axis=1)
    window_valid_BxW = jnp.concatenate([window_valid_BxW[:, block_len:], block_valid_BxL], axis=1)
    return (state, window_BxW, window_valid_BxW, step), (ctx_BxC, ctx_valid_BxC, _without_cache(out), guide, active_B, step)

  no_step = EnvStep(obs_BxO=jnp.zeros((b, env.obs_len), jnp.int32), obs_valid_BxO=jnp.zeros((b, env.obs_len), bool),
                    reward_B=jnp.zeros((b,)), done_B=jnp.zeros((b,), bool), success_B=jnp.zeros((b,), bool),
                    score_B=jnp.zeros((b,)), invalid_B=jnp.zeros((b,), bool), progress_B=jnp.zeros((b,), jnp.int8),
                    failed_B=jnp.zeros((b,), bool))
  init = (state, jnp.zeros((b, k * block_len), jnp.int32), jnp.zeros((b, k * block_len), bool), no_step)
  _, (ctx, ctx_valid, outs, guide, active, steps) = jax.lax.scan(play, init, jnp.arange(max_steps))
  segments_H = [[context(ctx[h], ctx_valid[h]), generated(_step(outs, h), h + 1, params)] for h in range(max_steps)]
  return segments_H, steps, guide, active
