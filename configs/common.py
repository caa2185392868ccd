"""Shared defaults for every experiment config. Experiment files override what they change.

Every field is commented with its meaning and unit. Configs are locked: assigning an unknown key
(e.g. `--config.rl.lerning_rate=...`) fails, and types are checked on assignment.
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
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
  c.model.param_dtype = "float32"  # float32 on CPU, bfloat16 on TPU
  c.model.compute_dtype = "float32"

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
  c.rl.algorithm = "grpo"          # grpo (the GRPO family; the estimator is rl.advantage) | score (config.score)
  c.rl.mode = "fused"              # fused: one compiled step; split: jitted sample, host reward, jitted update
  c.rl.prompts_per_step = 16       # P
  c.rl.group_size = 8              # G, completions per prompt; rollouts = P * G
  c.rl.max_prompt_len = 16         # T, prompt buffer (tokens); longer prompts are skipped and counted
  c.rl.max_answer_len = 8          # A, target buffer incl. EOS (tokens)
  c.rl.max_new_tokens = 8          # N, response buffer (tokens)
  c.rl.temperature = 1.0           # training sampling temperature (log-probs use logits / T)
  c.rl.top_k = 0                   # 0 = off
  c.rl.top_p = 1.0                 # 1.0 = off
  c.rl.reward = "exact_match"      # exact_match (synthetic tasks, jittable) | math (math-verify, host) | code (sandboxed tests, host)
  c.rl.advantage = "grpo"          # grpo | dr_grpo | rloo | reinforce
  c.rl.clip_low = 0.2              # ratio clip 1 - clip_low
  c.rl.clip_high = 0.28            # ratio clip 1 + clip_high (DAPO clip-higher)
  c.rl.kl_coef = 0.0               # beta; 0 skips the reference forward pass
  c.rl.kl_estimator = "k3"         # k1 | k2 | k3
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
  c.sft.demos = "task"             # task: [prompt | answer] with error_rate noise; score_toy: two-turn toy traces (score.md §11)

  # SCoRe (rl.algorithm = "score"; spec papers/score.md, choices in configs/score/README.md).
  c.score = ml_collections.ConfigDict()
  c.score.multi_turn = True        # False: single-turn RL on turn 1 (Table 4 "w/o multi-turn")
  c.score.use_stage1 = True        # False: Stage II from step 0 (Table 4 "w/o Stage I")
  c.score.stage1_steps = 0         # RL iterations in Stage I (Eq. 3); the rest are Stage II (Eq. 4)
  c.score.alpha = 10.0             # shaping weight of Eq. 5 (0: "w/o reward shaping")
  c.score.beta1 = 0.01             # KL weight on both turns in Stage II and on turn 2 in Stage I
  c.score.beta2 = 0.1              # KL weight on turn 1 in Stage I
  c.score.first_turn_kl_only = False  # Stage I: no KL on turn-2 tokens
  c.score.turn_credit = "per_turn"  # per_turn (gamma = 0) | episode (sandbagging risk with alpha > 1)
  c.score.baseline = "rloo"        # rloo (leave-one-out over rl.group_size) | batch_mean | none
  c.score.adv_norm = "none"        # none | std (divide each turn's advantages by their batch std)
  c.score.stage2_algo = "reinforce"  # reinforce | star (Stage II = SFT on successful corrections)
  c.score.star_include_c2c = False  # star: also keep right -> right traces (D+_STaR)
  c.score.instruction = "<fix>"    # self-correction instruction appended after y1 (as ids)
  c.score.chat_instruction = False  # render the instruction as a user turn of the chat template
  c.score.max_new_tokens2 = 0      # turn-2 buffer N2 (0 = rl.max_new_tokens)
  c.score.n_attempts_eval = 2      # attempts at evaluation (>= 2; Acc@t1..t_K)
  c.score.copy_prob = 0.7          # sft.demos = score_toy: probability y2 copies y1

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 100          # RL iterations
  c.train.eval_every = 25          # iterations between held-out evaluations (0 = only at the end)
  c.train.eval_size = 256          # held-out prompts per evaluation (greedy)
  c.train.eval_batch_size = 128    # prompts per compiled eval call
  c.train.log_every = 1            # iterations between metric rows
  c.train.checkpoint_every = 50    # iterations between checkpoints (0 = only at the end)
  c.train.keep_checkpoints = 3     # checkpoints kept (oldest deleted)
  c.train.max_nonfinite_in_row = 5  # abort after this many consecutive non-finite steps
  c.train.progress = True          # tqdm progress bars

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                 # data-parallel axis size (-1 = all remaining devices)
  c.mesh.fsdp = 1                  # parameter-sharding axis size
  return c
