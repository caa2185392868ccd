r"""Self-Guide on TextWorldExpress with SmolLM2-135M-Instruct sized for a CPU: `textworld_express.py`'s
method and knobs (any of its arms: `textworld_express_cpu.py:grpo`), smaller shapes.

  python experiments/train.py --config=configs/self_guide/textworld_express_cpu.py --workdir=/tmp/sg_twx_cpu

What changes from the paper-scale config: f32 (CPU), 2 games x G = 4, episodes of at most 5 steps
of 64 ids with observations cut at 160 ids (coin's longest room with its actions: ~160), 20 steps at
lr 1e-5 with the schedule's breakpoints scaled to them (5/7/9/11 of 20 for 40/50/70/80 of 150),
evaluation on 16 held-out games every 10 steps, and a format warm start first: 30 SFT steps of 4
train games each, their gold paths written in the step template (`algos/self_guide_game_demos.py`;
~26 min, cached). The first RL iteration took 184 s on 2 CPU cores with its compilation (a 1300-slot episode layout
through the 30-layer update). The whole 5-step episode stays in one KV cache (`history_window = 0`): the
warm start demonstrates whole episodes, and the 20-step run in the README was made this way.
"""

from configs.self_guide import textworld_express

SIZE_VARIANT_OF = "textworld_express.py"  # same method and knobs, other sizes


def get_config(arm: str | None = None):
  c = textworld_express.get_config(arm)
  with c.unlocked():
    c.model.param_dtype = c.model.compute_dtype = "float32"
    c.task.train_size, c.task.valid_size, c.task.test_size = 200, 16, 16
    c.rl.prompts_per_step, c.rl.group_size, c.rl.micro_batch_size = 2, 4, 4
    c.rl.max_new_tokens = 64
    c.optim.learning_rate = 1e-5
    c.train.num_steps, c.train.eval_every, c.train.checkpoint_every, c.train.log_every = 20, 10, 5, 1
    c.train.eval_size, c.train.eval_batch_size = 16, 8
    c.self_guide.max_steps = 5
    c.self_guide.history_window = 0     # the whole (short) episode in context, as its warm start demonstrates
    c.self_guide.obs_len = 160
    # A format warm start: the 135M model does not write the step template zero-shot (README, "A real run").
    c.sft.demos, c.sft.steps, c.sft.batch_size, c.sft.learning_rate = "self_guide_games", 30, 4, 5e-5
    c.self_guide.schedule_steps = (5, 7, 9, 11)   # 40/50/70/80 of 150, scaled to 20 steps
  return c
