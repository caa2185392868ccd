r"""RLAVR / CARE on math with `\boxed{}` answers (the released `al-rule.sh`, rlavr.md §4), one arm per argument.

  python experiments/train.py --config=configs/rlavr/math.py:care --workdir=/tmp/care_math \
      --config.model.source=/path/to/Phi-4-mini-instruct --config.task.math_train_dir=/path/to/MATH/train
  python experiments/train.py --config=configs/rlavr/math.py:ttrl ...      # the TTRL baseline

The released scripts train Phi-4-mini-instruct (CARE) and Qwen3-1.7B-Base (TTRL, random / entropy
GT, full GT) on DAPO-Math-17k and evaluate on AIME/AMC/OlympiadBench/HMMT and MATH-500. Here:
Hendrycks MATH train (a local folder; not in ../shared/data) with MATH-500 held out, answers
clustered by math-verify in either direction on the host. `smollm2` (SmolLM2-135M-Instruct) is the
default that runs on this machine; pass any local HF directory or .gguf for the paper's models.
For GSM8K from ../shared/data: `--config.task.name=gsm8k` (same reward and clustering path).
"""

from configs.rlavr.tiny_arithmetic import ARMS
from configs.common import get_base_config

# The released code's math prompt is not in the spec; this is the DAPO / Qwen-math convention for
# `\boxed{}` answers (a choice, see configs/rlavr/README.md).
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def get_config(arm: str | None = None):
  arm = arm or "care"
  if arm not in ARMS:
    raise ValueError(f"Unknown RLAVR arm {arm!r}; valid: {sorted(ARMS)}.")
  c = get_base_config("rlavr")
  c.model.source = "smollm2"        # the paper: Phi-4-mini-instruct (CARE), Qwen3-1.7B-Base (baselines)
  c.model.param_dtype = "float32"   # float32 weights (bfloat16 ones round lr-sized updates away)
  c.model.compute_dtype = "bfloat16"
  c.task.name = "math"
  c.task.chat = True
  c.task.system_prompt = SYSTEM_PROMPT

  c.rl.reward = "math"              # evaluation only: the training reward comes from the mixed labels
  c.rl.prompts_per_step, c.rl.group_size = 64, 8       # §4: 64 prompts x n = 8
  c.rl.max_prompt_len, c.rl.max_answer_len, c.rl.max_new_tokens = 1024, 64, 4000   # §4: 1024 / 4000
  c.rl.temperature = 1.0
  c.rl.num_epochs, c.rl.num_minibatches = 2, 1         # §4: 2 PPO epochs, mini-batch 64 prompts = the batch
  c.rl.kl_coef = 0.0                                    # §4: KL loss on with coefficient 0
  c.rl.micro_batch_size = 8
  c.rl.logprob_chunk = 512
  c.optim.learning_rate = 1e-6                          # §4
  c.optim.grad_clip = 1.0
  c.train.num_steps = 500
  c.train.eval_every = 20                               # §5: validation every 20 steps
  c.train.eval_size, c.train.eval_batch_size = 448, 64  # MATH-500: the first 448 problems that fit the buffers
  c.train.checkpoint_every = 20

  r = c.rlavr
  r.selection, r.mask_non_gt = ARMS[arm]
  r.p, r.p2, r.warmup, r.kappa = 0.2, 0.25, 20, 1.0    # §4
  r.equivalence, r.answer_style = "math_verify", "boxed"
  r.probe_lr, r.probe_steps, r.replay_size, r.replay_batch, r.aux_weight = 1e-4, 3, 2048, 16, 1.5
  c.lock()
  return c
