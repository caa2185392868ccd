"""SCoRe (Kumar et al. 2024, arXiv 2409.12917): two-stage multi-turn REINFORCE for self-correction.

    algo = SCoRe.from_config(cfg, tok, reward_fn, train_sampling)   # or builders.build_algorithm(cfg, tok)
    rollout = algo.rollout(model, batch, key)            # [prompt | y1 | end | instr | y2], TwoTurnRollout
    rewards = algo.rewards(rollout, batch)               # Rewards(reward_B, parts={"r1_B", "r2_B"})
    terms = algo.advantages(rollout, rewards, step)      # TokenTerms: adv_BxS, kl_weight_BxS, metrics

Stage I (Eq. 3): only y2 is rewarded (R1 = 0); turn-1 tokens carry the strong KL anchor beta2 and
turn-2 tokens the small beta1 (§7 item 4). Stage II (Eq. 4 + 5): R1 = r1, R2 = r2 + alpha (r2 - r1),
beta1 on both turns. Credit (§2.3, §7 item 1): `per_turn` gives turn-1 tokens A1 and turn-2 tokens
A2 (gamma = 0); `episode` gives every token the advantage of R1 + R2, which with alpha > 1 rewards
sandbagging turn 1 (§6). The shared update applies `policy_loss` with these per-token advantages and
KL weights against `state.ref_params`, the frozen base model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from selfrl_jax.algos import score_config
from selfrl_jax.algos.advantages import flat_groups, reinforce, rloo
from selfrl_jax.algos.base import Algorithm, Rewards, TokenTerms
from selfrl_jax.algos.losses import FULL_KL, KL_ESTIMATORS
from selfrl_jax.algos.registry import AlgorithmSpec
from selfrl_jax.algos.score_config import ADV_NORMS, BASELINES, STAGE2_ALGOS, TURN_CREDITS
from selfrl_jax.data.batch import PromptBatch
from selfrl_jax.models.decoder import Decoder
from selfrl_jax.models.tokenizers import Tokenizer
from selfrl_jax.rewards.registry import RewardFn
from selfrl_jax.eval.self_correction import multi_attempt_accuracy, self_correction_metrics
from selfrl_jax.rollouts.segments import turn_end_ids
from selfrl_jax.rollouts.two_turn import (TwoTurnRollout, attach_extras, correction_instruction_ids,
                                          multi_attempt_rollout, response_view, turn1_view, two_turn_rollout)
from selfrl_jax.sampling.sampler import SamplingParams



def _check_choice(field: str, value: str, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise ValueError(f"SCoRe.{field}: unknown value {value!r}; valid keys: {list(valid)}.")


# ----------------------------------------------------------------------------------------------
# Pure pieces (score.md §10.1).


def stage_of(step: jax.Array, use_stage1: bool, stage1_steps: int) -> jax.Array:
  """Stage controller: 1 while `step < stage1_steps` (when Stage I is on), else 2; int32, jittable."""
  step = jnp.asarray(step, jnp.int32)
  if not use_stage1:
    return jnp.full(step.shape, 2, jnp.int32)
  return jnp.where(step < stage1_steps, 1, 2).astype(jnp.int32)


def score_turn_rewards(r1_B: jax.Array, r2_B: jax.Array, alpha: float, stage: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """Per-turn returns (R1_B, R2_B): Stage I (Eq. 3): (0, r2); Stage II (Eq. 4 + 5): (r1, r2 + alpha (r2 - r1))."""
  r1_B = jnp.asarray(r1_B, jnp.float32)
  r2_B = jnp.asarray(r2_B, jnp.float32)
  stage1 = jnp.asarray(stage) == 1
  R1_B = jnp.where(stage1, 0.0, r1_B)
  R2_B = jnp.where(stage1, r2_B, r2_B + alpha * (r2_B - r1_B))
  return R1_B, R2_B


def rloo_advantage(rewards_PxG: jax.Array) -> jax.Array:
  """A_j = R_j - mean_{i != j} R_i within each group of k = G samples (§7 item 2)."""
  return rloo(rewards_PxG)


def baseline_advantage(returns_B: jax.Array, group_size: int, baseline: str) -> jax.Array:
  """Return minus a baseline: leave-one-out over the prompt's group (rloo), the batch mean, or none."""
  _check_choice("baseline", baseline, BASELINES)
  returns_B = jnp.asarray(returns_B, jnp.float32)
  if baseline == "none":
    return returns_B
  fn = rloo if baseline == "rloo" else reinforce
  return fn(returns_B.reshape(-1, group_size)).reshape(-1)


