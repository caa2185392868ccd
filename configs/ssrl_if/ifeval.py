r"""SSRL-IF on real instructions (ssrl_if.md §2-§4): constraint ladders over IFEval checkers and free-text soft
constraints, GRPO as released (EasyR1 `examples/config.yaml`), one ablation per argument.

  python experiments/train.py --config=configs/ssrl_if/ifeval.py --workdir=/tmp/ssrl_real
  python experiments/train.py --config=configs/ssrl_if/ifeval.py:no_curriculum --workdir=...
  python experiments/eval.py --benchmark=ifeval --workdir=/tmp/ssrl_real      # IFEval, the paper's in-domain set

The paper's policies are R1-Distill-Qwen-1.5B / 7B, R1-0528-Qwen3-8B and Qwen2.5-7B-Instruct(-R) (set
`--config.model.source=/path/to/model`; for the R1-distilled ones also
`--config.ssrl_if.answer_pattern='</think>\n\n(.*)'`, the released think gate). `smollm2`
(SmolLM2-135M-Instruct, which does not think: the whole response is the answer) is the default model;
at these sizes it needs an accelerator, and `smollm2_cpu.py` is the same run sized for a CPU. The hyperparameters are the released config's (§4.2): 384 prompts x 5 responses per step,
4 optimizer steps per batch (global batch 96 prompts), AdamW lr 1e-6 with weight decay 0.01, no
warm-up, clip 0.2, grad-norm clip 1.0, the 0.01 low_var_kl KL loss (the paper's text says "no KL":
`--config.rl.kl_coef=0` is that reading), temperature 1.0, 260 steps (the released 5 epochs of 52
steps over 20,000 rows; 18,071 rows here, without the science rows, so about 5.5 epochs).

Arms: `method` (default; levels L1-L5 mixed, 24.9% math rows), `no_curriculum` (full instructions only),
`binary_rm` (RM output thresholded), `rm_only` (the RM scores hard constraints too), `no_math` (IF rows only).
"""

from configs.ssrl_if.tiny_constraints import arm_config, released_grpo

ARMS = {"method": ("12345", {}), "no_curriculum": ("5", {}), "binary_rm": ("12345", {"soft_reward": "binary"}),
        "rm_only": ("12345", {"use_rule_reward": False}), "no_math": ("12345", {})}


def get_config(arm: str | None = None):
  c, levels = arm_config(ARMS, arm)
  c.model.source = "smollm2"            # the paper: R1-Distill-Qwen-7B, Qwen2.5-7B-Instruct (see the docstring)
  c.model.param_dtype = "float32"   # float32 weights (bfloat16 ones round lr-sized updates away)
  c.model.compute_dtype = "bfloat16"
  c.task.name = "if_ladder"
  # §2.1: 13,570 IF rows + 4,501 math rows (GSM8K stands in for DeepScaleR) = 18,071; the 1,929
  # SciKnowEval science rows have no offline copy. math_frac=0 (arm no_math) is IF data only.
  math_frac = 0.0 if arm == "no_math" else 0.249
  c.task.params = {"num_constraints": 5, "levels": levels, "soft_prob": 0.5, "question_prob": 0.3, "math_frac": math_frac}
  c.task.train_size, c.task.valid_size, c.task.test_size = 18071, 96, 200   # about 13,570 IF rows and 4,501 math rows
  c.task.chat = True                    # one user turn, no system prompt (§2.3)
  c.rl.prompts_per_step, c.rl.group_size = 384, 5                      # rollout_batch_size 384, n = 5
  c.rl.num_minibatches = 4                                              # global batch 96 prompts: 4 updates per batch
  c.rl.max_prompt_len, c.rl.max_answer_len, c.rl.max_new_tokens = 2048, 8, 8192   # §4.2
  c.rl.temperature = 1.0
  released_grpo(c)                      # ddof=1 std, clip 0.2, the 0.01 low_var_kl KL loss, token mean
  c.rl.micro_batch_size = 4
  c.rl.logprob_chunk = 512
  c.optim.learning_rate = 1e-6
  c.optim.weight_decay = 0.01
  c.optim.warmup_steps = 0
  c.optim.grad_clip = 1.0
  c.train.num_steps = 260               # §8 row 3: the released 5 epochs of 52 steps (20,000 rows / 384)
  c.train.eval_every = 52
  c.train.eval_size, c.train.eval_batch_size = 200, 8   # held-out ladder instructions: IFEval verdicts on hard constraints
  c.train.checkpoint_every = 26
  s = c.ssrl_if
  s.world = "ifeval"
  s.eval_temperature = 0.5              # §3.6: validation sampling at temperature 0.5
  s.rm_ladders = 500
  s.rm_steps, s.rm_batch_size, s.rm_learning_rate = 1000, 8, 5e-6       # released: 5e-6, batch 1, 3 epochs
  s.rm_width = 1024
  s.rm_forward_batch = 64               # 9,600 classifier inputs per step, 64 at a time
  c.lock()
  return c
