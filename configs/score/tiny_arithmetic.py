r"""SCoRe's toy (score.md §11): bugged 3-digit addition, a warm-started base that errs and copies.

One file, one arm per config argument (the README table's rows):

  python experiments/train.py --config=configs/score/tiny_arithmetic.py --workdir=/tmp/score          # SCoRe
  python experiments/train.py --config=configs/score/tiny_arithmetic.py:naive_multi_turn --workdir=/tmp/naive
  python experiments/reproduce.py --method=score --score_toy=addition   # the default arms x 3 seeds, table + plots

Arms: score (Stage I then Stage II, alpha = 10), single_turn (RL on turn 1 only), naive_multi_turn
(the paper's naive baseline: every token maximises r1 + r2, `episode` credit, no Stage I),
naive_per_turn (turn 1 on r1, turn 2 on r2), no_stage1, no_shaping (alpha = 0, with Stage I), star
(Stage I, then on-policy STaR: SFT on this batch's successful corrections, Table 4's row),
star_no_stage1 (STaR from step 0). "base" is the warm start without RL (`train.num_steps = 0` is not
allowed, so reproduce.py reads the base row from step 0 of any arm).
"""

from configs.common import get_base_config

ARMS = ("score", "single_turn", "naive_multi_turn", "naive_per_turn", "no_stage1", "no_shaping", "star",
        "star_no_stage1")


def get_config(arm: str | None = None):
  arm = arm or "score"
  if arm not in ARMS:
    raise ValueError(f"Unknown SCoRe arm {arm!r}; valid: {ARMS}.")
  c = get_base_config("score")
  c.task.name = "arithmetic_bugged"
  c.task.params = {"num_digits": 3, "reverse_answer": True}
  c.task.train_size, c.task.valid_size, c.task.test_size = 5000, 256, 1024
  c.model.n_layers = 4  # the 2-layer toy of §11 needed ~6000 SFT steps; 4 layers fit in far fewer

  c.rl.prompts_per_step, c.rl.group_size = 32, 4   # §11: k = 4 samples per prompt (64 prompts scaled to 32)
  c.rl.max_prompt_len, c.rl.max_answer_len, c.rl.max_new_tokens = 12, 6, 6
  c.rl.micro_batch_size = 128
  c.rl.loss_agg = "seq_mean_token_sum_norm"         # §7.11: REINFORCE sums over tokens, averages over sequences
  c.optim.learning_rate = 3e-4
  c.train.num_steps = 200
  c.train.eval_every = 50
  c.train.eval_size, c.train.eval_batch_size = 512, 256
  c.train.checkpoint_every = 0

  # Base model: two-turn SFT demonstrations; y1 = the buggy sum on the ~40% bug subset, y2 copies
  # y1 with probability 0.7. Stops once greedy Acc@t1 on the validation split reaches 0.58 (the bug subset caps it at 0.60).
  c.sft.demos = "score_toy"
  c.sft.steps = 3000
  c.sft.batch_size = 64
  c.sft.target_metric = "eval/acc_t1"
  c.sft.target_accuracy = 0.58
  c.sft.check_every = 100
  c.sft.seed = 0                        # one base model for every seed and arm, as in the paper

  s = c.score
  s.stage1_steps = 70                   # §7.5: about a third of the budget
  s.alpha, s.beta1, s.beta2 = 10.0, 0.01, 0.1
  if arm == "single_turn":
    s.multi_turn = False
  elif arm in ("naive_multi_turn", "naive_per_turn"):
    s.use_stage1, s.alpha, s.stage1_steps = False, 0.0, 0
    s.turn_credit = "episode" if arm == "naive_multi_turn" else "per_turn"
  elif arm == "no_stage1":
    s.use_stage1, s.stage1_steps = False, 0
  elif arm == "no_shaping":
    s.alpha = 0.0
  elif arm in ("star", "star_no_stage1"):
    s.stage2_algo = "star"              # star: Stage I kept, as in Table 4's "STaR instead of REINFORCE"
    if arm == "star_no_stage1":
      s.use_stage1, s.stage1_steps = False, 0
    c.rl.loss_agg = "token_mean"  # STaR's SFT loss is a token mean (see SCoRe.star_advantages)
  c.lock()
  return c