def normalize_advantage(adv_B: jax.Array, adv_norm: str, eps: float = 1e-6) -> jax.Array:
  """`std`: divide by the batch std of this turn's advantages (population std); `none`: identity.

  Equal advantages (e.g. raw returns with `baseline=none`) are left unscaled: their std is 0 or
  float32 rounding noise, and dividing by it would multiply them by up to 1/eps."""
  _check_choice("adv_norm", adv_norm, ADV_NORMS)
  if adv_norm == "none":
    return adv_B
  flat = flat_groups(adv_B.reshape(1, -1))[0, 0]
  return adv_B / jnp.where(flat, 1.0, adv_B.std() + eps)


def turn_advantages(R1_B: jax.Array, R2_B: jax.Array, *, group_size: int, turn_credit: str, baseline: str,
                    adv_norm: str = "none") -> tuple[jax.Array, jax.Array]:
  """(A1_B, A2_B) credited to turn-1 and turn-2 tokens (§2.5 step 6, §7 items 1–2).

  per_turn: A_k = baseline-subtracted R_k, each turn's baseline computed over the group separately.
  episode: both turns get the baseline-subtracted episode return R1 + R2.
  """
  _check_choice("turn_credit", turn_credit, TURN_CREDITS)
  if turn_credit == "episode":
    a_B = normalize_advantage(baseline_advantage(R1_B + R2_B, group_size, baseline), adv_norm)
    return a_B, a_B
  return (normalize_advantage(baseline_advantage(R1_B, group_size, baseline), adv_norm),
          normalize_advantage(baseline_advantage(R2_B, group_size, baseline), adv_norm))


def per_token(value1_B: jax.Array, value2_B: jax.Array, turn_id_BxS: jax.Array) -> jax.Array:
  """Spreads a per-turn value over that turn's tokens (turn_id 1 / 2); 0 on context and holes."""
  return jnp.where(turn_id_BxS == 1, jnp.asarray(value1_B, jnp.float32)[:, None],
                   jnp.where(turn_id_BxS == 2, jnp.asarray(value2_B, jnp.float32)[:, None], 0.0))


def turn_kl_weights(stage: jax.Array, beta1: float, beta2: float, stage1_turn2_kl: bool = True
                    ) -> tuple[jax.Array, jax.Array]:
  """(kl_w1, kl_w2): Stage I beta2 on turn 1 and beta1 on turn 2 (0 without stage1_turn2_kl); Stage II beta1, beta1."""
  stage1 = jnp.asarray(stage) == 1
  w1 = jnp.where(stage1, beta2, beta1).astype(jnp.float32)
  w2 = jnp.where(stage1, beta1 if stage1_turn2_kl else 0.0, beta1).astype(jnp.float32)
  return w1, w2


def _same_response(a_BxN, a_valid_BxN, b_BxM, b_valid_BxM) -> jax.Array:
  """y1 == y2 as token sequences (valid tokens in order; holes ignored)."""
  width = max(a_BxN.shape[1], b_BxM.shape[1])

  def compact(tokens, valid):
    # Valid tokens to the front in order (a stable sort on ~valid), then -1 padding to `width`.
    order = jnp.argsort(~valid.astype(bool), axis=1, stable=True)
    packed = jnp.where(jnp.take_along_axis(valid.astype(bool), order, axis=1),
                       jnp.take_along_axis(tokens, order, axis=1), -1)
    return jnp.pad(packed, ((0, 0), (0, width - packed.shape[1])), constant_values=-1)
  return jnp.all(compact(a_BxN, a_valid_BxN) == compact(b_BxM, b_valid_BxM), axis=1)


def train_correction_metrics(r1_B, r2_B, y1_BxN, y1_valid_BxN, y2_BxM, y2_valid_BxM) -> dict[str, jax.Array]:
  """Jittable twin of `eval.self_correction_metrics` on training rollouts (§2.4; same metric names)."""
  r1 = jnp.asarray(r1_B) > 0.5
  r2 = jnp.asarray(r2_B) > 0.5
  f = lambda x: x.astype(jnp.float32).mean()  # noqa: E731
  out = {"acc_t1": f(r1), "acc_t2": f(r2), "delta_i2c": f(~r1 & r2), "delta_c2i": f(r1 & ~r2)}
  out["delta"] = out["acc_t2"] - out["acc_t1"]
  out["frac_changed"] = f(~_same_response(y1_BxN, y1_valid_BxN, y2_BxM, y2_valid_BxM))
  return out


