"""Shared defaults for every experiment config. Experiment files override what they change.

Every field is commented with its meaning and unit. Configs are locked: assigning an unknown key
(e.g. `--config.rl.lerning_rate=...`) fails, and types are checked on assignment.
"""

import ml_collections

from selfrl_jax.algos.registry import get_algorithm_spec


def get_base_config(algorithm: str = "grpo") -> ml_collections.ConfigDict:
  """Shared sections plus the section `algorithm` owns (`config.<algorithm>`, from its registry entry)."""
  c = ml_collections.ConfigDict()
  c.seed = 0                       # model init, data order and sampling keys all derive from it

  c.model = ml_collections.ConfigDict()
  c.model.source = "tiny"          # "tiny" (char tokenizer + fresh model), "smollm2", or a local HF dir / .gguf path
  c.model.tokenizer = "char"       # tiny only: "char" (synthetic tasks) or a model spec whose tokenizer to use
  c.model.family = "llama"         # tiny only: llama | qwen2 | qwen3
  c.model.d_model = 64             # tiny only: residual width
  c.model.n_layers = 2             # tiny only: decoder blocks
  c.model.n_heads = 4              # tiny only: query heads (head_dim = d_model / n_heads)
  c.model.n_kv_heads = 2           # tiny only: key/value heads (GQA)
  c.model.d_ff = 256               # tiny only: SwiGLU width
  c.model.tie_embeddings = True    # tiny only: output projection shares the embedding
  c.model.param_dtype = "float32"  # the stored weights: keep float32 (bfloat16 weights round small updates away)
  c.model.compute_dtype = "float32"  # matmul dtype: bfloat16 on TPU / GPU
  c.model.remat = False            # recompute each block in the backward pass: long sequences (agent episodes) fit
  c.model.remat_policy = "nothing_saveable"  # with remat, what a block keeps: nothing_saveable (least memory) | dots_with_no_batch_dims_saveable (its Linear outputs: most of the saving for +2.5% time on SmolLM2)

  c.task = ml_collections.ConfigDict()
  c.task.name = "arithmetic"       # a synthetic task (selfrl_jax.data.tasks.TASKS) or a benchmark in builders.BENCHMARK_TASKS
  c.task.params = ml_collections.ConfigDict({"num_digits": 2, "reverse_answer": True})  # task config fields
  c.task.train_size = 5000         # records in the train split
  c.task.valid_size = 256          # records in the validation split (SFT early stopping)
  c.task.test_size = 512           # records in the held-out split
  c.task.data_dir = ""             # tfds data dir ("" -> $SELFRL_TFDS_DIR or ~/.cache/selfrl_jax/tfds)
  c.task.math_train_dir = ""       # task "math": local Hendrycks MATH train folder (not in ../shared/data)
  c.task.chat = False              # wrap prompts as a user turn with the tokenizer's chat template
  c.task.system_prompt = ""        # system turn when task.chat ("" = none)

  c.rl = ml_collections.ConfigDict()
  c.rl.algorithm = algorithm       # a module of selfrl_jax.algos with an ALGORITHM spec; its knobs live in config.<algorithm>
  c.rl.mode = "fused"              # fused: one compiled step; split: compiled device phases, host phases (rewards, environments) between them
  c.rl.prompts_per_step = 16       # P
  c.rl.group_size = 8              # G, completions per prompt; rollouts = P * G
  c.rl.max_prompt_len = 16         # T, prompt buffer (tokens); longer prompts are skipped and counted
  c.rl.max_answer_len = 8          # A, target buffer incl. EOS (tokens)
  c.rl.max_new_tokens = 8          # N, response buffer (tokens)
  c.rl.temperature = 1.0           # training sampling temperature (log-probs use logits / T)
  c.rl.top_k = 0                   # 0 = off
  c.rl.top_p = 1.0                 # 1.0 = off
  c.rl.reward = "exact_match"      # exact_match (synthetic tasks, jittable) | math (math-verify, host) | code (sandboxed tests, host)
  c.rl.truncated_reward = "keep"   # completions that hit max_new_tokens without a stop token: keep (their reward, like any other) | zero (DAPO's overlong choice: no reward); applies to every reward rl.reward computes, training and evaluation
  c.rl.advantage = "grpo"          # grpo | grpo_sample_std (ddof=1, verl/EasyR1) | dr_grpo | rloo | reinforce (algorithms with their own credit assignment reject it)
  c.rl.clip_low = 0.2              # ratio clip 1 - clip_low
  c.rl.clip_high = 0.28            # ratio clip 1 + clip_high (DAPO clip-higher)
  c.rl.kl_coef = 0.0               # beta; 0 skips the reference forward pass
  c.rl.kl_estimator = "k3"         # k1 | k2 | k3 | low_var_kl (k3 clamped to [-10, 10], verl) | full (exact KL over the vocabulary per position)
  c.rl.kl_mode = "loss"            # loss: estimate added to the loss | reward: penalty in the return (k1 / full); docs/algorithms.md says which KL each follows
  c.rl.loss_agg = "token_mean"     # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
  c.rl.num_epochs = 1              # mu, passes over one batch of rollouts
  c.rl.num_minibatches = 1         # optimizer updates per epoch
  c.rl.micro_batch_size = 64       # rollouts per gradient-accumulation micro-batch
  c.rl.logprob_chunk = 0           # token positions per log-prob chunk (0 = unchunked)

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4     # peak Adam learning rate
  c.optim.warmup_steps = 0         # linear warm-up (optimizer updates)
  c.optim.grad_clip = 1.0          # global-norm clip (0 = off)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0

  c.sft = ml_collections.ConfigDict()
  c.sft.steps = 0                  # supervised warm-start steps before RL (0 = none)
  c.sft.batch_size = 64            # demonstrations per SFT step
  c.sft.learning_rate = 3e-3       # Adam learning rate of the warm start
  c.sft.error_rate = 0.3           # fraction of demonstrations with one answer token corrupted
  c.sft.target_accuracy = 0.0      # stop SFT once greedy validation accuracy reaches this (0 = run all steps)
  c.sft.check_every = 50           # SFT steps between validation checks
  c.sft.target_metric = "eval/accuracy"  # validation metric compared with sft.target_accuracy
  c.sft.seed = -1                  # seed of the base model: tiny init + warm start (-1 = config seed; fix it to share one base across seeds)
  c.sft.task_params = ml_collections.ConfigDict()  # overrides of task.params for the demonstrations only (e.g. fewer digits than the RL set); empty = the RL task's train split
  c.sft.demos = "task"             # task: [prompt | answer] with error_rate noise; an algorithm may offer its own (AlgorithmSpec.sft_demos)

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 100          # RL iterations
  c.train.eval_every = 25          # iterations between held-out evaluations (0 = only before RL and at the end)
  c.train.eval_size = 256          # held-out prompts per evaluation (greedy)
  c.train.eval_batch_size = 128    # prompts per compiled eval call
  c.train.log_every = 10           # iterations between full metric rows on the console (metrics.jsonl and TensorBoard get every iteration; the progress bar shows reward, held-out metric, KL (when rl.kl_coef > 0) and step time)
  c.train.checkpoint_every = 50    # iterations between checkpoints (0 = only at the end)
  c.train.keep_checkpoints = 3     # checkpoints kept (oldest deleted)
  c.train.max_nonfinite_in_row = 5  # abort after this many consecutive non-finite steps
  c.train.progress = True          # tqdm progress bars
  c.train.warm_start_cache = ""    # directory of SFT warm starts, keyed by warm-start settings and base weights; share one across the runs of an ablation ("" = <workdir>/warm_start)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                 # data-parallel axis size (-1 = all remaining devices)
  c.mesh.fsdp = 1                  # parameter-sharding axis size

  section = get_algorithm_spec(algorithm).default_config
  if section is not None:
    c[algorithm] = section()
  return c
