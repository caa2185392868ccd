"""HeRL (Zhang et al. 2026, "Experience is the Best Teacher"; shared/papers/herl.md): GRPO on a rubric
reward whose failed groups are revised by the policy itself from hindsight experience.

    python experiments/train.py --config=configs/herl/tiny_addition.py --workdir=/tmp/herl
    python experiments/reproduce.py --method=herl          # arms (1)-(5) x 3 seeds, matched budget

One iteration (phases; P prompts, G rollouts each, B = P G rows, L = min(candidate_limit, G)):
  rollout   (device) y_j ~ pi(.|x), G per prompt, in the layout [context W | response N + 1];
  diagnose  (host)   rubric judgements m_k (eq. 1) -> R; in groups with best b < tau the candidates
                     (ties at b, most items met first, eq. 2); their hindsight prompts
                     h_j = Template(x, y_j, met, unmet) from the buffer's token ids (eq. 3);
  revise    (device) y~_j ~ pi(.|h_j) at T = revision_temperature (eq. 4);
  rejudge   (host)   r~_j = R(x, y~_j), the best of `revision_samples` per candidate;
  inject    (device) bonus r_j <- r_j + alpha (r~_j - r_j) on candidates (eq. 5); per group the best
                     revision, if r~ >= b, overwrites a random slot with prompt h and reward r~ (else the
                     best original is copied there: `fallback`) (eq. 6);
  update             GRPO advantage with the unbiased std over the group incl. the injected slot (eq. 7);
                     dual-clip PPO on ordinary tokens, rho/(rho + gamma) on hindsight tokens (eq. 8).

With `herl.enable=False` only rollout, diagnose (without candidates) and update run: plain GRPO on
the same reward and loss. Evaluation runs the test-time experience rounds (§2 (10)).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from selfrl_jax.algos import herl_config
from selfrl_jax.algos.advantages import compute_advantages
from selfrl_jax.algos.base import UPDATE, Phase, Rewards, TokenTerms, host_call
from selfrl_jax.algos.grpo import GRPO
from selfrl_jax.algos.herl_objective import (apply_improvement_bonus, candidate_mask, choose_injection,
                                             replace_slot, rubric_score, select_revision_candidates)
from selfrl_jax.algos.herl_rubrics import build_rubric
from selfrl_jax.algos.herl_templates import HindsightTemplate
from selfrl_jax.algos.losses import kl_problem
from selfrl_jax.algos.registry import AlgorithmSpec
from selfrl_jax.rewards.host import decode_responses
from selfrl_jax.rollouts.segments import Segment, context, pack_segments
from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.sampling.sampler import SamplingParams, generate


def _left_pad(tokens_RxT, valid_RxT, width: int, pad_id: int):
  extra = width - tokens_RxT.shape[1]
  return (jnp.pad(tokens_RxT, ((0, 0), (extra, 0)), constant_values=pad_id),
          jnp.pad(valid_RxT.astype(bool), ((0, 0), (extra, 0))))


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeRL(GRPO):
  """Attributes (knobs: `herl_config.default_config`): `rubric` judges responses on the host;
  `template` builds h; `revision_sampling` decodes revisions; `he_prompt_len` is the context width W
  of every row (the injected slot's h is left-truncated to it)."""

  reward_fn: Any = None  # unused: the reward is the rubric score of the diagnose phase
  rubric: Any
  tokenizer: Any
  template: HindsightTemplate
  revision_sampling: SamplingParams
  he_prompt_len: int
  enable: bool = True
  threshold: float = 1.0
  candidate_limit: int = 16
  revision_samples: int = 1
  bonus: bool = True
  alpha: float = 0.05
  bonus_clamp_min: bool = False
  replace_top_n: int = 1
  fallback: str = "copy_best"
  train_with_he_prompt: bool = True
  is_ratio: str = "ratio"
  gamma: float = 1.0
  dual_clip_c: float = 3.0
  append_eos: bool = False
  rescore_temperature: str = "revision"
  eval_rounds: int = 2
  eval_revision_temperature: float = 0.3
  eval_round_context: str = "hindsight"
  truncated_reward: str = "keep"

  # --- shapes and the loss -----------------------------------------------------------------

  @property
  def objectives(self) -> tuple[str, ...]:
    return ("dual_clip", herl_config.IS_RATIOS[self.is_ratio])

  @property
  def surrogate_kwargs(self) -> tuple[tuple[str, float], ...]:
    return (("dual_clip_c", self.dual_clip_c), ("is_gamma", self.gamma))

  @property
  def response_width(self) -> int:
    """N, or N + 1 with `append_eos` (room for the EOS appended to a truncated revision)."""
    return self.sampling.max_new_tokens + int(self.enable and self.append_eos)

  @property
  def response_slots(self) -> int:
    return self.response_width

  @property
  def num_candidates(self) -> int:
    return min(self.candidate_limit, self.group_size)

  def phases(self):
    first = (Phase("rollout", self.rollout_phase), Phase("diagnose", self.diagnose_phase, host=True))
    if not self.enable:
      return (*first, UPDATE)
    return (*first, Phase("revise", self.revise_phase), Phase("rejudge", self.rejudge_phase, host=True),
            Phase("inject", self.inject_phase), UPDATE)

  # --- host: the rubric and the hindsight prompts --------------------------------------------

  def _judge_host(self, tokens_BxN, valid_BxN, example_id_B):
    texts = decode_responses(self.tokenizer, tokens_BxN, valid_BxN)
    met, valid, weights = self.rubric.judge(texts, [int(e) for e in example_id_B])
    return met.astype(np.float32), valid.astype(bool), weights.astype(np.float32)

  def judge(self, tokens_BxN, valid_BxN, stopped_B, example_id_B):
    """(R [B], met [B, K], item_valid [B, K]) of responses: eq. (1) on the rubric's verdicts."""
    b, k = tokens_BxN.shape[0], self.rubric.num_items
    shapes = (jax.ShapeDtypeStruct((b, k), jnp.float32), jax.ShapeDtypeStruct((b, k), jnp.bool_),
              jax.ShapeDtypeStruct((b, k), jnp.float32))
    met_BxK, valid_BxK, weights_BxK = host_call(self._judge_host, shapes, tokens_BxN, valid_BxN, example_id_B)
    score_B = rubric_score(met_BxK, weights_BxK, valid_BxK)
    if self.truncated_reward == "zero":
      score_B = jnp.where(stopped_B, score_B, 0.0)
    return score_B, met_BxK, valid_BxK

  def _hindsight_host(self, x_RxT, x_valid_RxT, y_RxN, y_valid_RxN, met_RxK, item_valid_RxK, example_id_R,
                      active_R):
    width, pad = self.he_prompt_len, self.tokenizer.pad_id
    r = x_RxT.shape[0]
    tokens, valid, truncated = np.full((r, width), pad, np.int32), np.zeros((r, width), bool), np.zeros(r, bool)
    for i in range(r):
      x = x_RxT[i][x_valid_RxT[i]].tolist()
      if active_R[i]:
        items = item_valid_RxK[i]
        descriptions = self.rubric.descriptions(int(example_id_R[i]))[:int(items.sum())]
        met = [bool(m) for m in met_RxK[i][items]][:len(descriptions)]
        ids = self.template.ids(self.tokenizer, x, y_RxN[i][y_valid_RxN[i]].tolist(), met, descriptions)
      else:  # not a candidate: its revision is sampled (static shapes) and discarded
        ids = x
      truncated[i] = len(ids) > width
      ids = ids[-width:]  # left truncation, as released
      tokens[i, width - len(ids):], valid[i, width - len(ids):] = ids, True
    return tokens, valid, truncated

  def hindsight_prompts(self, x_RxT, x_valid_RxT, y_RxN, y_valid_RxN, met_RxK, item_valid_RxK, example_id_R,
                        active_R):
    """h for each row (left-padded to W) and whether it was left-truncated; inactive rows get x."""
    r, w = x_RxT.shape[0], self.he_prompt_len
    shapes = (jax.ShapeDtypeStruct((r, w), jnp.int32), jax.ShapeDtypeStruct((r, w), jnp.bool_),
              jax.ShapeDtypeStruct((r,), jnp.bool_))
    return host_call(self._hindsight_host, shapes, x_RxT, x_valid_RxT, y_RxN, y_valid_RxN, met_RxK,
                     item_valid_RxK, example_id_R, active_R)

  # --- phases ------------------------------------------------------------------------------

  def rollout(self, model, batch, key) -> Rollout:
    """G responses per prompt in the layout [x left-padded to W | response N (+ 1 hole)]."""
    out = generate(model, batch.prompt_tokens_PxT, batch.prompt_valid_PxT, key, self.sampling,
                   group_size=self.group_size)
    x_BxT, x_valid_BxT = (jnp.repeat(a, self.group_size, axis=0) for a in
                          (batch.prompt_tokens_PxT, batch.prompt_valid_PxT))
    return self._layout(*_left_pad(x_BxT, x_valid_BxT, self.context_width(batch), self.sampling.pad_id),
                        out.tokens_BxN, out.valid_BxN, out.logp_BxN, out.stopped_B, self.sampling.temperature)

  def context_width(self, batch) -> int:
    return self.he_prompt_len if self.enable else batch.prompt_width

  def _layout(self, ctx_BxW, ctx_valid_BxW, tokens_BxN, valid_BxN, logp_BxN, stopped_B, temperature) -> Rollout:
    extra = self.response_width - tokens_BxN.shape[1]
    pad = lambda a, v=0: jnp.pad(a, ((0, 0), (0, extra)), constant_values=v)  # noqa: E731
    response = Segment(tokens_BxN=pad(tokens_BxN, self.sampling.pad_id), valid_BxN=pad(valid_BxN.astype(bool)),
                       logp_BxN=pad(logp_BxN), stopped_B=stopped_B, turn=1, temperature=temperature or 1.0,
                       trained=True)
    return pack_segments([context(ctx_BxW, ctx_valid_BxW), response])

  def diagnose_phase(self, ctx, record):
    del ctx
    rollout, batch, g = record.rollout, record.batch, self.group_size
    example_id_B = jnp.repeat(batch.example_id_P, g)
    score_B, met_BxK, item_valid_BxK = self.judge(rollout.response_tokens_BxN, rollout.response_valid_BxN,
                                                  rollout.stopped_B, example_id_B)
    rewards = Rewards(reward_B=score_B, parts={"met_BxK": met_BxK, "rubric_B": score_B,
                                               "is_he_B": jnp.zeros(score_B.shape, jnp.int32)})
    if not self.enable:
      return record.replace(rewards=rewards)
    p = batch.num_prompts
    n_met_PxG = (met_BxK * item_valid_BxK).sum(axis=1).reshape(p, g)
    index_PxL, cand_valid_PxL = select_revision_candidates(score_B.reshape(p, g), n_met_PxG, self.threshold,
                                                           self.candidate_limit)
    rows_R = (jnp.arange(p)[:, None] * g + index_PxL).reshape(-1)
    x_RxT, x_valid_RxT = (jnp.repeat(a, self.num_candidates, axis=0) for a in
                          (batch.prompt_tokens_PxT, batch.prompt_valid_PxT))
    h_RxW, h_valid_RxW, h_truncated_R = self.hindsight_prompts(
        x_RxT, x_valid_RxT, rollout.response_tokens_BxN[rows_R], rollout.response_valid_BxN[rows_R],
        met_BxK[rows_R], item_valid_BxK[rows_R], example_id_B[rows_R], cand_valid_PxL.reshape(-1))
    aux = {"index_PxL": index_PxL, "cand_valid_PxL": cand_valid_PxL, "h_RxW": h_RxW, "h_valid_RxW": h_valid_RxW,
           "example_id_R": example_id_B[rows_R]}
    metrics = {**record.metrics, "herl/he_prompt_truncated": (h_truncated_R & cand_valid_PxL.reshape(-1)).sum()}
    return record.replace(rewards=rewards, aux=aux, metrics=metrics)

  def revise_phase(self, ctx, record):
    aux = record.aux
    out = generate(ctx.model, aux["h_RxW"], aux["h_valid_RxW"], jax.random.fold_in(ctx.key, 1),
                   self.revision_sampling, group_size=self.revision_samples)
    return record.replace(aux={**aux, "revision": out._replace(cache=None)})

  def rejudge_phase(self, ctx, record):
    del ctx
    out = record.aux["revision"]
    example_id_Q = jnp.repeat(record.aux["example_id_R"], self.revision_samples)
    score_Q, _, _ = self.judge(out.tokens_BxN, out.valid_BxN, out.stopped_B, example_id_Q)
    return record.replace(aux={**record.aux, "revised_Q": score_Q})

  def inject_phase(self, ctx, record):
    """Bonus (eq. 5), injection (eq. 6) and the final layout; `is_he_B` marks hindsight rows."""
    aux, rollout, rewards = record.aux, record.rollout, record.rewards
    p, g, lc, s = record.batch.num_prompts, self.group_size, self.num_candidates, self.revision_samples
    score_PxG = rewards.reward_B.reshape(p, g)
    index_PxL, cand_valid_PxL = aux["index_PxL"], aux["cand_valid_PxL"]
    revised_PxLxS = aux["revised_Q"].reshape(p, lc, s)
    pick_PxL = jnp.argmax(revised_PxLxS, axis=2)  # the best of each candidate's revisions
    revised_PxL = revised_PxLxS.max(axis=2)
    onehot_PxLxG = jax.nn.one_hot(index_PxL, g) * cand_valid_PxL[..., None]
    cand_PxG = candidate_mask(index_PxL, cand_valid_PxL, g)
    revised_PxG = jnp.einsum("plg,pl->pg", onehot_PxLxG, revised_PxL)
    best_P = score_PxG.max(axis=1)
    new_score_PxG = (apply_improvement_bonus(score_PxG, revised_PxG, cand_PxG, self.alpha, self.bonus_clamp_min)
                     if self.bonus else score_PxG)

    # The donor rows: revision q = (p, l, pick) with context h (or x) and response y~.
    out = aux["revision"]
    rev_rows_PxL = (jnp.arange(p)[:, None] * lc + jnp.arange(lc)[None]) * s + pick_PxL
    n_rev = out.tokens_BxN.shape[1]
    tokens, valid = out.tokens_BxN, out.valid_BxN
    # Released: EOS goes back only where the re-tokenised revision is shorter than the limit, i.e. on
    # revisions that stopped (their sampled stop token is kept here); a truncated one stays truncated.
    # `append_eos` (not released) closes truncated revisions with EOS too.
    if self.append_eos:
      tokens = jnp.pad(tokens, ((0, 0), (0, 1)), constant_values=self.sampling.pad_id)
      valid = jnp.pad(valid, ((0, 0), (0, 1)))
      eos_at = jnp.arange(n_rev + 1)[None] == out.length_B[:, None]
      add = eos_at & ~out.stopped_B[:, None]
      tokens = jnp.where(add, self.tokenizer.eos_ids[0], tokens)
      valid = valid | add
    logp = jnp.pad(out.logp_BxN, ((0, 0), (0, tokens.shape[1] - n_rev)))
    if self.train_with_he_prompt:
      ctx_QxW, ctx_valid_QxW = jnp.repeat(aux["h_RxW"], s, axis=0), jnp.repeat(aux["h_valid_RxW"], s, axis=0)
    else:
      x_rows = (jnp.repeat(a, lc * s, axis=0) for a in (record.batch.prompt_tokens_PxT, record.batch.prompt_valid_PxT))
      ctx_QxW, ctx_valid_QxW = _left_pad(*x_rows, self.he_prompt_len, self.sampling.pad_id)
    he_temperature = (self.revision_sampling.temperature if self.rescore_temperature == "revision"
                      else self.sampling.temperature)
    stopped = out.stopped_B | self.append_eos  # an appended EOS closes every truncated revision
    he_rollout = self._layout(ctx_QxW, ctx_valid_QxW, tokens, valid, logp, stopped, he_temperature)

    # Up to replace_top_n revisions per group, best first, each into its own random slot.
    slots_PxG = jnp.argsort(jax.random.uniform(jax.random.fold_in(ctx.key, 2), (p, g)), axis=1)
    final, reward_B = rollout, new_score_PxG.reshape(-1)
    is_he_B = jnp.zeros((p * g,), jnp.int32)
    remaining_PxL = cand_valid_PxL
    injected_P = jnp.zeros((p,), jnp.int32)
    for n in range(self.replace_top_n):
      src_P, ok_P = choose_injection(revised_PxL, remaining_PxL, best_P)
      remaining_PxL = remaining_PxL & ~(jax.nn.one_hot(src_P, lc, dtype=bool) & ok_P[:, None])
      donor = jax.tree.map(lambda a, src=src_P: a[jnp.take_along_axis(rev_rows_PxL, src[:, None], 1)[:, 0]],
                           he_rollout)
      final = jax.tree.map(lambda base, d, n=n, ok=ok_P: replace_slot(base, d, slots_PxG[:, n], ok, g), final, donor)
      reward_B = replace_slot(reward_B, jnp.take_along_axis(revised_PxL, src_P[:, None], 1)[:, 0], slots_PxG[:, n],
                              ok_P, g)
      is_he_B = replace_slot(is_he_B, jnp.ones((p,), jnp.int32), slots_PxG[:, n], ok_P, g)
      injected_P = injected_P + ok_P
    rewritten_P = cand_valid_PxL.any(axis=1)
    copy_P = rewritten_P & (injected_P == 0) & (self.fallback == "copy_best")
    # The best original after the bonus (the candidate whose revision scored highest), as released.
    best_row_B = jnp.arange(p) * g + jnp.argmax(new_score_PxG, axis=1)
    copied = jax.tree.map(lambda a: a[best_row_B], rollout)
    final = jax.tree.map(lambda base, d: replace_slot(base, d, slots_PxG[:, 0], copy_P, g), final, copied)
    reward_B = replace_slot(reward_B, new_score_PxG.reshape(-1)[best_row_B], slots_PxG[:, 0], copy_P, g)

    valid_PxL = cand_valid_PxL.astype(jnp.float32)
    n_cand = jnp.maximum(valid_PxL.sum(), 1.0)
    n_rewritten = jnp.maximum(rewritten_P.sum(), 1)
    he_tokens = (final.loss_mask_BxS & (is_he_B[:, None] > 0)).sum()
    improved_P = (revised_PxL.max(axis=1, where=cand_valid_PxL, initial=-1.0) > best_P) & rewritten_P
    metrics = {**record.metrics,
               "herl/groups_rewritten_frac": rewritten_P.mean(),
               "herl/candidates_per_group": valid_PxL.sum() / p,
               "herl/rewrite_success_rate": improved_P.sum() / n_rewritten,
               "herl/revision_over_prev": (valid_PxL * (revised_PxL > jnp.take_along_axis(score_PxG, index_PxL, 1))
                                           ).sum() / n_cand,
               # The released logs' definitions: injected groups / rewrite jobs; groups with a strictly better revision.
               "herl/released_success_rate": (injected_P > 0).sum() / n_cand,
               "herl/released_over_prev": improved_P.sum(),
               "herl/revised_reward_mean": (valid_PxL * revised_PxL).sum() / n_cand,
               "herl/bonus_mean": jnp.where(cand_PxG, new_score_PxG - score_PxG, 0.0).sum() / n_cand,
               "herl/injected_per_group": injected_P.mean(),
               "herl/fallback_copies": copy_P.sum(),
               "herl/he_token_share": he_tokens / jnp.maximum(final.loss_mask_BxS.sum(), 1),
               "herl/generated_sequences": p * g + valid_PxL.sum() * s,
               "herl/revision_truncated_frac": (valid_PxL * (~out.stopped_B).reshape(p, lc, s).any(axis=2)).sum() / n_cand}
    parts = {**rewards.parts, "is_he_B": is_he_B}
    return record.replace(rollout=final, rewards=Rewards(reward_B=reward_B, parts=parts), aux=None,
                          metrics=metrics)

  # --- update ------------------------------------------------------------------------------

  def rewards(self, rollout, batch):
    raise NotImplementedError("HeRL's reward is computed in its diagnose phase (the rubric on the host)")

  def advantages(self, rollout, rewards, step, algo_state=None) -> TokenTerms:
    """Eq. (7) over the group incl. the injected slot; hindsight rows use objectives[1] (eq. 8)."""
    terms = super().advantages(rollout, rewards, step, algo_state)
    is_he_BxS = (rewards.parts["is_he_B"][:, None] > 0) & rollout.loss_mask_BxS
    return terms.replace(objective_BxS=is_he_BxS.astype(jnp.int32))

  # --- evaluation: test-time experience rounds (§2 (10)) --------------------------------------

  def for_eval(self, sampling):
    return dataclasses.replace(self, sampling=sampling, group_size=1, revision_samples=1,
                               revision_sampling=dataclasses.replace(
                                   self.revision_sampling, temperature=self.eval_revision_temperature))

  def eval_outputs(self, model, batch, key) -> dict[str, jax.Array]:
    """Round 0: one answer per prompt; round k: rows with an unmet item are revised from h(x, best
    answer so far) and keep the revision if it scores higher (`eval_round_context="prompt"`: resampled
    from x alone, the best-of-k control). Returns the rubric score and whether every item is met
    after each round ([rounds + 1, B])."""
    rollout = self.rollout(model, batch, key)
    n = self.sampling.max_new_tokens
    best_BxN, best_valid_BxN = rollout.response_tokens_BxN[:, :n], rollout.response_valid_BxN[:, :n]
    best_B, met_BxK, item_valid_BxK = self.judge(best_BxN, best_valid_BxN, rollout.stopped_B, batch.example_id_P)
    all_met = lambda m, v: jnp.all((m > 0) | ~v, axis=1) & v.any(axis=1)  # noqa: E731
    scores, passed = [best_B], [all_met(met_BxK, item_valid_BxK)]
    # One protocol for every arm: the full diagnosis (NaiveHE's training prompt is not the test-time one).
    wide = dataclasses.replace(self, he_prompt_len=max(self.he_prompt_len, batch.prompt_width),
                               template=dataclasses.replace(self.template, diagnosis="full"))
    for k in range(self.eval_rounds):
      active_B = best_B < self.threshold
      hindsight_B = active_B & (self.eval_round_context == "hindsight")  # inactive rows get x
      h, h_valid, _ = wide.hindsight_prompts(batch.prompt_tokens_PxT, batch.prompt_valid_PxT, best_BxN, best_valid_BxN,
                                             met_BxK, item_valid_BxK, batch.example_id_P, hindsight_B)
      out = generate(model, h, h_valid, jax.random.fold_in(key, k + 1), self.revision_sampling)
      tokens_BxN = jnp.pad(out.tokens_BxN, ((0, 0), (0, n - out.tokens_BxN.shape[1])), constant_values=self.sampling.pad_id)
      valid_BxN = jnp.pad(out.valid_BxN, ((0, 0), (0, n - out.valid_BxN.shape[1])))
      score_B, rmet_BxK, rvalid_BxK = self.judge(tokens_BxN, valid_BxN, out.stopped_B, batch.example_id_P)
      better_B = active_B & (score_B > best_B)
      pick = lambda new, old: jnp.where(better_B.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)  # noqa: E731
      best_BxN, best_valid_BxN, met_BxK, item_valid_BxK, best_B = (
          pick(tokens_BxN, best_BxN), pick(valid_BxN, best_valid_BxN), pick(rmet_BxK, met_BxK),
          pick(rvalid_BxK, item_valid_BxK), pick(score_B, best_B))
      scores.append(best_B)
      passed.append(all_met(met_BxK, item_valid_BxK))
    return {"score_KxB": jnp.stack(scores), "pass_KxB": jnp.stack(passed),
            "len_B": rollout.response_valid_BxN.sum(axis=1)}

  def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """eval/accuracy: every rubric item met (exact match on the toy; all constraints on IF) after
    round 0; eval/rubric: the mean rubric score; `_round{k}` after k test-time rounds."""
    score, passed = np.asarray(outputs["score_KxB"]), np.asarray(outputs["pass_KxB"])
    out = {"eval/accuracy": float(passed[0].mean()), "eval/rubric": float(score[0].mean()),
           "eval/completion_len_mean": float(np.mean(outputs["len_B"]))}
    for k in range(1, score.shape[0]):
      out[f"eval/accuracy_round{k}"] = float(passed[k].mean())
      out[f"eval/rubric_round{k}"] = float(score[k].mean())
    return out

  def host_counters(self) -> dict[str, int]:
    return {f"rubric/{k}": v for k, v in getattr(self.rubric, "counters", {}).items()}


def _validate(cfg, check) -> None:
  herl_config.validate(cfg, check)
  rl = cfg.rl
  check(rl.advantage in ("grpo_sample_std", "grpo", "dr_grpo"), "rl.advantage",
        f"HeRL normalises within the group incl. the injected slot: grpo_sample_std (released), grpo or "
        f"dr_grpo, got {rl.advantage!r}")
  check(rl.kl_coef >= 0, "rl.kl_coef", f"must be >= 0, got {rl.kl_coef}")
  problem = kl_problem(rl.kl_estimator, rl.kl_mode)
  check(rl.kl_coef == 0 or problem is None, "rl.kl_estimator", f"{problem} (rl.kl_coef={rl.kl_coef})")


def he_prompt_width(cfg) -> int:
  """W: `herl.he_prompt_len`, or derived: the prompt, the draft and room for the template's text
  (64 tokens + 2 per rubric item for the toy's flags; 192 + 32 per constraint for the released one)."""
  h, rl = cfg.herl, cfg.rl
  if h.he_prompt_len:
    return h.he_prompt_len
  k = rl.max_answer_len if h.rubric == "digits" else cfg.task.params.get("num_constraints", 5)
  room = 8 + 2 * k if h.template == "flags" else 192 + 32 * k
  return rl.max_prompt_len + rl.max_new_tokens + room


def _build(cfg, tokenizer, reward_fn, sampling: SamplingParams, records=None) -> HeRL:
  del reward_fn
  h = cfg.herl
  revision = dataclasses.replace(sampling, temperature=h.revision_temperature,
                                 max_new_tokens=h.revision_max_new_tokens or sampling.max_new_tokens)
  return HeRL(sampling=sampling, group_size=cfg.rl.group_size, advantage=cfg.rl.advantage, kl_coef=cfg.rl.kl_coef,
              rubric=build_rubric(h.rubric, cfg, records), tokenizer=tokenizer,
              template=HindsightTemplate(h.template, h.diagnosis), revision_sampling=revision,
              he_prompt_len=he_prompt_width(cfg), enable=h.enable, threshold=h.threshold,
              candidate_limit=h.candidate_limit, revision_samples=h.revision_samples, bonus=h.bonus, alpha=h.alpha,
              bonus_clamp_min=h.bonus_clamp_min, replace_top_n=h.replace_top_n, fallback=h.fallback,
              train_with_he_prompt=h.train_with_he_prompt, is_ratio=h.is_ratio, gamma=h.gamma,
              dual_clip_c=h.dual_clip_c, append_eos=h.append_eos, rescore_temperature=h.rescore_temperature,
              eval_rounds=h.eval_rounds,
              eval_revision_temperature=h.eval_revision_temperature, eval_round_context=h.eval_round_context,
              truncated_reward=cfg.rl.truncated_reward)


ALGORITHM = AlgorithmSpec(name="herl", build=_build, default_config=herl_config.default_config, validate=_validate,
                          sft_demos={"herl_toy": herl_config.toy_demos})
