r"""Evaluate the newest good checkpoint of a workdir (greedy, held-out split), read-only.

  python experiments/eval.py --workdir=/tmp/grpo                      # the config the run was trained with
  python experiments/eval.py --workdir=/tmp/score --config=configs/score/tiny_arithmetic.py \
      --config.score.n_attempts_eval=4       # SCoRe: Acc@t1..t4, Delta(t1,t2), i->c, c->i, edits

By default the config saved with the checkpoint is used; `--config` (with overrides) replaces it,
and every field that differs from the saved one is reported before evaluating. Nothing in the
workdir is created, moved or modified. Prints one JSON line: the algorithm's evaluation metrics
(GRPO: accuracy; SCoRe: the self-correction metrics of score.md §2.4).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import cli  # noqa: E402
from selfrl_jax.train import builders  # noqa: E402
from selfrl_jax.train.builders import ConfigError  # noqa: E402
from selfrl_jax.train.checkpoint import CheckpointManager  # noqa: E402
from selfrl_jax.train.loop import make_evaluator  # noqa: E402
from selfrl_jax.train.state import create_train_state, make_optimizer  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Optional: evaluate with this config instead of the "
                                          "one saved with the checkpoint.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
_EVAL_SIZE = flags.DEFINE_integer("eval_size", None, "Override train.eval_size.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  directory = os.path.join(os.path.abspath(_WORKDIR.value), "checkpoints")
  ckpt = CheckpointManager(directory, read_only=True)
  saved = ckpt.saved_config()
  if saved is None:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  if _CONFIG.value is None:
    cfg = ml_collections.ConfigDict(saved)
    changes = ""
  else:
    cfg = _CONFIG.value
    changes = builders.config_differences(saved, cfg)
    if changes:
      print(f"evaluating with a config that differs from the saved one: {changes}", file=sys.stderr)
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
  abstract = jax.eval_shape(lambda: state)
  try:
    restored = ckpt.restore_latest(abstract)
  except Exception as e:  # noqa: BLE001 - shapes that disagree with the config surface as assorted errors
    if changes:
      raise ConfigError(f"the checkpoints in {directory} do not fit this config, which differs from the one "
                        f"they were trained with: {changes}") from e
    raise
  evaluator = make_evaluator(cfg, graphdef, tok, test_source, cfg.train.eval_size)
  print(json.dumps({"step": restored.step, **evaluator(restored.state.params)}))


if __name__ == "__main__":
  cli.run(main)
