"""Stand-in algorithms that exercise each seam of the extension point (algos/base.py) in tests.

`ToyEnvAgent`: a three-turn agent in a toy host environment: after each of the first two turns the
host computes an observation (per-row ids of different lengths) from the turn's tokens, appended to
the KV cache token in / token out, after the end-of-turn id where the turn was truncated
(`segments.after_turn`); a host reward scores the episode. Three host pauses per
iteration. Turn 2 is sampled at temperature 0.5 and trained with the unclipped `is_weight`
surrogate, turns 1 and 3 at 1.0 with `ppo_clip`.

`EMABaselineGRPO`: GRPO whose baseline is an exponential moving average of past batch rewards, kept
in the algorithm state and advanced by `after_update`.
"""

from __future__ import annotations

import collections
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from selfrl_jax.algos.advantages import compute_advantages
from selfrl_jax.algos.base import UPDATE, Algorithm, Phase, Rewards, TokenTerms, host_call
from selfrl_jax.algos.grpo import GRPO
from selfrl_jax.rollouts.segments import after_turn, context, generated, pack_segments
from selfrl_jax.sampling.sampler import SamplingParams, continue_generation, generate

OBS_WIDTH = 3


def observation(tokens_BxN: np.ndarray, valid_BxN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The toy environment: 1..OBS_WIDTH ids per row, derived from the row's last turn (host numpy).

  Ids sit at the right of the buffer (holes on the left), like a left-padded prompt.
  """
  b = tokens_BxN.shape[0]
  obs = np.zeros((b, OBS_WIDTH), np.int32)
  valid = np.zeros((b, OBS_WIDTH), bool)
  for row in range(b):
    ids = tokens_BxN[row][valid_BxN[row]]
    n = 1 + int(ids.sum()) % OBS_WIDTH
    seed_ids = np.resize(ids.astype(np.int64), n) if len(ids) else np.zeros(n, np.int64)
    obs[row, OBS_WIDTH - n:] = 3 + (seed_ids * 7 + np.arange(n)) % 20
    valid[row, OBS_WIDTH - n:] = True
  return obs, valid


@dataclasses.dataclass(frozen=True)
class ToyEnvAgent(Algorithm):
  sampling: SamplingParams
  group_size: int
  digit_ids: tuple[int, ...]
  end_ids: tuple[int, ...] = (2,)  # CharTokenizer's eos closes a truncated turn
  calls: collections.Counter = dataclasses.field(default_factory=collections.Counter, compare=False)

  objectives = ("ppo_clip", "is_weight")
  surrogate_kwargs = (("is_gamma", 1.0),)

  def turn_params(self, turn: int) -> SamplingParams:
    return dataclasses.replace(self.sampling, temperature=0.5) if turn == 2 and not self.sampling.greedy \
        else self.sampling

  @property
  def response_slots(self) -> int:
    return 3 * self.sampling.max_new_tokens

  needs_reference = False

  def phases(self):
    return (Phase("act1", self.act1), Phase("observe1", self.observe, host=True), Phase("act2", self.act),
            Phase("observe2", self.observe, host=True), Phase("act3", self.act),
            Phase("reward", self.reward_phase, host=True), UPDATE)

  def act1(self, ctx, record):
    b = record.batch
    n = self.sampling.max_new_tokens
    out = generate(ctx.model, b.prompt_tokens_PxT, b.prompt_valid_PxT, jax.random.fold_in(ctx.key, 1),
                   self.turn_params(1), group_size=self.group_size,
                   extra_capacity=2 * (len(self.end_ids) + OBS_WIDTH + n))
    prompt_BxT = jnp.repeat(b.prompt_tokens_PxT, self.group_size, axis=0)
    prompt_valid_BxT = jnp.repeat(b.prompt_valid_PxT, self.group_size, axis=0)
    return record.replace(aux={"cache": out.cache, "turns": ((prompt_BxT, prompt_valid_BxT), out._replace(cache=None))})

  def observe(self, ctx, record):
    """Host pause: the environment answers the last turn with per-row observation ids."""
    del ctx
    self.calls["observe"] += 1
    last = record.aux["turns"][-1]
    shape = (jax.ShapeDtypeStruct((last.tokens_BxN.shape[0], OBS_WIDTH), jnp.int32),
             jax.ShapeDtypeStruct((last.tokens_BxN.shape[0], OBS_WIDTH), jnp.bool_))
    obs = host_call(observation, shape, last.tokens_BxN, last.valid_BxN)
    between = after_turn(last.stopped_B, self.end_ids, *obs)
    return record.replace(aux={**record.aux, "turns": record.aux["turns"] + ((between.tokens_BxN, between.valid_BxN),)})

  def act(self, ctx, record):
    turns = record.aux["turns"]
    turn = (len(turns) + 1) // 2
    obs_BxW, obs_valid_BxW = turns[-1]
    out = continue_generation(ctx.model, record.aux["cache"], obs_BxW, obs_valid_BxW,
                              jax.random.fold_in(ctx.key, turn), self.turn_params(turn))
    turns = turns + (out._replace(cache=None),)
    record = record.replace(aux={"cache": out.cache, "turns": turns})
    if turn == 3:  # the episode is complete: lay it out for the update
      segments = [context(*turns[0])]
      for k, item in enumerate(turns[1:]):
        segments.append(generated(item, turn=k // 2 + 1, params=self.turn_params(k // 2 + 1)) if k % 2 == 0
                        else context(*item))
      record = record.replace(rollout=pack_segments(segments), aux=None)
    return record

  def rewards(self, rollout, batch):
    """Host reward: fraction of digits among all generated tokens of the episode."""
    del batch
    self.calls["reward"] += 1
    digits = np.asarray(self.digit_ids)

    def score(tokens_BxS, loss_mask_BxS):
      is_digit = np.isin(tokens_BxS, digits) & loss_mask_BxS
      return (is_digit.sum(1) / np.maximum(loss_mask_BxS.sum(1), 1)).astype(np.float32)
    reward_B = host_call(score, jax.ShapeDtypeStruct((rollout.batch_size,), jnp.float32),
                         rollout.tokens_BxS, rollout.loss_mask_BxS)
    return Rewards(reward_B=reward_B, parts={"turn2_len_B": (rollout.turn_id_BxS == 2).sum(1).astype(jnp.float32)})

  def advantages(self, rollout, rewards, step, algo_state=None):
    adv_PxG = compute_advantages("grpo", rewards.reward_B.reshape(-1, self.group_size))
    adv_BxS = adv_PxG.reshape(-1, 1) * rollout.loss_mask_BxS
    objective_BxS = (rollout.turn_id_BxS == 2).astype(jnp.int32)  # index into self.objectives
    return TokenTerms(adv_BxS=adv_BxS, kl_weight_BxS=jnp.zeros_like(adv_BxS), objective_BxS=objective_BxS)


@dataclasses.dataclass(frozen=True)
class EMABaselineGRPO(GRPO):
  """REINFORCE against an EMA of past batch-mean rewards (state: {"baseline", "updates", "probe_D"})."""

  decay: float = 0.5
  crash_at_step: int = -1  # raise in the host reward phase when this many steps are done (simulated crash)

  def reward_phase(self, ctx, record):
    if self.crash_at_step >= 0 and int(ctx.step) == self.crash_at_step:  # split mode: concrete step
      raise RuntimeError(f"simulated crash at step {self.crash_at_step}")
    return super().reward_phase(ctx, record)

  def init_state(self, key, model):
    # probe_D: a parameter-like leaf initialised from the key, moved by after_update.
    return {"baseline": jnp.zeros((), jnp.float32), "updates": jnp.zeros((), jnp.int32),
            "probe_D": jax.random.normal(key, (4,), jnp.float32)}

  def advantages(self, rollout, rewards, step, algo_state=None):
    adv_B = rewards.reward_B - algo_state["baseline"]
    adv_BxS = adv_B[:, None] * rollout.loss_mask_BxS
    return TokenTerms(adv_BxS=adv_BxS, kl_weight_BxS=jnp.zeros_like(adv_BxS),
                      metrics={"ema_baseline": algo_state["baseline"]})

  def after_update(self, algo_state, record, step):
    mean = record.rewards.reward_B.mean()
    baseline = self.decay * algo_state["baseline"] + (1 - self.decay) * mean
    probe_D = algo_state["probe_D"] * 0.9 + mean
    return ({"baseline": baseline, "updates": algo_state["updates"] + 1, "probe_D": probe_D},
            {"algo_state_updates": algo_state["updates"] + 1})
