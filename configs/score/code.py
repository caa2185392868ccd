r"""SCoRe on code (paper Table 5, MBPP column): train on MBPP train, evaluate on HumanEval.

  python experiments/train.py --config=configs/score/code.py --workdir=/tmp/score_code \
      --config.model.source=/path/to/Qwen2.5-Coder-1.5B-Instruct

Base model: the paper uses Gemini 1.0 Pro; the open substitute here is Qwen2.5-Coder-1.5B-Instruct
(`smollm2` is the packaged CPU-sized stand-in). Rewards run the unit tests in the sandbox
(selfrl_jax/rewards/sandbox.py). Batch 128 = 32 prompts x k = 4; Stage I is the first third of
the 1500 steps. MBPP prompts are zero-shot here (the paper's MBPP prompt is 3-shot).
"""

from configs.common import get_base_config

SYSTEM_PROMPT = ("You are an expert Python programmer. Write a Python function that solves the task and passes "
                 "the tests. Put the code between [BEGIN] and [DONE].")
CORRECTION_INSTRUCTION = (
    "There might be an error in the code above because of lack of understanding of the question. Please "
    "correct the error, if any, and rewrite the solution. Only output the final correct Python program!")


def get_config(arg: str | None = None):
  del arg
  c = get_base_config("score")
  c.model.source = "smollm2"        # replace with a local Qwen2.5-Coder-1.5B-Instruct (see the docstring)
  c.model.param_dtype = "float32"   # float32 weights (bfloat16 ones round lr-sized updates away)
  c.model.compute_dtype = "bfloat16"
  c.task.name = "mbpp_humaneval"
  c.task.chat = True
  c.task.system_prompt = SYSTEM_PROMPT

  c.rl.reward = "code"
  c.rl.mode = "split"               # sandboxed tests take seconds: score on the host between jitted sample / update
  c.rl.prompts_per_step, c.rl.group_size = 32, 4
  c.rl.max_prompt_len, c.rl.max_answer_len, c.rl.max_new_tokens = 768, 512, 512
  c.rl.loss_agg = "seq_mean_token_sum_norm"
  c.rl.micro_batch_size = 8
  c.rl.logprob_chunk = 512
  c.optim.learning_rate = 1e-5
  c.train.num_steps = 1500
  c.train.eval_every = 250
  c.train.eval_size, c.train.eval_batch_size = 160, 32   # HumanEval: 164 problems
  c.train.checkpoint_every = 250

  s = c.score
  s.stage1_steps = 500
  s.alpha, s.beta1, s.beta2 = 10.0, 0.01, 0.25
  s.instruction = CORRECTION_INSTRUCTION
  s.chat_instruction = True
  c.lock()
  return c
