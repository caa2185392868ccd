r"""RLAVR / CARE on the spec's carry-error arithmetic (rlavr.md §10), one arm per config argument.

  python experiments/train.py --config=configs/rlavr/tiny_arithmetic.py:care --workdir=/tmp/care
  python experiments/train.py --config=configs/rlavr/tiny_arithmetic.py:ttrl --workdir=/tmp/ttrl

Arms (same budget p = 0.2 for the labelled ones): ttrl (majority vote, 0 labels), gt_only_random
(20% random GT, the rest dropped), rlavr_random (20% random GT + pseudo-labels), care (probes,
gate p2 = 0.25, warm-up 20), oracle_cag (selection by the true CAG), full_gt (every label).
Work in progress: the tiny reproduction (3 seeds, README numbers) is not run yet.
"""

from configs.common import get_base_config

ARMS = {"ttrl": ("ttrl", True), "gt_only_random": ("random", True), "rlavr_random": ("random", False),
        "care": ("care", True), "oracle_cag": ("oracle_cag", True), "full_gt": ("full_gt", True)}


def get_config(arm: str | None = None):
  arm = arm or "care"
  if arm not in ARMS:
    raise ValueError(f"Unknown RLAVR arm {arm!r}; valid: {sorted(ARMS)}.")
  c = get_base_config("rlavr")
  c.task.name = "arithmetic"
  c.task.params = {"num_digits": 3, "reverse_answer": True}
  c.model.n_layers, c.model.d_model, c.model.d_ff = 2, 128, 512   # §10: 2 layers, d = 128
  c.rl.prompts_per_step, c.rl.group_size = 64, 8                 # §10: 64 prompts x n = 8
  c.rl.max_prompt_len, c.rl.max_answer_len, c.rl.max_new_tokens = 12, 6, 6
  c.rl.micro_batch_size = 128
  c.optim.learning_rate = 3e-4
  c.train.num_steps = 300
  c.train.eval_every = 50
  c.sft.steps = 1500
  c.sft.target_accuracy = 0.4      # §10: RL set solved at roughly 30-50% before RL
  c.sft.check_every = 50
  c.sft.seed = 0
  c.rlavr.selection, c.rlavr.mask_non_gt = ARMS[arm]
  c.rlavr.p, c.rlavr.p2, c.rlavr.warmup = 0.2, 0.25, 20
  c.rlavr.answer_style, c.rlavr.equivalence = "text", "string"
  c.rlavr.replay_size = 2048
  c.lock()
  return c