def star_demonstrations(rollout: TwoTurnRollout, r1_B: jax.Array, r2_B: jax.Array, *,
                        include_c2c: bool = False, train_turn1: bool = False
                        ) -> tuple[dict[str, jax.Array], jax.Array]:
  """STaR baseline (§5 baselines, Table 4 `stage2_algo=star`): SFT on successful correction traces.

  Keeps traces with y1 wrong and y2 right (D_STaR), plus y1 right and y2 right with `include_c2c`
  (D+_STaR). Shapes stay fixed: rejected rows keep their tokens but get an all-False loss mask, which
  under the mean-NLL of `train.sft.make_sft_step` equals dropping them. Loss on y2 tokens (and on y1
  tokens with `train_turn1`).

  Returns:
    ({tokens_BxS, valid_BxS, loss_mask_BxS} as in `train.sft.demonstrations`, keep_B).
  """
  r1 = jnp.asarray(r1_B) > 0.5
  r2 = jnp.asarray(r2_B) > 0.5
  keep_B = (~r1 & r2) | (include_c2c & r1 & r2)
  trained_BxS = (rollout.turn_id_BxS == 2) | (train_turn1 & (rollout.turn_id_BxS == 1))
  demo = {"tokens_BxS": rollout.tokens_BxS, "valid_BxS": rollout.valid_BxS,
          "loss_mask_BxS": trained_BxS & rollout.valid_BxS & keep_B[:, None]}
  return demo, keep_B


# ----------------------------------------------------------------------------------------------
# The Algorithm.


