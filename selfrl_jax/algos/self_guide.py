"""Self-Guide (Wang et al. 2026, "Co-Evolution of Policy and Internal Reward for Language Agents";
shared/papers/self_guide.md): the agent judges its last action before each new one, and the judgement
is both the action's context and, phased in by a trust schedule, a step-level internal reward.

    python experiments/train.py --config=configs/self_guide/tiny_grid.py --workdir=/tmp/sg          # SG & GR
    python experiments/train.py --config=configs/self_guide/tiny_grid.py:grpo --workdir=/tmp/grpo    # no guidance
    python experiments/reproduce.py --method=self_guide                                              # arms (a)-(g)

One iteration (P tasks, G episodes each, B = P G rows, H = max_steps, u = completed train steps):
  rollout (device) agent episodes through one KV cache (`rollouts/agent.py`): at step t the policy
                   writes "<guide>[LABEL] ...</guide><action>...</action>" (a toy spells it
                   "<label>|<move>"), the environment (JAX, or host through callbacks) returns the
                   next observation as ids;
  reward  (device) R_env (success or normalised score, minus the invalid-action penalty); polarity of
                   every z_t: the first label inside the guidance segment, malformed -> 0 (counted);
  update           r_sg_t = scale · polarity_t (t = 1 excluded), R = R_env + λ(u) · agg_t r_sg_t;
                   trajectory-level GRPO advantage on every generated token (guidance and action), or
                   per-step reward-to-go (`step_credit`); with `sg_reward_on_guide_tokens=False`
                   guidance tokens get the advantage of R_env alone (no incentive to self-report).

`use_guidance=False` is plain GRPO (no guidance segment: the prompt's plain instruction asks for the
action only); `schedule="zero"` is "GRPO w/ SG". Evaluation plays one episode per task with and
without guidance (inference-time guidance) and reports guidance calibration.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from selfrl_jax.algos import self_guide_config
from selfrl_jax.algos.advantages import compute_advantages
from selfrl_jax.algos.base import UPDATE, Algorithm, Phase, Rewards, TokenTerms
from selfrl_jax.algos.registry import AlgorithmSpec
from selfrl_jax.algos.self_guide_game_demos import game_demos
from selfrl_jax.algos.self_guide_objective import (TrustSchedule, aggregate, combined_return, counted_steps,
                                                   internal_rewards, parse_polarity, reward_to_go,
                                                   step_group_advantages, trust_lambda)
from selfrl_jax.rollouts.agent import AgentRollout, agent_episode
from selfrl_jax.sampling.sampler import SamplingParams


PROGRESS = (1, 0, -1)   # true progress classes: closer, same distance, farther


def calibration_counts(polarity_BxH: jax.Array, judged_BxH: jax.Array, counted_BxH: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """Per true-progress class (closer, same, farther): counted steps whose label matches, and all
  counted steps of that class ([3], [3])."""
  truth_CxBxH = jnp.stack([counted_BxH & (judged_BxH == c) for c in PROGRESS])
  return (truth_CxBxH & (polarity_BxH == judged_BxH)[None]).sum(axis=(1, 2)), truth_CxBxH.sum(axis=(1, 2))


def judged_progress(extras) -> tuple[jax.Array, jax.Array]:
  """(progress of the action each step's guidance judges, a_{t-1} for z_t [B, H]; the steps whose
  guidance is judged: played, t >= 2 [B, H])."""
  return jnp.pad(extras.progress_BxH[:, :-1], ((0, 0), (1, 0))), counted_steps(extras.step_taken_BxH, True)


def after_all(key: jax.Array, done_B: jax.Array) -> jax.Array:
  """`key`, unchanged, as a value that depends on `done_B`: an episode reset from it starts only once
  `done_B` exists. Two episodes on one host environment in one program need this: XLA:CPU runs
  independent operations concurrently and ran the second episode's reset callback before the first
  episode's steps (measured; an optimization_barrier did not order them). The condition always holds
  but XLA cannot prove it, so the dependency stays."""
  data = jax.random.key_data(key)
  data = jnp.where(jnp.all(done_B >= 0), data, ~data)
  return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


def balanced_accuracy(hits_C: jax.Array, totals_C: jax.Array) -> jax.Array:
  """Mean per-class recall over the classes present: 1/3 for a constant label, whatever the
  classes' frequencies (plain accuracy rewards always saying "closer" once most moves are)."""
  present_C = totals_C > 0
  return jnp.where(present_C, hits_C / jnp.maximum(totals_C, 1), 0.0).sum() / jnp.maximum(present_C.sum(), 1)


