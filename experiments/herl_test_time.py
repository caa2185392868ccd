r"""HeRL's test-time experience rounds (herl.md §2 (10)) on a model before any RL: held-out ladder
prompts, one answer each, then `herl.eval_rounds` rounds of revision from h(x, best answer, met, unmet)
at T = `herl.eval_revision_temperature`, keeping a revision only when the IFEval checkers score it higher.

  python experiments/herl_test_time.py                                  # SmolLM2-135M-Instruct, 32 prompts
  python experiments/herl_test_time.py --num_prompts=64 --config.herl.eval_rounds=3

A trained run reports the same rounds in its evaluations (`eval/accuracy_round{k}`; `experiments/eval.py
--workdir=...`). Prints per round the prompt-level accuracy (every constraint met) and the
constraint-level accuracy (the rubric score), and writes them as JSON to --output.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import cli  # noqa: E402
from selfrl_jax.train import builders  # noqa: E402
from selfrl_jax.train.loop import make_evaluator  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/herl/smollm2_cpu.py", "A HeRL config.", lock_config=True)
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 32, "Held-out (test split) prompts.")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file for the results ('' = none).")


def main(argv):
  del argv
  cfg = _CONFIG.value
  if cfg.rl.algorithm != "herl":
    raise builders.ConfigError(f"config.rl.algorithm: this script runs HeRL's evaluation, got {cfg.rl.algorithm!r}")
  with cfg.unlocked():
    cfg.train.eval_batch_size = min(cfg.train.eval_batch_size, _NUM_PROMPTS.value)
  model, tok = builders.build_model(cfg)
  graphdef, params = nnx.split(model)
  test = builders.build_sources(cfg)[2]
  t0 = time.perf_counter()
  metrics = make_evaluator(cfg, graphdef, tok, test, _NUM_PROMPTS.value)(params)
  seconds = time.perf_counter() - t0
  rounds = [("0 (no revision)", "")] + [(str(k), f"_round{k}") for k in range(1, cfg.herl.eval_rounds + 1)]
  print(f"{cfg.model.source}: {_NUM_PROMPTS.value} held-out prompts, revision T = {cfg.herl.eval_revision_temperature}")
  print("| round | prompt-level (all met) | constraint-level |\n|---|---:|---:|")
  for name, suffix in rounds:
    print(f"| {name} | {metrics['eval/accuracy' + suffix]:.3f} | {metrics['eval/rubric' + suffix]:.3f} |")
  print(f"{seconds:.0f} s")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump({"metrics": metrics, "seconds": seconds, "num_prompts": _NUM_PROMPTS.value,
                 "model": cfg.model.source}, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