@dataclasses.dataclass(frozen=True)
class SCoRe(Algorithm):
  """SCoRe as an `Algorithm` for the shared train step (train/step.py).

  Attributes:
    sampling: turn-1 decoding settings (the evaluator swaps in greedy ones).
    group_size: rollouts per prompt (k); one y2 per y1.
    instr_ids: self-correction instruction ids p, appended after y1.
    end_ids: ids that close a truncated turn before p (`rollouts.segments.turn_end_ids`).
    reward_fn: single-turn `RewardFn` (scores `rollout.response_*`); applied to y1 and y2.
    max_new_tokens2: turn-2 buffer N2 (0: same as turn 1).
    multi_turn: False => single-turn RL on turn 1 (Eq. 2; the "w/o multi-turn" ablation). y2 is still
      sampled (for metrics and evaluation) but its tokens are out of the loss mask; stages are off.
    use_stage1: run Stage I for `stage1_steps` steps, then Stage II ("w/o Stage I" ablation: False).
    stage1_steps: Stage I length in RL iterations (`state.step` counts them).
    alpha: shaping weight of Eq. 5 (0: "w/o reward shaping").
    beta1: KL weight on both turns in Stage II and on turn 2 in Stage I.
    beta2: first-attempt KL weight in Stage I.
    stage1_turn2_kl: Stage I puts the beta1 KL on turn-2 tokens (False: no KL on them in Stage I;
      Stage II and turn 1 are unaffected).
    turn2_adv_scale: Stage II multiplies turn-2 advantages by this (1: the paper). With alpha = 0 and
      scale 1 + alpha it is the control arm of the shaping ablation (configs/score/README.md).
    turn_credit: per_turn | episode.
    baseline: rloo | batch_mean | none (per turn, over the group or batch).
    adv_norm: none | std.
    kl_estimator: a `losses.KL_ESTIMATORS` key or "full"; must equal the shared update's `rl.kl_estimator`.
    stage2_algo: reinforce | star. `star` replaces the Stage II policy gradient by SFT on this
      batch's successful corrections (Table 4), i.e. the mean NLL of their y2 tokens; no KL.
    star_include_c2c: star also keeps right -> right traces (D+_STaR).
    n_attempts_eval: sequential attempts at evaluation (K >= 2; metrics compare t1 with t2).
    eval_by_prompt_len: also report every evaluation metric per prompt length in tokens
      (`eval/by_prompt_len/<L>/<metric>`; the length buckets of a toy whose items differ in length).
  """

  sampling: SamplingParams
  group_size: int
  instr_ids: tuple[int, ...]
  end_ids: tuple[int, ...]
  reward_fn: RewardFn
  max_new_tokens2: int = 0
  multi_turn: bool = True
  use_stage1: bool = True
  stage1_steps: int = 0
  alpha: float = 10.0
  beta1: float = 0.01
  beta2: float = 0.1
  stage1_turn2_kl: bool = True
  turn2_adv_scale: float = 1.0
  turn_credit: str = "per_turn"
  baseline: str = "rloo"
  adv_norm: str = "none"
  kl_estimator: str = "k3"
  stage2_algo: str = "reinforce"
  star_include_c2c: bool = False
  n_attempts_eval: int = 2
  eval_by_prompt_len: bool = False

  def __post_init__(self):
    _check_choice("turn_credit", self.turn_credit, TURN_CREDITS)
    _check_choice("baseline", self.baseline, BASELINES)
    _check_choice("adv_norm", self.adv_norm, ADV_NORMS)
    _check_choice("kl_estimator", self.kl_estimator, (*sorted(KL_ESTIMATORS), FULL_KL))
    _check_choice("stage2_algo", self.stage2_algo, STAGE2_ALGOS)
    if self.n_attempts_eval < 2:
      raise ValueError(f"SCoRe.n_attempts_eval must be >= 2, got {self.n_attempts_eval}.")
    object.__setattr__(self, "instr_ids", tuple(int(i) for i in self.instr_ids))
    object.__setattr__(self, "end_ids", tuple(int(i) for i in self.end_ids))
    if not self.instr_ids:
      raise ValueError("SCoRe.instr_ids is empty; the correction instruction needs at least one token.")
    if not self.end_ids:
      raise ValueError("SCoRe.end_ids is empty; a truncated turn needs its end-of-turn ids before the instruction.")
    for field in ("stage1_steps", "max_new_tokens2"):
      if getattr(self, field) < 0:
        raise ValueError(f"SCoRe.{field} must be >= 0, got {getattr(self, field)}.")
    for field in ("beta1", "beta2"):
      if getattr(self, field) < 0:
        raise ValueError(f"SCoRe.{field} must be >= 0, got {getattr(self, field)}.")

  @classmethod
  def from_config(cls, cfg: Any, tokenizer: Tokenizer, reward_fn: RewardFn, sampling: SamplingParams,
                  records=None) -> SCoRe:
    """Builds from a full experiment config: `cfg.score` plus `rl.group_size` / `rl.kl_estimator`."""
    del records  # the reward function already holds what it scores against
    c = cfg.score
    return cls(
        sampling=sampling, group_size=cfg.rl.group_size,
        instr_ids=correction_instruction_ids(tokenizer, c.instruction, c.chat_instruction),
        end_ids=turn_end_ids(tokenizer, c.chat_instruction), reward_fn=reward_fn,
        max_new_tokens2=c.max_new_tokens2, multi_turn=c.multi_turn, use_stage1=c.use_stage1,
        stage1_steps=c.stage1_steps, alpha=c.alpha, beta1=c.beta1, beta2=c.beta2,
        stage1_turn2_kl=c.stage1_turn2_kl, turn2_adv_scale=c.turn2_adv_scale, turn_credit=c.turn_credit,
        baseline=c.baseline, adv_norm=c.adv_norm, kl_estimator=cfg.rl.kl_estimator,
        stage2_algo=c.stage2_algo, star_include_c2c=c.star_include_c2c, n_attempts_eval=c.n_attempts_eval,
        eval_by_prompt_len=c.eval_by_prompt_len)

  @property
  def sampling2(self) -> SamplingParams:
    return dataclasses.replace(self.sampling, max_new_tokens=self.max_new_tokens2 or self.sampling.max_new_tokens)

  @property
  def response_slots(self) -> int:
    """Generated-token slots per rollout, N1 + N2 (the `seq_mean_token_sum_norm` constant)."""
    return self.sampling.max_new_tokens + self.sampling2.max_new_tokens

  @property
  def needs_reference(self) -> bool:
    """Whether any KL weight can be non-zero, i.e. the update needs reference log-probs."""
    return self.beta1 > 0 or (self.multi_turn and self.use_stage1 and self.stage1_steps > 0 and self.beta2 > 0)

  def stage(self, step: jax.Array) -> jax.Array:
    """1 or 2 (multi-turn), 0 for single-turn RL (no stages)."""
    if not self.multi_turn:
      return jnp.zeros(jnp.shape(step), jnp.int32)
    return stage_of(step, self.use_stage1, self.stage1_steps)

  def rollout(self, model: Decoder, batch: PromptBatch, key: jax.Array) -> TwoTurnRollout:
    rollout, extras = two_turn_rollout(model, batch.prompt_tokens_PxT, batch.prompt_valid_PxT,
                                       self.instr_ids, self.end_ids, key, self.sampling, self.sampling2,
                                       self.group_size)
    if not self.multi_turn:
      rollout = rollout.replace(loss_mask_BxS=rollout.loss_mask_BxS & (rollout.turn_id_BxS == 1))
    return attach_extras(rollout, extras)

  def rewards(self, rollout: TwoTurnRollout, batch: PromptBatch) -> Rewards:
    """r1 = r(y1, y*), r2 = r(y2, y*); `reward_B` is the last trained turn's (r2, or r1 when single-turn)."""
    r1_B = self.reward_fn(turn1_view(rollout), batch)
    r2_B = self.reward_fn(rollout, batch)
    return Rewards(reward_B=r2_B if self.multi_turn else r1_B, parts={"r1_B": r1_B, "r2_B": r2_B})

  def turn_terms(self, r1_B: jax.Array, r2_B: jax.Array, stage: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(A1_B, A2_B, kl_w1, kl_w2) for one batch at `stage` (0 = single-turn)."""
    if not self.multi_turn:
      a1_B = normalize_advantage(baseline_advantage(r1_B, self.group_size, self.baseline), self.adv_norm)
      zero = jnp.zeros((), jnp.float32)
      return a1_B, jnp.zeros_like(a1_B), jnp.asarray(self.beta1, jnp.float32), zero
    R1_B, R2_B = score_turn_rewards(r1_B, r2_B, self.alpha, stage)
    a1_B, a2_B = turn_advantages(R1_B, R2_B, group_size=self.group_size, turn_credit=self.turn_credit,
                                 baseline=self.baseline, adv_norm=self.adv_norm)
    a2_B = jnp.where(stage == 2, self.turn2_adv_scale * a2_B, a2_B)
    w1, w2 = turn_kl_weights(stage, self.beta1, self.beta2, self.stage1_turn2_kl)
    return a1_B, a2_B, w1, w2

  def advantages(self, rollout: TwoTurnRollout, rewards: Rewards, step: jax.Array, algo_state=None
                 ) -> TokenTerms:
    """Per-token advantages and KL weights (§2.5 steps 5–7) plus self-correction metrics."""
    del algo_state
    stage = self.stage(step)
    r1_B, r2_B = rewards.parts["r1_B"], rewards.parts["r2_B"]
    a1_B, a2_B, w1, w2 = self.turn_terms(r1_B, r2_B, stage)
    turn_BxS = jnp.where(rollout.loss_mask_BxS, rollout.turn_id_BxS, 0)
    adv_BxS = per_token(a1_B, a2_B, turn_BxS)
    b = r1_B.shape[0]
    kl_weight_BxS = per_token(jnp.broadcast_to(w1, (b,)), jnp.broadcast_to(w2, (b,)), turn_BxS)
    extra = {}
    if self.multi_turn and self.stage2_algo == "star":
      star_adv_BxS, keep_B = self.star_advantages(rollout, r1_B, r2_B)
      in_stage2 = stage == 2
      adv_BxS = jnp.where(in_stage2, star_adv_BxS, adv_BxS)
      kl_weight_BxS = jnp.where(in_stage2, 0.0, kl_weight_BxS)
      extra["star_kept_frac"] = keep_B.astype(jnp.float32).mean()
    e = rollout.extras
    metrics = train_correction_metrics(r1_B, r2_B, e.y1_tokens_BxN, e.y1_valid_BxN,
                                       rollout.response_tokens_BxN, rollout.response_valid_BxN)
    metrics.update({"stage": stage, "adv1_abs_mean": jnp.abs(a1_B).mean(), "adv2_abs_mean": jnp.abs(a2_B).mean(),
                    "kl_w1": w1, "kl_w2": w2,
                    "turn1_len_mean": e.y1_valid_BxN.sum(axis=1).mean(),
                    "turn1_clipped_frac": 1.0 - e.y1_stopped_B.astype(jnp.float32).mean(), **extra})
    return TokenTerms(adv_BxS=adv_BxS, kl_weight_BxS=kl_weight_BxS, metrics=metrics)

  def star_advantages(self, rollout: TwoTurnRollout, r1_B: jax.Array, r2_B: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """STaR as per-token advantages: the shared loss then equals SFT on the kept y2 tokens.

    With one epoch the PPO ratio is 1, so the `token_mean` loss is -sum(A * logp) / n_loss.
    A = n_loss / n_kept on kept y2 tokens (0 elsewhere) turns it into the mean NLL of the kept
    tokens, the loss of `star_demonstrations` under `train.sft.make_sft_step` (validate_config
    requires token_mean and one minibatch for this reason).
    """
    demo, keep_B = star_demonstrations(rollout, r1_B, r2_B, include_c2c=self.star_include_c2c)
    kept_BxS = demo["loss_mask_BxS"] & rollout.loss_mask_BxS
    scale = rollout.loss_mask_BxS.sum() / jnp.maximum(kept_BxS.sum(), 1)
    return jnp.where(kept_BxS, scale, 0.0).astype(jnp.float32), keep_B

  # -- Evaluation (score.md §2.4; greedy by default) --------------------------------------------

  def eval_outputs(self, model: Decoder, batch: PromptBatch, key: jax.Array) -> dict[str, jax.Array]:
    """K = n_attempts_eval sequential attempts in one cache, each scored by the reward (jittable).

    Every attempt uses the larger of the two turn buffers; holes are invisible to the model, so
    this matches the training layout except for where a long answer is truncated.
    """
    n = max(self.sampling.max_new_tokens, self.sampling2.max_new_tokens)
    out = multi_attempt_rollout(model, batch.prompt_tokens_PxT, batch.prompt_valid_PxT, self.instr_ids,
                                self.end_ids, key, dataclasses.replace(self.sampling, max_new_tokens=n), self.group_size,
                                self.n_attempts_eval)
    reward_KxB = jnp.stack([self.reward_fn(response_view(out.tokens_KxBxN[k], out.valid_KxBxN[k],
                                                         out.stopped_KxB[k]), batch)
                            for k in range(self.n_attempts_eval)])
    prompt_len_B = jnp.repeat(batch.prompt_valid_PxT.sum(axis=1), self.group_size)
    return {"reward_KxB": reward_KxB, "tokens_KxBxN": out.tokens_KxBxN, "len_KxB": out.valid_KxBxN.sum(axis=2),
            "prompt_len_B": prompt_len_B}

  def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Acc@t1..t_K, Delta(t1, t2), Delta(i->c), Delta(c->i), frac_changed and the edit-ratio histogram;
    with `eval_by_prompt_len`, each of them again per prompt length (`eval/by_prompt_len/<L>/...`)."""
    result = self._correction_metrics(outputs)
    if self.eval_by_prompt_len:
      lengths_B = np.asarray(outputs["prompt_len_B"])
      for length in np.unique(lengths_B):
        keep = lengths_B == length
        part = {k: np.asarray(v)[..., keep] if k == "prompt_len_B" else np.asarray(v)[:, keep]
                for k, v in outputs.items()}
        prefix = f"eval/by_prompt_len/{int(length)}/"
        result.update({prefix + k[len("eval/"):]: v
                       for k, v in self._correction_metrics(part).items() if "edit_ratio_hist" not in k})
        result[prefix + "count"] = float(keep.sum())
    return result

  def _correction_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    correct_KxN = np.asarray(outputs["reward_KxB"]) > 0.5
    tokens, lengths = outputs["tokens_KxBxN"], outputs["len_KxB"]
    m = self_correction_metrics(correct_KxN[0], correct_KxN[1], tokens[0], lengths[0], tokens[1], lengths[1])
    result = {f"eval/{k}": float(m[k]) for k in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i",
                                                 "frac_changed", "edit_ratio_mean")}
    result.update({f"eval/edit_ratio_hist/{i}": float(c) for i, c in enumerate(m["edit_ratio_hist"])})
    result.update({f"eval/acc_t{k + 1}": float(a) for k, a in enumerate(multi_attempt_accuracy(correct_KxN))})
    result["eval/accuracy"] = result["eval/acc_t2"]
    result["eval/completion_len_mean"] = float(np.asarray(lengths[1]).mean())
    return result


ALGORITHM = AlgorithmSpec(name="score", build=SCoRe.from_config, default_config=score_config.default_config,
                          validate=score_config.validate, replaces=score_config.REPLACES,
                          sft_demos={"score_toy": score_config.toy_demos},
                          renamed_knobs={"first_turn_kl_only": "first_turn_kl_only=True is stage1_turn2_kl=False"})
