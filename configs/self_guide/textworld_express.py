r"""Self-Guide on TextWorldExpress (self_guide.md §3-§4, §7.8): a chat model plays text games with the
spec's step template, guidance rewarded under the trapezoid trust schedule.

  python experiments/train.py --config=configs/self_guide/textworld_express.py --workdir=/tmp/sg_twx
  python experiments/train.py --config=configs/self_guide/textworld_express.py:grpo --workdir=/tmp/twx_grpo

The paper's policies are Qwen3-1.7B, Qwen3-4B and Qwen2.5-7B-Instruct (set
`--config.model.source=/path/to/model`); `smollm2` (SmolLM2-135M-Instruct) is the default that runs
here, and `textworld_express_cpu.py` is the same method sized for a CPU. The paper's benchmarks are
ALFWorld, ScienceWorld and WebShop; ALFWorld and WebShop need data downloads impossible offline, so
TextWorldExpress (coin by default; cookingworld, twc, mapreader via
`task.params.game` and `task.params.game_params`) stands in for them.

Defaults (spec §4, verl-agent's GRPO as §7.8 recommends, not confirmed as the paper's): 16 tasks x
G = 8, lr 1e-6, KL 0.01 (k3), clip 0.2, validation T = 0.4, invalid-action penalty 0.1, 150 steps
with the 40/50/70/80 schedule, sparse success reward. One step is
"<guide>[LABEL] judgement</guide><action>...</action><|im_end|>"; the prompt gives the goal, the
admissible actions and the first observation, each observation turn lists the admissible actions
again, and the mode instruction is a system turn of its own (`self_guide_config.mode_prefix_ids`).

Each step sees the prompt and the last k = 2 steps (`self_guide.history_window`, verl-agent's
default): the cache is rebuilt per step and the update trains one row per step with that step's own
context (`rollouts/agent.py`). `history_window = 0` keeps the whole episode in one KV cache instead
(15 steps x (96 + 257) ids + the prompt fit SmolLM2's 8192 positions). The guidance segment closes at
"</guide" (not "</guide>"): a BPE vocabulary merges the ">" with what follows ("><" before
"<action>"), and the environment drops a leading ">".
"""

from configs.common import get_base_config

ARMS = {"sg_gr": {}, "grpo": {"use_guidance": False}, "sg": {"schedule": "zero"}, "immediate": {"schedule": "immediate"},
        "no_anneal": {"schedule": "no_anneal"}, "early_entry": {"schedule": "early_entry"},
        "mitigation": {"sg_reward_on_guide_tokens": False}}

GUIDED = ("You act in a text game, one step per reply. First judge, in one or two sentences, whether your "
          "last action moved you closer to the goal, and start the judgement with exactly one label: "
          "[POSITIVE], [NEUTRAL] or [NEGATIVE], all inside <guide>...</guide>. Then, taking that judgement "
          "into account, give the next action, one of the admissible actions, inside <action>...</action>.")
PLAIN = ("You act in a text game, one step per reply. Give the next action, one of the admissible actions, "
         "inside <action>...</action>.")


def get_config(arm: str | None = None):
  arm = arm or "sg_gr"
  if arm not in ARMS:
    raise ValueError(f"Unknown Self-Guide arm {arm!r}; valid: {sorted(ARMS)}.")
  c = get_base_config("self_guide")
  c.model.source = "smollm2"            # the paper: Qwen3-1.7B, Qwen3-4B, Qwen2.5-7B-Instruct
  c.model.param_dtype = "float32"
  c.model.compute_dtype = "bfloat16"
  c.model.remat = True                  # rows of ~1100 slots (k = 2), thousands at k = 0: one block's attention at a time
  c.task.name = "twx"
  c.task.params = {"game": "coin", "game_params": "numLocations=4,numDistractorItems=0,includeDoors=0"}
  c.task.train_size, c.task.valid_size, c.task.test_size = 1000, 64, 64   # coin: 1000 train games
  c.task.chat = True
  c.rl.prompts_per_step, c.rl.group_size = 16, 8          # verl-agent: 16 environments x G = 8
  c.rl.max_prompt_len, c.rl.max_answer_len = 320, 8       # goal + admissible actions + first observation
  c.rl.max_new_tokens = 96                                # one step: guidance sentence(s) and the action
  c.rl.temperature = 1.0
  c.rl.advantage = "grpo_sample_std"                      # verl: unbiased std
  c.rl.clip_low = c.rl.clip_high = 0.2
  c.rl.kl_coef, c.rl.kl_estimator = 0.01, "k3"            # verl-agent: low_var_kl 0.01
  c.rl.loss_agg = "token_mean"
  c.rl.micro_batch_size = 4
  c.rl.logprob_chunk = 512
  c.optim.learning_rate = 1e-6
  c.optim.grad_clip = 1.0
  c.train.num_steps = 150                                 # verl-agent total_epochs
  c.train.eval_every = 25
  c.train.eval_size, c.train.eval_batch_size = 64, 8
  c.train.checkpoint_every = 25
  s = c.self_guide
  s.env = "twx"
  s.max_steps = 15                                        # verl-agent's WebShop horizon; coin's gold paths are 2-8 moves
  s.history_window = 2                                    # spec §7 item 8 (verl-agent): the last 2 steps in context
  s.obs_len = 256                                         # a coin observation with its admissible actions: ~150 ids
  s.schedule_steps = (40, 50, 70, 80)                     # the paper's breakpoints
  s.eval_temperature = 0.4
  s.instruction, s.plain_instruction = GUIDED, PLAIN
  s.guide_close = "</guide"                               # see the module docstring
  s.labels = ("[POSITIVE]", "[NEUTRAL]", "[NEGATIVE]")
  for key, value in ARMS[arm].items():
    s[key] = value
  c.lock()
  return c
