r"""HeRL on SmolLM2-135M-Instruct sized for a CPU: `ifeval.py`'s method and knobs (any of its arms:
`smollm2_cpu.py:grpo`), smaller shapes.

  python experiments/train.py --config=configs/herl/smollm2_cpu.py --workdir=/tmp/herl_cpu
  python experiments/herl_test_time.py --num_prompts=32        # test-time experience rounds, before any RL

What changes from the released setting: f32 (CPU), 8 prompts x 4 responses, one update per batch,
prompts up to 320 tokens, 128 new tokens, candidate limit 4, 20 steps at lr 1e-5.
"""

from configs.herl import ifeval

SIZE_VARIANT_OF = "ifeval.py"  # same method and knobs, other sizes


def get_config(arm: str | None = None):
  c = ifeval.get_config(arm)
  with c.unlocked():
    c.model.param_dtype = c.model.compute_dtype = "float32"
    c.task.train_size, c.task.valid_size, c.task.test_size = 2000, 32, 64
    c.rl.prompts_per_step, c.rl.group_size, c.rl.num_minibatches, c.rl.micro_batch_size = 8, 4, 1, 8
    c.rl.max_prompt_len, c.rl.max_new_tokens = 320, 128
    c.herl.candidate_limit = 4
    c.optim.learning_rate = 1e-5
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every, c.train.log_every = 20, 20, 5, 1
    c.train.eval_size, c.train.eval_batch_size = 32, 8
  return c
