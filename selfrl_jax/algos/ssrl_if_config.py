"""SSRL-IF's config section `config.ssrl_if` and its validation (ssrl_if.md §3, §4, §6, §8)."""

from __future__ import annotations

import ml_collections

from selfrl_jax.rewards.host import answer_pattern_problem

WORLDS = ("toy", "ifeval")
AGGREGATIONS = ("mean", "all_or_nothing")
SOFT_REWARDS = ("prob", "binary")
SOFT_SOURCES = ("rm", "oracle")
RM_PAIRS = ("all", "soft")
RM_INITS = ("policy", "random")
RM_OBJECTIVES = ("ce", "bt")


def default_config() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.world = "toy"                # toy: the synthetic constraint world of §9.6 (data.if_toy, hidden soft oracle) | ifeval: IFEval checkers + free-text soft constraints (data.if_ladder)
  s.aggregation = "mean"         # mean: R = (1/k) sum_i r_i (§3.4, released) | all_or_nothing: 1 iff every constraint holds (arm A's sparse reward; RM > 0.5 for soft)
  s.soft_reward = "prob"         # prob: R_s = softmax(RM logits)[1] | binary: RM prob thresholded at 0.5 (ablation "w/o probability reward")
  s.use_rule_reward = True       # False: the RM scores hard constraints too (ablation "w/o rule reward")
  s.soft_source = "rm"           # rm: the self-supervised classifier | oracle: the hidden rule (toy only; arm F, the upper bound)
  s.reward_scale = 1.0           # R in [0, scale]: 1 (spec default 6); the released code's 5 differs only through GRPO's eps
  s.answer_pattern = ""          # regex whose group 1 is the answer the constraints are checked on ("" = the whole response; released: "</think>\n\n(.*)")
  s.rm_ladders = 500             # ladders (x_0..x_n) sampled once from the warm-started policy for pseudo-labels (§3.3, §9.6)
  s.rm_pairs = "all"             # constraints pseudo-labelled pairs are built for: all (spec default 9, lets use_rule_reward=False score hard ones) | soft
  s.rm_holdout = 0.1             # fraction of the ladders held out to evaluate the classifier (accuracy, AUC)
  s.rm_steps = 400               # classifier Adam steps on random minibatches
  s.rm_batch_size = 64           # pairs per classifier step
  s.rm_learning_rate = 1e-3      # classifier Adam learning rate (released: 5e-6 full fine-tune of a 1.5B/7B model, 3 epochs, batch 1)
  s.rm_objective = "ce"          # ce: the paper's binary classifier (2-way cross-entropy) | bt: Bradley-Terry on each constraint's (o_k, o_{k-1}) pair (Table 6's alternative)
  s.rm_init = "policy"           # backbone initial weights: policy (the warm-started policy, as the paper starts from an instruct model) | random
  s.rm_width = 16                # RM input buffer (tokens): the world's template around constraint and response, left-padded; a longer input keeps its last rm_width tokens
  s.rm_forward_batch = 0         # classifier inputs scored together inside the step (0 = all B x K at once; set e.g. 64 when that does not fit in memory)
  s.eval_temperature = 0.5       # held-out decoding temperature (§9.6: 0.5; 0 = greedy)
  return s


def validate(cfg: ml_collections.ConfigDict, check) -> None:
  s, rl = cfg.ssrl_if, cfg.rl
  for field, value, allowed in (("world", s.world, WORLDS), ("aggregation", s.aggregation, AGGREGATIONS),
                                ("soft_reward", s.soft_reward, SOFT_REWARDS), ("soft_source", s.soft_source, SOFT_SOURCES),
                                ("rm_pairs", s.rm_pairs, RM_PAIRS), ("rm_init", s.rm_init, RM_INITS),
                                ("rm_objective", s.rm_objective, RM_OBJECTIVES)):
    check(value in allowed, f"ssrl_if.{field}", f"{value!r} is not one of {allowed}")
  check(s.use_rule_reward or s.rm_pairs == "all", "ssrl_if.rm_pairs",
        "use_rule_reward=False lets the classifier score hard constraints, so it must be trained on them (rm_pairs='all')")
  # Bradley-Terry fixes only differences of r = z1 - z0: sigma(r) is a monotone score, but its 0.5 is arbitrary.
  check(s.rm_objective == "ce" or (s.soft_reward == "prob" and s.aggregation == "mean"), "ssrl_if.rm_objective",
        "'bt' learns only differences of the classifier's score, so thresholding it at 0.5 (soft_reward='binary' or "
        "aggregation='all_or_nothing') has no meaning: use rm_objective='ce' with those")
  check(s.reward_scale > 0, "ssrl_if.reward_scale", f"must be > 0, got {s.reward_scale}")
  check(0.0 < s.rm_holdout < 1.0, "ssrl_if.rm_holdout", f"must be in (0, 1), got {s.rm_holdout}")
  check(s.rm_ladders >= 10, "ssrl_if.rm_ladders", f"must be >= 10, got {s.rm_ladders}")
  check(s.rm_steps >= 1 and s.rm_batch_size >= 1, "ssrl_if.rm_steps", "rm_steps and rm_batch_size must be >= 1")
  check(s.rm_learning_rate > 0, "ssrl_if.rm_learning_rate", "must be > 0")
  check(s.rm_width >= 4, "ssrl_if.rm_width", f"must be >= 4 tokens, got {s.rm_width}")
  check(s.rm_forward_batch >= 0, "ssrl_if.rm_forward_batch", f"must be >= 0 (0 = all at once), got {s.rm_forward_batch}")
  check(s.eval_temperature >= 0, "ssrl_if.eval_temperature", "must be >= 0")
  problem = answer_pattern_problem(s.answer_pattern)
  check(problem is None, "ssrl_if.answer_pattern", problem)
  check(rl.group_size >= 2, "rl.group_size", "GRPO compares rollouts within a prompt's group: use group_size >= 2")
  check(rl.advantage in ("grpo", "grpo_sample_std", "dr_grpo", "rloo"), "rl.advantage",
        f"{rl.advantage!r}: SSRL-IF uses a group-relative estimator (released: grpo_sample_std)")
  task = {"toy": "if_toy", "ifeval": "if_ladder"}.get(s.world)
  check(task is None or cfg.task.name == task, "task.name",
        f"ssrl_if.world={s.world!r} reads the task {task!r}: set task.name={task!r} (got {cfg.task.name!r})")
  check(s.soft_source != "oracle" or s.world == "toy", "ssrl_if.soft_source",
        f"soft_source='oracle' needs a world with a hidden oracle (toy), not {s.world!r}")
