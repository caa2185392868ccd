r"""HeRL on instruction following (herl.md §2-§4): the released IF run (`examples/qwen3/Qwen3_herl.sh`),
rubric = the IFEval checkers per constraint, one ablation per argument.

  python experiments/train.py --config=configs/herl/ifeval.py --workdir=/tmp/herl_if
  python experiments/train.py --config=configs/herl/ifeval.py:naive --workdir=/tmp/herl_if_naive
  python experiments/eval.py --benchmark=ifeval --workdir=/tmp/herl_if

The paper's policies are Qwen2.5-7B-Instruct, Llama-3.2-3B-Instruct and Qwen3-4B-Instruct-2507 (set
`--config.model.source=/path/to/model`); `smollm2` (SmolLM2-135M-Instruct) is the default that runs
here, and `smollm2_cpu.py` is the same method sized for a CPU. Released hyperparameters: 64 prompts
x n = 8, PPO mini-batch 32 prompts (2 updates per batch), AdamW lr 1e-6, KL coef 0 (low_var_kl),
clip 0.2 / dual clip 3, token mean, T = 1.0; HE: tau = 1, candidate limit 16, revision T = 0.3, one
revision per candidate, one injected per group, trained with the HE prompt, alpha = 0.05, gamma = 1.

Deviations: HIR-16K has no offline copy, so the prompts are the SSRL-IF instruction ladders' full
instructions (`if_ladder`, 5 constraints, hard ones only where one fits: a soft constraint has no
checker and is left out of the rubric, counted as `rubric/soft_items`). Max prompt / response are
512 / 2048 (released: 6144 / 2048): the ladder prompts fit in 512 tokens, and h (prompt + draft +
diagnosis, `herl.he_prompt_len` derived as 512 + 2048 + 352) plus the response fits SmolLM2's 8192
positions; raise `rl.max_prompt_len` for longer prompts and a longer-context model. 6 epochs over 16k
rows at 64 prompts per step is 1500 steps.

Arms: `herl` (default), `grpo` (he.enable off: RLVR on the same rubric), `naive` (NaiveHE), `no_bonus`,
`x_context` (revision trained on the original prompt), `luffy` (raw-pi shaping instead of the ratio).
"""

from configs.common import get_base_config

ARMS = {"herl": {}, "grpo": {"enable": False}, "naive": {"diagnosis": "naive"}, "no_bonus": {"bonus": False},
        "x_context": {"train_with_he_prompt": False}, "luffy": {"is_ratio": "raw"}}


def get_config(arm: str | None = None):
  arm = arm or "herl"
  if arm not in ARMS:
    raise ValueError(f"Unknown HeRL arm {arm!r}; valid: {sorted(ARMS)}.")
  c = get_base_config("herl")
  c.model.source = "smollm2"            # the paper: Qwen2.5-7B-Instruct, Llama-3.2-3B-Instruct, Qwen3-4B-Instruct-2507
  c.model.param_dtype = "float32"
  c.model.compute_dtype = "bfloat16"
  c.task.name = "if_ladder"
  c.task.params = {"num_constraints": 5, "levels": "5", "soft_prob": 0.0, "question_prob": 0.3, "math_frac": 0.0}
  c.task.train_size, c.task.valid_size, c.task.test_size = 16000, 64, 200
  c.task.chat = True
  c.rl.prompts_per_step, c.rl.group_size = 64, 8
  c.rl.num_minibatches = 2                                   # PPO mini-batch 32 prompts
  c.rl.max_prompt_len, c.rl.max_answer_len, c.rl.max_new_tokens = 512, 8, 2048   # ladder prompts fit 512 (released 6144)
  c.rl.temperature = 1.0
  c.rl.advantage = "grpo_sample_std"                         # verl: unbiased std, eps 1e-6
  c.rl.clip_low, c.rl.clip_high = 0.2, 0.2
  c.rl.kl_coef, c.rl.kl_estimator = 0.0, "low_var_kl"        # the released IF run: coef 0
  c.rl.loss_agg = "token_mean"
  c.rl.micro_batch_size = 4
  c.rl.logprob_chunk = 512
  c.optim.learning_rate = 1e-6
  c.optim.weight_decay = 0.01
  c.optim.grad_clip = 1.0
  c.train.num_steps = 1500
  c.train.eval_every = 250
  c.train.eval_size, c.train.eval_batch_size = 200, 8
  c.train.checkpoint_every = 50
  h = c.herl
  h.rubric, h.template = "ifeval", "constraint"
  h.threshold, h.candidate_limit, h.revision_temperature, h.revision_samples = 1.0, 16, 0.3, 1
  h.replace_top_n, h.train_with_he_prompt, h.alpha, h.gamma = 1, True, 0.05, 1.0
  for key, value in ARMS[arm].items():
    h[key] = value
  c.lock()
  return c
