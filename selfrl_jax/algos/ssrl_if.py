"""SSRL-IF (Ren, He et al. 2025; ssrl_if.md): GRPO on instruction ladders with a per-constraint reward —
rules for hard constraints, a self-supervised classifier for soft ones — averaged into one scalar.

    python experiments/train.py --config=configs/ssrl_if/tiny_constraints.py:method --workdir=/tmp/ssrl
    python experiments/reproduce.py --method=ssrl_if          # arms A-F x 3 seeds (§9.6)

One iteration:
  rollout (device)  G responses per prompt (a ladder level x_k: seed + the first k constraints);
  check (host)      per constraint c_i of the prompt: its kind (hard / soft), the rule verdict for
                    hard ones, the oracle verdict where the world has one (the toy's hidden rules,
                    for metrics and arm F only), and the classifier input [c_i | response];
  reward (device)   the classifier, whose parameters live in `TrainState.algo_state["rm"]`, gives
                    R_s(o, c) = softmax(logits)[1] for every constraint; r_i is the rule verdict
                    for hard c_i (R_s when `use_rule_reward=False`) and R_s (or 1[R_s > 0.5] when
                    `soft_reward="binary"`) for soft ones; R = scale * (1/k) sum_i r_i (§3.4);
                    a math row's one "constraint" is its answer, always by math-verify (§3.2);
  update            GRPO on R, the same scalar for every response token (§4.1).

Before RL the preparation stage (`AlgorithmSpec.prepare`, `train/prepare.py`) trains the classifier
on the warm-started policy's own ladder responses (`ssrl_if_prepare.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfrl_jax.algos import ssrl_if_config
from selfrl_jax.algos.base import UPDATE, Phase, Rewards, host_call
from selfrl_jax.algos.grpo import GRPO
from selfrl_jax.algos.losses import kl_problem
from selfrl_jax.algos.registry import AlgorithmSpec
from selfrl_jax.algos.ssrl_if_rm import RM_TEMPLATE_VERSION, classifier_graphdef, init_classifier, rm_inputs, rm_prob
from selfrl_jax.algos.ssrl_if_worlds import RM_TEMPLATES, WORLDS
from selfrl_jax.models.config import ModelConfig
from selfrl_jax.rewards.host import answer_span, decode_responses
from selfrl_jax.rollouts.types import Rollout
from selfrl_jax.sampling.sampler import SamplingParams

HARD, SOFT, ANSWER = 1, 2, 3  # kind_BxK codes; 0 marks an empty constraint slot; ANSWER: a math row's answer


@dataclasses.dataclass(frozen=True, kw_only=True)
class SSRLIF(GRPO):
  """GRPO's single-turn group rollout, advantages and KL, with the constraint reward computed in
  its own phases. Attributes: see `ssrl_if_config.default_config` for the knobs; `world` checks
  constraints on the host. The classifier has the policy's architecture (`model.cfg`) plus its
  2-way head."""

  reward_fn: Any = None  # unused: the reward is the constraint aggregate of `reward_phase`
  world: Any
  tokenizer: Any
  aggregation: str = "mean"
  soft_reward: str = "prob"
  use_rule_reward: bool = True
  soft_source: str = "rm"
  reward_scale: float = 1.0
  answer_pattern: str = ""
  rm_width: int = 16
  eval_temperature: float = 0.5
  rm_forward_batch: int = 0
  truncated_reward: str = "keep"  # rl.truncated_reward: "zero" scores a response that hit max_new_tokens 0

  def phases(self):
    return (Phase("rollout", self.rollout_phase), Phase("check", self.check_phase, host=True),
            Phase("reward", self.reward_phase), UPDATE)

  @property
  def num_constraints(self) -> int:
    return self.world.num_constraints

  # --- host: constraint verdicts and classifier inputs ---------------------------------------

  def answer_of(self, text: str) -> str | None:
    """The part of a response the constraints are checked on (§3.5): group 1 of `answer_pattern`,
    None when it does not match (scored 0), or the whole response when no pattern is set."""
    return answer_span(text, self.answer_pattern)

  def _check_host(self, tokens_BxN, valid_BxN, example_id_B) -> dict[str, np.ndarray]:
    texts = decode_responses(self.tokenizer, tokens_BxN, valid_BxN)
    answers = [self.answer_of(t) for t in texts]
    ids = [int(e) for e in np.asarray(example_id_B).reshape(-1)]
    by_example = {e: self.world.constraints(e)[:self.num_constraints] for e in set(ids)}  # once per group
    constraints = [by_example[e] for e in ids]
    b, k, width = len(texts), self.num_constraints, self.rm_width
    kind = np.zeros((b, k), np.int32)
    rule, oracle = np.zeros((b, k), np.float32), np.zeros((b, k), np.float32)
    rule_v, oracle_v = self.world.verdicts(answers, constraints)
    flat_resp, flat_c, slots = [], [], []
    for i, cs in enumerate(constraints):
      for j, c in enumerate(cs):
        kind[i, j] = ANSWER if c.answer else SOFT if c.soft else HARD
        rule[i, j], oracle[i, j] = rule_v[i][j], oracle_v[i][j]
        if c.answer:  # never judged by the classifier: its input slot stays empty
          continue
        flat_resp.append(answers[i] or "")
        flat_c.append(c.text)
        slots.append((i, j))
    rm_tokens = np.full((b, k, width), self.tokenizer.pad_id, np.int32)
    rm_valid = np.zeros((b, k, width), bool)
    if slots:
      t, v = rm_inputs(self.tokenizer, flat_resp, flat_c, width, self.world.rm_template)
      rows, cols = np.asarray(slots).T
      rm_tokens[rows, cols], rm_valid[rows, cols] = t, v
    return {"kind_BxK": kind, "rule_BxK": rule, "oracle_BxK": oracle, "rm_tokens_BxKxL": rm_tokens,
            "rm_valid_BxKxL": rm_valid, "answered_B": np.asarray([a is not None for a in answers])}

  def _check(self, rollout: Rollout, example_id_P) -> dict[str, jax.Array]:
    b, k, width = rollout.batch_size, self.num_constraints, self.rm_width
    shapes = {"kind_BxK": jax.ShapeDtypeStruct((b, k), jnp.int32),
              "rule_BxK": jax.ShapeDtypeStruct((b, k), jnp.float32),
              "oracle_BxK": jax.ShapeDtypeStruct((b, k), jnp.float32),
              "rm_tokens_BxKxL": jax.ShapeDtypeStruct((b, k, width), jnp.int32),
              "rm_valid_BxKxL": jax.ShapeDtypeStruct((b, k, width), jnp.bool_),
              "answered_B": jax.ShapeDtypeStruct((b,), jnp.bool_)}
    example_id_B = jnp.repeat(example_id_P, b // example_id_P.shape[0])
    return host_call(self._check_host, shapes, rollout.response_tokens_BxN, rollout.response_valid_BxN,
                     example_id_B)

  def check_phase(self, ctx, record):
    del ctx
    return record.replace(aux=self._check(record.rollout, record.batch.example_id_P))

  # --- device: classifier scores and the aggregated reward -----------------------------------

  def classifier_probs(self, model_cfg: ModelConfig, rm_params, aux) -> jax.Array:
    """R_s(o, c_i) for every constraint slot, prob_BxK."""
    b, k, width = aux["rm_tokens_BxKxL"].shape
    rm = nnx.merge(classifier_graphdef(model_cfg), rm_params)
    tokens, valid = aux["rm_tokens_BxKxL"].reshape(b * k, width), aux["rm_valid_BxKxL"].reshape(b * k, width)
    if not self.rm_forward_batch:
      return rm_prob(rm(tokens, valid)).reshape(b, k)
    # lax.map keeps one chunk's activations live at a time (same values, bounded memory).
    prob = jax.lax.map(lambda tv: rm_prob(rm(tv[0][None], tv[1][None]))[0], (tokens, valid),
                       batch_size=self.rm_forward_batch)
    return prob.reshape(b, k)

  def constraint_rewards(self, prob_BxK, aux) -> jax.Array:
    """r_i per constraint slot (§3.3-3.4 and the §6.1 ablations); 0 on empty slots; a math answer
    always by its rule (the released code routes `light` rows to the math check in every arm)."""
    soft_score = prob_BxK if self.soft_reward == "prob" else (prob_BxK > 0.5).astype(jnp.float32)
    if self.soft_source == "oracle":
      soft_score = aux["oracle_BxK"]
    kind = aux["kind_BxK"]
    hard_score = aux["rule_BxK"] if self.use_rule_reward else soft_score
    score = jnp.where(kind == HARD, hard_score, jnp.where(kind == ANSWER, aux["rule_BxK"], soft_score))
    return jnp.where(kind > 0, score, 0.0)

  def aggregate(self, r_BxK, kind_BxK, answered_B) -> jax.Array:
    """R = scale * mean_i r_i (or 1[every r_i >= 0.5] for all_or_nothing); 0 without an answer."""
    present = kind_BxK > 0
    count_B = present.sum(axis=1)
    if self.aggregation == "mean":
      value_B = r_BxK.sum(axis=1) / jnp.maximum(count_B, 1)
    else:
      value_B = jnp.all((r_BxK >= 0.5) | ~present, axis=1).astype(jnp.float32)
    return jnp.where(answered_B & (count_B > 0), self.reward_scale * value_B, 0.0)

  def reward_phase(self, ctx, record):
    aux = record.aux
    needs_rm = self.soft_source == "rm" or not self.use_rule_reward
    prob = (self.classifier_probs(ctx.model.cfg, ctx.algo_state["rm"], aux) if needs_rm
            else jnp.zeros(aux["kind_BxK"].shape))
    r_BxK = self.constraint_rewards(prob, aux)
    reward_B = self.aggregate(r_BxK, aux["kind_BxK"], aux["answered_B"])
    if self.truncated_reward == "zero":
      reward_B = jnp.where(record.rollout.stopped_B, reward_B, 0.0)
    present = aux["kind_BxK"] > 0
    judged = present & (aux["kind_BxK"] != ANSWER)
    # Without an oracle for soft constraints (IFEval world) the oracle metrics cover the others only.
    known = present if self.world.has_oracle else present & (aux["kind_BxK"] != SOFT)
    n_known = jnp.maximum(known.sum(axis=1), 1)
    math_row_B = jnp.any(aux["kind_BxK"] == ANSWER, axis=1)
    parts = {"oracle_constraint_acc_B": (aux["oracle_BxK"] * known).sum(axis=1) / n_known,
             "oracle_all_met_B": jnp.all((aux["oracle_BxK"] > 0) | ~known, axis=1).astype(jnp.float32),
             # the fraction of responses `answer_pattern` finds an answer in (the rest score 0)
             "answered_B": aux["answered_B"].astype(jnp.float32),
             # accuracy on math rows = reward/math_solved / reward/math_row
             "math_row_B": math_row_B.astype(jnp.float32),
             "math_solved_B": (math_row_B & (aux["rule_BxK"][:, 0] > 0)).astype(jnp.float32)}
    if needs_rm:  # no classifier ran otherwise (arm F): nothing to report
      parts["rm_scored_B"] = (prob * judged).sum(axis=1) / jnp.maximum(judged.sum(axis=1), 1)
    return record.replace(rewards=Rewards(reward_B=reward_B, parts=parts))

  def host_counters(self) -> dict[str, int]:
    counters = getattr(self.world, "counters", None)
    return {f"ifeval/{k}": v for k, v in counters().items()} if counters else {}

  def rewards(self, rollout, batch):
    raise NotImplementedError("SSRL-IF's reward reads the classifier in algo_state: see reward_phase")

  def init_state(self, key, model):
    return {"rm": init_classifier(model.cfg, key)}

  # --- evaluation: the world's oracle on held-out full instructions --------------------------

  def for_eval(self, sampling):
    return dataclasses.replace(self, sampling=dataclasses.replace(sampling, temperature=self.eval_temperature),
                               group_size=1)

  def eval_outputs(self, model, batch, key) -> dict[str, jax.Array]:
    rollout = self.rollout(model, batch, key)
    aux = self._check(rollout, batch.example_id_P)
    kind = aux["kind_BxK"]
    if not self.world.has_oracle:  # nothing can judge soft constraints: held-out metrics cover hard ones
      kind = jnp.where(kind == SOFT, 0, kind)
    return {"oracle_BxK": aux["oracle_BxK"], "kind_BxK": kind, "answered_B": aux["answered_B"],
            "len_B": rollout.response_valid_BxN.sum(axis=1)}

  def eval_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    return eval_metrics(outputs)


def eval_metrics(outputs: dict[str, np.ndarray]) -> dict[str, float]:
  """Constraint-level accuracy (eval/accuracy), prompt-level (all met), hard-only and soft-only
  accuracy by the oracle, and the mean response length."""
  kind, met = np.asarray(outputs["kind_BxK"]), np.asarray(outputs["oracle_BxK"]) > 0
  present, hard, soft = kind > 0, kind == HARD, kind == SOFT

  def rate(mask):
    return float(met[mask].mean()) if mask.any() else float("nan")

  return {"eval/accuracy": rate(present), "eval/prompt_acc": float(np.all(met | ~present, axis=1).mean()),
          "eval/hard_acc": rate(hard), "eval/soft_acc": rate(soft),
          "eval/completion_len_mean": float(np.mean(outputs["len_B"]))}


def _validate(cfg, check) -> None:
  ssrl_if_config.validate(cfg, check)
  check(cfg.rl.kl_coef >= 0, "rl.kl_coef", f"must be >= 0, got {cfg.rl.kl_coef}")
  problem = kl_problem(cfg.rl.kl_estimator, cfg.rl.kl_mode)
  check(cfg.rl.kl_coef == 0 or problem is None, "rl.kl_estimator", f"{problem} (rl.kl_coef={cfg.rl.kl_coef})")


def _build(cfg, tokenizer, reward_fn, sampling: SamplingParams, records=None) -> SSRLIF:
  del reward_fn  # the reward is the constraint aggregate computed in the algorithm's phases
  s = cfg.ssrl_if
  return SSRLIF(sampling=sampling, group_size=cfg.rl.group_size, advantage=cfg.rl.advantage,
                kl_coef=cfg.rl.kl_coef, world=WORLDS[s.world](cfg, records), tokenizer=tokenizer,
                aggregation=s.aggregation, soft_reward=s.soft_reward,
                use_rule_reward=s.use_rule_reward, soft_source=s.soft_source, reward_scale=s.reward_scale,
                answer_pattern=s.answer_pattern, rm_width=s.rm_width, eval_temperature=s.eval_temperature,
                rm_forward_batch=s.rm_forward_batch, truncated_reward=cfg.rl.truncated_reward)


def _prepare(cfg, algorithm, algo_state, model, tokenizer, train_source):
  from selfrl_jax.algos.ssrl_if_prepare import prepare  # pylint: disable=import-outside-toplevel
  return prepare(cfg, algorithm, algo_state, model, tokenizer, train_source)


def _prepare_settings(cfg) -> dict:
  s = cfg.ssrl_if
  # The ladders are built from the full instructions of the training rows, which are the same whatever
  # rung `levels` draws (data.ladders): arms that differ only in levels share one classifier.
  task = cfg.task.to_dict()
  task["params"] = {k: v for k, v in task.get("params", {}).items() if k != "levels"}
  return {"seed": cfg.seed, "task": task, "rl_sampling": [cfg.rl.temperature, cfg.rl.top_k, cfg.rl.top_p,
                                                                       cfg.rl.max_new_tokens, cfg.rl.max_prompt_len],
          **{k: s[k] for k in ("world", "rm_ladders", "rm_pairs", "rm_holdout", "rm_steps", "rm_batch_size",
                               "rm_learning_rate", "rm_init", "rm_objective", "rm_width", "answer_pattern")},
          "template": [RM_TEMPLATE_VERSION, RM_TEMPLATES[s.world]]}


ALGORITHM = AlgorithmSpec(name="ssrl_if", build=_build, default_config=ssrl_if_config.default_config,
                          validate=_validate, replaces={}, prepare=_prepare, prepare_settings=_prepare_settings)
