"""SSRL-IF on SmolLM2-135M-Instruct sized for about an hour on 2 CPU cores: `ifeval.py`'s method and
knobs (any of its arms: `smollm2_cpu.py:no_math`), smaller shapes.

  python experiments/train.py --config=configs/ssrl_if/smollm2_cpu.py --workdir=/tmp/ssrl_cpu
  python experiments/eval.py --benchmark=ifeval --workdir=/tmp/ssrl_cpu

What changes from the released setting, and why (configs/ssrl_if/README.md has the run's numbers):
- f32 (CPU), 8 prompts x 4 responses, one update per batch, 128 new tokens, prompts up to 320 tokens;
- 20 RL steps at lr 1e-5 (the released 1e-6 moves a 135M model by nothing measurable in 20 steps);
- the classifier: 48 ladders from the policy, 30 Adam steps of 8 pairs at lr 1e-5 over 256 tokens
  (the released: ~20k ladder pairs, 3 epochs at batch 1, lr 5e-6 — hours of CPU here);
- held out: 64 full instructions, IFEval verdicts on their hard constraints, before and after.
"""

from configs.ssrl_if import ifeval

SIZE_VARIANT_OF = "ifeval.py"  # same method and knobs, other sizes (tests run one step of ifeval.py only)


def get_config(arm: str | None = None):
  c = ifeval.get_config(arm)
  with c.unlocked():
    c.model.param_dtype = c.model.compute_dtype = "float32"
    c.task.train_size, c.task.valid_size, c.task.test_size = 2000, 32, 64
    c.rl.prompts_per_step, c.rl.group_size, c.rl.num_minibatches, c.rl.micro_batch_size = 8, 4, 1, 8
    c.rl.max_prompt_len, c.rl.max_new_tokens = 320, 128
    c.optim.learning_rate = 1e-5
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every, c.train.log_every = 20, 20, 5, 1
    c.train.eval_size, c.train.eval_batch_size = 64, 32
    s = c.ssrl_if
    s.rm_ladders, s.rm_steps, s.rm_batch_size, s.rm_learning_rate, s.rm_width = 48, 30, 8, 1e-5, 256
  return c
