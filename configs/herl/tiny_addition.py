r"""HeRL's CPU toy (herl.md §10): 4-digit addition with a per-character rubric, a warm start that
knows the revision format from easy problems only, arms (1)-(5) at a matched sampling budget.

  python experiments/train.py --config=configs/herl/tiny_addition.py --workdir=/tmp/herl           # HeRL
  python experiments/train.py --config=configs/herl/tiny_addition.py:grpo --workdir=/tmp/grpo
  python experiments/reproduce.py --method=herl      # every arm x 3 seeds, table, claims, curves

Arms: grpo (1: herl.enable=False, the same reward and loss), herl (2: HE + bonus, alpha = 0.05,
gamma = 1), no_bonus (3), naive (4: NaiveHE, the HE prompt is x <sep> draft <fix> without flags),
x_context (5: the revision is trained with the original prompt x as its context). The budget is
matched on the x-axis: held-out accuracy against generated sequences (rollouts + revisions).

Rubric: one item per answer character (5, least-significant digit first) + "correct length": the
dense reward is the fraction met, exact match = every item met. 4 digits, not §10's 5: a 2-layer
d = 128 model learns no addition at all in 3000 warm-start steps on 1-5-digit problems (measured;
configs/herl/README.md), and the warm start has to fit the 15-minute budget.
"""

from configs.common import get_base_config

ARMS = ("grpo", "herl", "no_bonus", "naive", "x_context")


def get_config(arm: str | None = None):
  arm = arm or "herl"
  if arm not in ARMS:
    raise ValueError(f"Unknown HeRL arm {arm!r}; valid: {ARMS}.")
  c = get_base_config("herl")
  c.task.name = "arithmetic"
  c.task.params = {"num_digits": 4, "min_digits": 4, "reverse_answer": True}
  c.task.train_size, c.task.valid_size, c.task.test_size = 5000, 512, 512   # valid: the warm start's stop rule
  c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads, c.model.d_ff = 128, 2, 4, 2, 512  # §10

  c.rl.prompts_per_step, c.rl.group_size = 32, 8        # §10: 64 x 8, halved for the CPU budget
  c.rl.max_prompt_len, c.rl.max_answer_len, c.rl.max_new_tokens = 10, 6, 6
  c.rl.advantage = "grpo_sample_std"                   # verl: unbiased std
  c.rl.clip_low = c.rl.clip_high = 0.2
  c.rl.micro_batch_size = 256
  c.optim.learning_rate = 3e-4
  c.train.num_steps = 60                                # §10: 300-600; 60 fit five arms x 3 seeds in ~15 min
  c.train.eval_every = 10
  c.train.eval_size, c.train.eval_batch_size = 512, 256
  c.train.checkpoint_every = 0

  # Base: 1-4-digit direct answers (10% with one wrong character) and as many revision
  # demonstrations (drafts with 1-2 wrong characters, also on 4-digit problems: see the README's
  # warm-start note); stops once greedy exact match on 4-digit validation problems reaches 4%.
  c.sft.demos = "herl_toy"
  c.sft.task_params = {"num_digits": 4, "min_digits": 1}
  c.sft.steps = 4000
  c.sft.batch_size = 64
  c.sft.learning_rate = 1e-3       # as the RLAVR toy: 3e-3 stalls (measured: loss 1.9 nats after 1000 steps)
  c.sft.error_rate = 0.1
  c.sft.target_metric = "eval/accuracy"
  c.sft.target_accuracy = 0.04
  c.sft.check_every = 25
  c.sft.seed = 0

  h = c.herl
  h.rubric, h.template = "digits", "flags"
  h.sft_revision_frac, h.sft_revision_max_digits = 0.5, 4
  h.eval_rounds = 2
  if arm == "grpo":
    h.enable = False
  elif arm == "no_bonus":
    h.bonus = False
  elif arm == "naive":
    h.diagnosis = "naive"
  elif arm == "x_context":
    h.train_with_he_prompt = False
  c.lock()
  return c