def _prepend(ids: tuple[int, ...], tokens_PxT: jax.Array, valid_PxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[ids | prompt] (the prompt stays left-padded: its holes sit between the two, which positions skip)."""
  p = tokens_PxT.shape[0]
  ids_PxI = jnp.broadcast_to(jnp.asarray(ids, jnp.int32)[None], (p, len(ids)))
  return (jnp.concatenate([ids_PxI, tokens_PxT.astype(jnp.int32)], axis=1),
          jnp.concatenate([jnp.ones(ids_PxI.shape, bool), valid_PxT.astype(bool)], axis=1))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelfGuide(Algorithm):
  """Knobs: `self_guide_config.default_config` (every field commented). Token ids are the tokenizer's:
  `instruction_ids` / `plain_instruction_ids` go before each task prompt with / without guidance;
  `guide_close_ids` end the guidance segment; `label_ids` are the positive, neutral and negative
  labels; `end_ids` close a truncated step before the observation."""

  sampling: SamplingParams
  group_size: int
  advantage: str
  kl_coef: float
  env: Any
  max_steps: int
  end_ids: tuple[int, ...]
  guide_close_ids: tuple[int, ...]
  label_ids: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
  instruction_ids: tuple[int, ...]
  plain_instruction_ids: tuple[int, ...]
  history_window: int = 0
  use_guidance: bool = True
  schedule: TrustSchedule = TrustSchedule()
  sg_scale: float = 0.1
  agg: str = "sum"
  skip_first: bool = True
  step_credit: str = "trajectory"
  sg_reward_on_guide_tokens: bool = True
  env_reward: str = "success"
  invalid_action_penalty: float = 0.1
  eval_without_guidance: bool = True
  eval_temperature: float = 0.4

  @property
  def response_slots(self) -> int:
    """Generated slots per update row: the whole episode's, or with a history window one step's (the
    rows are steps; a per-sequence `loss_agg` then averages over played steps, not episodes)."""
    return self.sampling.max_new_tokens * (1 if self.history_window else self.max_steps)

  @property
  def needs_reference(self) -> bool:
    return self.kl_coef > 0

  def phases(self):
    # Both phases are device code (a host environment is called back from inside the episode).
    return (Phase("rollout", self.rollout_phase), Phase("reward", self.reward_phase), UPDATE)

  def episode(self, model, batch, key, guided: bool) -> AgentRollout:
    ids = self.instruction_ids if guided else self.plain_instruction_ids
    prompt_PxT, valid_PxT = _prepend(ids, batch.prompt_tokens_PxT, batch.prompt_valid_PxT)
    return agent_episode(model, prompt_PxT, valid_PxT, self.env, key, self.sampling, self.group_size, self.max_steps,
                         self.end_ids, self.guide_close_ids if guided else None, batch=batch,
                         history_window=self.history_window)

  def rollout(self, model, batch, key) -> AgentRollout:
    return self.episode(model, batch, key, self.use_guidance)

  def env_return(self, rollout: AgentRollout) -> jax.Array:
    """R_env [B]: success in {0, 1} or the normalised score, minus the penalty per invalid action."""
    ex = rollout.extras
    base_B = ex.success_B.astype(jnp.float32) if self.env_reward == "success" else ex.score_B
    return base_B - self.invalid_action_penalty * ex.invalid_BxH.sum(axis=1)

  def rewards(self, rollout: AgentRollout, batch) -> Rewards:
    del batch
    ex = rollout.extras
    polarity_BxH, parsed_BxH = parse_polarity(ex.step_tokens_BxHxN, ex.guide_BxHxN, self.label_ids)
    return Rewards(reward_B=self.env_return(rollout), parts={
        "success_B": ex.success_B.astype(jnp.float32), "score_B": ex.score_B,
        "polarity_BxH": polarity_BxH, "parsed_BxH": parsed_BxH.astype(jnp.int8)})

  def advantages(self, rollout: AgentRollout, rewards: Rewards, step, algo_state=None) -> TokenTerms:
    del algo_state
    ex, g = rollout.extras, self.group_size
    lam = trust_lambda(step, self.schedule) if self.use_guidance else jnp.zeros((), jnp.float32)
    polarity_BxH = rewards.parts["polarity_BxH"]
    r_sg_BxH = internal_rewards(polarity_BxH, ex.step_taken_BxH, self.sg_scale, self.skip_first)
    counted_BxH = counted_steps(ex.step_taken_BxH, self.skip_first)
    env_B = rewards.reward_B
    turn_BxS = rollout.turn_id_BxS
    if self.step_credit == "trajectory":
      total_B = combined_return(env_B, r_sg_BxH, counted_BxH, lam, self.agg)
      adv_B = compute_advantages(self.advantage, total_B.reshape(-1, g)).reshape(-1)
      env_adv_B = compute_advantages(self.advantage, env_B.reshape(-1, g)).reshape(-1)
      per_token = lambda a_B: ex.per_row(a_B)[:, None] * rollout.loss_mask_BxS  # noqa: E731
      adv_BxS, env_adv_BxS = per_token(adv_B), per_token(env_adv_B)
    else:   # each token gets the advantage of the step that wrote it (its turn id), from its episode's row
      per_step = lambda returns_BxH: jnp.take_along_axis(  # noqa: E731
          ex.per_row(step_group_advantages(returns_BxH, ex.step_taken_BxH, g, self.advantage)),
          jnp.clip(turn_BxS - 1, 0, self.max_steps - 1), axis=1) * rollout.loss_mask_BxS
      adv_BxS = per_step(reward_to_go(env_B, r_sg_BxH, counted_BxH, lam))
      env_adv_BxS = per_step(jnp.broadcast_to(env_B[:, None], ex.step_taken_BxH.shape))
    if not self.sg_reward_on_guide_tokens:
      adv_BxS = jnp.where(ex.guide_BxS, env_adv_BxS, adv_BxS)
    metrics = {"adv_abs_mean": jnp.abs(adv_BxS).sum() / jnp.maximum(rollout.loss_mask_BxS.sum(), 1),
               "sg/lambda": lam, "sg/r_sg_mean": aggregate(r_sg_BxH, counted_BxH, self.agg).mean(),
               **self.step_metrics(rollout, polarity_BxH, rewards.parts["parsed_BxH"].astype(bool), "")}
    kl_weight_BxS = jnp.full(rollout.loss_mask_BxS.shape, self.kl_coef, jnp.float32)
    return TokenTerms(adv_BxS=adv_BxS, kl_weight_BxS=kl_weight_BxS, metrics=metrics)

  def step_metrics(self, rollout: AgentRollout, polarity_BxH, parsed_BxH, prefix: str) -> dict[str, jax.Array]:
    """Episode and guidance statistics (docs/metrics.md, "Self-Guide"). Calibration compares z_t with
    the ground-truth progress of a_{t-1}, the action it judges."""
    ex = rollout.extras
    taken_BxH = ex.step_taken_BxH
    judged_BxH, counted_BxH = judged_progress(ex)
    frac = lambda m: (m & counted_BxH).sum() / jnp.maximum(counted_BxH.sum(), 1)  # noqa: E731
    out = {f"{prefix}agent/success": ex.success_B.mean(), f"{prefix}agent/score": ex.score_B.mean(),
           f"{prefix}agent/episode_len": ex.num_steps_B.mean(),
           f"{prefix}agent/invalid_action_frac": ex.invalid_BxH.sum() / jnp.maximum(taken_BxH.sum(), 1),
           f"{prefix}agent/env_failures": ex.failed_B.sum()}
    if self.use_guidance:
      out.update({f"{prefix}sg/frac_positive": frac(polarity_BxH > 0), f"{prefix}sg/frac_negative": frac(polarity_BxH < 0),
                  f"{prefix}sg/frac_neutral": frac((polarity_BxH == 0) & parsed_BxH),
                  f"{prefix}sg/parse_fail_frac": (taken_BxH & ~parsed_BxH).sum() / jnp.maximum(taken_BxH.sum(), 1)})
      if self.calibrated:
        hits_C, totals_C = calibration_counts(polarity_BxH, judged_BxH, counted_BxH)
        out.update({f"{prefix}sg/calibration": hits_C.sum() / jnp.maximum(totals_C.sum(), 1),
                    f"{prefix}sg/calibration_balanced": balanced_accuracy(hits_C, totals_C)})
    return out

  @property
  def calibrated(self) -> bool:
    """Guidance calibration is measured: the environment reports ground-truth progress (text games do not)."""
    return bool(getattr(self.env, "has_progress", False))

  def for_eval(self, sampling) -> SelfGuide:
    """One episode per task, decoded at `eval_temperature` (0: greedy)."""
    return dataclasses.replace(self, sampling=dataclasses.replace(sampling, temperature=self.eval_temperature),
                               group_size=1)

  def host_counters(self) -> dict[str, int]:
    """Environment failures counted on the host: by `envs.base.CallbackEnv` (a raising step, a row
    without an observation) and by the host environment itself (timeouts, restarts, cut observations)."""
    counters = {**getattr(self.env, "counters", {}), **getattr(getattr(self.env, "host", None), "counters", {})}
    return {f"env/{k}": v for k, v in counters.items()}

  # --- evaluation: inference-time guidance -------------------------------------------------

  def eval_outputs(self, model, batch, key) -> dict[str, jax.Array]:
    """One episode per task in the trained mode (and without guidance, `eval_without_guidance`):
    success, score, length and calibration counts per task."""
    out = {}
    modes = [("", self.use_guidance)]
    if self.use_guidance and self.eval_without_guidance:
      modes.append(("unguided_", False))
    key_mode = key
    for prefix, guided in modes:
      rollout = self.episode(model, batch, key_mode, guided)
      ex = rollout.extras
      key_mode = after_all(key, ex.num_steps_B)
      out.update({f"{prefix}success_B": ex.success_B, f"{prefix}score_B": ex.score_B,
                  f"{prefix}len_B": ex.num_steps_B})
      if guided:
        polarity_BxH, _ = parse_polarity(ex.step_tokens_BxHxN, ex.guide_BxHxN, self.label_ids)
        judged_BxH, counted_BxH = judged_progress(ex)
        for c, name in zip(PROGRESS, ("closer", "same", "farther")):
          truth_BxH = counted_BxH & (judged_BxH == c)
          out[f"hits_{name}_B"] = (truth_BxH & (polarity_BxH == c)).sum(axis=1)
          out[f"judged_{name}_B"] = truth_BxH.sum(axis=1)
        out["positive_B"] = ((polarity_BxH > 0) & counted_BxH).sum(axis=1)
    return out

  def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    m = {"eval/success": float(np.mean(outputs["success_B"])), "eval/score": float(np.mean(outputs["score_B"])),
         "eval/episode_len": float(np.mean(outputs["len_B"]))}
    if "unguided_success_B" in outputs:
      m["eval/success_unguided"] = float(np.mean(outputs["unguided_success_B"]))
    if "positive_B" in outputs:
      names = ("closer", "same", "farther")
      hits = np.array([np.sum(outputs[f"hits_{n}_B"]) for n in names], np.float64)
      totals = np.array([np.sum(outputs[f"judged_{n}_B"]) for n in names], np.float64)
      if self.calibrated:
        m["eval/calibration"] = float(hits.sum() / max(totals.sum(), 1))
        m["eval/calibration_balanced"] = float(np.mean(hits[totals > 0] / totals[totals > 0])) if totals.any() else 0.0
      m["eval/frac_positive"] = float(np.sum(outputs["positive_B"])) / max(totals.sum(), 1)
    return m


ALGORITHM = AlgorithmSpec(name="self_guide", build=self_guide_config.build,
                          default_config=self_guide_config.default_config, validate=self_guide_config.validate,
                          sft_demos={"self_guide_grid": self_guide_config.grid_demos,
                                                     "self_guide_games": game_demos}, answer_is_response=False)
