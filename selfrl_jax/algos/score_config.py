"""SCoRe's config section `config.score`, its validation, and its toy warm-start demonstrations.

Spec: ../shared/papers/score.md §9 (knobs) and §11 (toy); choices in configs/score/README.md.
"""

from __future__ import annotations

import ml_collections

from selfrl_jax.algos.registry import CheckFn
from selfrl_jax.algos.losses import kl_problem

TURN_CREDITS = ("per_turn", "episode")
BASELINES = ("rloo", "batch_mean", "none")
ADV_NORMS = ("none", "std")
STAGE2_ALGOS = ("reinforce", "star")
TOY_TASKS = ("arithmetic_bugged", "prefix_sums_backward")  # the tasks `sft.demos=score_toy` can write traces for

# Shared knobs SCoRe does not read: the value they must keep, and what to set instead.
REPLACES = {"rl.kl_coef": (0.0, "score.beta1 / score.beta2 (per-turn KL weights)"),
            "rl.advantage": ("grpo", "score.baseline (per-turn rloo | batch_mean | none)")}


def default_config() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.multi_turn = True        # False: single-turn RL on turn 1 (Table 4 "w/o multi-turn")
  s.use_stage1 = True        # False: Stage II from step 0 (Table 4 "w/o Stage I")
  s.stage1_steps = 0         # RL iterations in Stage I (Eq. 3); the rest are Stage II (Eq. 4)
  s.alpha = 10.0             # shaping weight of Eq. 5 (0: "w/o reward shaping")
  s.beta1 = 0.01             # KL weight on both turns in Stage II and on turn 2 in Stage I
  s.beta2 = 0.1              # KL weight on turn 1 in Stage I
  s.stage1_turn2_kl = True   # Stage I: beta1 KL on turn-2 tokens (False: none; Stage II unaffected)
  s.turn2_adv_scale = 1.0    # Stage II: turn-2 advantages x this (alpha=0 with 1+alpha: shaping control arm)
  s.turn_credit = "per_turn"  # per_turn (gamma = 0) | episode (sandbagging risk with alpha > 1)
  s.baseline = "rloo"        # rloo (leave-one-out over rl.group_size) | batch_mean | none
  s.adv_norm = "none"        # none | std (divide each turn's advantages by their batch std)
  s.stage2_algo = "reinforce"  # reinforce | star (Stage II = SFT on successful corrections)
  s.star_include_c2c = False  # star: also keep right -> right traces (D+_STaR)
  s.instruction = "<fix>"    # self-correction instruction appended after y1 (as ids)
  s.chat_instruction = False  # render the instruction as a user turn of the chat template
  s.max_new_tokens2 = 0      # turn-2 buffer N2 (0 = rl.max_new_tokens)
  s.n_attempts_eval = 2      # attempts at evaluation (>= 2; Acc@t1..t_K)
  s.eval_by_prompt_len = False  # also report eval metrics per prompt length (eval/by_prompt_len/<L>/...)
  s.copy_prob = 0.7          # sft.demos = score_toy: probability y2 copies y1
  s.first_right_prob = 0.7   # sft.demos = score_toy on prefix_sums_backward: probability y1 is right
  return s


def validate(cfg: ml_collections.ConfigDict, check: CheckFn) -> None:
  """SCoRe knobs (score.md §9); each choice is checked against the registry it selects from."""
  sc, rl = cfg.score, cfg.rl
  for field, valid in (("turn_credit", TURN_CREDITS), ("baseline", BASELINES), ("adv_norm", ADV_NORMS),
                       ("stage2_algo", STAGE2_ALGOS)):
    check(sc[field] in valid, f"score.{field}", f"{sc[field]!r} is not one of {valid}")
  check(sc.baseline != "rloo" or rl.group_size >= 2, "rl.group_size", "score.baseline='rloo' needs group_size >= 2")
  check(0 <= sc.stage1_steps <= cfg.train.num_steps, "score.stage1_steps",
        f"must be in [0, train.num_steps={cfg.train.num_steps}], got {sc.stage1_steps}")
  check(not (sc.multi_turn and sc.use_stage1) or sc.stage1_steps > 0, "score.stage1_steps",
        "is 0 with score.use_stage1=True, which would silently run 'w/o Stage I': set stage1_steps > 0, "
        "or score.use_stage1=False for that ablation")
  check(sc.turn2_adv_scale > 0, "score.turn2_adv_scale", f"must be > 0, got {sc.turn2_adv_scale}")
  check(sc.beta1 >= 0 and sc.beta2 >= 0, "score.beta1", "KL weights beta1 and beta2 must be >= 0")
  problem = kl_problem(rl.kl_estimator, rl.kl_mode)
  check(sc.beta1 == 0 and sc.beta2 == 0 or problem is None, "rl.kl_estimator",
        f"{problem} (score.beta1={sc.beta1}, score.beta2={sc.beta2})")
  check(sc.n_attempts_eval >= 2, "score.n_attempts_eval", f"must be >= 2, got {sc.n_attempts_eval}")
  check(sc.max_new_tokens2 >= 0, "score.max_new_tokens2", f"must be >= 0, got {sc.max_new_tokens2}")
  check(bool(sc.instruction), "score.instruction", "the self-correction instruction is empty")
  if sc.stage2_algo == "star":
    check(rl.loss_agg == "token_mean" and rl.num_epochs == 1 and rl.num_minibatches == 1, "score.stage2_algo",
          "star is SFT through the shared loss: it needs rl.loss_agg='token_mean', num_epochs=1, num_minibatches=1")
  check(cfg.sft.demos != "score_toy" or cfg.task.name in TOY_TASKS, "sft.demos",
        f"score_toy demonstrations need task.name in {TOY_TASKS}, got {cfg.task.name!r}")


def toy_demos(cfg: ml_collections.ConfigDict, algorithm, batches, tokenizer, seed: int):
  """`sft.demos = "score_toy"`: two-turn toy traces in the rollout's slot layout (score.md §11)."""
  from selfrl_jax.data.score_toy import toy_demonstration_stream

  first_right_prob = cfg.score.first_right_prob if cfg.task.name == "prefix_sums_backward" else None
  stream = toy_demonstration_stream(batches, tokenizer, seed=seed, instr_ids=algorithm.instr_ids,
                                    max_new_tokens1=algorithm.sampling.max_new_tokens,
                                    max_new_tokens2=algorithm.sampling2.max_new_tokens,
                                    copy_prob=cfg.score.copy_prob, first_right_prob=first_right_prob)
  settings = {"score": {k: cfg.score[k] for k in ("instruction", "copy_prob", "max_new_tokens2")},
              "max_new_tokens": cfg.rl.max_new_tokens}
  if first_right_prob is not None:  # the addition toy's cache key stays as it was
    settings["first_right_prob"] = first_right_prob
  return stream, settings
