r"""SCoRe on MATH (paper Table 5, MATH column): train on MATH train, evaluate on MATH-500.

  python experiments/train.py --config=configs/score/math.py --workdir=/tmp/score_math \
      --config.model.source=/path/to/Qwen2.5-1.5B-Instruct --config.task.math_train_dir=/path/to/MATH/train

Base model: the paper uses Gemini 1.5 Flash; the open substitute here is Qwen2.5-1.5B-Instruct (any
local HF directory or .gguf works; `smollm2` is the packaged CPU-sized stand-in). Hendrycks MATH
train is not in ../shared/data: pass its local folder. Batch 512 = 128 prompts x k = 4 samples
(spec §7.6); Stage I is the first third of the 3000 steps (§7.5, the paper does not say).
"""

from configs.common import get_base_config

SYSTEM_PROMPT = (
    "You are a math expert. When you respond, respond only with the Solution of the final Problem, thinking "
    "step by step. At the end of the Solution, when you give your final answer, write it in the form "
    "\"Final Answer: The final answer is $answer$. I hope it is correct.\"")
CORRECTION_INSTRUCTION = (
    "There might be an error in the solution above because of lack of understanding of the question. Please "
    "correct the error, if any, and rewrite the solution. Only output the final solution! At the end of the "
    "Solution, when you give your final answer, write it in the form \"Final Answer: The final answer is "
    "$answer$. I hope it is correct.\"")


def get_config(arg: str | None = None):
  del arg
  c = get_base_config("score")
  c.model.source = "smollm2"        # replace with a local Qwen2.5-1.5B-Instruct (see the docstring)
  c.model.param_dtype = "float32"   # float32 weights (bfloat16 ones round lr-sized updates away)
  c.model.compute_dtype = "bfloat16"
  c.task.name = "math"
  c.task.chat = True
  c.task.system_prompt = SYSTEM_PROMPT

  c.rl.reward = "math"              # answer extraction + math-verify, host side
  c.rl.prompts_per_step, c.rl.group_size = 128, 4
  c.rl.max_prompt_len, c.rl.max_answer_len, c.rl.max_new_tokens = 512, 64, 1024
  c.rl.temperature = 1.0
  c.rl.loss_agg = "seq_mean_token_sum_norm"  # §7.11: REINFORCE sums over tokens, averages over sequences
  c.rl.micro_batch_size = 8
  c.rl.logprob_chunk = 512
  c.optim.learning_rate = 5e-6
  c.optim.grad_clip = 1.0
  c.train.num_steps = 3000
  c.train.eval_every = 250
  c.train.eval_size, c.train.eval_batch_size = 448, 64   # MATH-500: the first 448 problems that fit the buffers
  c.train.checkpoint_every = 250

  s = c.score
  s.stage1_steps = 1000
  s.alpha, s.beta1, s.beta2 = 10.0, 0.01, 0.1
  s.instruction = CORRECTION_INSTRUCTION
  s.chat_instruction = True
  c.lock()
  return c
