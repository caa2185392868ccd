r"""SCoRe's second toy: backward prefix sums, where the first attempt tells turn 2 something turn 1 lacks.

Digits d1…dn, shown as `dn…d1=` (`reverse_prompt`); answer y_n … y_1 with y_i = (d1+…+di) mod 10 (`data/prefix_sums.py`). The first
written digit needs the whole sum; the rest are local. A wrong attempt is usually the answer shifted
by one offset, and its last digit must equal d1: turn 2 can read the offset off y1. Items mix short
(n = 3, 4: turn 1 can learn them) and long (n = 9, 10: it should not) lengths; every metric is also
reported per prompt length (`score.eval_by_prompt_len`), merged into the two buckets by the report.

  python experiments/reproduce.py --method=score             # preconditions P1-P3, then the default arms x 3 seeds
  python experiments/train.py --config=configs/score/tiny_prefix_sums.py:naive_multi_turn --workdir=/tmp/naive

Arms (configs/score/README.md, "Second toy"): score, single_turn, naive_multi_turn (the paper's naive
baseline: every token maximises r1 + r2, `episode` credit), naive_per_turn (turn 1 on r1, turn 2 on
r2), no_stage1, no_shaping (alpha = 0), shaping_control (alpha = 0 with turn-2 advantages x (1 + alpha):
what shaping does in expectation under per_turn credit), episode (SCoRe with `episode` credit), star
(Stage I, then STaR: on-policy SFT on this batch's successful corrections, Table 4's row).
"""

from configs.common import get_base_config

ARMS = ("score", "single_turn", "naive_multi_turn", "naive_per_turn", "no_stage1", "no_shaping",
        "shaping_control", "episode", "star")


def get_config(arm: str | None = None):
  arm = arm or "score"
  if arm not in ARMS:
    raise ValueError(f"Unknown SCoRe prefix-sums arm {arm!r}; valid: {ARMS}.")
  c = get_base_config("score")
  c.task.name = "prefix_sums_backward"
  c.task.params = {"lengths": (3, 4, 9, 10), "reverse_prompt": True}
  c.task.train_size, c.task.valid_size, c.task.test_size = 20000, 256, 1024
  # 4 layers of width 128: the width-64 model of the addition toy did not learn the local rule in
  # 1,500 SFT steps (NLL flat at 2.0 per token); this one is at 0.34 by then (prefix-sums probe).
  c.model.n_layers, c.model.d_model, c.model.d_ff = 4, 128, 512

  c.rl.prompts_per_step, c.rl.group_size = 16, 4   # 64 rollouts per step: every arm x 3 seeds fits the budget
  c.rl.max_prompt_len, c.rl.max_answer_len, c.rl.max_new_tokens = 12, 11, 11
  c.rl.micro_batch_size = 64
  c.rl.loss_agg = "seq_mean_token_sum_norm"         # REINFORCE: sum over tokens, mean over sequences
  c.optim.learning_rate = 3e-4
  c.train.num_steps = 100
  c.train.eval_every = 50
  c.train.eval_size, c.train.eval_batch_size = 512, 256
  c.train.checkpoint_every = 0

  # Base: two-turn SFT for a fixed number of steps (not stopped on a metric): y1 right with
  # probability 0.7, else shifted by a random offset; y2 copies y1 with probability 0.8, else right.
  c.sft.demos = "score_toy"
  c.sft.steps = 1500
  c.sft.batch_size = 64
  c.sft.learning_rate = 1e-3
  c.sft.seed = 0

  s = c.score
  s.first_right_prob, s.copy_prob = 0.7, 0.8
  s.eval_by_prompt_len = True
  s.stage1_steps = 33                   # a third of the budget (§7.5)
  s.alpha, s.beta1, s.beta2 = 10.0, 0.01, 0.1
  if arm == "single_turn":
    s.multi_turn = False
  elif arm in ("naive_multi_turn", "naive_per_turn"):
    s.use_stage1, s.stage1_steps, s.alpha = False, 0, 0.0
    s.turn_credit = "episode" if arm == "naive_multi_turn" else "per_turn"
  elif arm == "no_stage1":
    s.use_stage1, s.stage1_steps = False, 0
  elif arm == "no_shaping":
    s.alpha = 0.0
  elif arm == "shaping_control":  # the SCoRe arm's alpha (10) moved into the turn-2 scale; set both to change it
    s.alpha, s.turn2_adv_scale = 0.0, 1.0 + s.alpha
  elif arm == "episode":
    s.turn_credit = "episode"
  elif arm == "star":
    s.stage2_algo = "star"              # Stage I kept, as in Table 4's "STaR instead of REINFORCE"
    c.rl.loss_agg = "token_mean"        # STaR's SFT loss is a token mean (see SCoRe.star_advantages)
  c.lock()
  return c
