"""Data: synthetic tasks (tfds array_record builders), grain prompt pipelines, benchmark loaders.

    from selfrl_jax import data
    task = data.make_task("arithmetic", num_digits=3, splits={"train": 5000, "test": 1000})
    source = data.load_task_split(task, "train", data_dir)        # or data.load_benchmark("gsm8k")
    it = data.make_prompt_iterator(source, tokenizer, batch_size=64, max_prompt_len=16, max_answer_len=8)
"""

from selfrl_jax.data.arithmetic import buggy_sum, format_number, is_bug_subset, parse_number
from selfrl_jax.data.benchmarks import (BENCHMARKS, load_benchmark, load_gsm8k, load_ifeval, load_math500,
                                        load_math_dir, load_mbpp)
from selfrl_jax.data.builders import load_task_split, prepare_task
from selfrl_jax.data import grid_nav, if_ladder, if_toy, prefix_sums, game_tasks  # noqa: F401  (registers these tasks)
from selfrl_jax.data.pipeline import PromptIterator, jax_process_shard, make_prompt_iterator
from selfrl_jax.data.reasoning_gym_tasks import reasoning_gym_reward, reasoning_gym_source
from selfrl_jax.data.records import RecordSource, make_record, normalize_record, record_meta
from selfrl_jax.data.tasks import TASKS, Task, TaskConfig, make_task, register_task
