r"""GRPO on 2-digit addition with a tiny model warm-started by SFT (CPU, minutes).

  python experiments/train.py --config=configs/tiny/grpo_arithmetic.py --workdir=/tmp/grpo
  python experiments/train.py --config=configs/tiny/grpo_arithmetic.py --config.rl.advantage=dr_grpo \
      --config.train.num_steps=200 --workdir=/tmp/drgrpo
"""

from configs.common import get_base_config


def get_config(arg: str | None = None):
  del arg
  c = get_base_config()
  c.sft.steps = 600
  c.rl.prompts_per_step = 16
  c.rl.group_size = 8
  c.optim.learning_rate = 1e-3
  c.train.num_steps = 200
  c.lock()
  return c
