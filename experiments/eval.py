r"""Evaluate the newest checkpoint of a workdir (greedy, held-out split) with the config it was trained with.

  python experiments/eval.py --config=configs/tiny/grpo_arithmetic.py --workdir=/tmp/grpo
  python experiments/eval.py --config=configs/score/tiny_arithmetic.py --workdir=/tmp/score \
      --config.score.n_attempts_eval=4       # SCoRe: Acc@t1..t4, Delta(t1,t2), i->c, c->i, edits

Prints one JSON line: the algorithm's evaluation metrics (GRPO: accuracy; SCoRe: the
self-correction metrics of score.md §2.4).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import cli  # noqa: E402
from selfrl_jax.train import builders  # noqa: E402
from selfrl_jax.train.checkpoint import CheckpointManager  # noqa: E402
from selfrl_jax.train.loop import make_evaluator  # noqa: E402
from selfrl_jax.train.state import create_train_state, make_optimizer  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "The config the run was trained with.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
_EVAL_SIZE = flags.DEFINE_integer("eval_size", None, "Override train.eval_size.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cfg = _CONFIG.value
  if _EVAL_SIZE.value:
    with cfg.unlocked():
      cfg.train.eval_size = _EVAL_SIZE.value
  builders.validate_config(cfg)
  model, tok = builders.build_model(cfg)
  train_source, _, test_source = builders.build_sources(cfg)
  # The algorithm shapes the restore target: its state (TrainState.algo_state) is checkpointed too.
  algorithm = builders.build_algorithm(cfg, tok, train_source)
  graphdef, state = create_train_state(model, make_optimizer(cfg.optim), cfg.seed, keep_reference=False,
                                       algorithm=algorithm)
  ckpt = CheckpointManager(os.path.join(os.path.abspath(_WORKDIR.value), "checkpoints"))
  restored = ckpt.restore_or_none(jax.eval_shape(lambda: state))
  if restored is None:
    raise SystemExit(f"No checkpoint found under {_WORKDIR.value}/checkpoints.")
  evaluator = make_evaluator(cfg, graphdef, tok, test_source, cfg.train.eval_size)
  print(json.dumps({"step": restored.step, **evaluator(restored.state.params)}))


if __name__ == "__main__":
  cli.run(main)
