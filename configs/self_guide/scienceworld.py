r"""Self-Guide on ScienceWorld (self_guide.md §5: one of the paper's three benchmarks): the method and
knobs of `textworld_express.py` (any of its arms: `scienceworld.py:grpo`) on ScienceWorld tasks.

  python experiments/train.py --config=configs/self_guide/scienceworld.py --workdir=/tmp/sg_sciworld

What changes from the TextWorldExpress config: task `scienceworld` (find-living-thing, "easy"
simplifications by default; any of ScienceWorld's 30 tasks via `task.params.task_name`), the
training reward is the normalised score (spec §7 item 3: ScienceWorld's score is dense, 0-100;
success, a full score, is logged beside it), prompts up to 512 ids, episodes of at most 20 steps. It keeps the
history window of the last 2 steps (each step's context ~1200 ids); with `history_window = 0` the whole episode
(20 x (96 + 257) ids and the prompt) still fits SmolLM2's 8192 positions. ScienceWorld cannot list its valid actions cheaply, so
the prompt lists the action templates and a parser failure is the invalid action
(`envs/scienceworld.py`). find-living-thing has 150 / 75 / 75 variations in its train / dev / test folds.
"""

from configs.self_guide import textworld_express


def get_config(arm: str | None = None):
  c = textworld_express.get_config(arm)
  with c.unlocked():
    c.task.name = "scienceworld"
    c.task.params = {"task_name": "find-living-thing", "simplification": "easy"}
    c.task.train_size, c.task.valid_size, c.task.test_size = 150, 64, 64
    c.rl.max_prompt_len = 512          # the goal, the action templates and the first room: ~350 SmolLM2 ids
    s = c.self_guide
    s.env = "scienceworld"
    s.env_reward = "normalized_score"
    s.max_steps = 20
  return c
