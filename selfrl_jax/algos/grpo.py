"""GRPO family (GRPO, Dr. GRPO, RLOO, REINFORCE baseline) as an `Algorithm` for the shared step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from selfrl_jax.algos.advantages import compute_advantages
from selfrl_jax.models.decoder import Decoder
from selfrl_jax.rewards.registry import RewardFn
from selfrl_jax.rollouts.single_turn import single_turn_rollout
from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.sampling.sampler import SamplingParams


@dataclasses.dataclass(frozen=True)
class GRPO:
  """Single-turn group sampling; one scalar reward per rollout spread over its response tokens.

  Attributes:
    sampling: decoding settings for training rollouts.
    group_size: completions per prompt (G).
    advantage: registry key in `algos.advantages` ("grpo", "dr_grpo", "rloo", "reinforce").
    kl_coef: beta, KL weight on every response token (0: no reference model needed).
    reward_fn: jittable `reward_fn(rollout, batch) -> rewards_B`.
  """

  sampling: SamplingParams
  group_size: int
  advantage: str
  kl_coef: float
  reward_fn: RewardFn

  def rollout(self, model: Decoder, batch: dict, key: jax.Array) -> Rollout:
    return single_turn_rollout(model, batch["prompt_tokens_PxT"], batch["prompt_valid_PxT"], key,
                               self.sampling, self.group_size)

  @property
  def response_slots(self) -> int:
    """Generated-token slots per rollout (the `seq_mean_token_sum_norm` constant)."""
    return self.sampling.max_new_tokens

  @property
  def needs_reference(self) -> bool:
    return self.kl_coef > 0

  def rewards(self, rollout: Rollout, batch: dict) -> dict:
    return {"reward": self.reward_fn(rollout, batch)}

  def advantages(self, rollout: Rollout, rewards: dict, step: jax.Array):
    del step
    adv_PxG = compute_advantages(self.advantage, rewards["reward"].reshape(-1, self.group_size))
    adv_BxS = adv_PxG.reshape(-1, 1) * rollout.loss_mask_BxS
    kl_weight_BxS = jnp.full(rollout.loss_mask_BxS.shape, self.kl_coef, jnp.float32)
    return adv_BxS, kl_weight_BxS, {"adv_abs_mean": jnp.abs(adv_PxG).mean()}

  def eval_outputs(self, model: Decoder, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
    """Per-prompt reward and response length of this algorithm's rollout (jittable)."""
    rollout = self.rollout(model, batch, key)
    return {"reward_B": self.rewards(rollout, batch)["reward"], "len_B": rollout.response_valid_BxN.sum(axis=1)}

  def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    return {"eval/accuracy": float(np.mean(outputs["reward_B"])),
            "eval/completion_len_mean": float(np.mean(outputs["len_B"]))}
