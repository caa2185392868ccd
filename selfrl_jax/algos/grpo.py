"""GRPO family (GRPO, Dr. GRPO, RLOO, REINFORCE baseline) as an `Algorithm` for the shared step.

    python experiments/train.py --config=configs/tiny/grpo_arithmetic.py --config.rl.advantage=dr_grpo ...

Knobs are the shared `config.rl` ones: `rl.advantage` picks the estimator, `rl.kl_coef` the KL weight.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from selfrl_jax.algos.advantages import ADVANTAGES, compute_advantages
from selfrl_jax.algos.base import Algorithm, Rewards, TokenTerms
from selfrl_jax.algos.losses import kl_problem
from selfrl_jax.algos.registry import AlgorithmSpec
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.models.decoder import Decoder
from selfrl_jax.rewards.registry import RewardFn
from selfrl_jax.rollouts.single_turn import single_turn_rollout
from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.sampling.sampler import SamplingParams


@dataclasses.dataclass(frozen=True)
class GRPO(Algorithm):
  """Single-turn group sampling; one scalar reward per rollout spread over its response tokens.

  Attributes:
    sampling: decoding settings for training rollouts.
    group_size: completions per prompt (G).
    advantage: registry key in `algos.advantages` ("grpo", "grpo_sample_std", "dr_grpo", "rloo", "reinforce").
    kl_coef: beta, KL weight on every response token (0: no reference model needed).
    reward_fn: `reward_fn(rollout, batch) -> rewards_B` (jittable, or a host reward through a callback).
  """

  sampling: SamplingParams
  group_size: int
  advantage: str
  kl_coef: float
  reward_fn: RewardFn

  def rollout(self, model: Decoder, batch: PromptBatch, key: jax.Array) -> Rollout:
    return single_turn_rollout(model, batch.prompt_tokens_PxT, batch.prompt_valid_PxT, key, self.sampling,
                               self.group_size)

  @property
  def response_slots(self) -> int:
    """Generated-token slots per rollout (the `seq_mean_token_sum_norm` constant)."""
    return self.sampling.max_new_tokens

  @property
  def needs_reference(self) -> bool:
    return self.kl_coef > 0

  def rewards(self, rollout: Rollout, batch: PromptBatch) -> Rewards:
    return Rewards(reward_B=self.reward_fn(rollout, batch))

  def advantages(self, rollout: Rollout, rewards: Rewards, step: jax.Array, algo_state=None) -> TokenTerms:
    del step, algo_state
    adv_PxG = compute_advantages(self.advantage, rewards.reward_B.reshape(-1, self.group_size))
    adv_BxS = adv_PxG.reshape(-1, 1) * rollout.loss_mask_BxS
    kl_weight_BxS = jnp.full(rollout.loss_mask_BxS.shape, self.kl_coef, jnp.float32)
    return TokenTerms(adv_BxS=adv_BxS, kl_weight_BxS=kl_weight_BxS,
                      metrics={"adv_abs_mean": jnp.abs(adv_PxG).mean()})

  def eval_outputs(self, model: Decoder, batch: PromptBatch, key: jax.Array) -> dict[str, jax.Array]:
    """Per-prompt reward and response length of this algorithm's rollout (jittable)."""
    rollout = self.rollout(model, batch, key)
    return {"reward_B": self.rewards(rollout, batch).reward_B, "len_B": rollout.response_valid_BxN.sum(axis=1)}

  def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    return {"eval/accuracy": float(np.mean(outputs["reward_B"])),
            "eval/completion_len_mean": float(np.mean(outputs["len_B"]))}


def _validate(cfg, check) -> None:
  rl = cfg.rl
  check(rl.advantage in ADVANTAGES, "rl.advantage", f"{rl.advantage!r} is not one of {sorted(ADVANTAGES)}")
  check(rl.advantage == "reinforce" or rl.group_size >= 2, "rl.group_size",
        f"rl.advantage={rl.advantage!r} compares rollouts within a prompt's group: with group_size=1 every "
        "advantage is 0 and nothing is learned (use group_size >= 2, or advantage='reinforce')")
  check(rl.kl_coef >= 0, "rl.kl_coef", f"must be >= 0, got {rl.kl_coef}")
  problem = kl_problem(rl.kl_estimator, rl.kl_mode)
  check(rl.kl_coef == 0 or problem is None, "rl.kl_estimator", f"{problem} (rl.kl_coef={rl.kl_coef})")


def _build(cfg, tokenizer, reward_fn: RewardFn, sampling: SamplingParams, records=None) -> GRPO:
  del tokenizer, records
  return GRPO(sampling=sampling, group_size=cfg.rl.group_size, advantage=cfg.rl.advantage,
              kl_coef=cfg.rl.kl_coef, reward_fn=reward_fn)


ALGORITHM = AlgorithmSpec(name="grpo", build=_build, validate=_validate)
