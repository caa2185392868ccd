r"""Self-Guide's CPU toy (self_guide.md §11): the sparse 7 x 7 grid with slips, arms (a)-(g).

  python experiments/train.py --config=configs/self_guide/tiny_grid.py --workdir=/tmp/sg          # (c) SG & GR
  python experiments/train.py --config=configs/self_guide/tiny_grid.py:grpo --workdir=/tmp/grpo    # (a)
  python experiments/reproduce.py --method=self_guide      # every arm x 3 seeds, table, claims, curves

Arms: grpo (a: no guidance), sg (b: GRPO w/ SG, λ ≡ 0), sg_gr (c: the trapezoid), immediate (d:
λ ≡ 1 from step 0), no_anneal (e), early_entry (f: the ramp starts at the spec's 15 scaled like the
rest), mitigation (g: guidance tokens get the environment-only advantage).

The policy is the character-level decoder every toy uses, warm-started on scripted episodes: a
shortest-path move with probability `sft_action_skill`, otherwise a random one (a weak prior), and
guidance labels that are the true progress of the previous move 70% of the time (§11's noisy
"language prior"). One step is "<label>|<move><eos>" with labels + = - for positive, neutral,
negative; the observation after it is the new cell and whether the move brought the agent closer,
the same distance or farther, "<row><col><^|~|v>:". The prompt "G<goal>><start>:"
(guided) or "A<goal>><start>:" (actions only) picks the mode, so every arm starts from one base.
"""

from configs.common import get_base_config

ARMS = ("grpo", "sg", "sg_gr", "immediate", "no_anneal", "early_entry", "mitigation")


def get_config(arm: str | None = None):
  arm = arm or "sg_gr"
  if arm not in ARMS:
    raise ValueError(f"Unknown Self-Guide arm {arm!r}; valid: {ARMS}.")
  c = get_base_config("self_guide")
  c.task.name = "grid_nav"
  # show_progress: each observation after a move says whether it brought the agent closer ("34^:"), the
  # judgement the guidance label makes; without it the 2-layer model never learned the labels within
  # budget (README, "How the toy got here"). show_distance=True writes each
  # shown cell's BFS distance to the goal instead ("61>445:"; needs rl.max_prompt_len = 7).
  c.task.params = {"min_dist": 4, "max_dist": 8, "show_distance": False, "show_progress": True}
  c.task.train_size, c.task.valid_size, c.task.test_size = 5000, 256, 256
  c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads, c.model.d_ff = 64, 2, 4, 2, 256

  c.rl.prompts_per_step, c.rl.group_size = 8, 8         # §11: 32 x 8, quartered for the CPU budget
  c.rl.max_prompt_len, c.rl.max_answer_len = 6, 5        # "61>34:"; the answer is the env's spec "6134"
  c.rl.max_new_tokens = 4                                # one step: label | move eos
  c.rl.advantage = "grpo_sample_std"                     # verl: unbiased std (§10.2 test 5)
  c.rl.clip_low = c.rl.clip_high = 0.2
  c.rl.kl_coef, c.rl.kl_estimator = 0.01, "k3"           # §11: KL 0.01 to the warm start
  c.rl.micro_batch_size = 64
  c.optim.learning_rate = 3e-4                           # §11
  c.train.num_steps = 60                                 # §11: 150; 7 arms x 3 seeds in 15 min on 2 cores (README)
  c.train.eval_every = 6
  c.train.eval_size, c.train.eval_batch_size = 128, 128
  c.train.checkpoint_every = 0

  c.sft.demos = "self_guide_grid"
  c.sft.steps = 600
  c.sft.batch_size = 64
  c.sft.learning_rate = 2e-3
  c.sft.seed = 0                                         # one base for every arm and seed

  s = c.self_guide
  s.max_steps, s.slip_prob = 14, 0.2                     # §11: H = 14, slips 0.2
  s.schedule_steps = (16, 20, 28, 32)                    # the paper's 40/50/70/80 of 150 steps, scaled to 60
  s.early_entry_step = 6                                 # the ablation's 15, scaled the same way
  s.sft_action_skill = 0.375                             # the base this gives is checked (precondition, README; 0.35 and 0.365 gave 0.04-0.09)
  # Held-out success is the policy's own (T = 1): the warm start's best move is the shortest-path one
  # (p = 0.3 + 0.7 / 4), so greedy decoding, or T = 0.4, would turn the weak prior into a near-perfect
  # policy (measured: greedy 0.94 vs sampled 0.13) and leave RL nothing to show.
  s.eval_temperature = 1.0
  if arm == "grpo":
    s.use_guidance = False
  elif arm == "sg":
    s.schedule = "zero"
  elif arm == "immediate":
    s.schedule = "immediate"
  elif arm == "no_anneal":
    s.schedule = "no_anneal"
  elif arm == "early_entry":
    s.schedule = "early_entry"
  elif arm == "mitigation":
    s.sg_reward_on_guide_tokens = False
  c.lock()
  return c
